//! fleetd configuration: fleet's options (same names, defaults and meaning) plus ours,
//! read from command-line flags, `FLEET_*` environment variables, the INI config file and
//! defaults, strongest first.
//!
//! ```no_run
//! use std::path::Path;
//! use fleetd::config::{self, Loaded};
//!
//! let loaded = config::load(std::env::args_os(), &config::process_env,
//!                           Path::new(config::DEFAULT_CONFIG_FILE));
//! let cfg = match loaded {
//!     Ok(Loaded::Run(cfg)) => cfg,
//!     Ok(Loaded::Version(text)) | Ok(Loaded::Help(text)) => { print!("{text}"); return; }
//!     // `fleetd completion SHELL`, `fleetd man DIR`: see main.rs.
//!     Ok(Loaded::Completion(_)) | Ok(Loaded::ManPages(_)) => return,
//!     Err(err) => { eprintln!("fleetd: {err}"); std::process::exit(1); }
//! };
//! for warning in &cfg.warnings { eprintln!("warning: {warning}"); }
//! let machine_id = cfg.resolve_machine_id(Path::new(config::MACHINE_ID_FILE));
//! // On SIGHUP: the same flags, the file and the environment read again.
//! let newer = cfg.reload(&config::process_env);
//! ```
//!
//! Differences from fleet, on purpose:
//! * every option is also a flag (`--agent-ttl 3s`); fleet only had `--config`/`--version`;
//! * a bad value stops fleetd naming the option, the value and its source; a metadata pair
//!   without `=` is such an error (fleet dropped it silently);
//! * a reload starts from the defaults again, so an option removed from the file reverts
//!   to its default (fleet kept the previous value);
//! * unknown keys and keys inside `[sections]` of the file produce warnings;
//! * `etcd_certfile` and `etcd_keyfile` must be given together;
//! * the API options are ours: `api_tls_cert` and `api_tls_key` go together, and
//!   `api_tls_client_ca` needs them (fleet's API had neither TLS nor authentication).

mod cli;
pub mod duration;
mod error;
mod ini;
mod options;
mod value;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use error::ConfigError;
pub use ini::{parse_ini, IniEntry, IniFile, IniSyntaxError};
pub use value::{validate_machine_id, ListenAddr};

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/fleet/fleet.conf";
/// Where the machine ID comes from when `machine_id` is not set.
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";
/// Present when the host was booted with systemd (`sd_booted(3)`).
pub const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// Run fleetd with this configuration.
    Run(Box<Config>),
    /// `--version` or `fleetd version`: print this (ends with a newline) and exit 0.
    Version(String),
    /// `--help`: print this and exit 0.
    Help(String),
    /// `fleetd completion SHELL`: print [`completion`]`(shell)` and exit 0.
    Completion(clap_complete::Shell),
    /// `fleetd man DIR`: write [`man_pages`]`(dir)` and exit 0 (for packagers).
    ManPages(PathBuf),
}

/// fleetd's completion script for `shell`, generated from the parser's own definitions.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli::command(), "fleetd", &mut out);
    out
}

/// Writes fleetd's manual page (`fleetd.1`, roff) into `dir`, generated from the definitions
/// `--help` prints, and returns its path.
pub fn man_pages(dir: &Path) -> std::io::Result<PathBuf> {
    clap_mangen::Man::new(cli::command().version(env!("CARGO_PKG_VERSION"))).generate_to(dir)
}

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The long flag, e.g. `--agent-ttl`.
    Flag(String),
    /// The environment variable, e.g. `FLEET_AGENT_TTL`.
    Env(String),
    /// A `key = value` line of the config file.
    File {
        path: PathBuf,
        line: usize,
    },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::Env(var) => write!(f, "{var}"),
            Source::File { path, line } => write!(f, "{} line {line}", path.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

/// `registry`: where cluster state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryKind {
    /// An etcd v3 cluster at `etcd_servers`.
    Etcd,
    /// A store inside fleetd, under `state_dir`: a cluster of one machine, no etcd.
    Embedded,
}

impl fmt::Display for RegistryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistryKind::Etcd => "etcd",
            RegistryKind::Embedded => "embedded",
        })
    }
}

impl FromStr for RegistryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "etcd" => Ok(RegistryKind::Etcd),
            "embedded" => Ok(RegistryKind::Embedded),
            _ => Err("expected etcd or embedded".into()),
        }
    }
}

