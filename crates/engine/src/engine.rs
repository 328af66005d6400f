//! The engine's loop: one leader at a time, elected through the registry, keeps a model of the
//! cluster current from registry watches and writes the scheduler's decisions in batched
//! transactions fenced by its leader lease.
//!
//! Leadership: the leader key is attached to a lease of TTL `min(agent_ttl, 5 ×
//! engine_reconcile_interval)`, so when the leader's machine dies, a new leader is in place by
//! the time the dead machine's units need moving (fleet's 10 s engine lease came on top of
//! `agent_ttl`). Engines that do not lead follow only the leader key.

use crate::core::{Core, Effect, Input};
use crate::metrics::EngineMetrics;
use registry::{Campaign, Leadership, Registry, ScheduleChange};
use std::fmt::Write as _;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A request for a readable account of the engine's state (fleetd's SIGUSR1: whether it leads,
/// its model of the cluster, its last plan), answered on the sender.
pub type DumpRequest = oneshot::Sender<String>;

/// At most this many changes of the last plan are listed in a dump; the rest are counted.
const DUMPED_CHANGES: usize = 200;

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub machine_id: String,
    /// `engine_reconcile_interval`.
    pub interval: Duration,
    /// `agent_ttl`.
    pub agent_ttl: Duration,
}

impl EngineConfig {
    pub fn leader_ttl(&self) -> Duration {
        (self.interval * 5)
            .min(self.agent_ttl)
            .max(Duration::from_secs(1))
    }
}

/// Runs the engine until `stop` turns true; leadership is released on the way out.
pub async fn run(
    registry: Registry,
    config: EngineConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    run_answering(registry, config, stop, None).await
}

/// [`run`], answering each request sent on `dumps` with an account of the engine's state.
pub async fn run_answering(
    registry: Registry,
    config: EngineConfig,
    stop: watch::Receiver<bool>,
    dumps: Option<mpsc::Receiver<DumpRequest>>,
) -> anyhow::Result<()> {
    run_observed(registry, config, stop, dumps, EngineMetrics::default()).await
}

/// [`run_answering`], keeping `metrics` current.
pub async fn run_observed(
    registry: Registry,
    config: EngineConfig,
    mut stop: watch::Receiver<bool>,
    mut dumps: Option<mpsc::Receiver<DumpRequest>>,
    metrics: EngineMetrics,
) -> anyhow::Result<()> {
    let mut backoff = registry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match campaign(&registry, &config, &mut stop, &mut dumps).await {
            Ok(Some(leadership)) => {
                backoff.reset();
                tracing::info!(machine = %config.machine_id, "this engine leads");
                metrics.leading(true);
                let outcome = lead(
                    &registry,
                    &config,
                    &leadership,
                    &mut stop,
                    &mut dumps,
                    &metrics,
                )
                .await;
                metrics.leading(false);
                // Release at once so another engine can take over without waiting the TTL out.
                let _ = leadership.resign().await;
                match outcome {
                    Ok(()) if *stop.borrow() => return Ok(()),
                    Ok(()) => tracing::warn!("engine lost leadership"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "engine leadership ended"),
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "engine election failed; retrying");
                let retry = tokio::time::sleep(backoff.wait());
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = &mut retry => break,
                        _ = stop.changed() => break,
                        reply = registry::recv_or_never(&mut dumps) => {
                            let _ = reply.send(format!("engine: not leading (election failed: {e:#}; retrying)\n"));
                        }
                    }
                }
            }
        }
    }
}

/// Waits until this engine holds the leader key; `None` if asked to stop first.
async fn campaign(
    registry: &Registry,
    config: &EngineConfig,
    stop: &mut watch::Receiver<bool>,
    dumps: &mut Option<mpsc::Receiver<DumpRequest>>,
) -> anyhow::Result<Option<Leadership>> {
    let mut leader = registry.follow_leader();
    loop {
        let other = match registry
            .campaign(&config.machine_id, config.leader_ttl())
            .await?
        {
            Campaign::Won(leadership) => return Ok(Some(leadership)),
            Campaign::Lost(other) => {
                tracing::debug!(leader = ?other, "another engine leads");
                other
            }
        };
        // Wait for the leader key to go away.
        loop {
            tokio::select! {
                _ = stop.changed() => if *stop.borrow() { return Ok(None) },
                reply = registry::recv_or_never(dumps) => {
                    let other = other.as_deref().unwrap_or("unknown");
                    let _ = reply.send(format!("engine: not leading (the engine of machine {other} leads)\n"));
                }
                vacated = leader.vacated() => match vacated {
                    Some(()) => break,
                    None => return Err(anyhow::anyhow!("registry follower ended")),
                },
            }
        }
    }
}

