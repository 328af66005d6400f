//! fleetd configuration through its public entry points: flags, environment, file,
//! defaults, errors and reload. No test reads the real environment or /etc.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetd::config::{
    self, Config, ConfigError, ListenAddr, Loaded, RegistryKind, Source, UnitManagerChoice,
};

/// A temp dir holding an optional config file; `default_file` is inside it.
struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
            env: HashMap::new(),
        }
    }

    fn default_file(&self) -> PathBuf {
        self.dir.path().join("fleet.conf")
    }

    fn write_default(&self, text: &str) -> PathBuf {
        std::fs::write(self.default_file(), text).expect("write config");
        self.default_file()
    }

    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    fn load(&self, flags: &[&str]) -> Result<Loaded, ConfigError> {
        let args: Vec<OsString> = std::iter::once("fleetd")
            .chain(flags.iter().copied())
            .map(OsString::from)
            .collect();
        let env = |name: &str| self.env.get(name).cloned();
        config::load(args, &env, &self.default_file())
    }

    fn config(&self, flags: &[&str]) -> Config {
        match self.load(flags) {
            Ok(Loaded::Run(c)) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn error(&self, flags: &[&str]) -> String {
        match self.load(flags) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }
}

fn value_of(c: &Config, name: &str) -> String {
    c.describe()
        .into_iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no option {name}"))
        .value
}

#[test]
fn nothing_given_means_defaults() {
    let f = Fixture::new();
    let c = f.config(&[]);
    assert_eq!(c.describe(), Config::default().describe());
    assert_eq!(c.config_file, None);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    for o in c.describe() {
        assert_eq!(o.source, Source::Default, "{}", o.name);
    }
    assert_eq!(c.agent_ttl, Duration::from_secs(30));
    assert_eq!(
        c.etcd_servers,
        vec!["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
    );
    assert_eq!(c.etcd_key_prefix, "/_coreos.com/fleet/");
    assert_eq!(
        c.api_listen,
        vec![ListenAddr::Unix("/var/run/fleet.sock".into())]
    );
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    // (flag, env, file) present or not -> expected winner.
    let cases: &[(bool, bool, bool, &str)] = &[
        (true, true, true, "flag"),
        (true, false, true, "flag"),
        (true, true, false, "flag"),
        (false, true, true, "env"),
        (false, true, false, "env"),
        (false, false, true, "file"),
        (false, false, false, "default"),
    ];
    let values = [
        ("flag", "3s"),
        ("env", "4s"),
        ("file", "5s"),
        ("default", "30s"),
    ];
    for &(flag, env, file, winner) in cases {
        let mut f = Fixture::new();
        if env {
            f = f.env("FLEET_AGENT_TTL", "4s");
        }
        if file {
            f.write_default("verbosity = 1\nagent_ttl = 5s\n");
        }
        let flags: &[&str] = if flag { &["--agent-ttl", "3s"] } else { &[] };
        let c = f.config(flags);
        let want = values.iter().find(|(w, _)| *w == winner).unwrap().1;
        assert_eq!(value_of(&c, "agent_ttl"), want, "{flag} {env} {file}");
        let source = c.source("agent_ttl").unwrap().clone();
        let expected = match winner {
            "flag" => Source::Flag("--agent-ttl".into()),
            "env" => Source::Env("FLEET_AGENT_TTL".into()),
            "file" => Source::File {
                path: f.default_file(),
                line: 2,
            },
            _ => Source::Default,
        };
        assert_eq!(source, expected, "{flag} {env} {file}");
    }
}

#[test]
fn each_option_from_each_source() {
    // (option, flag value, expected shown value)
    let table: &[(&str, &str, &str)] = &[
        ("verbosity", "2", "2"),
        (
            "etcd_servers",
            r#"["http://a:2379", "http://b:2379"]"#,
            "http://a:2379,http://b:2379",
        ),
        ("etcd_request_timeout", "2.5", "2.5"),
        ("etcd_cafile", "/etc/ssl/ca.pem", "/etc/ssl/ca.pem"),
        ("etcd_username", "guest", "guest"),
        ("etcd_password", "p4ssw0rd", "********"),
        ("etcd_key_prefix", "/other/", "/other/"),
        ("public_ip", "10.0.0.5", "10.0.0.5"),
        (
            "metadata",
            "region = us-west, az=us-west-1",
            "az=us-west-1,region=us-west",
        ),
        ("agent_ttl", "1m30s", "1m30s"),
        ("engine_reconcile_interval", "0.5", "0.5"),
        ("units_directory", "/tmp/units", "/tmp/units"),
        ("systemd_user", "True", "true"),
        ("token_limit", "65535", "65535"),
        ("disable_engine", "1", "true"),
        ("disable_watches", "T", "true"),
        ("registry", "embedded", "embedded"),
        ("state_dir", "/srv/fleet", "/srv/fleet"),
        ("machine_id", "node-1", "node-1"),
        ("unit_manager", "process", "process"),
        (
            "api_listen",
            "unix:///tmp/f.sock, tcp://127.0.0.1:54728",
            "unix:///tmp/f.sock,tcp://127.0.0.1:54728",
        ),
    ];
    for &(name, raw, shown) in table {
        let flag = format!("--{}", name.replace('_', "-"));
        let env_var = format!("FLEET_{}", name.to_uppercase());

        let from_flag = Fixture::new().config(&[&flag, raw]);
        assert_eq!(value_of(&from_flag, name), shown, "{name} via flag");
        assert_eq!(from_flag.source(name), Some(&Source::Flag(flag.clone())));

        let from_env = Fixture::new().env(&env_var, raw).config(&[]);
        assert_eq!(value_of(&from_env, name), shown, "{name} via env");
        assert_eq!(from_env.source(name), Some(&Source::Env(env_var.clone())));

        let f = Fixture::new();
        let path = f.write_default(&format!("# comment\n{name} = {raw}\n"));
        let from_file = f.config(&[]);
        assert_eq!(value_of(&from_file, name), shown, "{name} via file");
        assert_eq!(
            from_file.source(name),
            Some(&Source::File { path, line: 2 })
        );
    }
}

#[test]
fn typed_values() {
    let c = Fixture::new()
        .env("FLEET_PUBLIC_IP", "fd00::5")
        .env("FLEET_ETCD_CERTFILE", "/c.pem")
        .env("FLEET_ETCD_KEYFILE", "/k.pem")
        .env("FLEET_METADATA", "a=1,b=x=y")
        .config(&[
            "--registry=embedded",
            "--unit-manager",
            "systemd",
            "--engine-reconcile-interval",
            "0.25",
            "--token-limit",
            "1",
        ]);
    assert_eq!(c.public_ip, Some("fd00::5".parse().unwrap()));
    assert_eq!(c.etcd_certfile, Some(PathBuf::from("/c.pem")));
    assert_eq!(c.etcd_keyfile, Some(PathBuf::from("/k.pem")));
    assert_eq!(c.metadata.get("b").map(String::as_str), Some("x=y"));
    assert_eq!(c.registry, RegistryKind::Embedded);
    assert_eq!(c.unit_manager, UnitManagerChoice::Systemd);
    assert_eq!(c.engine_reconcile_interval, Duration::from_millis(250));
    assert_eq!(c.token_limit, 1);
}

#[test]
fn bool_flag_forms() {
    let table: &[(&[&str], bool)] = &[
        (&["--disable-engine"], true),
        (&["--disable-engine=true"], true),
        (&["--disable-engine", "false"], false),
        (&["--disable-engine=F"], false),
        (&["--disable-engine", "--agent-ttl", "3s"], true),
        (&["--disable-engine=false", "--disable-engine"], true),
        (&["--disable-engine", "--disable-engine=0"], false),
    ];
    for (flags, want) in table {
        let c = Fixture::new().config(flags);
        assert_eq!(c.disable_engine, *want, "{flags:?}");
    }
}

#[test]
fn last_flag_wins_and_negative_numbers_are_values() {
    let c = Fixture::new().config(&["--agent-ttl", "3s", "--agent-ttl=4s", "--verbosity", "-1"]);
    assert_eq!(c.agent_ttl, Duration::from_secs(4));
    assert_eq!(c.verbosity, -1);
    assert!(!c.debug());
}

#[test]
fn empty_env_var_counts_as_set() {
    let f = Fixture::new().env("FLEET_PUBLIC_IP", "");
    f.write_default("public_ip = 10.0.0.1\n");
    let c = f.config(&[]);
    assert_eq!(c.public_ip, None);
    assert_eq!(
        c.source("public_ip"),
        Some(&Source::Env("FLEET_PUBLIC_IP".into()))
    );
}

#[test]
fn bad_values_name_option_value_and_source() {
    let f = Fixture::new().env("FLEET_AGENT_TTL", "3x");
    assert_eq!(
        f.error(&[]),
        r#"invalid value "3x" for agent_ttl (from FLEET_AGENT_TTL): invalid duration: unknown unit "x" (use ns, us, ms, s, m or h, e.g. 30s)"#
    );
    assert!(f.error(&["--agent-ttl", "-1s"]).starts_with(
        r#"invalid value "-1s" for agent_ttl (from --agent-ttl): invalid duration: negative"#
    ));

    let f = Fixture::new();
    let path = f.write_default("\n\n\nagent_ttl = 0\n");
    assert_eq!(
        f.error(&[]),
        format!(
            r#"invalid value "0" for agent_ttl (from {} line 4): must be greater than zero, e.g. 30s"#,
            path.display()
        )
    );

    // option, bad value, a word the reason must contain
    let table: &[(&str, &str, &str)] = &[
        ("verbosity", "high", "whole number"),
        ("verbosity", "010.5", "whole number"),
        ("etcd_servers", "127.0.0.1:2379", "http://"),
        ("etcd_servers", "", "no etcd server"),
        (
            "etcd_servers",
            "http://a:2379,b:2379",
            "\"b:2379\" is not an http:// or https:// URL",
        ),
        ("etcd_request_timeout", "0", "greater than zero"),
        ("etcd_request_timeout", "1s", "seconds"),
        ("public_ip", "example.com", "IPv4 or IPv6"),
        ("metadata", "region=us-west,bogus", "\"bogus\""),
        ("metadata", "=v", "empty key"),
        ("agent_ttl", "30", "missing unit"),
        ("engine_reconcile_interval", "-2", "greater than zero"),
        ("units_directory", "run/fleet", "absolute"),
        ("systemd_user", "yes", "boolean"),
        ("token_limit", "0", "1 to 65535"),
        ("token_limit", "65536", "1 to 65535"),
        ("token_limit", "-1", "1 to 65535"),
        ("disable_engine", "on", "boolean"),
        ("disable_watches", "", "boolean"),
        ("verify_units", "maybe", "boolean"),
        ("enable_grpc", "2", "boolean"),
        ("registry", "consul", "etcd or embedded"),
        ("state_dir", "", "absolute"),
        ("machine_id", "a/b", "\"/\""),
        ("machine_id", "a b", "whitespace"),
        ("unit_manager", "docker", "auto, systemd or process"),
        ("api_listen", "http://0.0.0.0:80", "unknown scheme"),
        ("api_listen", "tcp://0.0.0.0", "tcp://HOST:PORT"),
    ];
    for &(name, raw, reason) in table {
        let env_var = format!("FLEET_{}", name.to_uppercase());
        let msg = Fixture::new().env(&env_var, raw).error(&[]);
        let head = format!("invalid value {raw:?} for {name} (from {env_var}): ");
        assert!(msg.starts_with(&head), "{msg:?} should start with {head:?}");
        assert!(msg.contains(reason), "{msg:?} should contain {reason:?}");
    }
}

#[test]
fn etcd_servers_may_be_empty_only_with_the_embedded_registry() {
    let f = Fixture::new();
    let path = f.write_default("etcd_servers = \"\"\n");
    assert_eq!(
        f.error(&[]),
        format!(
            "invalid value \"\" for etcd_servers (from {} line 1): no etcd server given; list URLs like http://127.0.0.1:2379, or set registry=embedded",
            path.display()
        )
    );
    let msg = Fixture::new().env("FLEET_ETCD_SERVERS", "[]").error(&[]);
    assert!(
        msg.starts_with("invalid value \"[]\" for etcd_servers (from FLEET_ETCD_SERVERS)"),
        "{msg}"
    );
    let c = f.config(&["--registry", "embedded"]);
    assert!(c.etcd_servers.is_empty());
}

#[test]
fn cert_and_key_go_together() {
    let msg = Fixture::new()
        .env("FLEET_ETCD_CERTFILE", "/c.pem")
        .error(&[]);
    assert!(
        msg.contains("etcd_certfile is set (from FLEET_ETCD_CERTFILE)"),
        "{msg}"
    );
    assert!(
        msg.contains("etcd_keyfile is empty (from default)"),
        "{msg}"
    );
    // The CA file alone is fine: it verifies the server.
    Fixture::new()
        .env("FLEET_ETCD_CAFILE", "/ca.pem")
        .config(&[]);
}

#[test]
fn config_file_rules() {
    // --config must exist.
    let f = Fixture::new();
    let missing = f.dir.path().join("nope.conf");
    let msg = f.error(&["--config", missing.to_str().unwrap()]);
    assert!(
        msg.starts_with(&format!(
            "cannot use config file {} (given with --config): ",
            missing.display()
        )),
        "{msg}"
    );
    // --config must not be a directory.
    let msg = f.error(&["--config", f.dir.path().to_str().unwrap()]);
    assert!(msg.contains("is a directory"), "{msg}");
    // A default file that is a directory is an error too (fleet could not read it).
    let f = Fixture::new();
    std::fs::create_dir(f.default_file()).unwrap();
    assert!(f.error(&[]).contains("is a directory"));
    // --config replaces the default file, it does not add to it.
    let f = Fixture::new();
    f.write_default("verbosity = 3\n");
    let other = f.dir.path().join("other.conf");
    std::fs::write(&other, "agent_ttl = 7s\n").unwrap();
    let c = f.config(&["--config", other.to_str().unwrap()]);
    assert_eq!(c.verbosity, 0);
    assert_eq!(c.agent_ttl, Duration::from_secs(7));
    assert_eq!(c.config_file.as_deref(), Some(other.as_path()));
    // An empty --config means "not given", as in fleet.
    assert_eq!(f.config(&["--config="]).verbosity, 3);
}

#[test]
fn go_flag_spellings_mean_what_they_meant_to_fleet() {
    let f = Fixture::new();
    let conf = f.dir.path().join("fleet.conf");
    std::fs::write(&conf, "agent_ttl = 7s\n").unwrap();
    let single = f.config(&[&format!("-config={}", conf.display()), "-verbosity=2"]);
    assert_eq!(single.config_file.as_deref(), Some(conf.as_path()));
    assert_eq!(single.agent_ttl, Duration::from_secs(7));
    assert_eq!(single.verbosity, 2);
    // `-name value`, as Go's flag package also took it.
    let spaced = f.config(&["-config", conf.to_str().unwrap(), "-agent-ttl", "9s"]);
    assert_eq!(spaced.agent_ttl, Duration::from_secs(9));
    let version = format!("fleetd version {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(f.load(&["-version"]), Ok(Loaded::Version(version)));
    // A single dash before something that is not a long option is still clap's error.
    assert!(
        f.error(&["-nosuch=1"]).contains("-n"),
        "{}",
        f.error(&["-nosuch=1"])
    );
}

#[test]
fn syntax_error_names_file_and_line() {
    let f = Fixture::new();
    let path = f.write_default("verbosity = 1\nagent_ttl: 3s\n");
    assert_eq!(
        f.error(&[]),
        format!(
            "syntax error in config file {} line 2: expected \"key = value\", a [section] or a # comment, found \"agent_ttl: 3s\"",
            path.display()
        )
    );
}

#[test]
fn ini_quirks_through_load() {
    let f = Fixture::new();
    f.write_default(concat!(
        "# fleet.conf\n",
        "; another comment\n",
        "METADATA = \"region=us-west;az=1 # quoted\"\n",
        "etcd_servers=[\"http://a:2379\", \\\n",
        "  \"http://b:2379\"]\n",
        "agent_ttl = 10s # inline comment\n",
        "public_ip = '10.1.1.1'\n",
        "[extra]\n",
        "verbosity = 5\n",
    ));
    let c = f.config(&[]);
    assert_eq!(c.etcd_servers, vec!["http://a:2379", "http://b:2379"]);
    assert_eq!(c.agent_ttl, Duration::from_secs(10));
    assert_eq!(c.public_ip, Some("10.1.1.1".parse().unwrap()));
    assert_eq!(c.verbosity, 0, "keys inside sections are ignored");
    // Inside quotes `;` and `#` are kept, so this metadata has one pair.
    assert_eq!(
        c.metadata.get("region").map(String::as_str),
        Some("us-west;az=1 # quoted")
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("\"verbosity\" in section [extra]"),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[0].contains("line 9"), "{:?}", c.warnings);
}

#[test]
fn warnings_for_unknown_duplicate_and_deprecated_options() {
    let f = Fixture::new().env("FLEET_ENABLE_GRPC", "true");
    let path = f.write_default(
        "agent_tll = 3s\nverify_units = true\nauthorized_keys_file = /root/.ssh/authorized_keys\nverbosity=1\nverbosity=2\nmetadata=a=1,a=2\n",
    );
    let c = f.config(&[]);
    let p = path.display();
    let expected = [
        format!("unknown option \"agent_tll\" in {p} line 1 is ignored"),
        format!("option verbosity is set twice in {p} (lines 4 and 5); line 5 wins"),
        format!("metadata key \"a\" is given more than once; the last value wins (from {p} line 6)"),
        format!("config option verify_units is no longer supported and is ignored; remove it (from {p} line 2)"),
        format!("config option authorized_keys_file is no longer supported and is ignored; remove it (from {p} line 3)"),
        "config option enable_grpc has no effect: fleetd always talks to the registry directly (from FLEET_ENABLE_GRPC)".to_string(),
    ];
    for w in &expected {
        assert!(c.warnings.contains(w), "missing {w:?} in {:?}", c.warnings);
    }
    assert_eq!(c.warnings.len(), expected.len(), "{:?}", c.warnings);
    assert_eq!(c.verbosity, 2);
    assert_eq!(c.metadata.get("a").map(String::as_str), Some("2"));
    // Deprecated options set to their "off" value warn about nothing.
    let c = Fixture::new()
        .env("FLEET_VERIFY_UNITS", "false")
        .env("FLEET_ENABLE_GRPC", "0")
        .config(&[]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn command_line_shapes() {
    let f = Fixture::new();
    let version = format!("fleetd version {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(f.load(&["--version"]), Ok(Loaded::Version(version.clone())));
    assert_eq!(f.load(&["version"]), Ok(Loaded::Version(version.clone())));
    // --version wins over values that would not parse, as in fleet.
    assert_eq!(
        f.load(&["--version", "--agent-ttl", "bogus"]),
        Ok(Loaded::Version(version))
    );
    assert_eq!(
        f.load(&["completion", "zsh"]),
        Ok(Loaded::Completion(clap_complete::Shell::Zsh))
    );
    assert_eq!(
        f.load(&["man", "/tmp/man1"]),
        Ok(Loaded::ManPages("/tmp/man1".into()))
    );
    assert!(f.error(&["completion", "tcsh"]).contains("tcsh"));
    match f.load(&["--help"]) {
        Ok(Loaded::Help(text)) => {
            assert!(text.contains("--agent-ttl"), "{text}");
            assert!(text.contains("[default: 30s]"), "{text}");
            assert!(text.contains("FLEET_"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    for args in [
        &["start"][..],
        &["version", "now"],
        &["--verbosity", "1", "list-units"],
    ] {
        assert_eq!(
            f.load(args),
            Err(ConfigError::UnexpectedArguments {
                args: args
                    .iter()
                    .filter(|a| !a.starts_with('-') && **a != "1")
                    .map(|a| a.to_string())
                    .collect()
            }),
            "{args:?}"
        );
        assert_eq!(
            f.error(args),
            "fleetd takes no arguments. Did you mean to invoke fleetctl instead?"
        );
    }
    let msg = f.error(&["--no-such-flag"]);
    assert!(msg.contains("--no-such-flag"), "{msg}");
    let msg = f.error(&["--agent-ttl"]);
    assert!(msg.contains("--agent-ttl"), "{msg}");
}

#[test]
fn reload_reads_file_and_env_again_with_the_same_flags() {
    let f = Fixture::new();
    f.write_default("agent_ttl = 5s\nmetadata = a=1\nverbosity = 1\n");
    let first = f.config(&["--verbosity", "3"]);
    assert_eq!(first.agent_ttl, Duration::from_secs(5));
    assert_eq!(first.verbosity, 3);

    // metadata removed from the file: back to its default, unlike fleet.
    f.write_default("agent_ttl = 6s\nverbosity = 1\n");
    let env = |name: &str| (name == "FLEET_PUBLIC_IP").then(|| "10.9.9.9".to_string());
    let second = first.reload(&env).unwrap();
    assert_eq!(second.agent_ttl, Duration::from_secs(6));
    assert!(second.metadata.is_empty());
    assert_eq!(second.verbosity, 3, "flags keep winning");
    assert_eq!(second.public_ip, Some("10.9.9.9".parse().unwrap()));
    assert_eq!(
        first.changed_options(&second),
        vec!["public_ip", "metadata", "agent_ttl"]
    );
    assert!(second
        .changed_options(&second.reload(&env).unwrap())
        .is_empty());

    // A broken file on reload is an error; the caller keeps running the old config.
    f.write_default("agent_ttl = soon\n");
    let err = second.reload(&env).unwrap_err().to_string();
    assert!(err.contains("agent_ttl"), "{err}");
}

#[test]
fn machine_id_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("machine-id");
    let c = Config::default();

    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    assert_eq!(
        c.resolve_machine_id(&file).unwrap(),
        "0123456789abcdef0123456789abcdef"
    );

    let configured = Fixture::new().config(&["--machine-id", "node-7"]);
    assert_eq!(configured.resolve_machine_id(&file).unwrap(), "node-7");

    let msg = c
        .resolve_machine_id(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cannot read"), "{msg}");
    assert!(msg.contains("--machine-id"), "{msg}");

    for bad in ["", "\n", "a/b\n", "two words\n"] {
        std::fs::write(&file, bad).unwrap();
        let err = c.resolve_machine_id(&file).unwrap_err();
        assert!(matches!(err, ConfigError::MachineId(_)), "{bad:?}: {err}");
    }
}

#[test]
fn sources_for_unknown_names() {
    let c = Config::default();
    assert_eq!(c.source("agent_ttl"), Some(&Source::Default));
    assert_eq!(c.source("no_such_option"), None);
}

/// The sample must list every option with its default, commented out, so that removing
/// the `# ` from every option line gives exactly the defaults.
#[test]
fn sample_config_lists_every_option_with_its_default() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/fleet.conf.sample");
    let text = std::fs::read_to_string(&sample).expect("dist/fleet.conf.sample");
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let f = Fixture::new();
    f.write_default(&uncommented);
    let c = f.config(&[]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let values = |c: &Config| -> Vec<(&'static str, String)> {
        c.describe()
            .into_iter()
            .map(|o| (o.name, o.value))
            .collect()
    };
    assert_eq!(values(&c), values(&Config::default()));
    let described: Vec<&str> = Config::default()
        .describe()
        .iter()
        .map(|o| o.name)
        .collect();
    for name in
        described
            .iter()
            .copied()
            .chain(["verify_units", "authorized_keys_file", "enable_grpc"])
    {
        assert!(
            uncommented
                .lines()
                .any(|l| l.starts_with(&format!("{name} = "))),
            "{name} missing from the sample"
        );
    }
    for o in c.describe() {
        assert!(
            matches!(o.source, Source::File { .. }),
            "{} not set by the sample",
            o.name
        );
    }
}
