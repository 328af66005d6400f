//! The agent's decisions as one state machine, in the shape of etcd's raft `Ready` hand-off:
//! the driver ([`crate::Agent`]) feeds it typed inputs with [`Core::on`] (registry changes,
//! the unit manager's reports, the outcomes of the effects it carried out), then asks
//! [`Core::ready`] what to do now. No clock, no runtime, no I/O: time comes in as an argument.
//!
//! ```
//! use agent::core::{Core, Effect, Input};
//! use registry::{MachineState, ScheduleEntry, TargetState, Update};
//! use tokio::time::Instant;
//!
//! let machine = MachineState { id: "m1".into(), ..MachineState::default() };
//! let mut core = Core::new(machine, Vec::new());
//! let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 1d\n").unwrap();
//! let entry = ScheduleEntry { hash: file.hash(), desired: TargetState::Launched, raw: Some(file.serialize()) };
//! let now = Instant::now();
//! core.on(now, Input::Schedule(Update::Reset(vec![("hello.service".into(), entry)])));
//! core.on(now, Input::Globals(Update::Reset(vec![])));
//! core.on(now, Input::Metadata(Update::Reset(vec![])));
//! let ready = core.ready(now);
//! assert!(matches!(&ready.effects[0], Effect::Run(phase) if phase.len() == 1));
//! ```

mod dump;
pub use dump::{AgentDump, UnitDump};

use crate::reconcile::{self, Action, Candidate, Failure, Held, Wanted};
use crate::StateChange;
use registry::{
    merge_metadata, GlobalJob, GlobalRollout, GlobalSummary, Job, MachineState, Revision,
    ScheduleEntry, SystemdState, TargetState, UnitState, Update,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use unit::{Requirements, UnitFile, UnitHash};

/// A changed unit state goes out at most this long after the change: changes that come within
/// the window go together in one registry write. The unit manager reports a burst of starts a
/// few units at a time (systemd's watcher reads states in batches, the supervisor reports each
/// process), so a short window turns hundreds of reports into a handful of writes, while the
/// last unit's state still reaches the registry right after the manager reports it.
pub const PUBLISH_WINDOW: Duration = Duration::from_millis(10);

/// This many changes waiting go out at once, without waiting for the rest of the window.
pub const PUBLISH_BATCH: usize = 256;

/// Reconciliations at most this often: each looks at every unit of the machine, and a burst of
/// changes (a global unit is a change on every machine) would otherwise cost one pass each.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(100);

/// A summary that changes alone (no state of its own written or removed with it) is written at
/// most this often: while global units are being created one after another, every machine
/// would otherwise rewrite its summary for each, as many writes as the states it replaces.
/// A global unit's rows wait at most this long for it.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// While the registry answers slowly, a summary changing alone waits at least this many times
/// as long as the last publication took: every machine writes one while global units are being
/// created, and with thousands of machines those writes would otherwise crowd out the
/// submissions that cause them. A registry that answers in 100 ms keeps [`SUMMARY_INTERVAL`].
pub const SUMMARY_LATENCY_FACTOR: u32 = 10;

/// The longest a summary changing alone waits, however slowly the registry answers.
pub const SUMMARY_INTERVAL_MAX: Duration = Duration::from_secs(15);

/// How long a failed publication or registration waits before it is tried again (failed unit
/// actions wait for their own retry time, see [`reconcile::retry_delay`]).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Publications failing in a row wait twice as long each time, up to this: a registry that
/// keeps refusing is not asked again every [`RETRY_INTERVAL`] by every machine.
pub const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(30);

/// What happened: the driver's news for the core.
#[derive(Debug)]
pub enum Input {
    /// This machine's schedule changed.
    Schedule(Update<String, ScheduleEntry>),
    /// The global units changed (with their rollouts: which machines run a global unit's new
    /// content).
    Globals(Update<String, GlobalJob>),
    /// This machine's dynamic metadata changed.
    Metadata(Update<String, String>),
    /// Bodies asked for with [`Effect::FetchBodies`]: `None` where the registry has none, an
    /// error text where reading failed.
    Bodies(Vec<(UnitHash, Result<Option<UnitFile>, String>)>),
    /// The unit manager reported a unit's state, with why it failed when the manager knows
    /// more than the state's names say (our process supervisor does).
    Reported(StateChange, Option<String>),
    /// Reports were lost (the subscriber fell behind): every state must be read again.
    ReportsLost,
    /// States read with [`Effect::ReadStates`], each with the manager's reason as in
    /// [`Input::Reported`].
    States(Result<Vec<ReadState>, String>),
    /// One action of the phase in flight is done.
    Done(Action, Result<(), ActionError>),
    /// The publication in flight is done.
    Published(Result<(), String>),
    /// The machine's lease was found expired.
    LeaseLapsed,
    /// Registering again ([`Effect::Renew`]) is done.
    Renewed(Result<(), String>),
    /// The machine is shutting down.
    MachineStopping,
    /// A new machine record (metadata, IP) from a configuration reload.
    MachineRecord(MachineState),
    /// Nothing but time passed (the wake-up [`Ready::wake_at`] asked for).
    Tick,
}

/// A unit's state as read from the unit manager, with the manager's reason if it failed.
pub type ReadState = (String, Option<SystemdState>, Option<String>);

/// Why an action failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionError {
    pub reason: String,
    /// The unit manager refused it in a way that retrying cannot change.
    pub refused: bool,
}

