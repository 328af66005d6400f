//! The registry conformance suite: what every [`Store`] backend must do, checked through the
//! trait only, so the embedded store and a real etcd are held to the same contract.
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

use crate::store::{
    range_all, Compare, Event, EventKind, KeyValue, LeaseId, Op, Revision, Store, StoreError,
    WatchStream,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any single expected change may take to show (a lease expiry, a watch event).
/// Generous on purpose: the suite must pass on a loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(20);
/// Poll interval while waiting for a condition.
const POLL: Duration = Duration::from_millis(25);

/// A conformance case: takes the store under test, returns what went wrong.
pub type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, Result<()>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name, in the order `run_all` reports them.
        pub const CASES: &[(&str, Case)] = &[$((stringify!($name), |s| Box::pin($name(s)))),*];

        /// Generates one `#[tokio::test]` per conformance case. The argument is an expression
        /// callable with no arguments that returns a future of an `Arc<dyn Store>`; each test
        /// calls it once (so each test may get its own store, or share one).
        ///
        /// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) and `anyhow`.
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

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($ctx:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            bail!("{}: expected {:?}, got {:?}", format!($($ctx)+), r, l);
        }
    }};
}

/// A prefix no other case, run or process uses.
fn unique_prefix(case: &str) -> String {
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

async fn put(store: &dyn Store, key: &str, value: &[u8]) -> Result<Revision> {
    put_leased(store, key, value, 0).await
}

async fn put_leased(
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

async fn delete(store: &dyn Store, key: &str) -> Result<Revision> {
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

async fn value_of(store: &dyn Store, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(store
        .get(key)
        .await
        .with_context(|| format!("get {key}"))?
        .map(|kv| kv.value))
}

/// Polls `cond` until it holds or the deadline passes.
async fn wait_until<F, Fut>(what: &str, mut cond: F) -> Result<()>
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
struct Watcher {
    stream: WatchStream,
    pending: VecDeque<Event>,
    last_revision: Revision,
    what: String,
}

impl Watcher {
    async fn new(store: &dyn Store, prefix: &str, from: Revision) -> Result<Watcher> {
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

    async fn take(&mut self, n: usize) -> Result<Vec<Event>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await?);
        }
        Ok(out)
    }
}

/// What a watch must report for a change: kind, key, value (empty for deletes) and revision.
fn summary(events: &[Event]) -> Vec<(EventKind, String, Vec<u8>, Revision)> {
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

fn put_ev(key: &str, value: &[u8], rev: Revision) -> (EventKind, String, Vec<u8>, Revision) {
    (EventKind::Put, key.to_string(), value.to_vec(), rev)
}

fn del_ev(key: &str, rev: Revision) -> (EventKind, String, Vec<u8>, Revision) {
    (EventKind::Delete, key.to_string(), Vec::new(), rev)
}

fn is_lease_not_found<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::LeaseNotFound(_)))
}

/// A lease id no backend has granted (ids are positive, and this one is random).
fn unknown_lease() -> LeaseId {
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    ((h >> 2) as i64).max(1)
}

/// Put, overwrite, get and delete one key: values, create and mod revisions, lease 0, empty
/// values, deleting a missing key, and a recreated key getting a new create revision.
pub async fn get_put_delete(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("get_put_delete");
    let s = &*store;
    let k = format!("{p}a");
    ensure_eq!(s.get(&k).await?, None, "get of a key never written");

    let r1 = put(s, &k, b"one").await?;
    ensure!(
        r1 > 0,
        "the revision after a put must be positive, got {r1}"
    );
    let kv = s.get(&k).await?.context("key missing right after put")?;
    ensure_eq!(
        kv,
        KeyValue {
            key: k.clone(),
            value: b"one".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            lease: 0
        },
        "key after first put"
    );

    let r2 = put(s, &k, b"two").await?;
    ensure!(r2 > r1, "overwrite revision {r2} must follow {r1}");
    let kv = s.get(&k).await?.context("key missing after overwrite")?;
    ensure_eq!(
        (kv.value, kv.create_revision, kv.mod_revision),
        (b"two".to_vec(), r1, r2),
        "key after overwrite"
    );

    let empty = format!("{p}empty");
    put(s, &empty, b"").await?;
    ensure_eq!(
        value_of(s, &empty).await?,
        Some(Vec::new()),
        "a key with an empty value exists"
    );

    let r3 = delete(s, &k).await?;
    ensure!(r3 > r2, "delete revision {r3} must follow {r2}");
    ensure_eq!(s.get(&k).await?, None, "get after delete");

    let r = store
        .txn(vec![], vec![Op::delete(&k)], vec![])
        .await
        .context("delete of a missing key")?;
    ensure!(
        r.succeeded && r.revision >= r3,
        "deleting a missing key is no error: {r:?}"
    );
    ensure_eq!(s.get(&k).await?, None, "get after deleting a missing key");

    let r4 = put(s, &k, b"three").await?;
    let kv = s.get(&k).await?.context("key missing after re-create")?;
    ensure_eq!(
        (kv.create_revision, kv.mod_revision),
        (r4, r4),
        "a re-created key starts a new life"
    );
    Ok(())
}

