//! One fleetd process of a [`crate::Cluster`]: a loopback machine with its own id, state dir,
//! units dir, API socket and TCP port.

use crate::cleanup;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which unit manager the fleetds use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnitManagerKind {
    /// fleetd's own process supervisor: works anywhere, units are plain process sessions.
    #[default]
    Process,
    /// systemd over D-Bus: needs a host (or container) booted with systemd.
    Systemd,
}

impl UnitManagerKind {
    fn flag(self) -> &'static str {
        match self {
            UnitManagerKind::Process => "process",
            UnitManagerKind::Systemd => "systemd",
        }
    }
}

/// What every machine of a cluster shares.
#[derive(Debug)]
pub(crate) struct Launch {
    pub binary: PathBuf,
    pub etcd_servers: Vec<String>,
    pub key_prefix: String,
    pub agent_ttl: Duration,
    pub engine_interval: Duration,
    pub unit_manager: UnitManagerKind,
    pub extra_args: Vec<String>,
}

/// How long a fleetd may take to answer its API after a start.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a fleetd may take to exit after SIGTERM/SIGUSR2 (a leave stops every unit).
const EXIT_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// A start whose API port was taken meanwhile (by another test) is retried on a fresh port.
const START_ATTEMPTS: usize = 3;

/// A fleetd of the cluster. Methods take `&self` (the process handle sits behind a lock), so
/// `cluster.machine(1).kill()` reads as it should.
#[derive(Debug)]
pub struct Machine {
    pub index: usize,
    /// The machine id (32 hex digits).
    pub id: String,
    /// `--public-ip`: `127.0.0.<index + 1>`.
    pub ip: String,
    /// Configured metadata (`host=m<index>` plus the spec's).
    pub metadata: BTreeMap<String, String>,
    dir: PathBuf,
    launch: Arc<Launch>,
    child: Mutex<Option<Child>>,
    api_port: Mutex<u16>,
    paused: AtomicBool,
    starts: Mutex<usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoned only if a test panicked while holding it; the value is still usable for cleanup.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr().context("reading the bound port")?.port())
}

