//! Our own process supervisor, for hosts without systemd.
//!
//! ```no_run
//! # async fn example(file: unit::UnitFile) -> anyhow::Result<()> {
//! use agent::process::ProcessManager;
//! use agent::UnitManager;
//! let manager = ProcessManager::new("/var/lib/fleet".into())?;
//! manager.load("web.service", &file).await?;
//! manager.start("web.service").await?;
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
pub mod log;
pub mod spawn;
mod supervisor;
pub mod sys;

pub use log::run_helper_if_requested;

use crate::manager::{StateChange, UnitManager};
use anyhow::Context;
use async_trait::async_trait;
use config::{ServiceConfig, Specifiers};
use registry::SystemdState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use supervisor::{Adopted, Goal};
use tokio::sync::{broadcast, watch};
use unit::{UnitFile, UnitHash};

/// What `run/<name>.json` holds while a unit runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub boot_id: String,
    pub main_pid: Option<i32>,
    pub main_start_time: Option<u64>,
    #[serde(default)]
    pub sessions: Vec<i32>,
    /// `running` or `exited`.
    pub sub: String,
}

struct UnitEntry {
    hash: UnitHash,
    config: Result<Arc<ServiceConfig>, String>,
    state: SystemdState,
    reason: Option<String>,
    goal: Arc<watch::Sender<Goal>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) struct Shared {
    state_dir: PathBuf,
    runtime_dir: PathBuf,
    helper: PathBuf,
    boot_id: String,
    tx: broadcast::Sender<StateChange>,
    units: Mutex<BTreeMap<String, UnitEntry>>,
    /// Closed when the manager is dropped: every unit task ends, processes stay.
    shutdown: watch::Receiver<()>,
}

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

    pub(crate) fn config(&self, name: &str) -> Option<Result<Arc<ServiceConfig>, String>> {
        self.lock().get(name).map(|e| e.config.clone())
    }

    pub(crate) fn set_reason(&self, name: &str, reason: Option<String>) {
        if let Some(e) = self.lock().get_mut(name) {
            e.reason = reason;
        }
    }

    pub(crate) fn set_active(&self, name: &str, active: &str, sub: &str) {
        let mut units = self.lock();
        let Some(e) = units.get_mut(name) else { return };
        if e.state.active == active && e.state.sub == sub {
            return;
        }
        e.state.active = active.to_string();
        e.state.sub = sub.to_string();
        tracing::debug!(unit = name, active, sub, "unit state");
        // A send error only means nobody listens right now.
        let _ = self.tx.send(StateChange {
            name: name.to_string(),
            state: Some(e.state.clone()),
        });
    }

    pub(crate) async fn write_record(&self, name: &str, rec: &RunRecord) -> anyhow::Result<()> {
        let path = self.record_path(name);
        let tmp = path.with_extension("json.tmp");
        tokio::fs::write(&tmp, serde_json::to_vec(rec)?)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("renaming to {}", path.display()))
    }

    pub(crate) async fn remove_record(&self, name: &str) {
        let _ = tokio::fs::remove_file(self.record_path(name)).await;
    }
}

/// Runs units as plain processes; see the module documentation.
pub struct ProcessManager {
    shared: Arc<Shared>,
    _shutdown: watch::Sender<()>,
}

/// A unit name must be usable as a file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 256 || name.starts_with('.') || name.contains(['/', '\0']) {
        anyhow::bail!("invalid unit name {name:?}: want a file name such as web.service");
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

fn load_state(config: &Result<Arc<ServiceConfig>, String>) -> SystemdState {
    match config {
        Ok(_) => SystemdState {
            load: "loaded".into(),
            active: "inactive".into(),
            sub: "dead".into(),
        },
        Err(_) => SystemdState {
            load: "error".into(),
            active: "failed".into(),
            sub: "failed".into(),
        },
    }
}

/// Parses a stored unit file, turning a parser panic into an error: the file came from disk.
fn parse_stored(text: &str) -> Result<UnitFile, String> {
    match std::panic::catch_unwind(|| UnitFile::parse(text)) {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(format!("unit file does not parse: {e}")),
        Err(_) => Err("unit file does not parse (parser panicked)".into()),
    }
}

