//! A run's stop sequence: ExecStop, the kill phases (SIGTERM, then SIGKILL after
//! `TimeoutStopSec=`), ExecStopPost.

use super::process::{blocking, Exit};
use super::run::{Interrupt, Run};
use super::{RunEnd, RunResult};
use crate::config::{KillMode, ServiceType};
use crate::{sys, SubState};
use nix::sys::signal::Signal;
use std::time::Duration;
use tokio::time::Instant;

impl Run {
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
            self.shared
                .note(
                    &self.name,
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
                self.shared
                    .note(
                        &self.name,
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
    pub(super) async fn stop(
        &mut self,
        requested: bool,
        mut result: RunResult,
        started: bool,
    ) -> RunEnd {
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
            self.shared
                .note(&self.name, format!("stopped {}", self.name))
                .await;
        }
        RunEnd { result, requested }
    }
}
