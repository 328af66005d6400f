//! The agent's loop: follows this machine's schedule, the global units and this machine's
//! dynamic metadata through registry watches, carries out [`crate::reconcile::plan`] through the
//! [`UnitManager`], and publishes unit states under the machine's lease.

use crate::presence::Presence;
use crate::reconcile::{self, Action, Candidate, Failure, Held};
use crate::{Refused, StateChange, UnitManager};
use futures::StreamExt;
use registry::{GlobalJob, Job, ScheduleEntry, SystemdState, TargetState, UnitState, Update};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use unit::{Requirements, UnitFile, UnitHash};

/// How fleetd is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// The machine leaves the cluster (SIGTERM/SIGINT): stop and unload its units, remove its
    /// presence so the engine moves them at once.
    Leave,
    /// fleetd exits for an upgrade or restart (SIGUSR2): units keep running, the lease stays,
    /// and the next fleetd resumes both.
    Upgrade,
}

/// Publications of unit states at most this often (changes in between wait and go together).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Reconciliations at most this often: the first change after a quiet spell is acted on at
/// once, a burst (global units arriving one after another, each a change on every machine)
/// is taken in one pass per interval. A pass looks at every unit of the machine, so one pass
/// per change made a burst of N global units cost each machine N passes over N units.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(100);

/// Paces one of the agent's actions: the first request after a quiet spell runs at once;
/// requests within `interval` of the last run wait for `due` and are then taken together.
struct Pacer {
    interval: Duration,
    last: tokio::time::Instant,
    /// When the waiting requests are to run, if any wait.
    due: Option<tokio::time::Instant>,
}

impl Pacer {
    fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            last: tokio::time::Instant::now() - interval,
            due: None,
        }
    }

    /// True if the action is to run now (counted as run); otherwise it is due later.
    fn now(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.last + self.interval {
            self.last = now;
            self.due = None;
            true
        } else {
            self.due.get_or_insert(self.last + self.interval);
            false
        }
    }

    /// Whether requests wait for `due`.
    fn waiting(&self) -> bool {
        self.due.is_some()
    }

    /// Sleeps until waiting requests are due (for ever if none wait).
    async fn wait(&self) {
        match self.due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    }
}

/// How often failed publications are retried (failed unit actions wait for their own retry
/// time, see [`reconcile::retry_delay`]).
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// How many unit actions (or body reads) of one phase run at once.
const CONCURRENT_ACTIONS: usize = 32;

/// Carries out one action; `file` is the body to load for [`Action::Load`].
async fn execute(
    manager: &dyn UnitManager,
    action: &Action,
    file: Option<anyhow::Result<UnitFile>>,
) -> anyhow::Result<()> {
    match action {
        Action::Unload(name) => manager.unload(name).await,
        Action::Load(name) => match file {
            Some(file) => manager.load(name, &file?).await,
            None => Err(anyhow::anyhow!("{name}: no unit body to load")),
        },
        Action::Reload => manager.reload().await,
        Action::Stop(name) => manager.stop(name).await,
        Action::Start(name) => manager.start(name).await,
    }
}

/// The agent of one machine.
pub struct Agent {
    presence: Presence,
    manager: Arc<dyn UnitManager>,
    schedule: BTreeMap<String, ScheduleEntry>,
    globals: BTreeMap<String, Job>,
    dynamic_metadata: BTreeMap<String, String>,
    bodies: HashMap<UnitHash, UnitFile>,
    /// unit -> the hash its requirements were read from, and those requirements (specifiers
    /// depend on the unit's name, so one body can give several).
    requirements: HashMap<String, (UnitHash, std::sync::Arc<Requirements>)>,
    held: BTreeMap<String, Held>,
    /// The last failed action on a unit and when to try it again, until one succeeds.
    failures: BTreeMap<String, Failure>,
    /// The machine is shutting down and this agent has left the cluster: it acts no more.
    left_for_shutdown: bool,
    systemd: BTreeMap<String, SystemdState>,
    published: BTreeMap<String, UnitState>,
    /// Units whose published state may be out of date; publishing looks at these only (a
    /// machine with hundreds of units would otherwise rebuild and compare every state on
    /// every change of one).
    stale: std::collections::HashSet<String>,
    /// Every unit's published state may be out of date (a new lease, a missed change).
    all_stale: bool,
    /// New machine records (metadata, IP) from a configuration reload.
    machine_updates: Option<watch::Receiver<registry::MachineState>>,
}

