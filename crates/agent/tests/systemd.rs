//! The systemd unit manager against a real systemd: each test boots its own machine under
//! systemd-nspawn (testkit), drives its systemd over D-Bus from the host, and checks with
//! `systemctl` inside the machine. Skipped, with the reason printed, where nspawn cannot run.

use agent::systemd::{SystemdManager, SystemdOptions};
use agent::{StateChange, UnitManager};
use registry::SystemdState;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::nspawn::{nspawn_available, NspawnMachine};
use tokio::sync::broadcast;
use unit::UnitFile;

/// Generous: a state change takes milliseconds, a loaded CI machine may take seconds.
const DEADLINE: Duration = Duration::from_secs(60);

fn boot(hint: &str) -> Option<NspawnMachine> {
    if let Err(why) = nspawn_available() {
        testkit::skip(&format!("cannot boot a systemd machine here: {why}"));
        return None;
    }
    let started = Instant::now();
    let machine = NspawnMachine::boot(hint).expect("boot an nspawn machine");
    eprintln!("booted {} in {:?}", machine.name(), started.elapsed());
    Some(machine)
}

fn options(machine: &NspawnMachine) -> SystemdOptions {
    SystemdOptions {
        bus_address: Some(machine.bus_address()),
        systemd_root: Some(machine.root()),
        ..SystemdOptions::default()
    }
}

async fn manager(machine: &NspawnMachine) -> SystemdManager {
    SystemdManager::connect(options(machine))
        .await
        .expect("connect to the machine's systemd")
}

fn unit(text: &str) -> UnitFile {
    UnitFile::parse(text).expect("a valid unit file")
}

fn sleeper() -> UnitFile {
    unit("[Unit]\nDescription=sleeps\n\n[Service]\nExecStart=/usr/bin/sleep 1000\n")
}

fn state(load: &str, active: &str, sub: &str) -> Option<SystemdState> {
    Some(SystemdState {
        load: load.into(),
        active: active.into(),
        sub: sub.into(),
    })
}

/// Waits for a change of `name` to `want` on `changes`, skipping other changes.
async fn wait_change(
    changes: &mut broadcast::Receiver<StateChange>,
    name: &str,
    want: Option<SystemdState>,
) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            match changes.recv().await {
                Ok(change) if change.name == name && change.state == want => return,
                Ok(change) => seen.push(change),
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("lagged by {n} changes"),
                Err(broadcast::error::RecvError::Closed) => panic!("change channel closed"),
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no change of {name} to {want:?}; saw {seen:?}"
    );
}

/// `systemctl show` of the three states, inside the machine.
fn systemctl_states(machine: &NspawnMachine, name: &str) -> SystemdState {
    let out = machine
        .systemctl(["show", "-p", "LoadState,ActiveState,SubState", name])
        .expect("systemctl show");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let props: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    SystemdState {
        load: props.get("LoadState").unwrap_or(&"").to_string(),
        active: props.get("ActiveState").unwrap_or(&"").to_string(),
        sub: props.get("SubState").unwrap_or(&"").to_string(),
    }
}

