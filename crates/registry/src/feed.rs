//! One watch of the whole keyspace, shared by every follower of it that goes through the same
//! [`Registry`](crate::Registry) and its clones. The API server follows the whole keyspace
//! three times over (the event history, the instances of global units, the listings), and
//! every watch of it makes etcd send every change once more: one shared watch sends it once.
//!
//! A follower subscribes, waits until the watch has started, then reads what it follows at a
//! revision of its own (at or after the watch's start, so no change falls between) and takes
//! from the feed only the changes after that revision. When the feed has to start again (a
//! compaction outran it) or the follower fell behind it, the follower reads again.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry) {
//! // The event history and the instances of global units share one watch.
//! let _events = registry.follow_events();
//! let _instances = registry.follow_global_instances();
//! # }
//! ```

use crate::store::{Event, Revision, Store, StoreError};
use futures::StreamExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Batches of changes the feed holds for a follower that is behind; one further behind reads
/// again. Slots are allocated up front, each the size of an `Arc`.
const CAPACITY: usize = 4096;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the feed delivers.
#[derive(Clone, Debug)]
pub(crate) enum Feed {
    /// Changes, in revision order.
    Events(Arc<Vec<Event>>),
    /// The feed may have missed changes (its watch started again after a compaction, or this
    /// follower fell behind): read again, at or after [`Subscription::started`].
    Reread,
}

/// The shared watch, if one runs.
#[derive(Default)]
pub(crate) struct Hub {
    running: Mutex<Option<Running>>,
}

struct Running {
    /// Weak: the watch ends when its last follower is gone.
    tx: broadcast::WeakSender<Feed>,
    start: watch::Receiver<Option<Revision>>,
}

/// One follower's hold on the feed.
pub(crate) struct Subscription {
    rx: broadcast::Receiver<Feed>,
    start: watch::Receiver<Option<Revision>>,
}

impl Hub {
    /// Subscribes to the watch of `prefix`, starting it if none runs.
    pub(crate) fn subscribe(&self, store: &Arc<dyn Store>, prefix: &str) -> Subscription {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = running.as_ref() {
            if let Some(tx) = r.tx.upgrade() {
                return Subscription {
                    rx: tx.subscribe(),
                    start: r.start.clone(),
                };
            }
        }
        let (tx, rx) = broadcast::channel(CAPACITY);
        let (start_tx, start) = watch::channel(None);
        *running = Some(Running {
            tx: tx.downgrade(),
            start: start.clone(),
        });
        tokio::spawn(run(store.clone(), prefix.to_string(), tx, start_tx));
        Subscription { rx, start }
    }
}

impl Subscription {
    /// The revision the watch started after, once it has: a read at or after it misses no
    /// change the feed does not bring. `None` if the watch ended (subscribe again).
    pub(crate) async fn started(&mut self) -> Option<Revision> {
        let start = self.start.wait_for(Option::is_some).await.ok()?;
        *start
    }

    /// The next delivery; `None` if the watch ended (subscribe again).
    pub(crate) async fn recv(&mut self) -> Option<Feed> {
        match self.rx.recv().await {
            Ok(feed) => Some(feed),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "a follower fell behind the registry watch; reading again"
                );
                Some(Feed::Reread)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Only the events of `events` after `revision`.
pub(crate) fn after(events: &[Event], revision: Revision) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.kv.mod_revision > revision)
        .cloned()
        .collect()
}

