//! The figures and findings of a load run: a table for people, JSON for files, and the list of
//! problems a test asserts is empty.

use super::client::{Check, ClientRecord, Kind};
use super::{LoadOptions, RegistryKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From latencies in microseconds (sorted here).
    pub fn of(mut micros: Vec<u64>) -> Latency {
        micros.sort_unstable();
        let at = |q: f64| {
            if micros.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least q of all at or below it.
            let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            micros[rank - 1] as f64 / 1000.0
        };
        Latency {
            requests: micros.len() as u64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: micros.last().map_or(0.0, |m| *m as f64 / 1000.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub registry: RegistryKind,
    pub clients: usize,
    pub seconds: f64,
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    /// Every request.
    pub latency: Latency,
    /// By kind of request (`list-units`, `set-state`, ...).
    pub latency_by_kind: BTreeMap<String, Latency>,
    /// Answers by kind, then by status (`2xx`, `404`, `503`, `timeout`, `transport`, ...).
    pub statuses: BTreeMap<String, BTreeMap<String, u64>>,
    /// Answers by status, all kinds together.
    pub status_totals: BTreeMap<String, u64>,
    /// Answers other than 2xx, a 4xx naming its problem, or 503.
    pub unclean: u64,
    pub unclean_sample: Vec<String>,
    pub refused_sample: Vec<String>,
    pub unavailable_sample: Vec<String>,
    pub units_checked: usize,
    pub lost_updates: Vec<String>,
    pub check_errors: Vec<String>,
    pub serving_after: bool,
    pub fleetd_cpu_s: f64,
    /// CPU the clients (this process) used meanwhile: on a small machine they compete with
    /// fleetd, and a figure near the machine's cores says the run measured the clients.
    pub clients_cpu_s: f64,
    pub fleetd_rss_start_bytes: u64,
    pub fleetd_rss_peak_bytes: u64,
    pub fleetd_rss_end_bytes: u64,
    pub rss_bound_bytes: u64,
    pub fleetd_problems: Vec<String>,
    /// `ERROR` lines in fleetd's log (shown, not failed on: a 503 logs one too).
    pub fleetd_log_errors: usize,
    pub fleetd_log_error_sample: Vec<String>,
}

pub(super) fn build(
    opts: &LoadOptions,
    elapsed: Duration,
    records: &[ClientRecord],
    check: Check,
) -> LoadReport {
    let mut by_kind: BTreeMap<Kind, Vec<u64>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut statuses: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut status_totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut unclean = 0;
    let mut unclean_sample = Vec::new();
    let mut refused_sample = Vec::new();
    let mut unavailable_sample = Vec::new();
    let mut lost = Vec::new();
    for r in records {
        for (kind, micros) in &r.samples {
            by_kind.entry(*kind).or_default().push(*micros);
            all.push(*micros);
        }
        for ((kind, status), n) in &r.statuses {
            *statuses
                .entry(kind.as_str().to_string())
                .or_default()
                .entry(status.clone())
                .or_default() += n;
            *status_totals.entry(status.clone()).or_default() += n;
        }
        unclean += r.unclean;
        unclean_sample.extend(r.unclean_sample.iter().cloned());
        refused_sample.extend(r.refused_sample.iter().cloned());
        unavailable_sample.extend(r.unavailable_sample.iter().cloned());
        lost.extend(r.lost.iter().cloned());
    }
    unclean_sample.truncate(10);
    refused_sample.truncate(10);
    unavailable_sample.truncate(10);
    lost.extend(check.lost);
    let requests = all.len() as u64;
    let secs = elapsed.as_secs_f64();
    LoadReport {
        registry: opts.registry,
        clients: opts.clients,
        seconds: opts.duration.as_secs_f64(),
        elapsed_s: secs,
        requests,
        requests_per_s: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        latency: Latency::of(all),
        latency_by_kind: by_kind
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), Latency::of(v)))
            .collect(),
        statuses,
        status_totals,
        unclean,
        unclean_sample,
        refused_sample,
        unavailable_sample,
        units_checked: check.units_checked,
        lost_updates: lost,
        check_errors: check.errors,
        serving_after: check.serving,
        fleetd_cpu_s: 0.0,
        clients_cpu_s: 0.0,
        fleetd_rss_start_bytes: 0,
        fleetd_rss_peak_bytes: 0,
        fleetd_rss_end_bytes: 0,
        rss_bound_bytes: opts.rss_bound,
        fleetd_problems: Vec::new(),
        fleetd_log_errors: 0,
        fleetd_log_error_sample: Vec::new(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl LoadReport {
    /// What the run must not show: unclean answers, lost updates, a check that could not
    /// tell, fleetd gone or over its memory bound. Empty when the run passed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.requests == 0 {
            p.push("no request was made".to_string());
        }
        if self.unclean > 0 {
            p.push(format!(
                "{} answers were neither 2xx, a 4xx naming its problem, nor 503; first: {}",
                self.unclean,
                self.unclean_sample.join(" | ")
            ));
        }
        for l in self.lost_updates.iter().take(10) {
            p.push(format!("lost update: {l}"));
        }
        if self.lost_updates.len() > 10 {
            p.push(format!(
                "... {} lost updates in all",
                self.lost_updates.len()
            ));
        }
        for e in &self.check_errors {
            p.push(format!("the check after the run could not read: {e}"));
        }
        if !self.serving_after {
            p.push("fleetd did not serve its API after the run".to_string());
        }
        if self.fleetd_rss_peak_bytes > self.rss_bound_bytes {
            p.push(format!(
                "fleetd's peak RSS {} is over the bound {}",
                mib(self.fleetd_rss_peak_bytes),
                mib(self.rss_bound_bytes)
            ));
        }
        p.extend(self.fleetd_problems.iter().cloned());
        p
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "load on {}: {} clients for {:.1} s: {} requests, {:.0} requests/s",
            self.registry.as_str(),
            self.clients,
            self.elapsed_s,
            self.requests,
            self.requests_per_s
        );
        let _ = writeln!(
            s,
            "{:<14} {:>9} {:>10} {:>10} {:>10}  answers",
            "request", "count", "p50 ms", "p99 ms", "max ms"
        );
        let row = |s: &mut String, name: &str, l: &Latency, answers: String| {
            let _ = writeln!(
                s,
                "{name:<14} {:>9} {:>10.1} {:>10.1} {:>10.1}  {answers}",
                l.requests, l.p50_ms, l.p99_ms, l.max_ms
            );
        };
        let answers = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (kind, l) in &self.latency_by_kind {
            let a = self.statuses.get(kind).map(answers).unwrap_or_default();
            row(&mut s, kind, l, a);
        }
        row(&mut s, "all", &self.latency, answers(&self.status_totals));
        let _ = writeln!(
            s,
            "fleetd: RSS {} at start, {} peak (bound {}), {} at the end; {:.1} s CPU (the clients: {:.1} s); {} ERROR lines in its log",
            mib(self.fleetd_rss_start_bytes),
            mib(self.fleetd_rss_peak_bytes),
            mib(self.rss_bound_bytes),
            mib(self.fleetd_rss_end_bytes),
            self.fleetd_cpu_s,
            self.clients_cpu_s,
            self.fleetd_log_errors
        );
        let _ = writeln!(
            s,
            "checked after the run: {} units, {} lost updates, serving: {}",
            self.units_checked,
            self.lost_updates.len(),
            self.serving_after
        );
        for r in &self.refused_sample {
            let _ = writeln!(s, "refused: {r}");
        }
        for u in &self.unavailable_sample {
            let _ = writeln!(s, "503: {u}");
        }
        for e in &self.fleetd_log_error_sample {
            let _ = writeln!(s, "fleetd log: {e}");
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(s, "no problems");
        }
        for p in problems {
            let _ = writeln!(s, "PROBLEM: {p}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let l = Latency::of((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(l.requests, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        let one = Latency::of(vec![1500]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (1.5, 1.5, 1.5));
        assert_eq!(Latency::of(Vec::new()).requests, 0);
    }

    fn passing() -> LoadReport {
        let opts = LoadOptions::new(RegistryKind::Etcd, "fleetd".into());
        let record = ClientRecord {
            samples: vec![(Kind::GetUnit, 2000), (Kind::SetState, 4000)],
            statuses: BTreeMap::from([
                ((Kind::GetUnit, "2xx".to_string()), 1),
                ((Kind::SetState, "503".to_string()), 1),
            ]),
            ..ClientRecord::default()
        };
        let check = Check {
            units_checked: 1,
            serving: true,
            ..Check::default()
        };
        build(&opts, Duration::from_secs(2), &[record], check)
    }

    #[test]
    fn a_clean_run_has_no_problems_and_its_figures_add_up() {
        let r = passing();
        assert_eq!(r.problems(), Vec::<String>::new());
        assert_eq!(r.requests, 2);
        assert_eq!(r.requests_per_s, 1.0);
        assert_eq!(r.status_totals["503"], 1);
        assert_eq!(r.latency_by_kind["set-state"].max_ms, 4.0);
        let table = r.table();
        assert!(table.contains("no problems"), "{table}");
        assert!(table.contains("503: 1"), "{table}");
    }

    #[test]
    fn each_failure_is_named() {
        let mut r = passing();
        r.unclean = 1;
        r.unclean_sample = vec!["get-unit: timeout".into()];
        r.lost_updates = vec!["after the run, GET u shows absent".into()];
        r.serving_after = false;
        r.fleetd_rss_peak_bytes = r.rss_bound_bytes + 1;
        r.fleetd_problems = vec!["fleetd panicked: x".into()];
        let p = r.problems().join("\n");
        for want in [
            "get-unit: timeout",
            "lost update: after the run",
            "did not serve",
            "over the bound",
            "panicked",
        ] {
            assert!(p.contains(want), "{want} missing from:\n{p}");
        }
        assert!(r.table().contains("PROBLEM: "));
    }
}
