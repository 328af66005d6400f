//! The engine's scheduler: a pure function from a snapshot of the cluster to a plan.
//!
//! ```
//! use engine::scheduler::{plan, Cluster, ClusterUnit};
//! use registry::{MachineState, TargetState};
//! use unit::Requirements;
//!
//! let mut cluster = Cluster {
//!     machines: vec![MachineState { id: "m1".into(), ..Default::default() }],
//!     units: vec![ClusterUnit::new("web.service", TargetState::Launched, Requirements::default())],
//!     ..Default::default()
//! };
//! let p = plan(&cluster);
//! assert_eq!(p.add[0].machine, "m1");
//! cluster.apply(&p);
//! assert!(plan(&cluster).is_empty()); // a second pass changes nothing
//! ```
//!
//! Placement follows fleet (fleet-reference.md section 6) with its weaknesses fixed
//! (section 11, items 11 and 12):
//! * least loaded machine first (load = non-global units placed there plus the global units that
//!   run there), ties broken by machine id; `MachineID` (full or 8-character short id),
//!   `MachineMetadata` (OR within a key, AND across keys), `MachineOf` (every peer on the same
//!   machine), `Conflicts` (Go globs, both directions, a unit never conflicts with itself);
//! * `MachineOf` chains are placed in one pass (targets before followers); a cycle is reported;
//! * units joined by `[Unit]` `Requires=`/`Requisite=`/`BindsTo=`/`Wants=` on submitted,
//!   schedulable units form a dependency group placed on one machine that fits every member
//!   (systemd resolves those names locally); the group follows a member already placed, and a
//!   group no machine fits stays unplaced with a reason naming the dependency;
//! * `Replaces` is deterministic: the replacing unit stays and the replaced unit moves to a
//!   machine where its own constraints hold, or stays unplaced with a reason; pairs (and longer
//!   cycles) of units replacing each other are ignored;
//! * a placed unit stays where it is while it still fits there (no rebalancing); when two placed
//!   units newly conflict on one machine, the one whose name sorts later moves;
//! * global units are never placed here; they run on every machine whose metadata they match,
//!   except where a global unit whose name sorts earlier conflicts with them, and count there as
//!   load and as conflict peers. A non-global unit never displaces a global one;
//! * every unit that cannot be placed gets a reason meant for the user.
//!
//! Units are processed in an order fixed by their names, never by hash-map order, so the same
//! snapshot always gives the same plan.

mod ix;
mod pass;
mod relations;

use registry::{MachineState, TargetState};
use std::collections::BTreeMap;
use unit::Requirements;

/// One unit as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterUnit {
    pub name: String,
    pub desired: TargetState,
    pub requirements: Requirements,
    /// `Job::global`; a unit whose requirements say `Global=true` is global as well.
    pub global: bool,
}

impl ClusterUnit {
    /// A unit whose global flag comes from its requirements.
    pub fn new(
        name: impl Into<String>,
        desired: TargetState,
        requirements: Requirements,
    ) -> ClusterUnit {
        let global = requirements.global;
        ClusterUnit {
            name: name.into(),
            desired,
            requirements,
            global,
        }
    }

    pub fn is_global(&self) -> bool {
        self.global || self.requirements.global
    }
}

/// A snapshot of the cluster: what the scheduler decides from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Live machines, with dynamic metadata merged into `metadata`. A repeated id counts once.
    pub machines: Vec<MachineState>,
    /// Every unit, global or not, whatever its desired state. A repeated name counts once (the
    /// first).
    pub units: Vec<ClusterUnit>,
    /// unit -> machine id, as currently scheduled.
    pub placements: BTreeMap<String, String>,
}

/// One unit on one machine.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    pub unit: String,
    pub machine: String,
}

impl Placement {
    pub fn new(unit: impl Into<String>, machine: impl Into<String>) -> Placement {
        Placement {
            unit: unit.into(),
            machine: machine.into(),
        }
    }
}

/// What one scheduling pass decided. Apply `remove` before `add`: a unit that moves appears in
/// both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Placements to take away, sorted by unit.
    pub remove: Vec<Placement>,
    /// Placements to make, sorted by unit.
    pub add: Vec<Placement>,
    /// unit -> why it cannot be placed, for every non-global unit that should run but is not
    /// placed after this plan.
    pub unplaceable: BTreeMap<String, String>,
}

impl Plan {
    /// Whether the plan changes no placement (it may still carry reasons).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

impl Cluster {
    /// The cluster as it is after `plan` was carried out.
    pub fn apply(&mut self, plan: &Plan) {
        for p in &plan.remove {
            if self.placements.get(&p.unit) == Some(&p.machine) {
                self.placements.remove(&p.unit);
            }
        }
        for p in &plan.add {
            self.placements.insert(p.unit.clone(), p.machine.clone());
        }
    }
}

/// The explanation of one pass for `units` (see [`crate::explain`]).
pub(crate) fn explain_pass(
    cluster: &Cluster,
    units: &[String],
) -> Result<crate::explain::Explanation, crate::explain::UnknownUnits> {
    pass::explain(cluster, units)
}

/// Decides which units go where. Pure and deterministic.
pub fn plan(cluster: &Cluster) -> Plan {
    pass::run(cluster)
}
