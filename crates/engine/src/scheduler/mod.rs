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
//! * every unit that cannot be placed gets a reason meant for the user;
//! * a drained machine ([`Drain`]) takes no new placement (verdict "drained"); its units move
//!   away one at a time, each with its MachineOf followers, and only where a machine takes them
//!   as they are (no Replaces eviction): a unit that cannot move stays where it runs. While a
//!   unit moved off a drained machine is not yet running at its new place (`Drain::moving`),
//!   no other moves. Global units stay: they belong to every machine they match.
//!
//! Units are processed in an order fixed by their names, never by hash-map order, so the same
//! snapshot always gives the same plan.

mod ix;
mod pass;
mod relations;

use registry::{MachineState, TargetState};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Drained machines, and the units in motion off them.
    pub drain: Drain,
}

/// What drain asks of a pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// Ids of drained machines: no new placement there, and their units move away.
    pub machines: BTreeSet<String>,
    /// Units moved off a drained machine that do not run at their new place yet: while there
    /// is one, no other unit is moved off, so a drain takes one unit (and its MachineOf
    /// followers) out of service at a time.
    pub moving: BTreeSet<String>,
}

/// One unit on a drained machine, and what drain does with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainedUnit {
    pub unit: String,
    /// The drained machine it runs on.
    pub machine: String,
    pub status: DrainStatus,
}

/// What drain does with a unit of a drained machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainStatus {
    /// This pass moves it to this machine.
    Moves(String),
    /// It can move, and waits for its turn (another unit is in motion).
    Waits,
    /// It cannot move now, and runs on where it is: why.
    Stays(String),
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

/// What drain does with each non-global unit on a drained machine, in the order of the
/// drained machines' ids and then unit names: the pass [`plan`] runs, asked in addition
/// whether each unit that does not move now could.
pub fn drain_report(cluster: &Cluster) -> Vec<DrainedUnit> {
    pass::drain_report(cluster)
}
