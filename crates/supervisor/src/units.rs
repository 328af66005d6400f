//! The table of loaded units that the manager and the units' tasks share, and the run records
//! that let a new manager re-adopt what still runs.

use crate::config::{ConfigError, ServiceConfig, Specifiers};
use crate::supervise::{self, Adopted, Goal};
use crate::{sys, Error, LoadState, StateChange, SubState, UnitStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use unit::{UnitFile, UnitHash};

/// What `run/<name>.json` holds while a unit runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub boot_id: String,
    pub main_pid: Option<i32>,
    pub main_start_time: Option<u64>,
    #[serde(default)]
    pub sessions: Vec<i32>,
    pub sub: RecordedState,
}

/// What a run record says the unit was doing (its sub-state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RecordedState {
    Running,
    Exited,
}

/// One loaded unit.
pub(crate) struct UnitEntry {
    /// The hash of its file as written to `units/`.
    pub hash: UnitHash,
    pub config: Result<Arc<ServiceConfig>, ConfigError>,
    pub status: UnitStatus,
    /// Why the unit last failed or cannot run.
    pub reason: Option<String>,
    /// What its task should bring the unit to: `start` and `stop` only set this.
    pub goal: Arc<watch::Sender<Goal>>,
    /// The unit's task (see [`supervise`]); none while its file cannot be run.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// What the manager and the units' tasks share.
pub(crate) struct Shared {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// The state directory's log forwarder.
    pub forwarder: Arc<crate::forwarder::Forwarder>,
    /// The size at which a unit's log is rotated.
    pub log_max: u64,
    pub boot_id: String,
    pub on_change: Option<OnChange>,
    pub units: Mutex<BTreeMap<String, UnitEntry>>,
    /// Closed when the manager is dropped: every unit task ends, processes stay.
    pub shutdown: watch::Receiver<()>,
}

/// Told of every state change, in order, while the manager's lock is held: it must be quick
/// (a channel send) and must not call the manager.
pub(crate) type OnChange = Box<dyn Fn(StateChange) + Send + Sync>;

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UnitEntry>> {
        // A poisoned lock only means another task panicked while holding it; the map is
        // still consistent (every update is a single assignment).
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    /// Adds a line of fleetd's own to the unit's log.
    pub(crate) async fn note(&self, name: &str, message: String) {
        crate::log::note(self.log_path(name), message, self.log_max).await;
    }

    pub(crate) fn record_path(&self, name: &str) -> PathBuf {
        self.runtime_dir.join("run").join(format!("{name}.json"))
    }

    pub(crate) fn config(&self, name: &str) -> Option<Result<Arc<ServiceConfig>, ConfigError>> {
        self.lock().get(name).map(|e| e.config.clone())
    }

    pub(crate) fn set_reason(&self, name: &str, reason: Option<String>) {
        if let Some(e) = self.lock().get_mut(name) {
            e.reason = reason;
        }
    }

    pub(crate) fn set_state(&self, name: &str, sub: SubState) {
        let mut units = self.lock();
        let Some(e) = units.get_mut(name) else { return };
        if e.status.sub == sub {
            return;
        }
        e.status.sub = sub;
        tracing::debug!(unit = name, active = %sub.active(), %sub, "unit state");
        self.notify(name, Some(e.status));
    }

    /// Call with the lock held, so that observers see changes in the order they happened.
    pub(crate) fn notify(&self, name: &str, status: Option<UnitStatus>) {
        if let Some(f) = &self.on_change {
            f(StateChange {
                name: name.to_string(),
                status,
            });
        }
    }

    pub(crate) async fn write_record(
        &self,
        name: &str,
        rec: &RunRecord,
    ) -> Result<(), RecordError> {
        let path = self.record_path(name);
        let tmp = path.with_extension("json.tmp");
        tokio::fs::write(&tmp, serde_json::to_vec(rec)?)
            .await
            .map_err(|source| RecordError::Write {
                path: tmp.clone(),
                source,
            })?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|source| RecordError::Rename { path, source })
    }

    pub(crate) async fn remove_record(&self, name: &str) {
        let _ = tokio::fs::remove_file(self.record_path(name)).await;
    }
}

/// Why a run record was not written (the unit runs on, but a new manager will not re-adopt it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("renaming to {}", path.display())]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A unit name must be usable as a file name.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 256 || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err(Error::InvalidName(name.into()));
    }
    Ok(())
}

pub(crate) fn specifiers(name: &str, file: &UnitFile, boot_id: &str) -> Specifiers {
    let user = file
        .values("Service", "User")
        .last()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let account = sys::account(user, None).ok();
    Specifiers {
        name: name.to_string(),
        hostname: sys::hostname(),
        machine_id: sys::machine_id(),
        boot_id: boot_id.replace('-', ""),
        user: account.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
        uid: account
            .as_ref()
            .map(|a| a.uid.to_string())
            .unwrap_or_default(),
        home: account.map(|a| a.home).unwrap_or_else(|| "/".into()),
    }
}

pub(crate) fn load_status(config: &Result<Arc<ServiceConfig>, ConfigError>) -> UnitStatus {
    match config {
        Ok(_) => UnitStatus {
            load: LoadState::Loaded,
            sub: SubState::Dead,
        },
        Err(_) => UnitStatus {
            load: LoadState::Error,
            sub: SubState::Failed,
        },
    }
}

/// Starts the unit's task; it ends when the manager is dropped.
pub(crate) fn spawn_supervisor(
    runtime: &tokio::runtime::Handle,
    shared: Arc<Shared>,
    name: String,
    goal_rx: watch::Receiver<Goal>,
    goal_tx: Arc<watch::Sender<Goal>>,
    adopted: Option<Adopted>,
) -> tokio::task::JoinHandle<()> {
    let mut shutdown = shared.shutdown.clone();
    runtime.spawn(async move {
        tokio::select! {
            _ = async { while shutdown.changed().await.is_ok() {} } => {}
            _ = supervise::supervise(shared, name, goal_rx, goal_tx, adopted) => {}
        }
    })
}