/// Every write transaction yields a strictly greater revision; all keys written by one
/// transaction share its revision; reads report a revision at least as new as the last write.
pub async fn revisions_monotonic(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("revisions_monotonic");
    let s = &*store;
    let mut last = 0;
    for i in 0..20 {
        let r = put(s, &format!("{p}k{i}"), b"x").await?;
        ensure!(r > last, "put {i}: revision {r} does not follow {last}");
        last = r;
    }
    let keys = [format!("{p}t/a"), format!("{p}t/b"), format!("{p}t/c")];
    let r = store
        .txn(
            vec![],
            vec![
                Op::put(&keys[0], "1"),
                Op::put(&keys[1], "2"),
                Op::put(&keys[2], "3"),
                Op::delete(format!("{p}k0")),
            ],
            vec![],
        )
        .await?;
    ensure!(
        r.succeeded && r.revision > last,
        "multi-op txn: {r:?} after {last}"
    );
    for k in &keys {
        let kv = s
            .get(k)
            .await?
            .with_context(|| format!("{k} missing after txn"))?;
        ensure_eq!(
            kv.mod_revision,
            r.revision,
            "mod revision of {k} written by one txn"
        );
    }
    let page = s.range(&p, None, 0, None).await?;
    ensure!(
        page.revision >= r.revision,
        "range revision {} older than the last write {}",
        page.revision,
        r.revision
    );
    ensure_eq!(page.kvs.len(), 22, "keys under the case prefix");
    Ok(())
}

/// Range over 10,000 keys: sorted, prefix-bounded, `limit`/`start`/`more` paging, and reads
/// pinned at a revision that see the data as it was, even after later changes.
pub async fn range_paging(store: Arc<dyn Store>) -> Result<()> {
    const N: usize = 10_000;
    let p = unique_prefix("range_paging");
    let s = &*store;
    let key = |i: usize| format!("{p}k{i:05}");
    let val = |i: usize| format!("v{i}").into_bytes();
    // Written in txns of 100 ops: etcd refuses more than 128 ops per txn by default.
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|&i| Op::put(key(i), val(i))).collect();
        store
            .txn(vec![], ops, vec![])
            .await
            .context("writing the 10,000 keys")?;
    }
    // A sibling that shares the prefix's text but not its trailing slash.
    let outside = format!("{}-outside", p.trim_end_matches('/'));
    put(s, &outside, b"x").await?;

    let full = s.range(&p, None, 0, None).await?;
    ensure!(!full.more, "an unlimited range reports more");
    ensure_eq!(full.kvs.len(), N, "number of keys in an unlimited range");
    for (i, kv) in full.kvs.iter().enumerate() {
        ensure!(
            kv.key == key(i) && kv.value == val(i),
            "key {i} of the range is {kv:?}"
        );
    }
    let at = full.revision;

    let one = s.range(&p, None, 1, None).await?;
    ensure!(
        one.more && one.kvs.len() == 1 && one.kvs[0].key == key(0),
        "range with limit 1: {one:?}"
    );
    let mid = s.range(&p, Some(&key(5000)), 10, Some(at)).await?;
    let mid_keys: Vec<String> = mid.kvs.iter().map(|kv| kv.key.clone()).collect();
    ensure_eq!(
        mid_keys,
        (5000..5010).map(key).collect::<Vec<_>>(),
        "range starting at k05000, limit 10"
    );
    ensure!(mid.more, "a page in the middle reports more");
    let tail = s.range(&p, Some(&key(N - 3)), 10, Some(at)).await?;
    ensure!(
        tail.kvs.len() == 3 && !tail.more,
        "the last page: {} keys, more={}",
        tail.kvs.len(),
        tail.more
    );

    // Change the data, then read the old revision page by page.
    store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}k000"))], vec![])
        .await?;
    put(s, &key(5000), b"changed").await?;
    put(s, &format!("{p}k99999"), b"new").await?;
    put(s, &key(7), b"back").await?;
    let mut pages = 0;
    let mut old = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = s.range(&p, start.as_deref(), 1000, Some(at)).await?;
        ensure_eq!(
            page.revision,
            at,
            "revision reported by a page read at revision {at}"
        );
        pages += 1;
        old.extend(page.kvs);
        if !page.more {
            break;
        }
        ensure!(pages < 20, "paging does not end");
        let last = old.last().context("a page with more=true but no keys")?;
        start = Some(format!("{}\0", last.key));
    }
    ensure_eq!(pages, 10, "pages of 1000 over 10,000 keys");
    ensure!(
        old == full.kvs,
        "paging at revision {at} after later changes differs from the first read"
    );

    let now = range_all(s, &p, 1000).await?;
    ensure_eq!(
        now.kvs.len(),
        N - 100 + 1 + 1,
        "keys now (100 deleted, k00007 and k99999 written)"
    );
    ensure!(
        now.kvs.windows(2).all(|w| w[0].key < w[1].key),
        "range_all is not sorted"
    );
    ensure_eq!(
        value_of(s, &key(5000)).await?,
        Some(b"changed".to_vec()),
        "k05000 now"
    );
    Ok(())
}

