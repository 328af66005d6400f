//! The service subset of a unit file the process supervisor runs, read the way systemd reads
//! it: time spans, command lines (quotes, C escapes, `$VAR`/`${VAR}`), `Environment=`
//! assignments, environment files and `%` specifiers.
//!
//! Hand-written because no crate implements systemd's dialect (shell-word crates differ on
//! escapes inside single quotes and on variable expansion; duration crates reject bare numbers
//! and `infinity`). Everything here is pure and tested with tables.

mod context;
mod exec;
mod policy;
mod specifiers;
mod words;

pub use context::{parse_env_file, valid_env_name, ExecContext};
pub use exec::{expand_argv, parse_exec_line, ExecCommand, ExecCommands, ExecLineError};
pub use policy::{
    parse_signal, parse_timespan, KillMode, Policy, RestartPolicy, TimespanError,
    DEFAULT_RESTART_SEC, DEFAULT_TIMEOUT,
};
pub use specifiers::{SpecifierError, Specifiers};
pub use words::{split_words, WordError};

use std::path::PathBuf;
use unit::UnitFile;

/// systemd's fixed search path for relative executables (systemd >= 239).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    Simple,
    Exec,
    Oneshot,
    Forking,
}

/// Everything the supervisor needs to run one service, validated at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub service_type: ServiceType,
    pub exec: ExecCommands,
    pub context: ExecContext,
    pub policy: Policy,
    /// `RemainAfterExit=`: a oneshot that has run stays `active/exited` until stopped.
    pub remain_after_exit: bool,
    /// `PIDFile=`: where a `Type=forking` service names its main process.
    pub pid_file: Option<PathBuf>,
}

/// Why a unit cannot be run by the process supervisor. The text is shown to users as is: it
/// names the unit and the option, and says what to do instead where there is a way out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{unit}: the process supervisor only runs .service units; a .{suffix} unit needs systemd (run fleetd with unit_manager=systemd on a host with systemd)")]
    NotAService { unit: String, suffix: String },
    #[error("{unit}: Type={value} is not supported by the process supervisor (no sd_notify socket or D-Bus); use Type=simple, exec, oneshot or forking, or run the unit under systemd")]
    UnsupportedType { unit: String, value: String },
    #[error("{unit}: unknown {option}={value}")]
    UnknownValue {
        unit: String,
        option: &'static str,
        value: String,
    },
    #[error("{unit}: {option}={problem}")]
    Specifier {
        unit: String,
        option: &'static str,
        problem: SpecifierError,
    },
    #[error("{unit}: {option}={value}: {problem}")]
    ExecLine {
        unit: String,
        option: &'static str,
        value: String,
        problem: ExecLineError,
    },
    #[error("{unit}: no ExecStart= (only Type=oneshot services may omit it)")]
    NoExecStart { unit: String },
    #[error("{unit}: several ExecStart= lines are only allowed with Type=oneshot")]
    SeveralExecStart { unit: String },
    #[error("{unit}: Environment={value}: {problem}")]
    Environment {
        unit: String,
        value: String,
        problem: WordError,
    },
    #[error("{unit}: EnvironmentFile={value}: the path must be absolute")]
    RelativeEnvironmentFile { unit: String, value: String },
    #[error("{unit}: WorkingDirectory={value}: the path must be absolute or ~")]
    RelativeWorkingDirectory { unit: String, value: String },
    #[error("{unit}: {option}={value}: {problem}")]
    Timespan {
        unit: String,
        option: &'static str,
        value: String,
        problem: TimespanError,
    },
    #[error("{unit}: {option}={value} is not a boolean")]
    NotABoolean {
        unit: String,
        option: &'static str,
        value: String,
    },
    #[error("{unit}: {option}={value} is not a number")]
    NotANumber {
        unit: String,
        option: &'static str,
        value: String,
    },
    #[error("{unit}: Type=forking needs PIDFile= with the process supervisor (it cannot guess the main process without cgroups)")]
    ForkingWithoutPidFile { unit: String },
    /// A stored unit file (read back when the supervisor starts) is not a unit file.
    #[error("{unit}: unit file does not parse: {problem}")]
    Unparsable {
        unit: String,
        problem: unit::ParseError,
    },
    #[error("{unit}: unit file does not parse (parser panicked)")]
    ParserPanicked { unit: String },
    /// Reading the settings did not finish (it runs off the async workers).
    #[error("{unit}: reading the unit: {problem}")]
    NotRead { unit: String, problem: String },
}

const SERVICE: &str = "Service";

/// One unit's options, read the way systemd reads them.
struct Options<'a> {
    name: &'a str,
    file: &'a UnitFile,
    spec: &'a Specifiers,
}

impl<'a> Options<'a> {
    /// Every `[Service]` value of `key`, in order.
    fn values(&self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.file.values(SERVICE, key)
    }

