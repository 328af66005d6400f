//! The entities of fleet's API v1 as they travel on the wire.
//!
//! Field names and `omitempty` behaviour are fleet's (`schema/v1.json`): an empty string, list
//! or map is left out of the JSON, and a missing or `null` field reads as empty. Fields are
//! declared in the order fleet's generated Go structs printed them.
//!
//! ```
//! let unit: api::types::Unit =
//!     serde_json::from_str(r#"{"name":"hello.service","desiredState":"launched"}"#).unwrap();
//! assert_eq!(unit.desired(), Ok(Some(api::TargetState::Launched)));
//! assert_eq!(serde_json::to_string(&unit).unwrap(), r#"{"desiredState":"launched","name":"hello.service"}"#);
//! ```

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

pub use unit::{TargetState, TargetStateError};

/// Reads `null` as the type's default, as Go's decoder does for strings, slices and maps.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One machine of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    /// Configured metadata with the metadata set through `PATCH /machines` merged over it.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metadata: BTreeMap<String, String>,
    #[serde(
        rename = "primaryIP",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinePage {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub machines: Vec<Machine>,
    #[serde(
        rename = "nextPageToken",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_page_token: String,
}

/// One `Name=Value` line of a unit file section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOption {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub section: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub value: String,
}

impl From<&unit::UnitOption> for UnitOption {
    fn from(o: &unit::UnitOption) -> UnitOption {
        UnitOption {
            name: o.name.clone(),
            section: o.section.clone(),
            value: o.value.clone(),
        }
    }
}

impl From<&UnitOption> for unit::UnitOption {
    fn from(o: &UnitOption) -> unit::UnitOption {
        unit::UnitOption {
            section: o.section.clone(),
            name: o.name.clone(),
            value: o.value.clone(),
        }
    }
}

/// A unit: its file (as options), what the user wants of it and where it is.
///
/// `desiredState` and `currentState` stay strings on the wire so that a bad value can be
/// reported by name instead of failing the whole decode; [`Unit::desired`] and
/// [`Unit::current`] read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    #[serde(
        rename = "currentState",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub current_state: String,
    #[serde(
        rename = "desiredState",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub desired_state: String,
    /// The machine the unit is scheduled to; empty when unscheduled and for global units.
    #[serde(
        rename = "machineID",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<UnitOption>,
    /// Ours, not fleet's: why the engine cannot place the unit. Ignored on `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Unit {
    /// The desired state, `None` when not given.
    pub fn desired(&self) -> Result<Option<TargetState>, TargetStateError> {
        parse_state(&self.desired_state)
    }

    /// The current state, `None` when not given (global units on `GET /units/<name>`).
    pub fn current(&self) -> Result<Option<TargetState>, TargetStateError> {
        parse_state(&self.current_state)
    }

    /// The unit's options as a unit file.
    pub fn file(&self) -> unit::UnitFile {
        unit::UnitFile::from_options(self.options.iter().map(unit::UnitOption::from).collect())
    }

    /// A unit to submit: name, file and desired state.
    pub fn new(name: &str, file: &unit::UnitFile, desired: TargetState) -> Unit {
        Unit {
            name: name.to_string(),
            options: file.options.iter().map(UnitOption::from).collect(),
            desired_state: desired.to_string(),
            ..Unit::default()
        }
    }
}

fn parse_state(s: &str) -> Result<Option<TargetState>, TargetStateError> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPage {
    #[serde(
        rename = "nextPageToken",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_page_token: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub units: Vec<Unit>,
}

/// What one machine reports about one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub hash: String,
    #[serde(
        rename = "machineID",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        rename = "systemdActiveState",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_active_state: String,
    #[serde(
        rename = "systemdLoadState",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_load_state: String,
    #[serde(
        rename = "systemdSubState",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_sub_state: String,
    /// Ours, not fleet's: why the machine's unit manager could not do what was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatePage {
    #[serde(
        rename = "nextPageToken",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_page_token: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub states: Vec<UnitState>,
}

/// The value of a metadata `add`/`replace`: fleet's wire shape nests it (`{"value":"x"}`);
/// its documentation showed a plain string, which is accepted too. Sent nested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetadataValue {
    Nested { value: String },
    Plain(String),
}

impl MetadataValue {
    pub fn as_str(&self) -> &str {
        match self {
            MetadataValue::Nested { value } | MetadataValue::Plain(value) => value,
        }
    }
}

/// One operation of `PATCH /machines`:
/// `{"op":"add","path":"/<machineID>/metadata/<key>","value":{"value":"x"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMetadataOp {
    /// `add`, `remove` or `replace`.
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<MetadataValue>,
}

impl MachineMetadataOp {
    /// Sets `key` on `machine` (fleet's `add`; `replace` does the same).
    pub fn set(machine: &str, key: &str, value: &str) -> MachineMetadataOp {
        MachineMetadataOp {
            op: "add".into(),
            path: format!("/{machine}/metadata/{key}"),
            value: Some(MetadataValue::Nested {
                value: value.into(),
            }),
        }
    }