/// `unit_manager` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitManagerChoice {
    /// systemd if the host runs it ([`systemd_booted`]), else process.
    Auto,
    Systemd,
    Process,
}

/// The unit manager fleetd actually uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitManagerKind {
    Systemd,
    Process,
}

impl UnitManagerChoice {
    /// `systemd_booted`: pass [`systemd_booted()`] in fleetd, a constant in tests.
    pub fn resolve(self, systemd_booted: bool) -> UnitManagerKind {
        match self {
            UnitManagerChoice::Systemd => UnitManagerKind::Systemd,
            UnitManagerChoice::Process => UnitManagerKind::Process,
            UnitManagerChoice::Auto if systemd_booted => UnitManagerKind::Systemd,
            UnitManagerChoice::Auto => UnitManagerKind::Process,
        }
    }
}

/// Whether this host runs systemd as init, the way `sd_booted(3)` tells.
pub fn systemd_booted() -> bool {
    Path::new(SYSTEMD_RUNTIME_DIR).is_dir()
}

impl fmt::Display for UnitManagerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnitManagerChoice::Auto => "auto",
            UnitManagerChoice::Systemd => "systemd",
            UnitManagerChoice::Process => "process",
        })
    }
}

impl fmt::Display for UnitManagerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnitManagerKind::Systemd => "systemd",
            UnitManagerKind::Process => "process",
        })
    }
}

impl FromStr for UnitManagerChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(UnitManagerChoice::Auto),
            "systemd" => Ok(UnitManagerChoice::Systemd),
            "process" => Ok(UnitManagerChoice::Process),
            _ => Err("expected auto, systemd or process".into()),
        }
    }
}

/// A string kept out of `Debug` output and logs (`etcd_password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// fleetd's configuration. Meaning of each option: `dist/fleet.conf.sample` and
/// `fleetd --help`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Greater than 0 enables debug logging.
    pub verbosity: i32,
    pub log_format: crate::logging::LogFormat,
    pub etcd_servers: Vec<String>,
    pub etcd_request_timeout: Duration,
    pub etcd_cafile: Option<PathBuf>,
    /// Always `Some` together with `etcd_keyfile`.
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<Secret>,
    pub etcd_key_prefix: String,
    /// `None`: detect it.
    pub public_ip: Option<IpAddr>,
    pub metadata: BTreeMap<String, String>,
    /// Greater than zero.
    pub agent_ttl: Duration,
    /// Greater than zero.
    pub engine_reconcile_interval: Duration,
    pub units_directory: PathBuf,
    pub systemd_user: bool,
    /// Page size of API list responses; page tokens store it as `u16`. At least 1.
    pub token_limit: u16,
    pub disable_engine: bool,
    pub disable_watches: bool,
    pub registry: RegistryKind,
    pub state_dir: PathBuf,
    /// `None`: use [`Config::resolve_machine_id`] to read `/etc/machine-id`.
    pub machine_id: Option<String>,
    pub unit_manager: UnitManagerChoice,
    /// May be empty: then only sockets passed by systemd (`LISTEN_FDS`) are served.
    pub api_listen: Vec<ListenAddr>,
    /// TLS for TCP listeners; always `Some` together.
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    /// Mutual TLS: clients need a certificate signed by this CA. Needs `api_tls_cert`.
    pub api_tls_client_ca: Option<PathBuf>,
    pub api_tokens_file: Option<PathBuf>,
    pub api_insecure_tcp: bool,
    /// Group name or GID of the unix sockets fleetd creates.
    pub api_socket_group: Option<String>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Problems that do not stop fleetd (deprecated or unknown options, ...); log them.
    pub warnings: Vec<String>,
    sources: BTreeMap<&'static str, Source>,
    invocation: Invocation,
}

/// What `load` was called with, kept for `reload`.
#[derive(Debug, Clone, PartialEq, Default)]
struct Invocation {
    args: Vec<OsString>,
    default_file: PathBuf,
}

