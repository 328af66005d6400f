//! Opening a manager: its directories, its log forwarder, and the units a previous manager
//! left behind.

use crate::config::{self, ConfigError};
use crate::forwarder::Forwarder;
use crate::supervise::{Adopted, Goal};
use crate::units::{
    check_name, load_status, spawn_supervisor, specifiers, OnChange, RecordedState, RunRecord,
    Shared, UnitEntry,
};
use crate::{log, sys, Error, ProcessManager, StateChange, SubState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use unit::{UnitFile, UnitHash};

impl ProcessManager {
    /// A manager keeping its logs under `state_dir` (created if missing); see [`Builder`].
    pub fn builder(state_dir: PathBuf) -> Builder {
        Builder {
            state_dir,
            runtime_dir: None,
            helper: None,
            log_max_bytes: log::MAX_LOG_BYTES,
            on_change: None,
        }
    }
}

/// How to open a [`ProcessManager`]: its directories, its log forwarder, who hears of state
/// changes.
pub struct Builder {
    state_dir: PathBuf,
    runtime_dir: Option<PathBuf>,
    helper: Option<PathBuf>,
    log_max_bytes: u64,
    on_change: Option<OnChange>,
}

impl Builder {
    /// Where unit files and run records live (default: the state directory). fleetd puts them
    /// on a tmpfs: they only need to outlive fleetd, not the boot, and a disk file system
    /// makes every unit start pay for two file creations.
    pub fn runtime_dir(mut self, dir: PathBuf) -> Builder {
        self.runtime_dir = Some(dir);
        self
    }

    /// The log-forwarder executable: any binary that calls [`run_helper_if_requested`](crate::run_helper_if_requested) first
    /// thing in `main`, such as `fleet-process-helper`. Default: `FLEET_PROCESS_HELPER` if
    /// set, else this executable (fleetd is its own forwarder).
    pub fn helper(mut self, helper: PathBuf) -> Builder {
        self.helper = Some(helper);
        self
    }

    /// The size at which a unit's log is rotated (default [`log::MAX_LOG_BYTES`]); one older
    /// file is kept.
    pub fn log_max_bytes(mut self, max: u64) -> Builder {
        self.log_max_bytes = max.max(1);
        self
    }

    /// Called with every state change, in order, with the manager's lock held: it must be
    /// quick (a channel send) and must not call the manager.
    pub fn on_change(mut self, f: impl Fn(StateChange) + Send + Sync + 'static) -> Builder {
        self.on_change = Some(Box::new(f));
        self
    }

    /// Creates the directories and re-adopts the units a previous manager left running. Must
    /// be called inside a tokio runtime.
    pub fn open(self) -> Result<ProcessManager, Error> {
        let helper = match self.helper {
            Some(h) => h,
            None => match std::env::var_os("FLEET_PROCESS_HELPER") {
                Some(h) => PathBuf::from(h),
                None => std::env::current_exe().map_err(Error::OwnExecutable)?,
            },
        };
        let state_dir = self.state_dir;
        let runtime_dir = self.runtime_dir.unwrap_or_else(|| state_dir.clone());
        let runtime = tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        probe_helper(&helper)?;
        for dir in [
            runtime_dir.join("units"),
            runtime_dir.join("run"),
            state_dir.join("logs"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| Error::CreateDir { path: dir, source })?;
        }
        let forwarder = Arc::new(
            Forwarder::new(helper, state_dir.join("logs"), self.log_max_bytes)
                .map_err(Error::Forwarder)?,
        );
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        // Started now, not at the first run: a manager that re-adopts running units finds the
        // forwarder that reads their output, and learns if it dies.
        runtime.spawn(forwarder.clone().watch(shutdown_rx.clone()));
        let shared = Arc::new(Shared {
            state_dir,
            runtime_dir: runtime_dir.clone(),
            forwarder,
            log_max: self.log_max_bytes,
            boot_id: sys::boot_id(),
            on_change: self.on_change,
            units: Mutex::new(BTreeMap::new()),
            shutdown: shutdown_rx,
        });
        let units_dir = runtime_dir.join("units");
        let entries = std::fs::read_dir(&units_dir).map_err(|source| Error::ReadDir {
            path: units_dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name(&name).is_err() || name.ends_with(".tmp") {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            readopt(&runtime, &shared, name, &bytes);
        }
        Ok(ProcessManager {
            shared,
            _shutdown: shutdown_tx,
        })
    }
}

/// Takes over a unit whose file a previous manager left: reads its run record and watches
/// what still runs (reported `active/running`); restarts nothing.
fn readopt(runtime: &tokio::runtime::Handle, shared: &Arc<Shared>, name: String, bytes: &[u8]) {
    let hash = UnitHash::of(bytes);
    let text = String::from_utf8_lossy(bytes);
    let config = parse_stored(&name, &text).and_then(|file| {
        config::service_config(&name, &file, &specifiers(&name, &file, &shared.boot_id))
            .map(Arc::new)
    });
    let mut status = load_status(&config);
    let mut adopted = None;
    let mut reason = config.as_ref().err().map(ConfigError::to_string);
    let rec_path = shared.record_path(&name);
    let record: Option<RunRecord> = std::fs::read(&rec_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(rec) = record {
        if rec.boot_id != shared.boot_id {
            // The machine rebooted since: nothing of the unit runs any more.
            let _ = std::fs::remove_file(&rec_path);
        } else if rec.sub == RecordedState::Exited {
            adopted = Some(Adopted::Exited);
            status.sub = SubState::Exited;
        } else if let (Some(pid), Some(start_time)) = (rec.main_pid, rec.main_start_time) {
            if sys::alive(pid, start_time) {
                adopted = Some(Adopted::Running {
                    pid,
                    start_time,
                    sessions: rec.sessions,
                });
                status.sub = SubState::Running;
            } else {
                let _ = std::fs::remove_file(&rec_path);
                status.sub = SubState::Failed;
                reason = Some(format!(
                    "{name}: main process {pid} exited while fleetd was not running"
                ));
            }
        }
    }
    if config.is_err() && adopted.is_some() {
        tracing::warn!(unit = %name, "a running unit's file is unusable; it keeps running unsupervised: {reason:?}");
    }
    let goal = if adopted.is_some() {
        Goal::Started
    } else {
        Goal::Stopped
    };
    let (goal_tx, goal_rx) = watch::channel(goal);
    let goal_tx = Arc::new(goal_tx);
    let runnable = config.is_ok();
    // The entry exists before its task runs: a task whose unit is unknown ends.
    let entry = UnitEntry {
        hash,
        config,
        status,
        reason,
        goal: goal_tx.clone(),
        task: None,
    };
    shared.lock().insert(name.clone(), entry);
    if runnable {
        let task = spawn_supervisor(
            runtime,
            shared.clone(),
            name.clone(),
            goal_rx,
            goal_tx,
            adopted,
        );
        if let Some(e) = shared.lock().get_mut(&name) {
            e.task = Some(task);
        }
    }
}

/// Parses a stored unit file, turning a parser panic into an error: the file came from disk.
fn parse_stored(name: &str, text: &str) -> Result<UnitFile, ConfigError> {
    match std::panic::catch_unwind(|| UnitFile::parse(text)) {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(problem)) => Err(ConfigError::Unparsable {
            unit: name.into(),
            problem,
        }),
        Err(_) => Err(ConfigError::ParserPanicked { unit: name.into() }),
    }
}

fn probe_helper(helper: &Path) -> Result<(), Error> {
    let out = std::process::Command::new(helper)
        .args([log::HELPER_ARG, "probe"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::RunHelper {
            path: helper.into(),
            source,
        })?;
    if String::from_utf8_lossy(&out.stdout).trim() != log::PROBE_REPLY {
        return Err(Error::NotAHelper {
            path: helper.into(),
        });
    }
    Ok(())
}
