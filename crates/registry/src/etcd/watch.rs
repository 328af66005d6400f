//! Watches that survive member loss and etcd restarts: a broken stream is reopened from the
//! revision after the last one delivered.

use super::convert::{convert_kv, prefix_end, range_start};
use super::{EtcdStore, RETRY_PAUSE_MIN};
use crate::store::{Event, EventKind, Result, Revision, StoreError, WatchStream};
use etcd_client as ec;
use std::time::Duration;

/// Longest pause between reconnection attempts of a broken watch.
const WATCH_RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

impl EtcdStore {
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

    pub(super) async fn compacted(&self, requested: Revision) -> StoreError {
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

    /// [`crate::Store::watch`]: a stream that reconnects by itself.
    pub(super) async fn watch_stream(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
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

enum WatchOpenError {
    /// Try again later.
    Transient(StoreError),
    /// End the watch with this error.
    Fatal(StoreError),
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
