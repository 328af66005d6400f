//! The cluster's events: what happened to units and machines, told from one watch over the
//! whole keyspace (`fleetctl events`, the dashboard's live view).
//!
//! Each change of a record the watch delivers is read as a [`Fact`] (the one place here that
//! knows keys), and [`Deriver::on`], a pure function of what it saw before and the fact, turns
//! it into [`ClusterEvent`]s: a unit submitted, its desired state changed, placed, moved,
//! unscheduled, unplaceable, started, failed or stopped on a machine, destroyed; a machine
//! joined or lost; the engine leader changed.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry) {
//! let mut events = registry.follow_events();
//! while let Some(batch) = events.recv().await {
//!     for e in batch {
//!         println!("{} {} {} {}", e.kind, e.unit, e.machine, e.detail);
//!     }
//! }
//! # }
//! ```

use crate::codec::{decode_or_skip, Record};
use crate::follow::Raw;
use crate::instances::Instances;
use crate::keys::{KeyShape, Keys};
use crate::model::{DrainMark, GlobalJob, GlobalSummary, Job, MachineState, UnitState};
use crate::registry::Registry;
use crate::store::{EventKind as StoreEventKind, KeyValue, Revision};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// What kind of thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterEventKind {
    /// A unit was created; the detail is its desired state.
    Submitted,
    /// A unit's desired state changed; the detail says from what to what.
    Desired,
    /// A unit was destroyed.
    Destroyed,
    /// The engine placed a unit on a machine.
    Placed,
    /// The engine placed a unit on another machine than before; the detail names the old one.
    Moved,
    /// The engine took a unit off its machine.
    Unscheduled,
    /// The engine cannot place a unit; the detail is its reason.
    Unplaceable,
    /// A machine reports the unit active.
    Started,
    /// A machine reports the unit failed.
    Failed,
    /// A machine reports the unit inactive after it was something else.
    Stopped,
    /// A machine reports another active state (activating, deactivating, ...).
    State,
    /// A machine joined the cluster; the detail is its public IP.
    MachineJoined,
    /// A machine's presence expired or it left.
    MachineLost,
    /// A machine was drained: it takes no new units and its units move away.
    Drained,
    /// A drained machine was returned to service.
    Undrained,
    /// Another engine leads; the machine is the new leader.
    Leader,
    /// The registry was read again (after a compaction or an outage): changes while the watch
    /// was broken are not told one by one.
    Resync,
    /// Events were dropped for a reader too slow to take them; the detail says how many.
    Lagged,
}

impl ClusterEventKind {
    /// The kind as the API and fleetctl spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterEventKind::Submitted => "submitted",
            ClusterEventKind::Desired => "desired",
            ClusterEventKind::Destroyed => "destroyed",
            ClusterEventKind::Placed => "placed",
            ClusterEventKind::Moved => "moved",
            ClusterEventKind::Unscheduled => "unscheduled",
            ClusterEventKind::Unplaceable => "unplaceable",
            ClusterEventKind::Started => "started",
            ClusterEventKind::Failed => "failed",
            ClusterEventKind::Stopped => "stopped",
            ClusterEventKind::State => "state",
            ClusterEventKind::MachineJoined => "machine-joined",
            ClusterEventKind::MachineLost => "machine-lost",
            ClusterEventKind::Drained => "drained",
            ClusterEventKind::Undrained => "undrained",
            ClusterEventKind::Leader => "leader",
            ClusterEventKind::Resync => "resync",
            ClusterEventKind::Lagged => "lagged",
        }
    }
}

impl fmt::Display for ClusterEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEvent {
    /// The registry revision of the change (0 for markers that no change made).
    pub revision: Revision,
    /// When the watch delivered it to this reader.
    pub time: SystemTime,
    pub kind: ClusterEventKind,
    /// The unit concerned, empty if none.
    pub unit: String,
    /// The machine concerned, empty if none.
    pub machine: String,
    pub detail: String,
}

