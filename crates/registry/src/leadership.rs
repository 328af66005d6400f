//! Engine leadership: one engine at a time holds the leader key under a lease of its own and
//! fences every write of its decisions with it, so that a deposed leader (its lease expired
//! while it was cut off) cannot write any more.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry) -> anyhow::Result<()> {
//! use registry::Campaign;
//! let ttl = std::time::Duration::from_secs(5);
//! match registry.campaign("machine-id", ttl).await? {
//!     Campaign::Won(leadership) => {
//!         // Refresh every ttl/3 while deciding; false means leadership is lost.
//!         if leadership.hold().await? {
//!             leadership.apply_schedule(&[]).await?;
//!         }
//!         leadership.resign().await?;
//!     }
//!     Campaign::Lost(leader) => println!("{leader:?} leads"),
//! }
//! # Ok(()) }
//! ```

use crate::follow::{Change, Follower, Update};
use crate::registry::{Registry, Result};
use crate::schedule::ScheduleChange;
use crate::store::{Compare, LeaseId, Op, StoreError};
use futures::StreamExt;
use std::time::Duration;

/// How a campaign for the engine leadership ended.
pub enum Campaign {
    /// This engine leads.
    Won(Leadership),
    /// Another engine leads (its machine id), or the key was gone again when read (`None`).
    Lost(Option<String>),
}

/// This engine's leadership: the lease its leader key is attached to, and the writes only a
/// leader may make. Nothing happens when it is dropped: [`Leadership::resign`] releases it at
/// once; otherwise it lapses when its lease is no longer held.
pub struct Leadership {
    registry: Registry,
    lease: LeaseId,
}

impl Registry {
    /// Tries to become the engine leader, under a new lease of `ttl`. A leader key found to be
    /// ours but attached to another lease (left by a restarted fleetd) is taken down and the
    /// campaign starts again.
    pub async fn campaign(&self, machine: &str, ttl: Duration) -> Result<Campaign> {
        let key = self.keys.leader();
        loop {
            let lease = self.store.grant_lease(ttl).await?;
            self.store
                .txn(
                    vec![Compare::Missing(key.clone())],
                    vec![Op::put_leased(key.clone(), machine.to_string(), lease)],
                    vec![],
                )
                .await?;
            match self.leader().await? {
                Some(ref id) if id == machine => {
                    // The key could be ours from a previous lease (a restarted fleetd): make
                    // sure it is attached to this one.
                    let fenced = self
                        .store
                        .txn(vec![Compare::Lease(key.clone(), lease)], vec![], vec![])
                        .await?
                        .succeeded;
                    if fenced {
                        return Ok(Campaign::Won(Leadership {
                            registry: self.clone(),
                            lease,
                        }));
                    }
                    self.store
                        .txn(vec![], vec![Op::delete(key.clone())], vec![])
                        .await?;
                    self.store.revoke_lease(lease).await?;
                }
                other => {
                    self.store.revoke_lease(lease).await?;
                    return Ok(Campaign::Lost(other));
                }
            }
        }
    }

    /// The engine leader's machine id, if there is a leader.
    pub async fn leader(&self) -> Result<Option<String>> {
        self.record(&self.keys.leader()).await
    }

    /// Follows the leader key, to learn when the leadership is vacant.
    pub fn follow_leader(&self) -> LeaderWatch {
        LeaderWatch(self.follow_leader_key())
    }
}

impl Leadership {
    /// Refreshes the leader lease (every third of its TTL keeps it). False if it is gone: this
    /// engine no longer leads.
    pub async fn hold(&self) -> Result<bool> {
        match self.registry.store.keep_alive(self.lease).await {
            Ok(_) => Ok(true),
            Err(StoreError::LeaseNotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the leadership up at once (the leader key goes with the lease), so that another
    /// engine takes over without waiting for the TTL.
    pub async fn resign(&self) -> Result<()> {
        self.registry.store.revoke_lease(self.lease).await?;
        Ok(())
    }

    /// Writes engine decisions in transactions of at most [`crate::MAX_TXN_OPS`] operations,
    /// [`SCHEDULE_WRITES_IN_FLIGHT`] at a time (each unit's in one, so their order does not
    /// matter), each fenced by the leader lease: a deposed leader's writes fail. Returns false
    /// (having written some of the batches) if the fence failed; an error leaves some written
    /// too (the engine reads the schedule again after either).
    pub async fn apply_schedule(&self, changes: &[ScheduleChange]) -> Result<bool> {
        let registry = &self.registry;
        let fence = vec![Compare::Lease(registry.keys.leader(), self.lease)];
        let mut writes = futures::stream::iter(registry.schedule_batches(changes))
            .map(|batch| {
                let (store, fence) = (registry.store.clone(), fence.clone());
                async move { store.txn(fence, batch, vec![]).await }
            })
            .buffer_unordered(SCHEDULE_WRITES_IN_FLIGHT);
        while let Some(written) = writes.next().await {
            if !written?.succeeded {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Transactions of engine decisions written side by side: after a machine is lost, thousands of
/// units move at once, and one transaction after another would make them wait for each other's
/// round trips.
pub const SCHEDULE_WRITES_IN_FLIGHT: usize = 8;

/// Follows the leader key (see [`Registry::follow_leader`]).
pub struct LeaderWatch(Follower<(), String>);

impl LeaderWatch {
    /// Waits until the leadership is vacant: no leader when first read, or the leader key
    /// deleted since. `None` if following ended. Cancel-safe.
    pub async fn vacated(&mut self) -> Option<()> {
        loop {
            match self.0.recv().await? {
                Update::Reset(leaders) if leaders.is_empty() => return Some(()),
                Update::Changes(changes) if changes.iter().any(Change::is_delete) => {
                    return Some(())
                }
                _ => {}
            }
        }
    }
}