/// What to do: the core's orders for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Read these unit bodies from the registry; answer with [`Input::Bodies`].
    FetchBodies(Vec<UnitHash>),
    /// Carry out one phase of a plan, its actions side by side (each names another unit);
    /// answer each with [`Input::Done`]. `Load` actions carry their file.
    Run(Vec<(Action, Option<UnitFile>)>),
    /// Read these units' states from the unit manager; answer with [`Input::States`].
    ReadStates(Vec<String>),
    /// Publish unit states: first remove `moved` (states changing between the placed and the
    /// global prefixes), then write `save`, the machine's summary of its global units if it
    /// changed, and remove `remove`, in that order (see `MachineLease::publish`). Answer with
    /// [`Input::Published`].
    Publish {
        moved: Vec<String>,
        save: Vec<UnitState>,
        remove: Vec<String>,
        summary: Option<GlobalSummary>,
    },
    /// Register the machine again under a new lease; answer with [`Input::Renewed`].
    Renew,
    /// Leave the cluster at once (the machine shuts down): revoke the lease.
    Leave,
    /// Write this machine record.
    Announce(MachineState),
}

/// What [`Core::ready`] hands over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub effects: Vec<Effect>,
    /// When to call [`Core::ready`] again if no input comes first.
    pub wake_at: Option<Instant>,
}

/// At most once per `interval`; a request in between is due at the end of the interval.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    last: Option<Instant>,
    due: Option<Instant>,
}

impl Pacer {
    fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            last: None,
            due: None,
        }
    }

    /// True if the paced action is to run now (counted as run); otherwise it is due later.
    fn now(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now < last + self.interval => {
                self.due.get_or_insert(last + self.interval);
                false
            }
            _ => {
                self.last = Some(now);
                self.due = None;
                true
            }
        }
    }
}

/// When waiting changes of unit states go out: the oldest waits at most [`PUBLISH_WINDOW`],
/// [`PUBLISH_BATCH`] of them go at once, and a republication of everything (a new lease, lost
/// reports) goes at once. Whether a publication may go at all (one in flight, a lapsed lease)
/// is the caller's business: the window keeps counting meanwhile, so changes that waited for a
/// write in flight go out as soon as it ends.
#[derive(Debug, Default)]
struct Coalescer {
    /// When the oldest change not published yet was seen.
    since: Option<Instant>,
}

/// What [`Coalescer::due`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Nothing waits.
    Nothing,
    /// Publish now.
    Now,
    /// Publish then, unless more changes make it due earlier.
    At(Instant),
}

impl Coalescer {
    /// `waiting`: units whose state changed since the last publication; `all`: every state
    /// must be looked at again.
    fn due(&mut self, now: Instant, waiting: usize, all: bool) -> Due {
        if waiting == 0 && !all {
            self.since = None;
            return Due::Nothing;
        }
        let since = *self.since.get_or_insert(now);
        if all || waiting >= PUBLISH_BATCH || now >= since + PUBLISH_WINDOW {
            Due::Now
        } else {
            Due::At(since + PUBLISH_WINDOW)
        }
    }

    /// What waited went out (or was found unchanged).
    fn sent(&mut self) {
        self.since = None;
    }
}

/// A plan being carried out, phase by phase.
#[derive(Debug)]
struct Run {
    wanted: BTreeMap<String, Wanted>,
    /// Phases not started yet.
    phases: std::collections::VecDeque<Vec<Action>>,
    /// Units loaded by this run whose states are not published until the loads have been
    /// reloaded: a unit whose file was just written has no state from the manager yet. Every
    /// other unit's state goes out while the loads and the reload run.
    held_back: BTreeSet<String>,
    /// Global units this run starts, until their starts end: their state on the way (loaded,
    /// not started) is not published as an exception, to be deleted a moment later when the
    /// start succeeds; the summary names them not run meanwhile.
    starting: BTreeSet<String>,
    in_flight: usize,
    failed: BTreeMap<String, Failure>,
    /// Units whose start or stop the manager took: it reports their outcome itself
    /// (systemd's watcher reads a unit when its job is removed; the supervisor reports every
    /// change), and the periodic resync catches a report that got lost.
    reported: BTreeSet<String>,
    touched: BTreeSet<String>,
}

