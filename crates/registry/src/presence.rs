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
use crate::model::{GlobalSummary, MachineState, UnitState};
use crate::registry::{Registry, Result};
use crate::store::{Compare, LeaseId, Op, StoreError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

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

    /// The lease holding machine `id`'s record, if it is registered.
    pub async fn machine_lease(&self, id: &str) -> Result<Option<LeaseId>> {
        let key = self.keys.machine(id);
        Ok(self.store.get(&key).await?.map(|kv| kv.lease))
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
    /// Each refresh is bounded by what is left of the TTL (at most a period): one that fails or
    /// times out is logged and tried again at once, so that a registry answering again (etcd
    /// thawed, a burst of writes over) is refreshed as soon as it can be, not a period later:
    /// etcd counts the lease's time on its own clock meanwhile. An answer slower than a quarter
    /// of the period is logged with its latency. A lease found expired is sent on the returned
    /// receiver, and refreshing stops until [`LeaseKeeper::follow`] names the next one. The
    /// task ends with the [`LeaseKeeper`].
    pub fn keep_alive(&self) -> (LeaseKeeper, mpsc::Receiver<LeaseId>) {
        let (lease_tx, lease_rx) = watch::channel(self.id);
        let (expired_tx, expired_rx) = mpsc::channel(1);
        let store = self.registry.store.clone();
        let observer = self.registry.observer.clone();
        let task = tokio::spawn(refresh(store, observer, self.ttl, lease_rx, expired_tx));
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
        self.publish(machine, save, remove, None).await
    }

    /// Publishes as [`MachineLease::publish_states`] does, and the machine's summary of its
    /// global units (see [`crate::instances`]) if given (an empty one is deleted). The summary goes after every state
    /// saved and before or with every state removed: a reader never finds a global unit that
    /// the machine neither vouches for nor publishes an exception of (a unit just covered by
    /// the summary keeps its stale exception at most until the next transaction).
    pub async fn publish(
        &self,
        machine: &str,
        save: &[UnitState],
        remove: &[String],
        summary: Option<&GlobalSummary>,
    ) -> Result<()> {
        let keys = &self.registry.keys;
        let mut ops: Vec<Op> = Vec::with_capacity(1 + save.len() + 2 * remove.len());
        for s in save {
            ops.push(Op::put_leased(
                keys.state_of(&s.name, machine, s.global),
                s.encode(),
                self.id,
            ));
        }
        match summary {
            // An empty summary vouches for nothing, as no summary does: the key goes, so a
            // machine without global units leaves no record of them behind.
            Some(summary) if *summary == GlobalSummary::default() => {
                ops.push(Op::delete(keys.global_summary(machine)))
            }
            Some(summary) => ops.push(Op::put_leased(
                keys.global_summary(machine),
                summary.encode(),
                self.id,
            )),
            None => {}
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

/// A failed refresh is tried again this long after it failed (a timed-out one at once): short, so
/// a registry that answers again is refreshed at once, long enough not to spin on a refusal.
const REFRESH_RETRY: Duration = Duration::from_millis(100);
/// The shortest time a refresh is given, even when little or nothing is left of the TTL on our
/// clock (etcd's started later, when it received our last refresh).
const MIN_REFRESH_BUDGET: Duration = Duration::from_millis(250);

/// How long a refresh may take: no longer than what is left of the lease (so a stuck request
/// is abandoned and retried while the lease can still be saved), nor than a period, nor less
/// than [`MIN_REFRESH_BUDGET`].
pub(crate) fn refresh_budget(period: Duration, left: Duration) -> Duration {
    left.min(period).max(MIN_REFRESH_BUDGET)
}

/// The refreshing loop of [`MachineLease::keep_alive`].
async fn refresh(
    store: std::sync::Arc<dyn crate::store::Store>,
    observer: Option<std::sync::Arc<dyn crate::StoreObserver>>,
    ttl: Duration,
    mut lease_rx: watch::Receiver<LeaseId>,
    expired_tx: mpsc::Sender<LeaseId>,
) {
    let period = ttl / 3;
    let slow = period / 4;
    let mut lease = *lease_rx.borrow_and_update();
    let now = Instant::now();
    // When the lease lapses at the latest, on our clock: etcd's count started no earlier than
    // when it received the request, which was after we sent it.
    let mut expires = now + ttl;
    let mut next = now + period;
    // Since when refreshing fails, and when that was last logged (once a period, not on every
    // retry).
    let mut failing: Option<(Instant, Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = lease_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                lease = *lease_rx.borrow_and_update();
                let now = Instant::now();
                (expires, next, failing) = (now + ttl, now + period, None);
                continue;
            }
        }
        let sent = Instant::now();
        let budget = refresh_budget(period, expires.saturating_duration_since(sent));
        let outcome = tokio::time::timeout(budget, store.keep_alive(lease)).await;
        let now = Instant::now();
        let latency = now - sent;
        if let Some(observer) = &observer {
            observer.lease_refreshed(match &outcome {
                Ok(Ok(_)) => crate::LeaseRefresh::Ok,
                Ok(Err(StoreError::LeaseNotFound(_))) => crate::LeaseRefresh::Expired,
                _ => crate::LeaseRefresh::Failed,
            });
        }
        let failure = match outcome {
            Ok(Ok(granted)) => {
                if let Some((since, _)) = failing.take() {
                    tracing::info!(
                        lease = format!("{lease:x}"),
                        failing_for_ms = (now - since).as_millis() as u64,
                        latency_ms = latency.as_millis() as u64,
                        "machine lease refreshed again"
                    );
                } else if latency > slow {
                    tracing::warn!(
                        lease = format!("{lease:x}"),
                        latency_ms = latency.as_millis() as u64,
                        ttl_ms = ttl.as_millis() as u64,
                        "the registry answered a machine lease refresh slowly; refreshing goes on"
                    );
                }
                expires = sent + granted.min(ttl);
                next = sent + period;
                continue;
            }
            Ok(Err(StoreError::LeaseNotFound(_))) => {
                if expired_tx.send(lease).await.is_err() || lease_rx.changed().await.is_err() {
                    return;
                }
                lease = *lease_rx.borrow_and_update();
                let now = Instant::now();
                (expires, next, failing) = (now + ttl, now + period, None);
                continue;
            }
            Ok(Err(e)) => {
                next = now + REFRESH_RETRY;
                e.to_string()
            }
            Err(_) => {
                next = now;
                format!("no answer within {} ms", budget.as_millis())
            }
        };
        let (since, logged) = failing.get_or_insert((sent, sent));
        if *logged == sent || now - *logged >= period {
            *logged = now;
            tracing::warn!(
                lease = format!("{lease:x}"),
                error = %failure,
                failing_for_ms = (now - *since).as_millis() as u64,
                lease_left_ms = expires.saturating_duration_since(now).as_millis() as u64,
                "refreshing the machine lease failed; retrying at once"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyValue, RangePage, Revision, Store, TxnResult, WatchStream};
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_refresh_is_bounded_by_what_is_left_of_the_lease() {
        let ms = Duration::from_millis;
        let period = ms(1000);
        for (left, budget) in [
            (ms(3000), ms(1000)), // a fresh lease: one period
            (ms(600), ms(600)),   // little left: no longer than that
            (ms(100), ms(250)),   // almost nothing left on our clock: still a real try
            (ms(0), ms(250)),
        ] {
            assert_eq!(refresh_budget(period, left), budget, "left {left:?}");
        }
    }

    /// A registry that holds every keep-alive while `stalled` is true, and records when each
    /// one was answered. With `lose_stalled`, a keep-alive sent during a stall is never
    /// answered (its connection broke under it).
    struct Stalling {
        stalled: watch::Receiver<bool>,
        lose_stalled: bool,
        answered: Mutex<Vec<Instant>>,
        ttl: Duration,
    }

    impl Stalling {
        fn new(stalled: watch::Receiver<bool>, lose_stalled: bool, ttl: Duration) -> Arc<Self> {
            Arc::new(Stalling {
                stalled,
                lose_stalled,
                answered: Mutex::new(Vec::new()),
                ttl,
            })
        }
    }

    fn unused<T>() -> Result<T, StoreError> {
        Err(StoreError::Other("not used by this test".into()))
    }

    #[async_trait]
    impl Store for Stalling {
        async fn get(&self, _: &str) -> Result<Option<KeyValue>, StoreError> {
            unused()
        }
        async fn range(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
            _: Option<Revision>,
        ) -> Result<RangePage, StoreError> {
            unused()
        }
        async fn txn(
            &self,
            _: Vec<Compare>,
            _: Vec<Op>,
            _: Vec<Op>,
        ) -> Result<TxnResult, StoreError> {
            unused()
        }
        async fn grant_lease(&self, _: Duration) -> Result<LeaseId, StoreError> {
            Ok(7)
        }
        async fn keep_alive(&self, _: LeaseId) -> Result<Duration, StoreError> {
            let mut stalled = self.stalled.clone();
            if self.lose_stalled && *stalled.borrow() {
                std::future::pending::<()>().await;
            }
            let _ = stalled.wait_for(|s| !*s).await;
            self.answered.lock().unwrap().push(Instant::now());
            Ok(self.ttl)
        }
        async fn lease_ttl(&self, _: LeaseId) -> Result<Option<Duration>, StoreError> {
            unused()
        }
        async fn revoke_lease(&self, _: LeaseId) -> Result<(), StoreError> {
            unused()
        }
        async fn watch(&self, _: &str, _: Revision) -> Result<WatchStream, StoreError> {
            unused()
        }
    }

    /// The registry stops answering for two thirds of the TTL, a moment before a refresh is
    /// due: the refresh waits, times out and is retried at once, and the registry's first
    /// answer after the stall comes the moment it answers again, not a period later. The clock
    /// is paused, so the instants are exact.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_registry_is_refreshed_the_moment_it_answers_again() {
        let ttl = Duration::from_secs(3);
        let (stall, stalled) = watch::channel(false);
        let store = Stalling::new(stalled, false, ttl);
        let registry = Registry::new(store.clone(), "/fleet/");
        let lease = registry.grant_machine_lease(ttl).await.unwrap();
        let t0 = Instant::now();
        let (_keeper, mut expired) = lease.keep_alive();

        // Two refreshes a period apart.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let answered = store.answered.lock().unwrap().clone();
        assert_eq!(
            answered,
            vec![t0 + Duration::from_secs(1), t0 + Duration::from_secs(2)]
        );

        // Stalled from 2.5 s to 4.5 s; the refresh due at 3 s times out at 4 s (a period, less
        // than the 2 s left of the lease) and is sent again.
        stall.send_replace(true);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(store.answered.lock().unwrap().len(), 2);
        stall.send_replace(false);
        let thawed = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let answered = store.answered.lock().unwrap().clone();
        assert_eq!(answered.get(2), Some(&thawed), "{answered:?}");

        // Then every period again, counted from when that refresh was sent (4 s): the lease's
        // time on the registry's clock started no earlier.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let answered = store.answered.lock().unwrap().clone();
        assert_eq!(answered.len(), 4, "{answered:?}");
        assert_eq!(answered[3], t0 + Duration::from_secs(5));
        assert!(expired.try_recv().is_err(), "no lease was reported lost");
    }

    /// A refresh sent during a stall is lost (never answered): it is abandoned within what is
    /// left of the lease and sent again, and the one sent after the stall saves the lease.
    /// Without that bound the keeper would wait on the lost one until the lease was gone.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_lost_in_a_stall_is_abandoned_and_sent_again_in_time() {
        let ttl = Duration::from_secs(3);
        let (stall, stalled) = watch::channel(false);
        let store = Stalling::new(stalled, true, ttl);
        let registry = Registry::new(store.clone(), "/fleet/");
        let lease = registry.grant_machine_lease(ttl).await.unwrap();
        let t0 = Instant::now();
        let (_keeper, mut expired) = lease.keep_alive();

        // Refreshed at 1 s and 2 s; stalled from 2.5 s to 3.5 s, so the refresh sent at 3 s is
        // lost. The lease, last refreshed at 2 s, lasts until 5 s.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stall.send_replace(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stall.send_replace(false);
        tokio::time::sleep(Duration::from_millis(1400)).await;
        let answered = store.answered.lock().unwrap().clone();
        let s = Duration::from_secs;
        // Abandoned after a period (1 s, less than the 2 s left) and sent again at 4 s.
        assert_eq!(answered, vec![t0 + s(1), t0 + s(2), t0 + s(4)]);
        assert!(expired.try_recv().is_err(), "no lease was reported lost");
    }
}
