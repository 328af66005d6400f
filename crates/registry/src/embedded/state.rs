//! The embedded store's in-memory model: current keys, leases, and a bounded history of recent
//! revisions. Pure (no I/O, no clock reads: callers pass `now`), so the etcd semantics live here
//! and are tested here; `disk.rs` makes it durable and `mod.rs` runs it.
//!
//! Writes are computed as a [`Batch`] (`batch.rs`) over a read-only view of the [`State`] plus
//! the batch's own changes (so several transactions can share one disk commit), then applied
//! with [`State::apply`] once the batch is on disk: readers never see a change before it is
//! durable.

use super::batch::Batch;
use crate::store::{Event, KeyValue, LeaseId, LeaseTimes, RangePage, Result, Revision, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

/// How much history the store keeps for reads at past revisions and for watches from the past.
/// The oldest revisions are dropped first; the newest one is always kept whatever its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// At most this many revisions.
    pub revisions: usize,
    /// At most this many changed keys over all kept revisions (bounds memory when revisions are big).
    pub events: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            revisions: 10_000,
            events: 100_000,
        }
    }
}

/// One key's change at one revision, with the key as it was just before (to read the past).
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub event: Event,
    pub prev: Option<KeyValue>,
}

#[derive(Clone, Debug)]
pub(super) struct RevisionChanges {
    pub revision: Revision,
    pub changes: Vec<Change>,
}

#[derive(Clone, Debug)]
pub(super) struct LeaseEntry {
    pub ttl_secs: i64,
    pub deadline: Instant,
    /// Being revoked or expired by a batch not yet on disk: already dead to its users.
    pub dying: bool,
}

#[derive(Debug)]
pub(super) struct State {
    pub kv: BTreeMap<String, KeyValue>,
    pub revision: Revision,
    /// The oldest revision that can still be read; watches may start at `compacted + 1`.
    pub compacted: Revision,
    pub leases: HashMap<LeaseId, LeaseEntry>,
    /// Keys attached to each lease, so a revoke need not scan every key.
    pub lease_keys: HashMap<LeaseId, BTreeSet<String>>,
    /// Every revision after `compacted`, oldest first (each write revision changes some key).
    pub history: VecDeque<RevisionChanges>,
    history_events: usize,
    limits: HistoryLimits,
}

impl State {
    /// The state loaded from disk: keys and leases at `revision`, no history (so the past before
    /// the open cannot be read), every lease given its full TTL from `now`.
    pub fn new(
        kv: BTreeMap<String, KeyValue>,
        leases: impl IntoIterator<Item = (LeaseId, i64)>,
        revision: Revision,
        limits: HistoryLimits,
        now: Instant,
    ) -> State {
        let mut lease_keys: HashMap<LeaseId, BTreeSet<String>> = HashMap::new();
        for kv in kv.values().filter(|kv| kv.lease != 0) {
            lease_keys
                .entry(kv.lease)
                .or_default()
                .insert(kv.key.clone());
        }
        let leases = leases
            .into_iter()
            .map(|(id, ttl_secs)| {
                (
                    id,
                    LeaseEntry {
                        ttl_secs,
                        deadline: deadline(now, ttl_secs),
                        dying: false,
                    },
                )
            })
            .collect();
        State {
            kv,
            revision,
            compacted: revision,
            leases,
            lease_keys,
            history: VecDeque::new(),
            history_events: 0,
            limits: HistoryLimits {
                revisions: limits.revisions.max(1),
                events: limits.events.max(1),
            },
        }
    }