/// The agent's state and decisions.
#[derive(Debug)]
pub struct Core {
    machine: MachineState,
    schedule: BTreeMap<String, ScheduleEntry>,
    globals: BTreeMap<String, Job>,
    /// Rollouts of global units, by unit, as their global records carry them: a machine they
    /// do not allow yet runs the old content.
    rollouts: BTreeMap<String, GlobalRollout>,
    /// The revision each global unit's record was written at: the summary vouches up to the
    /// latest (a record written later is one this machine has not seen yet).
    global_written: BTreeMap<String, Revision>,
    dynamic_metadata: BTreeMap<String, String>,
    /// Nothing is decided until the schedule, the global units and the metadata have each been
    /// read once.
    ready: [bool; 3],
    bodies: HashMap<UnitHash, UnitFile>,
    /// unit -> the hash its requirements were read from, and those requirements (specifiers
    /// depend on the unit's name, so one body can give several).
    requirements: HashMap<String, (UnitHash, Arc<Requirements>)>,
    /// Bodies asked for and not answered yet.
    fetching: bool,
    /// A body may have lost its last user (a unit gone or given another body) since bodies
    /// were last pruned.
    prune_due: bool,
    /// Bodies fetched and found missing since the schedule last changed: not asked for again
    /// until it changes.
    not_found: HashSet<UnitHash>,
    held: BTreeMap<String, Held>,
    /// The last failed action on a unit and when to try it again, until one succeeds.
    failures: BTreeMap<String, Failure>,
    systemd: BTreeMap<String, SystemdState>,
    published: BTreeMap<String, UnitState>,
    /// Global units published by the summary alone: held exactly as their jobs want
    /// ([`desired_instance`]), with no state of their own in the registry.
    covered: BTreeSet<String>,
    /// The summary last written under the current lease.
    summary: Option<GlobalSummary>,
    /// The summary must be looked at again even if no unit changed (a failed publication, one
    /// held back by [`SUMMARY_INTERVAL`]).
    summary_stale: bool,
    /// When the last summary was written, and when one held back is due.
    summary_written_at: Option<Instant>,
    /// How long the last publication took, sent to answered.
    publish_took: Duration,
    summary_due: Option<Instant>,
    /// Global units whose start succeeded and whose state the manager has not reported since:
    /// held back from publication as while they start.
    awaiting_report: BTreeSet<String>,
    /// Units whose published state may be out of date.
    stale: HashSet<String>,
    /// Every unit's published state may be out of date (a new lease, lost reports).
    all_stale: bool,
    /// The schedule, the global units or the metadata changed since the last plan.
    dirty: bool,
    reconciling: Pacer,
    publishing: Coalescer,
    run: Option<Run>,
    /// The publication in flight.
    publication: Option<Publication>,
    /// A failed publication is tried again then.
    publish_retry_at: Option<Instant>,
    /// Publications failed in a row.
    publish_failures: u32,
    lease: LeaseStatus,
    /// The machine is shutting down and this agent has left the cluster: it acts no more.
    left: bool,
    /// Effects decided on input, handed over by the next [`Core::ready`].
    queued: Vec<Effect>,
    /// Why the unit manager says units failed, as it reported.
    reasons: BTreeMap<String, String>,
}

/// A publication in flight: the names looked at, and what was sent.
#[derive(Debug)]
struct Publication {
    sent_at: Instant,
    names: Vec<String>,
    save: Vec<UnitState>,
    remove: Vec<String>,
    summary: Option<GlobalSummary>,
    /// Global units now covered by the summary, and those no longer.
    cover: Vec<String>,
    uncover: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum LeaseStatus {
    Held,
    Lapsed { retry_at: Option<Instant> },
    Renewing,
}

impl Core {
    /// A core for `machine`, holding what the unit manager already runs: `(name, hash, state)`
    /// (after a restart of fleetd, nothing is restarted; active units count as launched).
    pub fn new(
        machine: MachineState,
        adopted: Vec<(String, UnitHash, Option<SystemdState>)>,
    ) -> Core {
        let mut core = Core {
            machine,
            schedule: BTreeMap::new(),
            globals: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            global_written: BTreeMap::new(),
            dynamic_metadata: BTreeMap::new(),
            ready: [false; 3],
            bodies: HashMap::new(),
            requirements: HashMap::new(),
            fetching: false,
            prune_due: false,
            not_found: HashSet::new(),
            held: BTreeMap::new(),
            failures: BTreeMap::new(),
            systemd: BTreeMap::new(),
            published: BTreeMap::new(),
            covered: BTreeSet::new(),
            summary: None,
            summary_stale: false,
            summary_written_at: None,
            publish_took: Duration::ZERO,
            summary_due: None,
            awaiting_report: BTreeSet::new(),
            stale: HashSet::new(),
            all_stale: true,
            dirty: false,
            reconciling: Pacer::new(RECONCILE_INTERVAL),
            publishing: Coalescer::default(),
            run: None,
            publication: None,
            publish_retry_at: None,
            publish_failures: 0,
            lease: LeaseStatus::Held,
            left: false,
            queued: Vec::new(),
            reasons: BTreeMap::new(),
        };
        for (name, hash, state) in adopted {
            let launched = state.as_ref().is_some_and(|s| {
                matches!(s.active.as_str(), "active" | "activating" | "reloading")
            });
            if let Some(s) = state {
                core.systemd.insert(name.clone(), s);
            }
            let state = if launched {
                TargetState::Launched
            } else {
                TargetState::Loaded
            };
            tracing::info!(unit = %name, state = %state, "re-adopted unit");
            core.held.insert(name, Held { hash, state });
        }
        core
    }

    /// The units this machine holds.
    pub fn held(&self) -> impl Iterator<Item = &str> {
        self.held.keys().map(String::as_str)
    }

    /// Whether the machine left the cluster for its shutdown.
    /// The revision (body hash) of `name` this machine is asked to run, else the one it holds.
    pub fn revision(&self, name: &str) -> Option<UnitHash> {
        self.schedule
            .get(name)
            .map(|e| e.hash)
            .or_else(|| self.globals.get(name).map(|j| self.global_hash(j)))
            .or_else(|| self.held.get(name).map(|h| h.hash))
    }

    /// The content this machine runs of the global unit `job`: the job's, unless a rollout
    /// holds this machine back on the old one.
    fn global_hash(&self, job: &Job) -> UnitHash {
        self.rollouts
            .get(&job.name)
            .map_or(job.hash, |r| r.hash_for(job.hash, &self.machine.id))
    }

    pub fn left(&self) -> bool {
        self.left
    }

    /// The machine record this agent announces.
    pub fn machine(&self) -> &MachineState {
        &self.machine
    }