impl ProcessManager {
    /// A manager keeping all its files under `state_dir` (created if missing), re-adopting the
    /// units a previous manager left there. See [`ProcessManager::in_dirs`]. Its log forwarder is this executable, which must
    /// call [`run_helper_if_requested`] first thing in `main` (fleetd does); `FLEET_PROCESS_HELPER`
    /// names another executable. Must be called inside a tokio runtime.
    pub fn new(state_dir: PathBuf) -> anyhow::Result<ProcessManager> {
        Self::in_dirs(state_dir.clone(), state_dir)
    }

    /// A manager with its logs under `state_dir` and its unit files and run records under
    /// `runtime_dir` (see the module documentation).
    pub fn in_dirs(state_dir: PathBuf, runtime_dir: PathBuf) -> anyhow::Result<ProcessManager> {
        let helper = match std::env::var_os("FLEET_PROCESS_HELPER") {
            Some(h) => PathBuf::from(h),
            None => std::env::current_exe()
                .context("finding fleetd's own executable (the log forwarder)")?,
        };
        Self::with_dirs(state_dir, runtime_dir, helper)
    }

    /// Like [`ProcessManager::new`] with an explicit log-forwarder executable (any binary that
    /// calls [`run_helper_if_requested`], such as `fleet-process-helper`).
    pub fn with_helper(state_dir: PathBuf, helper: PathBuf) -> anyhow::Result<ProcessManager> {
        Self::with_dirs(state_dir.clone(), state_dir, helper)
    }

