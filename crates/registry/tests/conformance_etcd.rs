//! The registry conformance suite against a real one-member etcd, started and killed by the test.

use async_trait::async_trait;
use registry::conformance::CASES;
use registry::etcd::{EtcdOptions, EtcdStore};
use registry::store::Result;
use registry::{
    Compare, KeyValue, LeaseId, Op, RangePage, Revision, Store, TxnResult, WatchStream,
};
use std::sync::Arc;
use std::time::Duration;
use testkit::etcd::EtcdCluster;

/// An [`EtcdStore`] that owns the etcd it talks to, so the etcd dies with the last handle.
struct OwnedEtcd {
    store: EtcdStore,
    _cluster: EtcdCluster,
}

async fn owned_etcd(members: usize) -> Arc<dyn Store> {
    let cluster =
        tokio::task::block_in_place(|| EtcdCluster::start(members)).expect("starting etcd");
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: cluster.endpoints(),
        request_timeout: Duration::from_secs(5),
        ..EtcdOptions::default()
    })
    .await
    .expect("connecting to etcd");
    Arc::new(OwnedEtcd {
        store,
        _cluster: cluster,
    })
}

#[async_trait]
impl Store for OwnedEtcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.store.get(key).await
    }
    async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<RangePage> {
        self.store.range(prefix, start, limit, revision).await
    }
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult> {
        self.store.txn(compares, success, failure).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.store.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.store.keep_alive(lease).await
    }
    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>> {
        self.store.lease_ttl(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.store.revoke_lease(lease).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.store.watch(prefix, from).await
    }
}

/// Cases that assert something etcd itself refuses, with the reason. Each is still run and must
/// fail exactly this way, so the list cannot go stale silently.
const ETCD_REFUSES: &[(&str, &str)] = &[];

/// Runs every case of the suite concurrently on one store (the cases share stores by design).
async fn run_suite(store: Arc<dyn Store>) {
    let runs = CASES.iter().map(|(name, case)| {
        let store = store.clone();
        async move { (*name, case(store).await) }
    });
    let mut failures = Vec::new();
    for (name, outcome) in futures::future::join_all(runs).await {
        let refused = ETCD_REFUSES.iter().find(|(n, _)| *n == name);
        match (outcome, refused) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => {
                failures.push(format!("{name}: passes now; remove it from ETCD_REFUSES"))
            }
            (Err(e), Some((_, why))) if format!("{e:#}").contains(why) => {}
            (Err(e), _) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_one_member_etcd() {
    run_suite(owned_etcd(1).await).await;
}

/// Requests spread over three members (followers forward writes to the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_three_member_etcd() {
    run_suite(owned_etcd(3).await).await;
}