    /// Removes `key` from `machine`.
    pub fn remove(machine: &str, key: &str) -> MachineMetadataOp {
        MachineMetadataOp {
            op: "remove".into(),
            path: format!("/{machine}/metadata/{key}"),
            value: None,
        }
    }
}

/// The body of every error response: `{"error":{"code":404,"message":"unit does not exist"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorContent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorContent {
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_are_omitted_and_null_reads_as_empty() {
        let u: Unit =
            serde_json::from_str(r#"{"name":null,"options":null,"machineID":"m"}"#).unwrap();
        assert_eq!(
            u,
            Unit {
                machine_id: "m".into(),
                ..Unit::default()
            }
        );
        assert_eq!(serde_json::to_string(&u).unwrap(), r#"{"machineID":"m"}"#);
        assert_eq!(
            serde_json::to_string(&MachinePage::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn reason_is_ours_and_omitted_when_none() {
        let mut u = Unit {
            name: "a.service".into(),
            ..Unit::default()
        };
        assert!(!serde_json::to_string(&u).unwrap().contains("reason"));
        u.reason = Some("no machine matches MachineMetadata".into());
        let back: Unit = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn metadata_value_reads_nested_and_plain() {
        let nested: MachineMetadataOp =
            serde_json::from_str(r#"{"op":"add","path":"/m/metadata/k","value":{"value":"x"}}"#)
                .unwrap();
        let plain: MachineMetadataOp =
            serde_json::from_str(r#"{"op":"add","path":"/m/metadata/k","value":"x"}"#).unwrap();
        assert_eq!(nested.value.as_ref().map(MetadataValue::as_str), Some("x"));
        assert_eq!(plain.value.as_ref().map(MetadataValue::as_str), Some("x"));
        assert_eq!(
            serde_json::to_string(&MachineMetadataOp::set("m", "k", "x")).unwrap(),
            r#"{"op":"add","path":"/m/metadata/k","value":{"value":"x"}}"#
        );
    }

    #[test]
    fn states_parse_or_name_the_bad_value() {
        let u = Unit {
            desired_state: "started".into(),
            ..Unit::default()
        };
        assert!(u.desired().unwrap_err().to_string().contains("started"));
        assert_eq!(Unit::default().desired(), Ok(None));
    }
}

/// `POST /fleet/v1/plan`: units to plan, by name (as the registry has them) and as unit files
/// not submitted yet (`name`, `options` and `desiredState` of a [`Unit`]; `launched` when the
/// state is empty). Not one of fleet's resources: an extension beside them, that changes
/// nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub units: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub files: Vec<Unit>,
}

/// The answer of `/fleet/v1/plan` and `/fleet/v1/why/<unit>`: one scheduling pass over the
/// answering fleetd's snapshot of the registry. Advisory: the leader decides on its own snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanAnswer {
    #[serde(default, deserialize_with = "null_as_default")]
    pub units: Vec<UnitPlan>,
    /// Other units the same pass would move.
    #[serde(default, deserialize_with = "null_as_default")]
    pub moves: Vec<PlanMove>,
}

/// Where one unit is, where it would go, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPlan {
    pub name: String,
    #[serde(default)]
    pub global: bool,
    /// `place`, `keep`, `move`, `unplace`, `none` or `global`.
    pub action: String,
    /// The machine it is on now, empty if none.
    #[serde(
        rename = "machineBefore",
        default,
        deserialize_with = "null_as_default"
    )]
    pub machine_before: String,
    /// The machine it would be on, empty if none.
    #[serde(rename = "machineID", default, deserialize_with = "null_as_default")]
    pub machine_id: String,
    pub reason: String,
    /// Every machine's verdict, sorted by machine id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub machines: Vec<MachineVerdict>,
}

/// One machine's verdict on one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineVerdict {
    #[serde(rename = "machineID")]
    pub machine_id: String,
    pub fits: bool,
    pub verdict: String,
}

/// A unit not asked about that the same pass would move (empty `from`: placed; empty `to`:
/// taken off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMove {
    pub unit: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub from: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub to: String,
}

/// The answer of `GET /fleet/v1/drain`: every drained machine and what becomes of its units.
/// Not one of fleet's resources: an extension beside them (fleet's machine entity is left as
/// fleet has it), and not in the discovery document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainPage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub machines: Vec<DrainedMachine>,
}

/// A rolling replace of a global unit (`GET`/`PUT /fleet/v1/rollouts/<unit>`): while the
/// unit's content is `newHash`, the machines not in `allowedMachines` keep running `oldHash`.
/// An extension beside fleet's resources, not in the discovery document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRollout {
    /// The unit (filled in by the server; a PUT names it in its path).
    #[serde(default)]
    pub name: String,
    #[serde(rename = "oldHash")]
    pub old_hash: String,
    #[serde(rename = "newHash")]
    pub new_hash: String,
    #[serde(
        rename = "allowedMachines",
        default,
        deserialize_with = "null_as_default"
    )]
    pub allowed_machines: Vec<String>,
}