    /// Like [`ProcessManager::in_dirs`] with an explicit log-forwarder executable.
    pub fn with_dirs(
        state_dir: PathBuf,
        runtime_dir: PathBuf,
        helper: PathBuf,
    ) -> anyhow::Result<ProcessManager> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("ProcessManager must be created inside a tokio runtime")?;
        probe_helper(&helper)?;
        for dir in [
            runtime_dir.join("units"),
            runtime_dir.join("run"),
            state_dir.join("logs"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let (tx, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            state_dir: state_dir.clone(),
            runtime_dir: runtime_dir.clone(),
            helper,
            boot_id: sys::boot_id(),
            tx,
            units: Mutex::new(BTreeMap::new()),
            shutdown: shutdown_rx,
        });
        let units_dir = runtime_dir.join("units");
        let entries = std::fs::read_dir(&units_dir)
            .with_context(|| format!("reading {}", units_dir.display()))?;
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
            let config = parse_stored(&text).and_then(|file| {
                config::service_config(&name, &file, &specifiers(&name, &file, &shared.boot_id))
                    .map(Arc::new)
            });
            let mut state = load_state(&config);
            let mut adopted = None;
            let mut reason = config.as_ref().err().cloned();
            let rec_path = shared.record_path(&name);
            let record: Option<RunRecord> = std::fs::read(&rec_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(rec) = record {
                if rec.boot_id != shared.boot_id {
                    // The machine rebooted since: nothing of the unit runs any more.
                    let _ = std::fs::remove_file(&rec_path);
                } else if rec.sub == "exited" {
                    adopted = Some(Adopted::Exited);
                    (state.active, state.sub) = ("active".into(), "exited".into());
                } else if let (Some(pid), Some(start_time)) = (rec.main_pid, rec.main_start_time) {
                    if sys::alive(pid, start_time) {
                        adopted = Some(Adopted::Running {
                            pid,
                            start_time,
                            sessions: rec.sessions,
                        });
                        (state.active, state.sub) = ("active".into(), "running".into());
                    } else {
                        let _ = std::fs::remove_file(&rec_path);
                        (state.active, state.sub) = ("failed".into(), "failed".into());
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
                state,
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

    /// The directory this manager keeps its files in.
    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    fn state_of(&self, name: &str) -> Option<SystemdState> {
        self.shared.lock().get(name).map(|e| e.state.clone())
    }
}

fn probe_helper(helper: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new(helper)
        .args([log::HELPER_ARG, "probe"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running the process supervisor's helper {}",
                helper.display()
            )
        })?;
    if String::from_utf8_lossy(&out.stdout).trim() != log::PROBE_REPLY {
        anyhow::bail!(
            "{} does not act as the process supervisor's log forwarder: its main must call agent::process::run_helper_if_requested() first (or set FLEET_PROCESS_HELPER to fleet-process-helper)",
            helper.display()
        );
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

#[async_trait]
impl UnitManager for ProcessManager {
    fn failure_reason(&self, name: &str) -> Option<String> {
        self.reason(name)
    }

    async fn load(&self, name: &str, file: &UnitFile) -> anyhow::Result<()> {
        check_name(name)?;
        let text = file.serialize();
        let hash = UnitHash::of(text.as_bytes());
        let path = self.shared.runtime_dir.join("units").join(name);
        let tmp = self
            .shared
            .runtime_dir
            .join("units")
            .join(format!("{name}.tmp"));
        tokio::fs::write(&tmp, &text)
            .await
            .with_context(|| format!("{name}: writing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("{name}: writing {}", path.display()))?;
        let (n, f, boot) = (name.to_string(), file.clone(), self.shared.boot_id.clone());
        let config = tokio::task::spawn_blocking(move || {
            config::service_config(&n, &f, &specifiers(&n, &f, &boot)).map(Arc::new)
        })
        .await
        .unwrap_or_else(|e| Err(format!("{name}: reading the unit: {e}")));
        let mut units = self.shared.lock();
        match units.get_mut(name) {
            Some(e) => {
                e.hash = hash;
                e.reason = config.as_ref().err().cloned();
                let load = if config.is_ok() { "loaded" } else { "error" };
                if e.state.load != load {
                    e.state.load = load.into();
                    let _ = self.shared.tx.send(StateChange {
                        name: name.into(),
                        state: Some(e.state.clone()),
                    });
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
                let state = load_state(&config);
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
                let _ = self.shared.tx.send(StateChange {
                    name: name.into(),
                    state: Some(state.clone()),
                });
                let reason = config.as_ref().err().cloned();
                units.insert(
                    name.into(),
                    UnitEntry {
                        hash,
                        config,
                        state,
                        reason,
                        goal: goal_tx,
                        task,
                    },
                );
            }
        }
        Ok(())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn start(&self, name: &str) -> anyhow::Result<()> {
        let units = self.shared.lock();
        let e = units
            .get(name)
            .with_context(|| format!("{name}: not loaded; load it before starting it"))?;
        if let Err(reason) = &e.config {
            anyhow::bail!("{reason}");
        }
        e.goal.send_replace(Goal::Started);
        Ok(())
    }

    async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let units = self.shared.lock();
        let e = units
            .get(name)
            .with_context(|| format!("{name}: not loaded"))?;
        e.goal.send_replace(Goal::Stopped);
        Ok(())
    }

    async fn unload(&self, name: &str) -> anyhow::Result<()> {
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
                .and_then(|c| c.timeout_stop)
                .unwrap_or(config::DEFAULT_TIMEOUT);
            // ExecStop, SIGTERM, SIGKILL and ExecStopPost may each take the stop timeout.
            t.saturating_mul(4) + Duration::from_secs(5)
        };
        let deadline = tokio::time::Instant::now() + stop_timeout;
        loop {
            let st = self.state_of(name);
            let stopped = match &st {
                None => true,
                Some(s) => matches!(s.active.as_str(), "inactive" | "failed"),
            };
            if stopped {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{name}: did not stop within {stop_timeout:?} (state {st:?}); its file stays so that it can be stopped later"
                );
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
            Err(e) => {
                return Err(e).with_context(|| format!("{name}: removing {}", path.display()))
            }
        }
        self.shared.remove_record(name).await;
        let _ = self.shared.tx.send(StateChange {
            name: name.into(),
            state: None,
        });
        Ok(())
    }

    async fn units(&self) -> anyhow::Result<Vec<(String, UnitHash)>> {
        Ok(self
            .shared
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.hash))
            .collect())
    }

    async fn states(
        &self,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<SystemdState>)>> {
        let units = self.shared.lock();
        Ok(names
            .iter()
            .map(|n| (n.clone(), units.get(n).map(|e| e.state.clone())))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.tx.subscribe()
    }
}
