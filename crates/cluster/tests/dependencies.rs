//! Dependencies and sidekicks on three real fleetd over a real etcd, with the process
//! supervisor: `fleetctl start` of a unit and what it `Requires=`/`BindsTo=`/`Wants=` puts
//! them on one machine and starts them in order, with never a unit in a failed or not-loaded
//! state on the way (fleet's issues 997, 1003, 1079); `--with-deps` brings along the files
//! beside the given one and a sidekick's `MachineOf=` target, and says so.

use anyhow::{ensure, Context, Result};
use cluster::binary::fleetctl_binary;
use cluster::cleanup::TAG_VAR;
use cluster::{wait_for, Cluster, ClusterSpec, POLL_INTERVAL};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs fleetctl against `endpoint` in `cwd`; meanwhile polls the unit states and returns
/// every state of `watched` units that was failed, not loaded or had a reason from the unit
/// manager (a refused start), as `unit: load/active/sub reason`.
async fn fleetctl_watching(
    c: &Cluster,
    cwd: &Path,
    args: &[&str],
    watched: &[&str],
) -> Result<(Run, BTreeSet<String>)> {
    let bin = fleetctl_binary()?;
    let (endpoint, cwd) = (c.machine(0).endpoint(), cwd.to_path_buf());
    let line = args.join(" ");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(&args)
            .env("FLEETCTL_ENDPOINT", endpoint)
            .current_dir(cwd)
            .output()
    });
    let mut bad = BTreeSet::new();
    let out = loop {
        for s in c.unit_states().await.unwrap_or_default() {
            // An empty load state is a unit placed whose state is not reported yet: no failure.
            if watched.contains(&s.name.as_str())
                && (!matches!(s.systemd_load_state.as_str(), "loaded" | "")
                    || s.systemd_active_state == "failed"
                    || s.systemd_sub_state == "failed"
                    || s.reason.is_some())
            {
                bad.insert(format!(
                    "{}: {}/{}/{} {:?}",
                    s.name,
                    s.systemd_load_state,
                    s.systemd_active_state,
                    s.systemd_sub_state,
                    s.reason
                ));
            }
        }
        tokio::select! {
            done = &mut child => break done?.context("running fleetctl")?,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    };
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!("$ fleetctl {line}\n{}{}", run.stdout, run.stderr);
    Ok((run, bad))
}

fn spec() -> ClusterSpec {
    ClusterSpec::default()
}

/// The repository's examples/ directory.
fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Writes `text` as unit `name` in `dir`, tagged so the harness kills its processes.
fn write_unit(c: &Cluster, dir: &Path, name: &str, text: &str) -> Result<()> {
    let tagged = text.replacen(
        "[Service]\n",
        &format!("[Service]\nEnvironment={TAG_VAR}={}\n", c.tag()),
        1,
    );
    ensure!(tagged != text, "unit {name} has no [Service] section");
    std::fs::write(dir.join(name), tagged).with_context(|| format!("writing {name}"))
}

/// The seed's sidekick example as `PREFIX.service` and `PREFIX-discovery.service` in `dir`.
fn sidekick_pair(c: &Cluster, dir: &Path, prefix: &str) -> Result<(String, String)> {
    for file in ["apache.service", "apache-discovery.service"] {
        let text = std::fs::read_to_string(examples().join(file))
            .with_context(|| format!("reading examples/{file}"))?;
        let name = file.replace("apache", prefix);
        write_unit(c, dir, &name, &text.replace("apache", prefix))?;
    }
    Ok((
        format!("{prefix}.service"),
        format!("{prefix}-discovery.service"),
    ))
}