/// Every kind of compare, true and false, picks the success or failure branch; compares are
/// ANDed; a compare-and-swap on the mod revision lets exactly one of two racing writers win.
pub async fn compare_kinds(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("compare_kinds");
    let s = &*store;
    let k = format!("{p}k");
    let missing = format!("{p}missing");
    let leased = format!("{p}leased");
    let marker = format!("{p}marker");
    let r1 = put(s, &k, b"v1").await?;
    let lease = s.grant_lease(Duration::from_secs(30)).await?;
    put_leased(s, &leased, b"l", lease).await?;
    let other_lease = unknown_lease();

    let table: Vec<(Vec<Compare>, bool)> = vec![
        (vec![], true),
        (vec![Compare::Exists(k.clone())], true),
        (vec![Compare::Exists(missing.clone())], false),
        (vec![Compare::Missing(missing.clone())], true),
        (vec![Compare::Missing(k.clone())], false),
        (vec![Compare::Value(k.clone(), b"v1".to_vec())], true),
        (vec![Compare::Value(k.clone(), b"v2".to_vec())], false),
        (vec![Compare::Value(k.clone(), Vec::new())], false),
        (vec![Compare::Value(missing.clone(), Vec::new())], false),
        (vec![Compare::ModRevision(k.clone(), r1)], true),
        (vec![Compare::ModRevision(k.clone(), r1 - 1)], false),
        (vec![Compare::ModRevision(k.clone(), 0)], false),
        (vec![Compare::ModRevision(missing.clone(), 0)], true),
        (vec![Compare::ModRevision(missing.clone(), r1)], false),
        (vec![Compare::Lease(leased.clone(), lease)], true),
        (vec![Compare::Lease(leased.clone(), other_lease)], false),
        (vec![Compare::Lease(leased.clone(), 0)], false),
        (vec![Compare::Lease(k.clone(), 0)], true),
        (vec![Compare::Lease(k.clone(), lease)], false),
        (vec![Compare::Lease(missing.clone(), 0)], false),
        (vec![Compare::Lease(missing.clone(), lease)], false),
        (
            vec![
                Compare::Exists(k.clone()),
                Compare::Missing(missing.clone()),
            ],
            true,
        ),
        (
            vec![Compare::Exists(k.clone()), Compare::Exists(missing.clone())],
            false,
        ),
        (
            vec![
                Compare::Missing(missing.clone()),
                Compare::Value(k.clone(), b"nope".to_vec()),
            ],
            false,
        ),
    ];
    for (i, (compares, expected)) in table.into_iter().enumerate() {
        let what = format!("compare #{i} {compares:?}");
        let r = store
            .txn(
                compares,
                vec![Op::put(&marker, format!("s{i}"))],
                vec![Op::put(&marker, format!("f{i}"))],
            )
            .await
            .with_context(|| what.clone())?;
        ensure_eq!(r.succeeded, expected, "{what}: succeeded");
        let branch = if expected {
            format!("s{i}")
        } else {
            format!("f{i}")
        };
        ensure_eq!(
            value_of(s, &marker).await?,
            Some(branch.into_bytes()),
            "{what}: the branch that ran"
        );
    }
    ensure_eq!(
        value_of(s, &missing).await?,
        None,
        "compares must not create keys"
    );

    // Two writers read the same mod revision and race to swap the value: one wins.
    let seen = s.get(&k).await?.context("k vanished")?.mod_revision;
    let cas = |v: &'static str| {
        let store = store.clone();
        let k = k.clone();
        async move {
            store
                .txn(
                    vec![Compare::ModRevision(k.clone(), seen)],
                    vec![Op::put(&k, v)],
                    vec![],
                )
                .await
        }
    };
    let (a, b) = futures::future::join(cas("a"), cas("b")).await;
    let (a, b) = (a?, b?);
    ensure!(
        a.succeeded != b.succeeded,
        "exactly one compare-and-swap must win: {a:?} {b:?}"
    );
    let winner: &[u8] = if a.succeeded { b"a" } else { b"b" };
    ensure_eq!(
        value_of(s, &k).await?,
        Some(winner.to_vec()),
        "value after the race"
    );
    let stale = store
        .txn(
            vec![Compare::ModRevision(k.clone(), seen)],
            vec![Op::put(&k, "late")],
            vec![],
        )
        .await?;
    ensure!(
        !stale.succeeded,
        "a CAS against a stale mod revision must fail"
    );
    ensure_eq!(
        value_of(s, &k).await?,
        Some(winner.to_vec()),
        "a failed CAS changes nothing"
    );
    s.revoke_lease(lease).await?;
    Ok(())
}

