//! The embedded single-machine [`Store`]: etcd v3 semantics on one redb file, for a fleet of
//! one machine that should not need an etcd.
//!
//! ```no_run
//! # async fn demo() -> Result<(), registry::StoreError> {
//! use registry::{embedded::EmbeddedStore, Op, Store};
//! let store = std::sync::Arc::new(EmbeddedStore::open(std::path::Path::new("/var/lib/fleet"))?);
//! store.txn(vec![], vec![Op::put("/fleet/k", "v")], vec![]).await?;
//! # Ok(()) }
//! ```
//!
//! How it works, and the choices made:
//! - **Durability.** Every key, lease and the revision live in `DIR/registry.redb`; a write
//!   returns once its redb transaction is committed with fsync. The file is locked: a second
//!   open of the same directory (by any process) fails with an error naming it.
//! - **One writer thread.** Writes (txns, lease grants and revokes, lease expiry) go to a
//!   dedicated OS thread, so no disk I/O ever runs on a tokio worker. Requests that arrive while
//!   a commit is in progress are committed together in the next one (group commit): each keeps
//!   its own revision and etcd's semantics, but they share one fsync, which is what lets many
//!   concurrent writers go faster than the disk's fsync rate.
//! - **Reads from memory.** Every key is also held in memory (fleet's registry is small: 10,000
//!   units are a few MB), so `get`, `range`, `keep_alive`, `lease_ttl` and watches never touch
//!   the disk. Changes become visible only once durable.
//! - **History in memory.** The last 10,000 revisions (at most 100,000 changed keys; see
//!   [`HistoryLimits`]) are kept in memory to read at a past revision and to start a watch in the
//!   past. Older revisions, and every revision before the store was opened, are compacted:
//!   reading or watching them yields [`StoreError::Compacted`], as etcd does after compaction.
//! - **Watches** read that history at their own pace: a slow watcher never blocks writers and
//!   costs no buffer; if it falls so far behind that the revisions it has not read yet are
//!   dropped from history, its stream yields `Err(Compacted)` and ends, and the caller re-reads
//!   and watches again. Batches hold whole revisions (up to about 1,000 events per batch).
//!   A watch from a revision not reached yet waits for it; `from <= 0` means "from the next
//!   revision"; dropping the stream is all the cleanup there is. When the store is dropped, open
//!   streams yield `Err(Unavailable)` and end.
//! - **Leases** are stored with their TTL; deadlines are kept in memory. Expiry is run by the
//!   writer thread, woken at the earliest deadline: an expired lease's keys are deleted in one
//!   revision, producing delete events. On open every lease gets its full TTL again (as etcd does
//!   on a leader change), so a restarted fleetd can resume its lease. Lease ids are random
//!   positive numbers, so an id from a wiped store is not silently reused.

mod batch;
mod disk;
mod state;

pub use disk::FILE_NAME;
pub use state::HistoryLimits;

use crate::store::{
    Compare, KeyValue, LeaseId, LeaseTimes, Op, RangePage, Result, Revision, Store, StoreError,
    TxnResult, WatchStream,
};
use async_trait::async_trait;
use batch::Batch;
use disk::Disk;
use state::{lease_ttl_secs, State};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// At most this many requests share one commit.
const MAX_BATCH: usize = 1024;
/// A watch batch stops after the revision that brings it to this many events.
const MAX_WATCH_BATCH: usize = 1000;

/// The embedded store. Cheap to share behind an `Arc`; all methods may be called from many tasks.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

struct Shared {
    state: RwLock<State>,
    /// The latest visible revision, announced after every applied batch. Its sender belongs to
    /// the writer thread, so watches learn when the store is gone.
    revisions: watch::Receiver<Revision>,
}

