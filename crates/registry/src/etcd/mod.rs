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

use crate::store::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, RangePage, Result, Revision, Store,
    StoreError, TxnResult, WatchStream,
};
use async_trait::async_trait;
use etcd_client as ec;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
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
/// Longest pause between reconnection attempts of a broken watch.
const WATCH_RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How to reach etcd: fleet's `etcd_servers`, `etcd_request_timeout`, `etcd_cafile`,
/// `etcd_certfile`, `etcd_keyfile`, `etcd_username` and `etcd_password`. The key prefix
/// (`etcd_key_prefix`) is applied by [`crate::Registry`], not here.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://host:port`, or `https://` with `ca_file`).
    pub endpoints: Vec<String>,
    /// Upper bound on every request, retries included.
    pub request_timeout: Duration,
    /// CA that signs the servers' certificates; required for `https://` endpoints. Servers are
    /// always verified against it.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`; both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user and password (etcd's own authentication).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for EtcdOptions {
    /// fleet's defaults: `http://127.0.0.1:2379`, one second per request, no TLS, no auth.
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            request_timeout: Duration::from_secs(1),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    // Hand-written so that the password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The etcd v3 store. Cheap to clone; clones share one connection pool.
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
    keepers: std::sync::Mutex<HashMap<LeaseId, Arc<tokio::sync::Mutex<Keeper>>>>,
}

type Keeper = (ec::LeaseKeeper, ec::LeaseKeepAliveStream);

/// The service clients, with decode limits raised above gRPC's 4 MiB default: a watch catching
/// up on a backlog gets up to 1000 revisions per response, and a range may be asked for
/// without a limit, both easily more than 4 MiB (which would otherwise break the watch for good).
#[derive(Clone)]
struct Clients {
    kv: ec::KvClient,
    watch: ec::WatchClient,
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
        let timeout = opts.request_timeout;
        let client =
            match tokio::time::timeout(timeout, ec::Client::connect(&opts.endpoints, Some(co)))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(match classify(&e) {
                        Class::Transient | Class::NotSent => {
                            unavailable(&opts, "connect", Some(&e))
                        }
                        _ => refused(&opts, "connect", &e),
                    })
                }
                Err(_) => return Err(unavailable(&opts, "connect", None)),
            };
        let clients = Clients {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: client.lease_client(),
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

    fn forget_keeper(&self, lease: LeaseId) {
        if let Ok(mut k) = self.inner.keepers.lock() {
            k.remove(&lease);
        }
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

    /// The oldest revision etcd still keeps, learnt the only way v3 tells it: a watch from
    /// revision 1 is cancelled with the compaction revision. Only used to explain a compaction
    /// error (without one, the watch of the single key "\0" waits out the timeout).
    async fn compacted_revision(&self) -> Option<Revision> {
        let fut = async {
            let mut client = self.inner.clients.watch.clone();
            let opts = ec::WatchOptions::new().with_start_revision(1);
            let mut stream = client.watch("\0", Some(opts)).await.ok()?;
            loop {
                let resp = stream.message().await.ok()??;
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if !resp.created() || resp.canceled() {
                    // Events from revision 1 arrived: nothing was compacted.
                    return None;
                }
            }
        };
        tokio::time::timeout(self.inner.opts.request_timeout, fut)
            .await
            .ok()
            .flatten()
    }

    async fn compacted(&self, requested: Revision) -> StoreError {
        let compacted = self.compacted_revision().await.unwrap_or(0);
        StoreError::Compacted {
            requested,
            compacted,
        }
    }

    /// Opens a watch from `from` and waits for etcd to confirm it, retrying like a read.
    async fn open_watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> std::result::Result<ec::WatchStream, WatchOpenError> {
        let key = range_start(prefix, None);
        let end = prefix_end(prefix.as_bytes());
        let what = format!("watch of {prefix}");
        let res = self
            .call(&what, true, |mut c| {
                let (key, end) = (key.clone(), end.clone());
                async move {
                    let wo = ec::WatchOptions::new()
                        .with_range(end)
                        .with_start_revision(from)
                        .with_progress_notify();
                    let mut stream = c.watch.watch(key, Some(wo)).await?;
                    match stream.message().await? {
                        Some(resp) if resp.created() && !resp.canceled() => Ok(Ok(stream)),
                        Some(resp) if resp.compact_revision() > 0 => {
                            Ok(Err(StoreError::Compacted {
                                requested: from,
                                compacted: resp.compact_revision(),
                            }))
                        }
                        // For example "no leader": another attempt may reach a better member.
                        Some(resp) => Err(ec::Error::WatchError(format!(
                            "watch not created: {}",
                            resp.cancel_reason()
                        ))),
                        None => Err(ec::Error::WatchError(
                            "watch stream closed at creation".into(),
                        )),
                    }
                }
            })
            .await;
        match res {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(WatchOpenError::Fatal(e)),
            Err(e @ StoreError::Unavailable(_)) => Err(WatchOpenError::Transient(e)),
            Err(StoreError::Compacted { .. }) => {
                Err(WatchOpenError::Fatal(self.compacted(from).await))
            }
            Err(e) => Err(WatchOpenError::Fatal(e)),
        }
    }
}

enum WatchOpenError {
    /// Try again later.
    Transient(StoreError),
    /// End the watch with this error.
    Fatal(StoreError),
}

/// What an etcd client error means for the caller.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// The request certainly did not reach a member able to act on it: safe to retry anything.
    NotSent,
    /// etcd or the connection failed; a write may or may not have happened.
    Transient,
    Compacted,
    LeaseNotFound,
    /// Retrying will not help (bad request, permission, too many ops).
    Permanent,
}

