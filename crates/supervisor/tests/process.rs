//! The process supervisor with real processes, each test in its own state directory.

use std::path::{Path, PathBuf};
use std::time::Duration;
use supervisor::{ProcessManager, StateChange, UnitStatus};
use tokio::sync::broadcast;
use unit::UnitFile;

const HELPER: &str = env!("CARGO_BIN_EXE_fleet-process-helper");
const DEADLINE: Duration = Duration::from_secs(60);

/// A manager whose state changes go to a channel, as the agent's adapter sets it up.
struct Manager {
    inner: ProcessManager,
    changes: broadcast::Sender<StateChange>,
}

impl Manager {
    fn open(state_dir: PathBuf) -> Manager {
        Manager::open_with(state_dir, supervisor::log::MAX_LOG_BYTES)
    }

    /// With units' logs rotated at `log_max` bytes.
    fn open_with(state_dir: PathBuf, log_max: u64) -> Manager {
        let (changes, _) = broadcast::channel(4096);
        let tx = changes.clone();
        let inner = ProcessManager::builder(state_dir)
            .helper(HELPER.into())
            .log_max_bytes(log_max)
            .on_change(move |change| {
                let _ = tx.send(change);
            })
            .open()
            .unwrap();
        Manager { inner, changes }
    }

    fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }
}

impl std::ops::Deref for Manager {
    type Target = ProcessManager;
    fn deref(&self) -> &ProcessManager {
        &self.inner
    }
}

/// The load, active and sub state as systemd (and fleet) spell them.
fn names(s: UnitStatus) -> (String, String, String) {
    (
        s.load.to_string(),
        s.active().to_string(),
        s.sub.to_string(),
    )
}