enum Request {
    Txn {
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
        reply: oneshot::Sender<Result<TxnResult>>,
    },
    Grant {
        ttl_secs: i64,
        reply: oneshot::Sender<Result<LeaseId>>,
    },
    Revoke {
        id: LeaseId,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A request's outcome, held until the batch is durable (or failed).
enum Reply {
    Txn(oneshot::Sender<Result<TxnResult>>, Result<TxnResult>),
    Grant(oneshot::Sender<Result<LeaseId>>, Result<LeaseId>),
    Revoke(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    /// Sends the outcome; if the batch could not be written, every request that would have
    /// written something gets that error instead. (A caller that gave up is not an error.)
    fn send(self, write_error: Option<&str>) {
        fn outcome<T>(r: Result<T>, write_error: Option<&str>) -> Result<T> {
            match (r, write_error) {
                (Ok(_), Some(e)) => Err(StoreError::Other(e.to_string())),
                (r, _) => r,
            }
        }
        match self {
            Reply::Txn(tx, r) => drop(tx.send(outcome(r, write_error))),
            Reply::Grant(tx, r) => drop(tx.send(outcome(r, write_error))),
            Reply::Revoke(tx, r) => drop(tx.send(outcome(r, write_error))),
        }
    }
}

// The state is changed only by whole-batch applies that cannot panic half-way; a poisoned lock
// (a panic elsewhere while holding it) leaves it consistent.
fn read(state: &RwLock<State>) -> RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(state: &RwLock<State>) -> RwLockWriteGuard<'_, State> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

impl EmbeddedStore {
    /// Opens the store in `dir` (created if missing), keeping [`HistoryLimits::default`].
    /// Blocking (reads the whole file): call it at startup or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        EmbeddedStore::open_with(dir, HistoryLimits::default())
    }

    /// Opens the store in `dir`, keeping `history` in memory for past reads and watches.
    pub fn open_with(dir: &Path, history: HistoryLimits) -> Result<EmbeddedStore> {
        let (disk, loaded) = Disk::open(dir)?;
        let path = dir.join(FILE_NAME);
        let state = State::new(
            loaded.kv,
            loaded.leases,
            loaded.revision,
            history,
            Instant::now(),
        );
        let (revision_tx, revision_rx) = watch::channel(loaded.revision);
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            revisions: revision_rx,
        });
        let (requests, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || writer_loop(&writer_shared, &disk, &rx, &revision_tx))
            .map_err(|e| {
                StoreError::Other(format!(
                    "embedded registry {}: cannot start its writer thread: {e}",
                    path.display()
                ))
            })?;
        Ok(EmbeddedStore {
            shared,
            requests: Some(requests),
            writer: Some(writer),
            path,
        })
    }

    /// The redb file backing the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        read(&self.shared.state).revision
    }

    fn closed(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "embedded registry {} is closed",
            self.path.display()
        ))
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let sender = self.requests.as_ref().ok_or_else(|| self.closed())?;
        sender.send(make(tx)).map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }
}

impl Drop for EmbeddedStore {
    /// Closes the request channel and waits for the writer to finish its last commit, so the
    /// file is unlocked when the drop returns (a reopen right after succeeds).
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(path = %self.path.display(), "embedded registry writer thread panicked");
            }
        }
    }
}

