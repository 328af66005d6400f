//! Typed followers: a copy of one part of the registry kept current without periodic full
//! reads. A follower reads its part once, then follows a watch from the revision read; after a
//! compaction or a broken watch it reads it again. Each delivery comes decoded: names parsed from
//! the keys, records decoded by their codec.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry) {
//! use std::collections::BTreeMap;
//! let mut jobs = registry.follow_jobs();
//! let mut copy = BTreeMap::new();
//! while let Some(update) = jobs.recv().await {
//!     update.apply_to(&mut copy);
//!     println!("{} jobs", copy.len());
//! }
//! # }
//! ```

use crate::codec::{decode_or_skip, Record};
use crate::feed::Feed;
use crate::keys::KeyShape;
use crate::model::{GlobalJob, Job, MachineState, ScheduleEntry, UnitState};
use crate::registry::Registry;
use crate::store::{range_all, Event, EventKind, KeyValue, Store, StoreError};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use unit::UnitHash;

/// One delivery of a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update<K, T> {
    /// Everything followed, as read at one revision: replaces any copy held. The first
    /// delivery is always one (a copy is complete once it has taken one in), and another comes
    /// after each re-read (a compaction, or an outage of the registry).
    Reset(Vec<(K, T)>),
    /// What changed after the previous delivery, in revision order.
    Changes(Vec<Change<K, T>>),
}

/// One change of a followed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<K, T> {
    /// `K` now holds this record.
    Put(K, T),
    /// `K` is gone (or holds a record that does not decode, logged).
    Delete(K),
}

impl<K, T> Update<K, T> {
    /// The same update with each record turned into another by `f`, in delivery order.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Update<K, U> {
        match self {
            Update::Reset(items) => {
                Update::Reset(items.into_iter().map(|(k, v)| (k, f(v))).collect())
            }
            Update::Changes(changes) => Update::Changes(
                changes
                    .into_iter()
                    .map(|c| match c {
                        Change::Put(k, v) => Change::Put(k, f(v)),
                        Change::Delete(k) => Change::Delete(k),
                    })
                    .collect(),
            ),
        }
    }

    /// Applies the update to a copy keyed as the follower names its records.
    pub fn apply_to(self, copy: &mut BTreeMap<K, T>)
    where
        K: Ord,
    {
        match self {
            Update::Reset(items) => {
                copy.clear();
                copy.extend(items);
            }
            Update::Changes(changes) => {
                for change in changes {
                    match change {
                        Change::Put(k, v) => {
                            copy.insert(k, v);
                        }
                        Change::Delete(k) => {
                            copy.remove(&k);
                        }
                    }
                }
            }
        }
    }
}

impl<K, T> Change<K, T> {
    /// Whether the change takes its record away.
    pub fn is_delete(&self) -> bool {
        matches!(self, Change::Delete(_))
    }
}

/// A stream of decoded [`Update`]s of one part of the registry, named by `K` and holding
/// records `T`. Following stops when the follower is dropped.
pub struct Follower<K, T> {
    raw: mpsc::Receiver<Raw>,
    base: String,
    decode: fn(&str, Raw) -> Update<K, T>,
}

impl<K, T> Follower<K, T> {
    /// The next update; `None` only if following ended (it does not end while the follower
    /// lives: registry outages are retried with backoff, logged). Cancel-safe.
    pub async fn recv(&mut self) -> Option<Update<K, T>> {
        let raw = self.raw.recv().await?;
        Some((self.decode)(&self.base, raw))
    }

    /// An update already delivered, without waiting.
    pub fn try_recv(&mut self) -> Option<Update<K, T>> {
        let raw = self.raw.try_recv().ok()?;
        Some((self.decode)(&self.base, raw))
    }
}

/// Follows the records under `base`, named by `K`, decoded as `T`: by a watch, or by reads
/// every so often if the registry polls.
pub(crate) fn follower<K: KeyShape, T: Record>(
    registry: &Registry,
    base: String,
) -> Follower<K, T> {
    Follower {
        raw: registry.follow_raw(base.clone()),
        base,
        decode: typed::<K, T>,
    }
}

