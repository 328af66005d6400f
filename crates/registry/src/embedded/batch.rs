//! Writes before they are durable: a [`Batch`] computes transactions, lease grants and revokes
//! against a read-only [`State`] plus its own changes, so several requests share one disk
//! commit; [`State::apply`] makes it visible once it is on disk.

use super::state::{Change, RevisionChanges, State};
use crate::store::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, Result, Revision, StoreError, TxnResult,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

/// Writes computed against a [`State`] but not yet durable nor visible. Every method takes the
/// state the batch was started on, unchanged since (only the single writer changes it). The
/// fields are the batch's outcome, which [`State::apply`] takes over.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) revision: Revision,
    /// Final value of every key the batch touched (`None` = deleted).
    pub(super) overlay: BTreeMap<String, Option<KeyValue>>,
    pub(super) leases_granted: HashMap<LeaseId, i64>,
    pub(super) leases_revoked: HashSet<LeaseId>,
    pub(super) history: Vec<RevisionChanges>,
}

impl Batch {
    pub fn new(st: &State) -> Batch {
        Batch {
            revision: st.revision,
            ..Batch::default()
        }
    }

    /// The revision after the batch.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the batch has anything to write.
    pub fn is_empty(&self) -> bool {
        self.overlay.is_empty() && self.leases_granted.is_empty() && self.leases_revoked.is_empty()
    }

    /// Keys to write (`Some`) or remove (`None`) on disk.
    pub fn key_writes(&self) -> impl Iterator<Item = (&str, Option<&KeyValue>)> {
        self.overlay.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    pub fn leases_granted(&self) -> impl Iterator<Item = (LeaseId, i64)> + '_ {
        self.leases_granted.iter().map(|(id, ttl)| (*id, *ttl))
    }