impl Machine {
    pub(crate) fn new(
        index: usize,
        id: String,
        metadata: BTreeMap<String, String>,
        dir: PathBuf,
        launch: Arc<Launch>,
    ) -> Result<Machine> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Machine {
            index,
            id,
            ip: format!("127.0.0.{}", index + 1),
            metadata,
            dir,
            launch,
            child: Mutex::new(None),
            api_port: Mutex::new(0),
            paused: AtomicBool::new(false),
            starts: Mutex::new(0),
        })
    }

    /// The machine's directory: `state/`, `units/`, `fleet.sock`, `fleetd.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// fleetd's `units_directory`.
    pub fn units_dir(&self) -> PathBuf {
        self.dir.join("units")
    }

    /// Where the process manager keeps its run records and unit files.
    pub fn process_runtime_dir(&self) -> PathBuf {
        self.units_dir().join("process")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("fleetd.log")
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("fleet.sock")
    }

    /// `unix://<dir>/fleet.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// `http://127.0.0.1:<port>` (the port changes only if a start had to retry).
    pub fn tcp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", *lock(&self.api_port))
    }

    /// An API client of this machine's unix socket.
    pub fn client(&self) -> api::Client {
        api::Client::new(
            &self.endpoint(),
            api::ClientOptions {
                request_timeout: Duration::from_secs(5),
            },
        )
        // The endpoint is built from a non-empty path above, which Client::new accepts.
        .unwrap_or_else(|e| panic!("client of {}: {e}", self.endpoint()))
    }

    /// `GET /metrics` of this fleetd, over its unix socket: the body, in Prometheus' text
    /// format. By hand: the API client speaks only fleet's JSON resources.
    pub async fn metrics(&self) -> Result<String> {
        let path = self.socket_path();
        let s = tokio::net::UnixStream::connect(&path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        crate::metrics::get(s, &format!("machine {}", self.index)).await
    }

    /// PID of the running fleetd, if any.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// Runs (possibly paused by [`Self::pause`]).
    pub fn is_running(&self) -> bool {
        match lock(&self.child).as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs and is not paused: its API can answer.
    pub fn is_serving(&self) -> bool {
        self.is_running() && !self.paused.load(Ordering::SeqCst)
    }

    fn args(&self, port: u16) -> Vec<String> {
        let l = &self.launch;
        let metadata = self
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--etcd-servers".to_string(),
            l.etcd_servers.join(","),
            "--etcd-key-prefix".into(),
            l.key_prefix.clone(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--units-directory".into(),
            self.units_dir().display().to_string(),
            "--machine-id".into(),
            self.id.clone(),
            "--api-listen".into(),
            format!("{},tcp://127.0.0.1:{port}", self.endpoint()),
            "--agent-ttl".into(),
            format!("{}ms", l.agent_ttl.as_millis()),
            "--engine-reconcile-interval".into(),
            format!("{}", l.engine_interval.as_secs_f64()),
            "--public-ip".into(),
            self.ip.clone(),
            "--unit-manager".into(),
            l.unit_manager.flag().into(),
        ];
        if !metadata.is_empty() {
            args.push("--metadata".into());
            args.push(metadata);
        }
        args.extend(l.extra_args.iter().cloned());
        args
    }

    /// The command line that starts this machine (printed by `fleet-cluster up`).
    pub fn command_line(&self) -> String {
        let port = *lock(&self.api_port);
        let mut parts = vec![self.launch.binary.display().to_string()];
        parts.extend(self.args(port));
        parts.join(" ")
    }

    fn spawn(&self, port: u16) -> Result<()> {
        let mut guard = lock(&self.child);
        if let Some(c) = guard.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                bail!("machine {} is already running", self.index);
            }
        }
        let n = {
            let mut starts = lock(&self.starts);
            *starts += 1;
            *starts
        };
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let _ = writeln!(
            log,
            "===== fleet-cluster: start {n} of machine {} =====",
            self.index
        );
        let log2 = log.try_clone().context("duplicating the log handle")?;
        // A socket left by a SIGKILLed fleetd would make the bind fail.
        let _ = std::fs::remove_file(self.socket_path());
        let child = Command::new(&self.launch.binary)
            .args(self.args(port))
            .env(
                "RUST_LOG",
                std::env::var("FLEET_CLUSTER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("starting {}", self.launch.binary.display()))?;
        *guard = Some(child);
        *lock(&self.api_port) = port;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts fleetd and waits until its API answers (that is, the machine is registered).
    pub async fn start(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            self.spawn(free_port()?)?;
            match self.wait_serving().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let port_taken = self.log_tail(5).contains("API listeners");
                    last = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("machine {} did not start", self.index)))
    }

    async fn wait_serving(&self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let client = self.client();
        loop {
            if let Some(status) = self.exited()? {
                bail!(
                    "fleetd of machine {} exited during start ({status}); log tail:\n{}",
                    self.index,
                    self.log_tail(20)
                );
            }
            if client.machines().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "fleetd of machine {} did not serve its API within {START_DEADLINE:?}; log tail:\n{}",
                    self.index,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The exit status if fleetd has exited (and reaps it).
    fn exited(&self) -> Result<Option<std::process::ExitStatus>> {
        let mut guard = lock(&self.child);
        match guard.as_mut() {
            Some(c) => match c.try_wait().context("waiting for fleetd")? {
                Some(status) => {
                    *guard = None;
                    Ok(Some(status))
                }
                None => Ok(None),
            },
            None => Ok(Some(std::os::unix::process::ExitStatusExt::from_raw(0))),
        }
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("machine {} is not running", self.index))?;
        kill(Pid::from_raw(pid as i32), sig)
            .with_context(|| format!("sending {sig} to fleetd of machine {}", self.index))
    }

    /// SIGKILL: the machine crashes. Its units keep running (they are their own sessions) until
    /// the harness cleans up. No-op if it does not run.
    pub fn kill(&self) {
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// SIGSTOP: the machine is cut off (its lease runs out, its units keep running, it sees
    /// nothing), the loopback stand-in for a network partition.
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// SIGCONT: the partition heals.
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn wait_exit(&self, what: &str) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + EXIT_DEADLINE;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "fleetd of machine {} did not exit within {EXIT_DEADLINE:?} after {what}; killed it; log tail:\n{}",
                    self.index,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM and wait: the machine leaves the cluster (units stopped, presence removed).
    pub async fn stop(&self) -> Result<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit("SIGTERM").await
    }

    /// SIGUSR2, wait for the exit, start again on the same state dir: an upgrade in place.
    pub async fn upgrade_restart(&self) -> Result<()> {
        self.signal(Signal::SIGUSR2)?;
        let status = self.wait_exit("SIGUSR2").await?;
        if !status.success() {
            bail!(
                "fleetd of machine {} exited with {status} on SIGUSR2; log tail:\n{}",
                self.index,
                self.log_tail(20)
            );
        }
        self.start().await
    }

    /// SIGKILL and start again on the same state dir: a crash and a supervisor restart.
    pub async fn restart(&self) -> Result<()> {
        self.kill();
        self.start().await
    }

    /// Main pids of the units this machine's process manager runs, by unit name.
    pub fn unit_pids(&self) -> BTreeMap<String, i32> {
        cleanup::unit_main_pids(&self.process_runtime_dir())
    }

    /// The last `lines` lines of this machine's fleetd log (all starts, marked).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}
