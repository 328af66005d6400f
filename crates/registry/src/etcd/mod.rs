//! The etcd v3 [`Store`], for clusters.
//!
//! ```no_run
//! # async fn demo() -> Result<(), registry::StoreError> {
//! use registry::etcd::{EtcdOptions, EtcdStore};
//! use registry::{Op, Store};
//! let store = EtcdStore::connect(EtcdOptions {
//!     endpoints: vec!["http://127.0.0.1:2379".into()],
//!     ..EtcdOptions::default()
//! })
//! .await?;
//! store.txn(vec![], vec![Op::put("/fleet/hello", "world")], vec![]).await?;
//! # Ok(()) }
//! ```
//!
//! Every request is bounded by [`EtcdOptions::request_timeout`]; a cluster that does not answer in
//! time yields [`StoreError::Unavailable`] naming the endpoints and the timeout. Reads and requests
//! that certainly never reached etcd (refused connection, no leader) are retried within that time,
//! so losing one member of three is invisible to callers. A write whose fate is unknown (the
//! connection broke after sending it) is reported as `Unavailable`, never retried behind the
//! caller's back: fleet's writes are compare-and-set transactions, so the caller re-reads.
//!
//! A watch survives member loss and a full etcd restart: when its stream breaks it reconnects
//! (to any endpoint) and resumes from the revision after the last one it delivered, so no event is
//! lost or repeated. Only compaction (or a permanent error such as a permission denial) ends it.

mod convert;
mod errors;
mod lease;
mod options;
mod watch;

pub use options::EtcdOptions;

use crate::store::{
    Compare, KeyValue, LeaseId, LeaseTimes, Op, RangePage, Result, Revision, Store, StoreError,
    TxnResult, WatchStream,
};
use async_trait::async_trait;
use convert::{
    convert_compares, convert_kv, convert_ops, first_lease, header_revision, prefix_end,
    range_start,
};
use errors::{classify, refused, unavailable, unavailable_message, Class};
use etcd_client as ec;
use options::tls_options;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// etcd's default `--max-txn-ops`: the most compares, and the most ops per branch, that one
/// transaction may carry. Callers split larger changes into batches of at most this many.
pub const MAX_TXN_OPS: usize = 128;

/// HTTP/2 ping interval on streams (watches). etcd refuses pings more often than every 5 s
/// (`--grpc-keepalive-min-time`), so stay above that.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Pause between attempts that failed without reaching etcd.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);

/// The etcd v3 store. Cheap to clone; clones share its two connections (one for leases, one
/// for everything else).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    opts: EtcdOptions,
    client: ec::Client,
    clients: Clients,
    /// One long-lived keep-alive stream per lease this process refreshes: opening a stream per
    /// refresh cost etcd a stream set-up and two extra messages each time, which at 1,000
    /// machines was hundreds of stream openings a second.
    keepers: std::sync::Mutex<HashMap<LeaseId, lease::Keeper>>,
}

/// The service clients, with decode limits raised above gRPC's 4 MiB default: a watch catching
/// up on a backlog gets up to 1000 revisions per response, and a range may be asked for
/// without a limit, both easily more than 4 MiB (which would otherwise break the watch for good).
#[derive(Clone)]
struct Clients {
    kv: ec::KvClient,
    watch: ec::WatchClient,
    /// On a connection of its own (see [`EtcdStore::connect`]).
    lease: ec::LeaseClient,
}

/// Largest response we accept (a bound against a runaway reply, far above real ones).
const MAX_RESPONSE_BYTES: usize = 512 << 20;

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("opts", &self.inner.opts)
            .finish()
    }
}

