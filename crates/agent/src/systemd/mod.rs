//! systemd over D-Bus: fleet's flow (write the unit file, link it as a runtime unit, enable it
//! if it has an `[Install]` section, one daemon-reload per batch, start/stop with mode
//! `replace`), with unit states read when systemd signals a change instead of by polling.
//!
//! ```no_run
//! # async fn demo(file: unit::UnitFile) -> anyhow::Result<()> {
//! use agent::systemd::{SystemdManager, SystemdOptions};
//! use agent::UnitManager;
//!
//! let manager = SystemdManager::connect(SystemdOptions::default()).await?;
//! let mut changes = manager.subscribe();
//! manager.load("hello.service", &file).await?;
//! manager.reload().await?;
//! manager.start("hello.service").await?;
//! while let Ok(change) = changes.recv().await {
//!     println!("{} is now {:?}", change.name, change.state);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A manager on the host can drive a systemd in a container (tests boot one under
//! systemd-nspawn): give the container's bus address and the container root as seen from the
//! host (`/proc/<pid1>/root`) as [`SystemdOptions::systemd_root`].

pub mod dbus;
mod jobs;
mod watch;

use anyhow::Context as _;
use async_trait::async_trait;
use registry::SystemdState;
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use tokio::sync::{broadcast, mpsc, watch as signal, Mutex, Semaphore};
use unit::{UnitFile, UnitHash};

use crate::manager::{Refused, StateChange, UnitManager};
use dbus::{method_error, SystemdManagerProxy};
use jobs::JobWindow;

/// fleet's default `units_directory`.
pub const DEFAULT_UNITS_DIRECTORY: &str = "/run/fleet/units/";

/// How to reach systemd and where unit files go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemdOptions {
    /// Where unit files are written, as systemd sees the file system (fleet's
    /// `units_directory`).
    pub units_directory: PathBuf,
    /// Talk to the per-user systemd on the session bus (fleet's `systemd_user`).
    pub user: bool,
    /// An explicit D-Bus address (e.g. `unix:path=/proc/<pid1>/root/run/dbus/system_bus_socket`)
    /// instead of the system or session bus.
    pub bus_address: Option<String>,
    /// Where systemd's root is seen from this process, when systemd runs in a container:
    /// files are written under this prefix, while the paths given to systemd omit it.
    pub systemd_root: Option<PathBuf>,
}

impl Default for SystemdOptions {
    fn default() -> Self {
        SystemdOptions {
            units_directory: PathBuf::from(DEFAULT_UNITS_DIRECTORY),
            user: false,
            bus_address: None,
            systemd_root: None,
        }
    }
}

impl SystemdOptions {
    /// The units directory as this process reaches it.
    pub fn host_units_directory(&self) -> PathBuf {
        match &self.systemd_root {
            Some(root) => root.join(strip_root(&self.units_directory)),
            None => self.units_directory.clone(),
        }
    }

    /// The path given to systemd for the file of `name`.
    fn systemd_path(&self, name: &str) -> PathBuf {
        self.units_directory.join(name)
    }
}

/// Links `target` as the runtime unit `name` (`/run/systemd/system/<name>`), as
/// `LinkUnitFiles` with `runtime` and `force` does, without a call to systemd: in a burst of
/// loads, every such call is time systemd then lacks for the starts. The link is replaced
/// atomically, so systemd never sees the name missing.
fn link_runtime_unit(opts: &SystemdOptions, name: &str, target: &str) -> anyhow::Result<()> {
    let dir = match &opts.systemd_root {
        Some(root) => root.join("run/systemd/system"),
        None => PathBuf::from("/run/systemd/system"),
    };
    let link = dir.join(name);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    let temp = dir.join(format!(".#{name}.fleet-link"));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)
        .and_then(|()| std::fs::rename(&temp, &link))
        .with_context(|| format!("cannot link {} as {}", target, link.display()))
}

fn strip_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// A D-Bus connection and the manager proxy on it.
#[derive(Clone)]
struct Bus {
    conn: zbus::Connection,
    manager: SystemdManagerProxy<'static>,
}