    /// Takes in one input. Effects it calls for come out of the next [`Core::ready`].
    pub fn on(&mut self, now: Instant, input: Input) {
        if self.left {
            // Nothing is decided or published any more; fleetd's own stop ends the agent.
            return;
        }
        match input {
            Input::Schedule(update) => {
                self.prune_due |= loses_users(&update, &self.schedule);
                let mut carried = Vec::new();
                update
                    .map(|mut entry| {
                        if let Some(raw) = entry.raw.take() {
                            carried.push((entry.hash, raw));
                        }
                        entry
                    })
                    .apply_to(&mut self.schedule);
                self.keep_carried(carried);
                self.not_found.clear();
                self.ready[0] = true;
                self.dirty = true;
            }
            Input::Globals(update) => {
                self.prune_due |= loses_users(&update, &self.globals);
                let mut carried = Vec::new();
                let mut rollouts = Vec::new();
                if matches!(update, Update::Reset(_)) {
                    self.rollouts.clear();
                }
                let mut written = Vec::new();
                let mut deleted = Vec::new();
                // Every global unit changed is looked at again: its job, so what its instance
                // is compared with, may have changed.
                match &update {
                    Update::Reset(items) => {
                        self.stale.extend(self.globals.keys().cloned());
                        self.stale.extend(items.iter().map(|(n, _)| n.clone()));
                        self.global_written.clear();
                    }
                    Update::Changes(changes) => {
                        for change in changes {
                            match change {
                                registry::Change::Put(n, _) => self.stale.insert(n.clone()),
                                registry::Change::Delete(n) => {
                                    deleted.push(n.clone());
                                    self.stale.insert(n.clone())
                                }
                            };
                        }
                    }
                }
                update
                    .map(|record| {
                        carried.push((record.job.hash, record.raw));
                        rollouts.push((record.job.name.clone(), record.rollout));
                        written.push((record.job.name.clone(), record.revision));
                        record.job
                    })
                    .apply_to(&mut self.globals);
                for (name, rollout) in rollouts {
                    match rollout {
                        Some(r) => self.rollouts.insert(name, r),
                        None => self.rollouts.remove(&name),
                    };
                }
                // What was kept of a unit gone goes with it (a reset cleared all of it above).
                for name in &deleted {
                    self.rollouts.remove(name);
                    self.global_written.remove(name);
                }
                // An old body missing before may be the one a rollout now names.
                self.not_found.clear();
                self.global_written.extend(written);
                self.summary_stale = true;
                self.keep_carried(carried);
                self.ready[1] = true;
                self.dirty = true;
            }
            Input::Metadata(update) => {
                update.apply_to(&mut self.dynamic_metadata);
                self.ready[2] = true;
                self.dirty = true;
            }

            Input::Bodies(fetched) => {
                self.fetching = false;
                for (hash, read) in fetched {
                    match read {
                        Ok(Some(file)) => {
                            self.bodies.insert(hash, file);
                        }
                        Ok(None) => {
                            tracing::warn!(hash = %hash, "unit body not in the registry");
                            self.not_found.insert(hash);
                        }
                        Err(e) => {
                            tracing::warn!(hash = %hash, error = %e, "reading unit body failed");
                            self.not_found.insert(hash);
                        }
                    }
                }
                // Decided again with what came: a body still missing holds the plan back
                // until the next change.
                self.dirty = true;
            }
            Input::Reported(change, reason) => self.take_state(change.name, change.state, reason),
            Input::ReportsLost => {
                self.queued
                    .push(Effect::ReadStates(self.held.keys().cloned().collect()));
                self.all_stale = true;
            }
            Input::States(Ok(states)) => {
                for (name, state, reason) in states {
                    self.take_state(name, state, reason);
                }
            }
            Input::States(Err(e)) => tracing::warn!(error = %e, "reading unit states failed"),
            Input::Done(action, result) => self.settle(now, action, result),
            Input::Published(result) => {
                let Some(sent) = self.publication.take() else {
                    return;
                };
                self.publish_took = now.saturating_duration_since(sent.sent_at);
                match result {
                    Ok(()) => {
                        self.publish_retry_at = None;
                        self.publish_failures = 0;
                        for name in &sent.remove {
                            self.published.remove(name);
                        }
                        for state in sent.save {
                            self.published.insert(state.name.clone(), state);
                        }
                        for name in &sent.uncover {
                            self.covered.remove(name);
                        }
                        self.covered.extend(sent.cover);
                        if sent.summary.is_some() {
                            self.summary = sent.summary;
                        }
                    }
                    Err(e) => {
                        // Looked at again on the next change or at the retry time.
                        if !self.all_stale {
                            self.stale.extend(sent.names);
                        }
                        self.summary_stale = true;
                        self.publish_failures = self.publish_failures.saturating_add(1);
                        let wait = publish_retry_delay(self.publish_failures);
                        self.publish_retry_at = Some(now + wait);
                        tracing::warn!(error = %e, failures = self.publish_failures,
                            retry_in = ?wait, "publishing unit states failed; will retry");
                    }
                }
            }
            Input::LeaseLapsed => {
                if self.lease == LeaseStatus::Held {
                    self.lease = LeaseStatus::Lapsed { retry_at: None };
                }
            }
            Input::Renewed(Ok(())) => {
                self.lease = LeaseStatus::Held;
                // The old lease took every published state and the summary with it.
                self.published.clear();
                self.covered.clear();
                self.summary = None;
                self.all_stale = true;
            }
            Input::Renewed(Err(e)) => {
                tracing::warn!(error = %e, "registering again failed");
                self.lease = LeaseStatus::Lapsed {
                    retry_at: Some(now + RETRY_INTERVAL),
                };
            }
            Input::MachineStopping => {
                self.left = true;
                // Nothing is retried any more (a retry time left behind would wake the loop
                // for ever).
                self.failures.clear();
                tracing::warn!(
                    units = self.held.len(),
                    "the machine is shutting down: leaving the cluster now; the system stops the units"
                );
                self.queued.push(Effect::Leave);
            }
            Input::MachineRecord(machine) => {
                self.machine = machine.clone();
                self.queued.push(Effect::Announce(machine));
                self.dirty = true;
            }
            Input::Tick => {}
        }
    }