/// Waits until every unit of `group` is active, all on one machine, and returns it.
async fn active_together(c: &Cluster, group: &[&str]) -> Result<String> {
    wait_for(
        &format!("{group:?} active on one machine"),
        cluster::DEFAULT_DEADLINE,
        || async {
            let active = c.active_units().await.map_err(|e| format!("{e:#}"))?;
            let at: BTreeSet<&Vec<String>> = group.iter().filter_map(|u| active.get(*u)).collect();
            match at.into_iter().collect::<Vec<_>>()[..] {
                [one] if group.iter().all(|u| active.contains_key(*u)) && one.len() == 1 => {
                    Ok(one[0].clone())
                }
                _ => Err(format!("{active:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidekick_example_starts_on_one_machine_never_failing_to_load() {
    let c = Cluster::start(spec()).await.expect("starting the cluster");
    if let Err(e) = sidekick_scenario(&c).await {
        c.print_diagnostics();
        panic!("{e:#}");
    }
}

async fn sidekick_scenario(c: &Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Other units first, so that "least loaded" alone would spread the pair.
    write_unit(
        c,
        dir.path(),
        "other.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )?;
    let (run, _) = fleetctl_watching(c, dir.path(), &["start", "other.service"], &[]).await?;
    ensure!(run.code == 0, "start other.service: {}", run.stderr);

    // One `fleetctl start` of both.
    let (main, side) = sidekick_pair(c, dir.path(), "apache")?;
    let (run, bad) =
        fleetctl_watching(c, dir.path(), &["start", &main, &side], &[&main, &side]).await?;
    ensure!(run.code == 0, "start of both failed: {}", run.stderr);
    ensure!(bad.is_empty(), "failed or not loaded on the way: {bad:?}");
    let at = active_together(c, &[&main, &side]).await?;
    println!("{main} and {side} run on {at}");

    // The main unit alone with --with-deps brings the sidekick (Wants=) along.
    let (main, side) = sidekick_pair(c, dir.path(), "web")?;
    let (run, bad) = fleetctl_watching(
        c,
        dir.path(),
        &["start", "--with-deps", &main],
        &[&main, &side],
    )
    .await?;
    ensure!(run.code == 0, "start --with-deps failed: {}", run.stderr);
    ensure!(
        run.stdout
            .contains(&format!("Brought along: {side} (Wants)")),
        "{}",
        run.stdout
    );
    ensure!(bad.is_empty(), "failed or not loaded on the way: {bad:?}");
    active_together(c, &[&main, &side]).await?;

    // A sidekick alone without --with-deps waits for its MachineOf target, as in fleet...
    let (main, side) = sidekick_pair(c, dir.path(), "cache")?;
    let (run, _) = fleetctl_watching(c, dir.path(), &["start", "--no-block", &side], &[]).await?;
    ensure!(
        run.code == 0,
        "start --no-block of the sidekick: {}",
        run.stderr
    );
    ensure!(!run.stdout.contains("Brought along"), "{}", run.stdout);
    wait_for(
        "the sidekick unplaced, with a reason",
        cluster::DEFAULT_DEADLINE,
        || async {
            let units = c.units().await.map_err(|e| format!("{e:#}"))?;
            match units.iter().find(|u| u.name == side) {
                Some(u)
                    if u.machine_id.is_empty()
                        && u.reason.as_deref().is_some_and(|r| r.contains(&main)) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    ensure!(
        !c.units().await?.iter().any(|u| u.name == main),
        "{main} was submitted without --with-deps"
    );
    // ...and with --with-deps brings it along.
    let (run, bad) = fleetctl_watching(
        c,
        dir.path(),
        &["start", "--with-deps", &side],
        &[&main, &side],
    )
    .await?;
    ensure!(
        run.code == 0,
        "start --with-deps of the sidekick failed: {}",
        run.stderr
    );
    ensure!(
        run.stdout
            .contains(&format!("Brought along: {main} (BindsTo)")),
        "{}",
        run.stdout
    );
    ensure!(bad.is_empty(), "failed or not loaded on the way: {bad:?}");
    active_together(c, &[&main, &side]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_goes_together_and_wants_of_a_missing_unit_is_ignored() {
    let c = Cluster::start(spec()).await.expect("starting the cluster");
    if let Err(e) = chain_scenario(&c).await {
        c.print_diagnostics();
        panic!("{e:#}");
    }
}

async fn chain_scenario(c: &Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let body = |deps: &str| format!("[Unit]\n{deps}\n[Service]\nExecStart=/bin/sleep infinity\n");
    write_unit(
        c,
        dir.path(),
        "front.service",
        &body("Requires=middle.service\nAfter=middle.service"),
    )?;
    write_unit(
        c,
        dir.path(),
        "middle.service",
        &body("BindsTo=back.service\nAfter=back.service"),
    )?;
    write_unit(c, dir.path(), "back.service", &body(""))?;
    let chain = ["front.service", "middle.service", "back.service"];
    let (run, bad) = fleetctl_watching(
        c,
        dir.path(),
        &["start", "--with-deps", "front.service"],
        &chain,
    )
    .await?;
    ensure!(
        run.code == 0,
        "start --with-deps of the chain failed: {}",
        run.stderr
    );
    for line in [
        "Brought along: middle.service (Requires)",
        "Brought along: back.service (BindsTo)",
    ] {
        ensure!(run.stdout.contains(line), "no {line:?} in:\n{}", run.stdout);
    }
    ensure!(bad.is_empty(), "failed or not loaded on the way: {bad:?}");
    let at = active_together(c, &chain).await?;
    println!("the chain runs on {at}");

    // Wants= of a unit that is nowhere: started alone, nothing brought along.
    write_unit(
        c,
        dir.path(),
        "lonely.service",
        &body("Wants=ghost.service"),
    )?;
    let (run, bad) = fleetctl_watching(
        c,
        dir.path(),
        &["start", "--with-deps", "lonely.service"],
        &["lonely.service"],
    )
    .await?;
    ensure!(
        run.code == 0,
        "start of lonely.service failed: {}",
        run.stderr
    );
    ensure!(!run.stdout.contains("Brought along"), "{}", run.stdout);
    ensure!(bad.is_empty(), "failed or not loaded on the way: {bad:?}");
    active_together(c, &["lonely.service"]).await?;
    let names: BTreeMap<String, String> = c.placements().await?;
    ensure!(!names.contains_key("ghost.service"), "{names:?}");
    Ok(())
}
