//! fleet's records as the registry stores them (see the codec of each kind in the registry's
//! `codec` module, and the keys in its `keys` module).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use unit::{UnitFile, UnitHash};

pub use unit::{TargetState, TargetStateError};

/// The job record of one unit (`job/<unit>`): which body it runs and what the user wants of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub hash: UnitHash,
    #[serde(rename = "desiredState")]
    pub desired: TargetState,
    #[serde(default)]
    pub global: bool,
    /// The unit's `[X-Fleet]` options (name, value) in file order, then its `[Unit]`
    /// dependency options (see [`Job::fleet_options`]): all the engine needs to place the unit, so that it never reads bodies. `None` in records written before this
    /// field existed (the engine then reads the body).
    #[serde(default, rename = "xFleet", skip_serializing_if = "Option::is_none")]
    pub x_fleet: Option<Vec<(String, String)>>,
}

impl Job {
    /// The `[X-Fleet]` options of `file`, as [`Job::x_fleet`] carries them, followed by its
    /// `[Unit]` dependency options (`Requires=`, `Wants=`, ...: the engine places a unit with
    /// the submitted units it depends on). No `[X-Fleet]` key has a dependency option's name,
    /// so the names alone say which section each came from.
    pub fn fleet_options(file: &UnitFile) -> Vec<(String, String)> {
        let fleet = file
            .options
            .iter()
            .filter(|o| o.section == unit::FLEET_SECTION);
        let deps = file
            .options
            .iter()
            .filter(|o| o.section == unit::deps::UNIT_SECTION && is_dependency(&o.name));
        fleet
            .chain(deps)
            .map(|o| (o.name.clone(), o.value.clone()))
            .collect()
    }

    /// The unit's placement requirements from the record alone, if it carries its options.
    pub fn requirements(&self) -> Option<unit::Requirements> {
        let options = self.x_fleet.as_ref()?;
        let file = UnitFile {
            options: options
                .iter()
                .map(|(name, value)| unit::UnitOption {
                    section: if is_dependency(name) {
                        unit::deps::UNIT_SECTION
                    } else {
                        unit::FLEET_SECTION
                    }
                    .to_string(),
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        };
        Some(unit::Requirements::from_unit(&file, &self.name))
    }
}

fn is_dependency(option: &str) -> bool {
    unit::DependencyKind::ALL
        .iter()
        .any(|k| k.as_str() == option)
}

/// The record of a global unit under `global/<unit>`: its job and its normalized unit text.
/// Every agent needs the bodies of all global units; carrying the text here lets the watch that
/// delivers the record deliver the body too, instead of every machine reading every body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalJob {
    #[serde(flatten)]
    pub job: Job,
    pub raw: String,
    /// The unit's rollout (`rollout/<unit>`), copied here by every write of either, so that
    /// new content and the rollout that holds machines back on the old one reach an agent in
    /// one delivery: followed apart, an agent could see the content first and restart the unit
    /// ahead of its turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<GlobalRollout>,
    /// The registry revision the unit's desired outcome (its job) was last written at, as read
    /// (not stored: the key's mod revision, or `outcome_since`): what a machine's
    /// [`GlobalSummary`] vouches up to.
    #[serde(skip)]
    pub revision: crate::store::Revision,
    /// Set when the record is rewritten for its rollout alone: the revision its job was last
    /// written at. A rollout changes no machine's desired outcome, so the machines' summaries
    /// still vouch for the unit; without it every rollout step would hide the unit's rows on
    /// every machine until each wrote its summary again.
    #[serde(
        default,
        rename = "outcomeSince",
        skip_serializing_if = "Option::is_none"
    )]
    pub outcome_since: Option<crate::store::Revision>,
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
    /// The unit's text, when the engine had it: the watch that tells the machine about the
    /// unit then brings its body too, instead of the agent reading it (one etcd request per
    /// unit placed, each costing etcd a copy of its write buffer). Readers keep the hash and
    /// drop the text once parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
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

/// A machine's drain mark (`drain/<machine>`): it takes no new units and the engine moves its
/// units elsewhere, one at a time. Not under the machine's lease: it outlives restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainMark {
    /// When the machine was drained, in seconds since the Unix epoch.
    pub since: u64,
}

