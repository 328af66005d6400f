//! One task per loaded service: drives it through systemd's states (start-pre, start,
//! start-post, running/exited, stop, stop-sigterm, stop-sigkill, stop-post, dead/failed,
//! auto-restart) as its goal (started or stopped) and its processes change.
//!
//! This module holds the task's loop: restarts and the start rate limit. One run, from its
//! first command to its end, is a [`run::Run`]: its start sequence in [`run`], how it prepares
//! and runs commands in [`command`], its stop sequence in [`stop`].

mod command;
mod process;
mod run;
mod stop;

use crate::config::RestartPolicy;
use crate::units::Shared;
use crate::SubState;
use run::Run;
use std::collections::VecDeque;
use std::sync::Arc;
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

/// A running unit found at start-up (see [`crate::Builder::open`]).
pub enum Adopted {
    Running {
        pid: i32,
        start_time: u64,
        sessions: Vec<i32>,
    },
    Exited,
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
        let mut run = Run::new(shared.clone(), name.clone(), cfg.clone(), goal.clone());
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
                shared.note(&name, reason.clone()).await;
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
}