impl Agent {
    pub fn new(presence: Presence, manager: Arc<dyn UnitManager>) -> Agent {
        Agent {
            presence,
            manager,
            schedule: BTreeMap::new(),
            globals: BTreeMap::new(),
            dynamic_metadata: BTreeMap::new(),
            bodies: HashMap::new(),
            requirements: HashMap::new(),
            held: BTreeMap::new(),
            failures: BTreeMap::new(),
            left_for_shutdown: false,
            systemd: BTreeMap::new(),
            published: BTreeMap::new(),
            stale: std::collections::HashSet::new(),
            all_stale: true,
            machine_updates: None,
        }
    }

    /// Re-adopts what the unit manager already runs (after a restart of fleetd): nothing is
    /// restarted; active units count as launched.
    async fn adopt(&mut self) -> anyhow::Result<()> {
        let units = self.manager.units().await?;
        let names: Vec<String> = units.iter().map(|(n, _)| n.clone()).collect();
        let states: BTreeMap<String, Option<SystemdState>> =
            self.manager.states(&names).await?.into_iter().collect();
        for (name, hash) in units {
            let state = match states.get(&name).cloned().flatten() {
                Some(s) => {
                    let launched =
                        matches!(s.active.as_str(), "active" | "activating" | "reloading");
                    self.systemd.insert(name.clone(), s);
                    if launched {
                        TargetState::Launched
                    } else {
                        TargetState::Loaded
                    }
                }
                None => TargetState::Loaded,
            };
            tracing::info!(unit = %name, state = %state, "re-adopted unit");
            self.held.insert(name, Held { hash, state });
        }
        Ok(())
    }

