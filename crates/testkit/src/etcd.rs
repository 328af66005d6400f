//! A real etcd for tests: one member or three, on free loopback ports, in its own temp dir.
//!
//! ```no_run
//! let mut cluster = testkit::etcd::EtcdCluster::start(3)?;
//! let endpoints = cluster.endpoints(); // ["http://127.0.0.1:PORT", ...]
//! cluster.kill_member(0)?;             // SIGKILL, data dir kept
//! cluster.restart_member(0)?;          // same ports and data dir, waits until healthy
//! # anyhow::Ok(())
//! ```
//!
//! Every process is killed by PID and the temp dir removed when the cluster is dropped, also when
//! the test panics. etcd runs with its default limits (notably `--max-txn-ops` 128) so that tests
//! see what production sees.
//!
//! The calls block (they spawn processes and poll `/health`). From an async test, call them
//! before the runtime is busy, or wrap them in `tokio::task::block_in_place` on a
//! multi-threaded runtime so that other tasks keep running while etcd starts.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The etcd binary: `$ETCD_BIN` if set, else `etcd` on `PATH` (Debian's `etcd-server`).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// How long a member may take to become healthy before the start counts as failed.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);
/// How often `/health` is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Fresh ports are tried this many times when a start fails (another test may have taken a port
/// between our probe and etcd's bind).
const START_ATTEMPTS: usize = 3;

/// One etcd process of an [`EtcdCluster`].
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the process (by its PID) and reaps it. No-op if not running.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this PID; an already-exited child is fine.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reaping etcd member {}", self.name))?;
        }
        Ok(())
    }

    /// The last `lines` lines of this member's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A running etcd cluster owned by a test.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    // Dropped after the members (fields drop in order) so processes die before their dir goes.
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members (1 or 3 are the useful sizes) and waits until every one is healthy.
    pub fn start(size: usize) -> Result<EtcdCluster> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(size) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// One member.
    pub fn single() -> Result<EtcdCluster> {
        Self::start(1)
    }

    /// Three members.
    pub fn three() -> Result<EtcdCluster> {
        Self::start(3)
    }

    fn try_start(size: usize) -> Result<EtcdCluster> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::Builder::new()
            .prefix("fleet-etcd-")
            .tempdir()
            .context("creating a temp dir for etcd")?;
        let token = format!(
            "fleet-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Hold every probe listener until all ports are chosen so we never pick one twice.
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for i in 0..size {
            let (client_port, l1) = free_port()?;
            let (peer_port, l2) = free_port()?;
            listeners.push(l1);
            listeners.push(l2);
            let name = format!("m{i}");
            members.push(EtcdMember {
                data_dir: dir.path().join(format!("{name}.etcd")),
                log_path: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                child: None,
            });
        }
        drop(listeners);
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Client URLs of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// The cluster's temp dir (data dirs and logs live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs member `i`; its data dir and ports are kept for [`Self::restart_member`].
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        self.member_mut(i)?.kill()
    }

    /// Starts member `i` again with the same ports and data dir (killing it first if it runs)
    /// and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.member_mut(i)?.kill()?;
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Freezes member `i` with SIGSTOP: its connections stay open but nothing answers, as with a
    /// hung machine or a silent network partition. [`Self::resume_member`] thaws it.
    pub fn pause_member(&mut self, i: usize) -> Result<()> {
        self.signal_member(i, nix::sys::signal::Signal::SIGSTOP)
    }

    /// Thaws a member frozen by [`Self::pause_member`] (SIGCONT).
    pub fn resume_member(&mut self, i: usize) -> Result<()> {
        self.signal_member(i, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal_member(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Result<()> {
        let m = self.member_mut(i)?;
        let pid = m
            .pid()
            .with_context(|| format!("etcd member {} is not running", m.name))?;
        let pid = i32::try_from(pid).context("PID out of range")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .with_context(|| format!("sending {sig} to etcd member {}", m.name))
    }

    /// SIGKILLs every member.
    pub fn stop_all(&mut self) -> Result<()> {
        for m in &mut self.members {
            m.kill()?;
        }
        Ok(())
    }

    /// Starts every member again (same ports and data dirs) and waits until all are healthy.
    pub fn restart_all(&mut self) -> Result<()> {
        self.stop_all()?;
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i)?;
        }
        Ok(())
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut EtcdMember> {
        let n = self.members.len();
        self.members
            .get_mut(i)
            .with_context(|| format!("no etcd member {i}: the cluster has {n}"))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial_cluster = self.initial_cluster.clone();
        let token = self.token.clone();
        let m = self.member_mut(i)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .with_context(|| format!("opening {}", m.log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the etcd log handle")?;
        let client = m.endpoint();
        let peer = m.peer_url();
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install Debian's etcd-server or set ETCD_BIN)",
                    etcd_binary().display()
                )
            })?;
        m.child = Some(child);
        Ok(())
    }

    /// Polls member `i`'s `/health` until it reports a leader; on failure the error carries the
    /// tail of its log.
    fn wait_healthy(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        let m = self.member_mut(i)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], m.client_port));
        loop {
            if let Some(child) = &mut m.child {
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    bail!(
                        "etcd member {} exited during startup ({status}); log tail:\n{}",
                        m.name,
                        m.log_tail(40)
                    );
                }
            } else {
                bail!("etcd member {} is not running", m.name);
            }
            if health_ok(addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = m.log_tail(40);
                let name = m.name.clone();
                let _ = m.kill();
                bail!(
                    "etcd member {name} at {addr} not healthy after {HEALTHY_DEADLINE:?}; log tail:\n{tail}"
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
        }
    }
}

fn free_port() -> Result<(u16, TcpListener)> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    let port = l.local_addr().context("reading the bound port")?.port();
    Ok((port, l))
}

/// `GET /health` over plain HTTP/1.0; true when etcd answers `"health":"true"`.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_member_starts_restarts_and_cleans_up() {
        let mut c = EtcdCluster::single().unwrap();
        let dir = c.dir().to_path_buf();
        let addr = SocketAddr::from(([127, 0, 0, 1], c.member(0).client_port));
        assert!(health_ok(addr));
        let pid = c.member(0).pid().unwrap();
        c.kill_member(0).unwrap();
        assert!(!health_ok(addr));
        c.restart_member(0).unwrap();
        assert!(health_ok(addr));
        assert_ne!(c.member(0).pid().unwrap(), pid);
        drop(c);
        assert!(!dir.exists());
        assert!(!health_ok(addr));
    }

    #[test]
    fn three_members_survive_losing_one() {
        let mut c = EtcdCluster::three().unwrap();
        assert_eq!(c.endpoints().len(), 3);
        c.kill_member(1).unwrap();
        // The remaining two still form a quorum.
        let addr = SocketAddr::from(([127, 0, 0, 1], c.member(0).client_port));
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        while !health_ok(addr) {
            assert!(Instant::now() < deadline, "{}", c.member(0).log_tail(20));
            std::thread::sleep(POLL_INTERVAL);
        }
        c.restart_member(1).unwrap();
    }
}