fn systemctl_stdout(machine: &NspawnMachine, args: &[&str]) -> String {
    let out = machine.systemctl(args).expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn one_state(manager: &SystemdManager, name: &str) -> Option<SystemdState> {
    let states = manager.states(&[name.to_string()]).await.expect("states");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].0, name);
    states[0].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_start_stop_unload_one_unit() {
    let Some(machine) = boot("lifecycle") else {
        return;
    };
    let manager = manager(&machine).await;
    let mut changes = manager.subscribe();
    let name = "hello.service";
    let file = sleeper();

    manager.load(name, &file).await.unwrap();
    let written = machine.host_path("/run/fleet/units/hello.service");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), file.serialize());
    let link = machine.host_path("/run/systemd/system/hello.service");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/run/fleet/units/hello.service")
    );
    assert_eq!(
        manager.units().await.unwrap(),
        vec![(name.to_string(), file.hash())]
    );

    manager.reload().await.unwrap();
    wait_change(&mut changes, name, state("loaded", "inactive", "dead")).await;
    assert_eq!(
        one_state(&manager, name).await,
        state("loaded", "inactive", "dead")
    );

    manager.start(name).await.unwrap();
    wait_change(&mut changes, name, state("loaded", "active", "running")).await;
    assert_eq!(
        one_state(&manager, name).await,
        state("loaded", "active", "running")
    );
    assert_eq!(
        Some(systemctl_states(&machine, name)),
        state("loaded", "active", "running")
    );
    let status = machine.systemctl(["status", name]).unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(status.contains("/usr/bin/sleep 1000"), "{status}");

    manager.stop(name).await.unwrap();
    wait_change(&mut changes, name, state("loaded", "inactive", "dead")).await;
    assert_eq!(systemctl_states(&machine, name).active, "inactive");

    manager.start(name).await.unwrap();
    wait_change(&mut changes, name, state("loaded", "active", "running")).await;
    // Unload stops a running unit first.
    manager.unload(name).await.unwrap();
    wait_change(&mut changes, name, None).await;
    assert!(!written.exists(), "unit file left behind");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "runtime link left behind"
    );
    assert!(manager.units().await.unwrap().is_empty());
    manager.reload().await.unwrap();
    assert_eq!(
        one_state(&manager, name).await,
        state("not-found", "inactive", "dead")
    );
    assert_eq!(systemctl_states(&machine, name).load, "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_with_an_install_section_is_enabled_at_runtime() {
    let Some(machine) = boot("install") else {
        return;
    };
    let manager = manager(&machine).await;
    let name = "wanted.service";
    let file =
        unit("[Service]\nExecStart=/usr/bin/sleep 1000\n\n[Install]\nWantedBy=multi-user.target\n");
    let wants = machine.host_path("/run/systemd/system/multi-user.target.wants/wanted.service");

    manager.load(name, &file).await.unwrap();
    manager.reload().await.unwrap();
    assert_eq!(
        systemctl_stdout(&machine, &["is-enabled", name]),
        "enabled-runtime"
    );
    assert!(
        std::fs::symlink_metadata(&wants).is_ok(),
        "no {}",
        wants.display()
    );

    // A unit without [Install] is linked, not enabled.
    manager.load("plain.service", &sleeper()).await.unwrap();
    manager.reload().await.unwrap();
    assert_eq!(
        systemctl_stdout(&machine, &["is-enabled", "plain.service"]),
        "linked-runtime"
    );

    manager.unload(name).await.unwrap();
    manager.reload().await.unwrap();
    assert!(
        std::fs::symlink_metadata(&wants).is_err(),
        "wants link left behind"
    );
    assert_ne!(
        systemctl_stdout(&machine, &["is-enabled", name]),
        "enabled-runtime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_twenty_units_with_one_reload() {
    let Some(machine) = boot("batch") else { return };
    let manager = manager(&machine).await;
    let mut changes = manager.subscribe();
    let names: Vec<String> = (0..20).map(|i| format!("batch-{i:02}.service")).collect();
    let file = sleeper();

    let t0 = Instant::now();
    for name in &names {
        manager.load(name, &file).await.unwrap();
    }
    let t_load = t0.elapsed();
    manager.reload().await.unwrap();
    let t_reload = t0.elapsed();
    for name in &names {
        manager.start(name).await.unwrap();
    }
    let t_start = t0.elapsed();
    let mut running: HashMap<String, bool> = names.iter().map(|n| (n.clone(), false)).collect();
    let all = tokio::time::timeout(DEADLINE, async {
        while running.values().any(|r| !r) {
            match changes.recv().await {
                Ok(c) if c.state == state("loaded", "active", "running") => {
                    running.insert(c.name, true);
                }
                Ok(_) => {}
                Err(e) => panic!("change channel: {e}"),
            }
        }
    })
    .await;
    assert!(all.is_ok(), "not all running: {running:?}");
    let t_running = t0.elapsed();
    eprintln!(
        "20 units: loaded in {t_load:?}, reloaded at {t_reload:?}, started at {t_start:?}, \
         all running (seen through signals) at {t_running:?}"
    );

    let states = manager.states(&names).await.unwrap();
    assert_eq!(states.len(), 20);
    for (name, s) in &states {
        assert_eq!(*s, state("loaded", "active", "running"), "{name}");
    }
    let listed = systemctl_stdout(
        &machine,
        &["list-units", "--no-legend", "--state=running", "batch-*"],
    );
    assert_eq!(listed.lines().count(), 20, "{listed}");

    let t1 = Instant::now();
    for name in &names {
        manager.unload(name).await.unwrap();
    }
    manager.reload().await.unwrap();
    eprintln!("20 units: unloaded and reloaded in {:?}", t1.elapsed());
    assert!(manager.units().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_manager_adopts_the_units_it_finds() {
    let Some(machine) = boot("adopt") else { return };
    let name = "kept.service";
    let file = sleeper();
    {
        let first = manager(&machine).await;
        first.load(name, &file).await.unwrap();
        first.reload().await.unwrap();
        first.start(name).await.unwrap();
    }
    // A restarted agent: the file and the running unit are still there.
    let second = manager(&machine).await;
    let mut changes = second.subscribe();
    assert_eq!(
        second.units().await.unwrap(),
        vec![(name.to_string(), file.hash())]
    );
    // Adopted units are watched: a stop from outside the manager is reported.
    let deadline = Instant::now() + DEADLINE;
    while systemctl_states(&machine, name).active != "active" {
        assert!(Instant::now() < deadline, "{name} never became active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = machine.systemctl(["stop", name]).unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_change(&mut changes, name, state("loaded", "inactive", "dead")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_unit_and_the_method() {
    let Some(machine) = boot("errors") else {
        return;
    };
    let manager = manager(&machine).await;
    let err = manager
        .start("missing.service")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("StartUnit") && err.contains("missing.service"),
        "{err}"
    );
    let err = manager
        .load("../escape.service", &sleeper())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("../escape.service"), "{err}");
    // Unloading a unit systemd never loaded is not an error: there is nothing to stop.
    manager.unload("never.service").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bus_connection_is_made_again() {
    let Some(machine) = boot("reconnect") else {
        return;
    };
    let manager = manager(&machine).await;
    let mut changes = manager.subscribe();
    let name = "survivor.service";
    manager.load(name, &sleeper()).await.unwrap();
    manager.reload().await.unwrap();
    wait_change(&mut changes, name, state("loaded", "inactive", "dead")).await;

    // Kill the machine's D-Bus daemon and start it again: every client connection drops.
    let out = machine
        .systemctl(["kill", "--signal=KILL", "dbus.service"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = machine.systemctl(["start", "dbus.service"]).unwrap();
    assert!(out.status.success(), "{out:?}");

    // The first calls may still meet the old connection or a bus systemd has not rejoined yet.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match manager.start(name).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "start never worked again: {e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Signals flow again on the new connection.
    wait_change(&mut changes, name, state("loaded", "active", "running")).await;
}
