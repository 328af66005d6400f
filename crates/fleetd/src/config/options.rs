//! The table of fleetd options: one entry per option drives its flag, its environment
//! variable, its config-file key, its default, its parser and its display.

use super::duration::format_go_duration;
use super::value::*;
use super::{Config, Secret, UnitManagerChoice};

/// How an option looks on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagKind {
    /// `--disable-engine` alone means true; `--disable-engine=false` / `--disable-engine false` also work.
    Bool,
    /// `--agent-ttl 3s` / `--agent-ttl=3s`.
    Value,
}

pub(crate) struct OptionSpec {
    /// Config-file key; `FLEET_<NAME>` upper-cased is its environment variable.
    pub name: &'static str,
    /// Long flag without the dashes (`name` with `_` -> `-`; a test keeps them in step,
    /// stored separately because clap wants `&'static str`).
    pub flag: &'static str,
    /// The default in the syntax the option is written in; a test checks that parsing it
    /// gives `Config::default()`.
    pub default: &'static str,
    pub help: &'static str,
    pub kind: FlagKind,
    /// Parses `value` into the config. Notes pushed to the vector become warnings.
    pub apply: fn(&mut Config, &str, &mut Vec<String>) -> Result<(), Reason>,
    /// The current value, written so `apply` would read it back; `None` for deprecated
    /// options, which are not kept.
    pub show: Option<fn(&Config) -> String>,
}

impl OptionSpec {
    pub fn env_var(&self) -> String {
        format!("FLEET_{}", self.name.to_ascii_uppercase())
    }
}

pub(crate) fn find(name: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.name == name)
}

