//! `fleetctl events` against three real fleetd over a real etcd: a unit started with `fleetctl`
//! is told placed and started; its machine killed, the machine is told lost and the unit moved
//! and started elsewhere. Both a followed stream (`-f`, started before anything happens) and
//! the recent events asked afterwards, filtered, tell it.

use anyhow::{ensure, Context, Result};
use cluster::binary::fleetctl_binary;
use cluster::cleanup::TAG_VAR;
use cluster::{wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs fleetctl to its end against `endpoint` in `cwd`: exit code and stdout (both printed,
/// for a failing test's log).
async fn fleetctl(endpoint: &str, cwd: &Path, args: &[&str]) -> Result<(i32, String)> {
    let out = tokio::process::Command::new(fleetctl_binary()?)
        .args(args)
        .env("FLEETCTL_ENDPOINT", endpoint)
        .current_dir(cwd)
        .output()
        .await
        .context("running fleetctl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "$ fleetctl {}\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), stdout))
}

/// The lines of `fleetctl events` output as (kind, unit, machine, detail), legend left out.
fn parse(text: &str) -> Vec<(String, String, String, String)> {
    text.lines()
        .skip_while(|l| l.starts_with("TIME"))
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            let _time = cells.next()?;
            let (kind, unit, machine) = (cells.next()?, cells.next()?, cells.next()?);
            let detail = cells.collect::<Vec<_>>().join(" ");
            Some((kind.into(), unit.into(), machine.into(), detail))
        })
        .collect()
}

/// Whether `lines` hold an event of `kind` for `unit` on `machine`, with `detail`
/// starting so, after position `from`; its position.
fn find(
    lines: &[(String, String, String, String)],
    from: usize,
    kind: &str,
    unit: &str,
    machine: &str,
    detail: &str,
) -> Option<usize> {
    lines.iter().enumerate().skip(from).find_map(|(i, l)| {
        (l.0 == kind && l.1 == unit && l.2 == machine && l.3.starts_with(detail)).then_some(i)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_a_unit_placed_started_and_moved_off_a_lost_machine() {
    // m0 is region a, m1 and m2 region b: the unit goes to m1 or m2, and the stream is read
    // from m0, which stays up.
    let spec = ClusterSpec::with_regions(&["a", "b", "b"]);
    let c = Cluster::start(spec).await.expect("starting the cluster");
    scenario(&c).await.unwrap();
}

async fn scenario(c: &Cluster) -> Result<()> {
    // Whole ids: the harness's machine ids share their first 8 characters.
    let id = |i: usize| c.machine(i).id.clone();
    let endpoint = c.machine(0).endpoint();
    let dir = tempfile::tempdir()?;

    // The followed stream, from before the unit exists. Killed by PID on drop, also when the
    // test fails.
    let mut follower = tokio::process::Command::new(fleetctl_binary()?)
        .args(["events", "-f", "--full"])
        .env("FLEETCTL_ENDPOINT", &endpoint)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting fleetctl events -f --full")?;
    let followed = Arc::new(Mutex::new(String::new()));
    let stdout = follower.stdout.take().context("fleetctl's stdout")?;
    let reader = {
        let followed = followed.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut f = followed.lock().unwrap_or_else(|e| e.into_inner());
                f.push_str(&line);
                f.push('\n');
            }
        })
    };
    let seen = || parse(&followed.lock().unwrap_or_else(|e| e.into_inner()));

    std::fs::write(
        dir.path().join("hello.service"),
        format!(
            "[Unit]\nDescription=events test\n\n[Service]\nEnvironment={TAG_VAR}={}\n\
             ExecStart=/bin/sleep infinity\n\n[X-Fleet]\nMachineMetadata=region=b\n",
            c.tag()
        ),
    )?;
    let (code, _) = fleetctl(&endpoint, dir.path(), &["start", "hello.service"]).await?;
    ensure!(code == 0, "fleetctl start exited {code}");

    let u = "hello.service";
    let first = wait_for(
        "hello.service submitted, placed and started in the followed stream",
        DEFAULT_DEADLINE,
        || async {
            let lines = seen();
            let submitted = find(&lines, 0, "submitted", u, "-", "launched");
            let placed = submitted.and_then(|i| {
                (1..3).find_map(|m| find(&lines, i, "placed", u, &id(m), "").map(|p| (p, m)))
            });
            match placed.and_then(|(p, m)| {
                find(&lines, p, "started", u, &id(m), "loaded/active").map(|_| m)
            }) {
                Some(m) => Ok(m),
                None => Err(format!("{lines:?}")),
            }
        },
    )
    .await?;
    let other = if first == 1 { 2 } else { 1 };

    c.machine(first).kill();
    wait_for(
        "the machine lost, the unit moved and started elsewhere, in the followed stream",
        DEFAULT_DEADLINE,
        || async {
            let lines = seen();
            let lost = find(&lines, 0, "machine-lost", "-", &id(first), "1 unit");
            let moved = lost.and_then(|i| {
                find(
                    &lines,
                    i,
                    "moved",
                    u,
                    &id(other),
                    &format!("from {}", c.machine(first).id),
                )
            });
            match moved.and_then(|i| find(&lines, i, "started", u, &id(other), "")) {
                Some(_) => Ok(()),
                None => Err(format!("{lines:?}")),
            }
        },
    )
    .await?;

    // Asked afterwards: the recent events of the unit, from fleetd's memory, in order.
    let (code, text) = fleetctl(
        &endpoint,
        dir.path(),
        &["events", "--full", "--unit", "hello.*"],
    )
    .await?;
    ensure!(code == 0, "fleetctl events exited {code}");
    let lines = parse(&text);
    ensure!(
        lines.iter().all(|l| l.1 == u),
        "--unit let other events through:\n{text}"
    );
    let placed = find(&lines, 0, "placed", u, &id(first), "").context(text.clone())?;
    let moved = find(&lines, placed, "moved", u, &id(other), "").context(text.clone())?;
    ensure!(
        find(&lines, moved, "started", u, &id(other), "").is_some(),
        "{text}"
    );

    // By machine, with whole ids: the lost machine's own events.
    let (code, text) = fleetctl(
        &endpoint,
        dir.path(),
        &["events", "--no-legend", "--full", "--machine", &id(first)],
    )
    .await?;
    ensure!(code == 0, "fleetctl events --machine exited {code}");
    let lines = parse(&text);
    let lost = id(first);
    ensure!(
        !lines.is_empty() && lines.iter().all(|l| l.2 == lost),
        "--machine let other events through:\n{text}"
    );
    ensure!(
        find(&lines, 0, "machine-lost", "-", &lost, "").is_some(),
        "{text}"
    );

    follower
        .kill()
        .await
        .context("stopping fleetctl events -f")?;
    reader.await.context("reading fleetctl events -f")?;
    Ok(())
}
