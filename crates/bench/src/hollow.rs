//! A hollow unit manager: what a machine's systemd would do, kept in a map. Units loaded are
//! `loaded/inactive/dead`; started, they are `loaded/active/running` at once. Everything above
//! it (presence, watches, reconcile, state publishing) is the real agent.
//!
//! ```
//! # tokio_test_block_on(async {
//! use agent::UnitManager;
//! let m = fleet_bench::hollow::HollowManager::new();
//! let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
//! m.load("a.service", &file).await.unwrap();
//! m.start("a.service").await.unwrap();
//! let states = m.states(&["a.service".to_string()]).await.unwrap();
//! assert_eq!(states[0].1.as_ref().unwrap().sub, "running");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use agent::{StateChange, UnitManager};
use async_trait::async_trait;
use registry::SystemdState;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::broadcast;
use unit::{UnitFile, UnitHash};

/// Slots of the change channel. Small on purpose: tokio allocates every slot up front, and a
/// hollow machine should cost what an agent costs, not what a deep buffer costs. An agent that
/// falls behind re-reads all states (`Lagged`), as it would with systemd.
const CHANNEL_SLOTS: usize = 64;

struct Held {
    hash: UnitHash,
    running: bool,
}

/// An in-memory [`UnitManager`].
pub struct HollowManager {
    units: Mutex<BTreeMap<String, Held>>,
    tx: broadcast::Sender<StateChange>,
}

impl Default for HollowManager {
    fn default() -> Self {
        Self::new()
    }
}

fn state(running: bool) -> SystemdState {
    let (active, sub) = if running {
        ("active", "running")
    } else {
        ("inactive", "dead")
    };
    SystemdState {
        load: "loaded".into(),
        active: active.into(),
        sub: sub.into(),
    }
}

impl HollowManager {
    pub fn new() -> HollowManager {
        HollowManager {
            units: Mutex::new(BTreeMap::new()),
            tx: broadcast::channel(CHANNEL_SLOTS).0,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        // A panic while holding this lock cannot leave the map half-changed (single inserts
        // and removes), so a poisoned lock is still usable.
        self.units
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, name: &str, state: Option<SystemdState>) {
        // No subscriber is fine: the agent reads states after each pass anyway.
        let _ = self.tx.send(StateChange {
            name: name.to_string(),
            state,
        });
    }

    fn set_running(&self, name: &str, running: bool) -> anyhow::Result<()> {
        {
            let mut units = self.held();
            let Some(held) = units.get_mut(name) else {
                anyhow::bail!("unit {name} is not loaded");
            };
            held.running = running;
        }
        self.emit(name, Some(state(running)));
        Ok(())
    }
}

#[async_trait]
impl UnitManager for HollowManager {
    async fn load(&self, name: &str, file: &UnitFile) -> anyhow::Result<()> {
        let hash = file.hash();
        let running = {
            let mut units = self.held();
            let held = units.entry(name.to_string()).or_insert(Held {
                hash,
                running: false,
            });
            held.hash = hash;
            held.running
        };
        self.emit(name, Some(state(running)));
        Ok(())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn start(&self, name: &str) -> anyhow::Result<()> {
        self.set_running(name, true)
    }

    async fn stop(&self, name: &str) -> anyhow::Result<()> {
        self.set_running(name, false)
    }

    async fn unload(&self, name: &str) -> anyhow::Result<()> {
        let removed = self.held().remove(name).is_some();
        if removed {
            self.emit(name, None);
        }
        Ok(())
    }

    async fn units(&self) -> anyhow::Result<Vec<(String, UnitHash)>> {
        Ok(self
            .held()
            .iter()
            .map(|(n, h)| (n.clone(), h.hash))
            .collect())
    }

    async fn states(
        &self,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<SystemdState>)>> {
        let units = self.held();
        Ok(names
            .iter()
            .map(|n| (n.clone(), units.get(n).map(|h| state(h.running))))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> UnitFile {
        UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap()
    }

    #[tokio::test]
    async fn lifecycle_reports_systemd_states_and_changes() {
        let m = HollowManager::new();
        let mut rx = m.subscribe();
        let names = vec!["a.service".to_string(), "b.service".to_string()];
        m.load("a.service", &file()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().state, Some(state(false)));
        m.start("a.service").await.unwrap();
        assert_eq!(rx.recv().await.unwrap().state, Some(state(true)));
        let states = m.states(&names).await.unwrap();
        assert_eq!(
            states[0].1.as_ref().map(|s| s.active.as_str()),
            Some("active")
        );
        assert_eq!(states[1].1, None);
        assert_eq!(
            m.units().await.unwrap(),
            vec![("a.service".into(), file().hash())]
        );
        m.stop("a.service").await.unwrap();
        assert_eq!(rx.recv().await.unwrap().state, Some(state(false)));
        m.unload("a.service").await.unwrap();
        let gone = rx.recv().await.unwrap();
        assert_eq!((gone.name.as_str(), gone.state), ("a.service", None));
        assert!(m.units().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn starting_an_unknown_unit_fails_with_its_name() {
        let m = HollowManager::new();
        let err = m.start("x.service").await.unwrap_err().to_string();
        assert!(err.contains("x.service"), "{err}");
    }
}