/// Decodes one raw delivery: keys that do not have the shape `K` are not followed records and
/// are left out; a put of a record that does not decode reads as a delete (the copy drops it).
fn typed<K: KeyShape, T: Record>(base: &str, raw: Raw) -> Update<K, T> {
    match raw {
        Raw::Reset(kvs) => Update::Reset(
            kvs.iter()
                .filter_map(|kv| Some((K::under(base, &kv.key)?, decode_or_skip(kv)?)))
                .collect(),
        ),
        Raw::Events(events) => Update::Changes(
            events
                .iter()
                .filter_map(|ev| {
                    let k = K::under(base, &ev.kv.key)?;
                    let record = match ev.kind {
                        EventKind::Put => decode_or_skip(&ev.kv),
                        EventKind::Delete => None,
                    };
                    Some(match record {
                        Some(v) => Change::Put(k, v),
                        None => Change::Delete(k),
                    })
                })
                .collect(),
        ),
    }
}

impl Registry {
    /// Every job record, by unit name (what the engine schedules).
    pub fn follow_jobs(&self) -> Follower<String, Job> {
        follower(self, self.keys.jobs())
    }

    /// Every global unit's record with its text, by unit name (what every agent runs).
    pub fn follow_globals(&self) -> Follower<String, GlobalJob> {
        follower(self, self.keys.globals())
    }

    /// Every unit body's text, by hash (carried by the engine in the entries it writes).
    pub fn follow_bodies(&self) -> Follower<UnitHash, String> {
        follower(self, self.keys.bodies())
    }

    /// Every present machine's record as the machine announced it, by machine id (dynamic
    /// metadata is followed apart, see [`Registry::follow_metadata`]).
    pub fn follow_machines(&self) -> Follower<String, MachineState> {
        follower(self, self.keys.machines())
    }

    /// Every machine's dynamic metadata, by (machine, key).
    pub fn follow_metadata(&self) -> Follower<(String, String), String> {
        follower(self, self.keys.all_metadata())
    }

    /// One machine's dynamic metadata, by key (what its agent merges into its record).
    pub fn follow_machine_metadata(&self, machine: &str) -> Follower<String, String> {
        follower(self, self.keys.machine_metadata(machine))
    }

    /// The whole schedule, by (machine, unit) (what the engine decided so far).
    pub fn follow_schedule(&self) -> Follower<(String, String), ScheduleEntry> {
        follower(self, self.keys.schedules())
    }

    /// One machine's schedule, by unit (all its agent needs to act).
    pub fn follow_machine_schedule(&self, machine: &str) -> Follower<String, ScheduleEntry> {
        follower(self, self.keys.machine_schedule(machine))
    }

    /// Why units cannot be placed, by unit.
    pub fn follow_reasons(&self) -> Follower<String, String> {
        follower(self, self.keys.reasons())
    }

    /// The published states of placed units, by (unit, machine).
    pub fn follow_placed_states(&self) -> Follower<(String, String), UnitState> {
        follower(self, self.keys.states())
    }

    /// The engine leader key: its machine id while some engine leads.
    pub(crate) fn follow_leader_key(&self) -> Follower<(), String> {
        follower(self, self.keys.leader())
    }
}

// ----- following one prefix of the store -----

impl Registry {
    /// The changes under `prefix` as the store delivers them: by a watch, or by reads every so
    /// often if the registry polls.
    pub(crate) fn follow_raw(&self, prefix: String) -> mpsc::Receiver<Raw> {
        match self.poll {
            // The whole keyspace is watched once for all its followers (see `crate::feed`).
            None if prefix == self.keys.prefix() => follow_shared(self.clone(), prefix),
            None => follow(self.store.clone(), prefix),
            Some(every) => poll(self.store.clone(), prefix, every),
        }
    }
}

