//! The leader's decisions as one state machine, in the shape of etcd's raft `Ready` hand-off:
//! the driver ([`crate::engine`]) feeds it the registry's changes and the outcomes of its
//! effects with [`Core::on`], then asks [`Core::ready`] what to do now. No clock, no runtime,
//! no I/O: time comes in as an argument.
//!
//! ```
//! use engine::core::{Core, Effect, Input};
//! use registry::{Job, MachineState, TargetState, Update};
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! let now = Instant::now();
//! let mut core = Core::new(Duration::from_secs(1), now);
//! let job = Job {
//!     name: "hello.service".into(),
//!     hash: unit::UnitHash([1; 20]),
//!     desired: TargetState::Launched,
//!     global: false,
//!     x_fleet: Some(vec![]),
//! };
//! core.on(Input::Jobs(Update::Reset(vec![(job.name.clone(), job)])));
//! let m1 = MachineState { id: "m1".into(), ..MachineState::default() };
//! core.on(Input::Machines(Update::Reset(vec![("m1".into(), m1)])));
//! for input in [
//!     Input::Metadata(Update::Reset(vec![])),
//!     Input::Schedule(Update::Reset(vec![])),
//!     Input::Reasons(Update::Reset(vec![])),
//!     Input::Texts(Update::Reset(vec![])),
//!     Input::Drains(Update::Reset(vec![])),
//! ] {
//!     core.on(input);
//! }
//! let ready = core.ready(now);
//! assert!(matches!(&ready.effects[..], [Effect::Write(changes)] if changes.len() == 1));
//! ```

use crate::model::Model;
use registry::{
    DrainMark, Job, MachineState, ScheduleChange, ScheduleEntry, TargetState, UnitState, Update,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use unit::{UnitFile, UnitHash};

/// What happened: the driver's news for the core.
#[derive(Debug)]
pub enum Input {
    Jobs(Update<String, Job>),
    Machines(Update<String, MachineState>),
    /// Dynamic metadata, named `(machine, key)`.
    Metadata(Update<(String, String), String>),
    /// Placements, named `(machine, unit)`.
    Schedule(Update<(String, String), ScheduleEntry>),
    /// Why units cannot be placed, by unit.
    Reasons(Update<String, String>),
    /// Unit texts, by hash.
    Texts(Update<UnitHash, String>),
    /// Drain marks, by machine id.
    Drains(Update<String, DrainMark>),
    /// The published states of units asked for with [`Effect::ReadStates`], by unit.
    States(Vec<(String, Result<Vec<UnitState>, String>)>),
    /// Bodies asked for with [`Effect::FetchBodies`].
    Bodies(Vec<(UnitHash, Result<Option<UnitFile>, String>)>),
    /// The outcome of [`Effect::Write`]: `Ok(false)` if the leader lease no longer held.
    Written(Result<bool, String>),
    /// Nothing but time passed.
    Tick,
}

/// What to do: the core's orders for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Read these unit bodies (of jobs that carry no `[X-Fleet]` options and whose text has
    /// not arrived); answer with [`Input::Bodies`].
    FetchBodies(Vec<UnitHash>),
    /// Write these decisions, fenced by the leader lease; answer with [`Input::Written`].
    Write(Vec<ScheduleChange>),
    /// Follow the schedule afresh (a failed write may have been written in part): the next
    /// pass waits for its first delivery, so that no unit is placed twice.
    RereadSchedule,
    /// Read the published states of these units (moved off drained machines, not yet seen
    /// running at their new place); answer with [`Input::States`].
    ReadStates(Vec<String>),
    /// Leadership is lost: stop leading.
    Resign,
}

/// How often the states of units in motion off a drained machine are read.
pub const MOTION_POLL: Duration = Duration::from_millis(500);
/// How long a unit moved off a drained machine may take to run at its new place before the
/// drain moves the next one anyway (a unit that fails to start must not stop a drain).
pub const MOTION_LIMIT: Duration = Duration::from_secs(60);

