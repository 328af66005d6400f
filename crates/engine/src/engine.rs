//! The engine's loop: one leader at a time, elected through the registry, keeps a model of the
//! cluster current from registry watches and writes the scheduler's decisions in batched
//! transactions fenced by its leader lease.
//!
//! Leadership: the leader key is attached to a lease of TTL `min(agent_ttl, 5 ×
//! engine_reconcile_interval)`, so when the leader's machine dies, a new leader is in place by
//! the time the dead machine's units need moving (fleet's 10 s engine lease came on top of
//! `agent_ttl`). Engines that do not lead follow only the leader key.

use crate::model::Model;
use registry::mirror::{follow, Update};
use registry::{LeaseId, Registry, StoreError};
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
            Ok(Some(lease)) => {
                backoff = Duration::from_millis(100);
                tracing::info!(machine = %config.machine_id, "this engine leads");
                let outcome = lead(&registry, &config, lease, &mut stop).await;
                // Release at once so another engine can take over without waiting the TTL out.
                let _ = registry.store.revoke_lease(lease).await;
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
) -> anyhow::Result<Option<LeaseId>> {
    let leader_key = registry.keys.leader();
    let mut leader_rx = follow(registry.store.clone(), leader_key.clone());
    loop {
        let lease = registry.store.grant_lease(config.leader_ttl()).await?;
        match registry.campaign(&config.machine_id, lease).await? {
            Some(ref id) if *id == config.machine_id => {
                // The key could be ours from a previous lease (a restarted fleetd): make sure
                // it is attached to this one.
                let fenced = registry
                    .store
                    .txn(
                        vec![registry::Compare::Lease(leader_key.clone(), lease)],
                        vec![],
                        vec![],
                    )
                    .await?
                    .succeeded;
                if fenced {
                    return Ok(Some(lease));
                }
                registry
                    .store
                    .txn(
                        vec![],
                        vec![registry::Op::delete(leader_key.clone())],
                        vec![],
                    )
                    .await?;
                registry.store.revoke_lease(lease).await?;
                continue;
            }
            other => {
                registry.store.revoke_lease(lease).await?;
                tracing::debug!(leader = ?other, "another engine leads");
            }
        }
        // Wait for the leader key to go away.
        loop {
            tokio::select! {
                _ = stop.changed() => if *stop.borrow() { return Ok(None) },
                u = leader_rx.recv() => match u {
                    Some(Update::Reset { kvs, .. }) if kvs.is_empty() => break,
                    Some(Update::Events { events, .. }) if events.iter().any(|e| e.kind == registry::EventKind::Delete) => break,
                    Some(_) => {}
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
    lease: LeaseId,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let keys = &registry.keys;
    let store = registry.store.clone();
    let mut jobs = follow(store.clone(), keys.jobs());
    let mut machines = follow(store.clone(), keys.machines());
    let mut metadata = follow(store.clone(), keys.all_metadata());
    let mut schedule = follow(store.clone(), keys.schedules());
    let mut reasons = follow(store.clone(), keys.reasons());
    let mut texts = follow(store.clone(), keys.bodies());
    let mut model = Model::new(keys.clone());
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
            _ = keepalive.tick() => match registry.store.keep_alive(lease).await {
                Ok(_) => {}
                Err(StoreError::LeaseNotFound(_)) => return Ok(()),
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
            while let Ok(u) = jobs.try_recv() {
                model.apply_jobs(u);
                ready[0] = true;
                any = true;
            }
            while let Ok(u) = machines.try_recv() {
                model.apply_machines(u);
                ready[1] = true;
                any = true;
            }
            while let Ok(u) = metadata.try_recv() {
                model.apply_metadata(u);
                ready[2] = true;
                any = true;
            }
            while let Ok(u) = schedule.try_recv() {
                model.apply_schedule(u);
                ready[3] = true;
            }
            while let Ok(u) = reasons.try_recv() {
                model.apply_reasons(u);
                ready[4] = true;
            }
            while let Ok(u) = texts.try_recv() {
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
        match registry.apply_schedule(&changes, lease).await {
            Ok(true) => model.applied(&changes),
            Ok(false) => return Ok(()),
            Err(e) => {
                // Some batches may have been written: read the schedule afresh before deciding
                // again, so that no unit is placed twice.
                tracing::warn!(error = %e, "writing engine decisions failed; re-reading the schedule");
                schedule = follow(store.clone(), keys.schedules());
                ready[3] = false;
            }
        }
    }
}
