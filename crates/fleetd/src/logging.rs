//! fleetd's logs (`log_format`): human-readable text on stderr, one JSON object a line
//! (`json`), or journald's native protocol (`journald`), where each field of a line (`unit`,
//! `machine`, `revision`, ...) is a journal field of its own: `journalctl UNIT=hello.service`.
//! `auto` picks journald when stderr is the journal (systemd's `JOURNAL_STREAM`), else text.
//! Info and above by default, debug when `verbosity` > 0; `RUST_LOG` overrides.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where journald listens for its native protocol.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// `log_format` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// journald when stderr is connected to the journal, text otherwise.
    Auto,
    Text,
    Json,
    Journald,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Auto => "auto",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            "journald" => Ok(LogFormat::Journald),
            _ => Err("expected auto, text, json or journald".into()),
        }
    }
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of the
/// stream it connects a service's stderr to, and a process compares it with its own stderr
/// (sd_journal_stream_fd(3)); a child that inherited the variable but not the stream is not
/// connected. The journal's socket must exist too, since the native protocol goes there.
pub fn stderr_is_journal(journal_stream: Option<&str>, socket: &Path) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    #[allow(clippy::useless_conversion)] // dev_t and ino_t are not u64 on every target
    let same = u64::from(st.st_dev) == dev && u64::from(st.st_ino) == ino;
    same && socket.exists()
}

/// The format `format` means here: `auto` resolved.
pub fn resolve(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto => {
            let stream = std::env::var("JOURNAL_STREAM").ok();
            if stderr_is_journal(stream.as_deref(), Path::new(JOURNAL_SOCKET)) {
                LogFormat::Journald
            } else {
                LogFormat::Text
            }
        }
        other => other,
    }
}

/// Installs the global logger. Fails only for `journald` when the journal cannot be reached.
pub fn init(verbosity: i32, format: LogFormat) -> Result<(), String> {
    let default = if verbosity > 0 { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    // A logger already installed (a test calling this twice) is left as it is.
    let _ = match resolve(format) {
        LogFormat::Journald => {
            let journald = tracing_journald::layer()
                .map_err(|e| {
                    format!(
                        "log_format journald: cannot open the journal's socket {JOURNAL_SOCKET}: {e}; \
                         run fleetd under systemd, or choose log_format text or json"
                    )
                })?
                // Fields as they are named in the code (UNIT, MACHINE, REVISION), not F_UNIT:
                // what an operator types after journalctl.
                .with_field_prefix(None)
                .with_syslog_identifier("fleetd".to_string());
            registry.with(journald).try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text | LogFormat::Auto => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only on a terminal: a log file would keep the escapes.
                    .with_ansi(
                        std::io::IsTerminal::is_terminal(&std::io::stderr())
                            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                    )
                    .with_target(false),
            )
            .try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_back_as_written() {
        for f in [
            LogFormat::Auto,
            LogFormat::Text,
            LogFormat::Json,
            LogFormat::Journald,
        ] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn the_journal_only_when_journal_stream_names_stderr() {
        let st = nix::sys::stat::fstat(std::io::stderr()).expect("fstat stderr");
        let mine = format!("{}:{}", st.st_dev, st.st_ino);
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("socket");
        std::fs::write(&socket, "").expect("stand-in socket");
        assert!(stderr_is_journal(Some(&mine), &socket));
        assert!(!stderr_is_journal(Some(&mine), &dir.path().join("none")));
        assert!(!stderr_is_journal(Some("1:2"), &socket));
        assert!(!stderr_is_journal(Some("nonsense"), &socket));
        assert!(!stderr_is_journal(None, &socket));
    }
}