    /// Runs until `shutdown` says how to stop.
    /// Re-announces the machine with each record sent here (SIGHUP: new metadata or IP).
    pub fn with_machine_updates(
        mut self,
        updates: watch::Receiver<registry::MachineState>,
    ) -> Agent {
        self.machine_updates = Some(updates);
        self
    }

    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<Option<Shutdown>>,
    ) -> anyhow::Result<()> {
        let registry = self.presence.registry.clone();
        let me = self.presence.machine.id.clone();
        let mut schedule_rx = registry.follow_machine_schedule(&me);
        let mut globals_rx = registry.follow_globals();
        let mut metadata_rx = registry.follow_machine_metadata(&me);
        let mut changes = self.manager.subscribe();
        let mut machine_stopping = self.manager.machine_stopping();
        if let Err(e) = self.adopt().await {
            tracing::warn!(error = %e, "could not list the units the unit manager holds");
        }
        let (keeper, mut expired) = self.presence.keep_alive();
        // Set while the lease is found expired and registering again has not succeeded yet.
        let mut lapsed = false;
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        let mut publishing = Pacer::new(PUBLISH_INTERVAL);
        let mut reconciling = Pacer::new(RECONCILE_INTERVAL);
        // Nothing is decided until all three copies have been read once.
        let mut ready = [false; 3];
        loop {
            let mut dirty = false;
            let mut state_changed = false;
            tokio::select! {
                Some(u) = schedule_rx.recv() => { self.apply_schedule(u); ready[0] = true; dirty = true; }
                Some(u) = globals_rx.recv() => { self.apply_globals(u); ready[1] = true; dirty = true; }
                Some(u) = metadata_rx.recv() => {
                    u.apply_to(&mut self.dynamic_metadata);
                    ready[2] = true; dirty = true;
                }
                change = changes.recv() => state_changed = self.take_change(change, &mut changes).await,
                Some(lease) = expired.recv() => {
                    lapsed = lease == self.presence.lease.id();
                }
                _ = retry.tick() => {
                    // States a failed publication left behind.
                    state_changed = self.all_stale || !self.stale.is_empty();
                }
                // Not armed while a reconciliation already waits for its turn: a retry time
                // in the past would otherwise fire again and again until then.
                _ = sleep_until(reconcile::next_retry(&self.failures)), if !reconciling.waiting() => {
                    dirty = true
                }
                Some(()) = stopping(&mut machine_stopping) => {
                    if !self.left_for_shutdown {
                        self.leave_for_shutdown().await;
                    }
                }
                Some(machine) = next_machine(&mut self.machine_updates) => {
                    self.presence.machine = machine;
                    match self.presence.announce().await {
                        Ok(()) => tracing::info!("machine record updated"),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "updating the machine record failed"),
                    }
                    dirty = true;
                }
                _ = publishing.wait() => state_changed = true,
                _ = reconciling.wait() => dirty = true,
                _ = shutdown.changed() => {
                    let mode = *shutdown.borrow();
                    if let Some(mode) = mode {
                        return self.stop(mode).await;
                    }
                }
            }
            if self.left_for_shutdown {
                // Nothing is decided or published any more; the loop only waits for fleetd's
                // own stop (queued changes are dropped as they come).
                while schedule_rx.try_recv().is_some() {}
                while globals_rx.try_recv().is_some() {}
                while metadata_rx.try_recv().is_some() {}
                while changes.try_recv().is_ok() {}
                continue;
            }
            // Take whatever else is already queued, so a burst of changes costs one pass.
            while let Some(u) = schedule_rx.try_recv() {
                self.apply_schedule(u);
                ready[0] = true;
                dirty = true;
            }
            while let Some(u) = globals_rx.try_recv() {
                self.apply_globals(u);
                ready[1] = true;
                dirty = true;
            }
            while let Some(u) = metadata_rx.try_recv() {
                u.apply_to(&mut self.dynamic_metadata);
                ready[2] = true;
                dirty = true;
            }
            while let Ok(c) = changes.try_recv() {
                state_changed = self.take_change(Ok(c), &mut changes).await;
            }
            if lapsed {
                match self.presence.renew().await {
                    Ok(()) => {
                        lapsed = false;
                        keeper.follow(&self.presence.lease);
                        self.published.clear();
                        self.all_stale = true;
                        state_changed = true;
                    }
                    // Tried again on the next retry tick.
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "registering again failed"),
                }
            }
            if dirty && ready.iter().all(|r| *r) && reconciling.now() {
                self.reconcile(&mut changes, &mut publishing).await;
                state_changed = true;
            }
            // A burst of changes (a global unit arriving every few hundred ms, say) goes out in
            // one transaction per interval instead of one per change.
            if state_changed && publishing.now() {
                self.publish().await;
            }
        }
    }

    /// Applies a schedule update, keeping the unit texts entries carry as parsed bodies (and
    /// not in the entries).
    fn apply_schedule(&mut self, u: Update<String, ScheduleEntry>) {
        let mut carried: Vec<(UnitHash, String)> = Vec::new();
        let u = u.map(|mut entry| {
            if let Some(raw) = entry.raw.take() {
                carried.push((entry.hash, raw));
            }
            entry
        });
        u.apply_to(&mut self.schedule);
        self.keep_carried(carried);
    }

    /// Applies an update of the global units, keeping the texts their records carry as parsed
    /// bodies (every machine needs every global unit's body).
    fn apply_globals(&mut self, u: Update<String, GlobalJob>) {
        let mut carried: Vec<(UnitHash, String)> = Vec::new();
        let u = u.map(|record| {
            carried.push((record.job.hash, record.raw));
            record.job
        });
        u.apply_to(&mut self.globals);
        self.keep_carried(carried);
    }

    /// Parses unit texts that records carried into bodies. A text that does not parse or hash
    /// as its record says is ignored; that body is then read from the registry as for records
    /// without one.
    fn keep_carried(&mut self, carried: Vec<(UnitHash, String)>) {
        for (hash, raw) in carried {
            if self.bodies.contains_key(&hash) {
                continue;
            }
            if let Ok(file) = unit::UnitFile::parse(&raw) {
                if file.hash() == hash {
                    self.bodies.insert(hash, file);
                }
            }
        }
    }

    /// Takes in what the unit manager reported; true if a published state may now be out of
    /// date.
    async fn take_change(
        &mut self,
        change: Result<StateChange, broadcast::error::RecvError>,
        changes: &mut broadcast::Receiver<StateChange>,
    ) -> bool {
        match change {
            Ok(c) => {
                self.stale.insert(c.name.clone());
                match c.state {
                    Some(s) => self.systemd.insert(c.name, s),
                    None => self.systemd.remove(&c.name),
                };
                true
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.refresh_states().await;
                self.all_stale = true;
                true
            }
            Err(broadcast::error::RecvError::Closed) => {
                *changes = self.manager.subscribe();
                false
            }
        }
    }

    async fn refresh_states(&mut self) {
        let names: Vec<String> = self.held.keys().cloned().collect();
        self.refresh_states_of(&names).await;
    }

    /// Reads the states of `names` from the unit manager (one batched call).
    async fn refresh_states_of(&mut self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        match self.manager.states(names).await {
            Ok(states) => {
                for (name, s) in states {
                    match s {
                        Some(s) => self.systemd.insert(name, s),
                        None => self.systemd.remove(&name),
                    };
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading unit states failed"),
        }
    }

    async fn requirements(
        &mut self,
        name: &str,
        hash: &UnitHash,
    ) -> Option<std::sync::Arc<Requirements>> {
        if let Some((h, req)) = self.requirements.get(name) {
            if h == hash {
                return Some(req.clone());
            }
        }
        if !self.bodies.contains_key(hash) {
            match self.presence.registry.body(hash, None).await {
                Ok(Some(file)) => {
                    self.bodies.insert(*hash, file);
                }
                Ok(None) => {
                    tracing::warn!(unit = %name, hash = %hash, "unit body not in the registry");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(unit = %name, error = %e, "reading unit body failed");
                    return None;
                }
            }
        }
        let req = std::sync::Arc::new(Requirements::from_unit(self.bodies.get(hash)?, name));
        self.requirements
            .insert(name.to_string(), (*hash, req.clone()));
        Some(req)
    }

    /// Forgets bodies and requirements no unit of this machine's view uses any more.
    fn prune_bodies(&mut self) {
        let mut used: std::collections::HashSet<UnitHash> =
            self.schedule.values().map(|e| e.hash).collect();
        used.extend(self.globals.values().map(|g| g.hash));
        used.extend(self.held.values().map(|h| h.hash));
        self.bodies.retain(|h, _| used.contains(h));
        self.requirements.retain(|_, (h, _)| used.contains(h));
    }

    /// Reads the bodies of scheduled units not seen before, side by side (a burst of new units
    /// would otherwise cost one registry round trip after another). Failures are left to
    /// [`Self::requirements`], which reads again and reports.
    async fn prefetch_bodies(&mut self) {
        let missing: std::collections::BTreeSet<UnitHash> = self
            .schedule
            .values()
            .map(|e| e.hash)
            .filter(|h| !self.bodies.contains_key(h))
            .collect();
        if missing.len() < 2 {
            return;
        }
        let fetched = self
            .presence
            .registry
            .bodies(missing, CONCURRENT_ACTIONS)
            .await;
        for (hash, read) in fetched {
            if let Ok(Some(file)) = read {
                self.bodies.insert(hash, file);
            }
        }
    }

    /// Carries out the plan for the schedule as it stands. Reports from the unit manager are
    /// taken in and published while the actions run: a burst of a thousand starts takes
    /// systemd seconds, and the units it has started are listed as such meanwhile.
    async fn reconcile(
        &mut self,
        changes: &mut broadcast::Receiver<StateChange>,
        publishing: &mut Pacer,
    ) {
        self.prefetch_bodies().await;
        let mut candidates = Vec::new();
        let scheduled: Vec<(String, ScheduleEntry)> = self
            .schedule
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, entry) in scheduled {
            match self.requirements(&name, &entry.hash).await {
                Some(requirements) => candidates.push(Candidate {
                    name,
                    hash: entry.hash,
                    desired: entry.desired,
                    global: false,
                    requirements,
                }),
                // Without the body nothing can be decided for this unit; keep what runs.
                None => return,
            }
        }
        let globals: Vec<(String, UnitHash, TargetState)> = self
            .globals
            .values()
            .map(|g| (g.name.clone(), g.hash, g.desired))
            .collect();
        for (name, hash, desired) in globals {
            if let Some(requirements) = self.requirements(&name, &hash).await {
                candidates.push(Candidate {
                    name,
                    hash,
                    desired,
                    global: true,
                    requirements,
                });
            }
        }
        let mut machine = self.presence.machine.clone();
        registry::merge_metadata(&mut machine.metadata, &self.dynamic_metadata);
        let (wanted, refused) = reconcile::wanted_units(&machine, &candidates);
        for r in &refused {
            tracing::debug!(unit = %r.unit, reason = %r.reason, "not running unit here");
        }
        let actions = reconcile::plan(&wanted, &self.held);
        let (actions, _waiting) =
            reconcile::defer(actions, &self.failures, tokio::time::Instant::now());
        let touched: std::collections::BTreeSet<String> = actions
            .iter()
            .filter_map(|a| a.unit().map(str::to_string))
            .collect();
        let mut failed: BTreeMap<String, Failure> = BTreeMap::new();
        // Units whose start or stop systemd took: the manager reports their outcome itself
        // (systemd's watcher reads a unit when its job is removed; the supervisor reports every
        // change), and the periodic resync catches a report that got lost.
        let mut reported = std::collections::BTreeSet::new();
        // Each phase of the plan (unloads, loads, the reload, stops, starts) names a unit at
        // most once, so its actions run side by side; the phases stay in order.
        let mut rest = &actions[..];
        while let Some(first) = rest.first() {
            let kind = std::mem::discriminant(first);
            let len = rest
                .iter()
                .position(|a| std::mem::discriminant(a) != kind)
                .unwrap_or(rest.len());
            let (phase, next) = rest.split_at(len);
            rest = next;
            let publishes = !matches!(first, Action::Load(_) | Action::Reload);
            let runs = phase
                .iter()
                .filter(|a| a.unit().is_none_or(|u| !failed.contains_key(u)))
                .map(|action| {
                    let file = match action {
                        Action::Load(name) => Some(
                            self.bodies
                                .get(&wanted[name.as_str()].hash)
                                .cloned()
                                .ok_or_else(|| {
                                    anyhow::anyhow!(
                                        "unit body {} is not in the registry",
                                        wanted[name.as_str()].hash
                                    )
                                }),
                        ),
                        _ => None,
                    };
                    let manager = self.manager.clone();
                    let action = action.clone();
                    async move {
                        let result = execute(manager.as_ref(), &action, file).await;
                        (action, result)
                    }
                })
                .collect::<Vec<_>>();
            // The actions run in a task of their own, so that this loop can take in and
            // publish what the unit manager reports while they go on.
            let (done_tx, mut done) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut results = futures::stream::iter(runs).buffer_unordered(CONCURRENT_ACTIONS);
                while let Some(result) = results.next().await {
                    if done_tx.send(result).is_err() {
                        break;
                    }
                }
            });
            loop {
                let changed = tokio::select! {
                    result = done.recv() => match result {
                        Some((action, result)) => {
                            if result.is_ok() && matches!(action, Action::Start(_) | Action::Stop(_)) {
                                if let Some(u) = action.unit() {
                                    reported.insert(u.to_string());
                                }
                            }
                            self.settle(&action, result, &wanted, &mut failed)
                        }
                        None => break,
                    },
                    change = changes.recv() => self.take_change(change, changes).await,
                    _ = publishing.wait(), if publishes => true,
                };
                // Not between loads and the reload: a unit whose file was just written has no
                // state from the manager yet, and is read once the reload is done.
                if changed && publishes && publishing.now() {
                    self.publish().await;
                }
            }
        }
        self.failures.extend(failed);
        self.failures
            .retain(|u, _| wanted.contains_key(u) || self.held.contains_key(u));
        self.stale.extend(touched.iter().cloned());
        // Only the units acted on can have changed in ways the manager has not reported yet.
        let touched: Vec<String> = touched
            .into_iter()
            .filter(|u| self.held.contains_key(u) && !reported.contains(u))
            .collect();
        self.refresh_states_of(&touched).await;
        self.prune_bodies();
    }

    /// Takes in the outcome of one action; true if a published state may now be out of date.
    fn settle(
        &mut self,
        action: &Action,
        result: anyhow::Result<()>,
        wanted: &BTreeMap<String, reconcile::Wanted>,
        failed: &mut BTreeMap<String, Failure>,
    ) -> bool {
        if result.is_ok() {
            match action {
                Action::Unload(name) => {
                    self.held.remove(name);
                    self.systemd.remove(name);
                }
                Action::Load(name) => {
                    self.held.insert(
                        name.clone(),
                        Held {
                            hash: wanted[name.as_str()].hash,
                            state: TargetState::Loaded,
                        },
                    );
                }
                Action::Reload => {}
                Action::Stop(name) => {
                    if let Some(h) = self.held.get_mut(name) {
                        h.state = TargetState::Loaded;
                    }
                }
                Action::Start(name) => {
                    if let Some(h) = self.held.get_mut(name) {
                        h.state = TargetState::Launched;
                    }
                }
            }
        }
        match (result, action.unit()) {
            (Ok(()), Some(u)) => {
                self.failures.remove(u);
                self.stale.insert(u.to_string());
                true
            }
            (Ok(()), None) => false,
            (Err(e), Some(u)) => {
                let for_good = e.downcast_ref::<Refused>().is_some();
                let failure = reconcile::record_failure(
                    self.failures.get(u),
                    action,
                    format!("{e:#}"),
                    for_good,
                    tokio::time::Instant::now(),
                    jitter(u),
                );
                match failure.retry_at {
                    Some(at) => {
                        tracing::warn!(unit = %u, action = ?action, error = %failure.reason,
                        attempts = failure.attempts,
                        retry_in = ?at.saturating_duration_since(tokio::time::Instant::now()),
                        "unit action failed")
                    }
                    None => {
                        tracing::warn!(unit = %u, action = ?action, error = %failure.reason,
                        "unit action refused; not retrying it")
                    }
                }
                failed.insert(u.to_string(), failure);
                false
            }
            (Err(e), None) => {
                tracing::warn!(error = %format!("{e:#}"), "reloading the unit manager failed");
                false
            }
        }
    }

    /// The state this machine would publish for a unit it holds.
    fn state_of(&self, name: &str, held: &Held) -> UnitState {
        UnitState {
            name: name.to_string(),
            machine_id: self.presence.machine.id.clone(),
            hash: held.hash,
            systemd: self.systemd.get(name).cloned().unwrap_or_default(),
            agent_state: held.state,
            reason: self
                .failures
                .get(name)
                .map(|f| f.reason.clone())
                .or_else(|| self.manager.failure_reason(name)),
            global: self.globals.contains_key(name),
        }
    }

    /// Publishes what changed since the last publication, in one batch.
    async fn publish(&mut self) {
        let names: Vec<String> = if self.all_stale {
            let mut all: std::collections::BTreeSet<String> = self.held.keys().cloned().collect();
            all.extend(self.published.keys().cloned());
            self.stale.clear();
            all.into_iter().collect()
        } else {
            self.stale.drain().collect()
        };
        let mut save: Vec<UnitState> = Vec::new();
        let mut remove: Vec<String> = Vec::new();
        for name in &names {
            match self.held.get(name) {
                Some(held) => {
                    let state = self.state_of(name, held);
                    if self.published.get(name) != Some(&state) {
                        save.push(state);
                    }
                }
                None if self.published.contains_key(name) => remove.push(name.clone()),
                None => {}
            }
        }
        if save.is_empty() && remove.is_empty() {
            self.all_stale = false;
            return;
        }
        let me = self.presence.machine.id.clone();
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
        let lease = &self.presence.lease;
        let mut result = Ok(());
        if !moved.is_empty() {
            result = lease.publish_states(&me, &[], &moved).await;
        }
        if result.is_ok() {
            result = lease.publish_states(&me, &save, &remove).await;
        }
        match result {
            Ok(()) => {
                self.all_stale = false;
                for name in &remove {
                    self.published.remove(name);
                }
                for state in save {
                    self.published.insert(state.name.clone(), state);
                }
            }
            Err(e) => {
                // Looked at again on the next change (or the next retry tick).
                if !self.all_stale {
                    self.stale.extend(names);
                }
                tracing::warn!(error = %e, "publishing unit states failed; will retry");
            }
        }
    }

    /// The machine is shutting down: leave the cluster at once (the lease goes, and with it
    /// this machine's presence and unit states, so the engine moves its units now), start
    /// nothing more, and let the system stop the units.
    async fn leave_for_shutdown(&mut self) {
        self.left_for_shutdown = true;
        // Nothing is retried any more (a retry time left behind would wake the loop for ever).
        self.failures.clear();
        tracing::warn!(
            units = self.held.len(),
            "the machine is shutting down: leaving the cluster now; the system stops the units"
        );
        match self.presence.leave().await {
            Ok(()) => tracing::info!("left the cluster"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"),
                "could not remove this machine from the registry; it goes when its lease expires"),
        }
    }

    async fn stop(mut self, mode: Shutdown) -> anyhow::Result<()> {
        if self.left_for_shutdown {
            tracing::info!("stopping: this machine already left the cluster for its shutdown");
            return Ok(());
        }
        match mode {
            Shutdown::Upgrade => {
                tracing::info!(
                    units = self.held.len(),
                    "exiting for an upgrade; units keep running"
                );
                Ok(())
            }
            Shutdown::Leave => {
                let names: Vec<String> = self.held.keys().cloned().collect();
                // Side by side, as a reconciliation's phases run: one after another, a machine
                // of a thousand units took minutes to leave.
                let manager = &self.manager;
                // Collected first, as in `reconcile`: a stream holding the closure across the
                // await would not be `Send` for every lifetime.
                let unloads = names
                    .iter()
                    .map(|name| async move { (name, manager.unload(name).await) })
                    .collect::<Vec<_>>();
                let results: Vec<(&String, anyhow::Result<()>)> = futures::stream::iter(unloads)
                    .buffer_unordered(CONCURRENT_ACTIONS)
                    .collect()
                    .await;
                for (name, result) in results {
                    match result {
                        Ok(()) => {
                            self.held.remove(name);
                        }
                        Err(e) => tracing::warn!(unit = %name, error = %format!("{e:#}"),
                            "unloading unit failed"),
                    }
                }
                if let Err(e) = self.manager.reload().await {
                    tracing::warn!(error = %format!("{e:#}"), "reloading the unit manager failed");
                }
                self.presence.leave().await?;
                tracing::info!(units = names.len(), "left the cluster");
                Ok(())
            }
        }
    }
}

/// Sleeps until `at`, or for ever if there is no `at`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once, when the machine is found shutting down; never if the manager cannot tell
/// (or stops telling).
async fn stopping(rx: &mut Option<watch::Receiver<bool>>) -> Option<()> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    let found = r.wait_for(|stopping| *stopping).await.is_ok();
    *rx = None;
    if found {
        Some(())
    } else {
        std::future::pending().await
    }
}

/// A random number for spreading the retries of `unit` (std's hasher keys are random).
fn jitter(unit: &str) -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(unit)
}

/// The next machine record sent, or never if there is no sender.
async fn next_machine(
    updates: &mut Option<watch::Receiver<registry::MachineState>>,
) -> Option<registry::MachineState> {
    match updates {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => {
                *updates = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
