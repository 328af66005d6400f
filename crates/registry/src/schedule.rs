//! The schedule: what the engine decided (entries per machine, placements, reasons), as the
//! agents, the API and the engine itself read it. The engine writes it through its
//! [`crate::Leadership`].

use crate::codec::Record;
use crate::group_commit::op_key;
use crate::model::ScheduleEntry;
use crate::registry::{AtRevision, Registry, Result};
use crate::store::{Op, Revision};
use std::collections::BTreeMap;

/// One engine decision, as [`crate::Leadership::apply_schedule`] writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Place `unit` on `machine` (and clear its reason).
    Place {
        unit: String,
        machine: String,
        entry: ScheduleEntry,
    },
    /// Tell `machine` a new hash or desired state of a unit placed there.
    Update {
        unit: String,
        machine: String,
        entry: ScheduleEntry,
    },
    /// Take `unit` off `machine`.
    Unplace { unit: String, machine: String },
    /// Why `unit` cannot be placed (`None` clears it).
    Reason {
        unit: String,
        reason: Option<String>,
    },
}

impl ScheduleChange {
    /// The unit the decision is about.
    pub fn unit(&self) -> &str {
        match self {
            ScheduleChange::Place { unit, .. }
            | ScheduleChange::Update { unit, .. }
            | ScheduleChange::Unplace { unit, .. }
            | ScheduleChange::Reason { unit, .. } => unit,
        }
    }
}

impl Registry {
    /// unit -> machine for every placed unit.
    pub async fn placements(
        &self,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, String>>> {
        self.record_map(&self.keys.placements(), at).await
    }

    /// unit -> why the engine cannot place it.
    pub async fn reasons(
        &self,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, String>>> {
        self.record_map(&self.keys.reasons(), at).await
    }

    /// The schedule of one machine: unit -> entry.
    pub async fn machine_schedule(
        &self,
        machine: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, ScheduleEntry>>> {
        self.record_map(&self.keys.machine_schedule(machine), at)
            .await
    }

    /// The whole schedule: (machine, unit) -> entry. A unit appears under one machine at
    /// most, unless the engine's writes went wrong (tests check exactly that).
    pub async fn schedule(
        &self,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<(String, String), ScheduleEntry>>> {
        self.record_map(&self.keys.schedules(), at).await
    }

    /// The writes of engine decisions, in batches of at most [`crate::MAX_TXN_OPS`] operations,
    /// each to be one transaction. The ops of one unit stay in one batch, in the order of its
    /// changes, and no two batches touch the same key: the batches can be written side by side,
    /// in any order.
    pub(crate) fn schedule_batches(&self, changes: &[ScheduleChange]) -> Vec<Vec<Op>> {
        // Each unit's changes, units in the order they first appear.
        let mut order: Vec<&str> = Vec::new();
        let mut by_unit: std::collections::HashMap<&str, Vec<&ScheduleChange>> =
            std::collections::HashMap::new();
        for change in changes {
            let unit = change.unit();
            by_unit
                .entry(unit)
                .or_insert_with(|| {
                    order.push(unit);
                    Vec::new()
                })
                .push(change);
        }
        let mut ops: Vec<Op> = Vec::with_capacity(changes.len() * 3);
        let mut batches: Vec<Vec<Op>> = Vec::new();
        for unit in order {
            let mut these: Vec<Op> = Vec::new();
            for change in by_unit.remove(unit).unwrap_or_default() {
                for op in self.change_ops(change) {
                    // etcd refuses a transaction that writes one key twice (a unit moving
                    // within one batch deletes and puts its placement): the later op is the
                    // one meant.
                    let key = op_key(&op);
                    these.retain(|o| op_key(o) != key);
                    these.push(op);
                }
            }
            if !ops.is_empty() && ops.len() + these.len() > crate::MAX_TXN_OPS {
                batches.push(std::mem::take(&mut ops));
            }
            ops.append(&mut these);
        }
        if !ops.is_empty() {
            batches.push(ops);
        }
        batches
    }

    /// The registry writes of one engine decision.
    fn change_ops(&self, change: &ScheduleChange) -> Vec<Op> {
        match change {
            ScheduleChange::Place {
                unit,
                machine,
                entry,
            } => vec![
                Op::put(self.keys.schedule(machine, unit), entry.encode()),
                Op::put(self.keys.placement(unit), machine.clone()),
            ],
            ScheduleChange::Update {
                unit,
                machine,
                entry,
            } => vec![Op::put(self.keys.schedule(machine, unit), entry.encode())],
            ScheduleChange::Unplace { unit, machine } => {
                vec![
                    Op::delete(self.keys.schedule(machine, unit)),
                    Op::delete(self.keys.placement(unit)),
                ]
            }
            ScheduleChange::Reason {
                unit,
                reason: Some(r),
            } => vec![Op::put(self.keys.reason(unit), r.clone())],
            ScheduleChange::Reason { unit, reason: None } => {
                vec![Op::delete(self.keys.reason(unit))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group_commit::op_key;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn entry() -> ScheduleEntry {
        ScheduleEntry {
            hash: "1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9"
                .parse()
                .expect("a hash"),
            desired: unit::TargetState::Launched,
            raw: None,
        }
    }

    #[test]
    fn a_units_writes_share_one_batch_and_no_key_is_in_two() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::embedded::EmbeddedStore::open(dir.path()).expect("open the store");
        let registry = Registry::new(Arc::new(store), "/fleet/");
        // 300 units taken off a lost machine, then placed elsewhere, then their reasons
        // cleared: the engine lists the changes by kind, so each unit's come far apart.
        let units: Vec<String> = (0..300).map(|i| format!("u{i:03}.service")).collect();
        let mut changes = Vec::new();
        for u in &units {
            changes.push(ScheduleChange::Unplace {
                unit: u.clone(),
                machine: "lost".into(),
            });
        }
        for (i, u) in units.iter().enumerate() {
            changes.push(ScheduleChange::Place {
                unit: u.clone(),
                machine: format!("m{}", i % 7),
                entry: entry(),
            });
        }
        for u in &units {
            changes.push(ScheduleChange::Reason {
                unit: u.clone(),
                reason: None,
            });
        }
        let batches = registry.schedule_batches(&changes);
        let mut batch_of: std::collections::HashMap<String, usize> = Default::default();
        for (i, batch) in batches.iter().enumerate() {
            assert!(batch.len() <= crate::MAX_TXN_OPS, "{} ops", batch.len());
            let keys: HashSet<&str> = batch.iter().map(op_key).collect();
            assert_eq!(keys.len(), batch.len(), "a key written twice in one batch");
            for key in keys {
                let unit = key.rsplit('/').next().expect("a unit name").to_string();
                assert_eq!(
                    *batch_of.entry(unit).or_insert(i),
                    i,
                    "{key} in two batches"
                );
            }
        }
        assert_eq!(batch_of.len(), units.len());
        // Each unit's last word on its placement is the new machine.
        for batch in &batches {
            for op in batch {
                if op_key(op).contains("/placement/") {
                    assert!(matches!(op, Op::Put { .. }), "{op:?}");
                }
            }
        }
    }
}
