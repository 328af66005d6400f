//! Errors of the manager's operations. Each names the unit or file and says what failed; the
//! operating system's reason is its `source()`, so `{:#}` of an `anyhow::Error` made from one
//! prints the whole story.

use crate::config::ConfigError;
use crate::UnitStatus;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a [`ProcessManager`](crate::ProcessManager) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid unit name {0:?}: want a file name such as web.service")]
    InvalidName(String),
    #[error("{0}: not loaded; load it before starting it")]
    StartNotLoaded(String),
    #[error("{0}: not loaded")]
    NotLoaded(String),
    /// A start of a unit whose file the supervisor cannot run.
    #[error(transparent)]
    Unrunnable(#[from] ConfigError),
    #[error("{unit}: did not stop within {timeout:?} (state {status}); its file stays so that it can be stopped later")]
    StopTimeout {
        unit: String,
        timeout: Duration,
        status: UnitStatus,
    },
    #[error("{unit}: writing {}", path.display())]
    WriteUnitFile {
        unit: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{unit}: removing {}", path.display())]
    RemoveUnitFile {
        unit: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ProcessManager must be created inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("finding fleetd's own executable (the log forwarder)")]
    OwnExecutable(#[source] io::Error),
    #[error("running the process supervisor's helper {}", path.display())]
    RunHelper {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} does not act as the process supervisor's log forwarder: its main must call supervisor::run_helper_if_requested() first (or set FLEET_PROCESS_HELPER to fleet-process-helper)", path.display())]
    NotAHelper { path: PathBuf },
    #[error("setting up the log forwarder")]
    Forwarder(#[source] crate::forwarder::ForwarderError),
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `error: cause: cause`, the way `{:#}` prints an `anyhow::Error`: for failure reasons and
/// log lines.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_read_like_anyhow() {
        let e = Error::WriteUnitFile {
            unit: "a.service".into(),
            path: "/run/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let text = chain(&e);
        assert!(
            text.starts_with("a.service: writing /run/x: No space left on device"),
            "{text}"
        );
        let e = Error::Unrunnable(ConfigError::NoExecStart {
            unit: "a.service".into(),
        });
        assert_eq!(
            chain(&e),
            "a.service: no ExecStart= (only Type=oneshot services may omit it)"
        );
    }
}