/// Leads until leadership is lost or `stop` turns true: merges the followers' deliveries,
/// the outcomes of effects and timers into inputs for [`Core`], and carries its effects out.
async fn lead(
    registry: &Registry,
    config: &EngineConfig,
    leadership: &Leadership,
    stop: &mut watch::Receiver<bool>,
    dumps: &mut Option<mpsc::Receiver<DumpRequest>>,
    metrics: &EngineMetrics,
) -> anyhow::Result<()> {
    let mut last_plan: Option<LastPlan> = None;
    let mut jobs = registry.follow_jobs();
    let mut machines = registry.follow_machines();
    let mut metadata = registry.follow_metadata();
    let mut schedule = registry.follow_schedule();
    let mut reasons = registry.follow_reasons();
    let mut texts = registry.follow_bodies();
    let mut drains = registry.follow_drains();
    let mut core = Core::new(config.interval, Instant::now());
    let mut keepalive = tokio::time::interval(config.leader_ttl() / 3);
    keepalive.tick().await;
    let mut wake_at: Option<Instant> = None;
    loop {
        let input = tokio::select! {
            _ = stop.changed() => {
                if *stop.borrow() {
                    return Ok(());
                }
                continue;
            }
            _ = keepalive.tick() => {
                match leadership.hold().await {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => tracing::warn!(error = %e, "refreshing the leader lease failed"),
                }
                continue;
            }
            reply = registry::recv_or_never(dumps) => {
                let _ = reply.send(leading_dump(&config.machine_id, &core, last_plan.as_ref()));
                continue;
            }
            _ = sleep_until(wake_at) => Input::Tick,
            Some(u) = jobs.recv() => Input::Jobs(u),
            Some(u) = machines.recv() => Input::Machines(u),
            Some(u) = metadata.recv() => Input::Metadata(u),
            Some(u) = schedule.recv() => Input::Schedule(u),
            Some(u) = reasons.recv() => Input::Reasons(u),
            Some(u) = texts.recv() => Input::Texts(u),
            Some(u) = drains.recv() => Input::Drains(u),
        };
        core.on(input);
        // Take whatever else is queued so that a burst of changes costs one pass.
        while let Some(u) = jobs.try_recv() {
            core.on(Input::Jobs(u));
        }
        while let Some(u) = machines.try_recv() {
            core.on(Input::Machines(u));
        }
        while let Some(u) = metadata.try_recv() {
            core.on(Input::Metadata(u));
        }
        while let Some(u) = schedule.try_recv() {
            core.on(Input::Schedule(u));
        }
        while let Some(u) = reasons.try_recv() {
            core.on(Input::Reasons(u));
        }
        while let Some(u) = texts.try_recv() {
            core.on(Input::Texts(u));
        }
        while let Some(u) = drains.try_recv() {
            core.on(Input::Drains(u));
        }
        // Effects are carried out here, one after another: a pass's reads and writes finish
        // before the next input is taken, as the fenced writes require.
        loop {
            let began = Instant::now();
            let ready = core.ready(began);
            if ready.passed {
                let took = began.elapsed();
                core.pass_took(began, took);
                metrics.passed(core.model(), took);
            }
            wake_at = ready.wake_at;
            if ready.effects.is_empty() {
                break;
            }
            for effect in ready.effects {
                let outcome = match effect {
                    Effect::FetchBodies(hashes) => {
                        let read = registry
                            .bodies(hashes, CONCURRENT_READS)
                            .await
                            .into_iter()
                            .map(|(hash, r)| (hash, r.map_err(|e| format!("{e:#}"))))
                            .collect();
                        Input::Bodies(read)
                    }
                    Effect::Write(changes) => {
                        tracing::debug!(changes = changes.len(), "writing engine decisions");
                        let mut plan = LastPlan::of(&changes);
                        let written = leadership.apply_schedule(&changes).await;
                        if let Ok(true) = written {
                            metrics.written(&changes);
                            log_placements(&changes);
                        }
                        plan.outcome = match &written {
                            Ok(true) => "written".to_string(),
                            Ok(false) => "refused: leadership lost".to_string(),
                            Err(e) => format!("failed: {e:#}"),
                        };
                        last_plan = Some(plan);
                        Input::Written(written.map_err(|e| format!("{e:#}")))
                    }
                    Effect::ReadStates(units) => {
                        let mut read = Vec::with_capacity(units.len());
                        for unit in units {
                            let states = registry
                                .states_of_unit(&unit)
                                .await
                                .map_err(|e| format!("{e:#}"));
                            read.push((unit, states));
                        }
                        Input::States(read)
                    }
                    Effect::RereadSchedule => {
                        schedule = registry.follow_schedule();
                        continue;
                    }
                    Effect::Resign => return Ok(()),
                };
                core.on(outcome);
            }
        }
    }
}

