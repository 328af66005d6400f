//! One task per loaded service: drives it through systemd's states (start-pre, start,
//! start-post, running/exited, stop, stop-sigterm, stop-sigkill, stop-post, dead/failed,
//! auto-restart) as its goal (started or stopped) and its processes change.

use super::config::{
    expand_argv, parse_env_file, ExecCommand, KillMode, RestartPolicy, ServiceConfig, ServiceType,
};
use super::error::chain;
use super::log::{note, HELPER_ARG, MAX_LOG_BYTES};
use super::sys::{self, AccountError, Credentials, ExecutableError, SpawnError};
use super::{RecordedState, RunRecord, Shared, SubState};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Stopped,
    Started,
}

/// How a unit's run ended, with systemd's result names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunResult {
    Success,
    ExitCode,
    Signal,
    Timeout,
    Resources,
    /// The main process went away while fleetd was not its parent: its exit status is unknown
    /// and counted as a failure.
    Unknown,
}

impl RunResult {
    fn is_success(self) -> bool {
        self == RunResult::Success
    }
}

pub fn should_restart(policy: RestartPolicy, result: RunResult) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnSuccess => result.is_success(),
        RestartPolicy::OnFailure => !result.is_success(),
        RestartPolicy::OnAbnormal => matches!(
            result,
            RunResult::Signal | RunResult::Timeout | RunResult::Unknown
        ),
        RestartPolicy::OnAbort => matches!(result, RunResult::Signal | RunResult::Unknown),
    }
}

/// A running unit found at start-up (see [`super::Builder::open`]).
pub enum Adopted {
    Running {
        pid: i32,
        start_time: u64,
        sessions: Vec<i32>,
    },
    Exited,
}

enum MainProc {
    Child { child: sys::Child, pid: i32 },
    Foreign { pid: i32, start_time: u64 },
}

enum Exit {
    Status(ExitStatus),
    Unknown,
}

impl MainProc {
    fn pid(&self) -> i32 {
        match self {
            MainProc::Child { pid, .. } | MainProc::Foreign { pid, .. } => *pid,
        }
    }

    /// Cancel-safe: waits until the main process is gone.
    async fn wait(&mut self) -> Exit {
        match self {
            MainProc::Child { child, .. } => match child.wait().await {
                Ok(st) => Exit::Status(st),
                Err(_) => Exit::Unknown,
            },
            MainProc::Foreign { pid, start_time } => loop {
                let (p, t) = (*pid, *start_time);
                if !blocking(move || sys::alive(p, t)).await {
                    return Exit::Unknown;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        }
    }

    fn try_exit(&mut self) -> Option<Exit> {
        match self {
            MainProc::Child { child, .. } => match child.try_wait() {
                Ok(Some(st)) => Some(Exit::Status(st)),
                Ok(None) => None,
                Err(_) => Some(Exit::Unknown),
            },
            MainProc::Foreign { pid, start_time } => {
                (!sys::alive(*pid, *start_time)).then_some(Exit::Unknown)
            }
        }
    }
}

/// Runs a short system call sequence (procfs reads, signals) off the async workers; a
/// cancelled or panicked job yields the default.
async fn blocking<T: Send + Default + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_default()
}

fn classify(exit: &Exit, main: bool) -> (RunResult, String) {
    match exit {
        Exit::Unknown => (
            RunResult::Unknown,
            "exited while fleetd was not its parent (status unknown)".into(),
        ),
        Exit::Status(st) => match (st.code(), st.signal()) {
            (Some(0), _) => (RunResult::Success, "exited successfully".into()),
            (Some(code), _) => (RunResult::ExitCode, format!("exited with status {code}")),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| sig.to_string());
                // systemd counts these as a clean exit of a main process.
                let clean = main
                    && [
                        Signal::SIGHUP,
                        Signal::SIGINT,
                        Signal::SIGTERM,
                        Signal::SIGPIPE,
                    ]
                    .iter()
                    .any(|s| *s as i32 == sig);
                let result = if clean {
                    RunResult::Success
                } else {
                    RunResult::Signal
                };
                (result, format!("killed by signal {name}"))
            }
            (None, None) => (RunResult::Unknown, "ended with an unknown status".into()),
        },
    }
}