/// What the manager and its signal watcher share.
struct Shared {
    opts: SystemdOptions,
    /// The current connection; replaced when it is found closed.
    bus: Mutex<Option<Bus>>,
    /// Units loaded through this manager, with the state last sent to subscribers.
    watched: StdMutex<HashMap<String, Option<SystemdState>>>,
    changes: broadcast::Sender<StateChange>,
    /// What the watcher should read again.
    refresh: mpsc::UnboundedSender<Ask>,
    /// Bounds our method calls in flight (see [`jobs`]).
    calls: Semaphore,
    /// Bounds the start and stop jobs systemd holds for us (see [`jobs`]).
    jobs: JobWindow,
    /// True once the machine is shutting down.
    stopping: signal::Sender<bool>,
}

/// A request to the watcher.
#[derive(Debug)]
enum Ask {
    /// Re-read the states of these units (after a reload, a failed action).
    States(Vec<String>),
    /// Re-read everything: every watched unit's state, the jobs systemd holds, whether the
    /// machine is stopping (after a call failed in a way that may have cost signals).
    Resync,
}

impl Shared {
    /// The live connection, connecting again if the last one closed.
    async fn bus(&self) -> anyhow::Result<Bus> {
        let mut guard = self.bus.lock().await;
        if let Some(bus) = guard.as_ref() {
            if !bus.conn.is_closed() {
                return Ok(bus.clone());
            }
            tracing::warn!("the D-Bus connection to systemd closed; connecting again");
        }
        let bus = connect_bus(&self.opts).await?;
        *guard = Some(bus.clone());
        Ok(bus)
    }

    fn watched_names(&self) -> Vec<String> {
        lock(&self.watched).keys().cloned().collect()
    }

    fn ask(&self, ask: Ask) {
        // The watcher only stops when the manager is dropped, so a send error means nobody
        // listens any more.
        let _ = self.refresh.send(ask);
    }