/// A unit moved off a drained machine that does not run at its new place yet.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Motion {
    to: String,
    since: Instant,
}

/// What [`Core::ready`] hands over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub effects: Vec<Effect>,
    /// When to call [`Core::ready`] again if no input comes first.
    pub wake_at: Option<Instant>,
    /// A scheduling pass ran: the driver reports its cost with [`Core::pass_took`].
    pub passed: bool,
}

/// Which followed parts have been read once since leading began (or since the schedule was
/// followed afresh): nothing is decided before all have.
#[derive(Debug, Default)]
struct Read {
    jobs: bool,
    machines: bool,
    metadata: bool,
    schedule: bool,
    reasons: bool,
    texts: bool,
    drains: bool,
}

impl Read {
    fn all(&self) -> bool {
        self.jobs
            && self.machines
            && self.metadata
            && self.schedule
            && self.reasons
            && self.texts
            && self.drains
    }
}

/// Where a pass stands.
#[derive(Debug)]
enum Pass {
    Idle,
    /// Waiting for bodies before deciding.
    Fetching,
    /// Bodies came: decide with what came (a body still missing leaves its unit out).
    Fetched,
    /// Waiting for the decisions to be written, and the drain moves among them.
    Writing(Vec<ScheduleChange>, Vec<(String, String)>, Instant),
}

/// The leader's state and decisions.
pub struct Core {
    model: Model,
    read: Read,
    /// Something changed that a pass has not looked at.
    dirty: bool,
    pass: Pass,
    /// A pass looks at every unit and machine, so while units pour in passes are paced: the
    /// next waits at least as long as the last one took (the engine takes at most half a
    /// core, and each pass places a bigger batch) instead of running once per delivery.
    next_pass: Instant,
    /// `engine_reconcile_interval`: a pass at least this often, whatever changes.
    interval: Duration,
    next_periodic: Instant,
    resigned: bool,
    /// A write failed: the schedule is to be followed afresh.
    reread: bool,
    /// Units moved off drained machines and not yet running at their new place, by unit.
    moving: BTreeMap<String, Motion>,
    /// An [`Effect::ReadStates`] is out.
    reading_states: bool,
    next_state_read: Instant,
}

impl Core {
    /// A core for a leadership that began at `now`, passing at least every `interval`.
    pub fn new(interval: Duration, now: Instant) -> Core {
        Core {
            model: Model::new(),
            read: Read::default(),
            dirty: false,
            pass: Pass::Idle,
            next_pass: now,
            interval,
            next_periodic: now + interval,
            resigned: false,
            reread: false,
            moving: BTreeMap::new(),
            reading_states: false,
            next_state_read: now,
        }
    }

    /// The model the decisions are made over.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Units moved off drained machines that do not run at their new place yet, with that
    /// place.
    pub fn in_motion(&self) -> impl Iterator<Item = (&str, &str)> {
        self.moving.iter().map(|(u, m)| (u.as_str(), m.to.as_str()))
    }

