//! `fleetctl plan`, `fleetctl start --dry-run` and `fleetctl why` against three real fleetd
//! (m0 region=east, m1 and m2 region=west) over a real etcd, asked of a fleetd that need not be
//! the leader: the printed reasons name the rule per machine, and nothing changes.

use anyhow::{ensure, Context, Result};
use cluster::binary::run_fleetctl;
use cluster::{wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The line of `text` that starts with `machine` (a `why` table row).
fn row<'a>(text: &'a str, machine: &str) -> Result<&'a str> {
    text.lines()
        .find(|l| l.starts_with(machine))
        .with_context(|| format!("no line for machine {machine} in:\n{text}"))
}

/// The cells of the `plan` row of `unit`.
fn plan_row(text: &str, unit: &str) -> Result<Vec<String>> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{unit}\t")))
        .with_context(|| format!("no row for {unit} in:\n{text}"))?;
    Ok(line
        .split('\t')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_why_and_dry_run_on_three_machines() {
    let spec = ClusterSpec::with_regions(&["east", "west", "west"]);
    let c = Cluster::start(spec).await.expect("starting the cluster");
    scenario(&c).await.unwrap();
}

async fn scenario(c: &Cluster) -> Result<()> {
    let ids: Vec<String> = c.machines().iter().map(|m| m.id.clone()).collect();
    let web = ("Conflicts", "web.*.service");
    c.submit(&[
        c.service("db.service", &[("MachineMetadata", "region=east")]),
        c.service("db-backup.service", &[("MachineOf", "db.service")]),
        c.service("web.0.service", &[web]),
        c.service("web.1.service", &[web]),
        c.service("gpu.service", &[("MachineMetadata", "region=north")]),
    ])
    .await?;
    let placed: BTreeMap<String, String> = wait_for(
        "four units placed, gpu.service with a reason",
        DEFAULT_DEADLINE,
        || async {
            let units = c.units().await.map_err(|e| format!("{e:#}"))?;
            let placed: BTreeMap<String, String> = units
                .iter()
                .filter(|u| !u.machine_id.is_empty())
                .map(|u| (u.name.clone(), u.machine_id.clone()))
                .collect();
            let gpu_reason = units
                .iter()
                .any(|u| u.name == "gpu.service" && u.reason.is_some());
            if placed.len() == 4 && gpu_reason {
                Ok(placed)
            } else {
                Err(format!("{units:?}"))
            }
        },
    )
    .await?;
    ensure!(placed["db.service"] == ids[0], "{placed:?}");
    let dir = tempfile::tempdir()?;
    // Ask machine 2: any fleetd answers.
    let endpoint = c.machine(2).endpoint();
    let ctl = |args: &'static [&'static str]| run_fleetctl(&endpoint, dir.path(), args);

    // Metadata: runs on m0, and m1 is told why not.
    let why = ctl(&["why", "db.service"]).await?;
    ensure!(why.code == 0, "why db.service failed: {}", why.stderr);
    ensure!(
        why.stdout
            .starts_with(&format!("db.service runs on {}: still fits there", ids[0])),
        "{}",
        why.stdout
    );
    ensure!(
        row(&why.stdout, &ids[1])?
            .contains("no\tMachineMetadata wants region=east, machine has region=west"),
        "{}",
        why.stdout
    );

    // MachineOf: the sidekick goes where its target is.
    let why = ctl(&["why", "db-backup.service"]).await?;
    ensure!(
        row(&why.stdout, &ids[2])?
            .contains(&format!("MachineOf target db.service runs on {}", ids[0])),
        "{}",
        why.stdout
    );

    // Conflicts: named with the unit and where it runs.
    let why = ctl(&["why", "web.1.service"]).await?;
    let web0_at = &placed["web.0.service"];
    ensure!(
        row(&why.stdout, web0_at)?.contains("conflicts with web.0.service, which runs here"),
        "{}",
        why.stdout
    );

    // The impossible unit.
    let why = ctl(&["why", "gpu.service"]).await?;
    ensure!(
        why.stdout
            .starts_with("gpu.service cannot run: no machine matches MachineMetadata region=north"),
        "{}",
        why.stdout
    );
    for id in &ids {
        ensure!(
            row(&why.stdout, id)?.contains("no\tMachineMetadata wants region=north"),
            "{}",
            why.stdout
        );
    }

    // Unknown units: named, with the way out.
    let why = ctl(&["why", "nope.service"]).await?;
    ensure!(why.code == 1, "why nope.service exited {}", why.code);
    ensure!(
        why.stderr.contains("nope.service") && why.stderr.contains("fleetctl submit"),
        "{}",
        why.stderr
    );

    // plan of submitted units, and start --dry-run of a file: nothing changes.
    let units_before = c.units().await?;
    let placements_before = c.placements().await?;
    let plan = ctl(&["plan", "db.service", "gpu.service"]).await?;
    ensure!(plan.code == 0, "plan failed: {}", plan.stderr);
    ensure!(
        plan.stdout.starts_with("UNIT\t"),
        "no legend:\n{}",
        plan.stdout
    );
    ensure!(
        plan_row(&plan.stdout, "db.service")?[..3] == [s("db.service"), ids[0].clone(), s("keep")],
        "{}",
        plan.stdout
    );
    ensure!(
        plan_row(&plan.stdout, "gpu.service")?[..3] == [s("gpu.service"), s("-"), s("none")],
        "{}",
        plan.stdout
    );

    write(
        dir.path(),
        "cache.service",
        "[Service]\nExecStart=/bin/sleep 600\n\n[X-Fleet]\nMachineMetadata=region=west\nConflicts=web.*.service\n",
    )?;
    let dry = ctl(&["start", "--dry-run", "cache.service"]).await?;
    ensure!(dry.code == 0, "start --dry-run failed: {}", dry.stderr);
    let cells = plan_row(&dry.stdout, "cache.service")?;
    // Both west machines run a web unit, which cache.service conflicts with.
    ensure!(
        cells[..3] == [s("cache.service"), s("-"), s("none")]
            && cells[3].contains("conflicts with web.0.service, web.1.service"),
        "{}",
        dry.stdout
    );
    let dry = ctl(&["start", "--dry-run", "db.service"]).await?;
    ensure!(
        plan_row(&dry.stdout, "db.service")?[2] == "keep",
        "{}",
        dry.stdout
    );

    ensure!(
        c.units().await? == units_before,
        "plan or start --dry-run changed the units"
    );
    ensure!(
        c.placements().await? == placements_before,
        "plan or start --dry-run changed the placements"
    );
    Ok(())
}

fn s(v: &str) -> String {
    v.to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
