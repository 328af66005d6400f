//! Unit states reach the registry as the unit manager reports them, not in the rounds of the
//! agent's plans: a state change is published while the next plan still waits for its reload.

use agent::presence::Presence;
use agent::StateChange;
use registry::{Campaign, MachineState, Registry, ScheduleChange, ScheduleEntry, Store};
use registry::{SystemdState, TargetState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Semaphore};

const MACHINE: &str = "0123456789abcdef0123456789abcdef";

/// Bounds a wait that would otherwise hang; no test outcome depends on it.
const HANG: Duration = Duration::from_secs(20);

fn registry_in(dir: &std::path::Path) -> Registry {
    let store: Arc<dyn Store> =
        Arc::new(registry::embedded::EmbeddedStore::open(&dir.join("reg")).unwrap());
    Registry::new(store, "/t/")
}

fn state(active: &str) -> SystemdState {
    SystemdState {
        load: "loaded".into(),
        active: active.into(),
        sub: if active == "active" {
            "running"
        } else {
            "failed"
        }
        .into(),
    }
}

/// A unit manager whose reloads after the first wait until the test lets them go; it reports
/// a start as the unit being active.
struct Gated {
    reports: broadcast::Sender<StateChange>,
    reloads: AtomicUsize,
    /// Reloads entered so far (the first passes at once, later ones wait for a permit).
    gate: Semaphore,
}

#[async_trait::async_trait]
impl agent::UnitManager for Gated {
    async fn load(&self, _: &str, _: &unit::UnitFile) -> anyhow::Result<()> {
        Ok(())
    }
    async fn reload(&self) -> anyhow::Result<()> {
        if self.reloads.fetch_add(1, Ordering::SeqCst) > 0 {
            self.gate.acquire().await?.forget();
        }
        Ok(())
    }
    async fn start(&self, name: &str) -> anyhow::Result<()> {
        // Nobody listening is not this manager's problem: the agent subscribes before acting.
        let _ = self.reports.send(StateChange {
            name: name.into(),
            state: Some(state("active")),
        });
        Ok(())
    }
    async fn stop(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn unload(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn units(&self) -> anyhow::Result<Vec<(String, unit::UnitHash)>> {
        Ok(Vec::new())
    }
    async fn states(
        &self,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<SystemdState>)>> {
        Ok(names.iter().map(|n| (n.clone(), None)).collect())
    }
    fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.reports.subscribe()
    }
}

fn place(name: &str, n: u32) -> ScheduleChange {
    let file = unit::UnitFile::parse(&format!("[Service]\nExecStart=/bin/sleep {n}\n")).unwrap();
    ScheduleChange::Place {
        unit: name.into(),
        machine: MACHINE.into(),
        entry: ScheduleEntry {
            hash: file.hash(),
            desired: TargetState::Launched,
            raw: Some(file.serialize()),
        },
    }
}

/// Polls the registry until `name`'s published active state is `active`.
async fn published(reg: &Registry, name: &str, active: &str) {
    let deadline = Instant::now() + HANG;
    loop {
        let states = reg.states_of_unit(name).await.unwrap();
        if states.iter().any(|s| s.systemd.active == active) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not published {active} within {HANG:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_is_published_while_the_next_plan_waits_for_its_reload() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_in(dir.path());
    let machine = MachineState {
        id: MACHINE.into(),
        ..Default::default()
    };
    let presence = Presence::register(reg.clone(), machine, Duration::from_secs(5), dir.path())
        .await
        .unwrap();
    let manager = Arc::new(Gated {
        reports: broadcast::channel(64).0,
        reloads: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(None);
    let agent = tokio::spawn(agent::Agent::new(presence, manager.clone()).run(stop_rx));
    let Campaign::Won(engine) = reg.campaign(MACHINE, Duration::from_secs(5)).await.unwrap() else {
        panic!("no other engine runs here")
    };

    engine
        .apply_schedule(&[place("a.service", 1)])
        .await
        .unwrap();
    published(&reg, "a.service", "active").await;

    // The next plan: b loads, and its reload waits.
    engine
        .apply_schedule(&[place("b.service", 2)])
        .await
        .unwrap();
    let deadline = Instant::now() + HANG;
    while manager.reloads.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "b's reload never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a fails meanwhile: its state goes out without waiting for the plan to get anywhere.
    manager
        .reports
        .send(StateChange {
            name: "a.service".into(),
            state: Some(state("failed")),
        })
        .unwrap();
    published(&reg, "a.service", "failed").await;
    assert_eq!(
        manager.gate.available_permits(),
        0,
        "published while the reload still waited"
    );
    let b = reg.states_of_unit("b.service").await.unwrap();
    assert!(
        b.is_empty(),
        "b's state is held back until its reload: {b:?}"
    );

    manager.gate.add_permits(1);
    published(&reg, "b.service", "active").await;
    stop.send(Some(agent::Shutdown::Upgrade)).unwrap();
    agent.await.unwrap().unwrap();
}
