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

use crate::store::{range_all, Event, KeyValue, Revision, Store, StoreError};
use futures::StreamExt;
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
