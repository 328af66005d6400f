//! When the states of a burst reach `list-units`: 3 real-systemd machines (systemd-nspawn,
//! fleetd with the systemd unit manager), one `fleetctl start --no-block` of 1,000 unit files
//! (fleet's own benchmark shape), the API's unit states read every 100 ms. Prints the active
//! count at every 0.5 s and the time until all are active as `FIGURE` lines; asserts only that
//! all become active. A measurement, so it runs on demand:
//!
//! ```sh
//! cargo build --release -p fleetd -p fleetctl
//! FLEETD_BIN=$CARGO_TARGET_DIR/release/fleetd cargo test -p fleet-cluster --test publish_timeline \
//!     -- --ignored --nocapture
//! ```
//!
//! fleetctl is taken from `FLEETCTL_BIN`, else from beside fleetd. `FLEET_REAL_UNITS` sets the
//! burst (default 1,000). With `FLEET_TIMELINE_SYSTEMD=1` the units systemd itself runs are
//! counted too, every 0.5 s (`systemctl show` in each machine, between listings: it delays
//! them); with `FLEET_TIMELINE_LOG=1` machine 0's agent logs at debug level (its reads of
//! systemd and its publications, with their times), and its journal is printed at the end.
//!
//! Memory: each fleetd's resident set (`VmRSS`, and `RssAnon`, its heap and stacks) is printed
//! as `FIGURE` lines before the burst, when all are listed active and after a settle period,
//! `FLEET_TIMELINE_SETTLE_SECS` (default 30; 0 skips it), the engine's leader marked.
//! `FLEET_TIMELINE_FLEETD_ENV` gives every fleetd more environment, space-separated `NAME=value`
//! words: `TOKIO_WORKER_THREADS=16` runs it as on a 16-core machine (more threads, more malloc
//! arenas), `MALLOC_ARENA_MAX=2` caps glibc's arenas.