impl Default for Config {
    /// Every option at its default, as if no flag, variable or file set anything.
    fn default() -> Self {
        Config {
            verbosity: 0,
            log_format: crate::logging::LogFormat::Auto,
            etcd_servers: vec![
                "http://127.0.0.1:2379".to_string(),
                "http://127.0.0.1:4001".to_string(),
            ],
            etcd_request_timeout: Duration::from_secs(1),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            etcd_key_prefix: "/_coreos.com/fleet/".to_string(),
            public_ip: None,
            metadata: BTreeMap::new(),
            agent_ttl: Duration::from_secs(30),
            engine_reconcile_interval: Duration::from_secs(2),
            units_directory: PathBuf::from("/run/fleet/units/"),
            systemd_user: false,
            token_limit: 100,
            disable_engine: false,
            disable_watches: false,
            registry: RegistryKind::Etcd,
            state_dir: PathBuf::from("/var/lib/fleet"),
            machine_id: None,
            unit_manager: UnitManagerChoice::Auto,
            api_listen: vec![ListenAddr::Unix(PathBuf::from("/var/run/fleet.sock"))],
            api_tls_cert: None,
            api_tls_key: None,
            api_tls_client_ca: None,
            api_tokens_file: None,
            api_insecure_tcp: false,
            api_socket_group: None,
            config_file: None,
            warnings: Vec::new(),
            sources: BTreeMap::new(),
            invocation: Invocation::default(),
        }
    }
}

/// One option's effective value, for logging at start (`Config::describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionValue {
    pub name: &'static str,
    /// As it would be written in fleet.conf; `etcd_password` is masked.
    pub value: String,
    pub source: Source,
}

/// Reads the environment of this process (for [`load`]'s `env`). A value that is not
/// UTF-8 is passed on lossily, so its option reports it as invalid instead of ignoring it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Reads the configuration.
///
/// * `args`: the whole command line, program name first (`std::env::args_os()`);
/// * `env`: looks up an environment variable (`&process_env`, or a map in tests); a
///   variable that is set but empty counts as set (as in fleet), e.g. `FLEET_PUBLIC_IP=`;
/// * `default_file`: read when `--config` is not given, if it exists
///   ([`DEFAULT_CONFIG_FILE`]).
pub fn load<I, T>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let invocation = Invocation {
        args: args.into_iter().map(Into::into).collect(),
        default_file: default_file.to_path_buf(),
    };
    load_invocation(invocation, env)
}

impl Config {
    /// For SIGHUP: reads the config file and the environment again, with the flags and
    /// default file of the first `load`. Starts from the defaults, so an option removed
    /// from the file goes back to its default (fleet kept the old value).
    pub fn reload(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        match load_invocation(self.invocation.clone(), env)? {
            Loaded::Run(config) => Ok(*config),
            // The same arguments gave a configuration before, so this cannot happen; say so
            // rather than panic.
            Loaded::Version(_) | Loaded::Help(_) | Loaded::Completion(_) | Loaded::ManPages(_) => {
                Err(ConfigError::Usage(
                    "reload: the command line no longer asks to run fleetd".into(),
                ))
            }
        }
    }

    /// Where `option` (a fleet.conf key, e.g. `"agent_ttl"`) got its value; `None` for an
    /// unknown name. `Source::Default` for a config built with `Config::default()`.
    pub fn source(&self, option: &str) -> Option<&Source> {
        options::find(option)?;
        Some(self.sources.get(option).unwrap_or(&Source::Default))
    }

    /// Every option's value and source, in a stable order, to log at start.
    /// Deprecated options, which have no value, are left out.
    pub fn describe(&self) -> Vec<OptionValue> {
        options::OPTIONS
            .iter()
            .filter_map(|spec| {
                let show = spec.show?;
                let mut value = show(self);
                if spec.name == "etcd_password" && !value.is_empty() {
                    value = "********".to_string();
                }
                Some(OptionValue {
                    name: spec.name,
                    value,
                    source: self.source(spec.name).cloned().unwrap_or(Source::Default),
                })
            })
            .collect()
    }

