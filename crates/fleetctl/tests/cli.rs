//! The real binary, without a fleetd: usage, exit codes, help, version, flag handling, and the
//! error when fleetd cannot be reached.

use std::process::{Command, Output};

fn fleetctl(args: &[&str]) -> Output {
    fleetctl_env(args, &[])
}

/// Runs the binary with a clean `FLEETCTL_*` environment plus `env`.
fn fleetctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETCTL_") {
            cmd.env_remove(k);
        }
    }
    // SSH errors are the same wherever the tests run: no agent.
    cmd.env_remove("SSH_AUTH_SOCK");
    // Nothing listens here, whatever the machine running the tests has at the default socket.
    cmd.env(
        "FLEETCTL_ENDPOINT",
        "unix:///nonexistent/fleetctl-test/fleet.sock",
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fleetctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_is_the_same_for_no_args_help_and_flags() {
    let none = fleetctl(&[]);
    assert_eq!(none.status.code(), Some(0));
    let help = text(&none.stdout);
    assert!(help.contains("list-unit-files"), "{help}");
    assert!(help.contains("--endpoint"), "{help}");
    for args in [&["help"][..], &["--help"], &["-h"], &["--h"]] {
        let o = fleetctl(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert_eq!(text(&o.stdout), help, "{args:?}");
    }
    // Help of one command names its flags.
    let o = fleetctl(&["help", "start"]);
    assert_eq!(o.status.code(), Some(0));
    let t = text(&o.stdout);
    for flag in ["--block-attempts", "--no-block", "--replace", "--timeout"] {
        assert!(t.contains(flag), "{flag} missing from\n{t}");
    }
}

#[test]
fn completion_and_man_pages_come_from_the_parser() {
    let bash = fleetctl(&["completion", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    let script = text(&bash.stdout);
    assert!(script.contains("complete -F _fleetctl"), "{script}");
    for word in ["list-machines", "--endpoint", "--block-attempts"] {
        assert!(
            script.contains(word),
            "{word} missing from the bash completion"
        );
    }
    let zsh = fleetctl(&["completion", "zsh"]);
    assert_eq!(zsh.status.code(), Some(0));
    assert!(text(&zsh.stdout).starts_with("#compdef fleetctl"));
    assert_eq!(fleetctl(&["completion", "tcsh"]).status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let man = fleetctl(&["man", dir_arg]);
    assert_eq!(man.status.code(), Some(0), "{man:?}");
    let page = std::fs::read_to_string(dir.path().join("fleetctl.1")).unwrap();
    assert!(page.starts_with(".ie"), "{page}");
    assert!(page.contains("fleetctl\\-list\\-machines(1)"), "{page}");
    // Every page fleetctl.1 refers to is there.
    assert!(dir.path().join("fleetctl-list-machines.1").is_file());
    // Only packagers need `man`: it stays out of the help.
    assert!(!text(&fleetctl(&["--help"]).stdout).contains("man "));
}

#[test]
fn version_forms() {
    let expected = format!("fleetctl version {}\n", env!("CARGO_PKG_VERSION"));
    for args in [
        &["version"][..],
        &["--version"],
        &["-v"],
        &["--version", "list-units"],
        // Go's flag spelling, as fleet's older fleetctl took it.
        &["-version"],
    ] {
        let o = fleetctl(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert_eq!(text(&o.stdout), expected, "{args:?}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["bogus"][..],
        &["list-units", "--bogus"],
        &["start", "--block-attempts=x", "a"],
        &["--request-timeout=0", "list-units"],
        &["--request-timeout=abc", "list-units"],
        &["start", "--timeout=-1", "a"],
        // Ambiguous prefix: list-units, list-unit-files, list-machines.
        &["list"],
    ] {
        let o = fleetctl(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(!o.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn verify_is_deprecated_with_exit_2() {
    let o = fleetctl(&["verify", "a.service"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("DEPRECATED"));
}

#[test]
fn cannot_connect_names_the_endpoint_and_suggests_fleetd() {
    // A prefix of list-machines, with the endpoint from the environment.
    let o = fleetctl(&["list-m"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("unix:///nonexistent/fleetctl-test/fleet.sock"),
        "{err}"
    );
    assert!(err.contains("is fleetd running"), "{err}");
    assert!(o.stdout.is_empty());

    // The command line wins over the environment, after the command too.
    let o = fleetctl(&["list-units", "--endpoint", "unix:///nonexistent/other.sock"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("unix:///nonexistent/other.sock"));
    // Several endpoints, as fleet took them: each is tried, and the error names each.
    let o = fleetctl(&[
        "--endpoint=unix:///nonexistent/a.sock,http://127.0.0.1:9/fleet-proxy",
        "list-units",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("unix:///nonexistent/a.sock: ")
            && err.contains("http://127.0.0.1:9/fleet-proxy: "),
        "{err}"
    );
    let o = fleetctl(&["-endpoint=unix:///nonexistent/go.sock", "list-units"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("unix:///nonexistent/go.sock"));

    // A TCP endpoint nobody listens on: a free port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = fleetctl(&["--endpoint", &endpoint, "list-unit-files"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains(&endpoint), "{}", text(&o.stderr));
}

#[test]
fn unsupported_connections_are_clear_errors() {
    // A tunnel host that does not parse is refused before any connection.
    let o = fleetctl(&["--tunnel", "10.0.0.1:notaport", "list-units"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--tunnel"), "{}", text(&o.stderr));

    // No agent: one line saying so, before reaching any host.
    let o = fleetctl_env(&["list-units"], &[("FLEETCTL_TUNNEL", "10.0.0.1")]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("SSH_AUTH_SOCK"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let o = fleetctl(&["--driver=etcd", "list-units"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--driver=etcd is not supported"));

    let o = fleetctl(&["--driver=bogus", "list-units"]);
    assert_eq!(o.status.code(), Some(1));

    // https: the CA file is read before anything is sent, and a missing one is named.
    let o = fleetctl(&[
        "--endpoint=https://10.0.0.1:443",
        "--ca-file=/nonexistent/ca.pem",
        "list-units",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("--ca-file /nonexistent/ca.pem"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let o = fleetctl(&["--endpoint=https://10.0.0.1:443", "list-units"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("need --ca-file"),
        "{}",
        text(&o.stderr)
    );

    // ssh looks the machine up through the API first.
    let o = fleetctl(&["ssh", "abc"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("fleetctl-test"),
        "{}",
        text(&o.stderr)
    );

    let o = fleetctl(&["--strict-host-key-checking=maybe", "list-units"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn accepted_flags_in_fleets_spellings() {
    // Each of these parses (then fails to connect: exit 1, not a usage error).
    for args in [
        &["list-units", "-l"][..],
        &["list-units", "--l"],
        &["list-units", "--full", "--no-legend", "--fields=unit,hash"],
        &["list-machines", "--l", "--no-legend=true"],
        &[
            "--debug",
            "--experimental-api=false",
            "--etcd-key-prefix=/x/",
            "list-units",
        ],
        &[
            "--strict-host-key-checking=false",
            "--ssh-timeout=2.5",
            "--ssh-username=me",
            "list-units",
        ],
        &[
            "--known-hosts-file=/tmp/kh",
            "--request-timeout=0.5",
            "list-units",
        ],
        &["--etcd-cafile=/x", "list-units"],
        &[
            "start",
            "--no-block",
            "--block-attempts=3",
            "--timeout=1.5",
            "--replace",
            "a",
        ],
        &["journal", "-f", "--lines=5", "a"],
        &["journal", "--f", "a"],
        &["cat", "a"],
        // Go's flag spellings: one dash before a long option.
        &[
            "-strict-host-key-checking=false",
            "-ssh-timeout",
            "2.5",
            "list-units",
        ],
        &["list-units", "-full", "-no-legend", "-fields=unit,hash"],
        &["-etcd-cafile=/x", "list-m", "-full"],
    ] {
        let o = fleetctl(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("fleetctl-test"),
            "{args:?} did not try to connect: {}",
            text(&o.stderr)
        );
    }
    // Environment booleans as pflag reads them.
    let o = fleetctl_env(&["list-units"], &[("FLEETCTL_DEBUG", "true")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("fleetctl: GET /fleet/v1/state"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn invalid_fields_fail_before_connecting() {
    let o = fleetctl(&["list-units", "--fields=unit,bogus"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("Invalid key in output format: \"bogus\""),
        "{err}"
    );
    let o = fleetctl(&["list-machines", "--fields="]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("Must define output format"));
}

#[test]
fn commands_without_units() {
    for cmd in [
        "submit", "load", "start", "stop", "unload", "destroy", "restart",
    ] {
        let o = fleetctl(&[cmd]);
        assert_eq!(o.status.code(), Some(0), "{cmd}");
        assert_eq!(text(&o.stderr), "No units given\n", "{cmd}");
    }
    let o = fleetctl(&["cat"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn fd_forward_to_a_missing_socket_fails() {
    let o = fleetctl(&["fd-forward", "/nonexistent/fleetctl-test/fleet.sock"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("/nonexistent/fleetctl-test/fleet.sock"));
}

#[test]
fn fd_forward_proxies_both_ways() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("echo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    // An upper-casing echo server for one connection.
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).expect("read");
        conn.write_all(&buf.to_ascii_uppercase()).expect("write");
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["fd-forward", path.to_str().expect("utf-8 path")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /fleet/v1/units\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    server.join().expect("server");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"GET /FLEET/V1/UNITS\n");
}
