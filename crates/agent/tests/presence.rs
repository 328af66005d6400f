//! The machine lease is refreshed by a task of its own, and a lease found expired is reported
//! so the agent can register again.

use agent::presence::Presence;
use registry::{MachineLease, MachineState, Registry, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);

async fn alive(lease: &MachineLease) -> bool {
    lease.alive().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_holds_the_lease_and_reports_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(registry::embedded::EmbeddedStore::open(&dir.path().join("reg")).unwrap());
    let reg = Registry::new(store, "/t/");
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