    /// Names of the options whose value differs in `newer` (after a reload: what to log,
    /// and what needs restarting).
    pub fn changed_options(&self, newer: &Config) -> Vec<&'static str> {
        options::OPTIONS
            .iter()
            .filter_map(|spec| {
                let show = spec.show?;
                (show(self) != show(newer)).then_some(spec.name)
            })
            .collect()
    }

    /// This machine's ID: `machine_id` if set, else the contents of `machine_id_file`
    /// ([`MACHINE_ID_FILE`]), trimmed.
    pub fn resolve_machine_id(&self, machine_id_file: &Path) -> Result<String, ConfigError> {
        if let Some(id) = &self.machine_id {
            return Ok(id.clone());
        }
        let way_out =
            "set machine_id (--machine-id, FLEET_MACHINE_ID or machine_id in fleet.conf) \
                       or create the file with systemd-machine-id-setup";
        let text = std::fs::read_to_string(machine_id_file).map_err(|e| {
            ConfigError::MachineId(format!(
                "cannot read {}: {e}; {way_out}",
                machine_id_file.display()
            ))
        })?;
        let id = text.trim();
        validate_machine_id(id).map_err(|reason| {
            ConfigError::MachineId(format!(
                "{} does not hold a usable machine ID: {reason}; {way_out}",
                machine_id_file.display()
            ))
        })?;
        Ok(id.to_string())
    }

    /// Whether to log debug messages.
    pub fn debug(&self) -> bool {
        self.verbosity > 0
    }
}

fn version_text() -> String {
    format!("fleetd version {}\n", env!("CARGO_PKG_VERSION"))
}

fn load_invocation(
    invocation: Invocation,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    use clap::error::ErrorKind;

    let command = cli::command();
    let args = goflags::single_dash_long(&command, invocation.args.iter());
    let matches = match command.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp) => {
            return Ok(Loaded::Help(e.render().to_string()))
        }
        Err(e) => {
            // Our caller prefixes its own "fleetd: "; clap's "error: " would repeat it.
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text).trim_end();
            return Err(ConfigError::Usage(text.to_string()));
        }
    };

    let positional: Vec<String> = matches
        .get_many::<String>(cli::ARG_POSITIONAL)
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    match positional.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["version"] => return Ok(Loaded::Version(version_text())),
        ["completion", shell] => {
            return clap_complete::Shell::from_str(shell)
                .map(Loaded::Completion)
                .map_err(|e| ConfigError::Usage(format!("completion {shell:?}: {e}")))
        }
        ["man", dir] => return Ok(Loaded::ManPages(PathBuf::from(dir))),
        _ => {}
    }
    if !positional.is_empty() {
        return Err(ConfigError::UnexpectedArguments { args: positional });
    }
    if matches.get_flag(cli::ARG_VERSION) {
        return Ok(Loaded::Version(version_text()));
    }

    let given_file = matches
        .get_one::<String>(cli::ARG_CONFIG)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let mut config = Config::default();
    let (file, path) = read_config_file(given_file, &invocation.default_file)?;
    config.config_file = path.clone();

    // Last occurrence of a key in the file wins, as in goini's map.
    let mut file_values: BTreeMap<&str, &IniEntry> = BTreeMap::new();
    if let (Some(file), Some(path)) = (&file, &path) {
        for entry in &file.entries {
            if options::find(&entry.key).is_none() {
                config.warnings.push(format!(
                    "unknown option {:?} in {} line {} is ignored",
                    entry.key,
                    path.display(),
                    entry.line
                ));
                continue;
            }
            if let Some(earlier) = file_values.insert(&entry.key, entry) {
                config.warnings.push(format!(
                    "option {} is set twice in {} (lines {} and {}); line {} wins",
                    entry.key,
                    path.display(),
                    earlier.line,
                    entry.line,
                    entry.line
                ));
            }
        }
        for (section, entry) in &file.in_sections {
            config.warnings.push(format!(
                "option {:?} in section [{section}] of {} line {} is ignored: options must come before any [section]",
                entry.key,
                path.display(),
                entry.line
            ));
        }
    }

    for spec in options::OPTIONS {
        let env_var = spec.env_var();
        let (raw, source) = if let Some(v) = matches.get_one::<String>(spec.name) {
            (v.clone(), Source::Flag(format!("--{}", spec.flag)))
        } else if let Some(v) = env(&env_var) {
            (v, Source::Env(env_var))
        } else if let (Some(entry), Some(path)) = (file_values.get(spec.name), &path) {
            (
                entry.value.clone(),
                Source::File {
                    path: path.clone(),
                    line: entry.line,
                },
            )
        } else {
            (spec.default.to_string(), Source::Default)
        };
        let mut notes = Vec::new();
        (spec.apply)(&mut config, &raw, &mut notes).map_err(|reason| {
            ConfigError::InvalidValue {
                option: spec.name,
                value: raw.clone(),
                origin: source.clone(),
                reason,
            }
        })?;
        config
            .warnings
            .extend(notes.into_iter().map(|n| format!("{n} (from {source})")));
        config.sources.insert(spec.name, source);
    }

    if config.registry == RegistryKind::Etcd && config.etcd_servers.is_empty() {
        let origin = config
            .source("etcd_servers")
            .cloned()
            .unwrap_or(Source::Default);
        let value = match &origin {
            Source::Flag(_) => matches.get_one::<String>("etcd_servers").cloned(),
            Source::Env(var) => env(var),
            Source::File { .. } => file_values.get("etcd_servers").map(|e| e.value.clone()),
            Source::Default => None,
        };
        return Err(ConfigError::InvalidValue {
            option: "etcd_servers",
            value: value.unwrap_or_default(),
            origin,
            reason: value::NO_ETCD_SERVERS.to_string(),
        });
    }

    if config.etcd_certfile.is_some() != config.etcd_keyfile.is_some() {
        let describe = |name: &str| {
            let set = if name == "etcd_certfile" {
                config.etcd_certfile.is_some()
            } else {
                config.etcd_keyfile.is_some()
            };
            let source = config.source(name).cloned().unwrap_or(Source::Default);
            format!(
                "{name} is {} (from {source})",
                if set { "set" } else { "empty" }
            )
        };
        return Err(ConfigError::Conflict(format!(
            "{} but {}: a TLS client certificate needs its key; set both or neither",
            describe("etcd_certfile"),
            describe("etcd_keyfile")
        )));
    }

    check_api_tls(&config)?;

    config.invocation = invocation;
    Ok(Loaded::Run(Box::new(config)))
}