/// A transaction whose compares fail runs its failure ops (puts and deletes, atomically) and
/// none of its success ops; with no failure ops it changes nothing.
pub async fn failure_ops(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("failure_ops");
    let s = &*store;
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    put(s, &a, b"a").await?;
    let r = store
        .txn(
            vec![Compare::Missing(a.clone())],
            vec![Op::put(&b, "success")],
            vec![Op::put(&c, "failure"), Op::delete(&a)],
        )
        .await?;
    ensure!(!r.succeeded, "the compare was false");
    ensure_eq!(value_of(s, &b).await?, None, "success op ran on failure");
    ensure_eq!(
        value_of(s, &c).await?,
        Some(b"failure".to_vec()),
        "failure put"
    );
    ensure_eq!(value_of(s, &a).await?, None, "failure delete");
    let kv = s.get(&c).await?.context("c missing")?;
    ensure_eq!(
        kv.mod_revision,
        r.revision,
        "the failure branch's writes carry the txn revision"
    );

    let r = store
        .txn(
            vec![Compare::Exists(a.clone())],
            vec![Op::put(&b, "x")],
            vec![],
        )
        .await?;
    ensure!(!r.succeeded, "the compare was false");
    ensure_eq!(
        range_all(s, &p, 0).await?.kvs.len(),
        1,
        "keys after a failed txn without failure ops"
    );
    Ok(())
}

/// `DeletePrefix` removes exactly the keys whose name starts with the prefix, all in one
/// revision; it composes with other ops in one txn and deleting nothing is no error.
/// A transaction branch that writes one key twice (two puts, a put and a delete, or a put under
/// a deleted prefix) is refused whole, as etcd refuses it, so that code tested on one backend
/// does not fail on the other; nothing of it is applied.
pub async fn txn_refuses_duplicate_keys(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("txn_refuses_duplicate_keys");
    let s = &*store;
    let k = format!("{p}k");
    let bad: Vec<Vec<Op>> = vec![
        vec![Op::put(&k, "1"), Op::put(&k, "2")],
        vec![Op::put(&k, "1"), Op::delete(&k)],
        vec![Op::delete_prefix(p.clone()), Op::put(&k, "1")],
    ];
    for ops in bad {
        let r = store.txn(vec![], ops.clone(), vec![]).await;
        ensure!(r.is_err(), "txn {ops:?} should be refused, got {r:?}");
        ensure_eq!(value_of(s, &k).await?, None, "nothing applied of {ops:?}");
    }
    let ok = store
        .txn(
            vec![],
            vec![Op::put(&k, "1"), Op::put(format!("{p}j"), "2")],
            vec![],
        )
        .await?;
    ensure!(ok.succeeded, "distinct keys in one txn");
    Ok(())
}