/// A state directory whose units are killed when the test ends, even when it fails.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn manager(&self) -> Manager {
        Manager::open(self.state_dir())
    }
    fn record(&self, name: &str) -> Option<serde_json::Value> {
        let text = std::fs::read(self.state_dir().join("run").join(format!("{name}.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    }
    fn main_pid(&self, name: &str) -> Option<i32> {
        Some(self.record(name)?.get("main_pid")?.as_i64()? as i32)
    }
    /// The live log forwarders serving this state directory.
    fn forwarders(&self) -> Vec<i32> {
        let logs = self.state_dir().join("logs");
        let logs = logs.canonicalize().unwrap_or(logs);
        let logs = logs.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == supervisor::log::HELPER_ARG)
                && args.iter().any(|a| a == &logs)
                && alive(pid)
            {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pid in self.forwarders() {
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let Ok(dir) = std::fs::read_dir(self.state_dir().join("run")) else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&text) else {
                continue;
            };
            let mut pids: Vec<i64> = rec["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_i64())
                .collect();
            pids.extend(rec["main_pid"].as_i64());
            for pid in pids.into_iter().filter(|p| *p > 1) {
                // SAFETY: kill(2) with a pid/process group and a signal number has no memory effects.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

fn service(body: &str) -> UnitFile {
    UnitFile::parse(&format!("[Service]\n{body}\n")).unwrap()
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn state(m: &ProcessManager, name: &str) -> Option<(String, String, String)> {
    m.status(name).map(names)
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(m: &ProcessManager, name: &str, active: &str, sub: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let st = state(m, name);
        if matches!(&st, Some((_, a, s)) if a == active && s == sub) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: wanted {active}/{sub}, still {st:?} (reason {:?})",
            m.reason(name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the unit and waits until, after leaving its current state, it reaches active/sub.
async fn start_and_wait(m: &Manager, name: &str, active: &str, sub: &str) {
    let mut rx = m.subscribe();
    m.start(name).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut left = false;
    loop {
        let change = tokio::time::timeout_at(deadline, rx.recv()).await;
        let Ok(Ok(change)) = change else {
            panic!(
                "{name}: no {active}/{sub} after start ({change:?}, reason {:?})",
                m.reason(name)
            );
        };
        let Some((_, a, s)) = change.status.filter(|_| change.name == name).map(names) else {
            continue;
        };
        left |= a == "activating";
        if left && a == active && s == sub {
            return;
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Collects the (active, sub) states a subscription sees.
fn collect(
    mut rx: tokio::sync::broadcast::Receiver<StateChange>,
    name: &'static str,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Ok(change)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
            if change.name == name {
                if let Some((_, a, s)) = change.status.map(names) {
                    seen.push((a, s));
                }
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_shell_loop_with_timestamped_logs() {
    let fx = Fixture::new();
    let m = fx.manager();
    let name = "loop.service";
    m.load(
        name,
        &service("ExecStart=/bin/sh -c 'while true; do echo tick; sleep 0.05; done'"),
    )
    .await
    .unwrap();
    assert_eq!(
        state(&m, name),
        Some(("loaded".into(), "inactive".into(), "dead".into()))
    );
    let rx = m.subscribe();
    let seen = collect(rx, "loop.service");
    m.start(name).unwrap();
    wait_state(&m, name, "active", "running").await;
    let pid = fx.main_pid(name).expect("run record with the main pid");
    assert!(alive(pid));

    let log = m.log_path(name);
    assert_eq!(log, fx.state_dir().join("logs/loop.service.log"));
    wait_for("two tick lines in the log", || {
        read(&log).matches(" tick\n").count() >= 2
    })
    .await;
    let line = read(&log)
        .lines()
        .find(|l| l.ends_with(" tick"))
        .unwrap()
        .to_string();
    let (ts, rest) = line.split_once(' ').unwrap();
    assert_eq!(rest, "tick");
    // 2024-05-01T12:00:00.123Z
    assert_eq!(ts.len(), 24, "{line:?}");
    assert!(
        ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.',
        "{line:?}"
    );
    assert!(ts[..4].parse::<u32>().unwrap() >= 2024, "{line:?}");

    m.stop(name).unwrap();
    wait_state(&m, name, "inactive", "dead").await;
    wait_for("the main process to be gone", || !alive(pid)).await;
    assert!(
        fx.record(name).is_none(),
        "the run record is removed when the unit stops"
    );
    let seen = seen.await.unwrap();
    let pos = |st: (&str, &str)| seen.iter().position(|(a, s)| a == st.0 && s == st.1);
    let (running, sigterm, dead) = (
        pos(("active", "running")),
        pos(("deactivating", "stop-sigterm")),
        pos(("inactive", "dead")),
    );
    assert!(
        running.is_some() && sigterm.is_some() && dead.is_some(),
        "{seen:?}"
    );
    assert!(running < sigterm && sigterm < dead, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_kills_the_whole_tree() {
    let fx = Fixture::new();
    let m = fx.manager();
    let gc = fx.path("grandchild.pid");
    // The middle shell runs $INNER (expanded by the outer shell, not by the unit's parser).
    let body = format!(
        "Environment=\"INNER=sleep 1000 & echo $! > {}; wait\"\nExecStart=/bin/sh -c 'sh -c \"$INNER\" & wait'",
        gc.display()
    );
    m.load("tree.service", &service(&body)).await.unwrap();
    m.start("tree.service").unwrap();
    wait_state(&m, "tree.service", "active", "running").await;
    wait_for("the grandchild's pid", || {
        read(&gc).trim().parse::<i32>().is_ok()
    })
    .await;
    let grandchild: i32 = read(&gc).trim().parse().unwrap();
    assert!(alive(grandchild));
    m.stop("tree.service").unwrap();
    wait_state(&m, "tree.service", "inactive", "dead").await;
    wait_for("the grandchild to be killed", || !alive(grandchild)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_failure_until_the_start_limit_and_always() {
    let fx = Fixture::new();
    let m = fx.manager();
    let runs = fx.path("failing.runs");
    let body = format!(
        "ExecStart=/bin/sh -c 'echo run >> {}; exit 3'\nRestart=on-failure\nRestartSec=50ms",
        runs.display()
    );
    let seen = collect(m.subscribe(), "failing.service");
    m.load("failing.service", &service(&body)).await.unwrap();
    m.start("failing.service").unwrap();
    // StartLimitBurst=5 starts within StartLimitIntervalSec=10s, then systemd's "start
    // request repeated too quickly".
    wait_state(&m, "failing.service", "failed", "failed").await;
    assert_eq!(read(&runs).lines().count(), 5);
    assert!(m
        .reason("failing.service")
        .unwrap()
        .contains("repeated too quickly"));
    assert!(seen
        .await
        .unwrap()
        .contains(&("activating".into(), "auto-restart".into())));

    let runs = fx.path("ok.runs");
    let body = format!(
        "ExecStart=/bin/sh -c 'echo run >> {}; sleep 0.2'\nRestart=always\nRestartSec=100ms",
        runs.display()
    );
    m.load("always.service", &service(&body)).await.unwrap();
    m.start("always.service").unwrap();
    wait_for("three runs of the always-restarted unit", || {
        read(&runs).lines().count() >= 3
    })
    .await;
    m.stop("always.service").unwrap();
    wait_state(&m, "always.service", "inactive", "dead").await;
    let after = read(&runs).lines().count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        read(&runs).lines().count(),
        after,
        "a stopped unit is not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_with_and_without_remain_after_exit() {
    let fx = Fixture::new();
    let m = fx.manager();
    let out = fx.path("oneshot.out");
    let seen = collect(m.subscribe(), "once.service");
    let body = format!(
        "Type=oneshot\nExecStart=/bin/sh -c 'sleep 0.2; echo done > {}'",
        out.display()
    );
    m.load("once.service", &service(&body)).await.unwrap();
    m.start("once.service").unwrap();
    wait_for("the oneshot's output", || read(&out) == "done\n").await;
    wait_state(&m, "once.service", "inactive", "dead").await;
    let seen = seen.await.unwrap();
    assert!(
        seen.contains(&("activating".into(), "start".into())),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(a, _)| a == "active" || a == "failed"),
        "{seen:?}"
    );

    let body = "Type=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\nExecStart=/bin/true";
    m.load("remain.service", &service(body)).await.unwrap();
    m.start("remain.service").unwrap();
    wait_state(&m, "remain.service", "active", "exited").await;
    m.stop("remain.service").unwrap();
    wait_state(&m, "remain.service", "inactive", "dead").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_start_pre_failure_and_ignored_failures() {
    let fx = Fixture::new();
    let m = fx.manager();
    let body = "ExecStartPre=/bin/false\nExecStart=/bin/sleep 1000";
    m.load("pre.service", &service(body)).await.unwrap();
    start_and_wait(&m, "pre.service", "failed", "failed").await;
    let reason = m.reason("pre.service").unwrap();
    assert!(
        reason.contains("ExecStartPre") && reason.contains("status 1"),
        "{reason}"
    );
    assert!(read(&m.log_path("pre.service")).contains("ExecStartPre"));

    let body = "ExecStartPre=-/bin/false\nExecStartPre=-/no/such/binary\nExecStart=/bin/sleep 1000\nExecStopPost=-/bin/sh -c 'exit 7'";
    m.load("ignored.service", &service(body)).await.unwrap();
    m.start("ignored.service").unwrap();
    wait_state(&m, "ignored.service", "active", "running").await;
    m.stop("ignored.service").unwrap();
    wait_state(&m, "ignored.service", "inactive", "dead").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_environment_file_and_working_directory() {
    let fx = Fixture::new();
    let m = fx.manager();
    let env_file = fx.path("env");
    std::fs::write(&env_file, "# settings\nC=from file\nB=overridden\n").unwrap();
    let work = fx.path("work dir");
    std::fs::create_dir(&work).unwrap();
    let out = fx.path("env.out");
    let body = format!(
        "Type=oneshot\n\
         Environment=\"A=hello world\" B=2\n\
         EnvironmentFile={}\n\
         EnvironmentFile=-/no/such/env/file\n\
         WorkingDirectory={}\n\
         ExecStart=/bin/sh -c 'echo \"$A|$B|$C|$(pwd)|$0|$1\" > {}' ${{A}} $A",
        env_file.display(),
        work.display(),
        out.display()
    );
    m.load("env.service", &service(&body)).await.unwrap();
    start_and_wait(&m, "env.service", "inactive", "dead").await;
    assert_eq!(
        read(&out),
        format!(
            "hello world|overridden|from file|{}|hello world|hello\n",
            work.display()
        )
    );

    let body = "ExecStart=/bin/sleep 1000\nWorkingDirectory=/no/such/dir";
    m.load("nowd.service", &service(body)).await.unwrap();
    start_and_wait(&m, "nowd.service", "failed", "failed").await;
    assert!(m.reason("nowd.service").unwrap().contains("/no/such/dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignored_means_sigkill_after_timeout_stop_sec() {
    let fx = Fixture::new();
    let m = fx.manager();
    let seen = collect(m.subscribe(), "stubborn.service");
    let body = "ExecStart=/bin/sh -c 'trap \"\" TERM; while true; do sleep 0.05; done'\nTimeoutStopSec=500ms";
    m.load("stubborn.service", &service(body)).await.unwrap();
    m.start("stubborn.service").unwrap();
    wait_state(&m, "stubborn.service", "active", "running").await;
    let pid = fx.main_pid("stubborn.service").unwrap();
    m.stop("stubborn.service").unwrap();
    // systemd: "State 'stop-sigterm' timed out. Killing." then "Failed with result 'timeout'".
    wait_state(&m, "stubborn.service", "failed", "failed").await;
    assert!(!alive(pid));
    let seen = seen.await.unwrap();
    assert!(
        seen.contains(&("deactivating".into(), "stop-sigkill".into())),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readoption_after_the_manager_goes_away() {
    let fx = Fixture::new();
    let starts = fx.path("starts");
    let body = format!(
        "ExecStart=/bin/sh -c 'echo start >> {}; while true; do echo tick; sleep 0.05; done'",
        starts.display()
    );
    let file = service(&body);
    let pid = {
        let m = fx.manager();
        m.load("keep.service", &file).await.unwrap();
        m.start("keep.service").unwrap();
        wait_state(&m, "keep.service", "active", "running").await;
        fx.main_pid("keep.service").unwrap()
    };
    let forwarder = fx.forwarders();
    assert_eq!(forwarder.len(), 1, "one log forwarder: {forwarder:?}");
    // The manager is gone (as when fleetd exits): the unit runs on and its log keeps growing.
    let log = fx.state_dir().join("logs/keep.service.log");
    let before = read(&log).matches(" tick\n").count();
    wait_for("log lines written while no manager runs", || {
        read(&log).matches(" tick\n").count() > before + 2
    })
    .await;
    assert!(alive(pid));

    let m = fx.manager();
    // The new manager found the running forwarder rather than starting another.
    assert_eq!(fx.forwarders(), forwarder);
    assert_eq!(m.units(), vec![("keep.service".to_string(), file.hash())]);
    assert_eq!(
        state(&m, "keep.service"),
        Some(("loaded".into(), "active".into(), "running".into()))
    );
    assert_eq!(fx.main_pid("keep.service"), Some(pid));
    assert_eq!(
        read(&starts).lines().count(),
        1,
        "re-adoption restarts nothing"
    );

    m.stop("keep.service").unwrap();
    wait_state(&m, "keep.service", "inactive", "dead").await;
    wait_for("the re-adopted process to be stopped", || !alive(pid)).await;
    m.unload("keep.service").await.unwrap();
    assert!(m.units().is_empty());
    assert!(!fx.state_dir().join("units/keep.service").exists());
    assert_eq!(state(&m, "keep.service"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_dies_while_no_manager_runs_is_failed() {
    let fx = Fixture::new();
    {
        let m = fx.manager();
        m.load("gone.service", &service("ExecStart=/bin/sleep 1000"))
            .await
            .unwrap();
        m.start("gone.service").unwrap();
        wait_state(&m, "gone.service", "active", "running").await;
    }
    let pid = fx.main_pid("gone.service").unwrap();
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the unit's process to die", || !alive(pid)).await;
    let m = fx.manager();
    assert_eq!(
        state(&m, "gone.service"),
        Some(("loaded".into(), "failed".into(), "failed".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_unit_types_and_unsupported_settings_are_refused() {
    let fx = Fixture::new();
    let m = fx.manager();
    let socket = UnitFile::parse("[Socket]\nListenStream=8080\n").unwrap();
    m.load("web.socket", &socket).await.unwrap();
    assert_eq!(
        state(&m, "web.socket"),
        Some(("error".into(), "failed".into(), "failed".into()))
    );
    let err = m.start("web.socket").unwrap_err().to_string();
    assert!(err.contains("only runs .service units"), "{err}");
    assert!(m
        .reason("web.socket")
        .unwrap()
        .contains("only runs .service units"));
    assert_eq!(m.units(), vec![("web.socket".to_string(), socket.hash())]);

    for (body, expected) in [
        ("Type=notify\nExecStart=/bin/sleep 1", "Type=notify"),
        ("ExecStart=@/bin/sleep sleep 1", "'@' prefix"),
        ("ExecStart=+/bin/sleep 1", "'+' prefix"),
    ] {
        m.load("bad.service", &service(body)).await.unwrap();
        assert_eq!(state(&m, "bad.service").unwrap().0, "error");
        let err = m.start("bad.service").unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    // Fixing the file makes it loadable and startable again.
    m.load("bad.service", &service("Type=oneshot\nExecStart=/bin/true"))
        .await
        .unwrap();
    assert_eq!(state(&m, "bad.service").unwrap().0, "loaded");
    start_and_wait(&m, "bad.service", "inactive", "dead").await;
    assert!(m.load("../escape.service", &socket).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binary_fails_with_a_reason() {
    let fx = Fixture::new();
    let m = fx.manager();
    m.load(
        "missing.service",
        &service("ExecStart=/no/such/binary --flag"),
    )
    .await
    .unwrap();
    start_and_wait(&m, "missing.service", "failed", "failed").await;
    let reason = m.reason("missing.service").unwrap();
    // The phase, the unit, what failed and the system's reason.
    assert!(
        reason.starts_with("ExecStart: missing.service: executing /no/such/binary: "),
        "{reason}"
    );
    assert!(read(&m.log_path("missing.service")).contains("/no/such/binary"));

    // Relative names are looked up in PATH, as newer systemd does.
    m.load("relative.service", &service("Type=oneshot\nExecStart=true"))
        .await
        .unwrap();
    start_and_wait(&m, "relative.service", "inactive", "dead").await;
    m.load(
        "norel.service",
        &service("ExecStart=no-such-command-anywhere"),
    )
    .await
    .unwrap();
    start_and_wait(&m, "norel.service", "failed", "failed").await;
    assert!(m
        .reason("norel.service")
        .unwrap()
        .contains("not found in PATH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forking_service_with_pid_file_and_user() {
    let fx = Fixture::new();
    let m = fx.manager();
    let pid_file = fx.path("daemon.pid");
    let body = format!(
        "Type=forking\nPIDFile={0}\nExecStart=/bin/sh -c 'sleep 1000 > /dev/null 2>&1 & echo $$! > {0}'",
        pid_file.display()
    );
    m.load("daemon.service", &service(&body)).await.unwrap();
    m.start("daemon.service").unwrap();
    wait_state(&m, "daemon.service", "active", "running").await;
    let pid: i32 = read(&pid_file).trim().parse().unwrap();
    assert_eq!(fx.main_pid("daemon.service"), Some(pid));
    m.stop("daemon.service").unwrap();
    wait_state(&m, "daemon.service", "inactive", "dead").await;
    assert!(!alive(pid));

    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: User= is not exercised");
        return;
    }
    let out = fx.path("id.out");
    std::fs::set_permissions(
        fx.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let body = format!(
        "Type=oneshot\nUser=nobody\nExecStart=/bin/sh -c 'id -u > {}; echo $USER >> {0}'",
        out.display()
    );
    m.load("user.service", &service(&body)).await.unwrap();
    start_and_wait(&m, "user.service", "inactive", "dead").await;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(read(&out), format!("{}\nnobody\n", nobody.uid));
}

/// Plays fleetd in a separate process for `units_survive_sigkill_of_their_manager` (run only
/// through that test, which sets FLEET_TEST_STATE_DIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of units_survive_sigkill_of_their_manager"]
async fn manager_process_for_sigkill_test() {
    let Some(dir) = std::env::var_os("FLEET_TEST_STATE_DIR") else {
        return;
    };
    let m = Manager::open(dir.into());
    let body = "ExecStart=/bin/sh -c 'while true; do echo tick; sleep 0.05; done'";
    m.load("survivor.service", &service(body)).await.unwrap();
    m.start("survivor.service").unwrap();
    wait_state(&m, "survivor.service", "active", "running").await;
    // Wait to be killed.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_survive_sigkill_of_their_manager() {
    let fx = Fixture::new();
    let mut manager_process = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "manager_process_for_sigkill_test",
            "--nocapture",
        ])
        .env("FLEET_TEST_STATE_DIR", fx.state_dir())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = KillOnDrop(&mut manager_process);
    wait_for("the unit to run under the other process", || {
        fx.main_pid("survivor.service").is_some()
    })
    .await;
    let pid = fx.main_pid("survivor.service").unwrap();
    drop(guard); // SIGKILL, as `kill -9 fleetd`

    let log = fx.state_dir().join("logs/survivor.service.log");
    let before = read(&log).matches(" tick\n").count();
    wait_for("log lines written after the manager was SIGKILLed", || {
        read(&log).matches(" tick\n").count() > before + 2
    })
    .await;
    assert!(alive(pid));
    let m = fx.manager();
    assert_eq!(
        state(&m, "survivor.service"),
        Some(("loaded".into(), "active".into(), "running".into()))
    );
    m.stop("survivor.service").unwrap();
    wait_state(&m, "survivor.service", "inactive", "dead").await;
    wait_for("the survivor to be stopped", || !alive(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_forwarder_keeps_the_output_of_many_units() {
    const UNITS: usize = 200;
    let fx = Fixture::new();
    let m = fx.manager();
    let names: Vec<String> = (0..UNITS).map(|i| format!("many-{i:03}.service")).collect();
    for name in &names {
        let body = format!(
            "ExecStart=/bin/sh -c 'echo out of {name}; echo err of {name} >&2; exec sleep 1000'"
        );
        m.load(name, &service(&body)).await.unwrap();
        m.start(name).unwrap();
    }
    for name in &names {
        wait_state(&m, name, "active", "running").await;
    }
    for name in &names {
        let log = m.log_path(name);
        wait_for(&format!("both lines of {name} in its log"), || {
            let text = read(&log);
            text.contains(&format!(" out of {name}\n"))
                && text.contains(&format!(" err of {name}\n"))
        })
        .await;
    }
    let forwarders = fx.forwarders();
    assert_eq!(
        forwarders.len(),
        1,
        "{UNITS} units, one log forwarder: {forwarders:?}"
    );
    // Not the manager's process, and in a session of its own (signals for fleetd's process
    // group do not reach it).
    let fw = forwarders[0];
    assert_ne!(fw, std::process::id() as i32);
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(fw)))
            .unwrap()
            .as_raw(),
        fw
    );

    // With no output left to read and no manager, the forwarder exits by itself. (The units
    // are killed rather than stopped: 200 stop sequences are covered elsewhere and only make
    // this test slow on a busy machine.)
    let pids: Vec<i32> = names.iter().filter_map(|n| fx.main_pid(n)).collect();
    assert_eq!(pids.len(), UNITS);
    drop(m);
    for pid in pids {
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_for("the idle forwarder to exit", || !alive(fw)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_at_the_configured_size() {
    const MAX: u64 = 4096;
    let fx = Fixture::new();
    let m = Manager::open_with(fx.state_dir(), MAX);
    let body = "Type=oneshot\nExecStart=/bin/sh -c 'i=0; while [ $i -lt 1000 ]; do echo line $i; i=$((i+1)); done'";
    m.load("chatty.service", &service(body)).await.unwrap();
    start_and_wait(&m, "chatty.service", "inactive", "dead").await;
    let log = m.log_path("chatty.service");
    let mut old = log.as_os_str().to_owned();
    old.push(".1");
    let old = PathBuf::from(old);
    // The oneshot has ended, but its forwarder may still be writing the last lines.
    wait_for("the last line in the log", || {
        read(&log).contains(" line 999\n")
    })
    .await;
    let (current, previous) = (read(&log), read(&old));
    assert!(current.len() as u64 <= MAX, "{} bytes", current.len());
    assert!(
        !previous.is_empty() && previous.len() as u64 <= MAX,
        "{} bytes",
        previous.len()
    );
    // One older file only: the first lines are gone, the rotated file holds the ones just
    // before the current file's.
    assert!(!previous.contains(" line 0\n") && !current.contains(" line 0\n"));
    let first_current = current
        .lines()
        .find_map(|l| {
            l.split_once(" line ")
                .and_then(|(_, n)| n.parse::<u32>().ok())
        })
        .unwrap();
    assert!(
        previous.contains(&format!(" line {}\n", first_current - 1)),
        "{previous}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_forwarder_is_replaced_and_the_units_keep_running() {
    let fx = Fixture::new();
    let m = fx.manager();
    let body = "ExecStart=/bin/sh -c 'while true; do echo tick; sleep 0.05; done'";
    m.load("steady.service", &service(body)).await.unwrap();
    m.start("steady.service").unwrap();
    wait_state(&m, "steady.service", "active", "running").await;
    let pid = fx.main_pid("steady.service").unwrap();
    let log = m.log_path("steady.service");
    wait_for("a tick in the log", || read(&log).contains(" tick\n")).await;
    let old = fx.forwarders();
    assert_eq!(old.len(), 1, "{old:?}");

    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(old[0], libc::SIGKILL) };
    wait_for("the forwarder to die", || !alive(old[0])).await;
    // The manager held the pipe's reading end, so the unit's writes did not fail (SIGPIPE
    // would have killed the shell), and it handed the pipe to a new forwarder.
    let before = read(&log).matches(" tick\n").count();
    wait_for("ticks logged by a new forwarder", || {
        read(&log).matches(" tick\n").count() > before + 2
    })
    .await;
    let new = fx.forwarders();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old);
    assert!(alive(pid));
    assert_eq!(
        state(&m, "steady.service"),
        Some(("loaded".into(), "active".into(), "running".into()))
    );
    m.stop("steady.service").unwrap();
    wait_state(&m, "steady.service", "inactive", "dead").await;
}
