//! One watch of the whole keyspace, shared by every follower of it that goes through the same
//! [`Registry`](crate::Registry) and its clones. The API server follows the whole keyspace
//! three times over (the event history, the instances of global units, the listings), and
//! every watch of it makes etcd send every change once more: one shared watch sends it once.
//!
//! A follower subscribes, waits until the watch has started, then reads what it follows at a
//! revision of its own (at or after the watch's start, so no change falls between) and takes
//! from the feed only the changes after that revision. When the feed has to start again (a
//! compaction outran it) or the follower fell far behind it, the follower reads again. A slow
//! follower does not slow the others: what it has not taken yet waits in its own queue.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Deliveries a follower may have waiting before it is told to read again instead: a bound
/// on what one stuck follower holds. Nothing is held for followers that keep up, and nothing
/// is allocated up front.
const BEHIND_LIMIT: usize = if cfg!(test) { 8 } else { 65_536 };

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the feed delivers.
#[derive(Clone, Debug)]
pub(crate) enum Feed {
    /// Changes, in revision order.
    Events(Arc<Vec<Event>>),
    /// The feed may have missed changes for this follower (its watch started again after a
    /// compaction, or the follower fell [`BEHIND_LIMIT`] deliveries behind): read again, at or
    /// after the time this came.
    Reread,
}

/// The shared watch, if one runs.
#[derive(Default)]
pub(crate) struct Hub {
    running: Mutex<Option<Arc<Shared>>>,
}

/// What the watch's task and its followers share.
struct Shared {
    followers: Mutex<Followers>,
    start: watch::Receiver<Option<Revision>>,
    /// A follower left: the task looks whether any is left.
    left: Notify,
}

#[derive(Default)]
struct Followers {
    list: Vec<Follower>,
    /// The task ended (no follower was left): a new follower starts a new watch.
    ended: bool,
}

struct Follower {
    tx: mpsc::UnboundedSender<Feed>,
    lag: Arc<Lag>,
}

/// How far behind one follower is.
#[derive(Default)]
struct Lag {
    waiting: AtomicUsize,
    /// Told to read again: changes are not queued for it until it takes that word.
    rereading: AtomicBool,
}

/// One follower's hold on the feed.
pub(crate) struct Subscription {
    rx: mpsc::UnboundedReceiver<Feed>,
    lag: Arc<Lag>,
    start: watch::Receiver<Option<Revision>>,
    shared: Arc<Shared>,
}

impl Hub {
    /// Subscribes to the watch of `prefix`, starting it if none runs.
    pub(crate) fn subscribe(&self, store: &Arc<dyn Store>, prefix: &str) -> Subscription {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = running.as_ref() {
            if let Some(sub) = join(shared) {
                return sub;
            }
        }
        let (start_tx, start) = watch::channel(None);
        let shared = Arc::new(Shared {
            followers: Mutex::default(),
            start,
            left: Notify::new(),
        });
        *running = Some(shared.clone());
        let sub = join(&shared).unwrap_or_else(|| unreachable!("a new watch has not ended"));
        tokio::spawn(run(store.clone(), prefix.to_string(), shared, start_tx));
        sub
    }
}

/// A new follower of a watch, unless its task has ended.
fn join(shared: &Arc<Shared>) -> Option<Subscription> {
    let mut followers = shared
        .followers
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if followers.ended {
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let lag = Arc::new(Lag::default());
    followers.list.push(Follower {
        tx,
        lag: lag.clone(),
    });
    Some(Subscription {
        rx,
        lag,
        start: shared.start.clone(),
        shared: shared.clone(),
    })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rx.close();
        self.shared.left.notify_one();
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
        let feed = self.rx.recv().await?;
        self.lag.waiting.fetch_sub(1, Ordering::SeqCst);
        if matches!(feed, Feed::Reread) {
            // Changes are queued again from now on; the read this calls for comes after.
            self.lag.rereading.store(false, Ordering::SeqCst);
        }
        Some(feed)
    }
}

impl Shared {
    /// Hands `feed` to every follower; forgets followers that are gone. False if none is left
    /// (the watch has ended then).
    fn deliver(&self, feed: &Feed) -> bool {
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        followers.list.retain(|f| {
            let lag = &f.lag;
            let send = match feed {
                Feed::Reread => Feed::Reread,
                Feed::Events(_) if lag.rereading.load(Ordering::SeqCst) => {
                    return !f.tx.is_closed();
                }
                Feed::Events(_) if lag.waiting.load(Ordering::SeqCst) >= BEHIND_LIMIT => {
                    tracing::warn!(
                        waiting = BEHIND_LIMIT,
                        "a follower fell behind the registry watch; it reads again"
                    );
                    lag.rereading.store(true, Ordering::SeqCst);
                    Feed::Reread
                }
                Feed::Events(events) => Feed::Events(events.clone()),
            };
            lag.waiting.fetch_add(1, Ordering::SeqCst);
            f.tx.send(send).is_ok()
        });
        self.end_if_alone(&mut followers)
    }