use anyhow::{ensure, Context, Result};
use cluster::nspawn::{NspawnCluster, NspawnSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bounds a hang; a healthy run takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(120);

fn burst() -> usize {
    std::env::var("FLEET_REAL_UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn settle() -> Duration {
    Duration::from_secs(
        std::env::var("FLEET_TIMELINE_SETTLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    )
}

/// fleetd's resident set in machine `i`, in KiB: (`VmRSS`, `RssAnon`), read from its
/// `/proc/PID/status` inside the container (fleetd's PID there is systemd's `MainPID`).
fn fleetd_rss(c: &NspawnCluster, i: usize) -> Result<(u64, u64)> {
    let out = c.machines[i]
        .nspawn
        .command("sh")
        .args([
            "-c",
            "cat /proc/$(systemctl show -p MainPID --value fleetd-test)/status",
        ])
        .output()
        .context("reading fleetd's /proc status through nsenter")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("RssAnon:")) {
        (Some(rss), Some(anon)) => Ok((rss, anon)),
        _ => anyhow::bail!(
            "no VmRSS/RssAnon in fleetd's status on machine {i}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Whether machine `i`'s engine leads, from its `/metrics` (`fleet_engine_leader 1`). By
/// hand: the API client speaks only fleet's JSON resources.
async fn leads(c: &NspawnCluster, i: usize) -> Result<bool> {
    let endpoint = c.machines[i].client.endpoint();
    let authority = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// endpoint: {endpoint}"))?
        .trim_end_matches('/');
    let s = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let out = cluster::metrics::get(s, &format!("machine {i}")).await?;
    Ok(out.lines().any(|l| l.trim() == "fleet_engine_leader 1"))
}

/// One `FIGURE` line: every fleetd's RSS and anonymous RSS, in MB, the leader marked.
async fn print_rss(c: &NspawnCluster, when: &str) -> Result<()> {
    let mut parts = Vec::new();
    for i in 0..c.machines.len() {
        let (rss, anon) = tokio::task::block_in_place(|| fleetd_rss(c, i))?;
        let role = match (i, leads(c, i).await?) {
            (0, true) => " (leader, API)",
            (0, false) => " (API)",
            (_, true) => " (leader)",
            _ => "",
        };
        parts.push(format!(
            "m{i}{role} {:.1} MB (anon {:.1} MB)",
            rss as f64 / 1024.0,
            anon as f64 / 1024.0
        ));
    }
    println!("FIGURE fleetd RSS {when}: {}", parts.join(", "));
    Ok(())
}

fn fleetctl() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FLEETCTL_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let fleetd = cluster::binary::fleetd_binary()?;
    let beside = fleetd.with_file_name("fleetctl");
    ensure!(
        beside.is_file(),
        "no fleetctl beside {}: build it (cargo build -p fleetctl) or set FLEETCTL_BIN",
        fleetd.display()
    );
    Ok(beside)
}

/// The unit as a file fleetctl reads: its options grouped by section, in order.
fn unit_file(unit: &api::types::Unit) -> String {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for o in &unit.options {
        let line = format!("{}={}", o.name, o.value);
        match sections.iter_mut().find(|(s, _)| *s == o.section) {
            Some((_, lines)) => lines.push(line),
            None => sections.push((o.section.clone(), vec![line])),
        }
    }
    sections
        .into_iter()
        .map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: boots 3 real-systemd machines and starts 1,000 units"]
async fn three_machines_list_a_burst_as_systemd_starts_it() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let n = burst();
    let fleetctl = fleetctl().unwrap();
    let diagnose = std::env::var_os("FLEET_TIMELINE_SYSTEMD").is_some();
    let log = std::env::var_os("FLEET_TIMELINE_LOG").is_some();
    let mut spec = NspawnSpec::machines(3);
    let extra: Vec<String> = std::env::var("FLEET_TIMELINE_FLEETD_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for i in 0..3 {
        spec.env.insert(i, extra.clone());
    }
    if log {
        spec.env
            .entry(0)
            .or_default()
            .push("RUST_LOG=info,agent=debug".to_string());
    }
    let c = tokio::task::block_in_place(|| NspawnCluster::start(spec)).unwrap();
    let result = async {
        // Every machine registered before the clock starts.
        cluster::wait_for("3 machines listed", DEADLINE, || async {
            let listed = c.machines[0]
                .client
                .machines()
                .await
                .map_err(|e| format!("{e:#}"))?;
            if listed.len() == 3 {
                Ok(())
            } else {
                Err(format!("{} machines", listed.len()))
            }
        })
        .await?;
        print_rss(&c, "before the burst").await?;
        let files = tempfile::tempdir()?;
        let mut paths = Vec::new();
        for i in 0..n {
            let unit = cluster::units::service(&format!("burst-{i:04}.service"), c.tag(), &[]);
            let path = files.path().join(&unit.name);
            std::fs::write(&path, unit_file(&unit))?;
            paths.push(path);
        }
        let endpoint = c.machines[0].client.endpoint().to_string();
        let t0 = Instant::now();
        let mut start = tokio::process::Command::new(&fleetctl)
            .arg("--endpoint")
            .arg(&endpoint)
            .args(["start", "--no-block"])
            .args(&paths)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", fleetctl.display()))?;
        let mut returned = None;
        let mut samples: Vec<(f64, usize)> = Vec::new();
        let mut running: Vec<(f64, usize)> = Vec::new();
        // (asked at, took, active) of each listing.
        let mut asks: Vec<(f64, f64, usize)> = Vec::new();
        loop {
            if diagnose && t0.elapsed().as_secs_f64() >= running.len() as f64 * 0.5 {
                let at = t0.elapsed().as_secs_f64();
                let mut n = 0;
                for i in 0..c.machines.len() {
                    let units = tokio::task::block_in_place(|| c.systemd_units(i, "burst-"))?;
                    n += units.values().filter(|u| u.active == "active").count();
                }
                running.push((at, n));
            }
            if returned.is_none() {
                if let Some(status) = start.try_wait()? {
                    ensure!(status.success(), "fleetctl start failed: {status}");
                    returned = Some(t0.elapsed().as_secs_f64());
                }
            }
            let asked = t0.elapsed().as_secs_f64();
            let active = c
                .unit_states()
                .await?
                .iter()
                .filter(|s| s.name.starts_with("burst-") && s.systemd_active_state == "active")
                .count();
            samples.push((t0.elapsed().as_secs_f64(), active));
            asks.push((asked, t0.elapsed().as_secs_f64() - asked, active));
            if active >= n && returned.is_some() {
                break;
            }
            ensure!(
                t0.elapsed() < DEADLINE,
                "{active} of {n} active after {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        print_rss(&c, "when all are listed active").await?;
        let settle = settle();
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
            print_rss(&c, &format!("{} s later", settle.as_secs())).await?;
        }
        let all = samples.iter().find(|(_, a)| *a >= n).map(|(t, _)| *t);
        let mut steps: BTreeMap<u32, usize> = BTreeMap::new();
        let last = samples.last().map(|(t, _)| *t).unwrap_or(0.0);
        for k in 1..=((last / 0.5).ceil() as u32) {
            let at = f64::from(k) * 0.5;
            let count = samples
                .iter()
                .take_while(|(t, _)| *t <= at)
                .last()
                .map(|(_, a)| *a)
                .unwrap_or(0);
            steps.insert(k, count);
        }
        let steps: Vec<String> = steps
            .iter()
            .map(|(k, a)| format!("{:.1} s: {a}", f64::from(*k) * 0.5))
            .collect();
        println!(
            "FIGURE real systemd: 3 machines, {n} units through one `fleetctl start --no-block`: \
             fleetctl returned after {:.2} s, all listed active after {:.2} s",
            returned.unwrap_or(f64::NAN),
            all.unwrap_or(f64::NAN)
        );
        println!("FIGURE listed active at 0.5 s steps: {}", steps.join(", "));
        let asks: Vec<String> = asks
            .iter()
            .map(|(at, took, n)| format!("{at:.2}+{took:.2} s: {n}"))
            .collect();
        println!("listings (asked at + took): {}", asks.join(", "));
        if diagnose {
            let running: Vec<String> = running
                .iter()
                .map(|(t, n)| format!("{t:.2} s: {n}"))
                .collect();
            println!("systemd active (read at): {}", running.join(", "));
        }
        if log {
            println!("{}", c.fleetd_journal(0, 2000));
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}
