//! Cluster scenarios: several fleetd on loopback over a real etcd, observed through the API,
//! the registry and the unit processes themselves. `agent_ttl` 3 s, engine interval 1 s.
//!
//! Figures (machine loss to units active elsewhere) are printed: run with `--nocapture`.
//! Nothing asserts on time. Where a scenario asserts that something does *not* happen (no
//! restart, no move), it watches for it over a window of `agent_ttl` + two engine intervals,
//! the time within which the registry would have declared a machine dead and the engine acted.

use anyhow::{ensure, Context, Result};
use api::types::MachineMetadataOp;
use api::TargetState;
use cluster::{wait_for, ActiveUnits, Cluster, ClusterSpec, DEFAULT_DEADLINE, POLL_INTERVAL};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const AGENT_TTL: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_secs(1);

fn spec(machines: usize) -> ClusterSpec {
    ClusterSpec {
        machines,
        agent_ttl: AGENT_TTL,
        engine_interval: INTERVAL,
        ..Default::default()
    }
}

/// The window over which a negative ("nothing moves") is observed.
fn quiet_window() -> Duration {
    AGENT_TTL + 2 * INTERVAL
}

async fn start(spec: ClusterSpec) -> Cluster {
    Cluster::start(spec).await.expect("starting the cluster")
}

/// Active units restricted to machines whose fleetd serves (a killed machine's states stay
/// in the registry until its lease runs out).
fn on_live(c: &Cluster, active: &ActiveUnits) -> ActiveUnits {
    let live: BTreeSet<&str> = c
        .machines()
        .iter()
        .filter(|m| m.is_serving())
        .map(|m| m.id.as_str())
        .collect();
    active
        .iter()
        .map(|(u, ms)| {
            (
                u.clone(),
                ms.iter()
                    .filter(|m| live.contains(m.as_str()))
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, ms)| !ms.is_empty())
        .collect()
}

/// Every unit of `names` active on exactly one live machine.
fn each_once(c: &Cluster, active: &ActiveUnits, names: &[String]) -> bool {
    let live = on_live(c, active);
    names
        .iter()
        .all(|n| live.get(n).is_some_and(|ms| ms.len() == 1))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}.{i}.service")).collect()
}

/// Submits `n` plain services `<prefix>.<i>.service` and waits until each runs once.
async fn run_plain(c: &Cluster, prefix: &str, n: usize) -> Result<(Vec<String>, ActiveUnits)> {
    let names = names(prefix, n);
    let units: Vec<_> = names.iter().map(|n| c.service(n, &[])).collect();
    c.submit(&units).await?;
    let active = c
        .wait_for_active_units(&format!("{n} {prefix} units active"), |a| {
            each_once(c, a, &names)
        })
        .await?;
    Ok((names, on_live(c, &active)))
}

/// Units active on machine `id`.
fn units_on(active: &ActiveUnits, id: &str) -> Vec<String> {
    active
        .iter()
        .filter(|(_, ms)| ms.iter().any(|m| m == id))
        .map(|(u, _)| u.clone())
        .collect()
}