/// One record's change, as the events are derived from: `None` is a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    Job(String, Option<Job>),
    /// The machine the engine placed the unit on.
    Placement(String, Option<String>),
    /// Why the engine cannot place the unit.
    Reason(String, Option<String>),
    Machine(String, Option<MachineState>),
    /// A machine's state of a unit: a placed unit's published state, or a global unit's
    /// instance row (see [`crate::instances`]).
    State {
        unit: String,
        machine: String,
        state: Option<UnitState>,
    },
    /// A global unit's record, with the revision it was written at.
    Global(String, Option<(Job, Revision)>),
    /// A machine's summary of its global units.
    Summary(String, Option<GlobalSummary>),
    /// A machine's exception for a global unit (its instance not as its job wants it).
    Exception {
        unit: String,
        machine: String,
        state: Option<UnitState>,
    },
    /// The engine leader's machine id.
    Leader(Option<String>),
    /// A machine's drain mark.
    Drain(String, Option<DrainMark>),
}

/// What the events are told against: the last value seen of each record that matters.
/// Holds a few strings per unit and machine, like the copies of the other followers.
#[derive(Clone, Debug, Default)]
pub struct Deriver {
    desired: BTreeMap<String, unit::TargetState>,
    placements: BTreeMap<String, String>,
    /// Units whose machine was lost while placed there: their next placement is a move.
    orphans: BTreeMap<String, String>,
    reasons: BTreeMap<String, String>,
    machines: BTreeSet<String>,
    active: BTreeMap<(String, String), String>,
    leader: Option<String>,
    drained: BTreeSet<String>,
    /// Global units' instance rows: a unit as desired on a machine through its summary tells
    /// the same events as a published state would.
    instances: Instances,
}