fn show_path(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Seconds as fleet.conf writes them: `1.0`, `2.5`.
fn show_seconds(d: std::time::Duration) -> String {
    format!("{:?}", d.as_secs_f64())
}

fn deprecated(name: &str) -> String {
    format!("config option {name} is no longer supported and is ignored; remove it")
}

pub(crate) static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "verbosity",
        flag: "verbosity",
        default: "0",
        help: "Logging level: 0 logs info and above, greater than 0 also logs debug messages",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.verbosity = parse_int(v)?;
            Ok(())
        },
        show: Some(|c| c.verbosity.to_string()),
    },
    OptionSpec {
        name: "log_format",
        flag: "log-format",
        default: "auto",
        help: "Log format: text, json (one object a line), journald (journald's native protocol, with each field its own), or auto (journald when stderr is the journal, else text)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.log_format = v.parse::<crate::logging::LogFormat>()?;
            Ok(())
        },
        show: Some(|c| c.log_format.to_string()),
    },
    OptionSpec {
        name: "etcd_servers",
        flag: "etcd-servers",
        default: "http://127.0.0.1:2379,http://127.0.0.1:4001",
        help: "Comma-separated etcd endpoints (with registry=etcd); [\"a\", \"b\"] also works",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_servers = parse_etcd_servers(v)?;
            Ok(())
        },
        show: Some(|c| c.etcd_servers.join(",")),
    },
    OptionSpec {
        name: "etcd_request_timeout",
        flag: "etcd-request-timeout",
        default: "1.0",
        help: "Seconds to allow a single etcd request before considering it failed",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_request_timeout = parse_seconds(v)?;
            Ok(())
        },
        show: Some(|c| show_seconds(c.etcd_request_timeout)),
    },
    OptionSpec {
        name: "etcd_cafile",
        flag: "etcd-cafile",
        default: "",
        help: "CA certificate file to verify etcd servers over TLS",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_cafile = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.etcd_cafile)),
    },
    OptionSpec {
        name: "etcd_certfile",
        flag: "etcd-certfile",
        default: "",
        help: "Client certificate file for etcd over TLS (needs etcd_keyfile)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_certfile = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.etcd_certfile)),
    },
    OptionSpec {
        name: "etcd_keyfile",
        flag: "etcd-keyfile",
        default: "",
        help: "Client key file for etcd over TLS (needs etcd_certfile)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_keyfile = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.etcd_keyfile)),
    },
    OptionSpec {
        name: "etcd_username",
        flag: "etcd-username",
        default: "",
        help: "User name for etcd authentication (empty: no authentication)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_username = parse_optional_string(v);
            Ok(())
        },
        show: Some(|c| c.etcd_username.clone().unwrap_or_default()),
    },
    OptionSpec {
        name: "etcd_password",
        flag: "etcd-password",
        default: "",
        help: "Password for etcd authentication (prefer the file or FLEET_ETCD_PASSWORD: flags are visible in ps)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_password = parse_optional_string(v).map(Secret::new);
            Ok(())
        },
        show: Some(|c| c.etcd_password.as_ref().map(|s| s.expose().to_string()).unwrap_or_default()),
    },
    OptionSpec {
        name: "etcd_key_prefix",
        flag: "etcd-key-prefix",
        default: "/_coreos.com/fleet/",
        help: "Key prefix under which fleet keeps its data in the registry",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.etcd_key_prefix = v.to_string();
            Ok(())
        },
        show: Some(|c| c.etcd_key_prefix.clone()),
    },
    OptionSpec {
        name: "public_ip",
        flag: "public-ip",
        default: "",
        help: "IP address this machine publishes (empty: detected)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.public_ip = parse_public_ip(v)?;
            Ok(())
        },
        show: Some(|c| c.public_ip.map(|ip| ip.to_string()).unwrap_or_default()),
    },
    OptionSpec {
        name: "metadata",
        flag: "metadata",
        default: "",
        help: "Comma-separated key=value pairs describing this machine, e.g. region=us-west,az=us-west-1",
        kind: FlagKind::Value,
        apply: |c, v, notes| {
            let (map, duplicates) = parse_metadata(v)?;
            for key in duplicates {
                notes.push(format!("metadata key {key:?} is given more than once; the last value wins"));
            }
            c.metadata = map;
            Ok(())
        },
        show: Some(|c| {
            c.metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
    },
    OptionSpec {
        name: "agent_ttl",
        flag: "agent-ttl",
        default: "30s",
        help: "How long a machine may go without a heartbeat before it is considered dead (Go duration: 30s, 1m30s)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.agent_ttl = parse_positive_duration(v)?;
            Ok(())
        },
        show: Some(|c| format_go_duration(c.agent_ttl)),
    },
    OptionSpec {
        name: "engine_reconcile_interval",
        flag: "engine-reconcile-interval",
        default: "2.0",
        help: "Seconds between engine reconciliations; the engine leader lease lasts 5 times this",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.engine_reconcile_interval = parse_seconds(v)?;
            Ok(())
        },
        show: Some(|c| show_seconds(c.engine_reconcile_interval)),
    },
    OptionSpec {
        name: "units_directory",
        flag: "units-directory",
        default: "/run/fleet/units/",
        help: "Runtime directory where the agent writes unit files for systemd (the process supervisor: unit files and run records under process/)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.units_directory = parse_absolute_path(v)?;
            Ok(())
        },
        show: Some(|c| c.units_directory.display().to_string()),
    },
    OptionSpec {
        name: "systemd_user",
        flag: "systemd-user",
        default: "false",
        help: "Talk to the user's systemd instance instead of the system one",
        kind: FlagKind::Bool,
        apply: |c, v, _| {
            c.systemd_user = parse_bool(v)?;
            Ok(())
        },
        show: Some(|c| c.systemd_user.to_string()),
    },
    OptionSpec {
        name: "token_limit",
        flag: "token-limit",
        default: "100",
        help: "Maximum number of entries per page of API list responses (1 to 65535)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            let n: u16 = parse_int(v).map_err(|_| "expected a whole number from 1 to 65535".to_string())?;
            if n == 0 {
                return Err("expected a whole number from 1 to 65535".into());
            }
            c.token_limit = n;
            Ok(())
        },
        show: Some(|c| c.token_limit.to_string()),
    },
    OptionSpec {
        name: "disable_engine",
        flag: "disable-engine",
        default: "false",
        help: "Never run the engine on this machine (it still runs units)",
        kind: FlagKind::Bool,
        apply: |c, v, _| {
            c.disable_engine = parse_bool(v)?;
            Ok(())
        },
        show: Some(|c| c.disable_engine.to_string()),
    },
    OptionSpec {
        name: "disable_watches",
        flag: "disable-watches",
        default: "false",
        help: "Do not watch the registry: the agent and the engine read it every engine_reconcile_interval instead",
        kind: FlagKind::Bool,
        apply: |c, v, _| {
            c.disable_watches = parse_bool(v)?;
            Ok(())
        },
        show: Some(|c| c.disable_watches.to_string()),
    },
    OptionSpec {
        name: "verify_units",
        flag: "verify-units",
        default: "false",
        help: "Deprecated, ignored",
        kind: FlagKind::Bool,
        apply: |_, v, notes| {
            if parse_bool(v)? {
                notes.push(deprecated("verify_units"));
            }
            Ok(())
        },
        show: None,
    },
    OptionSpec {
        name: "authorized_keys_file",
        flag: "authorized-keys-file",
        default: "",
        help: "Deprecated, ignored",
        kind: FlagKind::Value,
        apply: |_, v, notes| {
            if !v.is_empty() {
                notes.push(deprecated("authorized_keys_file"));
            }
            Ok(())
        },
        show: None,
    },
    OptionSpec {
        name: "enable_grpc",
        flag: "enable-grpc",
        default: "false",
        help: "Accepted for compatibility, no effect (fleet's experimental gRPC mode is not implemented)",
        kind: FlagKind::Bool,
        apply: |_, v, notes| {
            if parse_bool(v)? {
                notes.push(
                    "config option enable_grpc has no effect: fleetd always talks to the registry directly"
                        .to_string(),
                );
            }
            Ok(())
        },
        show: None,
    },
    OptionSpec {
        name: "registry",
        flag: "registry",
        default: "etcd",
        help: "Where cluster state lives: etcd (etcd_servers) or embedded (this machine only, under state_dir)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.registry = v.parse()?;
            Ok(())
        },
        show: Some(|c| c.registry.to_string()),
    },
    OptionSpec {
        name: "state_dir",
        flag: "state-dir",
        default: "/var/lib/fleet",
        help: "Directory for the embedded registry, process-supervisor logs and pid files, the agent's lease record",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.state_dir = parse_absolute_path(v)?;
            Ok(())
        },
        show: Some(|c| c.state_dir.display().to_string()),
    },
    OptionSpec {
        name: "machine_id",
        flag: "machine-id",
        default: "",
        help: "This machine's ID in the cluster (empty: the contents of /etc/machine-id)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.machine_id = parse_machine_id(v)?;
            Ok(())
        },
        show: Some(|c| c.machine_id.clone().unwrap_or_default()),
    },
    OptionSpec {
        name: "unit_manager",
        flag: "unit-manager",
        default: "auto",
        help: "How units run: systemd, process (fleetd's own supervisor), or auto (systemd if /run/systemd/system exists)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.unit_manager = v.parse::<UnitManagerChoice>()?;
            Ok(())
        },
        show: Some(|c| c.unit_manager.to_string()),
    },
    OptionSpec {
        name: "api_listen",
        flag: "api-listen",
        default: "unix:///var/run/fleet.sock",
        help: "Comma-separated API listen addresses: unix:///PATH or tcp://HOST:PORT (empty: only sockets passed by systemd)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.api_listen = parse_listen_list(v)?;
            Ok(())
        },
        show: Some(|c| {
            c.api_listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }),
    },
    OptionSpec {
        name: "api_tls_cert",
        flag: "api-tls-cert",
        default: "",
        help: "Certificate chain (PEM) TCP API listeners serve TLS with (needs api_tls_key)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.api_tls_cert = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.api_tls_cert)),
    },
    OptionSpec {
        name: "api_tls_key",
        flag: "api-tls-key",
        default: "",
        help: "Private key (PEM) of api_tls_cert",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.api_tls_key = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.api_tls_key)),
    },
    OptionSpec {
        name: "api_tls_client_ca",
        flag: "api-tls-client-ca",
        default: "",
        help: "CA (PEM) whose client certificates TCP API clients must present (mutual TLS; needs api_tls_cert)",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.api_tls_client_ca = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.api_tls_client_ca)),
    },
    OptionSpec {
        name: "api_tokens_file",
        flag: "api-tokens-file",
        default: "",
        help: "File of API tokens (NAME ROLE sha256:HEX per line, made with `fleetctl token new`); TCP requests then need a bearer token; re-read on SIGHUP",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.api_tokens_file = parse_optional_path(v);
            Ok(())
        },
        show: Some(|c| show_path(&c.api_tokens_file)),
    },
    OptionSpec {
        name: "api_insecure_tcp",
        flag: "api-insecure-tcp",
        default: "false",
        help: "Serve TCP API listeners off loopback without TLS and client authentication (anyone who reaches them controls the cluster)",
        kind: FlagKind::Bool,
        apply: |c, v, _| {
            c.api_insecure_tcp = parse_bool(v)?;
            Ok(())
        },
        show: Some(|c| c.api_insecure_tcp.to_string()),
    },
    OptionSpec {
        name: "api_socket_group",
        flag: "api-socket-group",
        default: "",
        help: "Group name or GID given the unix API sockets fleetd creates (mode 0660: its members may use the API); empty: fleetd's own group",
        kind: FlagKind::Value,
        apply: |c, v, _| {
            c.api_socket_group = parse_optional_string(v);
            Ok(())
        },
        show: Some(|c| c.api_socket_group.clone().unwrap_or_default()),
    },
];