/// Checks `invariant` every poll interval for `window`; fails at the first violation.
async fn holds_for<F, Fut>(what: &str, window: Duration, mut invariant: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let end = Instant::now() + window;
    while Instant::now() < end {
        invariant()
            .await
            .with_context(|| format!("{what} stopped holding"))?;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// Checks that the unit processes in `pids` (unit -> main pid on machine `index`) still run
/// with the same pids.
fn same_pids(c: &Cluster, index: usize, pids: &BTreeMap<String, i32>) -> Result<()> {
    let now = c.machine(index).unit_pids();
    for (unit, pid) in pids {
        ensure!(
            now.get(unit) == Some(pid),
            "{unit} on machine {index}: pid was {pid}, now {:?}",
            now.get(unit)
        );
        ensure!(
            cluster::cleanup::alive(*pid),
            "{unit} on machine {index}: pid {pid} died"
        );
    }
    Ok(())
}

/// A machine other than the engine leader that runs units.
async fn non_leader_with_units(c: &Cluster, active: &ActiveUnits) -> Result<usize> {
    let leader = c.wait_for_leader().await?;
    (0..c.machines().len())
        .find(|&i| i != leader && !units_on(active, &c.machine(i).id).is_empty())
        .context("no machine but the leader runs units")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_conflicting_units_on_three_machines() {
    let c = start(spec(3)).await;
    async {
        let names = names("conflict", 5);
        let units: Vec<_> = names
            .iter()
            .map(|n| c.service(n, &[("Conflicts", "conflict.*.service")]))
            .collect();
        c.submit(&units).await?;
        let active = c
            .wait_for_active_units("three conflict units active", |a| a.len() == 3)
            .await?;
        let machines: BTreeSet<&String> = active.values().flatten().collect();
        ensure!(
            machines.len() == 3 && active.values().all(|ms| ms.len() == 1),
            "three units on three distinct machines, got {active:?}"
        );
        let unplaced = wait_for(
            "two unplaced units with a reason",
            DEFAULT_DEADLINE,
            || async {
                let units = c.units().await.map_err(|e| format!("{e:#}"))?;
                let unplaced: Vec<_> = units
                    .iter()
                    .filter(|u| u.machine_id.is_empty())
                    .filter(|u| u.reason.as_deref().is_some_and(|r| !r.is_empty()))
                    .map(|u| (u.name.clone(), u.reason.clone().unwrap_or_default()))
                    .collect();
                if unplaced.len() == 2 {
                    Ok(unplaced)
                } else {
                    Err(format!("{units:?}"))
                }
            },
        )
        .await?;
        println!("unplaced conflict units: {unplaced:?}");
        // The two left out stay out.
        holds_for("three active conflict units", quiet_window(), || async {
            let a = c.active_units().await?;
            ensure!(a == active, "active units changed: {a:?}");
            Ok(())
        })
        .await
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_of_pairs_move_together() {
    let c = start(spec(3)).await;
    async {
        let mut units = Vec::new();
        for i in 0..3 {
            units.push(c.service(&format!("ping.{i}.service"), &[]));
            units.push(c.service(
                &format!("pong.{i}.service"),
                &[("MachineOf", &format!("ping.{i}.service"))],
            ));
        }
        c.submit(&units).await?;
        let all: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
        let active = c
            .wait_for_active_units("six ping/pong units active", |a| each_once(&c, a, &all))
            .await?;
        for i in 0..3 {
            ensure!(
                active[&format!("ping.{i}.service")] == active[&format!("pong.{i}.service")],
                "ping.{i} and pong.{i} apart: {active:?}"
            );
        }
        let dead_id = active["ping.1.service"][0].clone();
        let dead = c.index_of(&dead_id).context("ping.1's machine")?;
        c.machine(dead).kill();
        let moved = c
            .wait_for_active_units("ping.1 and pong.1 active elsewhere", |a| {
                let a = on_live(&c, a);
                matches!((a.get("ping.1.service"), a.get("pong.1.service")),
                    (Some(p), Some(q)) if p.len() == 1 && p == q && p[0] != dead_id)
            })
            .await?;
        println!(
            "ping.1/pong.1 moved from machine {dead} to {:?}",
            moved["ping.1.service"]
        );
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_machine_takes_no_running_unit() {
    let mut c = start(spec(3)).await;
    let result = async {
        let (names, before) = run_plain(&c, "steady", 6).await?;
        let pids: Vec<BTreeMap<String, i32>> = (0..3).map(|i| c.machine(i).unit_pids()).collect();
        let new = c.add_machine(BTreeMap::new()).await?;
        c.wait_for_machines(4).await?;
        // The least-loaded machine is the new one: a unit submitted now lands there, which
        // also shows the engine has made passes since the machine joined.
        c.submit(&[c.service("probe.service", &[])]).await?;
        let new_id = c.machine(new).id.clone();
        c.wait_for_active_units("probe active on the new machine", |a| {
            a.get("probe.service") == Some(&vec![new_id.clone()])
        })
        .await?;
        holds_for(
            "no unit moves to the new machine",
            quiet_window(),
            || async {
                let now = on_live(&c, &c.active_units().await?);
                for n in &names {
                    ensure!(now.get(n) == before.get(n), "{n} moved: {:?}", now.get(n));
                }
                for (i, p) in pids.iter().enumerate() {
                    same_pids(&c, i, p)?;
                }
                Ok(())
            },
        )
        .await
    }
    .await;
    result.unwrap();
}

/// Kills a machine running units (the engine leader's or another) and prints the time until
/// all of its units are active elsewhere.
async fn measure_machine_loss(kill_leader: bool) -> Result<()> {
    let c = start(spec(3)).await;
    let (names, active) = run_plain(&c, "loss", 6).await?;
    let leader = c.wait_for_leader().await?;
    let victim = if kill_leader {
        leader
    } else {
        non_leader_with_units(&c, &active).await?
    };
    let victim_id = c.machine(victim).id.clone();
    let moving = units_on(&active, &victim_id);
    ensure!(
        !moving.is_empty(),
        "machine {victim} runs no unit: {active:?}"
    );
    let t0 = Instant::now();
    c.machine(victim).kill();
    c.wait_for_active_units("the dead machine's units active elsewhere", |a| {
        each_once(&c, a, &names)
    })
    .await?;
    let elapsed = t0.elapsed();
    let new_leader = c.wait_for_leader().await?;
    println!(
        "FIGURE machine loss ({}): {} units active elsewhere {:.2} s after SIGKILL \
         (agent_ttl {:?} + engine interval {:?}); leader now machine {new_leader}",
        if kill_leader {
            "engine leader's machine"
        } else {
            "non-leader machine"
        },
        moving.len(),
        elapsed.as_secs_f64(),
        AGENT_TTL,
        INTERVAL,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_machine_units_run_elsewhere() {
    measure_machine_loss(false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_machine_units_run_elsewhere() {
    measure_machine_loss(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_machine_keeps_units_then_stops_moved_ones() {
    partition(false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_keeps_units_then_stops_moved_ones() {
    partition(true).await.unwrap();
}

/// Cuts a machine off with SIGSTOP (the engine leader's or another running units), heals it.
async fn partition(leader: bool) -> Result<()> {
    let c = start(spec(3)).await;
    async {
        let (names, active) = run_plain(&c, "cut", 6).await?;
        let x = if leader {
            c.wait_for_leader().await?
        } else {
            non_leader_with_units(&c, &active).await?
        };
        let x_id = c.machine(x).id.clone();
        let held = units_on(&active, &x_id);
        let pids = c.machine(x).unit_pids();
        ensure!(
            held.iter().all(|u| pids.contains_key(u)),
            "pids of {held:?} on machine {x}: {pids:?}"
        );
        let t0 = Instant::now();
        c.machine(x).pause()?;
        // The cut-off machine's units move; meanwhile they keep running where they were.
        c.wait_for_active_units("the cut-off machine's units active elsewhere", |a| {
            held.iter()
                .all(|u| a.get(u).is_some_and(|ms| ms.iter().any(|m| *m != x_id)))
        })
        .await?;
        println!(
            "FIGURE partition ({}): {} units active elsewhere {:.2} s after SIGSTOP",
            if leader {
                "engine leader"
            } else {
                "non-leader"
            },
            held.len(),
            t0.elapsed().as_secs_f64()
        );
        same_pids(&c, x, &pids).context("units of the cut-off machine while cut off")?;
        c.machine(x).resume()?;
        let t1 = Instant::now();
        // Back: the moved units stop there, and nothing starts again on it.
        wait_for(
            "the returned machine stops the moved units",
            DEFAULT_DEADLINE,
            || async {
                let left = c.machine(x).unit_pids();
                if held.iter().any(|u| left.contains_key(u)) {
                    Err(format!("{left:?}"))
                } else {
                    Ok(())
                }
            },
        )
        .await?;
        println!(
            "partition healed: moved units stopped on the returned machine {:.2} s after SIGCONT",
            t1.elapsed().as_secs_f64()
        );
        for (u, pid) in &pids {
            ensure!(!cluster::cleanup::alive(*pid), "{u} (pid {pid}) still runs");
        }
        c.wait_for_active_units("every unit once, none on the returned machine", |a| {
            each_once(&c, a, &names) && units_on(a, &x_id).is_empty()
        })
        .await?;
        holds_for(
            "no unit returns to the healed machine",
            quiet_window(),
            || async {
                ensure!(
                    c.machine(x).unit_pids().is_empty(),
                    "units run again on machine {x}: {:?}",
                    c.machine(x).unit_pids()
                );
                let schedule = c.schedule_entries().await?;
                let mut seen = BTreeSet::new();
                for (_, u) in &schedule {
                    ensure!(seen.insert(u), "{u} scheduled twice: {schedule:?}");
                }
                Ok(())
            },
        )
        .await
    }
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_pass_places_each_unit_once() {
    let c = start(spec(3)).await;
    async {
        const N: usize = 200;
        let leader = c.wait_for_leader().await?;
        let submitter = (leader + 1) % 3;
        let client = c.client(submitter);
        let units: Vec<_> = (0..N)
            .map(|i| {
                cluster::units::with_state(
                    c.service(&format!("batch.{i:03}.service"), &[]),
                    TargetState::Loaded,
                )
            })
            .collect();
        // Submit from four tasks so units arrive faster than one engine pass places them.
        let mut tasks = Vec::new();
        for chunk in units.chunks(N / 4) {
            let client = client.clone();
            let chunk = chunk.to_vec();
            tasks.push(tokio::spawn(async move {
                for u in &chunk {
                    client.create_or_update_unit(u).await?;
                }
                Ok::<_, api::ClientError>(())
            }));
        }
        let placed_at_kill = wait_for("the engine placing units", DEFAULT_DEADLINE, || async {
            let n = c.schedule_entries().await.map_err(|e| format!("{e:#}"))?.len();
            if n >= 20 {
                Ok(n)
            } else {
                Err(format!("{n} placed"))
            }
        })
        .await?;
        c.machine(leader).kill();
        let t0 = Instant::now();
        for t in tasks {
            t.await.context("submitter task")??;
        }
        println!("killed the engine leader (machine {leader}) with {placed_at_kill} of {N} units placed");
        let new_leader = c.wait_for_leader().await?;
        ensure!(new_leader != leader, "leader still {leader}");
        let dead_id = c.machine(leader).id.clone();
        let schedule = wait_for("all units scheduled once on live machines", DEFAULT_DEADLINE, || async {
            let s = c.schedule_entries().await.map_err(|e| format!("{e:#}"))?;
            let on_live = s.iter().filter(|(m, _)| *m != dead_id).count();
            if s.len() == N && on_live == N {
                Ok(s)
            } else {
                Err(format!("{} entries, {on_live} on live machines", s.len()))
            }
        })
        .await?;
        println!(
            "FIGURE leader loss mid-pass: {N} units placed on live machines {:.2} s after SIGKILL of the leader",
            t0.elapsed().as_secs_f64()
        );
        let mut per_unit: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (m, u) in &schedule {
            per_unit.entry(u.as_str()).or_default().push(m.as_str());
        }
        ensure!(per_unit.len() == N, "{} distinct units scheduled", per_unit.len());
        let twice: Vec<_> = per_unit.iter().filter(|(_, ms)| ms.len() > 1).collect();
        ensure!(twice.is_empty(), "units scheduled twice: {twice:?}");
        // placement/<unit> agrees with the schedule, and each live agent loaded its share once.
        let placements = c.placements().await?;
        for (u, ms) in &per_unit {
            ensure!(
                placements.get(*u).map(String::as_str) == Some(ms[0]),
                "{u} placed on {:?}, schedule says {}",
                placements.get(*u),
                ms[0]
            );
        }
        let dead_id2 = dead_id.clone();
        wait_for("every unit loaded on exactly one live machine", DEFAULT_DEADLINE, || async {
            let states = c.unit_states().await.map_err(|e| format!("{e:#}"))?;
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for s in states.iter().filter(|s| s.machine_id != dead_id2) {
                if s.systemd_load_state == "loaded" {
                    *per.entry(s.name.clone()).or_default() += 1;
                }
            }
            let twice: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
            if !twice.is_empty() {
                return Err(format!("loaded twice: {twice:?}"));
            }
            if per.len() == N {
                Ok(())
            } else {
                Err(format!("{} of {N} loaded", per.len()))
            }
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

/// Unit pids per machine, for "nothing restarted" checks.
fn all_pids(c: &Cluster) -> Vec<BTreeMap<String, i32>> {
    c.machines().iter().map(|m| m.unit_pids()).collect()
}

/// Submits a new unit and waits until it runs: the cluster still places and starts units.
async fn probe(c: &Cluster, name: &str) -> Result<()> {
    // Retried: a request in flight when the registry loses a member may fail (503), as it
    // would for fleetctl; the question is whether the cluster takes units again.
    let unit = c.service(name, &[]);
    cluster::wait_for(
        &format!("{name} submitted"),
        cluster::DEFAULT_DEADLINE,
        || async {
            c.submit(std::slice::from_ref(&unit))
                .await
                .map_err(|e| format!("{e:#}"))
        },
    )
    .await?;
    c.wait_for_active_units(&format!("{name} active"), |a| a.contains_key(name))
        .await?;
    Ok(())
}

/// Nothing stopped or moved: same active units, same pids, same machines.
async fn nothing_stops(
    c: &Cluster,
    active: &ActiveUnits,
    pids: &[BTreeMap<String, i32>],
) -> Result<()> {
    let n = c.machines().len();
    holds_for("units undisturbed", quiet_window(), || async {
        let now = c.active_units().await?;
        for (u, ms) in active {
            ensure!(
                now.get(u) == Some(ms),
                "{u}: was on {ms:?}, now {:?}",
                now.get(u)
            );
        }
        for (i, p) in pids.iter().enumerate() {
            same_pids(c, i, p)?;
        }
        let machines = c.api(|cl| async move { cl.machines().await }).await?;
        ensure!(machines.len() == n, "machines: {machines:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_of_three_killed() {
    let mut c = start(ClusterSpec {
        etcd_members: 3,
        ..spec(3)
    })
    .await;
    let result = async {
        let (_, active) = run_plain(&c, "quorum", 6).await?;
        let pids = all_pids(&c);
        // Member 0 is the first endpoint every fleetd was given.
        tokio::task::block_in_place(|| c.etcd_mut().kill_member(0))?;
        let c = &c;
        probe(c, "probe.service").await?;
        nothing_stops(c, &active, &pids).await
    }
    .await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_nothing_stops() {
    let mut c = start(spec(3)).await;
    let result = async {
        let (_, active) = run_plain(&c, "outage", 6).await?;
        let pids = all_pids(&c);
        let t0 = Instant::now();
        tokio::task::block_in_place(|| c.etcd_mut().restart_all())?;
        println!(
            "etcd down and up again in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let c = &c;
        probe(c, "probe.service").await?;
        println!(
            "FIGURE etcd restart: a new unit active {:.2} s after etcd went down",
            t0.elapsed().as_secs_f64()
        );
        nothing_stops(c, &active, &pids).await
    }
    .await;
    result.unwrap();
}

/// etcd down for longer than `agent_ttl`: etcd keeps leases across its restart (their time
/// starts again when it is back), so no machine is declared dead and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_longer_than_agent_ttl_nothing_stops() {
    let mut c = start(spec(3)).await;
    let result = async {
        let (_, active) = run_plain(&c, "long", 6).await?;
        let pids = all_pids(&c);
        tokio::task::block_in_place(|| c.etcd_mut().stop_all())?;
        // The outage itself is the scenario: it lasts longer than a machine lease.
        tokio::time::sleep(AGENT_TTL + 2 * INTERVAL).await;
        for (i, p) in pids.iter().enumerate() {
            same_pids(&c, i, p).context("units while etcd is down")?;
        }
        let t0 = Instant::now();
        tokio::task::block_in_place(|| c.etcd_mut().restart_all())?;
        let c = &c;
        probe(c, "probe.service").await?;
        println!(
            "FIGURE long etcd outage: a new unit active {:.2} s after etcd came back",
            t0.elapsed().as_secs_f64()
        );
        nothing_stops(c, &active, &pids).await
    }
    .await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetd_sigkill_restart_restarts_no_unit() {
    let c = start(spec(3)).await;
    async {
        let (_, active) = run_plain(&c, "crash", 6).await?;
        let pids = all_pids(&c);
        let x = non_leader_with_units(&c, &active).await?;
        c.machine(x).restart().await?;
        nothing_stops(&c, &active, &pids).await?;
        probe(&c, "probe.service").await
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetd_upgrade_restart_restarts_no_unit() {
    let c = start(spec(3)).await;
    async {
        let (_, active) = run_plain(&c, "upgrade", 6).await?;
        let pids = all_pids(&c);
        // The leader too: its successor (or itself, again) must not disturb anything.
        let x = c.wait_for_leader().await?;
        c.machine(x).upgrade_restart().await?;
        nothing_stops(&c, &active, &pids).await?;
        probe(&c, "probe.service").await
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_units_and_they_run_elsewhere() {
    let c = start(spec(3)).await;
    async {
        let (names, active) = run_plain(&c, "leave", 6).await?;
        let x = non_leader_with_units(&c, &active).await?;
        let x_id = c.machine(x).id.clone();
        let pids = c.machine(x).unit_pids();
        ensure!(!pids.is_empty(), "machine {x} runs no unit");
        let t0 = Instant::now();
        let status = c.machine(x).stop().await?;
        let stopped_in = t0.elapsed();
        ensure!(status.success(), "fleetd exited with {status}");
        for (u, pid) in &pids {
            ensure!(!cluster::cleanup::alive(*pid), "{u} (pid {pid}) still runs after SIGTERM");
        }
        c.wait_for_active_units("the leaving machine's units active elsewhere", |a| {
            each_once(&c, a, &names) && units_on(a, &x_id).is_empty()
        })
        .await?;
        println!(
            "FIGURE SIGTERM: fleetd exited in {:.2} s; its {} units active elsewhere {:.2} s after SIGTERM",
            stopped_in.as_secs_f64(),
            pids.len(),
            t0.elapsed().as_secs_f64()
        );
        let machines = c.wait_for_machines(2).await?;
        ensure!(!machines.contains(&x_id), "machine {x} still listed");
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_unit_runs_everywhere_including_a_new_machine() {
    let mut c = start(spec(3)).await;
    let result = async {
        c.submit(&[c.service("global.service", &[("Global", "true")])])
            .await?;
        let ids: BTreeSet<String> = c.machines().iter().map(|m| m.id.clone()).collect();
        c.wait_for_active_units("global unit on all three machines", |a| {
            a.get("global.service")
                .is_some_and(|ms| ms.iter().cloned().collect::<BTreeSet<_>>() == ids)
        })
        .await?;
        let new = c.add_machine(BTreeMap::new()).await?;
        let ids: BTreeSet<String> = c.machines().iter().map(|m| m.id.clone()).collect();
        let c = &c;
        c.wait_for_active_units("global unit on the new machine too", |a| {
            a.get("global.service")
                .is_some_and(|ms| ms.iter().cloned().collect::<BTreeSet<_>>() == ids)
        })
        .await?;
        ensure!(c.machine(new).unit_pids().contains_key("global.service"));
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_patch_moves_a_unit() {
    let c = start(spec(3)).await;
    async {
        let (m1, m2) = (c.machine(1).id.clone(), c.machine(2).id.clone());
        c.submit(&[c.service("ssd.service", &[("MachineMetadata", "disk=ssd")])])
            .await?;
        // No machine has disk=ssd yet: the unit waits with a reason.
        let reason = wait_for(
            "ssd.service unplaced with a reason",
            DEFAULT_DEADLINE,
            || async {
                let u = c
                    .api(|cl| async move { cl.unit("ssd.service").await })
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                match u {
                    Some(u)
                        if u.machine_id.is_empty()
                            && u.reason.as_deref().is_some_and(|r| !r.is_empty()) =>
                    {
                        Ok(u.reason.unwrap_or_default())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await?;
        println!("ssd.service before any machine has disk=ssd: {reason}");
        let client = c.client(0);
        client
            .patch_machines(&[MachineMetadataOp::set(&m1, "disk", "ssd")])
            .await?;
        c.wait_for_active_units("ssd.service on machine 1", |a| {
            a.get("ssd.service") == Some(&vec![m1.clone()])
        })
        .await?;
        let pid = c
            .machine(1)
            .unit_pids()
            .get("ssd.service")
            .copied()
            .context("ssd.service pid on machine 1")?;
        client
            .patch_machines(&[
                MachineMetadataOp::remove(&m1, "disk"),
                MachineMetadataOp::set(&m2, "disk", "ssd"),
            ])
            .await?;
        c.wait_for_active_units("ssd.service moved to machine 2", |a| {
            a.get("ssd.service") == Some(&vec![m2.clone()])
        })
        .await?;
        ensure!(
            !cluster::cleanup::alive(pid),
            "ssd.service still runs on machine 1 (pid {pid})"
        );
        ensure!(c.unit_placement("ssd.service").await? == Some(m2.clone()));
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_units_stop_everywhere() {
    let c = start(spec(3)).await;
    async {
        c.submit(&[
            c.service("plain.service", &[]),
            c.service("everywhere.service", &[("Global", "true")]),
        ])
        .await?;
        c.wait_for_active_units("plain once, global on three machines", |a| {
            a.get("plain.service").is_some_and(|m| m.len() == 1)
                && a.get("everywhere.service").is_some_and(|m| m.len() == 3)
        })
        .await?;
        let pids: Vec<i32> = all_pids(&c)
            .into_iter()
            .flat_map(|p| p.into_values())
            .collect();
        ensure!(pids.len() == 4, "pids: {pids:?}");
        for name in ["plain.service", "everywhere.service"] {
            ensure!(
                c.api(|cl| async move { cl.destroy_unit(name).await })
                    .await?,
                "{name} did not exist"
            );
        }
        wait_for(
            "no unit process and no state left",
            DEFAULT_DEADLINE,
            || async {
                let running: Vec<_> = pids
                    .iter()
                    .filter(|p| cluster::cleanup::alive(**p))
                    .collect();
                let states = c.unit_states().await.map_err(|e| format!("{e:#}"))?;
                if running.is_empty() && states.is_empty() {
                    Ok(())
                } else {
                    Err(format!("running {running:?}, states {states:?}"))
                }
            },
        )
        .await?;
        ensure!(c.units().await?.is_empty());
        let leftovers: Vec<_> = c
            .registry_dump()
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.contains("/machines/") && !k.ends_with("/engine/leader"))
            .collect();
        ensure!(leftovers.is_empty(), "registry keys left: {leftovers:?}");
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

/// fleet's `disable_watches`: every agent and engine reads the registry each engine interval
/// instead of watching it; a unit still starts, and moves to another machine when its machine
/// leaves (SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_watches_a_unit_starts_and_moves_when_its_machine_leaves() {
    let c = start(ClusterSpec {
        extra_args: vec!["--disable-watches=true".into()],
        ..spec(2)
    })
    .await;
    async {
        for m in c.machines() {
            let log = std::fs::read_to_string(m.log_path())?;
            ensure!(
                log.contains("disable_watches: the agent and the engine read the registry"),
                "machine {} does not say it polls; its log:\n{log}",
                m.index
            );
        }
        let (names, active) = run_plain(&c, "nowatch", 1).await?;
        let holder = active
            .get(&names[0])
            .and_then(|ms| ms.first())
            .and_then(|id| c.index_of(id))
            .context("the unit's machine")?;
        let t0 = Instant::now();
        let status = c.machine(holder).stop().await?;
        ensure!(status.success(), "fleetd exited with {status} on SIGTERM");
        let other = c.machine(1 - holder).id.clone();
        c.wait_for_active_units("the unit active on the other machine", |a| {
            a.get(&names[0])
                .is_some_and(|ms| ms.len() == 1 && ms[0] == other)
        })
        .await?;
        println!(
            "FIGURE without watches: unit active on the other machine {:.2} s after its machine left \
             (engine interval {INTERVAL:?})",
            t0.elapsed().as_secs_f64()
        );
        Ok::<(), anyhow::Error>(())
    }
    .await
    .unwrap_or_else(|e| {
        c.print_diagnostics();
        panic!("{e:#}")
    });
}
