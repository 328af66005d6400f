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

/// The cluster a test started, or `None` when the start failed because there is no etcd
/// binary: the test then skips, or fails under `CI=true` ([`crate::skip`]). Any other failure to
/// start panics with its cause.
pub fn started_or_skip(started: Result<EtcdCluster>) -> Option<EtcdCluster> {
    match started {
        Ok(c) => Some(c),
        Err(e)
            if Command::new(etcd_binary())
                .arg("--version")
                .output()
                .is_err() =>
        {
            crate::skip(&format!(
                "no etcd binary ({e:#}); install Debian's etcd-server"
            ));
            None
        }
        Err(e) => panic!("starting etcd: {e:#}"),
    }
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
    /// Plain-HTTP port serving `/health` and `/metrics`, also when clients use TLS.
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    tls: bool,
    child: Option<Child>,
}

impl EtcdMember {
    /// `http://127.0.0.1:<client port>` (`https://` when the cluster uses TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn health_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
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
    tls: Option<EtcdTls>,
    /// More flags for every member (tuning for a benchmark, say).
    extra_args: Vec<String>,
    // Dropped after the members (fields drop in order) so processes die before their dir goes.
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members (1 or 3 are the useful sizes) and waits until every one is healthy.
    pub fn start(size: usize) -> Result<EtcdCluster> {
        Self::start_with(size, None, &[])
    }

    /// One member started with `extra_args` added to its flags.
    pub fn single_with_args(extra_args: &[String]) -> Result<EtcdCluster> {
        Self::start_with(1, None, extra_args)
    }

    /// Like [`Self::start`], with clients served over TLS: certificates from a fresh test CA
    /// (see [`EtcdCluster::tls`]); `client_cert_auth` makes etcd require a client certificate
    /// signed by that CA. Peers talk plain HTTP.
    pub fn start_tls(size: usize, client_cert_auth: bool) -> Result<EtcdCluster> {
        Self::start_with(size, Some(client_cert_auth), &[])
    }

    fn start_with(size: usize, tls: Option<bool>, extra_args: &[String]) -> Result<EtcdCluster> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(size, tls, extra_args) {
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

    fn try_start(size: usize, tls: Option<bool>, extra_args: &[String]) -> Result<EtcdCluster> {
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
            let (metrics_port, l3) = free_port()?;
            listeners.extend([l1, l2, l3]);
            let name = format!("m{i}");
            members.push(EtcdMember {
                data_dir: dir.path().join(format!("{name}.etcd")),
                log_path: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                metrics_port,
                tls: tls.is_some(),
                child: None,
            });
        }
        drop(listeners);
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let tls = match tls {
            Some(client_cert_auth) => {
                let files = make_test_pki(&dir.path().join("pki"))?;
                Some(EtcdTls {
                    files,
                    client_cert_auth,
                })
            }
            None => None,
        };
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            tls,
            extra_args: extra_args.to_vec(),
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

    /// The certificates of a cluster started with [`Self::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|t| &t.files)
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
        let tls = self.tls.clone();
        let extra_args = self.extra_args.clone();
        let m = self.member_mut(i)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .with_context(|| format!("opening {}", m.log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the etcd log handle")?;
        let client = m.endpoint();
        let peer = m.peer_url();
        let mut cmd = Command::new(etcd_binary());
        if let Some(tls) = &tls {
            cmd.arg("--cert-file")
                .arg(&tls.files.server_cert)
                .arg("--key-file")
                .arg(&tls.files.server_key);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(&tls.files.ca);
            }
        }
        cmd.arg("--name")
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
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", m.metrics_port))
            .args(&extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = spawn_dying_with_us(cmd).with_context(|| {
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
        let addr = m.health_addr();
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

/// TLS settings of a cluster started with [`EtcdCluster::start_tls`].
#[derive(Clone, Debug)]
struct EtcdTls {
    files: TlsFiles,
    client_cert_auth: bool,
}

pub use crate::pki::{make_test_pki, TlsFiles};

/// Spawns `cmd` so that the kernel SIGKILLs it when this process dies, also when Drop never
/// runs (the test binary killed by a timeout, an abort). `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked exits, so every child is forked by one thread that lives as long as the
/// process.
pub fn spawn_dying_with_us(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe system calls prctl, getppid and _exit; it allocates nothing and
    // touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We may have died between fork and prctl: then nobody would kill the child.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            // Without the thread every request below fails with a clear error.
            eprintln!("testkit: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = spawner
        .lock()
        .map_err(|_| std::io::Error::other("testkit spawner lock poisoned"))?
        .send((cmd, reply_tx));
    if sent.is_err() {
        return Err(std::io::Error::other("testkit spawner thread is gone"));
    }
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("testkit spawner thread is gone"))?
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
        let addr = c.member(0).health_addr();
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
        let addr = c.member(0).health_addr();
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        while !health_ok(addr) {
            assert!(Instant::now() < deadline, "{}", c.member(0).log_tail(20));
            std::thread::sleep(POLL_INTERVAL);
        }
        c.restart_member(1).unwrap();
    }

    /// Run by `etcd_dies_with_a_killed_test_process` in a child process: starts etcd, prints
    /// its PID, and waits to be SIGKILLed (so no Drop runs).
    #[test]
    #[ignore = "helper, run by etcd_dies_with_a_killed_test_process"]
    fn helper_start_etcd_and_hang() {
        if std::env::var_os("TESTKIT_HELPER").is_none() {
            return;
        }
        let c = EtcdCluster::single().unwrap();
        println!("ETCD_DIR={}", c.dir().display());
        println!("ETCD_PID={}", c.member(0).pid().unwrap());
        std::thread::sleep(Duration::from_secs(600));
    }

    #[test]
    fn etcd_dies_with_a_killed_test_process() {
        use std::io::{BufRead, BufReader};
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "etcd::tests::helper_start_etcd_and_hang",
                "--nocapture",
            ])
            .env("TESTKIT_HELPER", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = helper.stdout.take().unwrap();
        let mut dir = None;
        let pid: i32 = BufReader::new(out)
            .lines()
            .map_while(|l| l.ok())
            .find_map(|l| {
                if let Some(d) = l.strip_prefix("ETCD_DIR=") {
                    dir = Some(PathBuf::from(d));
                }
                l.strip_prefix("ETCD_PID=").map(|p| p.parse().unwrap())
            })
            .expect("the helper printed no etcd PID");
        // The killed helper cannot remove its temp dir: we do, whatever happens below.
        struct RemoveOnDrop(Option<PathBuf>);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                if let Some(d) = &self.0 {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
        let _cleanup = RemoveOnDrop(dir);
        let etcd = nix::unistd::Pid::from_raw(pid);
        assert!(
            nix::sys::signal::kill(etcd, None).is_ok(),
            "etcd {pid} not running"
        );
        helper.kill().unwrap();
        helper.wait().unwrap();
        // The orphan is killed by the kernel; it may linger as a zombie until init reaps it,
        // so check its state rather than its existence.
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = state
                .rsplit(") ")
                .next()
                .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'));
            if !running {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd {pid} outlived its test process"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
