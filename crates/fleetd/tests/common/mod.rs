//! Support for black-box tests of the real `fleetd` binary: a [`Node`] (one machine's temp
//! dirs and id), the [`Fleetd`] processes started on it, and a blocking [`Api`] client.
//!
//! ```no_run
//! let node = Node::new("hello");
//! let fleetd = node.start(&[]);         // embedded registry, process unit manager
//! let api = fleetd.wait_registered();   // polls GET /machines until it answers 200
//! api.submit("hello.service", "[Service]\nExecStart=/bin/sleep 600\n", "launched");
//! ```
//!
//! Everything a test starts is killed by PID when its owner is dropped, also when the test
//! panics: `Fleetd` kills its process; `Node` kills the processes of the units the process
//! supervisor ran for it (found through their sessions, recorded under
//! `units_dir/process/run/*.json`) and the log forwarders it left (their command line names
//! the node's state dir).

#![allow(dead_code)] // Each test file uses its own part of this module.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const FLEETD: &str = env!("CARGO_BIN_EXE_fleetd");

/// `fleetctl` from this workspace: cargo builds binaries only for their own package's tests, so
/// build it once (a no-op when fresh) and use it from the target dir.
pub fn fleetctl_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "fleetctl", "--bin", "fleetctl"])
            .current_dir(&root)
            .status()
            .expect("running cargo build -p fleetctl");
        assert!(status.success(), "cargo build -p fleetctl failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("fleetctl")
    })
    .clone()
}

/// Generous: the machine has two cores and other tests run beside these.
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `f` every [`POLL`] until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Unique among the processes of this host: PID, a counter and the clock.
pub fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:08x}{n:08x}{:016x}", std::process::id(), nanos as u64)
}

/// Whether `pid` is alive (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|f| f.first() != Some(&"Z")),
        Err(_) => false,
    }
}

/// The fields of `/proc/<pid>/stat` after `(comm)`: state, ppid, pgrp, session, ...
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

/// `(pid, session id, ppid)` of every process of the host.
pub fn processes() -> Vec<(i32, i32, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(f) = stat_fields(&stat) else {
            continue;
        };
        let ppid = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let sid = f.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, sid, ppid));
    }
    out
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// A run record of the process supervisor (`units_dir/process/run/<unit>.json`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct RunRecord {
    pub main_pid: Option<i32>,
    #[serde(default)]
    pub sessions: Vec<i32>,
    pub sub: String,
}

/// One machine: temp dirs for state, units and the API socket, and a machine id.
pub struct Node {
    pub machine_id: String,
    dir: tempfile::TempDir,
    /// Sessions of unit processes seen in run records, killed on drop.
    sessions: Mutex<BTreeSet<i32>>,
    started: AtomicU64,
}

