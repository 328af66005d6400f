//! The agent's driver: merges what happens (this machine's schedule, the global units and its
//! dynamic metadata through registry followers, the unit manager's reports, the outcomes of
//! its own effects, timers) into inputs for [`Core`], and carries the core's effects out
//! through the [`UnitManager`] and the registry. Every decision is the core's.

use crate::core::{ActionError, Core, Effect, Input};
use crate::metrics::AgentMetrics;
use crate::presence::{self, Presence, TokenBucket};
use crate::reconcile::Action;
use crate::{Refused, UnitManager};
use futures::StreamExt;
use registry::SystemdState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use unit::{UnitFile, UnitHash};

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

/// How many unit actions (or body reads) run at once.
const CONCURRENT_ACTIONS: usize = 32;

/// The agent of one machine.
pub struct Agent {
    presence: Presence,
    manager: Arc<dyn UnitManager>,
    /// New machine records (metadata, IP) from a configuration reload.
    machine_updates: Option<watch::Receiver<registry::MachineState>>,
    /// Requests for a readable account of the agent's state (SIGUSR1).
    dumps: Option<mpsc::Receiver<DumpRequest>>,
    /// Set when a new lease replaced a lost one, until the states are all written again under
    /// it: those writes are paced by `republish_bucket`.
    republish: Arc<AtomicBool>,
    republish_bucket: Arc<std::sync::Mutex<TokenBucket>>,
    metrics: AgentMetrics,
}

/// A request for a readable account of the agent's state, answered on the sender with
/// [`crate::core::AgentDump`]'s text.
pub type DumpRequest = oneshot::Sender<String>;

impl Agent {
    pub fn new(presence: Presence, manager: Arc<dyn UnitManager>) -> Agent {
        Agent {
            presence,
            manager,
            machine_updates: None,
            dumps: None,
            republish: Arc::new(AtomicBool::new(false)),
            republish_bucket: presence::republish_bucket(),
            metrics: AgentMetrics::default(),
        }
    }

    /// Keeps `metrics` current (its lease losses are counted only if the presence was given
    /// them too: [`Presence::with_lease_losses`]).
    pub fn with_metrics(mut self, metrics: AgentMetrics) -> Agent {
        self.metrics = metrics;
        self
    }

    /// Answers each request sent here with an account of the agent's state (SIGUSR1).
    pub fn with_dump_requests(mut self, requests: mpsc::Receiver<DumpRequest>) -> Agent {
        self.dumps = Some(requests);
        self
    }

    /// Re-announces the machine with each record sent here (SIGHUP: new metadata or IP).
    pub fn with_machine_updates(
        mut self,
        updates: watch::Receiver<registry::MachineState>,
    ) -> Agent {
        self.machine_updates = Some(updates);
        self
    }

    /// What the unit manager already runs (after a restart of fleetd), to be re-adopted.
    async fn adoptable(&self) -> anyhow::Result<Vec<(String, UnitHash, Option<SystemdState>)>> {
        let units = self.manager.units().await?;
        let names: Vec<String> = units.iter().map(|(n, _)| n.clone()).collect();
        let states: std::collections::BTreeMap<String, Option<SystemdState>> =
            self.manager.states(&names).await?.into_iter().collect();
        Ok(units
            .into_iter()
            .map(|(name, hash)| {
                let state = states.get(&name).cloned().flatten();
                (name, hash, state)
            })
            .collect())
    }

    /// Runs until `shutdown` says how to stop.
    pub async fn run(self, shutdown: watch::Receiver<Option<Shutdown>>) -> anyhow::Result<()> {
        // Every line the agent logs names its machine.
        let span = tracing::info_span!("agent", machine = %self.presence.machine.id);
        tracing::Instrument::instrument(self.drive(shutdown), span).await
    }

