//! A run's figures: the table printed, the JSON written, and the plot of units active over time.

use crate::etcd_metrics::Load;
use serde::Serialize;
use std::fmt::Write as _;

/// Units active at a moment (seconds since the phase began).
pub type Timeline = Vec<(f64, usize)>;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Resident set before the agents started (etcd clients, engine, API server).
    pub rss_before_agents: u64,
    /// After the first half of the agents started.
    pub rss_half_agents: u64,
    /// After every agent started, before any unit.
    pub rss_all_agents: u64,
    /// After every unit became active: what the leader (engine, API) and the agents hold
    /// right after the burst.
    pub rss_all_active: u64,
    /// Its anonymous part (heap and stacks).
    pub anon_all_active: u64,
    /// `settled_after_s` after every unit became active (after the steady window and the
    /// listings): what is kept once the burst is over.
    pub rss_settled: u64,
    pub anon_settled: u64,
    pub settled_after_s: f64,
    /// (all agents - before) / machines: an idle agent.
    pub per_agent_idle: u64,
    /// (all agents - half) / second half: the cost of adding one agent.
    pub per_agent_marginal: u64,
    /// (all active - before) / machines: an agent holding its share of units.
    pub per_agent_loaded: u64,
    pub peak_rss: u64,
}

/// CPU of the processes the process supervisor started, read from `/proc` just before the
/// machines leave: its log forwarders and the units' own processes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Supervised {
    pub forwarders: usize,
    pub forwarders_cpu_s: f64,
    pub unit_processes: usize,
    pub units_cpu_s: f64,
    /// Units running when read.
    pub units: usize,
}

impl Supervised {
    /// The supervisor's processes' CPU per unit, in milliseconds.
    pub fn forwarder_ms_per_unit(&self) -> f64 {
        self.forwarders_cpu_s * 1000.0 / self.units.max(1) as f64
    }

