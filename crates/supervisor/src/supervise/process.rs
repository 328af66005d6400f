//! The main process of a run: a child of this process, or one it only knows by pid (re-adopted
//! after a restart of fleetd, or named by a forking service's PID file).

use super::RunResult;
use crate::sys;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

pub(super) enum MainProc {
    Child { child: sys::Child, pid: i32 },
    Foreign { pid: i32, start_time: u64 },
}

pub(super) enum Exit {
    Status(ExitStatus),
    Unknown,
}

impl MainProc {
    pub(super) fn pid(&self) -> i32 {
        match self {
            MainProc::Child { pid, .. } | MainProc::Foreign { pid, .. } => *pid,
        }
    }

    /// Cancel-safe: waits until the main process is gone.
    pub(super) async fn wait(&mut self) -> Exit {
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

    pub(super) fn try_exit(&mut self) -> Option<Exit> {
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
pub(super) async fn blocking<T: Send + Default + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_default()
}

pub(super) fn classify(exit: &Exit, main: bool) -> (RunResult, String) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