    pub fn leases_revoked(&self) -> impl Iterator<Item = LeaseId> + '_ {
        self.leases_revoked.iter().copied()
    }

    fn get<'a>(&'a self, st: &'a State, key: &str) -> Option<&'a KeyValue> {
        match self.overlay.get(key) {
            Some(v) => v.as_ref(),
            None => st.kv.get(key),
        }
    }

    pub fn lease_exists(&self, st: &State, id: LeaseId) -> bool {
        if self.leases_revoked.contains(&id) {
            return false;
        }
        self.leases_granted.contains_key(&id) || st.leases.get(&id).is_some_and(|e| !e.dying)
    }

    /// Whether `id` may not be handed out by a new grant.
    pub fn lease_id_taken(&self, st: &State, id: LeaseId) -> bool {
        st.leases.contains_key(&id) || self.leases_granted.contains_key(&id)
    }

    fn holds(&self, st: &State, c: &Compare) -> bool {
        match c {
            Compare::Exists(k) => self.get(st, k).is_some(),
            Compare::Missing(k) => self.get(st, k).is_none(),
            Compare::Value(k, v) => self.get(st, k).is_some_and(|kv| kv.value == *v),
            Compare::ModRevision(k, r) => self.get(st, k).map_or(0, |kv| kv.mod_revision) == *r,
            Compare::Lease(k, l) => self.get(st, k).is_some_and(|kv| kv.lease == *l),
        }
    }

    /// Runs one transaction. A transaction that changes nothing keeps the revision.
    pub fn txn(
        &mut self,
        st: &State,
        compares: &[Compare],
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResult> {
        let succeeded = compares.iter().all(|c| self.holds(st, c));
        let ops = if succeeded { success } else { failure };
        // Refuse the whole transaction before changing anything, as etcd does.
        check_distinct_keys(&ops)?;
        for op in &ops {
            match op {
                Op::Put { key, lease, .. } => {
                    if key.is_empty() {
                        return Err(StoreError::Other("a key must not be empty".into()));
                    }
                    if *lease != 0 && !self.lease_exists(st, *lease) {
                        return Err(StoreError::LeaseNotFound(*lease));
                    }
                }
                Op::Delete { key } if key.is_empty() => {
                    return Err(StoreError::Other("a key must not be empty".into()));
                }
                Op::Delete { .. } | Op::DeletePrefix { .. } => {}
            }
        }
        let rev = self.revision + 1;
        let mut changes = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let prev = self.get(st, &key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        lease,
                    };
                    self.overlay.insert(key, Some(kv.clone()));
                    changes.push(Change {
                        event: Event {
                            kind: EventKind::Put,
                            kv,
                        },
                        prev,
                    });
                }
                Op::Delete { key } => self.delete(st, key, rev, &mut changes),
                Op::DeletePrefix { prefix } => {
                    for key in self.keys_with_prefix(st, &prefix) {
                        self.delete(st, key, rev, &mut changes);
                    }
                }
            }
        }
        self.commit_revision(rev, changes);
        Ok(TxnResult {
            succeeded,
            revision: self.revision,
        })
    }

    /// Records a lease grant (the caller picked an id no lease has).
    pub fn grant(&mut self, id: LeaseId, ttl_secs: i64) {
        self.leases_granted.insert(id, ttl_secs);
    }

    /// Revokes a lease (or expires it): its keys are deleted in one revision. The lease is
    /// dead to keep-alives and new puts from now on, before the batch is durable.
    pub fn revoke(&mut self, st: &mut State, id: LeaseId) {
        let granted_here = self.leases_granted.remove(&id).is_some();
        if !st.leases.contains_key(&id) {
            // Unknown, or granted in this very batch (and so without keys on disk yet).
            if !granted_here {
                return;
            }
        } else {
            self.leases_revoked.insert(id);
        }
        let rev = self.revision + 1;
        let mut changes = Vec::new();
        for key in self.keys_of_lease(st, id) {
            self.delete(st, key, rev, &mut changes);
        }
        self.commit_revision(rev, changes);
        if let Some(e) = st.leases.get_mut(&id) {
            e.dying = true;
        }
    }

    fn commit_revision(&mut self, rev: Revision, changes: Vec<Change>) {
        if !changes.is_empty() {
            self.revision = rev;
            self.history.push(RevisionChanges {
                revision: rev,
                changes,
            });
        }
    }

    fn delete(&mut self, st: &State, key: String, rev: Revision, changes: &mut Vec<Change>) {
        let Some(prev) = self.get(st, &key).cloned() else {
            return;
        };
        // A delete event carries only the key and the delete's revision, as in etcd.
        let kv = KeyValue {
            key: key.clone(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: rev,
            lease: 0,
        };
        self.overlay.insert(key, None);
        changes.push(Change {
            event: Event {
                kind: EventKind::Delete,
                kv,
            },
            prev: Some(prev),
        });
    }

    /// Live keys under `prefix`, sorted, as this batch sees them.
    fn keys_with_prefix(&self, st: &State, prefix: &str) -> Vec<String> {
        let stored = st
            .kv
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix));
        let touched = self
            .overlay
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix));
        let all: BTreeSet<&String> = stored.chain(touched).collect();
        all.into_iter()
            .filter(|k| self.get(st, k).is_some())
            .cloned()
            .collect()
    }

    /// Live keys attached to lease `id`, sorted, as this batch sees them.
    fn keys_of_lease(&self, st: &State, id: LeaseId) -> Vec<String> {
        let stored = st.lease_keys.get(&id).into_iter().flatten();
        let touched = self.overlay.keys();
        let all: BTreeSet<&String> = stored.chain(touched).collect();
        all.into_iter()
            .filter(|k| self.get(st, k).is_some_and(|kv| kv.lease == id))
            .cloned()
            .collect()
    }
}

