//! The storage interface fleet needs, and nothing more.
//!
//! Semantics follow etcd v3 so that both backends behave the same: one global revision that
//! every write transaction increments once; keys carry their create and mod revisions; a key
//! put with a lease disappears when the lease expires or is revoked; a watch delivers every
//! change under a prefix in revision order, starting at a given revision.

use async_trait::async_trait;
use std::time::Duration;

/// The store's global revision: every write transaction increments it once.
pub type Revision = i64;
/// A lease: keys put with it disappear when it expires or is revoked.
pub type LeaseId = i64;

/// One key with its value and revisions, as read or watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 0 when the key has no lease.
    pub lease: LeaseId,
}

/// A live lease's remaining time and the TTL it was granted (each keep-alive restores the
/// remaining time to the granted one, so their difference is the time since the last renewal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    pub remaining: Duration,
    pub granted: Option<Duration>,
}

/// One page of a prefix range, all read at `revision`.
#[derive(Clone, Debug, Default)]
pub struct RangePage {
    pub kvs: Vec<KeyValue>,
    /// More keys follow the last one returned.
    pub more: bool,
    /// The store revision this page was read at; pass it back to read the next page at the
    /// same revision, or to start a watch right after the read.
    pub revision: Revision,
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists (any value).
    Exists(String),
    /// The key does not exist.
    Missing(String),
    /// The key exists with exactly this value.
    Value(String, Vec<u8>),
    /// The key's mod revision is this (0 = the key does not exist).
    ModRevision(String, Revision),
    /// The key exists and is attached to this lease (how the engine fences with its leader key).
    Lease(String, LeaseId),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    /// Puts `value` at `key`, with no lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
    /// Puts `value` at `key`, attached to `lease`.
    pub fn put_leased(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }
    /// Deletes `key` (nothing if it is absent).
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
    /// Deletes every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<String>) -> Op {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and so the success ops ran; otherwise the failure ops ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
}

/// Whether a watched key was put or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change delivered by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For deletes, `value` is empty and `mod_revision` is the revision of the delete.
    pub kv: KeyValue,
}

/// Why a store operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached; the message names the endpoints and the timeout.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A watch or read asked for a revision older than the store keeps; re-read and watch again.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("{0}")]
    Other(String),
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch batches: each item is the events of one or more revisions, in order.
/// An `Err` ends the watch (for example `Compacted`); the caller re-reads and watches again.
pub type WatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<Event>>> + Send + 'static>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of one key, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys under `prefix`, sorted, starting at `start` (inclusive; `None` = from the prefix),
    /// at most `limit` (0 = no limit), read at `revision` (`None` = latest).
    async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<RangePage>;

    /// Runs `success` if every compare holds, else `failure`, atomically.
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult>;

    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Refreshes a lease; returns its TTL, or `LeaseNotFound` if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Remaining time of a lease, or `None` if it does not exist (expired or revoked).
    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>>;

    /// Remaining and granted time of a lease, or `None` if it does not exist. Stores that
    /// cannot tell the granted TTL answer `granted: None` (the default, from [`Store::lease_ttl`]).
    async fn lease_times(&self, lease: LeaseId) -> Result<Option<LeaseTimes>> {
        Ok(self.lease_ttl(lease).await?.map(|remaining| LeaseTimes {
            remaining,
            granted: None,
        }))
    }

    /// Revokes a lease, deleting every key attached to it. Revoking a missing lease is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Watches every change under `prefix` with revision >= `from` (`from` = read revision + 1).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;
}

/// Reads every key under `prefix` at one revision, following pages of `page` keys.
pub async fn range_all(store: &dyn Store, prefix: &str, page: usize) -> Result<RangePage> {
    let first = store.range(prefix, None, page, None).await?;
    let revision = first.revision;
    let mut out = first.kvs;
    let mut more = first.more;
    while more {
        let Some(last) = out.last() else { break };
        let start = format!("{}\0", last.key);
        let next = store
            .range(prefix, Some(&start), page, Some(revision))
            .await?;
        more = next.more;
        out.extend(next.kvs);
    }
    Ok(RangePage {
        kvs: out,
        more: false,
        revision,
    })
}