    /// Takes in one input. Effects it calls for come out of the next [`Core::ready`].
    pub fn on(&mut self, input: Input) {
        match input {
            Input::Jobs(u) => {
                self.model.apply_jobs(u);
                self.read.jobs = true;
                self.dirty = true;
            }
            Input::Machines(u) => {
                self.model.apply_machines(u);
                self.read.machines = true;
                self.dirty = true;
            }
            Input::Metadata(u) => {
                self.model.apply_metadata(u);
                self.read.metadata = true;
                self.dirty = true;
            }
            // The engine's own writes come back through these: they call for no pass.
            Input::Schedule(u) => {
                self.model.apply_schedule(u);
                self.read.schedule = true;
            }
            Input::Reasons(u) => {
                self.model.apply_reasons(u);
                self.read.reasons = true;
            }
            Input::Texts(u) => {
                self.model.apply_texts(u);
                self.read.texts = true;
            }
            Input::Drains(u) => {
                self.model.apply_drains(u);
                self.read.drains = true;
                self.dirty = true;
            }
            Input::States(read) => {
                self.reading_states = false;
                for (unit, states) in read {
                    let states = match states {
                        Ok(states) => states,
                        Err(e) => {
                            tracing::warn!(unit = %unit, error = %e, "reading the state of a unit in motion failed");
                            continue;
                        }
                    };
                    if self.settled(&unit, &states) {
                        tracing::info!(unit = %unit, "drain: the unit runs at its new place");
                        self.moving.remove(&unit);
                        self.dirty = true;
                    }
                }
            }
            Input::Bodies(read) => {
                if matches!(self.pass, Pass::Fetching) {
                    self.model.take_bodies(read);
                    self.pass = Pass::Fetched;
                }
            }
            Input::Written(result) => {
                let Pass::Writing(changes, moves, at) =
                    std::mem::replace(&mut self.pass, Pass::Idle)
                else {
                    return;
                };
                match result {
                    Ok(true) => {
                        for (unit, to) in moves {
                            self.moving.insert(unit, Motion { to, since: at });
                        }
                        self.model.applied(&changes)
                    }
                    Ok(false) => self.resigned = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "writing engine decisions failed; re-reading the schedule");
                        self.read.schedule = false;
                        self.reread = true;
                        self.dirty = true;
                    }
                }
            }
            Input::Tick => {}
        }
    }

    /// What to do now that the inputs so far are taken in.
    pub fn ready(&mut self, now: Instant) -> Ready {
        let mut ready = Ready::default();
        if self.resigned {
            ready.effects.push(Effect::Resign);
            return ready;
        }
        if std::mem::take(&mut self.reread) {
            ready.effects.push(Effect::RereadSchedule);
        }
        if now >= self.next_periodic {
            self.dirty = true;
            self.next_periodic = now + self.interval;
        }
        self.expire_motion(now);
        let fetched = matches!(self.pass, Pass::Fetched);
        if fetched || (self.dirty && matches!(self.pass, Pass::Idle) && self.read.all()) {
            if !fetched && now < self.next_pass {
                ready.wake_at = Some(self.next_pass);
            } else {
                self.dirty = false;
                self.pass = Pass::Idle;
                let missing = if fetched {
                    Vec::new()
                } else {
                    self.model.missing_bodies()
                };
                if missing.is_empty() {
                    if !fetched {
                        self.model.take_bodies(Vec::new());
                    }
                    ready.passed = true;
                    self.model.moving = self.moving.keys().cloned().collect();
                    let changes = self.model.decide();
                    let moves: Vec<(String, String)> = self
                        .model
                        .drain_moves(&changes)
                        .into_iter()
                        .map(|(unit, from, to)| {
                            tracing::info!(unit = %unit, from = %from, to = %to, "drain: moving a unit off a drained machine");
                            (unit, to)
                        })
                        .collect();
                    tracing::debug!(
                        jobs = self.model.jobs.len(),
                        machines = self.model.machines.len(),
                        changes = changes.len(),
                        "engine pass"
                    );
                    if !changes.is_empty() {
                        ready.effects.push(Effect::Write(changes.clone()));
                        self.pass = Pass::Writing(changes, moves, now);
                    }
                } else {
                    self.pass = Pass::Fetching;
                    ready.effects.push(Effect::FetchBodies(missing));
                }
            }
        }
        let state_read = self.watch_motion(now, &mut ready);
        ready.wake_at = [ready.wake_at, Some(self.next_periodic), state_read]
            .into_iter()
            .flatten()
            .min();
        ready
    }

    /// Gives up on units in motion past [`MOTION_LIMIT`]: the next pass moves the next unit.
    fn expire_motion(&mut self, now: Instant) {
        let before = self.moving.len();
        self.moving.retain(|unit, m| {
            let keep = now < m.since + MOTION_LIMIT;
            if !keep {
                tracing::warn!(unit = %unit, machine = %m.to, "drain: the unit did not run at its new place in time; moving the next one");
            }
            keep
        });
        if self.moving.len() != before {
            self.dirty = true;
        }
    }

    /// Asks for the states of the units in motion every [`MOTION_POLL`]; returns when to look
    /// again.
    fn watch_motion(&mut self, now: Instant, ready: &mut Ready) -> Option<Instant> {
        if self.moving.is_empty() || self.reading_states {
            return None;
        }
        if now >= self.next_state_read {
            ready
                .effects
                .push(Effect::ReadStates(self.moving.keys().cloned().collect()));
            self.reading_states = true;
            self.next_state_read = now + MOTION_POLL;
            return None;
        }
        Some(self.next_state_read)
    }

    /// Whether a unit in motion is done moving: it runs at its new place as its job asks, or
    /// it is no longer there to wait for (gone, moved again, or not to run).
    fn settled(&self, unit: &str, states: &[UnitState]) -> bool {
        let Some(motion) = self.moving.get(unit) else {
            return false;
        };
        let Some(job) = self.model.jobs.get(unit) else {
            return true;
        };
        if self.model.placed.get(unit).map(|(m, _)| m) != Some(&motion.to) {
            return true;
        }
        states.iter().any(|s| {
            s.machine_id == motion.to
                && s.hash == job.hash
                && s.agent_state == job.desired
                && (job.desired != TargetState::Launched || s.systemd.active == "active")
        })
    }

    /// The pass [`Core::ready`] ran at `began` took `cost`: the next waits as long.
    pub fn pass_took(&mut self, began: Instant, cost: Duration) {
        self.next_pass = began + cost + cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::{Change, TargetState};

    const INTERVAL: Duration = Duration::from_secs(1);

    fn job(name: &str, x_fleet: Option<Vec<(String, String)>>) -> Job {
        let file = UnitFile::parse(&format!("[Service]\nExecStart=/bin/true {name}\n"))
            .expect("a unit file");
        Job {
            name: name.into(),
            hash: file.hash(),
            desired: TargetState::Launched,
            global: false,
            x_fleet,
        }
    }

    fn machine(id: &str) -> MachineState {
        MachineState {
            id: id.into(),
            ..MachineState::default()
        }
    }

    /// A core that has read everything once: `jobs` and one machine `m1`.
    fn leading(t: Instant, jobs: Vec<Job>) -> Core {
        let mut core = Core::new(INTERVAL, t);
        core.on(Input::Jobs(Update::Reset(
            jobs.into_iter().map(|j| (j.name.clone(), j)).collect(),
        )));
        core.on(Input::Machines(Update::Reset(vec![(
            "m1".into(),
            machine("m1"),
        )])));
        core.on(Input::Metadata(Update::Reset(vec![])));
        core.on(Input::Schedule(Update::Reset(vec![])));
        core.on(Input::Reasons(Update::Reset(vec![])));
        core.on(Input::Texts(Update::Reset(vec![])));
        core.on(Input::Drains(Update::Reset(vec![])));
        core
    }

    fn placed(effects: &[Effect]) -> Vec<(String, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Write(changes) => Some(changes),
                _ => None,
            })
            .flatten()
            .filter_map(|c| match c {
                ScheduleChange::Place { unit, machine, .. } => {
                    Some((unit.clone(), machine.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn nothing_is_decided_before_every_part_was_read_once() {
        let t = Instant::now();
        let mut core = Core::new(INTERVAL, t);
        core.on(Input::Jobs(Update::Reset(vec![(
            s("a.service"),
            job("a.service", Some(vec![])),
        )])));
        core.on(Input::Machines(Update::Reset(vec![(
            s("m1"),
            machine("m1"),
        )])));
        core.on(Input::Metadata(Update::Reset(vec![])));
        core.on(Input::Schedule(Update::Reset(vec![])));
        core.on(Input::Reasons(Update::Reset(vec![])));
        core.on(Input::Drains(Update::Reset(vec![])));
        let ready = core.ready(t);
        assert_eq!(ready.effects, vec![]);
        assert!(!ready.passed);
        core.on(Input::Texts(Update::Reset(vec![])));
        assert_eq!(
            placed(&core.ready(t).effects),
            vec![(s("a.service"), s("m1"))]
        );
    }

    #[test]
    fn written_decisions_are_not_made_again_and_the_echo_calls_for_no_pass() {
        let t = Instant::now();
        let mut core = leading(t, vec![job("a.service", Some(vec![]))]);
        let ready = core.ready(t);
        let Some(Effect::Write(changes)) = ready.effects.first().cloned() else {
            panic!("{ready:?}")
        };
        core.on(Input::Written(Ok(true)));
        // The write comes back through the schedule follower.
        let entry = match &changes[0] {
            ScheduleChange::Place { entry, .. } => entry.clone(),
            other => panic!("{other:?}"),
        };
        core.on(Input::Schedule(Update::Changes(vec![Change::Put(
            (s("m1"), s("a.service")),
            entry,
        )])));
        let ready = core.ready(t);
        assert_eq!((ready.effects, ready.passed), (vec![], false));
        assert_eq!(ready.wake_at, Some(t + INTERVAL));
        // The periodic pass finds nothing to change.
        let later = t + INTERVAL;
        core.on(Input::Tick);
        let ready = core.ready(later);
        assert_eq!((ready.effects, ready.passed), (vec![], true));
    }

    #[test]
    fn passes_are_paced_by_their_own_cost() {
        let t = Instant::now();
        let mut core = leading(t, vec![job("a.service", Some(vec![]))]);
        assert!(core.ready(t).passed);
        core.pass_took(t, Duration::from_millis(300));
        core.on(Input::Written(Ok(true)));
        let t2 = t + Duration::from_millis(400);
        core.on(Input::Jobs(Update::Changes(vec![Change::Put(
            s("b.service"),
            job("b.service", Some(vec![])),
        )])));
        let ready = core.ready(t2);
        assert_eq!((ready.effects, ready.passed), (vec![], false));
        assert_eq!(ready.wake_at, Some(t + Duration::from_millis(600)));
        let t3 = t + Duration::from_millis(600);
        core.on(Input::Tick);
        assert_eq!(
            placed(&core.ready(t3).effects),
            vec![(s("b.service"), s("m1"))]
        );
    }

    #[test]
    fn bodies_of_jobs_without_their_options_are_read_first() {
        let t = Instant::now();
        let a = job("a.service", None);
        let b = job("b.service", None);
        let mut core = leading(t, vec![a.clone(), b.clone()]);
        let mut hashes = vec![a.hash, b.hash];
        hashes.sort();
        assert_eq!(core.ready(t).effects, vec![Effect::FetchBodies(hashes)]);
        // a's body is found, b's is not: a is placed, b is left out.
        let a_file = UnitFile::parse("[Service]\nExecStart=/bin/true a.service\n").unwrap();
        core.on(Input::Bodies(vec![
            (a.hash, Ok(Some(a_file))),
            (b.hash, Ok(None)),
        ]));
        assert_eq!(
            placed(&core.ready(t).effects),
            vec![(s("a.service"), s("m1"))]
        );
    }

    #[test]
    fn a_refused_write_resigns_and_a_failed_one_rereads_the_schedule() {
        let t = Instant::now();
        let mut core = leading(t, vec![job("a.service", Some(vec![]))]);
        core.ready(t);
        core.on(Input::Written(Err(s("etcd unreachable"))));
        let ready = core.ready(t);
        assert_eq!(ready.effects, vec![Effect::RereadSchedule]);
        // Nothing is decided until the schedule is read afresh.
        assert!(!core.ready(t + INTERVAL).passed);
        core.on(Input::Schedule(Update::Reset(vec![])));
        let t2 = t + INTERVAL;
        assert_eq!(
            placed(&core.ready(t2).effects),
            vec![(s("a.service"), s("m1"))]
        );
        core.on(Input::Written(Ok(false)));
        assert_eq!(core.ready(t2).effects, vec![Effect::Resign]);
    }

    /// A core leading over m1 (drained, holding `units`) and m2.
    fn draining(t: Instant, units: &[&str]) -> Core {
        let jobs: Vec<Job> = units.iter().map(|u| job(u, Some(vec![]))).collect();
        let mut core = leading(t, jobs.clone());
        core.on(Input::Machines(Update::Changes(vec![Change::Put(
            s("m2"),
            machine("m2"),
        )])));
        core.on(Input::Schedule(Update::Reset(
            jobs.iter()
                .map(|j| {
                    let entry = ScheduleEntry {
                        hash: j.hash,
                        desired: j.desired,
                        raw: None,
                    };
                    ((s("m1"), j.name.clone()), entry)
                })
                .collect(),
        )));
        core.on(Input::Drains(Update::Reset(vec![(
            s("m1"),
            DrainMark::default(),
        )])));
        core
    }

    fn state(job: &Job, machine: &str, active: &str) -> UnitState {
        UnitState {
            name: job.name.clone(),
            machine_id: machine.into(),
            hash: job.hash,
            systemd: registry::SystemdState {
                load: s("loaded"),
                active: active.into(),
                sub: s("running"),
            },
            agent_state: TargetState::Launched,
            reason: None,
            global: false,
        }
    }

    #[test]
    fn a_drain_moves_the_next_unit_once_the_last_one_runs_at_its_new_place() {
        let t = Instant::now();
        let a = job("a.service", Some(vec![]));
        let mut core = draining(t, &["a.service", "b.service"]);
        let ready = core.ready(t);
        assert_eq!(placed(&ready.effects), vec![(s("a.service"), s("m2"))]);
        core.on(Input::Written(Ok(true)));
        assert_eq!(
            core.in_motion().collect::<Vec<_>>(),
            vec![("a.service", "m2")]
        );
        // a is in motion: its state is read, and b stays.
        let ready = core.ready(t);
        assert_eq!(
            ready.effects,
            vec![Effect::ReadStates(vec![s("a.service")])]
        );
        core.on(Input::States(vec![(
            s("a.service"),
            Ok(vec![state(&a, "m2", "activating")]),
        )]));
        let ready = core.ready(t);
        assert_eq!(placed(&ready.effects), vec![]);
        assert_eq!(ready.wake_at, Some(t + MOTION_POLL));
        // A periodic pass does not move b either.
        let t2 = t + INTERVAL;
        let ready = core.ready(t2);
        assert_eq!(
            ready.effects,
            vec![Effect::ReadStates(vec![s("a.service")])]
        );
        // An old state on the machine it left does not count.
        core.on(Input::States(vec![(
            s("a.service"),
            Ok(vec![state(&a, "m1", "active")]),
        )]));
        assert_eq!(placed(&core.ready(t2).effects), vec![]);
        core.on(Input::States(vec![(
            s("a.service"),
            Ok(vec![state(&a, "m2", "active")]),
        )]));
        let t3 = t2 + MOTION_POLL;
        core.on(Input::States(vec![(
            s("a.service"),
            Ok(vec![state(&a, "m2", "active")]),
        )]));
        assert_eq!(
            placed(&core.ready(t3).effects),
            vec![(s("b.service"), s("m2"))]
        );
    }

    #[test]
    fn a_unit_that_never_runs_at_its_new_place_holds_a_drain_back_only_for_a_while() {
        let t = Instant::now();
        let mut core = draining(t, &["a.service", "b.service"]);
        assert_eq!(
            placed(&core.ready(t).effects),
            vec![(s("a.service"), s("m2"))]
        );
        core.on(Input::Written(Ok(true)));
        assert_eq!(
            core.ready(t).effects,
            vec![Effect::ReadStates(vec![s("a.service")])]
        );
        core.on(Input::States(vec![(s("a.service"), Ok(vec![]))]));
        let late = t + MOTION_LIMIT;
        assert_eq!(
            placed(&core.ready(late).effects),
            vec![(s("b.service"), s("m2"))]
        );
    }
}