    /// What to do now that the inputs so far are taken in.
    pub fn ready(&mut self, now: Instant) -> Ready {
        let mut effects = std::mem::take(&mut self.queued);
        if self.left {
            return Ready {
                effects,
                wake_at: None,
            };
        }
        match self.lease {
            LeaseStatus::Lapsed { retry_at } if retry_at.is_none_or(|at| at <= now) => {
                self.lease = LeaseStatus::Renewing;
                effects.push(Effect::Renew);
            }
            _ => {}
        }
        if reconcile::next_retry(&self.failures).is_some_and(|at| at <= now) && self.run.is_none() {
            self.dirty = true;
        }
        if self.dirty
            && self.run.is_none()
            && !self.fetching
            && self.ready.iter().all(|r| *r)
            && self.reconciling.now(now)
        {
            self.dirty = false;
            self.plan(now, &mut effects);
        }
        let summary_waits = self.summary_stale && self.summary_due.is_none_or(|due| due <= now);
        let waiting = self.stale.len() + usize::from(summary_waits);
        let due = self.publishing.due(now, waiting, self.all_stale);
        if due == Due::Now
            && self.publication.is_none()
            && self.lease == LeaseStatus::Held
            && self.publish_retry_at.is_none_or(|at| at <= now)
        {
            self.publish(now, &mut effects);
            self.publishing.sent();
        }
        let wake_at = [
            (self.dirty && self.run.is_none())
                .then_some(self.reconciling.due)
                .flatten(),
            // Only when the publication could go then: the end of a write in flight comes as
            // an input, and a retry time or a new lease wakes the loop on its own.
            match due {
                Due::At(at)
                    if self.publication.is_none()
                        && self.lease == LeaseStatus::Held
                        && self.publish_retry_at.is_none_or(|r| r <= at) =>
                {
                    Some(at)
                }
                Due::At(_) | Due::Nothing | Due::Now => None,
            },
            self.publish_retry_at,
            self.summary_due.filter(|_| self.summary_stale),
            match self.lease {
                LeaseStatus::Lapsed { retry_at } => retry_at,
                _ => None,
            },
            self.run
                .is_none()
                .then(|| reconcile::next_retry(&self.failures))
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .min();
        Ready { effects, wake_at }
    }

    fn take_state(&mut self, name: String, state: Option<SystemdState>, reason: Option<String>) {
        self.awaiting_report.remove(&name);
        self.stale.insert(name.clone());
        match reason {
            Some(r) => self.reasons.insert(name.clone(), r),
            None => self.reasons.remove(&name),
        };
        match state {
            Some(s) => self.systemd.insert(name, s),
            None => self.systemd.remove(&name),
        };
    }

    /// Parses unit texts that records carried into bodies. A text that does not parse or hash
    /// as its record says is ignored; that body is then read from the registry as for records
    /// without one.
    fn keep_carried(&mut self, carried: Vec<(UnitHash, String)>) {
        for (hash, raw) in carried {
            if self.bodies.contains_key(&hash) {
                continue;
            }
            if let Ok(file) = UnitFile::parse(&raw) {
                if file.hash() == hash {
                    self.bodies.insert(hash, file);
                }
            }
        }
    }

    fn requirements(&mut self, name: &str, hash: &UnitHash) -> Option<Arc<Requirements>> {
        if let Some((h, req)) = self.requirements.get(name) {
            if h == hash {
                return Some(req.clone());
            }
        }
        let req = Arc::new(Requirements::from_unit(self.bodies.get(hash)?, name));
        self.requirements
            .insert(name.to_string(), (*hash, req.clone()));
        Some(req)
    }

    /// Plans the actions for the schedule as it stands and starts the first phase. Bodies not
    /// seen yet are fetched first, all in one effect (one registry round trip after another
    /// would make a burst of new units slow).
    fn plan(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let have = |h: &UnitHash| self.bodies.contains_key(h);
        let complete = self.schedule.values().all(|e| have(&e.hash))
            && self.globals.values().all(|g| have(&self.global_hash(g)));
        let missing: BTreeSet<UnitHash> = if complete {
            // The usual case: every body is at hand, and the sets below need not be built.
            BTreeSet::new()
        } else {
            self.schedule
                .values()
                .map(|e| e.hash)
                .filter(|h| !self.bodies.contains_key(h))
                .collect()
        };
        // A global unit's record carries its job's text, but not the old content a rollout
        // holds this machine on: that one is read like a scheduled unit's.
        let missing_global: BTreeSet<UnitHash> = if complete {
            BTreeSet::new()
        } else {
            self.globals
                .values()
                .map(|g| self.global_hash(g))
                .filter(|h| !self.bodies.contains_key(h))
                .collect()
        };
        let ask: Vec<UnitHash> = missing
            .union(&missing_global)
            .filter(|h| !self.not_found.contains(h))
            .copied()
            .collect();
        if !ask.is_empty() {
            self.fetching = true;
            effects.push(Effect::FetchBodies(ask));
            return;
        }
        if !missing.is_empty() {
            // Without a unit's body nothing can be decided for it; what runs stays as it is
            // until the body comes or the schedule changes.
            return;
        }
        let mut candidates = Vec::new();
        let scheduled: Vec<(String, UnitHash, TargetState)> = self
            .schedule
            .iter()
            .map(|(name, e)| (name.clone(), e.hash, e.desired))
            .collect();
        for (name, hash, desired) in scheduled {
            let Some(requirements) = self.requirements(&name, &hash) else {
                return;
            };
            candidates.push(Candidate {
                name,
                hash,
                desired,
                global: false,
                requirements,
            });
        }
        let globals: Vec<(String, UnitHash, TargetState)> = self
            .globals
            .values()
            .map(|g| (g.name.clone(), self.global_hash(g), g.desired))
            .collect();
        for (name, hash, desired) in globals {
            if let Some(requirements) = self.requirements(&name, &hash) {
                candidates.push(Candidate {
                    name,
                    hash,
                    desired,
                    global: true,
                    requirements,
                });
            }
        }
        let mut machine = self.machine.clone();
        merge_metadata(&mut machine.metadata, &self.dynamic_metadata);
        let (wanted, refused) = reconcile::wanted_units(&machine, &candidates);
        for r in &refused {
            tracing::debug!(unit = %r.unit, reason = %r.reason, "not running unit here");
        }
        let actions = reconcile::plan(&wanted, &self.held);
        let (actions, _waiting) = reconcile::defer(actions, &self.failures, now);
        let touched = actions
            .iter()
            .filter_map(|a| a.unit().map(str::to_string))
            .collect();
        // Each phase of the plan (unloads, loads, the reload, stops, starts) names a unit at
        // most once, so its actions run side by side; the phases stay in order.
        let mut phases: VecDeque<Vec<Action>> = VecDeque::new();
        for action in actions {
            match phases.back_mut() {
                Some(phase)
                    if phase.first().map(std::mem::discriminant)
                        == Some(std::mem::discriminant(&action)) =>
                {
                    phase.push(action)
                }
                _ => phases.push_back(vec![action]),
            }
        }
        // Starts go in dependency waves, each a phase of its own.
        if let Some(at) = phases
            .iter()
            .position(|p| matches!(p.first(), Some(Action::Start(_))))
        {
            let starts: Vec<String> = phases[at]
                .iter()
                .filter_map(|a| a.unit().map(str::to_string))
                .collect();
            let requirements = |name: &str| {
                let hash = wanted.get(name)?.hash;
                match self.requirements.get(name) {
                    Some((h, req)) if *h == hash => Some(req.clone()),
                    _ => None,
                }
            };
            let waves = reconcile::start_waves(starts, &requirements);
            if waves.len() > 1 {
                phases.remove(at);
                for (i, wave) in waves.into_iter().enumerate() {
                    phases.insert(at + i, wave.into_iter().map(Action::Start).collect());
                }
            }
        }
        let starting = phases
            .iter()
            .flatten()
            .filter_map(|a| match a {
                Action::Start(name) if self.globals.contains_key(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        self.run = Some(Run {
            wanted,
            phases,
            held_back: BTreeSet::new(),
            starting,
            in_flight: 0,
            failed: BTreeMap::new(),
            reported: BTreeSet::new(),
            touched,
        });
        self.next_phase(effects);
    }

    /// Starts the next phase of the run, or finishes the run if none is left.
    fn next_phase(&mut self, effects: &mut Vec<Effect>) {
        let Some(run) = self.run.as_mut() else { return };
        while let Some(phase) = run.phases.pop_front() {
            // A unit whose action failed in an earlier phase is not taken further.
            let phase: Vec<(Action, Option<UnitFile>)> = phase
                .into_iter()
                .filter(|a| a.unit().is_none_or(|u| !run.failed.contains_key(u)))
                .map(|action| {
                    let file = match &action {
                        Action::Load(name) => run
                            .wanted
                            .get(name)
                            .and_then(|w| self.bodies.get(&w.hash))
                            .cloned(),
                        _ => None,
                    };
                    (action, file)
                })
                .collect();
            if phase.is_empty() {
                continue;
            }
            if !matches!(phase[0].0, Action::Load(_) | Action::Reload) {
                self.stale.extend(std::mem::take(&mut run.held_back));
            }
            run.in_flight = phase.len();
            effects.push(Effect::Run(phase));
            return;
        }
        self.finish(effects);
    }

    /// Takes in the outcome of one action.
    fn settle(&mut self, now: Instant, action: Action, result: Result<(), ActionError>) {
        let Some(run) = self.run.as_mut() else {
            tracing::warn!(action = ?action, "an action ended with no run in flight");
            return;
        };
        run.in_flight = run.in_flight.saturating_sub(1);
        if let Action::Start(name) = &action {
            if run.starting.remove(name)
                && result.is_ok()
                && self.systemd.get(name).is_none_or(|s| s.active != "active")
            {
                // The manager reports the outcome of the start it took: until it does, the
                // state known is the one before the start.
                self.awaiting_report.insert(name.clone());
            }
        }
        if result.is_ok() {
            match &action {
                Action::Unload(name) => {
                    self.prune_due = true;
                    self.held.remove(name);
                    self.systemd.remove(name);
                    self.awaiting_report.remove(name);
                }
                Action::Load(name) => {
                    if let Some(w) = run.wanted.get(name) {
                        let old = self.held.insert(
                            name.clone(),
                            Held {
                                hash: w.hash,
                                state: TargetState::Loaded,
                            },
                        );
                        self.prune_due |= old.is_some_and(|o| o.hash != w.hash);
                    }
                    run.held_back.insert(name.clone());
                }
                Action::Reload => {}
                Action::Stop(name) => {
                    if let Some(h) = self.held.get_mut(name) {
                        h.state = TargetState::Loaded;
                    }
                    run.reported.insert(name.clone());
                }
                Action::Start(name) => {
                    if let Some(h) = self.held.get_mut(name) {
                        h.state = TargetState::Launched;
                    }
                    run.reported.insert(name.clone());
                }
            }
        }
        match (result, action.unit()) {
            (Ok(()), Some(u)) => {
                self.failures.remove(u);
                if !run.held_back.contains(u) {
                    self.stale.insert(u.to_string());
                }
            }
            (Ok(()), None) => {}
            (Err(e), Some(u)) => {
                let failure = reconcile::record_failure(
                    self.failures.get(u),
                    &action,
                    e.reason,
                    e.refused,
                    now,
                    jitter(u),
                );
                match failure.retry_at {
                    Some(at) => tracing::warn!(unit = %u, action = ?action,
                        error = %failure.reason, attempts = failure.attempts,
                        retry_in = ?at.saturating_duration_since(now),
                        "unit action failed"),
                    None => tracing::warn!(unit = %u, action = ?action,
                        error = %failure.reason, "unit action refused; not retrying it"),
                }
                run.failed.insert(u.to_string(), failure);
            }
            (Err(e), None) => {
                tracing::warn!(error = %e.reason, "reloading the unit manager failed")
            }
        }
        if run.in_flight == 0 {
            let mut effects = std::mem::take(&mut self.queued);
            self.next_phase(&mut effects);
            self.queued = effects;
        }
    }

    /// The run is done: failures are kept for their retries, and the units acted on whose
    /// outcome the manager does not report on its own are read again.
    fn finish(&mut self, effects: &mut Vec<Effect>) {
        let Some(run) = self.run.take() else { return };
        self.failures.extend(run.failed);
        let wanted = &run.wanted;
        let held = &self.held;
        self.failures
            .retain(|u, _| wanted.contains_key(u) || held.contains_key(u));
        self.stale.extend(run.held_back);
        self.stale.extend(run.touched.iter().cloned());
        let read: Vec<String> = run
            .touched
            .into_iter()
            .filter(|u| self.held.contains_key(u) && !run.reported.contains(u))
            .collect();
        if !read.is_empty() {
            effects.push(Effect::ReadStates(read));
        }
        if std::mem::take(&mut self.prune_due) {
            self.prune_bodies();
        }
    }

    /// Forgets bodies and requirements no unit of this machine's view uses any more.
    fn prune_bodies(&mut self) {
        let mut used: HashSet<UnitHash> = self.schedule.values().map(|e| e.hash).collect();
        // Both contents of a global unit under a rollout: the job's came with its record and
        // is needed when the rollout reaches this machine.
        used.extend(self.globals.values().map(|g| g.hash));
        used.extend(self.globals.values().map(|g| self.global_hash(g)));
        used.extend(self.held.values().map(|h| h.hash));
        self.bodies.retain(|h, _| used.contains(h));
        self.requirements.retain(|_, (h, _)| used.contains(h));
    }

    /// The state this machine would publish for a unit it holds.
    fn state_of(&self, name: &str, held: &Held) -> UnitState {
        UnitState {
            name: name.to_string(),
            machine_id: self.machine.id.clone(),
            hash: held.hash,
            systemd: self.systemd.get(name).cloned().unwrap_or_default(),
            agent_state: held.state,
            reason: self
                .failures
                .get(name)
                .map(|f| f.reason.clone())
                .or_else(|| self.reasons.get(name).cloned()),
            global: self.globals.contains_key(name),
        }
    }

    /// Publishes what changed since the last publication, in one batch. Units held back by the
    /// run in flight are left out: they come back as changed when it releases them.
    fn publish(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let everything = self.all_stale;
        let names: Vec<String> = if everything {
            let mut all: BTreeSet<String> = self.held.keys().cloned().collect();
            all.extend(self.published.keys().cloned());
            self.stale.clear();
            all.into_iter().collect()
        } else {
            // In order, so that a batch is the same whatever order the changes came in.
            let mut names: Vec<String> = self.stale.drain().collect();
            names.sort_unstable();
            names
        };
        let held_back = self.run.as_ref().map(|r| (&r.held_back, &r.starting));
        let awaiting = &self.awaiting_report;
        let mut uncover: Vec<String> = Vec::new();
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| match held_back {
                // A unit just loaded has no state from the manager yet, and a global unit
                // being started is on its way to what its job wants: neither is published,
                // and no summary vouches for them until they are.
                Some((h, s)) if h.contains(n) || s.contains(n) => {
                    uncover.push(n.clone());
                    false
                }
                _ if awaiting.contains(n) => {
                    uncover.push(n.clone());
                    false
                }
                _ => true,
            })
            .collect();
        let mut save: Vec<UnitState> = Vec::new();
        let mut remove: Vec<String> = Vec::new();
        let mut cover: Vec<String> = Vec::new();
        for name in &names {
            match self.held.get(name) {
                Some(held) => {
                    let state = self.state_of(name, held);
                    if state.global && Some(&state) == self.desired_instance(name).as_ref() {
                        // As its job wants it: the summary vouches for it, and a state of
                        // its own published earlier goes (after the summary, see `remove`).
                        cover.push(name.clone());
                        if self.published.contains_key(name) {
                            remove.push(name.clone());
                        }
                        continue;
                    }
                    uncover.push(name.clone());
                    if self.published.get(name) != Some(&state) {
                        save.push(state);
                    }
                }
                None => {
                    uncover.push(name.clone());
                    if self.published.contains_key(name) {
                        remove.push(name.clone());
                    }
                }
            }
        }
        // The summary can differ from the one written only if the global units changed, every
        // state is looked at again, or a global unit comes to be covered here or stops being
        // covered. Otherwise it is not computed: that is a pass over every global unit, and
        // the states of placed units change one batch after another.
        let reconsider = self.summary_stale
            || everything
            || cover.iter().any(|n| !self.covered.contains(n))
            || uncover.iter().any(|n| self.covered.contains(n));
        self.all_stale = false;
        self.summary_stale = false;
        let summary = reconsider.then(|| {
            // One walk over the global units and the covered ones side by side (both in name
            // order): this runs on every change of the global units, on every machine.
            let mut now_covered: Vec<&String> = cover.iter().collect();
            let mut not_now: Vec<&String> = uncover.iter().collect();
            now_covered.sort_unstable();
            not_now.sort_unstable();
            let mut was = self.covered.iter().peekable();
            let absent = self
                .globals
                .iter()
                .filter_map(|(name, job)| {
                    while was.next_if(|c| *c < name).is_some() {}
                    let was_covered = was.next_if(|c| *c == name).is_some();
                    let covered = not_now.binary_search(&name).is_err()
                        && (was_covered || now_covered.binary_search(&name).is_ok());
                    (job.desired != TargetState::Inactive && !covered).then(|| name.clone())
                })
                .collect();
            GlobalSummary {
                revision: self.global_written.values().copied().max().unwrap_or(0),
                absent,
            }
        });
        // A machine that never saw a global unit has nothing to vouch for: no summary.
        let nothing = self.summary.is_none() && self.globals.is_empty();
        let summary = summary.filter(|s| !nothing && self.summary.as_ref() != Some(s));
        // An empty summary (no global unit left) goes at once: its key is deleted, and a
        // machine without global units keeps no record of them.
        let paced = save.is_empty()
            && remove.is_empty()
            && summary
                .as_ref()
                .is_some_and(|s| *s != GlobalSummary::default())
            && self
                .summary_written_at
                .is_some_and(|at| now < at + self.summary_interval());
        if paced {
            // Written later with what changes meanwhile; the units it would cover keep no
            // state of their own meanwhile, so taking them as covered now is safe.
            self.summary_stale = true;
            self.summary_due = self
                .summary_written_at
                .map(|at| at + self.summary_interval());
        }
        if save.is_empty() && remove.is_empty() && (summary.is_none() || paced) {
            for name in &uncover {
                self.covered.remove(name);
            }
            self.covered.extend(cover);
            return;
        }
        // A state moving between the placed and global prefixes leaves nothing behind.
        let moved: Vec<String> = save
            .iter()
            .filter(|s| {
                self.published
                    .get(&s.name)
                    .is_some_and(|p| p.global != s.global)
            })
            .map(|s| s.name.clone())
            .collect();
        if summary.is_some() {
            self.summary_written_at = Some(now);
            self.summary_due = None;
        }
        effects.push(Effect::Publish {
            moved,
            save: save.clone(),
            remove: remove.clone(),
            summary: summary.clone(),
        });
        self.publication = Some(Publication {
            sent_at: now,
            names,
            save,
            remove,
            summary,
            cover,
            uncover,
        });
    }

    /// How long a summary changing alone waits after the last one: [`SUMMARY_INTERVAL`], longer
    /// while the registry answers slowly.
    fn summary_interval(&self) -> Duration {
        (self.publish_took * SUMMARY_LATENCY_FACTOR).clamp(SUMMARY_INTERVAL, SUMMARY_INTERVAL_MAX)
    }

    /// The state a global unit's instance has here when it is as its job wants it.
    fn desired_instance(&self, name: &str) -> Option<UnitState> {
        registry::desired_instance(self.globals.get(name)?, &self.machine.id)
    }
}

/// How long the `failures`-th failed publication in a row waits: [`RETRY_INTERVAL`], doubled
/// for each failure before it, up to [`PUBLISH_RETRY_MAX`].
fn publish_retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_INTERVAL
        .saturating_mul(1 << doublings)
        .min(PUBLISH_RETRY_MAX)
}

/// Whether `update` takes a record of `copy` away or replaces it (its body may lose its last
/// user); records only added cannot.
fn loses_users<T, U>(update: &Update<String, T>, copy: &BTreeMap<String, U>) -> bool {
    match update {
        Update::Reset(_) => true,
        Update::Changes(changes) => changes.iter().any(|c| match c {
            registry::Change::Put(name, _) => copy.contains_key(name),
            registry::Change::Delete(_) => true,
        }),
    }
}

/// A number for spreading the retries of `unit` (std's hasher keys are random).
fn jitter(unit: &str) -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(unit)
}

#[cfg(test)]
mod tests;