/// The single writer: waits for requests or the next lease deadline, computes a batch against
/// the state, makes it durable, then makes it visible and answers.
fn writer_loop(
    shared: &Shared,
    disk: &Disk,
    requests: &mpsc::Receiver<Request>,
    revisions: &watch::Sender<Revision>,
) {
    let mut ids = LeaseIds::new();
    loop {
        let next_deadline = read(&shared.state).next_deadline();
        let first = match next_deadline {
            None => match requests.recv() {
                Ok(r) => Some(r),
                Err(mpsc::RecvError) => return,
            },
            Some(at) => match requests.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let mut batch_requests: Vec<Request> = first.into_iter().collect();
        while batch_requests.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch_requests.push(r),
                Err(_) => break,
            }
        }

        let (batch, replies) = {
            let mut st = write(&shared.state);
            let mut batch = Batch::new(&st);
            for id in st.expired_leases(Instant::now()) {
                batch.revoke(&mut st, id);
            }
            let replies: Vec<Reply> = batch_requests
                .into_iter()
                .map(|req| match req {
                    Request::Txn {
                        compares,
                        success,
                        failure,
                        reply,
                    } => Reply::Txn(reply, batch.txn(&st, &compares, success, failure)),
                    Request::Grant { ttl_secs, reply } => {
                        let id = ids.next(|id| batch.lease_id_taken(&st, id));
                        batch.grant(id, ttl_secs);
                        Reply::Grant(reply, Ok(id))
                    }
                    Request::Revoke { id, reply } => {
                        batch.revoke(&mut st, id);
                        Reply::Revoke(reply, Ok(()))
                    }
                })
                .collect();
            (batch, replies)
        };

        let written = if batch.is_empty() {
            Ok(())
        } else {
            disk.write(&batch)
        };
        match written {
            Ok(()) => {
                let revision = batch.revision();
                write(&shared.state).apply(batch, Instant::now());
                revisions.send_replace(revision);
                for reply in replies {
                    reply.send(None);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "embedded registry: a write failed; its changes were not applied");
                for reply in replies {
                    reply.send(Some(&message));
                }
                // Leases left dying are retried on the next round; don't spin on a failing disk.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Random positive lease ids (xorshift64*, seeded per process): hand-written because no
/// random-number crate is a dependency and ids need only be unlikely to repeat, not secret.
struct LeaseIds(u64);

impl LeaseIds {
    fn new() -> LeaseIds {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        LeaseIds(h.finish() | 1)
    }

    fn next(&mut self, taken: impl Fn(LeaseId) -> bool) -> LeaseId {
        loop {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let id = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 1) as i64;
            if id != 0 && !taken(id) {
                return id;
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(read(&self.shared.state).kv.get(key).cloned())
    }

    async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<RangePage> {
        read(&self.shared.state).range(prefix, start, limit, revision)
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult> {
        self.request(|reply| Request::Txn {
            compares,
            success,
            failure,
            reply,
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_secs = lease_ttl_secs(ttl)?;
        self.request(|reply| Request::Grant { ttl_secs, reply })
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        // In memory, not through the writer thread: the writer holds the state lock only to
        // compute and to apply a batch, never across its disk write, so a refresh never waits
        // for an fsync or a queue of writes, and expiry reads the deadline set here.
        write(&self.shared.state).keep_alive(lease, Instant::now())
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>> {
        Ok(read(&self.shared.state).lease_ttl(lease, Instant::now()))
    }

    async fn lease_times(&self, lease: LeaseId) -> Result<Option<LeaseTimes>> {
        Ok(read(&self.shared.state).lease_times(lease, Instant::now()))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.request(|reply| Request::Revoke { id: lease, reply })
            .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let from = if from <= 0 {
            read(&self.shared.state).revision + 1
        } else {
            from
        };
        let cursor = WatchCursor {
            shared: self.shared.clone(),
            revisions: self.shared.revisions.clone(),
            prefix: prefix.to_string(),
            next: from,
            path: self.path.clone(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            cursor,
            WatchCursor::next_batch,
        )))
    }
}

/// A watch's position: it reads the shared history itself, so writers never wait for it.
struct WatchCursor {
    shared: Arc<Shared>,
    revisions: watch::Receiver<Revision>,
    prefix: String,
    next: Revision,
    path: PathBuf,
    done: bool,
}

impl WatchCursor {
    async fn next_batch(mut self) -> Option<(Result<Vec<crate::store::Event>>, WatchCursor)> {
        if self.done {
            return None;
        }
        loop {
            // Mark the announced revision seen before reading, so no announcement is missed.
            self.revisions.borrow_and_update();
            let polled =
                read(&self.shared.state).watch_events(&self.prefix, self.next, MAX_WATCH_BATCH);
            match polled {
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
                Ok((events, next)) => {
                    self.next = next;
                    if !events.is_empty() {
                        return Some((Ok(events), self));
                    }
                }
            }
            if self.revisions.changed().await.is_err() {
                self.done = true;
                let closed = StoreError::Unavailable(format!(
                    "embedded registry {} was closed; the watch ended",
                    self.path.display()
                ));
                return Some((Err(closed), self));
            }
        }
    }
}
