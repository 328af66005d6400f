//! The one fleetd a load run talks to: the built binary, as an operator runs it, with the
//! process supervisor, in a temp dir of its own, killed by PID (with every unit process it
//! started) when dropped, also when the run fails or panics.

use super::RegistryKind;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long fleetd may take to serve its API after a start (a debug build on a busy machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long fleetd may take to leave on SIGTERM: it stops every launched unit first.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

pub struct Fleetd {
    child: Option<Child>,
    endpoint: String,
    /// In the units' environment (`FLEET_CLUSTER_TAG`), so that cleanup finds every process
    /// they started even without a run record.
    tag: String,
    // Dropped last: the processes die before their directory goes.
    dir: tempfile::TempDir,
}

impl Fleetd {
    /// Starts `binary` on `registry` (`etcd` names the etcd endpoint for [`RegistryKind::Etcd`]).
    pub fn start(binary: &Path, registry: RegistryKind, etcd: Option<&str>) -> Result<Fleetd> {
        let dir = tempfile::Builder::new()
            .prefix("fleet-load-")
            .tempdir()
            .context("creating fleetd's temp dir")?;
        let tag = format!("load{:x}{:08x}", std::process::id(), fastrand::u32(..));
        let machine_id = format!("{:032x}", fastrand::u128(..));
        let socket = dir.path().join("fleet.sock");
        let endpoint = format!("unix://{}", socket.display());
        let mut args: Vec<String> = vec![
            "--registry".into(),
            registry.as_str().into(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--units-directory".into(),
            dir.path().join("units").display().to_string(),
            "--machine-id".into(),
            machine_id,
            "--api-listen".into(),
            endpoint.clone(),
            "--public-ip".into(),
            "127.0.0.1".into(),
            "--unit-manager".into(),
            "process".into(),
        ];
        match (registry, etcd) {
            (RegistryKind::Etcd, Some(endpoint)) => args.extend([
                "--etcd-servers".into(),
                endpoint.to_string(),
                "--etcd-key-prefix".into(),
                format!("/fleet-load-{tag}/"),
            ]),
            (RegistryKind::Etcd, None) => bail!("a load run on etcd needs an etcd endpoint"),
            (RegistryKind::Embedded, _) => {}
        }
        let log_path = dir.path().join("fleetd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the log handle")?;
        let mut cmd = Command::new(binary);
        cmd.args(&args)
            // Warnings and errors only: a request log of a minute of load would fill the disk,
            // and what the run checks in the log is errors and panics.
            .env(
                "RUST_LOG",
                std::env::var("FLEET_LOAD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = testkit::etcd::spawn_dying_with_us(cmd)
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Fleetd {
            child: Some(child),
            endpoint,
            tag,
            dir,
        })
    }

    /// `unix://<dir>/fleet.sock`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if fleetd has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        // An error asking counts as running: the API checks will tell.
        self.child.as_mut()?.try_wait().unwrap_or_default()
    }

    /// Waits until the API answers and fleetd's machine is registered (before that every
    /// request gets 503).
    pub async fn wait_serving(&mut self) -> Result<()> {
        let client = api::Client::new(&self.endpoint, api::ClientOptions::default())
            .with_context(|| format!("a client of {}", self.endpoint))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "fleetd exited during start ({status}); log tail:\n{}",
                    self.log_tail(20)
                );
            }
            if client.machines().await.is_ok_and(|m| !m.is_empty()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "fleetd did not serve its API within {START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM and wait: the machine leaves and stops its units. SIGKILL after
    /// [`STOP_DEADLINE`].
    pub async fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.pid().context("fleetd is not running")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).context("sending SIGTERM to fleetd")?;
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "fleetd did not exit within {STOP_DEADLINE:?} of SIGTERM; killed it; log tail:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("fleetd.log")
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The tag the units of this run carry in their environment.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        self.kill();
        // The units run in their own sessions and outlive a killed fleetd.
        cluster::cleanup::kill_recorded_units(&self.dir.path().join("units").join("process"));
        cluster::cleanup::kill_tagged(&self.tag, self.dir.path());
    }
}