    /// Runs one method call, waiting for a free place among the calls in flight.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = zbus::Result<T>>,
    ) -> zbus::Result<T> {
        // Never closed; were it closed, calling without a place is still better than failing.
        let _place = self.calls.acquire().await.ok();
        call.await
    }

    /// Queues a start or stop job for `name`, holding one of the job slots until systemd
    /// removes the job. A start while the machine shuts down is refused without asking.
    async fn job(&self, start: bool, name: &str) -> Result<(), JobError> {
        let method = if start { "StartUnit" } else { "StopUnit" };
        if start && *self.stopping.borrow() {
            return Err(JobError::Refused(Refused(format!(
                "not starting {name}: the machine is shutting down"
            ))));
        }
        let slot = self.jobs.slot().await;
        let manager = self.bus().await.map_err(JobError::Other)?.manager;
        let result = if start {
            self.call(manager.start_unit(name, "replace")).await
        } else {
            self.call(manager.stop_unit(name, "replace")).await
        };
        match result {
            Ok(job) => {
                self.jobs.queued(job.to_string(), slot);
                Ok(())
            }
            Err(e) => {
                // What systemd runs is read again: a lost reply may hide a job that was queued,
                // a refusal may mean the machine is going down. A unit systemd does not know
                // (stopping what was never loaded) tells nothing new.
                if !dbus::is_no_such_unit(&e) {
                    self.ask(Ask::Resync);
                }
                Err(JobError::Call(method, e))
            }
        }
    }

    /// Re-reads the states of `names` (those still watched) in one call and sends the changes.
    async fn refresh(&self, bus: &Bus, names: Vec<String>) -> anyhow::Result<usize> {
        let names: Vec<String> = {
            let watched = lock(&self.watched);
            names
                .into_iter()
                .filter(|n| watched.contains_key(n))
                .collect()
        };
        if names.is_empty() {
            return Ok(0);
        }
        // Without a place among the calls in flight: the watcher reads one thing at a time, so
        // this adds at most one call to `MAX_CALLS` (still far under the bus's 128 replies),
        // and a burst of starts queued for places must not hold back the reads that report
        // them: behind a few hundred `StartUnit` calls, the states of units systemd already ran
        // reached the registry seconds late.
        let asked = std::time::Instant::now();
        let states = list_states(&bus.manager, &names).await?;
        tracing::debug!(units = names.len(), took = ?asked.elapsed(), "read unit states");
        let mut watched = lock(&self.watched);
        let mut changed = 0;
        for (name, state) in states {
            // A unit unloaded while the call was in flight stays forgotten.
            if let Some(last) = watched.get_mut(&name) {
                if *last != state {
                    *last = state.clone();
                    changed += 1;
                    // No subscriber is not an error: states are also read with `states`.
                    let _ = self.changes.send(StateChange { name, state });
                }
            }
        }
        Ok(changed)
    }

    /// Reads everything again: whether the machine is stopping, the jobs systemd holds (to
    /// free the slots of jobs whose removal was not seen) and every watched unit's state.
    /// Returns how many states differed from the last ones sent.
    async fn resync(&self, bus: &Bus) -> anyhow::Result<usize> {
        // No place among the calls in flight, as for `refresh`: one call at a time.
        let state = bus.manager.system_state().await;
        let jobs = bus.manager.list_jobs().await;
        let state = state.map_err(|e| method_error("Get SystemState", "the manager", e))?;
        if dbus::is_stopping(&state) {
            self.machine_stopping(&format!("systemd's SystemState is {state}"));
        }
        let jobs = jobs.map_err(|e| method_error("ListJobs", "the manager", e))?;
        let live: std::collections::HashSet<String> =
            jobs.into_iter().map(|j| j.4.to_string()).collect();
        let freed = self.jobs.keep_only(&live);
        if freed > 0 {
            tracing::info!(
                freed,
                held = self.jobs.in_flight(),
                "freed the slots of jobs systemd no longer holds"
            );
        }
        self.refresh(bus, self.watched_names()).await
    }

    /// The machine is going down: from now on nothing is started.
    fn machine_stopping(&self, why: &str) {
        if !*self.stopping.borrow() {
            tracing::warn!("the machine is shutting down ({why}): starting no more units");
            self.stopping.send_replace(true);
        }
    }
}

