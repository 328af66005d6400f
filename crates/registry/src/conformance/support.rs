//! What the cases share: unique key prefixes, single-op writes, polling, and a watch reader
//! that checks the stream's framing as it goes.

use crate::store::{Event, EventKind, LeaseId, Op, Revision, Store, StoreError, WatchStream};
use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long any single expected change may take to show (a lease expiry, a watch event).
/// Generous on purpose: the suite must pass on a loaded 2-core CI machine.
pub(super) const DEADLINE: Duration = Duration::from_secs(20);
/// Poll interval while waiting for a condition.
const POLL: Duration = Duration::from_millis(25);

/// A prefix no other case, run or process uses.
pub(super) fn unique_prefix(case: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    format!("/fleet-conformance/{case}/{:016x}/", h.finish())
}

pub(super) async fn put(store: &dyn Store, key: &str, value: &[u8]) -> Result<Revision> {
    put_leased(store, key, value, 0).await
}

pub(super) async fn put_leased(
    store: &dyn Store,
    key: &str,
    value: &[u8],
    lease: LeaseId,
) -> Result<Revision> {
    let r = store
        .txn(vec![], vec![Op::put_leased(key, value, lease)], vec![])
        .await
        .with_context(|| format!("put {key}"))?;
    ensure!(
        r.succeeded,
        "a txn without compares must succeed (put {key})"
    );
    Ok(r.revision)
}

pub(super) async fn delete(store: &dyn Store, key: &str) -> Result<Revision> {
    let r = store
        .txn(vec![], vec![Op::delete(key)], vec![])
        .await
        .with_context(|| format!("delete {key}"))?;
    ensure!(
        r.succeeded,
        "a txn without compares must succeed (delete {key})"
    );
    Ok(r.revision)
}

pub(super) async fn value_of(store: &dyn Store, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(store
        .get(key)
        .await
        .with_context(|| format!("get {key}"))?
        .map(|kv| kv.value))
}

/// Polls `cond` until it holds or the deadline passes.
pub(super) async fn wait_until<F, Fut>(what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if cond().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {DEADLINE:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A watch that hands out single events while checking the stream's framing: every item is
/// non-empty, in revision order, and never splits one revision across items.
pub(super) struct Watcher {
    stream: WatchStream,
    pending: VecDeque<Event>,
    pub(super) last_revision: Revision,
    what: String,
}

impl Watcher {
    pub(super) async fn new(store: &dyn Store, prefix: &str, from: Revision) -> Result<Watcher> {
        let stream = store
            .watch(prefix, from)
            .await
            .with_context(|| format!("watch {prefix} from {from}"))?;
        Ok(Watcher {
            stream,
            pending: VecDeque::new(),
            last_revision: 0,
            what: format!("watch of {prefix} from {from}"),
        })
    }

    async fn next_event(&mut self) -> Result<Event> {
        while self.pending.is_empty() {
            let item = tokio::time::timeout(DEADLINE, self.stream.next())
                .await
                .map_err(|_| anyhow!("{}: no event within {DEADLINE:?}", self.what))?
                .ok_or_else(|| anyhow!("{}: stream ended", self.what))?
                .with_context(|| format!("{}: stream error", self.what))?;
            ensure!(!item.is_empty(), "{}: delivered an empty batch", self.what);
            let first = item[0].kv.mod_revision;
            ensure!(
                first > self.last_revision,
                "{}: batch starting at revision {first} after revision {} (out of order, or one revision split over two batches)",
                self.what,
                self.last_revision
            );
            for pair in item.windows(2) {
                ensure!(
                    pair[0].kv.mod_revision <= pair[1].kv.mod_revision,
                    "{}: events out of revision order within a batch: {:?}",
                    self.what,
                    item
                );
            }
            self.last_revision = item.last().map_or(first, |e| e.kv.mod_revision);
            self.pending.extend(item);
        }
        self.pending
            .pop_front()
            .ok_or_else(|| anyhow!("{}: no event", self.what))
    }

    pub(super) async fn take(&mut self, n: usize) -> Result<Vec<Event>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await?);
        }
        Ok(out)
    }
}

/// What a watch must report for a change: kind, key, value (empty for deletes) and revision.
pub(super) fn summary(events: &[Event]) -> Vec<(EventKind, String, Vec<u8>, Revision)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.value.clone(),
                e.kv.mod_revision,
            )
        })
        .collect()
}

pub(super) fn put_ev(
    key: &str,
    value: &[u8],
    rev: Revision,
) -> (EventKind, String, Vec<u8>, Revision) {
    (EventKind::Put, key.to_string(), value.to_vec(), rev)
}

pub(super) fn del_ev(key: &str, rev: Revision) -> (EventKind, String, Vec<u8>, Revision) {
    (EventKind::Delete, key.to_string(), Vec::new(), rev)
}

pub(super) fn is_lease_not_found<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::LeaseNotFound(_)))
}

/// A lease id no backend has granted (ids are positive, and this one is random).
pub(super) fn unknown_lease() -> LeaseId {
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    ((h >> 2) as i64).max(1)
}
