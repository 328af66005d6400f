//! Figures for the systemd unit manager against a real systemd under nspawn; prints, never
//! asserts on time. Run by hand:
//!
//! ```sh
//! FLEET_BENCH_UNITS=200 cargo test -p fleet-agent --test systemd_bench -- --ignored --nocapture
//! ```

use agent::systemd::{SystemdManager, SystemdOptions};
use agent::UnitManager;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use testkit::nspawn::{nspawn_available, NspawnMachine};
use unit::UnitFile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
async fn bench_load_start_unload() {
    if let Err(why) = nspawn_available() {
        testkit::skip(&format!("cannot boot a systemd machine here: {why}"));
        return;
    }
    let n: usize = std::env::var("FLEET_BENCH_UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = Instant::now();
    let machine = NspawnMachine::boot("bench").expect("boot");
    let boot = t.elapsed();
    let manager = SystemdManager::connect(SystemdOptions {
        bus_address: Some(machine.bus_address()),
        systemd_root: Some(machine.root()),
        ..SystemdOptions::default()
    })
    .await
    .expect("connect");
    let mut changes = manager.subscribe();
    let file = UnitFile::parse("[Service]\nExecStart=/usr/bin/sleep 1000\n").expect("unit");
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}.service")).collect();

    let t = Instant::now();
    for name in &names {
        manager.load(name, &file).await.expect("load");
    }
    let load = t.elapsed();
    manager.reload().await.expect("reload");
    let reload = t.elapsed() - load;
    let t = Instant::now();
    for name in &names {
        manager.start(name).await.expect("start");
    }
    let start = t.elapsed();
    let mut running = HashSet::new();
    let waited = tokio::time::timeout(Duration::from_secs(300), async {
        while running.len() < n {
            let change = changes.recv().await.expect("changes");
            if change.state.is_some_and(|s| s.sub == "running") {
                running.insert(change.name);
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "only {} of {n} running", running.len());
    let all_running = t.elapsed();
    let t = Instant::now();
    let states = manager.states(&names).await.expect("states");
    let states_call = t.elapsed();
    assert_eq!(states.len(), n);
    let t = Instant::now();
    for name in &names {
        manager.unload(name).await.expect("unload");
    }
    manager.reload().await.expect("reload");
    let unload = t.elapsed();
    println!(
        "systemd manager, {n} units: boot {boot:?}; load {load:?} ({:?}/unit); reload {reload:?}; \
         start calls {start:?}; all running seen through signals after {all_running:?}; \
         one states() call {states_call:?}; unload+reload {unload:?} ({:?}/unit)",
        load / n as u32,
        unload / n as u32,
    );
}