/// Follows `prefix` through the registry's shared watch of it, until the receiver is dropped:
/// as [`follow`] does, with a `Reset` after each read.
fn follow_shared(registry: Registry, prefix: String) -> mpsc::Receiver<Raw> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = crate::Backoff::new(RETRY_MIN, RETRY_MAX);
        'subscribe: loop {
            let mut feed = registry.feed.subscribe(&registry.store, &prefix);
            let started = tokio::select! {
                _ = tx.closed() => return,
                started = feed.started() => started,
            };
            if started.is_none() {
                continue 'subscribe;
            }
            'read: loop {
                let page = tokio::select! {
                    _ = tx.closed() => return,
                    page = range_all(registry.store.as_ref(), &prefix, RANGE_PAGE) => page,
                };
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(prefix = %prefix, error = %e, "reading registry failed; retrying");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(backoff.wait()) => {}
                        }
                        continue 'read;
                    }
                };
                backoff.reset();
                let mut last = page.revision;
                if tx.send(Raw::Reset(page.kvs)).await.is_err() {
                    return;
                }
                loop {
                    let delivery = tokio::select! {
                        _ = tx.closed() => return,
                        delivery = feed.recv() => delivery,
                    };
                    match delivery {
                        Some(Feed::Events(events)) => {
                            let events = crate::feed::after(&events, last);
                            let Some(newest) = events.iter().map(|e| e.kv.mod_revision).max()
                            else {
                                continue;
                            };
                            last = newest;
                            if tx.send(Raw::Events(events)).await.is_err() {
                                return;
                            }
                        }
                        Some(Feed::Reread) => continue 'read,
                        None => continue 'subscribe,
                    }
                }
            }
        }
    });
    rx
}

/// What changed under a followed prefix, as the store delivers it.
pub(crate) enum Raw {
    /// The whole prefix as read at one revision: replace any copy held.
    Reset(Vec<KeyValue>),
    /// Changes after the last delivery, in revision order.
    Events(Vec<Event>),
}

