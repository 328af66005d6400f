//! The `[X-Fleet]` section: where a unit may run.

use std::collections::{BTreeMap, BTreeSet};

/// Scheduling requirements of one unit, with specifiers (`%n %N %p %i`) expanded against its name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID=`: a full machine id or its 8-character short form.
    pub machine_id: Option<String>,
    /// `MachineOf=`: units this one must share a machine with.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: key -> allowed values (OR within a key, AND across keys).
    pub machine_metadata: BTreeMap<String, BTreeSet<String>>,
    /// `Conflicts=`: Go `path.Match` globs of units that must not share this unit's machine.
    pub conflicts: Vec<String>,
    /// `Global=`: run on every machine that matches.
    pub global: bool,
    /// `Replaces=`: globs of units to push off this unit's machine.
    pub replaces: Vec<String>,
    /// `[X-Fleet]` keys fleet does not know (fleetctl warns about them).
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequirementsError(pub String);

impl Requirements {
    /// Reads `[X-Fleet]` of `file` for the unit called `unit_name`.
    pub fn from_unit(_file: &crate::UnitFile, _unit_name: &str) -> Requirements {
        todo!("unit helper")
    }

    /// fleet's `ValidateOptions` combination rules; the error names both options.
    pub fn validate(&self) -> Result<(), RequirementsError> {
        todo!("unit helper")
    }
}
