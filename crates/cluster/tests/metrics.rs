//! `/metrics` scraped as Prometheus would, from three real fleetd over a real etcd, and read
//! with a Prometheus text-format parser: every family is there, and the figures move as units
//! start (`fleetctl start`) and a machine dies.

use anyhow::{ensure, Context, Result};
use cluster::{wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use prometheus_parse::{Scrape, Value};

/// The families fleetd serves (names as sampled: counters with `_total`, histograms as
/// their `_count`).
const FAMILIES: &[&str] = &[
    "fleet_api_available",
    "fleet_api_requests_total",
    "fleet_api_request_duration_seconds",
    "fleet_registry_requests_total",
    "fleet_registry_request_duration_seconds",
    "fleet_agent_lease_renewals_total",
    "fleet_agent_leases_lost_total",
    "fleet_agent_unit_actions_total",
    "fleet_agent_units",
    "fleet_engine_leader",
    "fleet_engine_passes_total",
    "fleet_engine_pass_duration_seconds",
    "fleet_engine_placements_total",
    "fleet_engine_unplaceable_units",
    "fleet_machines",
    "fleet_units_desired",
];

async fn scrape(c: &Cluster, i: usize) -> Result<Scrape> {
    let text = c.machine(i).metrics().await?;
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .with_context(|| format!("parsing /metrics of machine {i}:\n{text}"))
}

/// The value of the samples of `metric` whose labels include `labels`, summed.
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// `metric` summed over every serving machine.
async fn cluster_sum(c: &Cluster, metric: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let mut total = 0.0;
    for m in c.machines().iter().filter(|m| m.is_serving()) {
        total += sum(&scrape(c, m.index).await?, metric, labels);
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_units_start_and_a_machine_dies() {
    let spec = ClusterSpec::default();
    let c = Cluster::start(spec).await.expect("starting the cluster");
    scenario(&c).await.unwrap();
}

/// `fleetctl start` of `names`, as a person would: the harness's tagged services written as
/// files, started through machine 0's socket.
async fn fleetctl_start(c: &Cluster, names: &[&str]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    for name in names {
        let unit = c.service(name, &[]);
        let mut text = String::new();
        let mut section = "";
        for o in &unit.options {
            if o.section != section {
                section = &o.section;
                text.push_str(&format!("[{section}]\n"));
            }
            text.push_str(&format!("{}={}\n", o.name, o.value));
        }
        std::fs::write(dir.path().join(name), text)?;
    }
    let bin = cluster::binary::fleetctl_binary()?;
    let out = tokio::process::Command::new(bin)
        .arg("start")
        .args(names)
        .env("FLEETCTL_ENDPOINT", c.machine(0).endpoint())
        .current_dir(dir.path())
        .output()
        .await
        .context("running fleetctl start")?;
    println!(
        "$ fleetctl start {}\n{}{}",
        names.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "fleetctl start exited {}", out.status);
    Ok(())
}

async fn scenario(c: &Cluster) -> Result<()> {
    let leader = c.wait_for_leader().await?;
    for i in 0..3 {
        let s = scrape(c, i).await?;
        for family in FAMILIES {
            ensure!(
                s.samples.iter().any(|x| x.metric == *family) || s.docs.contains_key(*family),
                "machine {i} serves no {family}"
            );
        }
        ensure!(
            sum(&s, "fleet_api_available", &[]) == 1.0,
            "machine {i} unavailable"
        );
        let leads = sum(&s, "fleet_engine_leader", &[]);
        ensure!(
            leads == f64::from(u8::from(i == leader)),
            "machine {i}: leader {leads}"
        );
    }
    dashboard_names_only_served_families(&scrape(c, leader).await?)?;
    let placed_before = cluster_sum(c, "fleet_engine_placements_total", &[]).await?;
    let starts_before =
        cluster_sum(c, "fleet_agent_unit_actions_total", &[("action", "start")]).await?;

    let names = ["a.service", "b.service", "c.service"];
    fleetctl_start(c, &names).await?;
    c.wait_for_active_units("three units active", |a| {
        names.iter().all(|n| a.contains_key(*n))
    })
    .await?;

    // The agents publish a state once the unit manager reports it, so by now each agent has
    // counted its units active; the leader's gauges follow its last pass.
    wait_for(
        "the figures of three running units",
        DEFAULT_DEADLINE,
        || async {
            let check = async {
                let placed = cluster_sum(c, "fleet_engine_placements_total", &[]).await?;
                let starts =
                    cluster_sum(c, "fleet_agent_unit_actions_total", &[("action", "start")])
                        .await?;
                let active = cluster_sum(c, "fleet_agent_units", &[("state", "active")]).await?;
                let s = scrape(c, leader).await?;
                let launched = sum(&s, "fleet_units_desired", &[("state", "launched")]);
                let machines = sum(&s, "fleet_machines", &[]);
                let figures = format!(
                    "placements {placed_before} -> {placed}, starts {starts_before} -> {starts}, \
                 active {active}, launched {launched}, machines {machines}"
                );
                if placed >= placed_before + 3.0
                    && starts >= starts_before + 3.0
                    && active >= 3.0
                    && launched == 3.0
                    && machines == 3.0
                {
                    Ok(figures)
                } else {
                    Err(anyhow::anyhow!(figures))
                }
            };
            check.await.map_err(|e: anyhow::Error| format!("{e:#}"))
        },
    )
    .await
    .map(|figures| println!("{figures}"))?;
    let s = scrape(c, leader).await?;
    ensure!(
        sum(&s, "fleet_engine_passes_total", &[]) >= 1.0,
        "no engine pass counted"
    );
    ensure!(
        sum(&s, "fleet_api_request_duration_seconds_count", &[]) >= 1.0,
        "no API request timed"
    );
    ensure!(
        sum(&s, "fleet_registry_requests_total", &[("kind", "txn")]) >= 1.0,
        "no registry transaction counted"
    );
    // The lease is refreshed every third of agent_ttl: the first may not have come yet.
    wait_for(
        "a machine lease refresh counted",
        DEFAULT_DEADLINE,
        || async {
            let s = scrape(c, leader).await.map_err(|e| format!("{e:#}"))?;
            let renewed = sum(&s, "fleet_agent_lease_renewals_total", &[("result", "ok")]);
            let keep_alives = sum(
                &s,
                "fleet_registry_requests_total",
                &[("kind", "keep_alive"), ("result", "success")],
            );
            if renewed >= 1.0 && keep_alives >= renewed {
                Ok(())
            } else {
                Err(format!(
                    "renewals {renewed}, keep_alive requests {keep_alives}"
                ))
            }
        },
    )
    .await?;

    // A machine that is not the leader crashes: the leader's machines gauge drops once its
    // lease expires, and its units are placed again elsewhere.
    let victim = (0..3)
        .find(|i| *i != leader)
        .context("a machine besides the leader")?;
    let placed_before_kill = cluster_sum(c, "fleet_engine_placements_total", &[]).await?;
    let victim_units = sum(
        &scrape(c, victim).await?,
        "fleet_agent_units",
        &[("state", "active")],
    );
    c.machine(victim).kill();
    wait_for(
        "the leader to count two machines",
        DEFAULT_DEADLINE,
        || async {
            let s = scrape(c, leader).await.map_err(|e| format!("{e:#}"))?;
            let machines = sum(&s, "fleet_machines", &[]);
            let placed = sum(&s, "fleet_engine_placements_total", &[]);
            if machines == 2.0 && placed >= placed_before_kill + victim_units {
                Ok(())
            } else {
                Err(format!(
                    "machines {machines}, placements {placed_before_kill} -> {placed} \
                 ({victim_units} units to move)"
                ))
            }
        },
    )
    .await?;
    Ok(())
}

/// `dist/grafana-dashboard.json` asks only for families fleetd serves: a renamed family
/// fails here rather than leaving an empty panel.
fn dashboard_names_only_served_families(s: &Scrape) -> Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        for target in panel["targets"]
            .as_array()
            .context("a panel without targets")?
        {
            exprs.push(
                target["expr"]
                    .as_str()
                    .context("a target without expr")?
                    .to_string(),
            );
        }
    }
    ensure!(!exprs.is_empty(), "the dashboard has no queries");
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("fleet_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            ensure!(
                s.docs.contains_key(family) || s.samples.iter().any(|x| x.metric == family),
                "the dashboard asks for {name}, which fleetd does not serve ({expr})"
            );
        }
    }
    Ok(())
}
