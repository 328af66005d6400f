//! The registry conformance suite against real etcd (one member, and three), started and killed
//! by each test.

use async_trait::async_trait;
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
    async fn lease_times(&self, lease: LeaseId) -> Result<Option<registry::LeaseTimes>> {
        self.store.lease_times(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.store.revoke_lease(lease).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.store.watch(prefix, from).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_one_member_etcd() -> anyhow::Result<()> {
    registry::conformance::run_all(owned_etcd(1).await).await
}

/// Requests spread over three members (followers forward writes to the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_three_member_etcd() -> anyhow::Result<()> {
    registry::conformance::run_all(owned_etcd(3).await).await
}