pub async fn delete_prefix(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("delete_prefix");
    let s = &*store;
    let doomed = [format!("{p}a/1"), format!("{p}a/2"), format!("{p}a/sub/3")];
    let kept = [format!("{p}a"), format!("{p}ab"), format!("{p}b/1")];
    let mut first = 0;
    for k in doomed.iter().chain(kept.iter()) {
        let r = put(s, k, b"x").await?;
        if first == 0 {
            first = r;
        }
    }
    let r = store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}a/"))], vec![])
        .await?;
    ensure!(r.succeeded, "delete_prefix txn");
    let left: Vec<String> = range_all(s, &p, 0)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    let mut want = kept.to_vec();
    want.sort();
    ensure_eq!(left, want, "keys left after deleting {p}a/");

    let mut w = Watcher::new(s, &p, first).await?;
    let events = w.take(doomed.len() + kept.len() + doomed.len()).await?;
    let deletes = &events[doomed.len() + kept.len()..];
    let want: Vec<_> = doomed.iter().map(|k| del_ev(k, r.revision)).collect();
    ensure_eq!(
        summary(deletes),
        want,
        "delete events of one delete_prefix (one revision, key order)"
    );

    // etcd refuses a branch that deletes a prefix and puts under it (see
    // `txn_refuses_duplicate_keys`), so the replacement takes two transactions.
    let r2 = store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}b/"))], vec![])
        .await?;
    ensure!(r2.succeeded, "delete_prefix of b/");
    put(s, &format!("{p}b/new"), b"n").await?;
    let b: Vec<String> = range_all(s, &format!("{p}b/"), 0)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    ensure_eq!(
        b,
        vec![format!("{p}b/new")],
        "keys under b/ after the replacement"
    );

    let r3 = store
        .txn(
            vec![],
            vec![Op::delete_prefix(format!("{p}nothing/"))],
            vec![],
        )
        .await?;
    ensure!(
        r3.succeeded && r3.revision >= r2.revision,
        "deleting an empty prefix: {r3:?}"
    );
    Ok(())
}

/// A lease that is not kept alive expires: exactly its keys disappear (not plain keys, not keys
/// since re-put without the lease), and the dead lease can be neither refreshed nor used.
pub async fn lease_expiry(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_expiry");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(1)).await?;
    ensure!(lease != 0, "lease id 0 means no lease");
    let (a, b, c, d) = (
        format!("{p}a"),
        format!("{p}b"),
        format!("{p}c"),
        format!("{p}d"),
    );
    put_leased(s, &a, b"a", lease).await?;
    put_leased(s, &b, b"b", lease).await?;
    put(s, &c, b"c").await?;
    put_leased(s, &d, b"d", lease).await?;
    put(s, &d, b"d2").await?; // detaches d from the lease
    ensure_eq!(
        s.get(&a).await?.map(|kv| kv.lease),
        Some(lease),
        "lease of a leased key"
    );
    ensure_eq!(
        s.get(&d).await?.map(|kv| kv.lease),
        Some(0),
        "lease of a key re-put without lease"
    );

    wait_until("the lease's keys expire", || async {
        Ok(s.get(&a).await?.is_none())
    })
    .await?;
    wait_until("the lease's second key expires", || async {
        Ok(s.get(&b).await?.is_none())
    })
    .await?;
    ensure_eq!(
        value_of(s, &c).await?,
        Some(b"c".to_vec()),
        "plain key after expiry"
    );
    ensure_eq!(
        value_of(s, &d).await?,
        Some(b"d2".to_vec()),
        "detached key after expiry"
    );
    ensure_eq!(
        s.lease_ttl(lease).await?,
        None,
        "lease_ttl of an expired lease"
    );
    let ka = s.keep_alive(lease).await;
    ensure!(
        is_lease_not_found(&ka),
        "keep_alive of an expired lease: {ka:?}"
    );
    let late = store
        .txn(
            vec![],
            vec![Op::put_leased(format!("{p}late"), "x", lease)],
            vec![],
        )
        .await;
    ensure!(
        is_lease_not_found(&late),
        "put with an expired lease: {late:?}"
    );
    ensure_eq!(
        s.get(&format!("{p}late")).await?,
        None,
        "a put refused for its lease wrote nothing"
    );
    Ok(())
}

