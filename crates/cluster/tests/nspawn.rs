//! The conflict and machine-loss scenarios with fleetd under a real systemd: each machine is a
//! `systemd-nspawn` container (testkit) running fleetd as a service with `--unit-manager
//! systemd`. The containers share the host's network, so they reach the test's etcd and serve
//! the API on 127.0.0.1. Skipped, with the reason printed, where nspawn cannot run.

use anyhow::{ensure, Context};
use cluster::nspawn::{NspawnCluster, NspawnSpec};
use cluster::ActiveUnits;
use std::collections::BTreeSet;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nspawn_five_conflicting_units_on_three_machines() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let c = tokio::task::block_in_place(|| NspawnCluster::start(NspawnSpec::machines(3))).unwrap();
    async {
        let units: Vec<_> = (0..5)
            .map(|i| {
                cluster::units::service(
                    &format!("conflict.{i}.service"),
                    c.tag(),
                    &[("Conflicts", "conflict.*.service")],
                )
            })
            .collect();
        c.submit(&units).await?;
        let active = c
            .wait_active("three conflict units active under systemd", |a| {
                a.len() == 3
            })
            .await?;
        let machines: BTreeSet<&String> = active.values().flatten().collect();
        ensure!(
            machines.len() == 3 && active.values().all(|m| m.len() == 1),
            "{active:?}"
        );
        // systemd itself runs them: ask the container's systemd.
        for (unit, ms) in &active {
            let i = c.index_of(&ms[0]).context("machine")?;
            let out = c.machines[i].nspawn.systemctl(["is-active", unit])?;
            ensure!(
                String::from_utf8_lossy(&out.stdout).trim() == "active",
                "systemctl is-active {unit} on machine {i}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nspawn_crashed_machine_units_run_elsewhere() {
    if cluster::nspawn::cannot_boot() {
        return;
    }
    let mut c =
        tokio::task::block_in_place(|| NspawnCluster::start(NspawnSpec::machines(3))).unwrap();
    let result = async {
        let names: Vec<String> = (0..6).map(|i| format!("loss.{i}.service")).collect();
        let units: Vec<_> = names
            .iter()
            .map(|n| cluster::units::service(n, c.tag(), &[]))
            .collect();
        c.submit(&units).await?;
        let once = |a: &ActiveUnits| names.iter().all(|n| a.get(n).is_some_and(|m| m.len() == 1));
        let active = c.wait_active("six units active under systemd", once).await?;
        let victim_id = active[&names[0]][0].clone();
        let victim = c.index_of(&victim_id).context("victim")?;
        let moving = active.values().filter(|m| m[0] == victim_id).count();
        let t0 = Instant::now();
        tokio::task::block_in_place(|| c.machines[victim].nspawn.crash())?;
        c.machines[victim].alive = false;
        let c = &c;
        c.wait_active("the crashed machine's units active elsewhere", once)
            .await?;
        println!(
            "FIGURE nspawn machine crash (systemd): {moving} units active elsewhere {:.2} s after the container's PID 1 was killed",
            t0.elapsed().as_secs_f64()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}
