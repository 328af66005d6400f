//! Machine presence: what dies with a machine (its record, its units' states) is attached to
//! the machine's lease, so it disappears exactly when the machine is declared dead.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry, me: registry::MachineState) -> anyhow::Result<()> {
//! use registry::Announcement;
//! let lease = registry.grant_machine_lease(std::time::Duration::from_secs(30)).await?;
//! match lease.announce(&me).await? {
//!     Announcement::Written => {}
//!     Announcement::TakenBy(other) => anyhow::bail!("{} is held by lease {other:x}", me.id),
//! }
//! // Refreshed from a task of its own until `keeper` is dropped.
//! let (keeper, mut expired) = lease.keep_alive();
//! # drop((keeper, expired.recv().await)); Ok(()) }
//! ```

use crate::codec::Record;
use crate::model::{MachineState, UnitState};
use crate::registry::{Registry, Result};
use crate::store::{Compare, LeaseId, Op, StoreError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A machine's lease: its presence record and the states it publishes are attached to it.
/// Cheap to clone; nothing happens when dropped (the lease lapses unless kept alive, see
/// [`MachineLease::keep_alive`]).
#[derive(Clone)]
pub struct MachineLease {
    registry: Registry,
    id: LeaseId,
    ttl: Duration,
}

impl std::fmt::Debug for MachineLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineLease")
            .field("id", &format_args!("{:x}", self.id))
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What [`MachineLease::announce`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// The machine record is written under this lease.
    Written,
    /// Another live lease (given here) holds the machine's record: another fleetd runs with
    /// the same machine id.
    TakenBy(LeaseId),
}

impl Registry {
    /// A new machine lease of `ttl`.
    pub async fn grant_machine_lease(&self, ttl: Duration) -> Result<MachineLease> {
        let id = self.store.grant_lease(ttl).await?;
        Ok(MachineLease {
            registry: self.clone(),
            id,
            ttl,
        })
    }

    /// The machine lease `id` recorded earlier (by a previous fleetd on this machine), refreshed,
    /// if it is still alive; `None` if it expired or was revoked.
    pub async fn resume_machine_lease(
        &self,
        id: LeaseId,
        ttl: Duration,
    ) -> Result<Option<MachineLease>> {
        if self.store.lease_ttl(id).await?.is_none() {
            return Ok(None);
        }
        self.store.keep_alive(id).await?;
        Ok(Some(MachineLease {
            registry: self.clone(),
            id,
            ttl,
        }))
    }
}

impl MachineLease {
    /// The lease's id (what a fleetd records to resume it after a restart).
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// Writes the machine's record under this lease, unless another lease holds it.
    pub async fn announce(&self, machine: &MachineState) -> Result<Announcement> {
        let store = &self.registry.store;
        let key = self.registry.keys.machine(&machine.id);
        let value = machine.encode();
        for compare in [
            Compare::Missing(key.clone()),
            Compare::Lease(key.clone(), self.id),
        ] {
            let put = vec![Op::put_leased(key.clone(), value.clone(), self.id)];
            if store.txn(vec![compare], put, vec![]).await?.succeeded {
                return Ok(Announcement::Written);
            }
        }
        let holder = store.get(&key).await?.map(|kv| kv.lease).unwrap_or(0);
        Ok(Announcement::TakenBy(holder))
    }

    /// Replaces this lease by a new one of the same TTL, after it expired (the registry was
    /// unreachable, or too slow to answer, for longer than the TTL). Everything tied to the
    /// old lease (the record, unit states) must then be written again.
    pub async fn renew(&mut self) -> Result<()> {
        self.id = self.registry.store.grant_lease(self.ttl).await?;
        Ok(())
    }

    /// Whether the lease is still alive.
    pub async fn alive(&self) -> Result<bool> {
        Ok(self.registry.store.lease_ttl(self.id).await?.is_some())
    }

    /// Ends the lease: the machine's record and every state tied to it go at once.
    pub async fn revoke(&self) -> Result<()> {
        self.registry.store.revoke_lease(self.id).await?;
        Ok(())
    }

    /// Starts refreshing the lease every TTL/3 from a task of its own, so that a machine busy
    /// with a long reconciliation or publication (a registry slow under load) does not expire.
    /// A lease found expired is sent on the returned receiver, and refreshing stops until
    /// [`LeaseKeeper::follow`] names the next one. The task ends with the [`LeaseKeeper`].
    pub fn keep_alive(&self) -> (LeaseKeeper, mpsc::Receiver<LeaseId>) {
        let (lease_tx, mut lease_rx) = watch::channel(self.id);
        let (expired_tx, expired_rx) = mpsc::channel(1);
        let store = self.registry.store.clone();
        let period = self.ttl / 3;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let lease = *lease_rx.borrow_and_update();
                match store.keep_alive(lease).await {
                    Ok(_) => {}
                    Err(StoreError::LeaseNotFound(_)) => {
                        if expired_tx.send(lease).await.is_err()
                            || lease_rx.changed().await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "refreshing the machine lease failed"),
                }
            }
        });
        (
            LeaseKeeper {
                lease: lease_tx,
                task,
            },
            expired_rx,
        )
    }

    /// Publishes states of `machine`'s units under this lease, and removes states of units it
    /// no longer holds (under both prefixes), in transactions of at most
    /// [`crate::MAX_TXN_OPS`] operations. A unit whose state moves between the prefixes
    /// (replaced by a global unit of the same name, or the reverse) is removed in an earlier
    /// call.
    pub async fn publish_states(
        &self,
        machine: &str,
        save: &[UnitState],
        remove: &[String],
    ) -> Result<()> {
        let keys = &self.registry.keys;
        let mut ops: Vec<Op> = Vec::with_capacity(2 * (save.len() + remove.len()));
        for s in save {
            ops.push(Op::put_leased(
                keys.state_of(&s.name, machine, s.global),
                s.encode(),
                self.id,
            ));
        }
        for u in remove {
            ops.push(Op::delete(keys.state(u, machine)));
            ops.push(Op::delete(keys.global_state(u, machine)));
        }
        for chunk in ops.chunks(crate::MAX_TXN_OPS) {
            self.registry
                .store
                .txn(vec![], chunk.to_vec(), vec![])
                .await?;
        }
        Ok(())
    }
}

/// The task refreshing a machine lease (see [`MachineLease::keep_alive`]); stops it when
/// dropped.
pub struct LeaseKeeper {
    lease: watch::Sender<LeaseId>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Refreshes `lease` from now on (the one that replaced an expired lease).
    pub fn follow(&self, lease: &MachineLease) {
        self.lease.send_replace(lease.id);
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