/// One line per unit placed or taken off a machine, as fleet's engine logged each decision:
/// with the unit, the machine and the unit's revision (its hash) as fields, to be found by
/// field in the journal or in JSON logs.
fn log_placements(changes: &[ScheduleChange]) {
    for c in changes {
        match c {
            ScheduleChange::Place {
                unit,
                machine,
                entry,
            } => tracing::info!(
                unit = %unit,
                machine = %machine,
                revision = %entry.hash,
                desired = %entry.desired,
                "unit placed"
            ),
            ScheduleChange::Unplace { unit, machine } => {
                tracing::info!(unit = %unit, machine = %machine, "unit taken off machine")
            }
            ScheduleChange::Update { .. } | ScheduleChange::Reason { .. } => {}
        }
    }
}

/// The last plan the leader wrote, as a dump shows it.
struct LastPlan {
    at: std::time::SystemTime,
    /// The first [`DUMPED_CHANGES`] changes, described.
    changes: Vec<String>,
    total: usize,
    outcome: String,
}

impl LastPlan {
    fn of(changes: &[ScheduleChange]) -> LastPlan {
        let described = changes
            .iter()
            .take(DUMPED_CHANGES)
            .map(|c| match c {
                ScheduleChange::Place {
                    unit,
                    machine,
                    entry,
                } => format!("place {unit} on {machine} ({})", entry.desired),
                ScheduleChange::Update {
                    unit,
                    machine,
                    entry,
                } => format!("update {unit} on {machine} ({})", entry.desired),
                ScheduleChange::Unplace { unit, machine } => {
                    format!("unplace {unit} from {machine}")
                }
                ScheduleChange::Reason {
                    unit,
                    reason: Some(reason),
                } => format!("{unit} cannot be placed: {reason}"),
                ScheduleChange::Reason { unit, reason: None } => {
                    format!("{unit}: reason cleared")
                }
            })
            .collect();
        LastPlan {
            at: std::time::SystemTime::now(),
            changes: described,
            total: changes.len(),
            outcome: "being written".to_string(),
        }
    }
}

/// The account of a leading engine: its model of the cluster and its last plan.
fn leading_dump(machine: &str, core: &Core, last: Option<&LastPlan>) -> String {
    let model = core.model();
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "engine of machine {machine}: leads; its model holds {} machines, {} units ({} placed, {} that cannot be placed)",
        model.machines.len(),
        model.jobs.len(),
        model.placed.len(),
        model.reasons.len(),
    );
    if !model.drains.is_empty() {
        let drained: Vec<&str> = model.drains.keys().map(String::as_str).collect();
        let moving: Vec<String> = core
            .in_motion()
            .map(|(unit, to)| format!("{unit} to {to}"))
            .collect();
        let _ = writeln!(
            text,
            "  drained machines: {}; in motion off them: {}",
            drained.join(", "),
            if moving.is_empty() {
                "none".to_string()
            } else {
                moving.join(", ")
            }
        );
    }
    match last {
        None => {
            let _ = writeln!(text, "  no plan written since it leads");
        }
        Some(plan) => {
            let ago = plan.at.elapsed().unwrap_or_default();
            let _ = writeln!(
                text,
                "  last plan, {:.1} s ago, {}: {} changes",
                ago.as_secs_f64(),
                plan.outcome,
                plan.total
            );
            for change in &plan.changes {
                let _ = writeln!(text, "    {change}");
            }
            if plan.total > plan.changes.len() {
                let _ = writeln!(text, "    ... and {} more", plan.total - plan.changes.len());
            }
        }
    }
    text
}

/// Body reads (for records without their `[X-Fleet]` options) in flight at once.
const CONCURRENT_READS: usize = 32;

/// Sleeps until `at`, or for ever if there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