impl Deriver {
    /// Takes `fact` (a change at `revision`, seen at `now`) in, and says what happened.
    pub fn on(&mut self, fact: Fact, revision: Revision, now: SystemTime) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        let rows = match fact {
            Fact::Global(unit, job) => self.instances.global(&unit, job),
            Fact::Summary(machine, summary) => self.instances.summary(&machine, summary),
            Fact::Exception {
                unit,
                machine,
                state,
            } => self.instances.exception(&unit, &machine, state),
            other => return self.told(other, revision, now),
        };
        for ((unit, machine), state) in rows {
            out.extend(self.told(
                Fact::State {
                    unit,
                    machine,
                    state,
                },
                revision,
                now,
            ));
        }
        out
    }

    /// The events of a fact about a record told directly (not a global unit's instance).
    fn told(&mut self, fact: Fact, revision: Revision, now: SystemTime) -> Vec<ClusterEvent> {
        let event = |kind, unit: &str, machine: &str, detail: String| ClusterEvent {
            revision,
            time: now,
            kind,
            unit: unit.to_string(),
            machine: machine.to_string(),
            detail,
        };
        let mut out = Vec::new();
        match fact {
            Fact::Global(..) | Fact::Summary(..) | Fact::Exception { .. } => {}
            Fact::Job(unit, Some(job)) => match self.desired.insert(unit.clone(), job.desired) {
                None => out.push(event(
                    ClusterEventKind::Submitted,
                    &unit,
                    "",
                    job.desired.to_string(),
                )),
                Some(before) if before != job.desired => out.push(event(
                    ClusterEventKind::Desired,
                    &unit,
                    "",
                    format!("{} (was {before})", job.desired),
                )),
                Some(_) => {}
            },
            Fact::Job(unit, None) => {
                if self.desired.remove(&unit).is_some() {
                    out.push(event(ClusterEventKind::Destroyed, &unit, "", String::new()));
                }
                self.reasons.remove(&unit);
                self.orphans.remove(&unit);
            }
            Fact::Placement(unit, Some(machine)) => {
                self.reasons.remove(&unit);
                let lost = self.orphans.remove(&unit);
                match self.placements.insert(unit.clone(), machine.clone()) {
                    Some(before) if before == machine => {}
                    Some(before) => out.push(event(
                        ClusterEventKind::Moved,
                        &unit,
                        &machine,
                        format!("from {before}"),
                    )),
                    None => match lost {
                        Some(before) if before != machine => out.push(event(
                            ClusterEventKind::Moved,
                            &unit,
                            &machine,
                            format!("from {before} (machine lost)"),
                        )),
                        _ => out.push(event(
                            ClusterEventKind::Placed,
                            &unit,
                            &machine,
                            String::new(),
                        )),
                    },
                }
            }
            Fact::Placement(unit, None) => {
                if let Some(before) = self.placements.remove(&unit) {
                    let detail = if self.orphans.contains_key(&unit) {
                        "its machine was lost"
                    } else {
                        ""
                    };
                    out.push(event(
                        ClusterEventKind::Unscheduled,
                        &unit,
                        &before,
                        detail.to_string(),
                    ));
                }
            }
            Fact::Reason(unit, Some(reason)) => {
                if self.reasons.get(&unit) != Some(&reason) {
                    out.push(event(
                        ClusterEventKind::Unplaceable,
                        &unit,
                        "",
                        reason.clone(),
                    ));
                    self.reasons.insert(unit, reason);
                }
            }
            Fact::Reason(unit, None) => {
                self.reasons.remove(&unit);
            }
            Fact::Machine(id, Some(m)) => {
                if self.machines.insert(id.clone()) {
                    let detail = if m.public_ip.is_empty() {
                        String::new()
                    } else {
                        format!("public IP {}", m.public_ip)
                    };
                    out.push(event(ClusterEventKind::MachineJoined, "", &id, detail));
                }
            }
            Fact::Machine(id, None) => {
                if self.machines.remove(&id) {
                    let units: Vec<&String> = self
                        .placements
                        .iter()
                        .filter(|(_, m)| **m == id)
                        .map(|(u, _)| u)
                        .collect();
                    let detail = match units.len() {
                        0 => "no units placed there".to_string(),
                        1 => "1 unit placed there".to_string(),
                        n => format!("{n} units placed there"),
                    };
                    for u in units {
                        self.orphans.insert(u.clone(), id.clone());
                    }
                    out.push(event(ClusterEventKind::MachineLost, "", &id, detail));
                }
            }
            Fact::State {
                unit,
                machine,
                state: Some(state),
            } => {
                let now_active = state.systemd.active.clone();
                let before = self
                    .active
                    .insert((unit.clone(), machine.clone()), now_active.clone());
                if before.as_deref() != Some(now_active.as_str()) {
                    let kind = match now_active.as_str() {
                        "active" => Some(ClusterEventKind::Started),
                        "failed" => Some(ClusterEventKind::Failed),
                        // A unit loaded and not started yet is inactive from the first report:
                        // only an inactive after something else is a stop.
                        "inactive" if before.is_some() => Some(ClusterEventKind::Stopped),
                        "inactive" => None,
                        _ => Some(ClusterEventKind::State),
                    };
                    if let Some(kind) = kind {
                        let mut detail = format!(
                            "{}/{}/{}",
                            state.systemd.load, state.systemd.active, state.systemd.sub
                        );
                        if let Some(reason) = &state.reason {
                            detail.push_str(": ");
                            detail.push_str(reason);
                        }
                        out.push(event(kind, &unit, &machine, detail));
                    }
                }
            }
            Fact::State {
                unit,
                machine,
                state: None,
            } => {
                self.active.remove(&(unit, machine));
            }
            Fact::Leader(Some(id)) => {
                if self.leader.as_ref() != Some(&id) {
                    out.push(event(
                        ClusterEventKind::Leader,
                        "",
                        &id,
                        "leads the engine".to_string(),
                    ));
                    self.leader = Some(id);
                }
            }
            Fact::Leader(None) => self.leader = None,
            Fact::Drain(id, Some(_)) => {
                if self.drained.insert(id.clone()) {
                    let units = self.placements.values().filter(|m| **m == id).count();
                    let detail = format!("{units} unit(s) placed there move away");
                    out.push(event(ClusterEventKind::Drained, "", &id, detail));
                }
            }
            Fact::Drain(id, None) => {
                if self.drained.remove(&id) {
                    out.push(event(ClusterEventKind::Undrained, "", &id, String::new()));
                }
            }
        }
        out
    }

    /// Takes in what exists now without telling any of it (the first read, or a re-read).
    pub fn reset(&mut self, facts: impl IntoIterator<Item = Fact>) {
        *self = Deriver::default();
        for fact in facts {
            self.on(fact, 0, SystemTime::UNIX_EPOCH);
        }
    }
}

