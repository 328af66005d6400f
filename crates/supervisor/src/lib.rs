//! Our own process supervisor, for hosts without systemd.
//!
//! ```no_run
//! # async fn example(file: unit::UnitFile) -> Result<(), supervisor::Error> {
//! use supervisor::ProcessManager;
//! let manager = ProcessManager::builder("/var/lib/fleet".into()).open()?;
//! manager.load("web.service", &file).await?;
//! manager.start("web.service")?;
//! let log = manager.log_path("web.service"); // state_dir/logs/web.service.log
//! # Ok(()) }
//! ```
//!
//! It runs the service subset of systemd units (see [`config`]) with systemd's state names.
//! Layout under `runtime_dir` (fleetd: `units_directory/process`, on a tmpfs where systemd
//! mounts `/run`: these files only need to outlive fleetd, not the boot, and creating two
//! files per unit start on a disk file system was the largest cost of starting units):
//! - `units/<name>`: the normalized unit file, as loaded;
//! - `run/<name>.json`: a running unit's main pid, its start time (`/proc/<pid>/stat`, to
//!   guard against pid reuse), its sessions and the boot id.
//!
//! Under `state_dir` (kept across reboots):
//! - `logs/<name>.log` (+ `.log.1`): its stdout/stderr, one timestamped line per line.
//!
//! Every command of a unit runs as the leader of its own session (setsid): stopping signals the
//! whole tree, and nothing of the unit depends on fleetd staying alive. Output goes through a
//! small forwarder process per run (see [`log`]), never through fleetd. A new manager on the
//! same `state_dir` re-adopts what still runs: it reports it `active/running`, watches its main
//! pid and can stop it; it restarts nothing.
//!
//! Limits, by design: no cgroups, so a process that calls `setsid` itself leaves the unit's
//! sessions and is not killed on stop (except the main pid of `Type=forking`); after a
//! re-adoption the main pid is not fleetd's child, so its exit status is unknown and counted
//! as a failure. `reload` is a no-op: a load takes effect at once, for the next start.

pub mod config;
mod error;
pub mod log;
pub mod spawn;
mod state;
mod supervisor;
pub mod sys;

pub use config::ConfigError;
pub use error::Error;
pub use log::run_helper_if_requested;
pub use state::{ActiveState, LoadState, StateChange, SubState, UnitStatus};

use config::{ServiceConfig, Specifiers};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use supervisor::{Adopted, Goal};
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

struct UnitEntry {
    hash: UnitHash,
    config: Result<Arc<ServiceConfig>, ConfigError>,
    status: UnitStatus,
    reason: Option<String>,
    goal: Arc<watch::Sender<Goal>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) struct Shared {
    state_dir: PathBuf,
    runtime_dir: PathBuf,
    helper: PathBuf,
    boot_id: String,
    on_change: Option<OnChange>,
    units: Mutex<BTreeMap<String, UnitEntry>>,
    /// Closed when the manager is dropped: every unit task ends, processes stay.
    shutdown: watch::Receiver<()>,
}

/// Told of every state change, in order, while the manager's lock is held: it must be quick
/// (a channel send) and must not call the manager.
type OnChange = Box<dyn Fn(StateChange) + Send + Sync>;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UnitEntry>> {
        // A poisoned lock only means another task panicked while holding it; the map is
        // still consistent (every update is a single assignment).
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
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
    fn notify(&self, name: &str, status: Option<UnitStatus>) {
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

/// Runs units as plain processes; see the module documentation.
pub struct ProcessManager {
    shared: Arc<Shared>,
    _shutdown: watch::Sender<()>,
}

/// A unit name must be usable as a file name.
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 256 || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err(Error::InvalidName(name.into()));
    }
    Ok(())
}