fn classify(e: &ec::Error) -> Class {
    if is_certificate_error(e) {
        return Class::Permanent;
    }
    match e {
        ec::Error::TransportError(_) | ec::Error::IoError(_) => {
            if is_connect_error(e) {
                Class::NotSent
            } else {
                Class::Transient
            }
        }
        ec::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                return Class::Compacted;
            }
            if msg.contains("requested lease not found") {
                return Class::LeaseNotFound;
            }
            // With require-leader set, etcd refuses before doing anything.
            if msg.contains("no leader") {
                return Class::NotSent;
            }
            // gRPC status codes (tonic::Code is a fieldless enum with the wire numbers).
            const CANCELLED: i32 = 1;
            const UNKNOWN: i32 = 2;
            const DEADLINE_EXCEEDED: i32 = 4;
            const ABORTED: i32 = 10;
            const INTERNAL: i32 = 13;
            const UNAVAILABLE: i32 = 14;
            match status.code() as i32 {
                UNAVAILABLE if is_connect_error(e) => Class::NotSent,
                UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN | ABORTED | INTERNAL => {
                    Class::Transient
                }
                _ => Class::Permanent,
            }
        }
        ec::Error::LeaseKeepAliveError(msg) if msg.contains("lease not found") => {
            Class::LeaseNotFound
        }
        ec::Error::WatchError(_) | ec::Error::LeaseKeepAliveError(_) => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Whether the error is a failure to open a connection (refused, unreachable), which means the
/// request was never sent.
fn is_connect_error(e: &ec::Error) -> bool {
    let inner: &(dyn std::error::Error + 'static) = match e {
        ec::Error::TransportError(t) => t,
        ec::Error::GRpcStatus(s) => s,
        ec::Error::IoError(io) => io,
        _ => return false,
    };
    let mut cur = Some(inner);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NotConnected
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    // Not every layer keeps the io::Error as a source; hyper and tonic do name the failure.
    let text = format!("{e:?}").to_ascii_lowercase();
    text.contains("connection refused") || text.contains("tcp connect error")
}

/// A TLS handshake that failed on the server's certificate: a configuration error that retrying
/// will not fix.
fn is_certificate_error(e: &ec::Error) -> bool {
    format!("{e:?}").contains("invalid peer certificate")
}

/// An error etcd or the TLS layer gave that retrying will not fix, with the way out.
fn refused(opts: &EtcdOptions, what: &str, e: &ec::Error) -> StoreError {
    let endpoints = opts.endpoints.join(",");
    if is_certificate_error(e) {
        return StoreError::Other(format!(
            "etcd at {endpoints}: the server's TLS certificate was refused during {what} ({e}); \
             check that etcd_cafile is the CA that signed it and that it names the endpoint's host"
        ));
    }
    StoreError::Other(format!("etcd at {endpoints} refused {what}: {e}"))
}

fn unavailable(opts: &EtcdOptions, what: &str, last: Option<&ec::Error>) -> StoreError {
    StoreError::Unavailable(unavailable_message(opts, what, last))
}

fn unavailable_message(opts: &EtcdOptions, what: &str, last: Option<&ec::Error>) -> String {
    let cause = match last {
        Some(e) => format!(" (last error: {e})"),
        None => String::new(),
    };
    format!(
        "etcd at {} did not answer {what} within {:?}{cause}; check that etcd is running and \
         that etcd_servers names it",
        opts.endpoints.join(","),
        opts.request_timeout
    )
}

