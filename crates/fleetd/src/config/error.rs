use std::path::PathBuf;

use super::{IniSyntaxError, Source};

/// Why fleetd cannot start with the configuration it was given. Each message names the
/// option, value and source (or file and line) at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `invalid value "3x" for agent_ttl (from FLEET_AGENT_TTL): invalid duration: ...`
    #[error("invalid value {value:?} for {option} (from {origin}): {reason}")]
    InvalidValue {
        option: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
    /// fleet's message, word for word.
    #[error("fleetd takes no arguments. Did you mean to invoke fleetctl instead?")]
    UnexpectedArguments { args: Vec<String> },
    /// A command-line error as clap words it (unknown flag, missing value, ...), with usage.
    #[error("{0}")]
    Usage(String),
    #[error("cannot use config file {} ({via}): {reason}", path.display())]
    ConfigFile {
        path: PathBuf,
        via: &'static str,
        reason: String,
    },
    #[error("syntax error in config file {} {error}", path.display())]
    Syntax {
        path: PathBuf,
        error: IniSyntaxError,
    },
    /// Options that are fine alone but not together.
    #[error("{0}")]
    Conflict(String),
    #[error("cannot determine the machine ID: {0}")]
    MachineId(String),
}