    /// The last `[Service]` value of `key`, trimmed: a later assignment overrides.
    fn last(&self, key: &str) -> Option<String> {
        self.file
            .values(SERVICE, key)
            .last()
            .map(|v| v.trim().to_string())
    }

    /// The last `[Unit]` value of `key`, trimmed.
    fn last_in_unit(&self, key: &str) -> Option<String> {
        self.file
            .values("Unit", key)
            .last()
            .map(|v| v.trim().to_string())
    }

    /// `value` (of option `key`) with its specifiers expanded.
    fn expand(&self, key: &'static str, value: &str) -> Result<String, ConfigError> {
        self.spec
            .expand(value)
            .map_err(|problem| ConfigError::Specifier {
                unit: self.name.into(),
                option: key,
                problem,
            })
    }

    /// The last value of `key` with its specifiers expanded; `None` if unset or empty.
    fn expanded(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.last(key) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => self.expand(key, &v).map(Some),
        }
    }
}

/// Reads the service subset of `file` for unit `name`.
pub fn service_config(
    name: &str,
    file: &UnitFile,
    spec: &Specifiers,
) -> Result<ServiceConfig, ConfigError> {
    let suffix = name.rsplit_once('.').map(|(_, s)| s).unwrap_or("");
    if suffix != "service" {
        return Err(ConfigError::NotAService {
            unit: name.into(),
            suffix: suffix.into(),
        });
    }
    let o = Options { name, file, spec };
    let service_type = match o.last("Type").as_deref() {
        None | Some("") | Some("simple") | Some("idle") => ServiceType::Simple,
        Some("exec") => ServiceType::Exec,
        Some("oneshot") => ServiceType::Oneshot,
        Some("forking") => ServiceType::Forking,
        Some(other @ ("notify" | "notify-reload" | "dbus")) => {
            return Err(ConfigError::UnsupportedType {
                unit: name.into(),
                value: other.into(),
            })
        }
        Some(other) => {
            return Err(ConfigError::UnknownValue {
                unit: name.into(),
                option: "Type",
                value: other.into(),
            })
        }
    };
    let exec = exec::read(&o, service_type)?;
    let context = context::read(&o)?;
    let policy = policy::read(&o, service_type)?;
    let remain_after_exit = match o.last("RemainAfterExit") {
        None => false,
        Some(v) => match parse_bool(&v) {
            Some(b) => b,
            None => {
                return Err(ConfigError::NotABoolean {
                    unit: name.into(),
                    option: "RemainAfterExit",
                    value: v,
                })
            }
        },
    };
    let pid_file = o.expanded("PIDFile")?.map(PathBuf::from);
    if service_type == ServiceType::Forking && pid_file.is_none() {
        return Err(ConfigError::ForkingWithoutPidFile { unit: name.into() });
    }
    Ok(ServiceConfig {
        service_type,
        exec,
        context,
        policy,
        remain_after_exit,
        pid_file,
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use unit::UnitOption;

    fn file(lines: &[(&str, &str, &str)]) -> UnitFile {
        UnitFile::from_options(
            lines
                .iter()
                .map(|(s, n, v)| UnitOption {
                    section: s.to_string(),
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn service_configs() {
        let spec = Specifiers {
            name: "a.service".into(),
            ..Default::default()
        };
        let ok = file(&[
            ("Service", "ExecStart", "/bin/sleep 100"),
            ("Service", "Environment", "\"A=1 2\" B=3 junk"),
            ("Service", "Environment", "C=4"),
            ("Service", "TimeoutStopSec", "0"),
            ("Service", "KillSignal", "SIGINT"),
            ("Service", "Restart", "on-failure"),
            ("Service", "RestartSec", "1min 30s"),
            ("Service", "Type", "idle"),
        ]);
        let c = service_config("a.service", &ok, &spec).unwrap();
        assert_eq!(c.service_type, ServiceType::Simple);
        assert_eq!(
            c.context.environment,
            vec![
                ("A".into(), "1 2".into()),
                ("B".into(), "3".into()),
                ("C".into(), "4".into())
            ]
        );
        assert_eq!(c.policy.timeout_stop, None);
        assert_eq!(c.policy.timeout_start, Some(DEFAULT_TIMEOUT));
        assert_eq!(c.policy.kill_signal, nix::sys::signal::Signal::SIGINT);
        assert_eq!(c.policy.restart, RestartPolicy::OnFailure);
        assert_eq!(c.policy.restart_sec, Duration::from_secs(90));

        let refused: &[(&str, UnitFile)] = &[
            ("a.socket", file(&[("Socket", "ListenStream", "80")])),
            (
                "a.service",
                file(&[
                    ("Service", "Type", "notify"),
                    ("Service", "ExecStart", "/bin/true"),
                ]),
            ),
            ("a.service", file(&[("Service", "ExecStart", "+/bin/true")])),
            ("a.service", file(&[("Service", "Type", "simple")])),
            (
                "a.service",
                file(&[
                    ("Service", "ExecStart", "/bin/a"),
                    ("Service", "ExecStart", "/bin/b"),
                ]),
            ),
            (
                "a.service",
                file(&[
                    ("Service", "Type", "forking"),
                    ("Service", "ExecStart", "/bin/a"),
                ]),
            ),
            (
                "a.service",
                file(&[
                    ("Service", "ExecStart", "/bin/a"),
                    ("Service", "KillMode", "sometimes"),
                ]),
            ),
        ];
        for (name, f) in refused {
            let spec = Specifiers {
                name: name.to_string(),
                ..Default::default()
            };
            assert!(service_config(name, f, &spec).is_err(), "{name} {f:?}");
        }
        let oneshot = file(&[
            ("Service", "Type", "oneshot"),
            ("Service", "ExecStart", "/bin/a"),
            ("Service", "ExecStart", "/bin/b"),
        ]);
        let c = service_config("a.service", &oneshot, &spec).unwrap();
        assert_eq!(c.exec.start.len(), 2);
        assert_eq!(c.policy.timeout_start, None);
    }

    #[test]
    fn messages_name_the_unit_the_option_and_the_way_out() {
        /// Unit name, `[Service]` options, the message.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: &[Case] = &[
            (
                "a.socket",
                &[],
                "a.socket: the process supervisor only runs .service units; a .socket unit needs systemd (run fleetd with unit_manager=systemd on a host with systemd)",
            ),
            (
                "a.service",
                &[("Type", "notify"), ("ExecStart", "/bin/true")],
                "a.service: Type=notify is not supported by the process supervisor (no sd_notify socket or D-Bus); use Type=simple, exec, oneshot or forking, or run the unit under systemd",
            ),
            ("a.service", &[("Type", "weird")], "a.service: unknown Type=weird"),
            (
                "a.service",
                &[("ExecStart", "/bin/date +%s")],
                "a.service: ExecStart=\"/bin/date +%s\": unknown specifier %s (the process supervisor knows %n %N %p %P %i %I %f %H %l %m %b %u %U %h %t %T %V %S %C %L %E; write %% for a percent sign)",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/echo 100%")],
                "a.service: ExecStart=\"/bin/echo 100%\": lone '%' at the end (write %% for a percent sign)",
            ),
            (
                "a.service",
                &[("ExecStart", "+/bin/true")],
                "a.service: ExecStart=+/bin/true: the '+' prefix is not supported by the process supervisor (it runs every command as the unit's user, with argv[0] = the executable); remove it or run the unit under systemd",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/echo \"open")],
                "a.service: ExecStart=/bin/echo \"open: unterminated \" quote",
            ),
            (
                "a.service",
                &[("ExecStart", "-")],
                "a.service: ExecStart=-: no executable after the prefixes",
            ),
            (
                "a.service",
                &[],
                "a.service: no ExecStart= (only Type=oneshot services may omit it)",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("ExecStart", "/bin/b")],
                "a.service: several ExecStart= lines are only allowed with Type=oneshot",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("Environment", "A=\\x4")],
                "a.service: Environment=A=\\x4: bad escape \\x: expected 2 digits",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("Environment", "A=\\000")],
                "a.service: Environment=A=\\000: \\000 (NUL) is not allowed",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("EnvironmentFile", "-env")],
                "a.service: EnvironmentFile=-env: the path must be absolute",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("WorkingDirectory", "work")],
                "a.service: WorkingDirectory=work: the path must be absolute or ~",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("RestartSec", "5 parsecs")],
                "a.service: RestartSec=5 parsecs: unknown time unit \"parsecs\"",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("Restart", "sometimes")],
                "a.service: unknown Restart=sometimes",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("KillSignal", "SIGFOO")],
                "a.service: unknown KillSignal=SIGFOO",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("StartLimitBurst", "many")],
                "a.service: StartLimitBurst=many is not a number",
            ),
            (
                "a.service",
                &[("ExecStart", "/bin/a"), ("RemainAfterExit", "maybe")],
                "a.service: RemainAfterExit=maybe is not a boolean",
            ),
            (
                "a.service",
                &[("Type", "forking"), ("ExecStart", "/bin/a")],
                "a.service: Type=forking needs PIDFile= with the process supervisor (it cannot guess the main process without cgroups)",
            ),
        ];
        for (name, options, want) in cases {
            let lines: Vec<(&str, &str, &str)> =
                options.iter().map(|(k, v)| ("Service", *k, *v)).collect();
            let spec = Specifiers {
                name: name.to_string(),
                ..Default::default()
            };
            let err = service_config(name, &file(&lines), &spec).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = split_words(&s);
            let _ = parse_exec_line(&s);
            let _ = parse_timespan(&s);
            let _ = parse_env_file(&s);
            let spec = Specifiers { name: s.clone(), ..Default::default() };
            let _ = spec.expand(&s);
        }
    }
}