    /// Forgets followers that are gone; false (and ended) if none is left.
    fn any_left(&self) -> bool {
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        followers.list.retain(|f| !f.tx.is_closed());
        self.end_if_alone(&mut followers)
    }

    fn end_if_alone(&self, followers: &mut Followers) -> bool {
        if followers.list.is_empty() {
            followers.ended = true;
        }
        !followers.ended
    }

    /// Waits before trying again after a failure; false if no follower is left meanwhile.
    async fn wait_out(&self, backoff: &mut crate::Backoff) -> bool {
        tokio::select! {
            _ = self.deserted() => false,
            _ = tokio::time::sleep(backoff.wait()) => true,
        }
    }

    /// Resolves once no follower is left.
    async fn deserted(&self) {
        loop {
            let left = self.left.notified();
            if !self.any_left() {
                return;
            }
            left.await;
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
    shared: Arc<Shared>,
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
                    _ = shared.deserted() => return,
                    read = store.range(&prefix, None, 1, None) => read,
                };
                match read {
                    Ok(page) => {
                        // The start first, then the word to read again: a follower that reads
                        // after the word reads at or after the new start.
                        let again = start.send_replace(Some(page.revision)).is_some();
                        if again && !shared.deliver(&Feed::Reread) {
                            return;
                        }
                        page.revision + 1
                    }
                    Err(e) => {
                        tracing::warn!(prefix = %prefix, error = %e, "reading the registry's revision failed; retrying");
                        if !shared.wait_out(&mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        from = Some(resume);
        let opened = tokio::select! {
            _ = shared.deserted() => return,
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
                if !shared.wait_out(&mut backoff).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            tokio::select! {
                _ = shared.deserted() => return,
                item = stream.next() => match item {
                    Some(Ok(events)) => {
                        let Some(last) = events.iter().map(|e| e.kv.mod_revision).max() else {
                            continue;
                        };
                        from = Some(last + 1);
                        if !shared.deliver(&Feed::Events(Arc::new(events))) {
                            return;
                        }
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

    /// A registry on an embedded store in a temp dir (kept while the test runs), counting the
    /// watches opened.
    fn registry() -> (tempfile::TempDir, Registry, Arc<Watches>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        let watches = Arc::new(Watches::default());
        let registry = Registry::new(Arc::new(store), "/fleet/").with_observer(watches.clone());
        (dir, registry, watches)
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
        let (_dir, registry, watches) = registry();
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
        let (_dir, registry, watches) = registry();
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
                .is_some_and(|r| {
                    r.followers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .ended
                });
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

    #[tokio::test]
    async fn a_follower_far_behind_reads_again_and_misses_nothing_while_the_others_go_on() {
        let (_dir, registry, _) = registry();
        let mut slow = registry.follow_raw("/fleet/".to_string());
        let mut fast = registry.follow_raw("/fleet/".to_string());
        assert!(reset_keys(next(&mut slow).await).is_empty());
        assert!(reset_keys(next(&mut fast).await).is_empty());
        const KEYS: usize = 200;
        // The fast follower takes each change as it comes: it gets every one, in order, and
        // is never told to read again.
        let mut seen = Vec::new();
        for i in 0..KEYS {
            put(&registry, &format!("job/u{i:03}")).await;
            while seen.len() <= i {
                seen.extend(put_keys(next(&mut fast).await));
            }
        }
        let expected: Vec<String> = (0..KEYS).map(|i| format!("/fleet/job/u{i:03}")).collect();
        assert_eq!(seen, expected);
        // The slow one, which took nothing meanwhile, was told to read again: its copy ends
        // complete all the same.
        let mut copy = std::collections::BTreeSet::new();
        let mut rereads = 0;
        while copy.len() < KEYS {
            match next(&mut slow).await {
                Raw::Reset(kvs) => {
                    rereads += 1;
                    copy = kvs.into_iter().map(|kv| kv.key).collect();
                }
                Raw::Events(events) => copy.extend(events.into_iter().map(|e| e.kv.key)),
            }
        }
        assert!(rereads >= 1, "the slow follower was not told to read again");
        assert_eq!(copy.into_iter().collect::<Vec<_>>(), expected);
    }
}
