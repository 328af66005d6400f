//! The machine lease is refreshed by a task of its own, and a lease found expired is reported
//! so the agent can register again.

use agent::presence::Presence;
use registry::{MachineLease, MachineState, Registry, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);

/// A registry on an embedded store under `dir`.
fn registry_in(dir: &std::path::Path) -> Registry {
    let store: Arc<dyn Store> =
        Arc::new(registry::embedded::EmbeddedStore::open(&dir.join("reg")).unwrap());
    Registry::new(store, "/t/")
}

async fn alive(lease: &MachineLease) -> bool {
    lease.alive().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_holds_the_lease_and_reports_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_in(dir.path());
    let machine = MachineState {
        id: "0123456789abcdef0123456789abcdef".into(),
        ..Default::default()
    };
    let mut presence = Presence::register(reg.clone(), machine, TTL, dir.path())
        .await
        .unwrap();
    let first = presence.lease.clone();
    let (keeper, mut expired) = presence.keep_alive();
    // Nothing else refreshes it: alive after three TTLs means the keeper did.
    tokio::time::sleep(3 * TTL).await;
    assert!(alive(&first).await, "the lease outlived its TTL");

    // Gone from under us (as when the registry could not be reached for a TTL): reported.
    first.revoke().await.unwrap();
    let reported = tokio::time::timeout(3 * TTL, expired.recv())
        .await
        .expect("expiry reported within a refresh period")
        .unwrap();
    assert_eq!(reported, first.id());

    presence.renew().await.unwrap();
    assert_ne!(presence.lease.id(), first.id());
    keeper.follow(&presence.lease);
    let renewed = Instant::now();
    tokio::time::sleep(3 * TTL).await;
    assert!(
        alive(&presence.lease).await,
        "the new lease was not kept alive ({:?} after renewing)",
        renewed.elapsed()
    );
    assert!(
        reg.machines(None)
            .await
            .unwrap()
            .items
            .iter()
            .any(|m| m.id == presence.machine.id),
        "the machine record is back"
    );

    // Dropping the keeper stops refreshing: the lease then lapses.
    drop(keeper);
    let lease = presence.lease.clone();
    tokio::time::timeout(4 * TTL, async {
        while alive(&lease).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the lease lapses once nothing refreshes it");
}

/// A unit manager that holds no units: the test below schedules none.
struct NoUnits(tokio::sync::broadcast::Sender<agent::StateChange>);

#[async_trait::async_trait]
impl agent::UnitManager for NoUnits {
    async fn load(&self, name: &str, _: &unit::UnitFile) -> anyhow::Result<()> {
        anyhow::bail!("{name}: this test schedules no unit")
    }
    async fn reload(&self) -> anyhow::Result<()> {
        Ok(())
    }
    async fn start(&self, name: &str) -> anyhow::Result<()> {
        anyhow::bail!("{name}: this test schedules no unit")
    }
    async fn stop(&self, name: &str) -> anyhow::Result<()> {
        anyhow::bail!("{name}: this test schedules no unit")
    }
    async fn unload(&self, name: &str) -> anyhow::Result<()> {
        anyhow::bail!("{name}: this test schedules no unit")
    }
    async fn units(&self) -> anyhow::Result<Vec<(String, unit::UnitHash)>> {
        Ok(Vec::new())
    }
    async fn states(
        &self,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<registry::SystemdState>)>> {
        Ok(names.iter().map(|n| (n.clone(), None)).collect())
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<agent::StateChange> {
        self.0.subscribe()
    }
}

/// `public_ip` unset: a new address found on a heartbeat reaches the machine's record in the
/// registry through the agent, as fleet re-detected it on each heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_public_ip_is_announced_in_the_registry() {
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_in(dir.path());
    let machine = MachineState {
        id: "0123456789abcdef0123456789abcdef".into(),
        public_ip: "10.0.0.1".into(),
        ..Default::default()
    };
    let presence = Presence::register(
        reg.clone(),
        machine.clone(),
        Duration::from_secs(5),
        dir.path(),
    )
    .await
    .unwrap();
    let manager = NoUnits(tokio::sync::broadcast::channel(1).0);
    let (records, records_rx) = tokio::sync::watch::channel(machine);
    let (stop, stop_rx) = tokio::sync::watch::channel(None);
    let agent = tokio::spawn(
        agent::Agent::new(presence, Arc::new(manager))
            .with_machine_updates(records_rx)
            .run(stop_rx),
    );
    let found = Arc::new(Mutex::new(Some("10.0.0.1".to_string())));
    let detect: agent::presence::DetectIp = {
        let found = found.clone();
        Arc::new(move || found.lock().ok().and_then(|f| f.clone()))
    };
    let (_configured_tx, configured) = tokio::sync::watch::channel(false);
    tokio::spawn(agent::presence::redetect_public_ip(
        records,
        detect,
        Duration::from_millis(50),
        configured,
    ));

    *found.lock().unwrap() = Some("10.0.0.2".into());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let machines = reg.machines(None).await.unwrap().items;
        if machines.iter().any(|m| m.public_ip == "10.0.0.2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new address was not announced within 20 s: {machines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(Some(agent::Shutdown::Upgrade)).unwrap();
    agent.await.unwrap().unwrap();
}