/// Why a run could not prepare or start a command. With the unit's name in front (see
/// [`Run::failure`]) it is the unit's failure reason.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("EnvironmentFile={}", path.display())]
    EnvironmentFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WorkingDirectory={0} does not exist or is not a directory")]
    WorkingDirectory(String),
    #[error("the command line is empty after variable expansion")]
    EmptyCommand,
    #[error(transparent)]
    Executable(#[from] ExecutableError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The blocking task doing `what` did not finish.
    #[error("{what}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Why a phase of the run did not complete.
enum Interrupt {
    /// The goal became `Stopped`.
    Stop,
    Failed(RunResult, String),
}

struct Run {
    shared: Arc<Shared>,
    name: String,
    cfg: Arc<ServiceConfig>,
    goal: watch::Receiver<Goal>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    credentials: Option<Credentials>,
    output: Option<OwnedFd>,
    main: Option<MainProc>,
    sessions: Vec<i32>,
}

pub struct RunEnd {
    pub result: RunResult,
    pub requested: bool,
}

/// The unit's task: runs until the manager shuts down (the caller drops this future then;
/// processes are left running on purpose).
pub async fn supervise(
    shared: Arc<Shared>,
    name: String,
    mut goal: watch::Receiver<Goal>,
    goal_tx: Arc<watch::Sender<Goal>>,
    mut adopted: Option<Adopted>,
) {
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut auto_restart = false;
    loop {
        if !auto_restart && adopted.is_none() {
            if goal.wait_for(|g| *g == Goal::Started).await.is_err() {
                return;
            }
            // An explicit start resets the start rate limit (as `systemctl reset-failed` would)
            // and counts as the first start.
            restarts.clear();
            restarts.push_back(Instant::now());
        }
        auto_restart = false;
        let cfg = match shared.config(&name) {
            Some(Ok(c)) => c,
            Some(Err(reason)) => {
                shared.set_reason(&name, Some(reason.to_string()));
                goal_tx.send_replace(Goal::Stopped);
                continue;
            }
            None => return,
        };
        let mut run = Run {
            shared: shared.clone(),
            name: name.clone(),
            cfg: cfg.clone(),
            goal: goal.clone(),
            env: BTreeMap::new(),
            cwd: None,
            credentials: None,
            output: None,
            main: None,
            sessions: Vec::new(),
        };
        let end = match adopted.take() {
            Some(a) => run.resume(a).await,
            None => run.run().await,
        };
        drop(run);
        let wants_restart = !end.requested && should_restart(cfg.policy.restart, end.result);
        if wants_restart && *goal.borrow() == Goal::Started {
            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > cfg.policy.start_limit_interval)
            {
                restarts.pop_front();
            }
            if cfg.policy.start_limit_burst > 0
                && restarts.len() >= cfg.policy.start_limit_burst as usize
            {
                let reason = format!(
                    "{name}: start request repeated too quickly ({} starts within {:?}); not restarting again",
                    restarts.len() + 1,
                    cfg.policy.start_limit_interval
                );
                note(shared.log_path(&name), reason.clone()).await;
                shared.set_reason(&name, Some(reason));
                shared.set_state(&name, SubState::Failed);
                goal_tx.send_replace(Goal::Stopped);
                continue;
            }
            restarts.push_back(now);
            shared.set_state(&name, SubState::AutoRestart);
            let mut g = goal.clone();
            tokio::select! {
                _ = tokio::time::sleep(cfg.policy.restart_sec) => {
                    auto_restart = true;
                    continue;
                }
                _ = g.wait_for(|g| *g == Goal::Stopped) => {}
            }
        }
        if end.result.is_success() {
            shared.set_state(&name, SubState::Dead);
        } else {
            shared.set_state(&name, SubState::Failed);
        }
        if !end.requested {
            goal_tx.send_replace(Goal::Stopped);
        }
    }
}

impl Run {
    fn set(&self, sub: SubState) {
        self.shared.set_state(&self.name, sub);
    }

    /// `unit: what failed: why`.
    fn failure(&self, e: &StartError) -> String {
        format!("{}: {}", self.name, chain(e))
    }

    async fn fail_note(&self, reason: String) {
        note(self.shared.log_path(&self.name), reason.clone()).await;
        self.shared.set_reason(&self.name, Some(reason));
    }