/// etcd refuses a transaction branch that writes one key twice (two puts of it, or a put and a
/// delete or delete-prefix covering it); the embedded store refuses the same, so that code
/// tested here works against etcd.
fn check_distinct_keys(ops: &[Op]) -> Result<()> {
    let mut puts = std::collections::BTreeSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op {
            if !puts.insert(key.as_str()) {
                return Err(duplicate(key));
            }
        }
    }
    for op in ops {
        match op {
            Op::Delete { key } if puts.contains(key.as_str()) => return Err(duplicate(key)),
            Op::DeletePrefix { prefix } => {
                if let Some(k) = puts
                    .range(prefix.as_str()..)
                    .next()
                    .filter(|k| k.starts_with(prefix.as_str()))
                {
                    return Err(duplicate(k));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn duplicate(key: &str) -> StoreError {
    StoreError::Other(format!(
        "a transaction branch writes {key:?} twice (two puts, or a put and a delete covering \
         it), which etcd refuses: merge those ops"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::HistoryLimits;
    use std::time::{Duration, Instant};

    fn empty(limits: HistoryLimits) -> State {
        State::new(BTreeMap::new(), [], 0, limits, Instant::now())
    }

    #[test]
    fn a_batch_of_txns_sees_its_own_writes_and_bumps_once_per_changing_txn() {
        let mut st = empty(HistoryLimits::default());
        let mut b = Batch::new(&st);
        let r1 = b
            .txn(&st, &[], vec![Op::put("a", "1")], vec![])
            .expect("put");
        let r2 = b
            .txn(
                &st,
                &[Compare::Value("a".into(), b"1".to_vec())],
                vec![Op::put("a", "2")],
                vec![],
            )
            .expect("cas");
        let r3 = b
            .txn(&st, &[], vec![Op::delete("missing")], vec![])
            .expect("noop");
        assert_eq!(
            (r1.revision, r2.succeeded, r2.revision, r3.revision),
            (1, true, 2, 2)
        );
        assert!(st.kv.is_empty(), "nothing visible before apply");
        st.apply(b, Instant::now());
        let a = st.kv.get("a").expect("a");
        assert_eq!(
            (a.value.as_slice(), a.create_revision, a.mod_revision),
            (&b"2"[..], 1, 2)
        );
        assert_eq!(st.revision, 2);
    }

    #[test]
    fn leases_attach_detach_and_revoke_in_one_revision() {
        let now = Instant::now();
        let mut st = empty(HistoryLimits::default());
        let mut b = Batch::new(&st);
        b.grant(7, 1);
        let refused = b.txn(&st, &[], vec![Op::put_leased("x", "v", 8)], vec![]);
        assert!(matches!(refused, Err(StoreError::LeaseNotFound(8))));
        b.txn(
            &st,
            &[],
            vec![
                Op::put_leased("a", "v", 7),
                Op::put_leased("b", "v", 7),
                Op::put_leased("c", "v", 7),
            ],
            vec![],
        )
        .expect("leased puts");
        b.txn(&st, &[], vec![Op::put("c", "plain")], vec![])
            .expect("detach");
        st.apply(b, now);
        assert_eq!(st.lease_keys.get(&7).map(|s| s.len()), Some(2));
        assert_eq!(st.expired_leases(now), Vec::<LeaseId>::new());
        assert_eq!(st.expired_leases(now + Duration::from_secs(1)), vec![7]);

        let mut b = Batch::new(&st);
        b.revoke(&mut st, 7);
        assert!(
            st.keep_alive(7, now).is_err(),
            "a dying lease cannot be kept alive"
        );
        st.apply(b, now);
        assert_eq!(st.revision, 3);
        let last = st.history.back().expect("history");
        let keys: Vec<&str> = last
            .changes
            .iter()
            .map(|c| c.event.kv.key.as_str())
            .collect();
        assert_eq!(keys, vec!["a", "b"]);
        assert!(st.leases.is_empty() && st.lease_keys.is_empty());
        assert_eq!(st.kv.keys().collect::<Vec<_>>(), vec!["c"]);
    }
}