const RANGE_PAGE: usize = 1000;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Follows `prefix` until the receiver is dropped. Registry outages are retried with backoff
/// (logged); the receiver sees a `Reset` after each re-read.
pub(crate) fn follow(store: Arc<dyn Store>, prefix: String) -> mpsc::Receiver<Raw> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = crate::Backoff::new(RETRY_MIN, RETRY_MAX);
        'outer: loop {
            let page = match range_all(store.as_ref(), &prefix, RANGE_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(prefix = %prefix, error = %e, "reading registry failed; retrying");
                    tokio::time::sleep(backoff.wait()).await;
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let mut last = page.revision;
            if tx.send(Raw::Reset(page.kvs)).await.is_err() {
                return;
            }
            loop {
                let mut watch = match store.watch(&prefix, last + 1).await {
                    Ok(w) => w,
                    Err(StoreError::Compacted { .. }) => continue 'outer,
                    Err(e) => {
                        tracing::warn!(prefix = %prefix, error = %e, "watching registry failed; retrying");
                        tokio::time::sleep(backoff.wait()).await;
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                };
                backoff.reset();
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        item = watch.next() => match item {
                            Some(Ok(events)) => {
                                if events.is_empty() { continue; }
                                last = events.iter().map(|e| e.kv.mod_revision).max().unwrap_or(last);
                                if tx.send(Raw::Events(events)).await.is_err() {
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

/// Follows `prefix` by reading it every `every` until the receiver is dropped: a `Reset` after
/// the first read (and after a failed one, logged), then the differences between one read and
/// the next as events, so that readers cannot tell it from [`follow`] but by the delay.
pub(crate) fn poll(store: Arc<dyn Store>, prefix: String, every: Duration) -> mpsc::Receiver<Raw> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = crate::Backoff::new(RETRY_MIN, RETRY_MAX);
        // What the last read found, by key; `None` until a read has been delivered whole.
        let mut last: Option<BTreeMap<String, KeyValue>> = None;
        loop {
            let read = tokio::select! {
                _ = tx.closed() => return,
                read = range_all(store.as_ref(), &prefix, RANGE_PAGE) => read,
            };
            let wait = match read {
                Ok(page) => {
                    backoff.reset();
                    let now: BTreeMap<String, KeyValue> = page
                        .kvs
                        .into_iter()
                        .map(|kv| (kv.key.clone(), kv))
                        .collect();
                    let raw = match &last {
                        None => Some(Raw::Reset(now.values().cloned().collect())),
                        Some(before) => {
                            let events = differences(before, &now);
                            (!events.is_empty()).then_some(Raw::Events(events))
                        }
                    };
                    if let Some(raw) = raw {
                        if tx.send(raw).await.is_err() {
                            return;
                        }
                    }
                    last = Some(now);
                    every
                }
                Err(e) => {
                    tracing::warn!(prefix = %prefix, error = %e, "reading registry failed; retrying");
                    backoff.wait().min(every.max(RETRY_MIN))
                }
            };
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    rx
}

/// The events that turn the read `before` into the read `now`: puts of new or rewritten keys
/// in revision order, then deletes of the keys gone.
fn differences(
    before: &BTreeMap<String, KeyValue>,
    now: &BTreeMap<String, KeyValue>,
) -> Vec<Event> {
    let mut puts: Vec<&KeyValue> = now
        .values()
        .filter(|kv| {
            before
                .get(&kv.key)
                .is_none_or(|old| old.mod_revision != kv.mod_revision)
        })
        .collect();
    puts.sort_by_key(|kv| kv.mod_revision);
    let mut events: Vec<Event> = puts
        .into_iter()
        .map(|kv| Event {
            kind: EventKind::Put,
            kv: kv.clone(),
        })
        .collect();
    events.extend(
        before
            .values()
            .filter(|kv| !now.contains_key(&kv.key))
            .map(|kv| Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    value: Vec::new(),
                    ..kv.clone()
                },
            }),
    );
    events
}

/// The next message of `requests`, or never once there is no sender (any more): a `select!`
/// branch of a driver's optional request channel (fleetd's state dumps), which goes quiet when
/// nobody can ask instead of ending the loop.
pub async fn recv_or_never<T>(requests: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> T {
    if let Some(rx) = requests {
        if let Some(request) = rx.recv().await {
            return request;
        }
        *requests = None;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_apply_as_the_copies_of_the_agents_and_the_engine_expect() {
        let mut copy = BTreeMap::new();
        Update::Reset(vec![("a".to_string(), 1), ("b".to_string(), 2)]).apply_to(&mut copy);
        Update::Changes(vec![
            Change::Put("c".to_string(), 3),
            Change::Delete("a".to_string()),
            Change::Put("b".to_string(), 20),
        ])
        .map(|v| v * 10)
        .apply_to(&mut copy);
        assert_eq!(
            copy.into_iter().collect::<Vec<_>>(),
            vec![("b".to_string(), 200), ("c".to_string(), 30)]
        );
        let mut copy = BTreeMap::from([("x".to_string(), 0)]);
        Update::Reset(vec![]).apply_to(&mut copy);
        assert!(copy.is_empty(), "a reset replaces the copy");
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        }
    }

    #[test]
    fn deliveries_are_decoded_by_key_shape_and_codec() {
        let base = "/t/metadata/";
        let reset = typed::<(String, String), String>(
            base,
            Raw::Reset(vec![
                kv("/t/metadata/m1/zone", "a"),
                kv("/t/metadata/m1", "x"),
            ]),
        );
        assert_eq!(
            reset,
            Update::Reset(vec![(("m1".into(), "zone".into()), "a".into())])
        );
        let event = |kind, kv| Event { kind, kv };
        let changes = typed::<String, Job>(
            "/t/job/",
            Raw::Events(vec![
                event(EventKind::Put, kv("/t/job/a.service", "not json")),
                event(EventKind::Delete, kv("/t/job/b.service", "")),
            ]),
        );
        // A record that does not decode is dropped from copies, as a delete.
        assert_eq!(
            changes,
            Update::Changes(vec![
                Change::Delete("a.service".into()),
                Change::Delete("b.service".into())
            ])
        );
    }
}
