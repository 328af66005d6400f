//! The interface between the agent and what actually runs units on a machine.

use async_trait::async_trait;
use registry::SystemdState;
use unit::{UnitFile, UnitHash};

/// A unit's state changed (or the unit went away: `state` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub name: String,
    pub state: Option<SystemdState>,
}

/// An action the unit manager refused in a way that retrying will not change (systemd: the
/// transaction is destructive, as every start is while the machine shuts down). The agent does
/// not retry it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Runs units on this machine: systemd over D-Bus, or our own process supervisor.
///
/// The agent calls `load` for every unit of a batch, then `reload` once, then `start`/`stop`.
/// Errors carry the unit name and what failed; one unit's error never affects another unit.
#[async_trait]
pub trait UnitManager: Send + Sync + 'static {
    /// Writes the unit's normalized file and makes it known (systemd: link as a runtime unit,
    /// enable it if it has an `[Install]` section). Replaces an earlier file of the same name.
    async fn load(&self, name: &str, file: &UnitFile) -> anyhow::Result<()>;

    /// Makes the loads and unloads of a batch take effect (systemd: one daemon-reload).
    async fn reload(&self) -> anyhow::Result<()>;

    /// Starts the unit (systemd: StartUnit with mode `replace`); does not wait for it to be active.
    async fn start(&self, name: &str) -> anyhow::Result<()>;

    /// Stops the unit (systemd: StopUnit with mode `replace`).
    async fn stop(&self, name: &str) -> anyhow::Result<()>;

    /// Stops the unit and forgets it: disable, reset-failed, remove its file. The file stays if
    /// stopping failed, so that it can still be stopped later.
    async fn unload(&self, name: &str) -> anyhow::Result<()>;

    /// Units whose files this manager holds, with the hash of each file: what a restarted agent
    /// re-adopts.
    async fn units(&self) -> anyhow::Result<Vec<(String, UnitHash)>>;

    /// The current state of each named unit (`None` for units the manager does not know).
    async fn states(&self, names: &[String])
        -> anyhow::Result<Vec<(String, Option<SystemdState>)>>;

    /// Why the unit failed or cannot run, when the manager knows more than systemd's state
    /// names say (our process supervisor does; systemd's reasons are in its journal).
    fn failure_reason(&self, _name: &str) -> Option<String> {
        None
    }

    /// State changes of units loaded through this manager, as they happen.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StateChange>;

    /// Turns true when the machine itself is shutting down (systemd: a job for
    /// `shutdown.target` or its kin, or `SystemState` `stopping`): from then on the agent
    /// starts nothing and leaves the cluster, and the system stops the units. `None` for
    /// managers that cannot tell.
    fn machine_stopping(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}