/// Why a start or stop did not happen.
enum JobError {
    Refused(Refused),
    Call(&'static str, zbus::Error),
    Other(anyhow::Error),
}

impl JobError {
    fn into_anyhow(self, unit: &str) -> anyhow::Error {
        match self {
            JobError::Refused(r) => anyhow::Error::new(r),
            JobError::Call(method, e) => method_error(method, unit, e),
            JobError::Other(e) => e,
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map half-updated (single inserts and
    // removes), so a poisoned lock is still good to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a call to systemd may take: long enough for a daemon-reload of many units, short
/// enough that a hung systemd shows as an error instead of a stuck agent.
const METHOD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn connect_bus(opts: &SystemdOptions) -> anyhow::Result<Bus> {
    use zbus::connection::Builder;
    let (builder, which) = match (&opts.bus_address, opts.user) {
        (Some(address), _) => (Builder::address(address.as_str()), address.as_str()),
        (None, true) => (Builder::session(), "the session bus"),
        (None, false) => (Builder::system(), "the system bus"),
    };
    let conn = builder
        .method_timeout(METHOD_TIMEOUT)
        .build()
        .await
        .with_context(|| {
            format!("cannot connect to systemd through {which}: is systemd running with D-Bus?")
        })?;
    let manager = SystemdManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .context("cannot make a proxy for systemd's manager object")?;
    Ok(Bus { conn, manager })
}

/// The states of `names` in one `ListUnitsByNames` call.
async fn list_states(
    manager: &SystemdManagerProxy<'_>,
    names: &[String],
) -> anyhow::Result<Vec<(String, Option<SystemdState>)>> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows = manager
        .list_units_by_names(&refs)
        .await
        .map_err(|e| method_error("ListUnitsByNames", &names.join(" "), e))?;
    let mut found: HashMap<String, SystemdState> = rows.iter().map(dbus::state_of).collect();
    Ok(names.iter().map(|n| (n.clone(), found.remove(n))).collect())
}

/// The systemd unit manager. Cheap to share behind an `Arc`; dropping it stops its signal
/// watcher.
///
/// `states` reports what systemd says of every name it is asked about, as fleet did: a name
/// systemd has no file for is `not-found`/`inactive`/`dead`, not `None`. `subscribe` reports
/// the units loaded through this manager (and those found in the units directory at
/// `connect`), and `None` once a unit is unloaded.
pub struct SystemdManager {
    shared: Arc<Shared>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for SystemdManager {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl SystemdManager {
    /// Connects to systemd, adopts the unit files already in the units directory (a restarted
    /// agent's units) and starts watching their states.
    pub async fn connect(opts: SystemdOptions) -> anyhow::Result<SystemdManager> {
        let bus = connect_bus(&opts).await?;
        let (changes, _) = broadcast::channel(4096);
        let (refresh, refresh_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            opts,
            bus: Mutex::new(Some(bus)),
            watched: StdMutex::new(HashMap::new()),
            changes,
            refresh,
            calls: Semaphore::new(jobs::MAX_CALLS),
            jobs: JobWindow::new(jobs::MAX_JOBS),
            stopping: signal::channel(false).0,
        });
        {
            let adopted = read_units(&shared.opts.host_units_directory())?;
            let mut watched = lock(&shared.watched);
            for (name, _) in adopted {
                watched.insert(name, None);
            }
        }
        let ready = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(watch::run(shared.clone(), refresh_rx, ready.0));
        // Changes are only reported once the watcher listens: wait for it (or its first
        // failure) so that a state change right after `connect` is not missed.
        let _ = ready.1.await;
        Ok(SystemdManager { shared, watcher })
    }

    /// The options this manager was made with.
    pub fn options(&self) -> &SystemdOptions {
        &self.shared.opts
    }

    async fn manager(&self) -> anyhow::Result<SystemdManagerProxy<'static>> {
        Ok(self.shared.bus().await?.manager)
    }
}

/// Unit files in `dir` (files with a unit type suffix) with the hash of each.
fn read_units(dir: &Path) -> anyhow::Result<Vec<(String, UnitHash)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list units directory {}", dir.display()))
        }
    };
    let mut units = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot list units directory {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !dbus::has_unit_suffix(&name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        // The files hold the normalized text we wrote, so hashing the bytes gives the unit
        // hash without parsing.
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read unit file {}", path.display()))?;
        units.push((name, UnitHash::of(&bytes)));
    }
    units.sort();
    Ok(units)
}

/// Writes `text` to `dir/name` (0644) through a temporary file, so systemd never reads half a
/// file; creates `dir` (0755) if needed.
/// The path of unit `name`'s file in `dir`, refused unless the name is a single plain file
/// name: unit names come from the registry, which anything with access to etcd can write, and
/// `../x.service` must never become a path outside `units_directory`.
fn unit_file_path(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let mut parts = Path::new(name).components();
    anyhow::ensure!(
        matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        ),
        "invalid unit name {name:?}: not a plain file name in the units directory"
    );
    Ok(dir.join(name))
}

fn write_unit_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = unit_file_path(dir, name)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create units directory {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        // The mode given to open is subject to the umask; fleet's files are 0644.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write unit file {}", path.display()))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        dbus::has_unit_suffix(name) && !name.contains(['/', '\0']) && !name.starts_with('.'),
        "invalid unit name {name:?}: want a file name ending in a unit type such as .service"
    );
    Ok(())
}

