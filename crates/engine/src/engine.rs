//! The engine's loop: one leader at a time, elected through the registry, keeps a model of the
//! cluster current from registry watches and writes the scheduler's decisions in batched
//! transactions fenced by its leader lease.
//!
//! Leadership: the leader key is attached to a lease of TTL `min(agent_ttl, 5 ×
//! engine_reconcile_interval)`, so when the leader's machine dies, a new leader is in place by
//! the time the dead machine's units need moving (fleet's 10 s engine lease came on top of
//! `agent_ttl`). Engines that do not lead follow only the leader key.

use crate::model::Model;
use registry::{Campaign, Leadership, Registry};
use std::time::Duration;
use tokio::sync::watch;

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
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match campaign(&registry, &config, &mut stop).await {
            Ok(Some(leadership)) => {
                backoff = Duration::from_millis(100);
                tracing::info!(machine = %config.machine_id, "this engine leads");
                let outcome = lead(&registry, &config, &leadership, &mut stop).await;
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
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Waits until this engine holds the leader key; `None` if asked to stop first.
async fn campaign(
    registry: &Registry,
    config: &EngineConfig,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Leadership>> {
    let mut leader = registry.follow_leader();
    loop {
        match registry
            .campaign(&config.machine_id, config.leader_ttl())
            .await?
        {
            Campaign::Won(leadership) => return Ok(Some(leadership)),
            Campaign::Lost(other) => tracing::debug!(leader = ?other, "another engine leads"),
        }
        // Wait for the leader key to go away.
        loop {
            tokio::select! {
                _ = stop.changed() => if *stop.borrow() { return Ok(None) },
                vacated = leader.vacated() => match vacated {
                    Some(()) => break,
                    None => return Err(anyhow::anyhow!("registry follower ended")),
                },
            }
        }
    }
}

/// Leads until leadership is lost or `stop` turns true.
async fn lead(
    registry: &Registry,
    config: &EngineConfig,
    leadership: &Leadership,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut jobs = registry.follow_jobs();
    let mut machines = registry.follow_machines();
    let mut metadata = registry.follow_metadata();
    let mut schedule = registry.follow_schedule();
    let mut reasons = registry.follow_reasons();
    let mut texts = registry.follow_bodies();
    let mut model = Model::new();
    let mut keepalive = tokio::time::interval(config.leader_ttl() / 3);
    keepalive.tick().await;
    let mut tick = tokio::time::interval(config.interval);
    let mut ready = [false; 6];
    // A pass looks at every unit and machine, so while units pour in passes are paced: the
    // next waits at least as long as the last one took (the engine takes at most half a core,
    // and each pass places a bigger batch) instead of running once per watch delivery.
    let mut pending = false;
    let mut next_pass = tokio::time::Instant::now();
    loop {
        let mut dirty = false;
        tokio::select! {
            _ = stop.changed() => if *stop.borrow() { return Ok(()) },
            _ = tokio::time::sleep_until(next_pass), if pending => dirty = true,
            _ = keepalive.tick() => match leadership.hold().await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "refreshing the leader lease failed"),
            },
            _ = tick.tick() => dirty = true,
            Some(u) = jobs.recv() => { model.apply_jobs(u); ready[0] = true; dirty = true; }
            Some(u) = machines.recv() => { model.apply_machines(u); ready[1] = true; dirty = true; }
            Some(u) = metadata.recv() => { model.apply_metadata(u); ready[2] = true; dirty = true; }
            Some(u) = schedule.recv() => { model.apply_schedule(u); ready[3] = true; }
            Some(u) = reasons.recv() => { model.apply_reasons(u); ready[4] = true; }
            Some(u) = texts.recv() => { model.apply_texts(u); ready[5] = true; }
        }
        // Take whatever else is queued so that a burst of changes costs one pass.
        loop {
            let mut any = false;
            while let Some(u) = jobs.try_recv() {
                model.apply_jobs(u);
                ready[0] = true;
                any = true;
            }
            while let Some(u) = machines.try_recv() {
                model.apply_machines(u);
                ready[1] = true;
                any = true;
            }
            while let Some(u) = metadata.try_recv() {
                model.apply_metadata(u);
                ready[2] = true;
                any = true;
            }
            while let Some(u) = schedule.try_recv() {
                model.apply_schedule(u);
                ready[3] = true;
            }
            while let Some(u) = reasons.try_recv() {
                model.apply_reasons(u);
                ready[4] = true;
            }
            while let Some(u) = texts.try_recv() {
                model.apply_texts(u);
                ready[5] = true;
            }
            if !any {
                break;
            }
            dirty = true;
        }
        if !dirty || !ready.iter().all(|r| *r) {
            tracing::trace!(dirty, ?ready, "engine waiting");
            continue;
        }
        let started = tokio::time::Instant::now();
        if started < next_pass {
            pending = true;
            continue;
        }
        pending = false;
        model.update_requirements(registry).await;
        let decided = tokio::time::Instant::now();
        let changes = model.decide();
        next_pass = tokio::time::Instant::now() + decided.elapsed();
        tracing::debug!(
            jobs = model.jobs.len(),
            machines = model.machines.len(),
            changes = changes.len(),
            "engine pass"
        );
        if changes.is_empty() {
            continue;
        }
        tracing::debug!(changes = changes.len(), "writing engine decisions");
        match leadership.apply_schedule(&changes).await {
            Ok(true) => model.applied(&changes),
            Ok(false) => return Ok(()),
            Err(e) => {
                // Some batches may have been written: read the schedule afresh before deciding
                // again, so that no unit is placed twice.
                tracing::warn!(error = %e, "writing engine decisions failed; re-reading the schedule");
                schedule = registry.follow_schedule();
                ready[3] = false;
            }
        }
    }
}
