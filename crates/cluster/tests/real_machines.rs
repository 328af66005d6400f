//! Real machines at the size users run them: a thousand units on real-systemd machines
//! (systemd-nspawn, fleetd as a service with the systemd unit manager), checked against what
//! systemd itself says, after the D-Bus connection is cut mid-start, across `daemon-reexec`,
//! a `daemon-reload` by someone else and a restart of dbus-daemon, and through machines
//! powering off. Timings are printed as `FIGURE` lines (`--nocapture`); the deadlines only
//! bound a hang. `FLEET_REAL_UNITS` sets the burst size (default 1,000).
//!
//! The tests take turns (one lock): each loads the machine's two cores on its own.

use anyhow::{ensure, Context, Result};
use cluster::nspawn::{NspawnCluster, NspawnSpec, SystemdUnit};
use cluster::wait_for;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough for a resync period (30 s) plus retries; a healthy run takes a few seconds.
const SETTLE: Duration = Duration::from_secs(120);

fn burst() -> usize {
    std::env::var("FLEET_REAL_UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn units(c: &NspawnCluster, prefix: &str, range: std::ops::Range<usize>) -> Vec<api::types::Unit> {
    range
        .map(|i| cluster::units::service(&format!("{prefix}{i:04}.service"), c.tag(), &[]))
        .collect()
}

/// Published state of every `prefix` unit on machine `i` compared with what its systemd says:
/// `Ok` with the systemd view once all `n` are active and every published (active, sub) pair
/// is systemd's own.
async fn truthful(
    c: &NspawnCluster,
    i: usize,
    prefix: &str,
    n: usize,
) -> std::result::Result<BTreeMap<String, SystemdUnit>, String> {
    let me = &c.machines[i].id;
    let published: BTreeMap<String, (String, String)> = c
        .unit_states()
        .await
        .map_err(|e| format!("{e:#}"))?
        .into_iter()
        .filter(|s| &s.machine_id == me && s.name.starts_with(prefix))
        .map(|s| (s.name, (s.systemd_active_state, s.systemd_sub_state)))
        .collect();
    let real =
        tokio::task::block_in_place(|| c.systemd_units(i, prefix)).map_err(|e| format!("{e:#}"))?;
    let running = real.values().filter(|u| u.sub == "running").count();
    let mut wrong = Vec::new();
    for (name, (active, sub)) in &published {
        let (real_active, real_sub) = real
            .get(name)
            .map(|u| (u.active.as_str(), u.sub.as_str()))
            .unwrap_or(("inactive", "dead"));
        if (active.as_str(), sub.as_str()) != (real_active, real_sub) {
            wrong.push(format!(
                "{name}: published {active}/{sub}, systemd {real_active}/{real_sub}"
            ));
        }
    }
    if published.len() == n && running == n && wrong.is_empty() {
        Ok(real)
    } else {
        wrong.truncate(5);
        Err(format!(
            "{} published, {running} running under systemd, {} published states differ from \
             systemd's: {wrong:?}",
            published.len(),
            wrong.len()
        ))
    }
}

/// Waits until all `n` units are published active on machine `i` (polling the API only: a
/// `systemctl show` of a thousand units every 100 ms would slow the very starts it watches),
/// then until every published state is systemd's own.
async fn wait_truthful(
    c: &NspawnCluster,
    i: usize,
    prefix: &str,
    n: usize,
    what: &str,
) -> Result<BTreeMap<String, SystemdUnit>> {
    wait_listed_active(c, i, prefix, n, what).await?;
    wait_for(what, SETTLE, || truthful(c, i, prefix, n)).await
}

/// Waits until at least `n` units are published active on machine `i`.
async fn wait_listed_active(
    c: &NspawnCluster,
    i: usize,
    prefix: &str,
    n: usize,
    what: &str,
) -> Result<()> {
    let me = c.machines[i].id.clone();
    wait_for(&format!("{what}: all published active"), SETTLE, || async {
        let states = c.unit_states().await.map_err(|e| format!("{e:#}"))?;
        let active = states
            .iter()
            .filter(|s| s.machine_id == me && s.name.starts_with(prefix))
            .filter(|s| s.systemd_active_state == "active")
            .count();
        if active >= n {
            Ok(())
        } else {
            Err(format!("{active} of {n} published active"))
        }
    })
    .await
}

/// Waits until systemd runs at least `n` of the `prefix` units on machine `i`: the middle of a
/// start burst.
async fn wait_running(c: &NspawnCluster, i: usize, prefix: &str, n: usize) -> Result<()> {
    wait_for(&format!("{n} {prefix} units running"), SETTLE, || async {
        let real = tokio::task::block_in_place(|| c.systemd_units(i, prefix))
            .map_err(|e| format!("{e:#}"))?;
        let running = real.values().filter(|u| u.sub == "running").count();
        if running >= n {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    })
    .await
}

/// Units that ran before and whose main process changed since: restarted behind our back.
fn restarted(
    before: &BTreeMap<String, SystemdUnit>,
    after: &BTreeMap<String, SystemdUnit>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(_, u)| u.sub == "running")
        .filter(|(name, u)| after.get(*name).map(|a| a.main_pid) != Some(u.main_pid))
        .map(|(name, _)| name.clone())
        .collect()
}

/// fleetd's journal lines about its bus connection and resyncs, to show what it did.
fn bus_log(c: &NspawnCluster, i: usize) -> Vec<String> {
    c.fleetd_journal(i, 400)
        .lines()
        .filter(|l| {
            l.contains("D-Bus")
                || l.contains("resynced")
                || l.contains("on connecting")
                || l.contains("came back on the bus")
                || l.contains("jobs systemd no longer holds")
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_units_on_one_machine_are_listed_as_systemd_runs_them() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let _turn = TURN.lock().await;
    let n = burst();
    let c = tokio::task::block_in_place(|| NspawnCluster::start(NspawnSpec::machines(1))).unwrap();
    let result = async {
        let t0 = Instant::now();
        c.submit(&units(&c, "one-", 0..n)).await?;
        let submitted = t0.elapsed();
        let what = "every unit active and published as systemd has it";
        wait_listed_active(&c, 0, "one-", n, what).await?;
        let listed = t0.elapsed();
        // Checked straight after: a listing that showed a unit active before systemd ran it
        // would show here as a unit published active that systemd does not run.
        let checked = truthful(&c, 0, "one-", n).await;
        if let Err(e) = checked {
            anyhow::bail!("all {n} listed active, but the listing is not systemd's: {e}");
        }
        println!(
            "FIGURE real systemd: {n} units on one machine all listed active {:.2} s after the \
             first submission (submitted in {:.2} s), every published state systemd's own",
            listed.as_secs_f64(),
            submitted.as_secs_f64()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}

/// A byte pipe between fleetd and the container's system bus that the test can cut: every
/// connection through it closes at once, as when the bus drops a client.
struct BusProxy {
    conns: Arc<Mutex<Vec<UnixStream>>>,
}

impl BusProxy {
    /// Listens at `listen` (a host path inside the container's file system) and forwards
    /// every connection to `upstream`.
    fn start(listen: &Path, upstream: PathBuf) -> Result<BusProxy> {
        let listener = UnixListener::bind(listen)
            .with_context(|| format!("bind the bus proxy at {}", listen.display()))?;
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let kept = conns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if let Ok(mut held) = kept.lock() {
                    if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                        held.push(c3);
                        held.push(s3);
                    }
                }
                std::thread::spawn(move || pipe(client, s2));
                std::thread::spawn(move || pipe(server, c2));
            }
        });
        Ok(BusProxy { conns })
    }

    /// Cuts every connection through the proxy; new ones are still accepted.
    fn cut(&self) -> usize {
        let mut held = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for s in held.iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let n = held.len() / 2;
        held.clear();
        n
    }
}

fn pipe(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_connection_cut_mid_start_leaves_no_state_behind() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let _turn = TURN.lock().await;
    let n = burst();
    // fleetd reaches the bus through the proxy; the proxy must listen before fleetd starts,
    // so the machine boots first, then the proxy, then fleetd (the spec's env names the path).
    const PROXY: &str = "/run/fleet-test-bus.sock";
    let proxy: Arc<Mutex<Option<BusProxy>>> = Arc::default();
    let mut spec = NspawnSpec::machines(1);
    spec.env.insert(
        0,
        vec![format!("DBUS_SYSTEM_BUS_ADDRESS=unix:path={PROXY}")],
    );
    let hook = proxy.clone();
    spec.on_boot = Some(Arc::new(move |_, m| {
        let p = BusProxy::start(
            &m.host_path(PROXY),
            m.host_path("/run/dbus/system_bus_socket"),
        )?;
        *hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(())
    }));
    let c = tokio::task::block_in_place(|| NspawnCluster::start(spec)).unwrap();
    let result = async {
        let t0 = Instant::now();
        c.submit(&units(&c, "cut-", 0..n)).await?;
        // Watched through the API (cheap), not through systemd (a `systemctl show` of a
        // thousand units takes long enough under a burst for the burst to end meanwhile).
        wait_listed_active(&c, 0, "cut-", n / 5, "a fifth of the units listed active").await?;
        let cut = proxy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .context("proxy")?
            .cut();
        ensure!(cut > 0, "fleetd had no connection through the proxy");
        let at = t0.elapsed();
        // Main pids right after the cut: a unit the agent restarted while recovering shows
        // as a changed pid.
        let before = tokio::task::block_in_place(|| c.systemd_units(0, "cut-"))?;
        let running_at_cut = before.values().filter(|u| u.sub == "running").count();
        let after = wait_truthful(&c, 0, "cut-", n, "every unit listed as systemd runs it").await?;
        let restarted = restarted(&before, &after);
        ensure!(restarted.is_empty(), "restarted: {restarted:?}");
        println!(
            "FIGURE real systemd: bus connection cut {:.2} s into a {n}-unit start \
             ({running_at_cut} running just after); all {n} listed active as systemd has them {:.2} s \
             after the cut, none restarted",
            at.as_secs_f64(),
            (t0.elapsed() - at).as_secs_f64()
        );
        for line in bus_log(&c, 0) {
            println!("LOG {line}");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reexec_reload_and_a_dbus_restart_mid_start_restart_nothing() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let _turn = TURN.lock().await;
    let n = burst();
    let more = (n / 4).max(1);
    let c = tokio::task::block_in_place(|| NspawnCluster::start(NspawnSpec::machines(1))).unwrap();
    let result = async {
        let systemctl = |args: &[&str]| -> Result<()> {
            let out = tokio::task::block_in_place(|| c.machines[0].nspawn.systemctl(args))?;
            ensure!(
                out.status.success(),
                "systemctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        // 1. daemon-reexec in the middle of a start burst.
        let t0 = Instant::now();
        c.submit(&units(&c, "life-", 0..n)).await?;
        wait_running(&c, 0, "life-", n / 5).await?;
        let before = tokio::task::block_in_place(|| c.systemd_units(0, "life-"))?;
        systemctl(&["daemon-reexec"])?;
        let after =
            wait_truthful(&c, 0, "life-", n, "all units listed after daemon-reexec").await?;
        let r = restarted(&before, &after);
        ensure!(r.is_empty(), "restarted after daemon-reexec: {r:?}");
        println!(
            "FIGURE real systemd: daemon-reexec during a {n}-unit start: all listed active as \
             systemd has them {:.2} s after the submission, none restarted",
            t0.elapsed().as_secs_f64()
        );

        // 2. Someone else's daemon-reload during the next burst.
        let t1 = Instant::now();
        c.submit(&units(&c, "life-", n..n + more)).await?;
        systemctl(&["daemon-reload"])?;
        let after_reload = wait_truthful(
            &c,
            0,
            "life-",
            n + more,
            "all units listed after a daemon-reload",
        )
        .await?;
        let r = restarted(&after, &after_reload);
        ensure!(r.is_empty(), "restarted after daemon-reload: {r:?}");
        println!(
            "FIGURE real systemd: daemon-reload by another client during a {more}-unit start: \
             all {} listed as systemd has them {:.2} s after the submission, none restarted",
            n + more,
            t1.elapsed().as_secs_f64()
        );

        // 3. dbus-daemon restarted during the next burst.
        let t2 = Instant::now();
        c.submit(&units(&c, "life-", n + more..n + 2 * more))
            .await?;
        systemctl(&["restart", "dbus.service"])?;
        let after_dbus = wait_truthful(
            &c,
            0,
            "life-",
            n + 2 * more,
            "all units listed after dbus-daemon restarted",
        )
        .await?;
        let r = restarted(&after_reload, &after_dbus);
        ensure!(r.is_empty(), "restarted after the dbus restart: {r:?}");
        println!(
            "FIGURE real systemd: dbus-daemon restarted during a {more}-unit start: all {} \
             listed as systemd has them {:.2} s after the submission, none restarted",
            n + 2 * more,
            t2.elapsed().as_secs_f64()
        );
        for line in bus_log(&c, 0) {
            println!("LOG {line}");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_powering_off_hand_their_units_over_and_do_not_fight_the_shutdown() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let _turn = TURN.lock().await;
    let n = burst();
    let mut c =
        tokio::task::block_in_place(|| NspawnCluster::start(NspawnSpec::machines(3))).unwrap();
    let result = async {
        let all = units(&c, "off-", 0..n);
        let names: Vec<String> = all.iter().map(|u| u.name.clone()).collect();
        c.submit(&all).await?;
        let once =
            |a: &cluster::ActiveUnits| names.iter().all(|n| a.get(n).is_some_and(|m| m.len() == 1));
        let active = c
            .wait_active_within("every unit active once on three machines", SETTLE, once)
            .await?;
        let first = c.machines[0].id.clone();
        let moving = active.values().filter(|m| m[0] == first).count();

        // One machine powers off while the others stay.
        let t0 = Instant::now();
        c.machines[0].nspawn.request_power_off()?;
        let moved = c
            .wait_active_within(
                "the powered-off machine's units active elsewhere",
                SETTLE,
                |a| once(a) && a.values().all(|m| m[0] != first),
            )
            .await;
        let moved_after = t0.elapsed();
        let off = tokio::task::block_in_place(|| c.machines[0].nspawn.wait_off(SETTLE));
        let off_after = t0.elapsed();
        c.machines[0].alive = false;
        ensure!(
            off,
            "machine 0 still runs {off_after:?} after it was told to power off"
        );
        moved?;
        println!(
            "FIGURE real systemd: one of 3 machines powered off: off after {:.2} s, its {moving} \
             units active on the other two {:.2} s after the power-off began",
            off_after.as_secs_f64(),
            moved_after.as_secs_f64()
        );

        // The last two power off together: neither may take the other's units on while it
        // shuts down.
        let t1 = Instant::now();
        c.machines[1].nspawn.request_power_off()?;
        c.machines[2].nspawn.request_power_off()?;
        let mut times = Vec::new();
        for i in 1..3 {
            let off = tokio::task::block_in_place(|| c.machines[i].nspawn.wait_off(SETTLE));
            c.machines[i].alive = false;
            ensure!(
                off,
                "machine {i} still runs {:?} after power-off",
                t1.elapsed()
            );
            times.push(t1.elapsed().as_secs_f64());
        }
        println!(
            "FIGURE real systemd: the last two machines powered off together: off after \
             {:.2} s and {:.2} s",
            times[0], times[1]
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        c.print_diagnostics();
    }
    result.unwrap();
}
