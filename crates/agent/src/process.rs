//! Our process supervisor (crate `supervisor`) as a [`UnitManager`], for hosts without systemd.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use agent::process::ProcessUnitManager;
//! let builder = supervisor::ProcessManager::builder("/var/lib/fleet/process".into());
//! let manager: std::sync::Arc<dyn agent::UnitManager> =
//!     std::sync::Arc::new(ProcessUnitManager::open(builder)?);
//! # Ok(()) }
//! ```
//!
//! The supervisor speaks in typed states; the agent publishes systemd's state names, which
//! [`UnitStatus`]'s parts spell.

use crate::manager::{StateChange, UnitManager};
use async_trait::async_trait;
use registry::SystemdState;
use supervisor::{Builder, ProcessManager, UnitStatus};
use tokio::sync::broadcast;
use unit::{UnitFile, UnitHash};

/// A [`ProcessManager`] whose state changes reach the agent's subscribers.
pub struct ProcessUnitManager {
    supervisor: ProcessManager,
    changes: broadcast::Sender<StateChange>,
}

impl ProcessUnitManager {
    /// Opens the supervisor `builder` describes (see [`Builder::open`]). Its state changes are
    /// sent straight from the supervisor, in order, so that a subscriber that falls behind is
    /// told it lagged (and the agent reads all states again) instead of missing changes.
    pub fn open(builder: Builder) -> anyhow::Result<ProcessUnitManager> {
        let (changes, _) = broadcast::channel(1024);
        let tx = changes.clone();
        let supervisor = builder
            .on_change(move |change| {
                // A send error only means nobody listens right now.
                let _ = tx.send(StateChange {
                    name: change.name,
                    state: change.status.map(systemd_state),
                });
            })
            .open()?;
        Ok(ProcessUnitManager {
            supervisor,
            changes,
        })
    }

    pub fn supervisor(&self) -> &ProcessManager {
        &self.supervisor
    }
}

fn systemd_state(status: UnitStatus) -> SystemdState {
    SystemdState {
        load: status.load.as_str().into(),
        active: status.active().as_str().into(),
        sub: status.sub.as_str().into(),
    }
}

#[async_trait]
impl UnitManager for ProcessUnitManager {
    fn failure_reason(&self, name: &str) -> Option<String> {
        self.supervisor.reason(name)
    }

    async fn load(&self, name: &str, file: &UnitFile) -> anyhow::Result<()> {
        Ok(self.supervisor.load(name, file).await?)
    }

    /// A load takes effect at once, for the next start.
    async fn reload(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn start(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.supervisor.start(name)?)
    }

    async fn stop(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.supervisor.stop(name)?)
    }

    async fn unload(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.supervisor.unload(name).await?)
    }

    async fn units(&self) -> anyhow::Result<Vec<(String, UnitHash)>> {
        Ok(self.supervisor.units())
    }

    async fn states(
        &self,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<SystemdState>)>> {
        let statuses = self.supervisor.statuses(names);
        Ok(names
            .iter()
            .cloned()
            .zip(statuses.into_iter().map(|s| s.map(systemd_state)))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use supervisor::{LoadState, SubState};

    #[test]
    fn published_states_are_systemds_names() {
        let cases = [
            (LoadState::Loaded, SubState::Dead, "loaded/inactive/dead"),
            (
                LoadState::Loaded,
                SubState::Running,
                "loaded/active/running",
            ),
            (
                LoadState::Loaded,
                SubState::AutoRestart,
                "loaded/activating/auto-restart",
            ),
            (
                LoadState::Loaded,
                SubState::StopSigterm,
                "loaded/deactivating/stop-sigterm",
            ),
            (LoadState::Error, SubState::Failed, "error/failed/failed"),
        ];
        for (load, sub, want) in cases {
            let s = systemd_state(UnitStatus { load, sub });
            assert_eq!(format!("{}/{}/{}", s.load, s.active, s.sub), want);
        }
    }
}
