//! Global units by exception on three real fleetd (regions a, b, c) over a real etcd: a global
//! unit active everywhere, one that fails on one machine (its process killed there), one with
//! target `loaded`, one restricted by metadata to two machines. The API's unit states and
//! `fleetctl list-units` show, row by row, what a machine publishing every instance shows
//! (the rows are written out below from the known outcomes), while the registry holds a state
//! of its own only for the failed instance, plus one summary per machine.

use anyhow::{ensure, Context, Result};
use cluster::binary::run_fleetctl;
use cluster::{wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_units_are_listed_as_before_from_summaries_and_exceptions() {
    let spec = ClusterSpec::with_regions(&["a", "b", "c"]);
    let c = Cluster::start(spec).await.expect("starting the cluster");
    if let Err(e) = scenario(&c).await {
        c.print_diagnostics();
        panic!("{e:#}");
    }
}

/// A listed row: unit, machine, hash, load, active, sub.
type Row = (String, String, String, String, String, String);

async fn rows(c: &Cluster) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = c
        .unit_states()
        .await?
        .into_iter()
        .map(|s| {
            (
                s.name,
                s.machine_id,
                s.hash,
                s.systemd_load_state,
                s.systemd_active_state,
                s.systemd_sub_state,
            )
        })
        .collect();
    // The API lists in (unit, machine) order: checked, not assumed.
    let mut sorted = rows.clone();
    sorted.sort();
    ensure!(
        rows == sorted,
        "rows not in (unit, machine) order: {rows:#?}"
    );
    rows.sort();
    Ok(rows)
}

/// Each unit's body hash, from its job record.
/// Waits until the cluster lists exactly `expected`.
async fn wait_rows(c: &Cluster, what: &str, expected: &[Row]) -> Result<()> {
    wait_for(what, DEFAULT_DEADLINE, || async {
        let now = rows(c).await.map_err(|e| format!("{e:#}"))?;
        if now == expected {
            Ok(())
        } else {
            Err(format!("{now:#?}"))
        }
    })
    .await
}

async fn hashes(c: &Cluster) -> Result<BTreeMap<String, String>> {
    let prefix = format!("{}/job/", c.key_prefix().trim_end_matches('/'));
    let mut out = BTreeMap::new();
    for (key, value) in c.registry_dump().await? {
        if let Some(unit) = key.strip_prefix(&prefix) {
            let job: serde_json::Value =
                serde_json::from_str(&value).with_context(|| format!("job record {key}"))?;
            let hash = job["hash"]
                .as_str()
                .context("a job record without a hash")?;
            out.insert(unit.to_string(), hash.to_string());
        }
    }
    Ok(out)
}

async fn scenario(c: &Cluster) -> Result<()> {
    let ids: Vec<String> = c.machines().iter().map(|m| m.id.clone()).collect();
    let global = ("Global", "true");
    c.submit(&[
        c.service("all.service", &[global]),
        c.service("flaky.service", &[global]),
        cluster::units::with_state(
            c.service("loaded.service", &[global]),
            api::TargetState::Loaded,
        ),
        c.service(
            "some.service",
            &[
                global,
                ("MachineMetadata", "region=a"),
                ("MachineMetadata", "region=b"),
            ],
        ),
    ])
    .await?;
    let hash = hashes(c).await?;
    let row = |unit: &str, m: usize, active: &str, sub: &str| -> Row {
        (
            unit.to_string(),
            ids[m].clone(),
            hash.get(unit).cloned().unwrap_or_default(),
            "loaded".to_string(),
            active.to_string(),
            sub.to_string(),
        )
    };
    let mut expected: Vec<Row> = Vec::new();
    for m in 0..3 {
        expected.push(row("all.service", m, "active", "running"));
        expected.push(row("flaky.service", m, "active", "running"));
        expected.push(row("loaded.service", m, "inactive", "dead"));
    }
    for m in 0..2 {
        expected.push(row("some.service", m, "active", "running"));
    }
    expected.sort();
    wait_rows(c, "every global instance as wanted", &expected).await?;

    // flaky.service's process dies on machine 2: failed there, and only there.
    let pid = *c
        .machine(2)
        .unit_pids()
        .get("flaky.service")
        .context("flaky.service runs no process on machine 2")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("killing flaky.service's process {pid}"))?;
    let failed = row("flaky.service", 2, "failed", "failed");
    for r in expected.iter_mut() {
        if (r.0.as_str(), r.1.as_str()) == ("flaky.service", ids[2].as_str()) {
            *r = failed.clone();
        }
    }
    wait_rows(c, "flaky.service failed on machine 2", &expected).await?;

    // The registry holds a state of its own for the failed instance only, and one summary per
    // machine.
    let dump = c.registry_dump().await?;
    let under = |what: &str| -> Vec<String> {
        let p = format!("{}/{what}/", c.key_prefix().trim_end_matches('/'));
        dump.iter()
            .filter_map(|(k, _)| k.strip_prefix(&p).map(str::to_string))
            .collect()
    };
    ensure!(
        under("gstates") == vec![format!("flaky.service/{}", ids[2])],
        "global states: {:?}",
        under("gstates")
    );
    let mut summaries = under("gsummary");
    summaries.sort();
    let mut want = ids.clone();
    want.sort();
    ensure!(summaries == want, "summaries: {summaries:?}");

    // fleetctl list-units shows the same rows, one per (global unit, machine).
    let dir = tempfile::tempdir()?;
    let listed = run_fleetctl(
        &c.machine(1).endpoint(),
        dir.path(),
        &[
            "list-units",
            "--full",
            "--no-legend",
            "--fields=unit,machine,hash,load,active,sub",
        ],
    )
    .await?;
    ensure!(listed.code == 0, "list-units: {}", listed.stderr);
    let mut lines: Vec<Vec<String>> = listed
        .stdout
        .lines()
        .map(|l| {
            l.split('\t')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect();
    lines.sort();
    let want: Vec<Vec<String>> = expected
        .iter()
        .map(|(u, m, h, load, active, sub)| {
            let ip = &c.machine(ids.iter().position(|i| i == m).unwrap_or(0)).ip;
            vec![
                u.clone(),
                format!("{m}/{ip}"),
                h.clone(),
                load.clone(),
                active.clone(),
                sub.clone(),
            ]
        })
        .collect();
    ensure!(
        lines == want,
        "list-units:\n{}\nwanted {want:#?}",
        listed.stdout
    );
    Ok(())
}