#[async_trait]
impl UnitManager for SystemdManager {
    async fn load(&self, name: &str, file: &UnitFile) -> anyhow::Result<()> {
        check_name(name)?;
        let opts = &self.shared.opts;
        write_unit_file(&opts.host_units_directory(), name, &file.serialize())?;
        lock(&self.shared.watched)
            .entry(name.to_string())
            .or_insert(None);
        let path = opts.systemd_path(name);
        let path = path.to_str().with_context(|| {
            format!(
                "unit file path {} is not UTF-8: D-Bus cannot carry it",
                path.display()
            )
        })?;
        let manager = self.manager().await?;
        let shared = &self.shared;
        if opts.user {
            shared
                .call(manager.link_unit_files(&[path], true, true))
                .await
                .map_err(|e| method_error("LinkUnitFiles", name, e))?;
        } else {
            link_runtime_unit(opts, name, path)?;
        }
        if file.has_section("Install") {
            shared
                .call(manager.enable_unit_files(&[path], true, true))
                .await
                .map_err(|e| method_error("EnableUnitFiles", name, e))?;
        }
        // No state read here: asking systemd about a unit before the batch's reload makes it
        // load that unit on its own, rebuilding its map of unit files each time, so the cost
        // of a load grows with the number of units. `reload` reads them all at once.
        Ok(())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let manager = self.manager().await?;
        let result = self.shared.call(manager.reload()).await;
        if let Err(e) = result {
            self.shared.ask(Ask::Resync);
            return Err(method_error("Reload", "the unit files", e));
        }
        self.shared.ask(Ask::States(self.shared.watched_names()));
        Ok(())
    }

    async fn start(&self, name: &str) -> anyhow::Result<()> {
        self.shared
            .job(true, name)
            .await
            .map_err(|e| e.into_anyhow(name))
    }

    async fn stop(&self, name: &str) -> anyhow::Result<()> {
        self.shared
            .job(false, name)
            .await
            .map_err(|e| e.into_anyhow(name))
    }