    /// Makes a batch visible (call only once it is durable).
    pub fn apply(&mut self, batch: Batch, now: Instant) {
        for (key, new) in batch.overlay {
            let old = match new {
                Some(kv) => {
                    let lease = kv.lease;
                    if lease != 0 {
                        self.lease_keys
                            .entry(lease)
                            .or_default()
                            .insert(key.clone());
                    }
                    let old = self.kv.insert(key.clone(), kv);
                    old.filter(|o| o.lease != lease)
                }
                None => self.kv.remove(&key),
            };
            if let Some(old) = old.filter(|o| o.lease != 0) {
                if let Some(keys) = self.lease_keys.get_mut(&old.lease) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.lease_keys.remove(&old.lease);
                    }
                }
            }
        }
        for id in batch.leases_revoked {
            self.leases.remove(&id);
            self.lease_keys.remove(&id);
        }
        for (id, ttl_secs) in batch.leases_granted {
            self.leases.insert(
                id,
                LeaseEntry {
                    ttl_secs,
                    deadline: deadline(now, ttl_secs),
                    dying: false,
                },
            );
        }
        self.revision = batch.revision;
        for rc in batch.history {
            self.history_events += rc.changes.len();
            self.history.push_back(rc);
        }
        while self.history.len() > 1
            && (self.history.len() > self.limits.revisions
                || self.history_events > self.limits.events)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_events -= old.changes.len();
                self.compacted = old.revision;
            }
        }
    }

    /// Keys under `prefix` from `start`, at most `limit` (0 = all), as of `revision`.
    pub fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<RangePage> {
        let at = match revision {
            Some(r) if r > 0 => r,
            _ => self.revision,
        };
        if at > self.revision {
            return Err(StoreError::Other(format!(
                "revision {at} is in the future (the store is at {}); read at a revision a read returned",
                self.revision
            )));
        }
        if at < self.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: self.compacted,
            });
        }
        let lo = match start {
            Some(s) if s > prefix => s,
            _ => prefix,
        };
        // What changed after `at`, mapped to its value at `at` (the earliest change's `prev`).
        let mut past: BTreeMap<&str, Option<&KeyValue>> = BTreeMap::new();
        for rc in self.history.range(self.history_index(at + 1)..) {
            for ch in &rc.changes {
                let k = ch.event.kv.key.as_str();
                if k >= lo && k.starts_with(prefix) {
                    past.entry(k).or_insert(ch.prev.as_ref());
                }
            }
        }
        let mut now = self
            .kv
            .range::<str, _>((Bound::Included(lo), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut past = past.into_iter().peekable();
        let want = if limit == 0 { usize::MAX } else { limit };
        let mut kvs = Vec::new();
        let mut more = false;
        loop {
            // Merge the two sorted sequences; the past wins for keys in both.
            let next = match (now.peek(), past.peek()) {
                (None, None) => break,
                (Some(_), None) => now.next().map(|(_, kv)| kv),
                (None, Some(_)) => past.next().and_then(|(_, kv)| kv),
                (Some((nk, _)), Some((pk, _))) => match nk.as_str().cmp(pk) {
                    std::cmp::Ordering::Less => now.next().map(|(_, kv)| kv),
                    std::cmp::Ordering::Equal => {
                        now.next();
                        past.next().and_then(|(_, kv)| kv)
                    }
                    std::cmp::Ordering::Greater => past.next().and_then(|(_, kv)| kv),
                },
            };
            if let Some(kv) = next {
                if kvs.len() == want {
                    more = true;
                    break;
                }
                kvs.push(kv.clone());
            }
        }
        Ok(RangePage {
            kvs,
            more,
            revision: at,
        })
    }

    /// Events under `prefix` from revision `from` on, whole revisions only, stopping after the
    /// revision that brings the count to `max_events`. Returns them and the next `from`.
    pub fn watch_events(
        &self,
        prefix: &str,
        from: Revision,
        max_events: usize,
    ) -> Result<(Vec<Event>, Revision)> {
        if from <= self.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: self.compacted,
            });
        }
        let mut out = Vec::new();
        let mut next = from;
        for rc in self.history.range(self.history_index(from)..) {
            if out.len() >= max_events {
                break;
            }
            out.extend(
                rc.changes
                    .iter()
                    .filter(|c| c.event.kv.key.starts_with(prefix))
                    .map(|c| c.event.clone()),
            );
            next = rc.revision + 1;
        }
        Ok((out, next))
    }

    /// Index in `history` of the first revision >= `rev`.
    fn history_index(&self, rev: Revision) -> usize {
        self.history.partition_point(|rc| rc.revision < rev)
    }

    /// Leases past their deadline, and leases a failed batch left dying; sorted.
    pub fn expired_leases(&self, now: Instant) -> Vec<LeaseId> {
        let mut ids: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, e)| e.dying || e.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// When the next lease may expire (keep-alives only move deadlines later). Dying leases
    /// count too, so that a batch that failed to revoke them is retried.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|e| e.deadline).min()
    }

    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration> {
        match self.leases.get_mut(&id) {
            Some(e) if !e.dying && e.deadline > now => {
                e.deadline = deadline(now, e.ttl_secs);
                Ok(ttl_duration(e.ttl_secs))
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    pub fn lease_ttl(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        match self.leases.get(&id) {
            Some(e) if !e.dying && e.deadline > now => Some(e.deadline - now),
            _ => None,
        }
    }

    pub fn lease_times(&self, id: LeaseId, now: Instant) -> Option<LeaseTimes> {
        match self.leases.get(&id) {
            Some(e) if !e.dying && e.deadline > now => Some(LeaseTimes {
                remaining: e.deadline - now,
                granted: Some(ttl_duration(e.ttl_secs)),
            }),
            _ => None,
        }
    }
}

fn ttl_duration(ttl_secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

fn deadline(now: Instant, ttl_secs: i64) -> Instant {
    let ttl = ttl_duration(ttl_secs);
    // A TTL too far to represent never expires in practice: a year is as good as forever here.
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// The largest TTL a lease may ask for (etcd's limit).
pub(super) const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// A lease TTL rounded up to whole seconds, at least 1 s.
pub(super) fn lease_ttl_secs(ttl: Duration) -> Result<i64> {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    match i64::try_from(secs.max(1)) {
        Ok(s) if s <= MAX_LEASE_TTL_SECS => Ok(s),
        _ => Err(StoreError::Other(format!(
            "lease TTL {ttl:?} is too long (at most {MAX_LEASE_TTL_SECS} s)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Compare, EventKind, Op, TxnResult};

    fn empty(limits: HistoryLimits) -> State {
        State::new(BTreeMap::new(), [], 0, limits, Instant::now())
    }

    fn run(st: &mut State, compares: &[Compare], ops: Vec<Op>) -> TxnResult {
        let mut b = Batch::new(st);
        let r = b.txn(st, compares, ops, vec![]).expect("txn");
        st.apply(b, Instant::now());
        r
    }
    #[test]
    fn past_reads_merge_history_over_current_keys() {
        let mut st = empty(HistoryLimits::default());
        run(
            &mut st,
            &[],
            vec![
                Op::put("p/a", "1"),
                Op::put("p/b", "1"),
                Op::put("p/c", "1"),
            ],
        );
        run(
            &mut st,
            &[],
            vec![Op::delete("p/b"), Op::put("p/a", "2"), Op::put("p/d", "1")],
        );
        run(&mut st, &[], vec![Op::delete_prefix("p/")]);
        let at1: Vec<(String, Vec<u8>)> = st
            .range("p/", None, 0, Some(1))
            .expect("range")
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        assert_eq!(
            at1,
            vec![
                ("p/a".into(), b"1".to_vec()),
                ("p/b".into(), b"1".to_vec()),
                ("p/c".into(), b"1".to_vec())
            ]
        );
        let page = st.range("p/", Some("p/b"), 1, Some(2)).expect("range");
        assert_eq!((page.kvs[0].key.as_str(), page.more), ("p/c", true));
        assert!(st.range("p/", None, 0, None).expect("now").kvs.is_empty());
        assert!(matches!(
            st.range("p/", None, 0, Some(4)),
            Err(StoreError::Other(_))
        ));
    }

    #[test]
    fn history_is_bounded_and_old_reads_report_compaction() {
        let mut st = empty(HistoryLimits {
            revisions: 3,
            events: 100,
        });
        for i in 0..10 {
            run(&mut st, &[], vec![Op::put(format!("k{i}"), "v")]);
        }
        assert_eq!((st.revision, st.compacted, st.history.len()), (10, 7, 3));
        assert!(st.range("", None, 0, Some(7)).is_ok());
        assert!(matches!(
            st.range("", None, 0, Some(6)),
            Err(StoreError::Compacted {
                requested: 6,
                compacted: 7
            })
        ));
        assert!(st.watch_events("", 8, 10).is_ok());
        assert!(matches!(
            st.watch_events("", 7, 10),
            Err(StoreError::Compacted { .. })
        ));
        // One revision bigger than the event limit is still kept.
        let mut st = empty(HistoryLimits {
            revisions: 10,
            events: 2,
        });
        run(
            &mut st,
            &[],
            (0..5).map(|i| Op::put(format!("k{i}"), "v")).collect(),
        );
        assert_eq!((st.history.len(), st.compacted), (1, 0));
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let cases = [
            (0, 1),
            (1, 1),
            (999, 1),
            (1000, 1),
            (1001, 2),
            (1500, 2),
            (30_000, 30),
        ];
        for (ms, secs) in cases {
            assert_eq!(
                lease_ttl_secs(Duration::from_millis(ms)).expect("ttl"),
                secs,
                "{ms} ms"
            );
        }
        assert!(lease_ttl_secs(Duration::MAX).is_err());
    }

    /// Random writes (puts, deletes, prefix deletes, lease revokes; several txns per batch) with
    /// a snapshot of every revision; then every past revision read in random pages must equal
    /// its snapshot, and replaying watch events from any revision onto the snapshot before it
    /// must give the current keys.
    #[test]
    fn past_reads_and_watch_replays_match_snapshots_of_every_revision() {
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let now = Instant::now();
        let keys = ["a", "a/b", "a/c", "ab", "b", "b/a", "b/b", "c"];
        let mut st = empty(HistoryLimits {
            revisions: 100_000,
            events: 1_000_000,
        });
        let mut snapshots: Vec<BTreeMap<String, KeyValue>> = vec![st.kv.clone()];
        let mut lease_id = 0;
        for _ in 0..300 {
            let mut b = Batch::new(&st);
            let mut revs = vec![];
            for _ in 0..=next(3) {
                let r = match next(10) {
                    0 => {
                        lease_id += 1;
                        b.grant(lease_id, 1);
                        continue;
                    }
                    1 if lease_id > 0 => {
                        b.revoke(&mut st, 1 + next(lease_id as u64) as i64);
                        b.revision()
                    }
                    2 => {
                        let prefix = keys[next(keys.len() as u64) as usize];
                        b.txn(&st, &[], vec![Op::delete_prefix(prefix)], vec![])
                            .expect("delete_prefix")
                            .revision
                    }
                    3 => {
                        let k = keys[next(keys.len() as u64) as usize];
                        b.txn(&st, &[], vec![Op::delete(k)], vec![])
                            .expect("delete")
                            .revision
                    }
                    _ => {
                        let k = keys[next(keys.len() as u64) as usize];
                        let lease = if lease_id > 0 && next(2) == 0 {
                            lease_id
                        } else {
                            0
                        };
                        let ops = vec![Op::put_leased(k, format!("{}", next(100)), lease)];
                        match b.txn(&st, &[], ops, vec![]) {
                            Ok(r) => r.revision,
                            Err(StoreError::LeaseNotFound(_)) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                };
                revs.push(r);
            }
            // Snapshots per revision need the state after each txn, so apply batch by batch and
            // recompute the intermediate revisions from history.
            st.apply(b, now);
            while (snapshots.len() as i64) <= st.revision {
                let rev = snapshots.len() as i64;
                let mut snap = snapshots[snapshots.len() - 1].clone();
                let rc = st
                    .history
                    .iter()
                    .find(|rc| rc.revision == rev)
                    .expect("revision in history");
                for ch in &rc.changes {
                    match ch.event.kind {
                        EventKind::Put => snap.insert(ch.event.kv.key.clone(), ch.event.kv.clone()),
                        EventKind::Delete => snap.remove(&ch.event.kv.key),
                    };
                }
                snapshots.push(snap);
            }
            assert_eq!(
                snapshots.last(),
                Some(&st.kv),
                "events replayed give the current keys"
            );
            assert!(revs.windows(2).all(|w| w[0] <= w[1]));
        }
        assert!(
            st.revision > 200,
            "the random writes changed something: {}",
            st.revision
        );
        for _ in 0..2000 {
            let at = 1 + next(st.revision as u64) as i64;
            let prefix = ["", "a", "a/", "b", "c", "z"][next(6) as usize];
            let start = ["", "a/c", "b", "b/b"][next(4) as usize];
            let limit = next(4) as usize;
            let page = st
                .range(prefix, Some(start), limit, Some(at))
                .expect("range");
            let want: Vec<&KeyValue> = snapshots[at as usize]
                .values()
                .filter(|kv| kv.key.starts_with(prefix) && kv.key.as_str() >= start)
                .collect();
            let shown = if limit == 0 {
                want.len()
            } else {
                limit.min(want.len())
            };
            assert_eq!(
                page.kvs.iter().collect::<Vec<_>>(),
                want[..shown].to_vec(),
                "at {at} {prefix:?} {start:?} {limit}"
            );
            assert_eq!(page.more, shown < want.len());
        }
        for from in 1..=st.revision {
            let mut snap = snapshots[from as usize - 1].clone();
            let mut cursor = from;
            loop {
                let (events, next_from) = st.watch_events("", cursor, 7).expect("watch");
                if events.is_empty() {
                    break;
                }
                for e in events {
                    match e.kind {
                        EventKind::Put => snap.insert(e.kv.key.clone(), e.kv),
                        EventKind::Delete => snap.remove(&e.kv.key),
                    };
                }
                cursor = next_from;
            }
            assert_eq!(snap, st.kv, "replay from {from}");
        }
    }
}