/// `GET /fleet/v1/leases`: each present machine's presence lease. An extension beside fleet's
/// resources, not in the discovery document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeasePage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub machines: Vec<MachineLease>,
}

/// One machine's presence lease: `granted - remaining` is the time since its last renewal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineLease {
    #[serde(rename = "machineID")]
    pub machine_id: String,
    /// Seconds left before the lease expires.
    #[serde(default)]
    pub remaining: f64,
    /// The TTL granted, in seconds; absent when the store does not tell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<f64>,
}

/// One drained machine (`GET`/`PUT /fleet/v1/drain/<machineID>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainedMachine {
    #[serde(rename = "machineID")]
    pub machine_id: String,
    /// When it was drained, in seconds since the Unix epoch.
    #[serde(default)]
    pub since: u64,
    /// Whether the machine is in the cluster now (a drained machine that left stays drained).
    #[serde(default)]
    pub present: bool,
    /// The non-global units still scheduled on it, by name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub units: Vec<DrainedUnit>,
}

/// A unit still on a drained machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainedUnit {
    pub name: String,
    /// `moves` (its turn: the engine moves it now, to `machineID`), `waits` (it can move, after
    /// the unit in motion runs at its new place) or `stays` (it cannot move: `reason`).
    pub status: String,
    /// Where it moves, for `moves`.
    #[serde(rename = "machineID", default, deserialize_with = "null_as_default")]
    pub machine_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub reason: String,
}

impl DrainedMachine {
    /// Whether the drain is done: every unit left on the machine stays there.
    pub fn settled(&self) -> bool {
        self.units.iter().all(|u| u.status == "stays")
    }
}

/// A unit's recent output (`GET /fleet/v1/output/<unit>`): an extension beside fleet's
/// resources, answered by the fleetd whose process supervisor runs the unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOutput {
    pub unit: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub lines: Vec<String>,
}

/// One of the cluster's events, as `GET /fleet/v1/events` sends it (the `data` of a
/// server-sent event): an extension beside fleet's resources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The registry revision of the change (0 for markers such as `lagged`).
    #[serde(default)]
    pub revision: i64,
    /// When the answering fleetd saw it, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// `submitted`, `desired`, `destroyed`, `placed`, `moved`, `unscheduled`, `unplaceable`,
    /// `started`, `failed`, `stopped`, `state`, `machine-joined`, `machine-lost`, `drained`,
    /// `undrained`, `leader`, `resync` or `lagged`.
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub unit: String,
    #[serde(rename = "machineID", default, deserialize_with = "null_as_default")]
    pub machine_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub detail: String,
    /// One of the recent events a stream starts with (true), rather than one that happened
    /// after the request (false): what a reader that reads the current state as it connects
    /// already has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recent: bool,
}

/// Which events a reader wants: a unit name glob (Go's `path.Match`, as fleet's other globs)
/// and a machine (its id or the 8-character short form). Empty fields match everything; markers
/// (`lagged`, `resync`) concern every reader and always match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub unit: String,
    pub machine: String,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        if e.kind == "lagged" || e.kind == "resync" {
            return true;
        }
        let unit_ok = self.unit.is_empty() || unit::glob::path_match(&self.unit, &e.unit);
        let machine_ok = self.machine.is_empty()
            || e.machine_id == self.machine
            || (self.machine.len() == 8 && e.machine_id.starts_with(&self.machine));
        unit_ok && machine_ok
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn globs_and_filters() {
        for (p, t, want) in [
            ("*", "a.service", true),
            ("web@*.service", "web@1.service", true),
            ("web@*.service", "web@1.socket", false),
            ("a?.service", "ab.service", true),
            ("a?.service", "a.service", false),
            ("*.service", "", false),
            ("", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(unit::glob::path_match(p, t), want, "{p:?} {t:?}");
        }
        let e = |kind: &str, unit: &str, machine: &str| Event {
            kind: kind.into(),
            unit: unit.into(),
            machine_id: machine.into(),
            ..Default::default()
        };
        let f = EventFilter {
            unit: "web*".into(),
            machine: "0123456789abcdef".into(),
        };
        assert!(f.matches(&e("placed", "web.service", "0123456789abcdef")));
        assert!(!f.matches(&e("placed", "db.service", "0123456789abcdef")));
        assert!(!f.matches(&e("placed", "web.service", "fedcba9876543210")));
        assert!(f.matches(&e("lagged", "", "")));
        let short = EventFilter {
            machine: "01234567".into(),
            ..Default::default()
        };
        assert!(short.matches(&e("machine-lost", "", "0123456789abcdef")));
    }
}