    /// The units' own CPU per unit, in milliseconds.
    pub fn unit_ms_per_unit(&self) -> f64 {
        self.units_cpu_s * 1000.0 / self.units.max(1) as f64
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Failover {
    pub killed_machines: usize,
    /// Non-global units that were active on the killed machines.
    pub units_to_move: usize,
    /// From the kill to every unit active again on live machines (`None`: not within the deadline).
    pub all_active_elsewhere_s: Option<f64>,
    pub timeline: Timeline,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Listing {
    /// `api::Client::units()` (what `fleetctl list-unit-files` reads), each attempt.
    pub list_unit_files_ms: Vec<f64>,
    pub unit_files: usize,
    /// `api::Client::unit_states()` (what `fleetctl list-units` reads), each attempt.
    pub list_units_ms: Vec<f64>,
    pub unit_states: usize,
    /// The real `fleetctl` binary, when built.
    pub fleetctl_list_unit_files_ms: Option<f64>,
    pub fleetctl_list_units_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub run: String,
    /// `hollow` or `process` (real units through the process supervisor).
    pub manager: String,
    pub machines: usize,
    pub units: usize,
    pub global_units: usize,
    /// Active units expected: non-global units plus global units times machines.
    pub expected_active: usize,
    pub agent_ttl_s: f64,
    pub etcd_clients: usize,
    pub submitted_via: String,
    pub submit_concurrency: usize,
    pub agents_start_s: f64,
    pub submit_s: f64,
    /// From the first submission to every unit active (`None`: not within the deadline).
    pub all_active_s: Option<f64>,
    /// Units submitted per second of `all_active_s`.
    pub units_per_s: Option<f64>,
    pub timeline: Timeline,
    pub steady: Option<Load>,
    pub listing: Listing,
    pub failover: Option<Failover>,
    pub cpu_s: f64,
    /// With `--process`: what the supervisor's own processes and the units cost.
    pub supervised: Option<Supervised>,
    pub memory: Memory,
    pub etcd_cpu_s: f64,
    pub etcd_rss: u64,
    /// Machine leases the registry let expire during the run (machines killed on purpose
    /// not counted): none unless etcd was too slow for longer than `agent_ttl`.
    pub leases_lost: u64,
    pub errors: Vec<String>,
}

impl RunReport {
    /// Everything became active (and moved, if machines were killed), and no lease was lost.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.leases_lost == 0
            && self.all_active_s.is_some()
            && self
                .failover
                .as_ref()
                .is_none_or(|f| f.all_active_elsewhere_s.is_some())
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("not reached".into(), |s| format!("{s:.2} s"))
}

fn kb(bytes: u64) -> String {
    format!("{:.0} KB", bytes as f64 / 1024.0)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(v: &[f64]) -> String {
    match v.first() {
        None => "-".into(),
        Some(first) => {
            let best = v.iter().copied().fold(f64::INFINITY, f64::min);
            format!("{first:.0} ms (best of {}: {best:.0} ms)", v.len())
        }
    }
}

/// The table printed on stdout.
pub fn table(r: &RunReport) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("run".into(), r.run.clone()),
        (
            "machines x units".into(),
            format!(
                "{} x {} ({} global; {} active expected; {} manager)",
                r.machines, r.units, r.global_units, r.expected_active, r.manager
            ),
        ),
        (
            "agent_ttl / etcd clients".into(),
            format!("{:.0} s / {}", r.agent_ttl_s, r.etcd_clients),
        ),
        (
            "agents started in".into(),
            format!("{:.2} s", r.agents_start_s),
        ),
        (
            if r.submitted_via == "fleetctl" {
                "submit (one fleetctl start --no-block)".to_string()
            } else {
                format!(
                    "submit ({}, {} in flight)",
                    r.submitted_via, r.submit_concurrency
                )
            },
            format!("{:.2} s", r.submit_s),
        ),
        ("submit -> all active".into(), secs(r.all_active_s)),
        (
            "units/s".into(),
            r.units_per_s.map_or("-".into(), |u| format!("{u:.0}")),
        ),
    ];
    if let Some(s) = &r.steady {
        let methods: Vec<String> = s
            .requests_by_method_per_s
            .iter()
            .map(|(m, v)| format!("{m} {v:.1}"))
            .collect();
        rows.extend([
            (
                format!("steady etcd requests/s ({:.0} s)", s.seconds),
                format!("{:.1} ({})", s.requests_per_s, methods.join(", ")),
            ),
            (
                "steady etcd bytes/s in / out".into(),
                format!("{:.0} / {:.0}", s.received_bytes_per_s, s.sent_bytes_per_s),
            ),
            (
                "steady etcd puts/deletes/txns/ranges per s".into(),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}",
                    s.puts_per_s, s.deletes_per_s, s.txns_per_s, s.ranges_per_s
                ),
            ),
            (
                "steady etcd proposals/s, fsyncs/s".into(),
                format!("{:.2}, {:.2}", s.proposals_per_s, s.fsyncs_per_s),
            ),
        ]);
    }
    let l = &r.listing;
    rows.extend([
        (
            format!("list-unit-files (API, {} units)", l.unit_files),
            ms(&l.list_unit_files_ms),
        ),
        (
            format!("list-units (API, {} states)", l.unit_states),
            ms(&l.list_units_ms),
        ),
    ]);
    if let Some(v) = l.fleetctl_list_unit_files_ms {
        rows.push(("fleetctl list-unit-files".into(), format!("{v:.0} ms")));
    }
    if let Some(v) = l.fleetctl_list_units_ms {
        rows.push(("fleetctl list-units".into(), format!("{v:.0} ms")));
    }
    match &r.failover {
        Some(f) => rows.push((
            format!(
                "kill {} machines ({} units) -> active elsewhere",
                f.killed_machines, f.units_to_move
            ),
            secs(f.all_active_elsewhere_s),
        )),
        None => rows.push(("machine loss".into(), "not run".into())),
    }
    rows.push(("machine leases lost".into(), r.leases_lost.to_string()));
    if let Some(s) = &r.supervised {
        rows.push((
            "supervisor CPU per unit (log forwarders) / units' own".into(),
            format!(
                "{:.2} ms / {:.2} ms ({} forwarder processes, {} unit processes)",
                s.forwarder_ms_per_unit(),
                s.unit_ms_per_unit(),
                s.forwarders,
                s.unit_processes
            ),
        ));
    }
    let m = &r.memory;
    rows.extend([
        (
            "CPU time (bench process) / etcd".into(),
            format!("{:.1} s / {:.1} s", r.cpu_s, r.etcd_cpu_s),
        ),
        (
            "RSS (bench process) all active / settled".into(),
            format!(
                "{} (anon {}) / {} (anon {}) {:.0} s later",
                mb(m.rss_all_active),
                mb(m.anon_all_active),
                mb(m.rss_settled),
                mb(m.anon_settled),
                m.settled_after_s
            ),
        ),
        (
            "peak RSS (bench process) / etcd RSS".into(),
            format!("{} / {}", mb(m.peak_rss), mb(r.etcd_rss)),
        ),
        (
            "per agent: idle / marginal / with units".into(),
            format!(
                "{} / {} / {}",
                kb(m.per_agent_idle),
                kb(m.per_agent_marginal),
                kb(m.per_agent_loaded)
            ),
        ),
    ]);
    for e in &r.errors {
        rows.push(("error".into(), e.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    out
}

/// A line plot of units active over time: hand-written SVG (a few elements; no plotting crate
/// is worth its dependencies for this).
pub fn svg(title: &str, timeline: &Timeline, expected: usize, marks: &[(f64, &str)]) -> String {
    let (w, h) = (720.0, 400.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let tmax = timeline
        .iter()
        .map(|p| p.0)
        .chain(marks.iter().map(|m| m.0))
        .fold(0.0f64, f64::max)
        .max(0.1);
    let ymax = timeline
        .iter()
        .map(|p| p.1)
        .chain([expected])
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: f64| left + pw * t / tmax;
    let y = |v: f64| top + ph * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<path d="M{left},{top} V{} H{}" stroke="black" fill="none"/>"#,
        top + ph,
        left + pw
    );
    for i in 0..=5 {
        let t = tmax * f64::from(i) / 5.0;
        let v = ymax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.1}</text>"#,
            x(t),
            top + ph + 18.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
            left - 6.0,
            y(v) + 4.0
        );
        let _ = writeln!(
            s,
            r##"<path d="M{left},{:.1} H{:.1}" stroke="#ddd"/>"##,
            y(v),
            left + pw
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">units active</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // What "all active" means.
    let _ = writeln!(
        s,
        r##"<path d="M{left},{:.1} H{:.1}" stroke="#2a2" stroke-dasharray="4 3"/>"##,
        y(expected as f64),
        left + pw
    );
    for (t, label) in marks {
        let _ = writeln!(
            s,
            r##"<path d="M{:.1},{top} V{:.1}" stroke="#c33" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" fill="#c33">{}</text>"##,
            x(*t),
            top + ph,
            x(*t) + 4.0,
            top + 14.0,
            escape(label)
        );
    }
    let points: Vec<String> = timeline
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v as f64)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f5fbf" stroke-width="2"/>"##,
        points.join(" ")
    );
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_holds_every_point_and_mark() {
        let timeline = vec![(0.0, 0), (0.5, 40), (1.0, 100)];
        let out = svg("a <b>", &timeline, 100, &[(0.7, "submitted")]);
        assert!(out.starts_with("<svg"));
        assert!(out.trim_end().ends_with("</svg>"));
        assert!(out.contains("a &lt;b&gt;"));
        assert!(out.contains("submitted"));
        let polyline = out.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(polyline.matches(',').count(), 3);
    }

    #[test]
    fn svg_of_an_empty_timeline_is_still_a_picture() {
        let out = svg("empty", &Vec::new(), 0, &[]);
        assert!(out.contains("<polyline"));
        assert!(!out.contains("NaN"));
    }

    #[test]
    fn table_names_unreached_goals_and_errors() {
        let mut r = RunReport {
            run: "t".into(),
            ..RunReport::default()
        };
        r.errors.push("etcd died".into());
        let t = table(&r);
        assert!(t.contains("not reached"), "{t}");
        assert!(t.contains("etcd died"), "{t}");
        assert!(!r.ok());
        r.errors.clear();
        r.all_active_s = Some(1.0);
        assert!(r.ok());
        r.leases_lost = 2;
        assert!(!r.ok(), "a lost lease fails the run");
        let t = table(&r);
        assert!(
            t.lines()
                .any(|l| l.starts_with("machine leases lost") && l.ends_with(" 2")),
            "{t}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["leases_lost"], 2);
        r.leases_lost = 0;
        r.failover = Some(Failover::default());
        assert!(!r.ok());
    }
}