/// The record at `key`, as a fact; `None` for keys that tell no event (bodies, schedule
/// entries, metadata) and for records that do not decode (logged).
fn fact(keys: &Keys, key: &str, value: Option<&KeyValue>) -> Option<Fact> {
    fn record<T: Record>(value: Option<&KeyValue>) -> Option<Option<T>> {
        match value {
            None => Some(None),
            Some(kv) => decode_or_skip(kv).map(Some),
        }
    }
    if let Some(unit) = String::under(&keys.jobs(), key) {
        return Some(Fact::Job(unit, record(value)?));
    }
    if let Some(unit) = String::under(&keys.placements(), key) {
        return Some(Fact::Placement(unit, record(value)?));
    }
    if let Some(unit) = String::under(&keys.reasons(), key) {
        return Some(Fact::Reason(unit, record(value)?));
    }
    if let Some(id) = String::under(&keys.machines(), key) {
        return Some(Fact::Machine(id, record(value)?));
    }
    if let Some((unit, machine)) = <(String, String)>::under(&keys.states(), key) {
        return Some(Fact::State {
            unit,
            machine,
            state: record(value)?,
        });
    }
    if let Some((unit, machine)) = <(String, String)>::under(&keys.global_states(), key) {
        return Some(Fact::Exception {
            unit,
            machine,
            state: record(value)?,
        });
    }
    if let Some(unit) = String::under(&keys.globals(), key) {
        let global: Option<GlobalJob> = record(value)?;
        return Some(Fact::Global(unit, global.map(|g| (g.job, g.revision))));
    }
    if let Some(machine) = String::under(&keys.global_summaries(), key) {
        return Some(Fact::Summary(machine, record(value)?));
    }
    if <()>::under(&keys.leader(), key).is_some() {
        return Some(Fact::Leader(record(value)?));
    }
    if let Some(id) = String::under(&keys.drains(), key) {
        return Some(Fact::Drain(id, record(value)?));
    }
    None
}

/// A stream of the cluster's events, from when it was made on. Following stops when it is
/// dropped.
pub struct EventFollower {
    raw: mpsc::Receiver<Raw>,
    keys: Keys,
    deriver: Deriver,
    /// Whether the first read was taken in: later reads are re-reads, told as `Resync`.
    started: bool,
}

impl EventFollower {
    /// The events of the next change(s), in revision order (possibly none for a change that
    /// tells nothing); `None` only if following ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Vec<ClusterEvent>> {
        let raw = self.raw.recv().await?;
        let now = SystemTime::now();
        Some(match raw {
            Raw::Reset(kvs) => {
                let revision = kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
                let keys = &self.keys;
                self.deriver
                    .reset(kvs.iter().filter_map(|kv| fact(keys, &kv.key, Some(kv))));
                if std::mem::replace(&mut self.started, true) {
                    vec![ClusterEvent {
                        revision,
                        time: now,
                        kind: ClusterEventKind::Resync,
                        unit: String::new(),
                        machine: String::new(),
                        detail: "the registry was read again; changes meanwhile are not shown"
                            .to_string(),
                    }]
                } else {
                    Vec::new()
                }
            }
            Raw::Events(events) => {
                let mut out = Vec::new();
                for e in &events {
                    let value = match e.kind {
                        StoreEventKind::Put => Some(&e.kv),
                        StoreEventKind::Delete => None,
                    };
                    if let Some(f) = fact(&self.keys, &e.kv.key, value) {
                        out.extend(self.deriver.on(f, e.kv.mod_revision, now));
                    }
                }
                out
            }
        })
    }
}

