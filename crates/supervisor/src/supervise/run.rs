//! One run of a unit: its start sequence (ExecStartPre, ExecStart, ExecStartPost), then
//! watching it until it ends or is stopped.

use super::process::{blocking, classify, MainProc};
use super::{Adopted, Goal, RunEnd, RunResult};
use crate::config::{ServiceConfig, ServiceType};
use crate::error::chain;
use crate::forwarder::HeldPipe;
use crate::sys::{self, Credentials};
use crate::units::{RecordedState, RunRecord, Shared};
use crate::SubState;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a phase of the run did not complete.
pub(super) enum Interrupt {
    /// The goal became `Stopped`.
    Stop,
    Failed(RunResult, String),
}

/// One run of a unit, from its first command to its end.
pub(super) struct Run {
    pub(super) shared: Arc<Shared>,
    pub(super) name: String,
    pub(super) cfg: Arc<ServiceConfig>,
    pub(super) goal: watch::Receiver<Goal>,
    /// The commands' environment, working directory and account, read when the run starts.
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) credentials: Option<Credentials>,
    /// The write end of the log pipe and the reading end kept while the run lasts, once the
    /// forwarder has the pipe.
    pub(super) output: Option<(OwnedFd, HeldPipe)>,
    pub(super) main: Option<MainProc>,
    /// Every command's session: what a stop signals.
    pub(super) sessions: Vec<i32>,
}

impl Run {
    pub(super) fn new(
        shared: Arc<Shared>,
        name: String,
        cfg: Arc<ServiceConfig>,
        goal: watch::Receiver<Goal>,
    ) -> Run {
        Run {
            shared,
            name,
            cfg,
            goal,
            env: BTreeMap::new(),
            cwd: None,
            credentials: None,
            output: None,
            main: None,
            sessions: Vec::new(),
        }
    }

    pub(super) fn set(&self, sub: SubState) {
        self.shared.set_state(&self.name, sub);
    }

    pub(super) async fn fail_note(&self, reason: String) {
        self.shared.note(&self.name, reason.clone()).await;
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

    /// A new run: from start-pre to its end.
    pub(super) async fn run(&mut self) -> RunEnd {
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
        self.shared
            .note(
                &self.name,
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
    pub(super) async fn resume(&mut self, adopted: Adopted) -> RunEnd {
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
                self.shared.note(&self.name, reason.clone()).await;
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
}
