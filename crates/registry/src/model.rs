//! fleet's records as the registry stores them (JSON values under the keys of [`crate::keys`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use unit::{UnitFile, UnitHash};

/// A unit's desired state (fleet's "target state"): fleet's names, on the wire.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    #[default]
    Inactive,
    Loaded,
    Launched,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid state {0:?}: want one of inactive, loaded, launched")]
pub struct TargetStateError(pub String);

impl FromStr for TargetState {
    type Err = TargetStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inactive" => Ok(TargetState::Inactive),
            "loaded" => Ok(TargetState::Loaded),
            "launched" => Ok(TargetState::Launched),
            other => Err(TargetStateError(other.to_string())),
        }
    }
}

/// The job record of one unit (`job/<unit>`): which body it runs and what the user wants of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub hash: UnitHash,
    #[serde(rename = "desiredState")]
    pub desired: TargetState,
    #[serde(default)]
    pub global: bool,
}

/// The record of a global unit under `global/<unit>`: its job and its normalized unit text.
/// Every agent needs the bodies of all global units; carrying the text here lets the watch that
/// delivers the record deliver the body too, instead of every machine reading every body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalJob {
    #[serde(flatten)]
    pub job: Job,
    pub raw: String,
}

/// A job together with its unit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub job: Job,
    pub file: UnitFile,
}

/// What the engine tells one machine about one unit (`schedule/<machine>/<unit>`): the agent
/// needs nothing else to act, so it watches only its own schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    pub hash: UnitHash,
    #[serde(rename = "desiredState")]
    pub desired: TargetState,
}

/// A machine's presence record (`machines/<id>`), attached to the machine's lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub id: String,
    #[serde(rename = "publicIP", default)]
    pub public_ip: String,
    /// Metadata from the machine's configuration; [`crate::Registry::machines`] merges in the
    /// dynamic metadata set through the API.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
    #[serde(rename = "disableEngine", default)]
    pub disable_engine: bool,
}

impl MachineState {
    /// fleet's `MatchID`: the full id or its 8-character short form.
    pub fn matches_id(&self, id: &str) -> bool {
        self.id == id || (id.len() == 8 && self.id.starts_with(id))
    }
}

/// systemd's three state names for a unit, as systemd spells them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SystemdState {
    #[serde(rename = "loadState")]
    pub load: String,
    #[serde(rename = "activeState")]
    pub active: String,
    #[serde(rename = "subState")]
    pub sub: String,
}

/// What one machine reports about one unit (`states/<unit>/<machine>`), attached to that
/// machine's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    pub name: String,
    #[serde(rename = "machineID")]
    pub machine_id: String,
    pub hash: UnitHash,
    #[serde(flatten)]
    pub systemd: SystemdState,
    /// How far the agent has taken the unit (`loaded` or `launched`): the basis of the API's
    /// `currentState`.
    #[serde(rename = "agentState")]
    pub agent_state: TargetState,
    /// Why the unit manager could not do what was asked, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