fn tls_options(opts: &EtcdOptions) -> Result<Option<ec::TlsOptions>> {
    let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    let any_tls = opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
    if !https && !any_tls {
        return Ok(None);
    }
    if opts.endpoints.iter().any(|e| !e.starts_with("https://")) {
        return Err(StoreError::Other(format!(
            "TLS options need every etcd endpoint to be https:// (got {})",
            opts.endpoints.join(",")
        )));
    }
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p)
            .map_err(|e| StoreError::Other(format!("reading {what} {}: {e}", p.display())))
    };
    let Some(ca) = &opts.ca_file else {
        return Err(StoreError::Other(
            "https etcd endpoints need etcd_cafile: the servers are always verified".into(),
        ));
    };
    let mut tls =
        ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(read(ca, "etcd_cafile")?));
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(ec::Identity::from_pem(
                read(cert, "etcd_certfile")?,
                read(key, "etcd_keyfile")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Other(
                "etcd_certfile and etcd_keyfile must be given together".into(),
            ))
        }
    }
    Ok(Some(tls))
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix);
/// `"\0"` (all keys to the end) when no such key exists.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Where a range under `prefix` starts: `start` if it lies inside the prefix's range, else the
/// prefix itself (etcd reads the empty key as "no key", so the empty prefix starts at `"\0"`).
fn range_start(prefix: &str, start: Option<&str>) -> Vec<u8> {
    let key = match start {
        Some(s) if s > prefix => s,
        _ => prefix,
    };
    if key.is_empty() {
        vec![0]
    } else {
        key.as_bytes().to_vec()
    }
}

fn convert_kv(kv: &ec::KeyValue) -> Result<KeyValue> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|_| StoreError::Other(format!("etcd key is not UTF-8: {:?}", kv.key())))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

fn convert_compares(compares: Vec<Compare>) -> Vec<ec::Compare> {
    use ec::CompareOp::{Equal, Greater};
    let mut out = Vec::with_capacity(compares.len());
    for c in compares {
        match c {
            Compare::Exists(k) => out.push(ec::Compare::create_revision(k, Greater, 0)),
            Compare::Missing(k) => out.push(ec::Compare::create_revision(k, Equal, 0)),
            Compare::Value(k, v) => out.push(ec::Compare::value(k, Equal, v)),
            Compare::ModRevision(k, r) => out.push(ec::Compare::mod_revision(k, Equal, r)),
            Compare::Lease(k, l) => {
                // etcd compares a missing key as if it had lease 0, but ours requires the key.
                if l == 0 {
                    out.push(ec::Compare::create_revision(k.clone(), Greater, 0));
                }
                out.push(ec::Compare::lease(k, Equal, l));
            }
        }
    }
    out
}

fn convert_ops(ops: Vec<Op>) -> Vec<ec::TxnOp> {
    ops.into_iter()
        .map(|op| match op {
            Op::Put { key, value, lease } => {
                let po = (lease != 0).then(|| ec::PutOptions::new().with_lease(lease));
                ec::TxnOp::put(key, value, po)
            }
            Op::Delete { key } => ec::TxnOp::delete(key, None),
            Op::DeletePrefix { prefix } => {
                ec::TxnOp::delete(prefix, Some(ec::DeleteOptions::new().with_prefix()))
            }
        })
        .collect()
}

fn first_lease(ops: &[Op]) -> LeaseId {
    ops.iter()
        .find_map(|op| match op {
            Op::Put { lease, .. } if *lease != 0 => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
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
        let kept = self
            .inner
            .keepers
            .lock()
            .ok()
            .and_then(|k| k.get(&lease).cloned());
        if let Some(keeper) = kept {
            // Reuse this lease's stream; on any trouble drop it and open a fresh one below.
            let refreshed = tokio::time::timeout(self.inner.opts.request_timeout, async {
                let mut guard = keeper.lock().await;
                let (k, stream) = &mut *guard;
                k.keep_alive().await?;
                stream.message().await
            })
            .await;
            match refreshed {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    return Ok(Duration::from_secs(resp.ttl().unsigned_abs()))
                }
                Ok(Ok(Some(_))) => {
                    self.forget_keeper(lease);
                    return Err(StoreError::LeaseNotFound(lease));
                }
                _ => self.forget_keeper(lease),
            }
        }
        // Open the lease's stream: etcd-client sends one refresh and consumes its answer, so a
        // second request returns the TTL to us.
        let res = self
            .call("lease keep-alive", true, |mut c| async move {
                let (mut keeper, mut stream) = c.lease.keep_alive(lease).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) => Ok((resp.ttl(), keeper, stream)),
                    None => Err(ec::Error::LeaseKeepAliveError(
                        "keep-alive stream closed".into(),
                    )),
                }
            })
            .await;
        match res {
            Ok((ttl, keeper, stream)) if ttl > 0 => {
                if let Ok(mut k) = self.inner.keepers.lock() {
                    k.insert(lease, Arc::new(tokio::sync::Mutex::new((keeper, stream))));
                }
                Ok(Duration::from_secs(ttl.unsigned_abs()))
            }
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Err(StoreError::LeaseNotFound(lease)),
            Err(StoreError::Other(msg)) if msg.contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(e),
        }
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
        let stream = match self.open_watch(prefix, from).await {
            Ok(s) => s,
            Err(WatchOpenError::Transient(e) | WatchOpenError::Fatal(e)) => return Err(e),
        };
        let state = WatchState {
            store: self.clone(),
            prefix: prefix.to_owned(),
            next: from,
            stream: Some(stream),
            pause: RETRY_PAUSE_MIN,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                let item = st.next_batch().await?;
                Some((item, st))
            },
        )))
    }
}