/// `api_tls_cert` and `api_tls_key` go together; `api_tls_client_ca` needs them.
fn check_api_tls(config: &Config) -> Result<(), ConfigError> {
    let describe = |name: &str, set: bool| {
        let source = config.source(name).cloned().unwrap_or(Source::Default);
        format!(
            "{name} is {} (from {source})",
            if set { "set" } else { "empty" }
        )
    };
    let (cert, key) = (config.api_tls_cert.is_some(), config.api_tls_key.is_some());
    if cert != key {
        return Err(ConfigError::Conflict(format!(
            "{} but {}: TLS needs the certificate and its key; set both or neither",
            describe("api_tls_cert", cert),
            describe("api_tls_key", key)
        )));
    }
    if config.api_tls_client_ca.is_some() && !cert {
        return Err(ConfigError::Conflict(format!(
            "{} but api_tls_cert and api_tls_key are empty: client certificates are checked during TLS; set api_tls_cert and api_tls_key too",
            describe("api_tls_client_ca", true)
        )));
    }
    Ok(())
}

/// fleet's rules: a file given with `--config` must exist and be a file; the default file
/// is used if it exists (and then must be readable).
fn read_config_file(
    given: Option<PathBuf>,
    default_file: &Path,
) -> Result<(Option<IniFile>, Option<PathBuf>), ConfigError> {
    let (path, via) = match given {
        Some(path) => (path, "given with --config"),
        None => match std::fs::metadata(default_file) {
            Ok(_) => (default_file.to_path_buf(), "default location"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
            Err(e) => {
                return Err(ConfigError::ConfigFile {
                    path: default_file.to_path_buf(),
                    via: "default location",
                    reason: e.to_string(),
                })
            }
        },
    };
    let fail = |reason: String| ConfigError::ConfigFile {
        path: path.clone(),
        via,
        reason,
    };
    let meta = std::fs::metadata(&path).map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        return Err(fail("it is a directory, not a file".into()));
    }
    let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let file = parse_ini(&text).map_err(|error| ConfigError::Syntax {
        path: path.clone(),
        error,
    })?;
    Ok((Some(file), Some(path)))
}