/// A lease kept alive outlives its TTL several times over, with its keys; `lease_ttl` reports
/// a remaining time no longer than the TTL.
pub async fn lease_keep_alive(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_keep_alive");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(2)).await?;
    let ttl = s.keep_alive(lease).await?;
    ensure!(
        ttl >= Duration::from_secs(2),
        "keep_alive returned TTL {ttl:?} for a 2 s lease"
    );
    let k = format!("{p}k");
    put_leased(s, &k, b"alive", lease).await?;
    let until = Instant::now() + ttl * 2 + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::time::sleep(ttl / 5).await;
        let refreshed = s
            .keep_alive(lease)
            .await
            .context("keep_alive of a live lease")?;
        ensure_eq!(refreshed, ttl, "TTL returned by keep_alive");
        ensure_eq!(
            value_of(s, &k).await?,
            Some(b"alive".to_vec()),
            "key of a lease kept alive"
        );
    }
    let left = s
        .lease_ttl(lease)
        .await?
        .context("lease_ttl of a live lease is None")?;
    ensure!(left <= ttl, "remaining {left:?} exceeds the TTL {ttl:?}");
    s.revoke_lease(lease).await?;
    Ok(())
}

/// Revoking a lease deletes its keys at once, in one revision, and leaves other keys (plain, or
/// of another lease); revoking twice is no error; the lease is gone afterwards.
pub async fn lease_revoke(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_revoke");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(30)).await?;
    let other = s.grant_lease(Duration::from_secs(30)).await?;
    ensure!(lease != other, "two grants returned the same lease {lease}");
    let first = put_leased(s, &format!("{p}a"), b"a", lease).await?;
    put_leased(s, &format!("{p}b"), b"b", lease).await?;
    put(s, &format!("{p}c"), b"c").await?;
    put_leased(s, &format!("{p}e"), b"e", other).await?;

    s.revoke_lease(lease).await?;
    let left: Vec<String> = range_all(s, &p, 0)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    ensure_eq!(
        left,
        vec![format!("{p}c"), format!("{p}e")],
        "keys right after revoke"
    );
    s.revoke_lease(lease)
        .await
        .context("revoking a revoked lease")?;
    ensure_eq!(
        s.lease_ttl(lease).await?,
        None,
        "lease_ttl of a revoked lease"
    );
    let ka = s.keep_alive(lease).await;
    ensure!(
        is_lease_not_found(&ka),
        "keep_alive of a revoked lease: {ka:?}"
    );
    ensure!(
        s.lease_ttl(other).await?.is_some(),
        "revoking one lease ended another"
    );

    let mut w = Watcher::new(s, &p, first).await?;
    let events = w.take(6).await?;
    let deletes = &events[4..];
    ensure!(
        deletes.iter().all(|e| e.kind == EventKind::Delete)
            && deletes[0].kv.mod_revision == deletes[1].kv.mod_revision,
        "a revoke deletes its keys in one revision: {deletes:?}"
    );
    ensure_eq!(
        summary(deletes),
        vec![
            del_ev(&format!("{p}a"), deletes[0].kv.mod_revision),
            del_ev(&format!("{p}b"), deletes[0].kv.mod_revision)
        ],
        "delete events of the revoke"
    );
    s.revoke_lease(other).await?;
    ensure_eq!(
        s.get(&format!("{p}e")).await?,
        None,
        "the other lease's key after its revoke"
    );
    Ok(())
}

