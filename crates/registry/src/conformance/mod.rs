//! The registry conformance suite: what every [`Store`] backend must do, checked through the
//! trait only, so the embedded store and a real etcd are held to the same contract. Built only
//! with the `conformance` feature, which this crate's own tests turn on: fleetd never carries it.
//!
//! ```ignore
//! // one test per case (tests run in parallel, each case on its own random key prefix):
//! registry::store_conformance_tests!(|| async { Arc::new(my_store().await) as Arc<dyn Store> });
//! // or every case at once:
//! registry::conformance::run_all(store).await?;
//! ```
//!
//! Every case writes only under its own random prefix (`/fleet-conformance/<case>/<random>/`), so
//! cases may share one store with each other and with other writers: revisions are compared
//! relative to the case's own writes, never as absolute numbers. Lease TTLs are 1-2 s and waits
//! poll with short intervals under a generous deadline, so the suite is fast and never asserts on
//! timing. Cases return an error naming what was expected and what was seen.
//!
//! Not covered here because the trait cannot provoke it on every backend: a read or watch of a
//! compacted revision (the embedded store's own tests cover it with a tiny history).

use crate::store::Store;
use anyhow::{bail, Result};
use futures::future::BoxFuture;
use std::sync::Arc;

/// A conformance case: takes the store under test, returns what went wrong.
pub type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, Result<()>>;

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($ctx:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            anyhow::bail!("{}: expected {:?}, got {:?}", format!($($ctx)+), r, l);
        }
    }};
}

mod kv;
mod leases;
mod support;
mod txn;
mod watches;

pub use kv::{get_put_delete, range_paging, revisions_monotonic};
pub use leases::{
    lease_expiry, lease_grant_rounding, lease_keep_alive, lease_missing, lease_revoke,
};
pub use txn::{compare_kinds, delete_prefix, failure_ops, txn_refuses_duplicate_keys};
pub use watches::{
    watch_concurrent_writers, watch_from_future, watch_from_past, watch_lease_deletes,
    watch_prefix_isolation, watch_resume,
};

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name, in the order `run_all` reports them.
        pub const CASES: &[(&str, Case)] = &[$((stringify!($name), |s| Box::pin($name(s)))),*];

        /// Generates one `#[tokio::test]` per conformance case. The argument is an expression
        /// callable with no arguments that returns a future of an `Arc<dyn Store>`; each test
        /// calls it once (so each test may get its own store, or share one).
        ///
        /// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`), `anyhow`, and
        /// this crate with its `conformance` feature.
        #[macro_export]
        macro_rules! store_conformance_tests {
            ($make:expr) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() -> anyhow::Result<()> {
                        let store: std::sync::Arc<dyn $crate::Store> = ($make)().await;
                        $crate::conformance::$name(store).await
                    }
                )*
            };
        }
    };
}

cases!(
    get_put_delete,
    revisions_monotonic,
    range_paging,
    compare_kinds,
    failure_ops,
    delete_prefix,
    txn_refuses_duplicate_keys,
    lease_expiry,
    lease_keep_alive,
    lease_revoke,
    lease_grant_rounding,
    lease_missing,
    watch_from_past,
    watch_prefix_isolation,
    watch_from_future,
    watch_lease_deletes,
    watch_resume,
    watch_concurrent_writers,
);

/// Runs every case concurrently against one store; the error lists every failed case.
pub async fn run_all(store: Arc<dyn Store>) -> Result<()> {
    let runs = CASES.iter().map(|(name, case)| {
        let store = store.clone();
        async move { (name, case(store).await) }
    });
    let failures: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e:#}")))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} conformance case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        )
    }
}