/// A rolling replace of a global unit in progress (`rollout/<unit>`): while the unit's job
/// names `new`, a machine not in `allowed` keeps running `old`, so that new content reaches the
/// machines a few at a time instead of all at once (fleet's issue 960). Not under any lease: a
/// rollout stopped by a failure stays until it is resumed, finished or dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRollout {
    /// The content machines keep until they are allowed the new one.
    pub old: UnitHash,
    /// The content the unit's job names.
    pub new: UnitHash,
    /// The machines allowed `new`.
    #[serde(default)]
    pub allowed: std::collections::BTreeSet<String>,
}

impl GlobalRollout {
    /// The content `machine` is to run of a global unit whose job names `job`: `old` while
    /// the rollout holds it back, else the job's.
    pub fn hash_for(&self, job: UnitHash, machine: &str) -> UnitHash {
        if job == self.new && !self.allowed.contains(machine) {
            self.old
        } else {
            job
        }
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
    /// An instance of a global unit: published under `gstates/`, apart from the states of
    /// placed units, so that listing units never reads one state per global unit per machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

/// What one machine vouches for about the global units (`gsummary/<machine>`, under its
/// lease): every global unit whose record was last written at or before `revision` is, on this
/// machine, exactly as its job wants it ([`desired_instance`]), unless the machine published a
/// state of its own for it (an exception, under `gstates/<unit>/<machine>`) or names it in
/// `absent` (not run here: its metadata does not match, it conflicts with another unit, or it
/// is not loaded yet). A few dozen bytes per machine, however many global units there are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalSummary {
    pub revision: crate::store::Revision,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub absent: BTreeSet<String>,
}

impl GlobalSummary {
    /// Whether the machine vouches for `job`, whose global record was last written at
    /// `written`: the instance is then as [`desired_instance`] says, unless an exception was
    /// published.
    pub fn vouches(&self, job: &Job, written: crate::store::Revision) -> bool {
        written <= self.revision && !self.absent.contains(&job.name)
    }
}

/// The state a machine publishes for global unit `job` when it runs it as its job wants: the
/// body of the job, loaded, and active/running if launched, inactive/dead if only loaded.
/// `None` for a job that wants the unit inactive (no machine holds it then). A machine whose
/// state equals this publishes none (its [`GlobalSummary`] covers it), and readers compute it
/// back from the job: one function on both sides keeps the two identical.
pub fn desired_instance(job: &Job, machine: &str) -> Option<UnitState> {
    let (active, sub) = match job.desired {
        TargetState::Launched => ("active", "running"),
        TargetState::Loaded => ("inactive", "dead"),
        TargetState::Inactive => return None,
    };
    Some(UnitState {
        name: job.name.clone(),
        machine_id: machine.to_string(),
        hash: job.hash,
        systemd: SystemdState {
            load: "loaded".to_string(),
            active: active.to_string(),
            sub: sub.to_string(),
        },
        agent_state: job.desired,
        reason: None,
        global: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_records_carry_what_placement_needs() {
        let text = "[Unit]\nDescription=x\nRequires=db@%i.service\nWants=a.service b.service\n\
                    \n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n\
                    MachineOf=db@%i.service\nConflicts=web@*.service\nMachineMetadata=zone=a zone=b\n";
        let file = UnitFile::parse(text).unwrap();
        let name = "web@3.service";
        let job = Job {
            name: name.into(),
            hash: file.hash(),
            desired: TargetState::Launched,
            global: false,
            x_fleet: Some(Job::fleet_options(&file)),
        };
        let read: Job = serde_json::from_slice(&serde_json::to_vec(&job).unwrap()).unwrap();
        let req = read.requirements().unwrap();
        assert_eq!(req, unit::Requirements::from_unit(&file, name));
        assert_eq!(req.machine_of, vec!["db@3.service".to_string()]);
        assert_eq!(req.dependencies.colocated().count(), 3);
        assert!(req.unknown.is_empty(), "{:?}", req.unknown);
        // A unit without [X-Fleet] carries an empty list: known to need nothing.
        let plain = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
        assert_eq!(Job::fleet_options(&plain), vec![]);
        // Records written before the field existed read as "unknown", not "nothing".
        let old: Job = serde_json::from_str(
            r#"{"name":"a.service","hash":"1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9","desiredState":"launched"}"#,
        )
        .unwrap();
        assert_eq!(old.x_fleet, None);
        assert_eq!(old.requirements(), None);
    }
}