/// Grants round the TTL up to whole seconds, at least 1 s (a backend may raise it further, as
/// etcd does to its minimum), and every grant gets a distinct id.
pub async fn lease_grant_rounding(store: Arc<dyn Store>) -> Result<()> {
    let s = &*store;
    let mut ids = Vec::new();
    for (asked, at_least) in [(0, 1), (1, 1), (1500, 2), (3000, 3)] {
        let lease = s.grant_lease(Duration::from_millis(asked)).await?;
        let ttl = s.keep_alive(lease).await?;
        ensure!(
            ttl >= Duration::from_secs(at_least) && ttl.subsec_nanos() == 0,
            "a lease asked for {asked} ms got TTL {ttl:?} (want whole seconds, at least {at_least} s)"
        );
        ids.push(lease);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    ensure_eq!(unique.len(), ids.len(), "distinct lease ids");
    for id in ids {
        s.revoke_lease(id).await?;
    }
    Ok(())
}

/// A lease that never existed: no TTL, no keep-alive, no put with it, revoke is a no-op.
pub async fn lease_missing(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("lease_missing");
    let s = &*store;
    let lease = unknown_lease();
    ensure_eq!(
        s.lease_ttl(lease).await?,
        None,
        "lease_ttl of an unknown lease"
    );
    let ka = s.keep_alive(lease).await;
    ensure!(
        is_lease_not_found(&ka),
        "keep_alive of an unknown lease: {ka:?}"
    );
    let k = format!("{p}k");
    let r = store
        .txn(
            vec![],
            vec![
                Op::put(format!("{p}other"), "x"),
                Op::put_leased(&k, "x", lease),
            ],
            vec![],
        )
        .await;
    ensure!(is_lease_not_found(&r), "put with an unknown lease: {r:?}");
    ensure_eq!(
        range_all(s, &p, 0).await?.kvs.len(),
        0,
        "a txn refused for a lease writes nothing"
    );
    s.revoke_lease(lease)
        .await
        .context("revoking an unknown lease")?;
    Ok(())
}

/// A watch from an old revision first delivers every change made since (puts, overwrites,
/// deletes, multi-op txns, delete_prefix) in order with exact revisions, then live changes.
pub async fn watch_from_past(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_from_past");
    let s = &*store;
    let (a, b, c, d) = (
        format!("{p}w/a"),
        format!("{p}w/b"),
        format!("{p}w/c"),
        format!("{p}w/d"),
    );
    let r0 = put(s, &a, b"1").await?;
    let r1 = put(s, &b, b"1").await?;
    let r2 = put(s, &a, b"2").await?;
    let r3 = delete(s, &b).await?;
    let r4 = store
        .txn(vec![], vec![Op::put(&c, "c"), Op::put(&d, "d")], vec![])
        .await?
        .revision;
    let r5 = store
        .txn(vec![], vec![Op::delete_prefix(format!("{p}w/"))], vec![])
        .await?
        .revision;
    let want = vec![
        put_ev(&a, b"1", r0),
        put_ev(&b, b"1", r1),
        put_ev(&a, b"2", r2),
        del_ev(&b, r3),
        put_ev(&c, b"c", r4),
        put_ev(&d, b"d", r4),
        del_ev(&a, r5),
        del_ev(&c, r5),
        del_ev(&d, r5),
    ];
    let mut w = Watcher::new(s, &p, r0).await?;
    let got = w.take(want.len()).await?;
    ensure_eq!(summary(&got), want, "events replayed from revision {r0}");
    ensure_eq!(
        got[2].kv.create_revision,
        r0,
        "create revision in the overwrite's event"
    );

    let r6 = put(s, &a, b"live").await?;
    let live = w.take(1).await?;
    ensure_eq!(
        summary(&live),
        vec![put_ev(&a, b"live", r6)],
        "live event after the replay"
    );
    ensure_eq!(
        live[0].kv.create_revision,
        r6,
        "create revision of a re-created key's event"
    );
    Ok(())
}

/// A watch of a prefix delivers nothing outside it, not even keys that extend the prefix's text
/// without its separator.
pub async fn watch_prefix_isolation(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_prefix_isolation");
    let s = &*store;
    let r = put(s, &format!("{p}a/first"), b"x").await?;
    let mut w = Watcher::new(s, &format!("{p}a/"), r + 1).await?;
    put(s, &format!("{p}b/x"), b"x").await?;
    put(s, &format!("{p}a"), b"x").await?;
    put(s, &format!("{p}ab/x"), b"x").await?;
    let r1 = put(s, &format!("{p}a/x"), b"in").await?;
    put(s, &format!("{p}b/y"), b"x").await?;
    let r2 = delete(s, &format!("{p}a/first")).await?;
    let got = w.take(2).await?;
    ensure_eq!(
        summary(&got),
        vec![
            put_ev(&format!("{p}a/x"), b"in", r1),
            del_ev(&format!("{p}a/first"), r2)
        ],
        "events of the watched prefix only"
    );
    Ok(())
}

/// A watch from a revision not reached yet waits for it, and delivers nothing older.
pub async fn watch_from_future(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_from_future");
    let s = &*store;
    let r = put(s, &format!("{p}k0"), b"0").await?;
    let from = r + 3;
    let mut w = Watcher::new(s, &p, from).await?;
    let mut want = Vec::new();
    for i in 1..=5 {
        let k = format!("{p}k{i}");
        let rev = put(s, &k, b"v").await?;
        if rev >= from {
            want.push(put_ev(&k, b"v", rev));
        }
    }
    let got = w.take(want.len()).await?;
    ensure_eq!(summary(&got), want, "events at or after revision {from}");
    Ok(())
}

/// Keys removed by a lease expiring, or by its revoke, appear as delete events of one revision.
pub async fn watch_lease_deletes(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_lease_deletes");
    let s = &*store;
    let lease = s.grant_lease(Duration::from_secs(1)).await?;
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    let r0 = put_leased(s, &a, b"a", lease).await?;
    let r1 = put_leased(s, &b, b"b", lease).await?;
    let r2 = put(s, &c, b"c").await?;
    let mut w = Watcher::new(s, &p, r0).await?;
    let puts = w.take(3).await?;
    ensure_eq!(
        summary(&puts),
        vec![
            put_ev(&a, b"a", r0),
            put_ev(&b, b"b", r1),
            put_ev(&c, b"c", r2)
        ],
        "puts before the expiry"
    );
    ensure!(
        puts[0].kv.lease == lease && puts[2].kv.lease == 0,
        "lease in put events: {puts:?}"
    );
    let deletes = w.take(2).await?;
    let rev = deletes[0].kv.mod_revision;
    ensure_eq!(
        summary(&deletes),
        vec![del_ev(&a, rev), del_ev(&b, rev)],
        "delete events of the expiry"
    );
    ensure!(rev > r2, "expiry revision {rev} must follow {r2}");
    ensure_eq!(
        value_of(s, &c).await?,
        Some(b"c".to_vec()),
        "plain key after the expiry"
    );

    let lease2 = s.grant_lease(Duration::from_secs(30)).await?;
    put_leased(s, &a, b"again", lease2).await?;
    s.revoke_lease(lease2).await?;
    let got = w.take(2).await?;
    ensure!(
        got[0].kind == EventKind::Put && got[1].kind == EventKind::Delete && got[1].kv.key == a,
        "put then revoke-delete events: {got:?}"
    );
    Ok(())
}

/// A watch dropped part-way and resumed from the last revision seen + 1 misses nothing and
/// repeats nothing.
pub async fn watch_resume(store: Arc<dyn Store>) -> Result<()> {
    let p = unique_prefix("watch_resume");
    let s = &*store;
    let mut all = Vec::new();
    for i in 0..6 {
        let k = format!("{p}k{i}");
        all.push(put_ev(&k, b"v", put(s, &k, b"v").await?));
    }
    let mut w = Watcher::new(s, &p, all[0].3).await?;
    let seen = w.take(3).await?;
    let last_seen = w.last_revision;
    drop(w);
    ensure_eq!(summary(&seen), all[..3].to_vec(), "events before the drop");
    for i in 6..10 {
        let k = format!("{p}k{i}");
        all.push(put_ev(&k, b"v", put(s, &k, b"v").await?));
    }
    // The dropped stream may have received more than it handed out: resume after the last
    // batch it received, and expect exactly the events after that.
    let want: Vec<_> = all.iter().filter(|e| e.3 > last_seen).cloned().collect();
    let mut w = Watcher::new(s, &p, last_seen + 1).await?;
    let got = w.take(want.len()).await?;
    ensure_eq!(
        summary(&got),
        want,
        "events after resuming from {}",
        last_seen + 1
    );
    let r = put(s, &format!("{p}end"), b"e").await?;
    ensure_eq!(
        summary(&w.take(1).await?),
        vec![put_ev(&format!("{p}end"), b"e", r)],
        "next live event"
    );
    Ok(())
}

/// Writers on several tasks at once: a watch started before them sees every write exactly
/// once, in revision order.
pub async fn watch_concurrent_writers(store: Arc<dyn Store>) -> Result<()> {
    const TASKS: usize = 4;
    const EACH: usize = 50;
    let p = unique_prefix("watch_concurrent_writers");
    let r = put(&*store, &format!("{p}start"), b"s").await?;
    let mut w = Watcher::new(&*store, &p, r + 1).await?;
    let writers = (0..TASKS).map(|t| {
        let store = store.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..EACH {
                let k = format!("{p}t{t}/k{i}");
                revs.push((put(&*store, &k, b"v").await?, k));
            }
            anyhow::Ok(revs)
        })
    });
    let mut want = Vec::new();
    for h in futures::future::join_all(writers).await {
        want.extend(h.context("writer task panicked")??);
    }
    want.sort();
    let got = w.take(want.len()).await?;
    let got: Vec<(Revision, String)> = got
        .into_iter()
        .map(|e| (e.kv.mod_revision, e.kv.key))
        .collect();
    ensure_eq!(got, want, "events of concurrent writers, in revision order");
    Ok(())
}