#[cfg(test)]
// Tests set a few fields of a default config one by one; that reads clearer here.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    #[test]
    fn table_defaults_parse_to_config_default() {
        let mut parsed = Config::default();
        // Start from values unlike every default so each apply must do its work.
        parsed.verbosity = 7;
        parsed.log_format = crate::logging::LogFormat::Json;
        parsed.etcd_servers.clear();
        parsed.etcd_request_timeout = Duration::from_secs(99);
        parsed.etcd_cafile = Some("/x".into());
        parsed.etcd_certfile = Some("/x".into());
        parsed.etcd_keyfile = Some("/x".into());
        parsed.etcd_username = Some("x".into());
        parsed.etcd_password = Some(Secret::new("x"));
        parsed.etcd_key_prefix.clear();
        parsed.public_ip = Some(IpAddr::from([1, 2, 3, 4]));
        parsed.metadata.insert("x".into(), "y".into());
        parsed.agent_ttl = Duration::from_secs(99);
        parsed.engine_reconcile_interval = Duration::from_secs(99);
        parsed.units_directory = "/x".into();
        parsed.systemd_user = true;
        parsed.token_limit = 7;
        parsed.disable_engine = true;
        parsed.disable_watches = true;
        parsed.registry = RegistryKind::Embedded;
        parsed.state_dir = "/x".into();
        parsed.machine_id = Some("x".into());
        parsed.unit_manager = UnitManagerChoice::Process;
        parsed.api_listen.clear();
        parsed.api_tls_cert = Some("/x".into());
        parsed.api_tls_key = Some("/x".into());
        parsed.api_tls_client_ca = Some("/x".into());
        parsed.api_tokens_file = Some("/x".into());
        parsed.api_insecure_tcp = true;
        parsed.api_socket_group = Some("x".into());
        let mut notes = Vec::new();
        for spec in options::OPTIONS {
            (spec.apply)(&mut parsed, spec.default, &mut notes)
                .unwrap_or_else(|e| panic!("default of {}: {e}", spec.name));
            if let Some(show) = spec.show {
                assert_eq!(show(&Config::default()), spec.default, "{}", spec.name);
            }
        }
        assert_eq!(parsed, Config::default());
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn table_names_flags_and_env_agree() {
        let mut names = std::collections::BTreeSet::new();
        for spec in options::OPTIONS {
            assert!(names.insert(spec.name), "duplicate {}", spec.name);
            assert_eq!(spec.flag, spec.name.replace('_', "-"));
            assert_eq!(
                spec.env_var(),
                format!("FLEET_{}", spec.name.to_uppercase())
            );
        }
        cli::command().debug_assert();
    }

    #[test]
    fn show_round_trips_through_apply() {
        let mut c = Config::default();
        c.etcd_request_timeout = Duration::from_millis(1500);
        c.metadata.insert("a".into(), "1".into());
        c.metadata.insert("b".into(), "two words".into());
        c.agent_ttl = Duration::from_millis(90_500);
        c.public_ip = Some("::1".parse().unwrap());
        c.api_listen.push(ListenAddr::Tcp("[::1]:54728".into()));
        c.etcd_password = Some(Secret::new("p4ss"));
        c.machine_id = Some("m1".into());
        c.api_tls_cert = Some("/etc/fleet/api.pem".into());
        c.api_tls_key = Some("/etc/fleet/api.key".into());
        c.api_tls_client_ca = Some("/etc/fleet/clients.pem".into());
        c.api_tokens_file = Some("/etc/fleet/tokens".into());
        c.api_insecure_tcp = true;
        c.api_socket_group = Some("fleet".into());
        let mut back = Config::default();
        for spec in options::OPTIONS {
            if let Some(show) = spec.show {
                (spec.apply)(&mut back, &show(&c), &mut Vec::new()).unwrap();
            }
        }
        assert_eq!(back, c);
    }

    #[test]
    fn unit_manager_resolution() {
        use UnitManagerChoice::*;
        assert_eq!(Auto.resolve(true), UnitManagerKind::Systemd);
        assert_eq!(Auto.resolve(false), UnitManagerKind::Process);
        assert_eq!(Systemd.resolve(false), UnitManagerKind::Systemd);
        assert_eq!(Process.resolve(true), UnitManagerKind::Process);
    }

    #[test]
    fn secrets_stay_out_of_debug_and_describe() {
        let mut c = Config::default();
        c.etcd_password = Some(Secret::new("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let described = c.describe();
        let pw = described
            .iter()
            .find(|o| o.name == "etcd_password")
            .unwrap();
        assert_eq!(pw.value, "********");
    }
}