    async fn drive(
        mut self,
        mut shutdown: watch::Receiver<Option<Shutdown>>,
    ) -> anyhow::Result<()> {
        let registry = self.presence.registry.clone();
        let me = self.presence.machine.id.clone();
        let mut schedule = registry.follow_machine_schedule(&me);
        let mut globals = registry.follow_globals();
        let mut metadata = registry.follow_machine_metadata(&me);
        let mut reports = self.manager.subscribe();
        let mut machine_stopping = self.manager.machine_stopping();
        let adopted = self.adoptable().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not list the units the unit manager holds");
            Vec::new()
        });
        let mut core = Core::new(self.presence.machine.clone(), adopted);
        let (keeper, mut expired) = self.presence.keep_alive();
        // The outcomes of effects carried out in tasks of their own come back here.
        let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel::<Input>();
        let mut wake_at: Option<Instant> = None;
        loop {
            let input = tokio::select! {
                Some(u) = schedule.recv() => Input::Schedule(u),
                Some(u) = globals.recv() => Input::Globals(u),
                Some(u) = metadata.recv() => Input::Metadata(u),
                report = reports.recv() => match self.report(report, &mut reports) {
                    Some(input) => input,
                    None => continue,
                },
                Some(input) = outcomes.recv() => {
                    self.observe(&input);
                    input
                }
                Some(lease) = expired.recv() => {
                    if lease != self.presence.lease.id() {
                        continue;
                    }
                    let lost = self.presence.lease_losses().record();
                    tracing::warn!(
                        lease = format!("{lease:x}"),
                        leases_lost = lost,
                        "machine lease lost: the registry let it expire (unreachable or too slow \
                         for longer than agent_ttl); registering again, then writing unit states \
                         again, paced"
                    );
                    Input::LeaseLapsed
                }
                Some(()) = stopping(&mut machine_stopping) => Input::MachineStopping,
                Some(machine) = next_machine(&mut self.machine_updates) => Input::MachineRecord(machine),
                reply = registry::recv_or_never(&mut self.dumps) => {
                    // The requester may have given up waiting; nothing to do then.
                    let _ = reply.send(core.dump().to_string());
                    continue;
                }
                _ = sleep_until(wake_at) => Input::Tick,
                _ = shutdown.changed() => {
                    let mode = *shutdown.borrow();
                    match mode {
                        Some(mode) => return self.stop(&core, mode).await,
                        None => continue,
                    }
                }
            };
            let now = Instant::now();
            core.on(now, input);
            // Take whatever else is already queued, so that a burst costs one decision.
            while let Some(u) = schedule.try_recv() {
                core.on(now, Input::Schedule(u));
            }
            while let Some(u) = globals.try_recv() {
                core.on(now, Input::Globals(u));
            }
            while let Some(u) = metadata.try_recv() {
                core.on(now, Input::Metadata(u));
            }
            while let Ok(input) = outcomes.try_recv() {
                self.observe(&input);
                core.on(now, input);
            }
            loop {
                let report = reports.try_recv();
                if matches!(report, Err(broadcast::error::TryRecvError::Empty)) {
                    break;
                }
                let report = report.map_err(|e| match e {
                    broadcast::error::TryRecvError::Lagged(n) => {
                        broadcast::error::RecvError::Lagged(n)
                    }
                    _ => broadcast::error::RecvError::Closed,
                });
                if let Some(input) = self.report(report, &mut reports) {
                    core.on(now, input);
                }
            }
            let ready = core.ready(now);
            wake_at = ready.wake_at;
            for effect in ready.effects {
                if let Effect::Run(phase) = &effect {
                    for (action, _) in phase {
                        if let Some(unit) = action.unit() {
                            tracing::info!(
                                unit = %unit,
                                revision = %core.revision(unit).map(|h| h.to_string()).unwrap_or_default(),
                                action = crate::metrics::action_label(action),
                                "unit action"
                            );
                        }
                    }
                }
                if let Some(input) = self.carry_out(effect, &outcomes_tx, &keeper).await {
                    outcomes_tx.send(input).ok();
                }
            }
        }
    }

    /// Counts what an outcome says: an action's end, or unit states read from the manager.
    fn observe(&self, input: &Input) {
        match input {
            Input::Done(action, result) => self.metrics.acted(action, result.is_ok()),
            Input::States(Ok(states)) => {
                for (name, state, _) in states {
                    self.metrics
                        .reported(name, state.as_ref().map(|s| s.active.as_str()));
                }
            }
            _ => {}
        }
    }

    /// The core's input for a report of the unit manager; `None` if there is none.
    fn report(
        &self,
        report: Result<crate::StateChange, broadcast::error::RecvError>,
        reports: &mut broadcast::Receiver<crate::StateChange>,
    ) -> Option<Input> {
        match report {
            Ok(change) => {
                self.metrics.reported(
                    &change.name,
                    change.state.as_ref().map(|s| s.active.as_str()),
                );
                let reason = self.manager.failure_reason(&change.name);
                Some(Input::Reported(change, reason))
            }
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Input::ReportsLost),
            Err(broadcast::error::RecvError::Closed) => {
                *reports = self.manager.subscribe();
                None
            }
        }
    }

    /// Carries one effect out: in a task of its own when it may take long (its outcome comes
    /// back through `outcomes`), here when it is rare and short (its outcome is returned).
    async fn carry_out(
        &mut self,
        effect: Effect,
        outcomes: &mpsc::UnboundedSender<Input>,
        keeper: &crate::presence::Keeper,
    ) -> Option<Input> {
        match effect {
            Effect::FetchBodies(hashes) => {
                let registry = self.presence.registry.clone();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let read = registry
                        .bodies(hashes, CONCURRENT_ACTIONS)
                        .await
                        .into_iter()
                        .map(|(hash, r)| (hash, r.map_err(|e| format!("{e:#}"))))
                        .collect();
                    outcomes.send(Input::Bodies(read)).ok();
                });
                None
            }
            Effect::Run(phase) => {
                let runs = phase
                    .into_iter()
                    .map(|(action, file)| {
                        let manager = self.manager.clone();
                        async move {
                            let result = execute(manager.as_ref(), &action, file).await;
                            (action, result)
                        }
                    })
                    // Collected first: a stream holding these closures across the await would
                    // not be `Send` for every lifetime, as `tokio::spawn` requires.
                    .collect::<Vec<_>>();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let mut results =
                        futures::stream::iter(runs).buffer_unordered(CONCURRENT_ACTIONS);
                    while let Some((action, result)) = results.next().await {
                        let result = result.map_err(|e| ActionError {
                            refused: e.downcast_ref::<Refused>().is_some(),
                            reason: format!("{e:#}"),
                        });
                        if outcomes.send(Input::Done(action, result)).is_err() {
                            break;
                        }
                    }
                });
                None
            }
            Effect::ReadStates(names) => {
                let manager = self.manager.clone();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let read = manager
                        .states(&names)
                        .await
                        .map(|states| {
                            states
                                .into_iter()
                                .map(|(name, state)| {
                                    let reason = manager.failure_reason(&name);
                                    (name, state, reason)
                                })
                                .collect()
                        })
                        .map_err(|e| format!("{e:#}"));
                    outcomes.send(Input::States(read)).ok();
                });
                None
            }
            Effect::Publish {
                moved,
                save,
                remove,
                summary,
            } => {
                let lease = self.presence.lease.clone();
                let me = self.presence.machine.id.clone();
                let outcomes = outcomes.clone();
                let republish = self.republish.clone();
                let bucket = self.republish_bucket.clone();
                let delay = presence::republish_delay(self.presence.ttl, fastrand::f64());
                tokio::spawn(async move {
                    let asked = std::time::Instant::now();
                    let mut result = Ok(());
                    if !moved.is_empty() {
                        result = lease.publish_states(&me, &[], &moved).await;
                    }
                    if result.is_ok() && republish.load(Ordering::Relaxed) {
                        result =
                            presence::republish_paced(&lease, &me, &save, &remove, &bucket, delay)
                                .await;
                        if result.is_ok() && summary.is_some() {
                            result = lease.publish(&me, &[], &[], summary.as_ref()).await;
                        }
                        if result.is_ok() {
                            republish.store(false, Ordering::Relaxed);
                        }
                    } else if result.is_ok() {
                        result = lease.publish(&me, &save, &remove, summary.as_ref()).await;
                    }
                    tracing::debug!(saved = save.len(), removed = remove.len(),
                        took = ?asked.elapsed(), "published unit states");
                    outcomes
                        .send(Input::Published(result.map_err(|e| format!("{e:#}"))))
                        .ok();
                });
                None
            }
            Effect::Renew => {
                let result = self.presence.renew().await;
                if result.is_ok() {
                    keeper.follow(&self.presence.lease);
                    self.republish.store(true, Ordering::Relaxed);
                    tracing::info!(
                        lease = format!("{:x}", self.presence.lease.id()),
                        "registered again under a new lease"
                    );
                }
                Some(Input::Renewed(result.map_err(|e| format!("{e:#}"))))
            }
            Effect::Leave => {
                match self.presence.leave().await {
                    Ok(()) => tracing::info!("left the cluster"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"),
                        "could not remove this machine from the registry; it goes when its lease expires"),
                }
                None
            }
            Effect::Announce(machine) => {
                self.presence.machine = machine;
                match self.presence.announce().await {
                    Ok(()) => tracing::info!("machine record updated"),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "updating the machine record failed")
                    }
                }
                None
            }
        }
    }

    async fn stop(self, core: &Core, mode: Shutdown) -> anyhow::Result<()> {
        if core.left() {
            tracing::info!("stopping: this machine already left the cluster for its shutdown");
            return Ok(());
        }
        let names: Vec<String> = core.held().map(str::to_string).collect();
        match mode {
            Shutdown::Upgrade => {
                tracing::info!(
                    units = names.len(),
                    "exiting for an upgrade; units keep running"
                );
                Ok(())
            }
            Shutdown::Leave => {
                // Side by side, as a plan's phases run: one after another, a machine of a
                // thousand units took minutes to leave.
                let manager = &self.manager;
                let unloads = names
                    .iter()
                    .map(|name| async move { (name, manager.unload(name).await) })
                    .collect::<Vec<_>>();
                let results: Vec<(&String, anyhow::Result<()>)> = futures::stream::iter(unloads)
                    .buffer_unordered(CONCURRENT_ACTIONS)
                    .collect()
                    .await;
                for (name, result) in results {
                    if let Err(e) = result {
                        tracing::warn!(unit = %name, error = %format!("{e:#}"), "unloading unit failed");
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

/// Carries out one action; `file` is the body to load for [`Action::Load`].
async fn execute(
    manager: &dyn UnitManager,
    action: &Action,
    file: Option<UnitFile>,
) -> anyhow::Result<()> {
    match action {
        Action::Unload(name) => manager.unload(name).await,
        Action::Load(name) => match file {
            Some(file) => manager.load(name, &file).await,
            None => Err(anyhow::anyhow!("{name}: no unit body to load")),
        },
        Action::Reload => manager.reload().await,
        Action::Stop(name) => manager.stop(name).await,
        Action::Start(name) => manager.start(name).await,
    }
}

/// Sleeps until `at`, or for ever if there is no `at`.
async fn sleep_until(at: Option<Instant>) {
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