impl Registry {
    /// The cluster's events from now on, told from one watch over the whole keyspace (or reads
    /// every so often if the registry polls).
    pub fn follow_events(&self) -> EventFollower {
        let raw = self.follow_raw(self.keys.prefix().to_string());
        EventFollower {
            raw,
            keys: self.keys.clone(),
            deriver: Deriver::default(),
            started: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SystemdState;
    use unit::TargetState;
    use ClusterEventKind::*;

    fn job(desired: TargetState) -> Job {
        Job {
            name: "a.service".into(),
            hash: "1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9".parse().unwrap(),
            desired,
            global: false,
            x_fleet: None,
        }
    }

    fn state(active: &str, reason: Option<&str>) -> Option<UnitState> {
        Some(UnitState {
            name: "a.service".into(),
            machine_id: "m1".into(),
            hash: "1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9".parse().unwrap(),
            systemd: SystemdState {
                load: "loaded".into(),
                active: active.into(),
                sub: if active == "active" {
                    "running"
                } else {
                    "dead"
                }
                .into(),
            },
            agent_state: TargetState::Launched,
            reason: reason.map(str::to_string),
            global: false,
        })
    }

    fn st(machine: &str, s: Option<UnitState>) -> Fact {
        Fact::State {
            unit: "a.service".into(),
            machine: machine.into(),
            state: s,
        }
    }

    fn machine(id: &str) -> Fact {
        Fact::Machine(
            id.into(),
            Some(MachineState {
                id: id.into(),
                public_ip: "10.0.0.1".into(),
                ..Default::default()
            }),
        )
    }

    fn place(machine: Option<&str>) -> Fact {
        Fact::Placement("a.service".into(), machine.map(str::to_string))
    }

    type Told = Vec<(ClusterEventKind, &'static str, &'static str, &'static str)>;

    /// Each row: a fact, and the events it tells after the rows before it.
    fn check(rows: Vec<(Fact, Told)>) {
        let mut d = Deriver::default();
        for (i, (fact, want)) in rows.into_iter().enumerate() {
            let shown = format!("{fact:?}");
            let got: Vec<(ClusterEventKind, String, String, String)> = d
                .on(fact, i as i64 + 1, SystemTime::UNIX_EPOCH)
                .into_iter()
                .map(|e| {
                    assert_eq!(e.revision, i as i64 + 1);
                    (e.kind, e.unit, e.machine, e.detail)
                })
                .collect();
            let want: Vec<(ClusterEventKind, String, String, String)> = want
                .into_iter()
                .map(|(k, u, m, d)| (k, u.into(), m.into(), d.into()))
                .collect();
            assert_eq!(got, want, "row {i}: {shown}");
        }
    }

    #[test]
    fn a_unit_submitted_placed_started_stopped_and_destroyed() {
        let u = "a.service";
        check(vec![
            (
                machine("m1"),
                vec![(MachineJoined, "", "m1", "public IP 10.0.0.1")],
            ),
            // Announced again (a heartbeat): nothing new.
            (machine("m1"), vec![]),
            (
                Fact::Leader(Some("m1".into())),
                vec![(Leader, "", "m1", "leads the engine")],
            ),
            (Fact::Leader(Some("m1".into())), vec![]),
            (
                Fact::Job(u.into(), Some(job(TargetState::Launched))),
                vec![(Submitted, u, "", "launched")],
            ),
            (place(Some("m1")), vec![(Placed, u, "m1", "")]),
            // First report of a loaded unit not started yet: inactive tells nothing.
            (st("m1", state("inactive", None)), vec![]),
            (
                st("m1", state("active", None)),
                vec![(Started, u, "m1", "loaded/active/running")],
            ),
            (st("m1", state("active", None)), vec![]),
            (
                Fact::Job(u.into(), Some(job(TargetState::Loaded))),
                vec![(Desired, u, "", "loaded (was launched)")],
            ),
            (
                st("m1", state("inactive", None)),
                vec![(Stopped, u, "m1", "loaded/inactive/dead")],
            ),
            (
                st("m1", state("failed", Some("exit 1"))),
                vec![(Failed, u, "m1", "loaded/failed/dead: exit 1")],
            ),
            (place(None), vec![(Unscheduled, u, "m1", "")]),
            (st("m1", None), vec![]),
            (Fact::Job(u.into(), None), vec![(Destroyed, u, "", "")]),
            // A delete of something never seen tells nothing.
            (Fact::Job(u.into(), None), vec![]),
        ]);
    }

    #[test]
    fn a_lost_machine_and_its_units_moving() {
        let u = "a.service";
        check(vec![
            (
                machine("m1"),
                vec![(MachineJoined, "", "m1", "public IP 10.0.0.1")],
            ),
            (
                machine("m2"),
                vec![(MachineJoined, "", "m2", "public IP 10.0.0.1")],
            ),
            (
                Fact::Job(u.into(), Some(job(TargetState::Launched))),
                vec![(Submitted, u, "", "launched")],
            ),
            (place(Some("m1")), vec![(Placed, u, "m1", "")]),
            (
                Fact::Machine("m1".into(), None),
                vec![(MachineLost, "", "m1", "1 unit placed there")],
            ),
            // The engine takes it off the lost machine, then places it elsewhere.
            (
                place(None),
                vec![(Unscheduled, u, "m1", "its machine was lost")],
            ),
            (
                place(Some("m2")),
                vec![(Moved, u, "m2", "from m1 (machine lost)")],
            ),
            // Or rewrites the placement in one go.
            (place(Some("m1")), vec![(Moved, u, "m1", "from m2")]),
            (place(Some("m1")), vec![]),
            (
                Fact::Machine("m2".into(), None),
                vec![(MachineLost, "", "m2", "no units placed there")],
            ),
        ]);
    }

    #[test]
    fn a_machine_drained_and_returned_to_service() {
        let u = "a.service";
        let drain =
            |mark: Option<u64>| Fact::Drain("m1".into(), mark.map(|since| DrainMark { since }));
        check(vec![
            (
                machine("m1"),
                vec![(MachineJoined, "", "m1", "public IP 10.0.0.1")],
            ),
            (
                Fact::Job(u.into(), Some(job(TargetState::Launched))),
                vec![(Submitted, u, "", "launched")],
            ),
            (place(Some("m1")), vec![(Placed, u, "m1", "")]),
            (
                drain(Some(1)),
                vec![(Drained, "", "m1", "1 unit(s) placed there move away")],
            ),
            // Marking a drained machine again tells nothing new.
            (drain(Some(2)), vec![]),
            (drain(None), vec![(Undrained, "", "m1", "")]),
            (drain(None), vec![]),
        ]);
    }

    #[test]
    fn unplaceable_units_are_told_once_per_reason() {
        let u = "a.service";
        let reason = |r: Option<&str>| Fact::Reason(u.into(), r.map(str::to_string));
        check(vec![
            (
                reason(Some("no machine matches MachineMetadata region=north")),
                vec![(
                    Unplaceable,
                    u,
                    "",
                    "no machine matches MachineMetadata region=north",
                )],
            ),
            (
                reason(Some("no machine matches MachineMetadata region=north")),
                vec![],
            ),
            (
                reason(Some("conflicts")),
                vec![(Unplaceable, u, "", "conflicts")],
            ),
            (reason(None), vec![]),
            (place(Some("m1")), vec![(Placed, u, "m1", "")]),
        ]);
    }

    /// A global unit as desired on a machine through its summary tells what its published
    /// state would: started; a failure is an exception, and its removal (the unit running
    /// again, covered by the summary) a start again.
    #[test]
    fn global_instances_tell_events_through_summaries_and_exceptions() {
        let g = "g.service";
        let mut j = job(TargetState::Launched);
        j.name = g.into();
        j.global = true;
        let summary = |revision: Revision| {
            Fact::Summary(
                "m1".into(),
                Some(GlobalSummary {
                    revision,
                    absent: BTreeSet::new(),
                }),
            )
        };
        let failed = UnitState {
            name: g.into(),
            systemd: SystemdState {
                load: "loaded".into(),
                active: "failed".into(),
                sub: "failed".into(),
            },
            reason: Some("exit 1".into()),
            ..crate::desired_instance(&j, "m1").unwrap()
        };
        let exception = |state: Option<UnitState>| Fact::Exception {
            unit: g.into(),
            machine: "m1".into(),
            state,
        };
        check(vec![
            (summary(3), vec![]),
            (Fact::Global(g.into(), Some((j.clone(), 4))), vec![]),
            (
                summary(4),
                vec![(Started, g, "m1", "loaded/active/running")],
            ),
            (
                exception(Some(failed)),
                vec![(Failed, g, "m1", "loaded/failed/failed: exit 1")],
            ),
            (
                exception(None),
                vec![(Started, g, "m1", "loaded/active/running")],
            ),
            // The machine gone: its row goes silently, as a published state's would.
            (Fact::Summary("m1".into(), None), vec![]),
        ]);
    }

    #[test]
    fn a_reset_takes_the_present_in_silently() {
        let mut d = Deriver::default();
        d.reset(vec![
            machine("m1"),
            Fact::Job("a.service".into(), Some(job(TargetState::Launched))),
            place(Some("m1")),
            st("m1", state("active", None)),
        ]);
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(d.on(machine("m1"), 5, now), vec![]);
        assert_eq!(d.on(place(Some("m1")), 6, now), vec![]);
        assert_eq!(d.on(st("m1", state("active", None)), 7, now), vec![]);
        let lost = d.on(Fact::Machine("m1".into(), None), 8, now);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].detail, "1 unit placed there");
    }

    #[test]
    fn keys_read_as_facts_and_others_tell_nothing() {
        let keys = Keys::new("/t");
        let kv = |key: String, value: &str| KeyValue {
            key,
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let p = kv(keys.placement("a.service"), "m1");
        assert_eq!(
            fact(&keys, &p.key, Some(&p)),
            Some(Fact::Placement("a.service".into(), Some("m1".into())))
        );
        assert_eq!(
            fact(&keys, &keys.state("a.service", "m1"), None),
            Some(st("m1", None))
        );
        assert_eq!(
            fact(&keys, &keys.global_state("a.service", "m1"), None),
            Some(Fact::Exception {
                unit: "a.service".into(),
                machine: "m1".into(),
                state: None
            })
        );
        assert_eq!(fact(&keys, &keys.leader(), None), Some(Fact::Leader(None)));
        let bad = kv(keys.job("a.service"), "not json");
        assert_eq!(fact(&keys, &bad.key, Some(&bad)), None);
        let s = kv(keys.schedule("m1", "a.service"), "{}");
        assert_eq!(fact(&keys, &s.key, Some(&s)), None);
        assert_eq!(fact(&keys, &keys.metadata("m1", "zone"), None), None);
        assert_eq!(
            fact(&keys, &keys.drain("m1"), None),
            Some(Fact::Drain("m1".into(), None))
        );
    }
}