    async fn unload(&self, name: &str) -> anyhow::Result<()> {
        check_name(name)?;
        match self.shared.job(false, name).await {
            Ok(()) => {}
            // A unit systemd has not loaded is not running: nothing to stop.
            Err(JobError::Call(_, e)) if dbus::is_no_such_unit(&e) => {}
            // fleet keeps the file when stopping fails, so that the unit can still be stopped.
            Err(e) => return Err(e.into_anyhow(name)),
        }
        let manager = self.manager().await?;
        match self
            .shared
            .call(manager.disable_unit_files(&[name], true))
            .await
        {
            Ok(_) => {}
            // No file to disable: an earlier unload got this far, or it was never loaded.
            Err(e) if dbus::is_no_such_unit(&e) => {}
            Err(e) => return Err(method_error("DisableUnitFiles", name, e)),
        }
        match self.shared.call(manager.reset_failed_unit(name)).await {
            Ok(()) => {}
            Err(e) if dbus::is_no_such_unit(&e) => {}
            Err(e) => return Err(method_error("ResetFailedUnit", name, e)),
        }
        let path = unit_file_path(&self.shared.opts.host_units_directory(), name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove unit file {}", path.display()))
            }
        }
        if lock(&self.shared.watched).remove(name).is_some() {
            let _ = self.shared.changes.send(StateChange {
                name: name.to_string(),
                state: None,
            });
        }
        Ok(())
    }

    async fn units(&self) -> anyhow::Result<Vec<(String, UnitHash)>> {
        let dir = self.shared.opts.host_units_directory();
        tokio::task::spawn_blocking(move || read_units(&dir))
            .await
            .context("reading the units directory did not finish")?
    }

    async fn states(
        &self,
        names: &[String],
    ) -> anyhow::Result<Vec<(String, Option<SystemdState>)>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let manager = self.manager().await?;
        let _place = self.shared.calls.acquire().await.ok();
        list_states(&manager, names).await
    }

    fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.changes.subscribe()
    }

    fn machine_stopping(&self) -> Option<signal::Receiver<bool>> {
        Some(self.shared.stopping.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_never_become_paths_outside_the_units_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let units = tmp.path().join("run/fleet/units");
        for name in [
            "../escape.service",
            "../../escape.service",
            "a/../../escape.service",
            "/tmp/escape.service",
            "..service",
            ".hidden.service",
            "nul\0.service",
            "",
        ] {
            let err =
                write_unit_file(&units, name, "[Service]\nExecStart=/bin/true\n").expect_err(name);
            assert!(
                err.to_string().contains("invalid unit name"),
                "{name}: {err}"
            );
            assert!(unit_file_path(&units, name).is_err(), "{name}");
        }
        // Nothing was written anywhere: not even the units directory was made.
        let mut found = Vec::new();
        let mut dirs = vec![tmp.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p.clone());
                }
                found.push(p);
            }
        }
        assert!(found.is_empty(), "{found:?}");
        write_unit_file(&units, "ok@x.service", "[Service]\nExecStart=/bin/true\n").unwrap();
        assert!(units.join("ok@x.service").is_file());
    }

    #[test]
    fn host_paths_carry_the_container_root() {
        let opts = SystemdOptions {
            systemd_root: Some(PathBuf::from("/proc/42/root")),
            ..SystemdOptions::default()
        };
        assert_eq!(
            opts.host_units_directory(),
            Path::new("/proc/42/root/run/fleet/units")
        );
        assert_eq!(
            opts.systemd_path("a.service"),
            Path::new("/run/fleet/units/a.service")
        );
        let plain = SystemdOptions::default();
        assert_eq!(plain.host_units_directory(), Path::new("/run/fleet/units/"));
    }

    #[test]
    fn runtime_links_point_at_the_unit_file_and_replace_what_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        let opts = SystemdOptions {
            systemd_root: Some(tmp.path().to_path_buf()),
            ..SystemdOptions::default()
        };
        let target = "/run/fleet/units/a.service";
        link_runtime_unit(&opts, "a.service", target).unwrap();
        assert_eq!(
            std::fs::read_link(dir.join("a.service")).unwrap(),
            Path::new(target)
        );
        link_runtime_unit(&opts, "a.service", target).unwrap();
        std::os::unix::fs::symlink("/elsewhere/b.service", dir.join("b.service")).unwrap();
        link_runtime_unit(&opts, "b.service", "/run/fleet/units/b.service").unwrap();
        assert_eq!(
            std::fs::read_link(dir.join("b.service")).unwrap(),
            Path::new("/run/fleet/units/b.service")
        );
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.service", "b.service"]);
        let missing = SystemdOptions {
            systemd_root: Some(tmp.path().join("nowhere")),
            ..SystemdOptions::default()
        };
        let err = link_runtime_unit(&missing, "c.service", target).unwrap_err();
        assert!(format!("{err:#}").contains("cannot link"), "{err:#}");
    }

    #[test]
    fn unit_files_are_written_0644_and_read_back_with_their_hash() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/units");
        write_unit_file(&dir, "b.service", "[Service]\nExecStart=/bin/true\n").unwrap();
        write_unit_file(&dir, "a.service", "old").unwrap();
        write_unit_file(&dir, "a.service", "[Unit]\nDescription=x\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a unit").unwrap();
        let mode = std::fs::metadata(dir.join("a.service"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let units = read_units(&dir).unwrap();
        assert_eq!(
            units,
            vec![
                (
                    "a.service".to_string(),
                    UnitHash::of(b"[Unit]\nDescription=x\n")
                ),
                (
                    "b.service".to_string(),
                    UnitHash::of(b"[Service]\nExecStart=/bin/true\n")
                ),
            ]
        );
        assert!(read_units(&tmp.path().join("missing")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_bus_that_is_not_there_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}/no-bus", tmp.path().display());
        let opts = SystemdOptions {
            bus_address: Some(address.clone()),
            ..SystemdOptions::default()
        };
        let err = match SystemdManager::connect(opts).await {
            Ok(_) => panic!("connected to {address}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&address), "{err}");
    }

    #[test]
    fn unit_names_must_be_plain_unit_file_names() {
        assert!(check_name("a.service").is_ok());
        for bad in ["../a.service", "a/b.service", ".a.service", "a", "a.txt"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