impl EtcdStore {
    /// Checks the options and prepares connections. Without a username nothing is sent yet (the
    /// first request reports an unreachable cluster); with one, etcd is asked for a token now.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Other(
                "no etcd endpoints given: set etcd_servers, e.g. http://127.0.0.1:2379".into(),
            ));
        }
        if opts.request_timeout.is_zero() {
            return Err(StoreError::Other(
                "etcd_request_timeout must be greater than zero".into(),
            ));
        }
        let mut co = ec::ConnectOptions::new()
            .with_connect_timeout(opts.request_timeout)
            // Detects a dead peer under an open watch; etcd drops idle pingers, so only ping
            // while a stream is open.
            .with_keep_alive(
                KEEPALIVE_INTERVAL,
                opts.request_timeout.max(Duration::from_secs(1)),
            )
            .with_keep_alive_while_idle(false)
            .with_tcp_keepalive(KEEPALIVE_INTERVAL)
            // A member cut off from its cluster fails requests and cancels watches instead of
            // serving stale silence; we then go to another member.
            .with_require_leader(true);
        if let Some(tls) = tls_options(&opts)? {
            co = co.with_tls(tls);
        }
        match (&opts.username, &opts.password) {
            (Some(user), password) => {
                co = co
                    .with_user(user.clone(), password.clone().unwrap_or_default())
                    .with_auto_token_refresh(true);
            }
            (None, Some(_)) => {
                return Err(StoreError::Other(
                    "etcd_password is set without etcd_username".into(),
                ))
            }
            (None, None) => {}
        }
        let client = connect_client(&opts, co.clone()).await?;
        // Lease grants, keep-alives and revokes go over a connection of their own: on the
        // shared one they queued behind bulk writes and group commits (HTTP/2 flow control,
        // one TCP stream), so a machine busy publishing thousands of states could miss its
        // own keep-alive and expire.
        let lease_client = connect_client(&opts, co).await?;
        let clients = Clients {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: lease_client.lease_client(),
        };
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                opts,
                client,
                clients,
                keepers: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &EtcdOptions {
        &self.inner.opts
    }

    /// The underlying etcd client, for what [`Store`] does not cover (tests compact with it).
    pub fn client(&self) -> ec::Client {
        self.inner.client.clone()
    }

    /// Runs one request against etcd within `request_timeout`, retrying attempts that failed
    /// before etcd could act on them (and, for `idempotent` requests, any transient failure).
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let opts = &self.inner.opts;
        let deadline = Instant::now() + opts.request_timeout;
        let mut pause = RETRY_PAUSE_MIN;
        let mut last: Option<ec::Error> = None;
        // Failed attempts since the last pause.
        let mut round = 0usize;
        loop {
            let res = match tokio::time::timeout_at(deadline, attempt(self.inner.clients.clone()))
                .await
            {
                Ok(r) => r,
                Err(_) if idempotent => return Err(unavailable(opts, what, last.as_ref())),
                Err(_) => {
                    // The last attempt was in flight when time ran out: it may have happened.
                    let msg = unavailable_message(opts, what, last.as_ref());
                    return Err(StoreError::Unavailable(format!(
                        "{msg}; the {what} may or may not have been applied (re-read before retrying)"
                    )));
                }
            };
            let e = match res {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match classify(&e) {
                Class::NotSent => {}
                Class::Transient if idempotent => {}
                Class::Transient => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {} failed during {what}; it may or may not have been applied \
                         (re-read before retrying): {e}",
                        opts.endpoints.join(",")
                    )))
                }
                // Callers that can be compacted (range) fill in the revisions.
                Class::Compacted => {
                    return Err(StoreError::Compacted {
                        requested: 0,
                        compacted: 0,
                    });
                }
                Class::LeaseNotFound => return Err(StoreError::LeaseNotFound(0)),
                Class::Permanent => return Err(refused(opts, what, &e)),
            }
            last = Some(e);
            round += 1;
            // The balancer picks an endpoint at random: give each a chance before pausing, so
            // a dead endpoint among live ones (fleet's default lists a second port) costs a
            // refused connection, not a pause.
            if round < opts.endpoints.len() {
                continue;
            }
            round = 0;
            if Instant::now() + pause >= deadline {
                return Err(unavailable(opts, what, last.as_ref()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2)
                .min(opts.request_timeout / 4)
                .max(RETRY_PAUSE_MIN);
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .call("get", true, |mut c| {
                let key = key.to_owned();
                async move { c.kv.get(key, None).await }
            })
            .await?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<RangePage> {
        let key = range_start(prefix, start);
        let end = prefix_end(prefix.as_bytes());
        let res = self
            .call("range", true, |mut c| {
                let mut go = ec::GetOptions::new().with_range(end.clone());
                if limit > 0 {
                    go = go.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
                }
                if let Some(r) = revision {
                    go = go.with_revision(r);
                }
                let key = key.clone();
                async move { c.kv.get(key, Some(go)).await }
            })
            .await;
        let resp = match res {
            Ok(r) => r,
            Err(StoreError::Compacted { .. }) => {
                return Err(self.compacted(revision.unwrap_or(0)).await);
            }
            Err(e) => return Err(e),
        };
        let kvs = resp
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>>>()?;
        Ok(RangePage {
            kvs,
            more: resp.more(),
            revision: revision.unwrap_or_else(|| header_revision(resp.header())),
        })
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult> {
        let sizes = (compares.len(), success.len(), failure.len());
        let lease = first_lease(&success).max(first_lease(&failure));
        let txn = ec::Txn::new()
            .when(convert_compares(compares))
            .and_then(convert_ops(success))
            .or_else(convert_ops(failure));
        let res = self
            .call("txn", false, |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await;
        match res {
            Ok(resp) => Ok(TxnResult {
                succeeded: resp.succeeded(),
                revision: header_revision(resp.header()),
            }),
            Err(StoreError::LeaseNotFound(_)) => Err(StoreError::LeaseNotFound(lease)),
            Err(StoreError::Other(msg)) if msg.contains("duplicate key given in txn") => {
                Err(StoreError::Other(format!(
                    "etcd refuses a transaction branch that writes one key twice (two puts of it, \
                     or a put and a delete or delete-prefix covering it): merge those ops ({msg})"
                )))
            }
            Err(StoreError::Other(msg)) if msg.contains("too many operations") => {
                Err(StoreError::Other(format!(
                    "transaction too large for etcd ({} compares, {} success ops, {} failure ops; \
                     etcd allows --max-txn-ops, by default {MAX_TXN_OPS}, of each): split it into batches",
                    sizes.0, sizes.1, sizes.2
                )))
            }
            Err(e) => Err(e),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = i64::try_from(ttl.as_nanos().div_ceil(1_000_000_000))
            .unwrap_or(i64::MAX)
            .max(1);
        let resp = self
            .call("lease grant", false, |mut c| async move {
                c.lease.grant(secs, None).await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!(
                "etcd lease grant: {}",
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.refresh_lease(lease).await
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>> {
        let res = self
            .call("lease ttl", true, |mut c| async move {
                c.lease.time_to_live(lease, None).await
            })
            .await;
        match res {
            Ok(resp) if resp.ttl() >= 0 => Ok(Some(Duration::from_secs(resp.ttl().unsigned_abs()))),
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn lease_times(&self, lease: LeaseId) -> Result<Option<LeaseTimes>> {
        let res = self
            .call("lease ttl", true, |mut c| async move {
                c.lease.time_to_live(lease, None).await
            })
            .await;
        match res {
            Ok(resp) if resp.ttl() >= 0 => Ok(Some(LeaseTimes {
                remaining: Duration::from_secs(resp.ttl().unsigned_abs()),
                granted: (resp.granted_ttl() > 0)
                    .then(|| Duration::from_secs(resp.granted_ttl().unsigned_abs())),
            })),
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.forget_keeper(lease);
        // Revoking is idempotent (a second revoke finds no lease, which is fine), so retry.
        let res = self
            .call("lease revoke", true, |mut c| async move {
                c.lease.revoke(lease).await
            })
            .await;
        match res {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.watch_stream(prefix, from).await
    }
}

/// One etcd client (its own gRPC channel, so its own HTTP/2 connection) with `co`.
async fn connect_client(opts: &EtcdOptions, co: ec::ConnectOptions) -> Result<ec::Client> {
    match tokio::time::timeout(
        opts.request_timeout,
        ec::Client::connect(&opts.endpoints, Some(co)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(match classify(&e) {
            Class::Transient | Class::NotSent => unavailable(opts, "connect", Some(&e)),
            _ => refused(opts, "connect", &e),
        }),
        Err(_) => Err(unavailable(opts, "connect", None)),
    }
}