fn specifiers(name: &str, file: &UnitFile, boot_id: &str) -> Specifiers {
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

fn load_status(config: &Result<Arc<ServiceConfig>, ConfigError>) -> UnitStatus {
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

/// How to open a [`ProcessManager`]: its directories, its log forwarder, who hears of state
/// changes.
pub struct Builder {
    state_dir: PathBuf,
    runtime_dir: Option<PathBuf>,
    helper: Option<PathBuf>,
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

    /// The log-forwarder executable: any binary that calls [`run_helper_if_requested`] first
    /// thing in `main`, such as `fleet-process-helper`. Default: `FLEET_PROCESS_HELPER` if
    /// set, else this executable (fleetd is its own forwarder).
    pub fn helper(mut self, helper: PathBuf) -> Builder {
        self.helper = Some(helper);
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
        let runtime_dir = self.runtime_dir.unwrap_or_else(|| self.state_dir.clone());
        ProcessManager::open(self.state_dir, runtime_dir, helper, self.on_change)
    }
}

impl ProcessManager {
    /// A manager keeping its logs under `state_dir` (created if missing); see [`Builder`].
    pub fn builder(state_dir: PathBuf) -> Builder {
        Builder {
            state_dir,
            runtime_dir: None,
            helper: None,
            on_change: None,
        }
    }

    fn open(
        state_dir: PathBuf,
        runtime_dir: PathBuf,
        helper: PathBuf,
        on_change: Option<OnChange>,
    ) -> Result<ProcessManager, Error> {
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
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            state_dir: state_dir.clone(),
            runtime_dir: runtime_dir.clone(),
            helper,
            boot_id: sys::boot_id(),
            on_change,
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
            let hash = UnitHash::of(&bytes);
            let text = String::from_utf8_lossy(&bytes);
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
                    &runtime,
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
        Ok(ProcessManager {
            shared,
            _shutdown: shutdown_tx,
        })
    }

    /// Where a unit's stdout/stderr is captured (the previous file is `<path>.1`).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.shared.log_path(name)
    }

    /// Why the unit last failed or cannot run, if it did.
    pub fn reason(&self, name: &str) -> Option<String> {
        self.shared.lock().get(name).and_then(|e| e.reason.clone())
    }

    /// The directory this manager keeps its logs in.
    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// The unit's current status; `None` if it is not loaded.
    pub fn status(&self, name: &str) -> Option<UnitStatus> {
        self.shared.lock().get(name).map(|e| e.status)
    }

    /// The status of each named unit, in the order of `names`, read at one instant.
    pub fn statuses(&self, names: &[String]) -> Vec<Option<UnitStatus>> {
        let units = self.shared.lock();
        names
            .iter()
            .map(|n| units.get(n).map(|e| e.status))
            .collect()
    }

    /// Loaded units with the hash of each unit's file: what a restarted fleetd re-adopts.
    pub fn units(&self) -> Vec<(String, UnitHash)> {
        self.shared
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.hash))
            .collect()
    }

    /// Writes the unit's normalized file and reads its service settings; takes effect at once,
    /// for the next start. A file the supervisor cannot run still loads (with load state
    /// `error` and the reason in [`ProcessManager::reason`]); starting it is refused.
    pub async fn load(&self, name: &str, file: &UnitFile) -> Result<(), Error> {
        check_name(name)?;
        let text = file.serialize();
        let hash = UnitHash::of(text.as_bytes());
        let path = self.shared.runtime_dir.join("units").join(name);
        let tmp = self
            .shared
            .runtime_dir
            .join("units")
            .join(format!("{name}.tmp"));
        let write_error = |path: &Path, source| Error::WriteUnitFile {
            unit: name.into(),
            path: path.into(),
            source,
        };
        tokio::fs::write(&tmp, &text)
            .await
            .map_err(|e| write_error(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| write_error(&path, e))?;
        let (n, f, boot) = (name.to_string(), file.clone(), self.shared.boot_id.clone());
        let config = tokio::task::spawn_blocking(move || {
            config::service_config(&n, &f, &specifiers(&n, &f, &boot)).map(Arc::new)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::NotRead {
                unit: name.into(),
                problem: e.to_string(),
            })
        });
        let mut units = self.shared.lock();
        match units.get_mut(name) {
            Some(e) => {
                e.hash = hash;
                e.reason = config.as_ref().err().map(ConfigError::to_string);
                let load = if config.is_ok() {
                    LoadState::Loaded
                } else {
                    LoadState::Error
                };
                if e.status.load != load {
                    e.status.load = load;
                    self.shared.notify(name, Some(e.status));
                }
                if e.task.is_none() && config.is_ok() {
                    e.task = Some(spawn_supervisor(
                        &tokio::runtime::Handle::current(),
                        self.shared.clone(),
                        name.into(),
                        e.goal.subscribe(),
                        e.goal.clone(),
                        None,
                    ));
                }
                e.config = config;
            }
            None => {
                let status = load_status(&config);
                let (goal_tx, goal_rx) = watch::channel(Goal::Stopped);
                let goal_tx = Arc::new(goal_tx);
                let task = config.is_ok().then(|| {
                    spawn_supervisor(
                        &tokio::runtime::Handle::current(),
                        self.shared.clone(),
                        name.into(),
                        goal_rx,
                        goal_tx.clone(),
                        None,
                    )
                });
                self.shared.notify(name, Some(status));
                let reason = config.as_ref().err().map(ConfigError::to_string);
                units.insert(
                    name.into(),
                    UnitEntry {
                        hash,
                        config,
                        status,
                        reason,
                        goal: goal_tx,
                        task,
                    },
                );
            }
        }
        Ok(())
    }

    /// Starts the unit; does not wait for it to be active.
    pub fn start(&self, name: &str) -> Result<(), Error> {
        let units = self.shared.lock();
        let e = units
            .get(name)
            .ok_or_else(|| Error::StartNotLoaded(name.into()))?;
        if let Err(reason) = &e.config {
            return Err(reason.clone().into());
        }
        e.goal.send_replace(Goal::Started);
        Ok(())
    }

    /// Stops the unit; does not wait for it to be stopped.
    pub fn stop(&self, name: &str) -> Result<(), Error> {
        let units = self.shared.lock();
        let e = units
            .get(name)
            .ok_or_else(|| Error::NotLoaded(name.into()))?;
        e.goal.send_replace(Goal::Stopped);
        Ok(())
    }

    /// Stops the unit, waits until it is stopped and forgets it. The file stays if the unit
    /// did not stop in time, so that it can still be stopped later.
    pub async fn unload(&self, name: &str) -> Result<(), Error> {
        let stop_timeout = {
            let units = self.shared.lock();
            let Some(e) = units.get(name) else {
                return Ok(());
            };
            e.goal.send_replace(Goal::Stopped);
            let t = e
                .config
                .as_ref()
                .ok()
                .and_then(|c| c.policy.timeout_stop)
                .unwrap_or(config::DEFAULT_TIMEOUT);
            // ExecStop, SIGTERM, SIGKILL and ExecStopPost may each take the stop timeout.
            t.saturating_mul(4) + Duration::from_secs(5)
        };
        let deadline = tokio::time::Instant::now() + stop_timeout;
        loop {
            let status = match self.status(name) {
                Some(s) if !s.active().is_stopped() => s,
                _ => break,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::StopTimeout {
                    unit: name.into(),
                    timeout: stop_timeout,
                    status,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let removed = self.shared.lock().remove(name);
        if let Some(task) = removed.and_then(|e| e.task) {
            task.abort();
        }
        let path = self.shared.runtime_dir.join("units").join(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::RemoveUnitFile {
                    unit: name.into(),
                    path,
                    source,
                })
            }
        }
        self.shared.remove_record(name).await;
        self.shared.notify(name, None);
        Ok(())
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

fn spawn_supervisor(
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
            _ = supervisor::supervise(shared, name, goal_rx, goal_tx, adopted) => {}
        }
    })
}