impl Node {
    pub fn new(hint: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fleetd-{hint}-"))
            .tempdir()
            .expect("temp dir for a node");
        // 32 hex digits, like /etc/machine-id, and unique on this host.
        let machine_id = format!("{:0>32}", unique());
        let machine_id = machine_id[machine_id.len() - 32..].to_string();
        Node {
            machine_id,
            dir,
            sessions: Mutex::new(BTreeSet::new()),
            started: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// fleetd's `units_directory` (the process supervisor's runtime files are under `process/`).
    pub fn units_dir(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("fleet.sock")
    }

    /// The options of a single machine on the embedded registry with the process supervisor.
    pub fn embedded_args(&self) -> Vec<String> {
        let d = self.dir.path().display();
        vec![
            "--registry".into(),
            "embedded".into(),
            "--state-dir".into(),
            format!("{d}/state"),
            "--units-directory".into(),
            self.units_dir().display().to_string(),
            "--machine-id".into(),
            self.machine_id.clone(),
            "--api-listen".into(),
            format!("unix://{d}/fleet.sock"),
            "--agent-ttl".into(),
            "3s".into(),
            "--unit-manager".into(),
            "process".into(),
        ]
    }

    /// Starts fleetd with [`Node::embedded_args`] followed by `extra`.
    pub fn start(&self, extra: &[&str]) -> Fleetd {
        let mut args = self.embedded_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_raw(&args)
    }

    /// Starts fleetd with exactly `args`; stdout and stderr go to a log file of the node. The
    /// environment has no `FLEET_*` or socket-activation variables of the test's own.
    pub fn start_raw(&self, args: &[String]) -> Fleetd {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.path().join(format!("fleetd-{n}.log"));
        let out = std::fs::File::create(&log).expect("fleetd log file");
        let err = out.try_clone().expect("fleetd log file");
        let mut cmd = Command::new(FLEETD);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("FLEET_")
                || k.starts_with("LISTEN_")
                || k == "NOTIFY_SOCKET"
                || k == "RUST_LOG"
            {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("spawn fleetd");
        Fleetd {
            child,
            log,
            socket: self.socket(),
        }
    }

    /// The run records of the units running on this node, by unit name.
    pub fn run_records(&self) -> Vec<(String, RunRecord)> {
        let mut out = Vec::new();
        let dir = self.units_dir().join("process/run");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(unit) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Ok(rec) = serde_json::from_str::<RunRecord>(&text) {
                let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                sessions.extend(rec.sessions.iter().copied());
                sessions.extend(rec.main_pid);
                out.push((unit.to_string(), rec));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The main pid the supervisor recorded for `unit`, once it runs.
    pub fn wait_main_pid(&self, unit: &str) -> i32 {
        wait_for(
            &format!("a run record with a main pid for {unit}"),
            DEADLINE,
            || {
                self.run_records()
                    .into_iter()
                    .find(|(u, r)| u == unit && r.sub == "running")
                    .and_then(|(_, r)| r.main_pid)
            },
        )
    }

    /// What the supervisor logged of `unit`'s output.
    pub fn unit_log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.state_dir().join(format!("process/logs/{unit}.log")))
            .unwrap_or_default()
    }

    /// Processes left by this node's units and log forwarders.
    pub fn leftovers(&self) -> Vec<i32> {
        let _ = self.run_records();
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let marker = self.dir.path().display().to_string();
        let me = std::process::id() as i32;
        processes()
            .into_iter()
            .filter(|&(pid, sid, _)| {
                pid != me
                    && alive(pid)
                    && (sessions.contains(&sid) || {
                        let cmd = cmdline(pid);
                        cmd.contains("__fleet-process-helper") && cmd.contains(&marker)
                    })
            })
            .map(|(pid, _, _)| pid)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pid in self.leftovers() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A running `fleetd`; SIGKILLed on drop if still running.
pub struct Fleetd {
    child: Child,
    log: PathBuf,
    pub socket: PathBuf,
}

impl Fleetd {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal fleetd");
    }

    /// Waits for fleetd to exit; panics with its log if it has not within [`DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for fleetd") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "fleetd did not exit within {DEADLINE:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether fleetd still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What fleetd printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until fleetd's log holds `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_for(&format!("{needle:?} in fleetd's log"), DEADLINE, || {
            self.log().contains(needle).then_some(())
        });
    }

    /// A client of this fleetd's API socket.
    pub fn api(&self) -> Api {
        Api::unix(&self.socket)
    }

    /// Waits until the API answers 200 (the machine is registered), and returns a client.
    pub fn wait_registered(&mut self) -> Api {
        let api = self.api();
        let until = Instant::now() + DEADLINE;
        loop {
            if api.machines().is_ok() {
                return api;
            }
            assert!(
                self.running(),
                "fleetd exited before registering; its log:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < until,
                "fleetd did not register within {DEADLINE:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A blocking client of fleet's API v1 (the project's own `api::Client` on a private runtime).
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: api::Client,
}

impl Api {
    pub fn unix(path: &Path) -> Api {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = api::Client::new(
            &format!("unix://{}", path.display()),
            api::client::ClientOptions::default(),
        )
        .expect("API client");
        Api { rt, client }
    }

    pub fn machines(&self) -> Result<Vec<api::types::Machine>, api::client::ClientError> {
        self.rt.block_on(self.client.machines())
    }

    pub fn units(&self) -> Result<Vec<api::types::Unit>, api::client::ClientError> {
        self.rt.block_on(self.client.units())
    }

    pub fn unit(&self, name: &str) -> Option<api::types::Unit> {
        self.rt.block_on(self.client.unit(name)).expect("GET unit")
    }

    pub fn states(&self) -> Vec<api::types::UnitState> {
        self.rt
            .block_on(self.client.unit_states(&Default::default()))
            .expect("GET state")
    }

    pub fn state(&self, name: &str) -> Option<api::types::UnitState> {
        self.states().into_iter().find(|s| s.name == name)
    }

    /// GET /output/<name>: the unit's last `lines` lines of output.
    pub fn output(
        &self,
        name: &str,
        lines: usize,
    ) -> Result<Vec<String>, api::client::ClientError> {
        self.rt.block_on(self.client.unit_output(name, lines))
    }

    /// PUT /units/<name> with the options of unit file `text` and `desired` state.
    pub fn submit(&self, name: &str, text: &str, desired: &str) {
        let file = unit::UnitFile::parse(text).expect("test unit file parses");
        let u = api::types::Unit {
            name: name.to_string(),
            desired_state: desired.to_string(),
            options: file
                .options
                .iter()
                .map(api::types::UnitOption::from)
                .collect(),
            ..Default::default()
        };
        self.rt
            .block_on(self.client.create_or_update_unit(&u))
            .expect("PUT unit");
    }

    /// Waits until `name` is reported `active/running`.
    pub fn wait_running(&self, name: &str) -> api::types::UnitState {
        wait_for(&format!("{name} active/running"), DEADLINE, || {
            self.state(name)
                .filter(|s| s.systemd_active_state == "active" && s.systemd_sub_state == "running")
        })
    }
}

/// One etcd member started with `extra_args`; `None` (the test skips, or fails under `CI=true`)
/// when there is no etcd binary.
pub fn etcd_with_args(extra_args: &[String]) -> Option<testkit::etcd::EtcdCluster> {
    testkit::etcd::started_or_skip(testkit::etcd::EtcdCluster::single_with_args(extra_args))
}

/// The options of `node` on the etcd at `endpoints` with the process supervisor, its keys
/// under a prefix of its own (`--etcd-key-prefix`, see [`arg_of`]).
pub fn etcd_args(node: &Node, endpoints: &str) -> Vec<String> {
    let mut args = node.embedded_args();
    let at = args
        .iter()
        .position(|a| a == "embedded")
        .expect("registry arg");
    args[at] = "etcd".into();
    args.extend([
        "--etcd-servers".into(),
        endpoints.into(),
        // Unique per test: tests share no etcd, but keep the keyspace obvious in dumps.
        "--etcd-key-prefix".into(),
        format!("/fleet-test-{}/", unique()),
    ]);
    args
}

/// The value of `flag` in `args` (`--flag value`).
pub fn arg_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// Runs the fleetctl under test against `endpoint` (in `cwd`, if given) and prints what it
/// said, so a failing test shows the whole exchange.
pub fn run_fleetctl(endpoint: &str, cwd: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(fleetctl_binary());
    cmd.args(args).env("FLEETCTL_ENDPOINT", endpoint);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("running fleetctl");
    println!(
        "$ fleetctl {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The entries of `journalctl -o json` output (one object a line; others are skipped).
#[allow(dead_code)] // not every test binary reads a journal
pub fn journal_entries(json: &str) -> Vec<serde_json::Value> {
    json.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `journalctl -o json` output as lines of text: each entry's message followed by the fields
/// fleetd logged with it (`registry=embedded`), as its text log shows them. Under systemd
/// fleetd logs in journald's native protocol, where those fields are journal fields of their
/// own that `-o cat` would not show.
#[allow(dead_code)]
pub fn journal_text(json: &str) -> String {
    // Fields of journald and of tracing-journald's own, not fleetd's.
    const NOT_FLEETD: &[&str] = &[
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_FACILITY",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "TARGET",
        "SPAN_NAME",
        "SPAN_TARGET",
        "SPAN_CODE_FILE",
        "SPAN_CODE_LINE",
        "MESSAGE_ID",
        "INVOCATION_ID",
        "UNIT_RESULT",
        "JOB_ID",
        "JOB_TYPE",
        "JOB_RESULT",
        "USER_INVOCATION_ID",
    ];
    let mut out = String::new();
    for e in journal_entries(json) {
        let Some(fields) = e.as_object() else {
            continue;
        };
        out.push_str(fields.get("MESSAGE").and_then(|m| m.as_str()).unwrap_or(""));
        for (k, v) in fields {
            let Some(v) = v.as_str() else { continue };
            if k.starts_with('_') || NOT_FLEETD.contains(&k.as_str()) {
                continue;
            }
            out.push_str(&format!(" {}={v}", k.to_lowercase()));
        }
        out.push('\n');
    }
    out
}