/// A watch that reconnects by itself.
struct WatchState {
    store: EtcdStore,
    prefix: String,
    /// The first revision not yet delivered.
    next: Revision,
    stream: Option<ec::WatchStream>,
    pause: Duration,
    done: bool,
}

impl WatchState {
    /// The next non-empty batch, an error that ends the watch, or `None` once ended.
    async fn next_batch(&mut self) -> Option<Result<Vec<Event>>> {
        if self.done {
            return None;
        }
        loop {
            let Some(stream) = &mut self.stream else {
                match self.store.open_watch(&self.prefix, self.next).await {
                    Ok(s) => {
                        tracing::info!(prefix = %self.prefix, from = self.next, "etcd watch resumed");
                        self.stream = Some(s);
                    }
                    Err(WatchOpenError::Fatal(e)) => return Some(self.end(e)),
                    Err(WatchOpenError::Transient(e)) => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "etcd watch reconnect failed");
                        tokio::time::sleep(self.pause).await;
                        self.pause = (self.pause * 2).min(WATCH_RETRY_PAUSE_MAX);
                    }
                }
                continue;
            };
            let resp = match stream.message().await {
                Ok(Some(resp)) => {
                    // Only a stream that delivers resets the back-off, so one that breaks right
                    // after opening, again and again, does not spin.
                    self.pause = RETRY_PAUSE_MIN;
                    resp
                }
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "etcd watch stream ended; reconnecting");
                    self.broken().await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch broke; reconnecting");
                    self.broken().await;
                    continue;
                }
            };
            if resp.compact_revision() > 0 {
                let e = StoreError::Compacted {
                    requested: self.next,
                    compacted: resp.compact_revision(),
                };
                return Some(self.end(e));
            }
            if resp.canceled() {
                let reason = resp.cancel_reason().to_owned();
                if reason.contains("permission denied") || reason.contains("invalid") {
                    return Some(self.end(StoreError::Other(format!(
                        "etcd cancelled the watch of {}: {reason}",
                        self.prefix
                    ))));
                }
                tracing::warn!(prefix = %self.prefix, %reason, "etcd cancelled the watch; reconnecting");
                self.broken().await;
                continue;
            }
            let mut batch = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let kv = match convert_kv(kv) {
                    Ok(kv) => kv,
                    Err(e) => return Some(self.end(e)),
                };
                // A resumed watch starts at `next`; never hand out a revision twice.
                if kv.mod_revision < self.next {
                    continue;
                }
                let kind = match ev.event_type() {
                    ec::EventType::Put => EventKind::Put,
                    ec::EventType::Delete => EventKind::Delete,
                };
                batch.push(Event { kind, kv });
            }
            if let Some(last) = batch.last() {
                self.next = last.kv.mod_revision + 1;
                return Some(Ok(batch));
            }
        }
    }

    /// Drops a broken stream and waits the current back-off before the next attempt.
    async fn broken(&mut self) {
        self.stream = None;
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(WATCH_RETRY_PAUSE_MAX);
    }

    fn end(&mut self, e: StoreError) -> Result<Vec<Event>> {
        self.done = true;
        self.stream = None;
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/fleet/"), b"/fleet0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn range_start_stays_inside_the_prefix() {
        assert_eq!(range_start("/p/", None), b"/p/".to_vec());
        assert_eq!(range_start("/p/", Some("/p/b")), b"/p/b".to_vec());
        assert_eq!(range_start("/p/", Some("/a")), b"/p/".to_vec());
        assert_eq!(range_start("", None), vec![0]);
    }

    #[test]
    fn lease_compare_on_lease_zero_also_requires_the_key() {
        let out = convert_compares(vec![
            Compare::Lease("k".into(), 0),
            Compare::Lease("k".into(), 7),
        ]);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn debug_hides_the_password() {
        let o = EtcdOptions {
            password: Some("hunter2".into()),
            ..EtcdOptions::default()
        };
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn https_without_ca_is_refused() {
        let o = EtcdOptions {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ..EtcdOptions::default()
        };
        let err = tls_options(&o).unwrap_err().to_string();
        assert!(err.contains("etcd_cafile"), "{err}");
        let o = EtcdOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EtcdOptions::default()
        };
        assert!(tls_options(&o)
            .unwrap_err()
            .to_string()
            .contains("https://"));
    }
}
