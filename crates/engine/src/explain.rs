//! Where units would go and why: the scheduler's own reasons, read from the very pass that
//! decides placements ([`crate::scheduler::plan`] and [`explain`] run the same pass over the
//! same snapshot, so an explanation cannot disagree with the decision it explains).
//!
//! An explanation is advisory: the leader decides on its own snapshot moments later, and
//! anything that changes in between (a machine leaving, a unit started) changes its answer.
//!
//! ```
//! use engine::explain::{explain, Action};
//! use engine::scheduler::{Cluster, ClusterUnit};
//! use registry::{MachineState, TargetState};
//!
//! let cluster = Cluster {
//!     machines: vec![MachineState { id: "m1".into(), ..Default::default() }],
//!     units: vec![ClusterUnit::new("web.service", TargetState::Launched, Default::default())],
//!     ..Default::default()
//! };
//! let e = explain(&cluster, &["web.service".to_string()]).unwrap();
//! assert_eq!(e.units[0].action, Action::Place);
//! assert_eq!(e.units[0].after.as_deref(), Some("m1"));
//! ```

use crate::scheduler::{Cluster, ClusterUnit};

/// What the pass does with a unit's placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not placed now, placed after.
    Place,
    /// Stays on the machine it is on.
    Keep,
    /// Leaves its machine for another.
    Move,
    /// Taken off its machine and placed nowhere.
    Unplace,
    /// Not placed now and not after.
    None,
    /// A global unit: runs on every machine it matches, never placed by the engine.
    Global,
}

impl Action {
    /// The word fleetctl prints.
    pub fn word(self) -> &'static str {
        match self {
            Action::Place => "place",
            Action::Keep => "keep",
            Action::Move => "move",
            Action::Unplace => "unplace",
            Action::None => "none",
            Action::Global => "global",
        }
    }
}

/// One machine's verdict on one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineVerdict {
    pub machine: String,
    /// Whether the unit may run there (it is there, or could go there now).
    pub fits: bool,
    /// Why, for the user: `MachineMetadata wants region=east, machine has region=west`.
    pub verdict: String,
}

/// One unit: where it is, where the pass puts it, why, and every machine's verdict (sorted by
/// machine id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitExplanation {
    pub name: String,
    pub global: bool,
    pub action: Action,
    /// The machine it is placed on in the snapshot.
    pub before: Option<String>,
    /// The machine it is placed on after the pass.
    pub after: Option<String>,
    /// Why it goes where it goes, or why it cannot run.
    pub reason: String,
    pub machines: Vec<MachineVerdict>,
}

/// A unit not asked about whose placement the pass changes (a unit pushed off by `Replaces`, or
/// anything else the snapshot has pending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub unit: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    /// The units asked about, in the order asked (repeats once).
    pub units: Vec<UnitExplanation>,
    /// Other units the same pass moves, sorted by unit.
    pub moves: Vec<Move>,
}

/// Names asked about that the snapshot does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownUnits(pub Vec<String>);

impl std::fmt::Display for UnknownUnits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unit{} {} not found: submit {} first (fleetctl submit), or give the unit file to plan it as new",
            if self.0.len() == 1 { "" } else { "s" },
            self.0.join(", "),
            if self.0.len() == 1 { "it" } else { "them" },
        )
    }
}

impl std::error::Error for UnknownUnits {}

/// Explains `units` over `cluster`: one scheduling pass, as the leader runs it, and its reasons.
pub fn explain(cluster: &Cluster, units: &[String]) -> Result<Explanation, UnknownUnits> {
    crate::scheduler::explain_pass(cluster, units)
}

impl Cluster {
    /// The cluster with `unit` submitted (replacing a unit of the same name): what a plan for
    /// a unit file not yet in the registry looks at.
    pub fn with_unit(&mut self, unit: ClusterUnit) {
        match self.units.iter_mut().find(|u| u.name == unit.name) {
            Some(existing) => *existing = unit,
            None => {
                let at = self.units.partition_point(|u| u.name < unit.name);
                self.units.insert(at, unit);
            }
        }
    }
}