    async fn record(&self, sub: RecordedState) {
        let (main_pid, main_start_time) = match &self.main {
            Some(m) => {
                let pid = m.pid();
                (
                    Some(pid),
                    blocking(move || sys::proc_stat(pid).map(|s| s.start_time)).await,
                )
            }
            None => (None, None),
        };
        let rec = RunRecord {
            boot_id: self.shared.boot_id.clone(),
            main_pid,
            main_start_time,
            sessions: self.sessions.clone(),
            sub,
        };
        if let Err(e) = self.shared.write_record(&self.name, &rec).await {
            tracing::warn!(unit = %self.name, "cannot record the running unit (it will not be re-adopted): {}", chain(&e));
        }
    }

    /// Environment, account and working directory for this run, read at start as systemd does.
    async fn prepare(&mut self) -> Result<(), StartError> {
        let cfg = self.cfg.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, StartError> {
            let account = sys::account(cfg.context.user.as_deref(), cfg.context.group.as_deref())?;
            let mut env = BTreeMap::new();
            env.insert("PATH".to_string(), super::config::DEFAULT_PATH.to_string());
            if cfg.context.user.is_some() {
                env.insert("HOME".into(), account.home.clone());
                env.insert("USER".into(), account.name.clone());
                env.insert("LOGNAME".into(), account.name.clone());
                env.insert("SHELL".into(), account.shell.clone());
            }
            for (k, v) in &cfg.context.environment {
                env.insert(k.clone(), v.clone());
            }
            for (path, optional) in &cfg.context.environment_files {
                match std::fs::read_to_string(path) {
                    Ok(text) => env.extend(parse_env_file(&text)),
                    Err(_) if *optional => {}
                    Err(source) => {
                        return Err(StartError::EnvironmentFile {
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
            let cwd = match &cfg.context.working_directory {
                None => Some(PathBuf::from("/")),
                Some((dir, optional)) => {
                    let dir = if dir == "~" {
                        account.home.clone()
                    } else {
                        dir.clone()
                    };
                    let p = PathBuf::from(&dir);
                    if p.is_dir() {
                        Some(p)
                    } else if *optional {
                        Some(PathBuf::from("/"))
                    } else {
                        return Err(StartError::WorkingDirectory(dir));
                    }
                }
            };
            Ok((env, cwd, account.credentials))
        })
        .await
        .map_err(|source| StartError::Task {
            what: "preparing the environment",
            source,
        })??;
        (self.env, self.cwd, self.credentials) = prepared;
        Ok(())
    }

    /// The write end of the unit's log pipe, starting its forwarder on first use.
    async fn output(&mut self) -> Option<&OwnedFd> {
        if self.output.is_none() {
            let (helper, log) = (self.shared.helper.clone(), self.shared.log_path(&self.name));
            // Off the async workers: a spawn blocks its thread until the child has exec'd.
            match tokio::task::spawn_blocking(move || start_forwarder(&helper, &log)).await {
                Ok(Ok(fd)) => self.output = Some(fd),
                Ok(Err(e)) => {
                    tracing::warn!(unit = %self.name, "no log for this run: {}", chain(&e))
                }
                Err(e) => tracing::warn!(unit = %self.name, "no log for this run: {e}"),
            }
        }
        self.output.as_ref()
    }

    async fn spawn(
        &mut self,
        cmd: &ExecCommand,
        extra: &[(&str, String)],
    ) -> Result<(sys::Child, i32), StartError> {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.insert(k.to_string(), v.clone());
        }
        let mut argv = if cmd.no_env_expand {
            cmd.words.clone()
        } else {
            expand_argv(&cmd.words, &env)
        };
        let Some(program) = argv.first() else {
            return Err(StartError::EmptyCommand);
        };
        let path = env.get("PATH").cloned().unwrap_or_default();
        let resolved = sys::resolve_executable(program, &path)?;
        argv[0] = resolved.to_string_lossy().into_owned();
        let output = self.output().await.and_then(|fd| fd.try_clone().ok());
        let (cwd, credentials) = (self.cwd.clone(), self.credentials.clone());
        // Off the async workers: a spawn blocks its thread until the child has exec'd.
        let child = tokio::task::spawn_blocking(move || {
            sys::spawn(sys::Spawn {
                argv: &argv,
                env: &env,
                cwd: cwd.as_deref(),
                credentials: credentials.as_ref(),
                output: output.as_ref(),
            })
        })
        .await
        .map_err(|source| StartError::Task {
            what: "starting the command",
            source,
        })??;
        let pid = child.id();
        if pid > 0 {
            self.sessions.push(pid);
        }
        Ok((child, pid))
    }

    fn main_env(&self) -> Vec<(&'static str, String)> {
        match &self.main {
            Some(m) => vec![("MAINPID", m.pid().to_string())],
            None => vec![],
        }
    }

    /// Runs one short-lived command to its end (ExecStartPre, oneshot ExecStart, ...).
    async fn run_command(
        &mut self,
        what: &str,
        cmd: &ExecCommand,
        deadline: Option<Instant>,
        stoppable: bool,
    ) -> Result<(), Interrupt> {
        let extra = self.main_env();
        let (mut child, pid) = match self.spawn(cmd, &extra).await {
            Ok(c) => c,
            Err(e) if cmd.ignore_failure => {
                note(
                    self.shared.log_path(&self.name),
                    format!("{what} failed (ignored): {}", self.failure(&e)),
                )
                .await;
                return Ok(());
            }
            Err(e) => {
                return Err(Interrupt::Failed(
                    RunResult::Resources,
                    format!("{what}: {}", self.failure(&e)),
                ))
            }
        };
        let mut goal = self.goal.clone();
        let stop_requested = async {
            if stoppable {
                let _ = goal.wait_for(|g| *g == Goal::Stopped).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            st = child.wait() => Ok(st),
            _ = timeout => Err(true),
            _ = stop_requested => Err(false),
        };
        match outcome {
            Ok(Ok(st)) => {
                let (result, text) = classify(&Exit::Status(st), false);
                if result.is_success() {
                    Ok(())
                } else if cmd.ignore_failure {
                    note(
                        self.shared.log_path(&self.name),
                        format!("{what} {text} (ignored)"),
                    )
                    .await;
                    Ok(())
                } else {
                    Err(Interrupt::Failed(
                        result,
                        format!("{}: {what} {text}", self.name),
                    ))
                }
            }
            Ok(Err(e)) => Err(Interrupt::Failed(
                RunResult::Resources,
                format!("{}: {what}: waiting: {e}", self.name),
            )),
            Err(timed_out) => {
                // Stop the command and everything it started before moving on.
                self.kill_sessions_of(&mut child, pid).await;
                if timed_out {
                    Err(Interrupt::Failed(
                        RunResult::Timeout,
                        format!("{}: {what} timed out", self.name),
                    ))
                } else {
                    Err(Interrupt::Stop)
                }
            }
        }
    }

    async fn kill_sessions_of(&self, child: &mut sys::Child, sid: i32) {
        let sig = self.cfg.policy.kill_signal;
        let sessions = vec![sid];
        let s = sessions.clone();
        blocking(move || sys::signal_sessions(&s, sig)).await;
        let timeout = self
            .cfg
            .policy
            .timeout_stop
            .unwrap_or(Duration::from_secs(90));
        if tokio::time::timeout(timeout, child.wait()).await.is_err() {
            blocking(move || sys::signal_sessions(&sessions, Signal::SIGKILL)).await;
            let _ = child.wait().await;
        }
    }

    /// A new run: from start-pre to its end.
    async fn run(&mut self) -> RunEnd {
        self.shared.set_reason(&self.name, None);
        self.set(SubState::StartPre);
        let deadline = self.cfg.policy.timeout_start.map(|t| Instant::now() + t);
        if let Err(e) = self.prepare().await {
            self.fail_note(self.failure(&e)).await;
            return self.stop(false, RunResult::Resources, false).await;
        }
        let cfg = self.cfg.clone();
        for cmd in &cfg.exec.start_pre {
            if let Err(i) = self.run_command("ExecStartPre", cmd, deadline, true).await {
                return self.interrupted(i, false).await;
            }
        }
        self.set(SubState::Start);
        match cfg.service_type {
            ServiceType::Oneshot => {
                for cmd in &cfg.exec.start {
                    if let Err(i) = self.run_command("ExecStart", cmd, deadline, true).await {
                        return self.interrupted(i, false).await;
                    }
                }
            }
            ServiceType::Simple | ServiceType::Exec => {
                let Some(cmd) = cfg.exec.start.first() else {
                    return self.stop(false, RunResult::Resources, false).await;
                };
                match self.spawn(cmd, &[]).await {
                    Ok((child, pid)) => self.main = Some(MainProc::Child { child, pid }),
                    Err(e) => {
                        self.fail_note(format!("ExecStart: {}", self.failure(&e)))
                            .await;
                        return self.stop(false, RunResult::Resources, false).await;
                    }
                }
                self.record(RecordedState::Running).await;
            }
            ServiceType::Forking => {
                let Some(cmd) = cfg.exec.start.first() else {
                    return self.stop(false, RunResult::Resources, false).await;
                };
                if let Err(i) = self.run_command("ExecStart", cmd, deadline, true).await {
                    return self.interrupted(i, false).await;
                }
                match self.read_pid_file(deadline).await {
                    Ok((pid, start_time)) => {
                        self.main = Some(MainProc::Foreign { pid, start_time })
                    }
                    Err(i) => return self.interrupted(i, false).await,
                }
                self.record(RecordedState::Running).await;
            }
        }
        if !cfg.exec.start_post.is_empty() {
            self.set(SubState::StartPost);
            for cmd in &cfg.exec.start_post {
                if let Err(i) = self.run_command("ExecStartPost", cmd, deadline, true).await {
                    return self.interrupted(i, true).await;
                }
            }
        }
        if cfg.service_type == ServiceType::Oneshot {
            if !cfg.remain_after_exit {
                return self.stop(false, RunResult::Success, true).await;
            }
            self.set(SubState::Exited);
            self.record(RecordedState::Exited).await;
            let mut g = self.goal.clone();
            let _ = g.wait_for(|g| *g == Goal::Stopped).await;
            return self.stop(true, RunResult::Success, true).await;
        }
        self.set(SubState::Running);
        note(
            self.shared.log_path(&self.name),
            format!(
                "started {} (main pid {})",
                self.name,
                self.main.as_ref().map(|m| m.pid()).unwrap_or(0)
            ),
        )
        .await;
        self.watch_running().await
    }

    /// A unit found running at start-up: watched, never restarted by the adoption itself.
    async fn resume(&mut self, adopted: Adopted) -> RunEnd {
        // Commands run while stopping need the unit's environment.
        if let Err(e) = self.prepare().await {
            tracing::warn!(unit = %self.name, "{}", self.failure(&e));
        }
        match adopted {
            Adopted::Running {
                pid,
                start_time,
                sessions,
            } => {
                self.main = Some(MainProc::Foreign { pid, start_time });
                self.sessions = sessions;
                self.set(SubState::Running);
                self.watch_running().await
            }
            Adopted::Exited => {
                self.set(SubState::Exited);
                let mut g = self.goal.clone();
                let _ = g.wait_for(|g| *g == Goal::Stopped).await;
                self.stop(true, RunResult::Success, true).await
            }
        }
    }

    async fn watch_running(&mut self) -> RunEnd {
        let mut g = self.goal.clone();
        let exited = match &mut self.main {
            Some(main) => tokio::select! {
                exit = main.wait() => Some(exit),
                _ = g.wait_for(|g| *g == Goal::Stopped) => None,
            },
            None => {
                let _ = g.wait_for(|g| *g == Goal::Stopped).await;
                None
            }
        };
        match exited {
            Some(exit) => {
                let (result, text) = classify(&exit, true);
                let reason = format!("{}: main process {text}", self.name);
                note(self.shared.log_path(&self.name), reason.clone()).await;
                if !result.is_success() {
                    self.shared.set_reason(&self.name, Some(reason));
                }
                self.stop(false, result, true).await
            }
            None => self.stop(true, RunResult::Success, true).await,
        }
    }

    async fn interrupted(&mut self, i: Interrupt, started: bool) -> RunEnd {
        match i {
            Interrupt::Stop => self.stop(true, RunResult::Success, started).await,
            Interrupt::Failed(result, reason) => {
                self.fail_note(reason).await;
                self.stop(false, result, started).await
            }
        }
    }

    async fn read_pid_file(&mut self, deadline: Option<Instant>) -> Result<(i32, u64), Interrupt> {
        let Some(path) = self.cfg.pid_file.clone() else {
            return Err(Interrupt::Failed(
                RunResult::Resources,
                format!("{}: no PIDFile=", self.name),
            ));
        };
        loop {
            let p = path.clone();
            let found = blocking(move || {
                let pid: i32 = std::fs::read_to_string(&p).ok()?.trim().parse().ok()?;
                let st = sys::proc_stat(pid)?;
                (pid > 1 && st.state != 'Z').then_some((pid, st.start_time))
            })
            .await;
            if let Some(f) = found {
                return Ok(f);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Interrupt::Failed(
                    RunResult::Timeout,
                    format!(
                        "{}: PIDFile={} did not name a running process in time",
                        self.name,
                        path.display()
                    ),
                ));
            }
            if *self.goal.borrow() == Goal::Stopped {
                return Err(Interrupt::Stop);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the processes a kill phase waits for are gone.
    async fn gone(&mut self, whole_unit: bool) -> bool {
        let main_gone = match &mut self.main {
            Some(m) => m.try_exit().is_some(),
            None => true,
        };
        if !main_gone {
            return false;
        }
        if !whole_unit {
            return true;
        }
        let s = self.sessions.clone();
        blocking(move || sys::session_members(&s)).await.is_empty()
    }

    async fn wait_gone(&mut self, whole_unit: bool, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.gone(whole_unit).await {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn signal(&self, sig: Signal, whole_unit: bool) {
        if let Some(m) = &self.main {
            sys::signal_pid(m.pid(), sig);
        }
        if whole_unit {
            let s = self.sessions.clone();
            blocking(move || sys::signal_sessions(&s, sig)).await;
        }
    }

    /// systemd's stop-sigterm / stop-sigkill (or final-*) phases. Returns false if SIGKILL
    /// was needed.
    async fn kill_phase(&mut self, final_phase: bool) -> bool {
        let mode = self.cfg.policy.kill_mode;
        if mode == KillMode::None {
            return true;
        }
        let group = mode == KillMode::ControlGroup;
        if self.gone(group).await && (mode != KillMode::Mixed || self.gone(true).await) {
            return true;
        }
        let (term, kill) = if final_phase {
            (SubState::FinalSigterm, SubState::FinalSigkill)
        } else {
            (SubState::StopSigterm, SubState::StopSigkill)
        };
        self.set(term);
        self.signal(self.cfg.policy.kill_signal, group).await;
        let timeout = self.cfg.policy.timeout_stop;
        let mut clean = self.wait_gone(group, timeout).await;
        if !clean {
            note(
                self.shared.log_path(&self.name),
                format!("{}: {term} timed out; sending SIGKILL", self.name),
            )
            .await;
        }
        if !clean || (mode == KillMode::Mixed && !self.gone(true).await) {
            self.set(kill);
            let all = mode != KillMode::Process;
            self.signal(Signal::SIGKILL, all).await;
            // SIGKILL cannot be ignored; the bound only covers processes stuck in the kernel.
            if !self
                .wait_gone(all, Some(timeout.unwrap_or(Duration::from_secs(90))))
                .await
            {
                note(
                    self.shared.log_path(&self.name),
                    format!(
                        "{}: processes survived SIGKILL; giving up on them",
                        self.name
                    ),
                )
                .await;
            }
            if mode == KillMode::Mixed && self.main.as_mut().is_some_and(|m| m.try_exit().is_none())
            {
                clean = false;
            }
        }
        clean
    }

    /// From wherever the run is to its end: ExecStop (if it started), the kill phases,
    /// ExecStopPost, then the record is removed.
    async fn stop(&mut self, requested: bool, mut result: RunResult, started: bool) -> RunEnd {
        let cfg = self.cfg.clone();
        let stop_deadline = || cfg.policy.timeout_stop.map(|t| Instant::now() + t);
        let main_running = match &mut self.main {
            Some(m) => m.try_exit().is_none(),
            None => cfg.service_type == ServiceType::Oneshot,
        };
        if started && main_running && !cfg.exec.stop.is_empty() {
            self.set(SubState::Stop);
            let deadline = stop_deadline();
            for cmd in &cfg.exec.stop {
                if let Err(Interrupt::Failed(r, reason)) =
                    self.run_command("ExecStop", cmd, deadline, false).await
                {
                    self.fail_note(reason).await;
                    if result.is_success() {
                        result = r;
                    }
                }
            }
        }
        if !self.kill_phase(false).await && result.is_success() {
            result = RunResult::Timeout;
        }
        // A main process that answers a requested stop with a non-zero exit code makes the
        // unit failed, as in systemd (hence SuccessExitStatus=143 in many Java units).
        if requested && result.is_success() {
            if let Some(Exit::Status(st)) = self.main.as_mut().and_then(|m| m.try_exit()) {
                if let Some(code @ 1..) = st.code() {
                    self.fail_note(format!(
                        "{}: main process exited with status {code} while stopping",
                        self.name
                    ))
                    .await;
                    result = RunResult::ExitCode;
                }
            }
        }
        if !cfg.exec.stop_post.is_empty() {
            self.set(SubState::StopPost);
            let deadline = stop_deadline();
            for cmd in &cfg.exec.stop_post {
                if let Err(Interrupt::Failed(r, reason)) =
                    self.run_command("ExecStopPost", cmd, deadline, false).await
                {
                    self.fail_note(reason).await;
                    if result.is_success() {
                        result = r;
                    }
                }
            }
            self.kill_phase(true).await;
        }
        self.shared.remove_record(&self.name).await;
        if requested && result.is_success() {
            note(
                self.shared.log_path(&self.name),
                format!("stopped {}", self.name),
            )
            .await;
        }
        RunEnd { result, requested }
    }
}

/// Why a run has no log.
#[derive(Debug, thiserror::Error)]
enum ForwarderError {
    #[error("creating the log pipe")]
    Pipe(#[source] nix::errno::Errno),
    #[error("starting the log forwarder {}", helper.display())]
    Start {
        helper: PathBuf,
        #[source]
        source: SpawnError,
    },
}

/// Starts the unit's log forwarder (see [`super::log`]) and returns the write end of its pipe.
fn start_forwarder(helper: &Path, log: &Path) -> Result<OwnedFd, ForwarderError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ForwarderError::Pipe)?;
    let argv = [
        helper.to_string_lossy().into_owned(),
        HELPER_ARG.to_string(),
        "log-forward".to_string(),
        log.to_string_lossy().into_owned(),
        MAX_LOG_BYTES.to_string(),
    ];
    // Its own session, so that signals for fleetd's process group (Ctrl-C) or for the unit's
    // sessions do not reach it.
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let mut child = sys::spawn_in_session(
        &argv,
        &env,
        Some(Path::new("/")),
        super::spawn::Stdio {
            stdin: Some(&read),
            output: None,
        },
    )
    .map_err(|source| ForwarderError::Start {
        helper: helper.into(),
        source,
    })?;
    // Reap it when it ends (if fleetd still runs by then).
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        use RestartPolicy::*;
        use RunResult::*;
        let results = [Success, ExitCode, Signal, Timeout, Resources, Unknown];
        let table: &[(RestartPolicy, [bool; 6])] = &[
            (No, [false, false, false, false, false, false]),
            (Always, [true, true, true, true, true, true]),
            (OnSuccess, [true, false, false, false, false, false]),
            (OnFailure, [false, true, true, true, true, true]),
            (OnAbnormal, [false, false, true, true, false, true]),
            (OnAbort, [false, false, true, false, false, true]),
        ];
        for (policy, want) in table {
            for (r, w) in results.iter().zip(want) {
                assert_eq!(should_restart(*policy, *r), *w, "{policy:?} {r:?}");
            }
        }
    }

    #[test]
    fn exit_classification() {
        let code = |c: i32| Exit::Status(ExitStatus::from_raw(c << 8));
        let sig = |s: i32| Exit::Status(ExitStatus::from_raw(s));
        assert_eq!(classify(&code(0), true).0, RunResult::Success);
        assert_eq!(classify(&code(3), true).0, RunResult::ExitCode);
        assert_eq!(classify(&sig(15), true).0, RunResult::Success);
        assert_eq!(classify(&sig(15), false).0, RunResult::Signal);
        assert_eq!(classify(&sig(9), true).0, RunResult::Signal);
        assert_eq!(classify(&Exit::Unknown, true).0, RunResult::Unknown);
    }
}
