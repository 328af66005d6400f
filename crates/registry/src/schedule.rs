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

    /// The writes of engine decisions, in batches of at most [`crate::MAX_TXN_OPS`] operations
    /// (the ops of one change stay in one batch), each to be one transaction.
    pub(crate) fn schedule_batches(&self, changes: &[ScheduleChange]) -> Vec<Vec<Op>> {
        let mut ops: Vec<Op> = Vec::with_capacity(changes.len() * 3);
        let mut batches: Vec<Vec<Op>> = Vec::new();
        for change in changes {
            let mut these = match change {
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
            };
            // The ops of one change stay in one transaction.
            if ops.len() + these.len() > crate::MAX_TXN_OPS {
                batches.push(std::mem::take(&mut ops));
            }
            for op in these.drain(..) {
                // etcd refuses a transaction that writes one key twice (a unit moving within
                // one batch deletes and puts its placement): the later op is the one meant.
                let key = op_key(&op);
                ops.retain(|o| op_key(o) != key);
                ops.push(op);
            }
        }
        if !ops.is_empty() {
            batches.push(ops);
        }
        batches
    }
}
