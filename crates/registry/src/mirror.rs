//! Keeping a copy of one prefix current: read it once, then follow a watch from the revision
//! read; after a compaction or a broken watch, read it again. This is how the engine and the
//! agents stay current without periodic full reads.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn registry::Store>) {
//! let mut updates = registry::mirror::follow(store, "/_coreos.com/fleet/job/".to_string());
//! while let Some(update) = updates.recv().await {
//!     match update {
//!         registry::mirror::Update::Reset { kvs, .. } => println!("{} keys", kvs.len()),
//!         registry::mirror::Update::Events { events, .. } => println!("{} changes", events.len()),
//!     }
//! }
//! # }
//! ```

use crate::store::{range_all, Event, EventKind, KeyValue, Revision, Store, StoreError};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What changed under the followed prefix.
#[derive(Debug, Clone)]
pub enum Update {
    /// The whole prefix as read at `revision`: replace any copy held.
    Reset {
        kvs: Vec<KeyValue>,
        revision: Revision,
    },
    /// Changes after the last update, in revision order.
    Events {
        events: Vec<Event>,
        revision: Revision,
    },
}

const RANGE_PAGE: usize = 1000;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Follows `prefix` until the receiver is dropped. Registry outages are retried with backoff
/// (logged); the receiver sees a `Reset` after each re-read.
pub fn follow(store: Arc<dyn Store>, prefix: String) -> mpsc::Receiver<Update> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = RETRY_MIN;
        'outer: loop {
            let page = match range_all(store.as_ref(), &prefix, RANGE_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(prefix = %prefix, error = %e, "reading registry failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let mut last = page.revision;
            if tx
                .send(Update::Reset {
                    kvs: page.kvs,
                    revision: last,
                })
                .await
                .is_err()
            {
                return;
            }
            loop {
                let mut watch = match store.watch(&prefix, last + 1).await {
                    Ok(w) => w,
                    Err(StoreError::Compacted { .. }) => continue 'outer,
                    Err(e) => {
                        tracing::warn!(prefix = %prefix, error = %e, "watching registry failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                };
                backoff = RETRY_MIN;
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        item = watch.next() => match item {
                            Some(Ok(events)) => {
                                if events.is_empty() { continue; }
                                last = events.iter().map(|e| e.kv.mod_revision).max().unwrap_or(last);
                                if tx.send(Update::Events { events, revision: last }).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(StoreError::Compacted { .. })) => continue 'outer,
                            Some(Err(e)) => {
                                tracing::warn!(prefix = %prefix, error = %e, "registry watch broke; resuming");
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
        }
    });
    rx
}

/// Applies an update of a followed prefix to a map keyed by what follows `base` in each key.
/// `decode` gets that rest and the record; a record it cannot decode is dropped from the map.
pub fn apply<T>(
    map: &mut BTreeMap<String, T>,
    base: &str,
    update: Update,
    mut decode: impl FnMut(&str, &KeyValue) -> Option<T>,
) {
    let name = |k: &str| k.strip_prefix(base).map(str::to_string);
    match update {
        Update::Reset { kvs, .. } => {
            map.clear();
            for kv in &kvs {
                if let Some(n) = name(&kv.key) {
                    if let Some(v) = decode(&n, kv) {
                        map.insert(n, v);
                    }
                }
            }
        }
        Update::Events { events, .. } => {
            for ev in events {
                let Some(n) = name(&ev.kv.key) else { continue };
                let value = match ev.kind {
                    EventKind::Put => decode(&n, &ev.kv),
                    EventKind::Delete => None,
                };
                match value {
                    Some(v) => map.insert(n, v),
                    None => map.remove(&n),
                };
            }
        }
    }
}

/// Decodes a JSON record, logging and skipping one that does not decode: a reader of a
/// followed prefix must not stop on one bad record.
pub fn json<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable registry record");
            None
        }
    }
}

/// Decodes a text record (a machine id, a reason, a metadata value).
pub fn text(kv: &KeyValue) -> Option<String> {
    String::from_utf8(kv.value.clone()).ok()
}