/// Watches `prefix` until no follower is left. A broken watch resumes where it stopped; one
/// that cannot (compacted) starts again from the current revision and tells followers to read
/// again.
async fn run(
    store: Arc<dyn Store>,
    prefix: String,
    tx: broadcast::Sender<Feed>,
    start: watch::Sender<Option<Revision>>,
) {
    let mut backoff = crate::Backoff::new(RETRY_MIN, RETRY_MAX);
    // The revision to watch from; `None`: start again from the current one.
    let mut from: Option<Revision> = None;
    loop {
        let resume = match from {
            Some(r) => r,
            None => {
                let read = tokio::select! {
                    _ = tx.closed() => return,
                    read = store.range(&prefix, None, 1, None) => read,
                };
                match read {
                    Ok(page) => {
                        // The start first, then the word to read again: a follower that reads
                        // after the word reads at or after the new start.
                        let again = start.send_replace(Some(page.revision)).is_some();
                        if again {
                            let _ = tx.send(Feed::Reread);
                        }
                        page.revision + 1
                    }
                    Err(e) => {
                        tracing::warn!(prefix = %prefix, error = %e, "reading the registry's revision failed; retrying");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(backoff.wait()) => {}
                        }
                        continue;
                    }
                }
            }
        };
        from = Some(resume);
        let opened = tokio::select! {
            _ = tx.closed() => return,
            opened = store.watch(&prefix, resume) => opened,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(StoreError::Compacted { .. }) => {
                from = None;
                continue;
            }
            Err(e) => {
                tracing::warn!(prefix = %prefix, error = %e, "watching the registry failed; retrying");
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff.wait()) => {}
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                item = stream.next() => match item {
                    Some(Ok(events)) => {
                        let Some(last) = events.iter().map(|e| e.kv.mod_revision).max() else {
                            continue;
                        };
                        from = Some(last + 1);
                        // No follower left: `closed` ends the task on the next turn.
                        let _ = tx.send(Feed::Events(Arc::new(events)));
                    }
                    Some(Err(StoreError::Compacted { .. })) => {
                        from = None;
                        break;
                    }
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

#[cfg(test)]
mod tests {
    use crate::embedded::EmbeddedStore;
    use crate::follow::Raw;
    use crate::store::{EventKind, Op};
    use crate::Registry;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts the watches opened on the store.
    #[derive(Default)]
    struct Watches(AtomicUsize);

    impl crate::StoreObserver for Watches {
        fn request(&self, kind: &'static str, _ok: bool, _took: Duration) {
            if kind == "watch" {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    async fn put(registry: &Registry, key: &str) {
        registry
            .store
            .txn(vec![], vec![Op::put(format!("/fleet/{key}"), "x")], vec![])
            .await
            .expect("write");
    }

    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Raw>) -> Raw {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a delivery in time")
            .expect("following goes on")
    }

    fn reset_keys(raw: Raw) -> Vec<String> {
        match raw {
            Raw::Reset(kvs) => kvs.into_iter().map(|kv| kv.key).collect(),
            Raw::Events(_) => panic!("expected a reset"),
        }
    }

    fn put_keys(raw: Raw) -> Vec<String> {
        match raw {
            Raw::Events(events) => events
                .into_iter()
                .map(|e| {
                    assert_eq!(e.kind, EventKind::Put);
                    e.kv.key
                })
                .collect(),
            Raw::Reset(_) => panic!("expected changes"),
        }
    }

    #[tokio::test]
    async fn followers_of_the_whole_keyspace_share_one_watch_and_miss_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        let watches = Arc::new(Watches::default());
        let registry = Registry::new(Arc::new(store), "/fleet/").with_observer(watches.clone());
        put(&registry, "job/a").await;

        let mut first = registry.follow_raw("/fleet/".to_string());
        assert_eq!(reset_keys(next(&mut first).await), ["/fleet/job/a"]);
        put(&registry, "job/b").await;
        assert_eq!(put_keys(next(&mut first).await), ["/fleet/job/b"]);

        // A follower that comes later reads what is there and then only what comes after.
        let mut second = registry.clone().follow_raw("/fleet/".to_string());
        assert_eq!(
            reset_keys(next(&mut second).await),
            ["/fleet/job/a", "/fleet/job/b"]
        );
        put(&registry, "job/c").await;
        assert_eq!(put_keys(next(&mut first).await), ["/fleet/job/c"]);
        assert_eq!(put_keys(next(&mut second).await), ["/fleet/job/c"]);
        assert_eq!(watches.0.load(Ordering::SeqCst), 1, "one watch for both");

        // A narrower prefix keeps a watch of its own.
        let mut jobs = registry.follow_raw("/fleet/job/".to_string());
        assert_eq!(reset_keys(next(&mut jobs).await).len(), 3);
        assert_eq!(watches.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_shared_watch_ends_with_its_last_follower_and_starts_again_for_the_next() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        let watches = Arc::new(Watches::default());
        let registry = Registry::new(Arc::new(store), "/fleet/").with_observer(watches.clone());
        let mut first = registry.follow_raw("/fleet/".to_string());
        assert!(reset_keys(next(&mut first).await).is_empty());
        drop(first);
        // The watch's task sees its last follower gone and ends; a new follower starts a
        // new watch and still gets every change.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let gone = registry
                .feed
                .running
                .lock()
                .expect("not poisoned")
                .as_ref()
                .is_some_and(|r| r.tx.upgrade().is_none());
            if gone {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch did not end"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut again = registry.follow_raw("/fleet/".to_string());
        assert!(reset_keys(next(&mut again).await).is_empty());
        put(&registry, "job/a").await;
        assert_eq!(put_keys(next(&mut again).await), ["/fleet/job/a"]);
        assert_eq!(watches.0.load(Ordering::SeqCst), 2);
    }
}
