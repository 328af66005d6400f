//! A light hook for metrics: [`StoreObserver`] is told of every store request (its kind,
//! whether it succeeded, how long it took) and of every refresh of a machine lease. The
//! registry stays free of any metrics library; fleetd plugs its Prometheus families in with
//! [`crate::Registry::with_observer`].

use crate::store::{
    Compare, KeyValue, LeaseId, LeaseTimes, Op, RangePage, Result, Revision, Store, TxnResult,
    WatchStream,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one refresh of a machine lease went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseRefresh {
    /// The store refreshed it.
    Ok,
    /// The store no longer had it: the machine's presence and states went with it.
    Expired,
    /// No answer in time, or an error: retried at once.
    Failed,
}

impl LeaseRefresh {
    /// The value of a `result` label.
    pub fn label(self) -> &'static str {
        match self {
            LeaseRefresh::Ok => "ok",
            LeaseRefresh::Expired => "expired",
            LeaseRefresh::Failed => "failed",
        }
    }
}

/// Told of what the registry asks of its store. Called on the request's own task, so keep it
/// cheap (counters, not I/O).
pub trait StoreObserver: Send + Sync + 'static {
    /// One store request of `kind` (`get`, `range`, `txn`, `grant_lease`, `keep_alive`,
    /// `lease_ttl`, `revoke_lease`, `watch`) ended, `ok` or not, after `took`. For `watch`, the
    /// time to open the watch, not its life.
    fn request(&self, kind: &'static str, ok: bool, took: Duration);

    /// The machine lease's keeper refreshed it (or tried to).
    fn lease_refreshed(&self, _result: LeaseRefresh) {}
}

/// A [`Store`] that reports every request to an observer and passes it on.
pub(crate) struct ObservedStore {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) observer: Arc<dyn StoreObserver>,
}

impl ObservedStore {
    fn seen<T>(&self, kind: &'static str, began: Instant, r: Result<T>) -> Result<T> {
        self.observer.request(kind, r.is_ok(), began.elapsed());
        r
    }
}

#[async_trait]
impl Store for ObservedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let began = Instant::now();
        let r = self.inner.get(key).await;
        self.seen("get", began, r)
    }

    async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<RangePage> {
        let began = Instant::now();
        let r = self.inner.range(prefix, start, limit, revision).await;
        self.seen("range", began, r)
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult> {
        let began = Instant::now();
        let r = self.inner.txn(compares, success, failure).await;
        self.seen("txn", began, r)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let began = Instant::now();
        let r = self.inner.grant_lease(ttl).await;
        self.seen("grant_lease", began, r)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let began = Instant::now();
        let r = self.inner.keep_alive(lease).await;
        self.seen("keep_alive", began, r)
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>> {
        let began = Instant::now();
        let r = self.inner.lease_ttl(lease).await;
        self.seen("lease_ttl", began, r)
    }

    async fn lease_times(&self, lease: LeaseId) -> Result<Option<LeaseTimes>> {
        let began = Instant::now();
        let r = self.inner.lease_times(lease).await;
        self.seen("lease_ttl", began, r)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let began = Instant::now();
        let r = self.inner.revoke_lease(lease).await;
        self.seen("revoke_lease", began, r)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let began = Instant::now();
        let r = self.inner.watch(prefix, from).await;
        self.seen("watch", began, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(&'static str, bool)>>);

    impl StoreObserver for Seen {
        fn request(&self, kind: &'static str, ok: bool, _took: Duration) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((kind, ok));
        }
    }

    #[tokio::test]
    async fn every_request_is_reported_with_its_kind_and_result() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        let seen = Arc::new(Seen::default());
        let registry = crate::Registry::new(Arc::new(store), "/fleet/").with_observer(seen.clone());
        registry.dump().await.expect("read the registry");
        registry
            .store
            .keep_alive(12345)
            .await
            .expect_err("no such lease");
        let seen = seen.0.lock().expect("not poisoned").clone();
        assert_eq!(seen, vec![("range", true), ("keep_alive", false)]);
    }
}
