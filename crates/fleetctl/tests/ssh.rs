//! fleetctl over SSH against a real OpenSSH server (`testkit::sshd`) on loopback: the tunnel
//! (list-machines, start), `fleetctl ssh`, `status` and `journal` of a running unit, known
//! hosts, and the errors a user meets (no agent key, unreachable tunnel, changed host key).
//!
//! fleetd runs on the embedded registry with the process supervisor and no systemd, with
//! `127.0.0.1` as its public IP: the tunnel host and "the machine" are the same sshd, reached
//! the second time through the first connection, as fleet reached machines behind its tunnel.
//! sshd's sessions find this fleetctl through `PATH`, and the supervisor's directories through
//! `FLEET_STATE_DIR`/`FLEET_UNITS_DIRECTORY` (sshd's `SetEnv`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::sshd::Sshd;

const FLEETCTL: &str = env!("CARGO_BIN_EXE_fleetctl");
/// Upper bound of every wait; a wait ends as soon as its condition holds.
const DEADLINE: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The temp dir of one test: fleetd's directories and socket, unit files, known hosts.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::Builder::new()
            .prefix("fleetctl-ssh-")
            .tempdir()
            .expect("temp dir"))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn socket(&self) -> PathBuf {
        self.path().join("fleet.sock")
    }
    fn known_hosts(&self) -> PathBuf {
        self.path().join("known_hosts")
    }
    /// What sshd's sessions need to find this fleetctl and fleetd's supervisor.
    fn session_env(&self) -> Vec<(String, String)> {
        let bin_dir = Path::new(FLEETCTL).parent().expect("bin dir");
        vec![
            (
                "PATH".into(),
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
            ),
            (
                "FLEET_STATE_DIR".into(),
                self.path().join("state").display().to_string(),
            ),
            (
                "FLEET_UNITS_DIRECTORY".into(),
                self.path().join("units").display().to_string(),
            ),
        ]
    }
}

fn start_sshd(dir: &Dir) -> Option<Sshd> {
    let env = dir.session_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Sshd::start(&env).expect("start sshd")
}

/// fleetd (embedded registry, process supervisor, public IP 127.0.0.1), stopped with SIGTERM
/// on drop (its units stop with it) and SIGKILLed if it does not exit.
struct Fleetd {
    child: Child,
    machine_id: String,
    log: PathBuf,
    /// fleetd's API also listens here (`http://127.0.0.1:PORT`), for the direct-tcpip tunnel.
    tcp_port: u16,
}

impl Fleetd {
    fn start(dir: &Dir) -> Fleetd {
        let bin = cluster::binary::fleetd_binary().expect("fleetd binary");
        // Unique on this host, and never this host's /etc/machine-id: the unit's machine is
        // reached over SSH.
        let machine_id = format!("{:032x}", u128::from(std::process::id()) << 64 | 0x55);
        let tcp_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let d = dir.path();
        let log = d.join("fleetd.log");
        let out = std::fs::File::create(&log).expect("fleetd log");
        let err = out.try_clone().expect("fleetd log");
        let mut cmd = Command::new(bin);
        cmd.args(["--registry", "embedded", "--state-dir"])
            .arg(d.join("state"))
            .arg("--units-directory")
            .arg(d.join("units"))
            .args(["--machine-id", &machine_id, "--public-ip", "127.0.0.1"])
            .arg("--api-listen")
            .arg(format!(
                "unix://{},tcp://127.0.0.1:{tcp_port}",
                dir.socket().display()
            ))
            .args(["--agent-ttl", "3s", "--unit-manager", "process"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEET_") || k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET" {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("spawn fleetd");
        Fleetd {
            child,
            machine_id,
            log,
            tcp_port,
        }
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        // SAFETY: signals our own child by its PID; SIGTERM makes the machine leave and stop
        // its units.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fleetctl with a clean `FLEETCTL_*` environment, the test's agent, tunnel and known hosts.
struct Ctl<'a> {
    dir: &'a Dir,
    sshd: &'a Sshd,
    env: Vec<(String, String)>,
}

impl<'a> Ctl<'a> {
    fn new(dir: &'a Dir, sshd: &'a Sshd) -> Ctl<'a> {
        let port = sshd.port().to_string();
        Ctl {
            dir,
            sshd,
            env: vec![
                ("FLEETCTL_TUNNEL".into(), format!("127.0.0.1:{port}")),
                (
                    "FLEETCTL_ENDPOINT".into(),
                    format!("unix://{}", dir.socket().display()),
                ),
                ("FLEETCTL_SSH_USERNAME".into(), sshd.user()),
                (
                    "FLEETCTL_KNOWN_HOSTS_FILE".into(),
                    dir.known_hosts().display().to_string(),
                ),
                (
                    "FLEETCTL_STRICT_HOST_KEY_CHECKING".into(),
                    "accept-new".into(),
                ),
                (
                    "SSH_AUTH_SOCK".into(),
                    sshd.agent_socket().display().to_string(),
                ),
            ],
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FLEETCTL);
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEETCTL_") || k == "SSH_AUTH_SOCK" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run fleetctl");
        println!(
            "$ fleetctl {} -> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// `args` must exit 0; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "fleetctl {args:?} failed: {}\nsshd log:\n{}",
            text(&out.stderr),
            self.sshd.log()
        );
        text(&out.stdout)
    }

    /// `args` must fail with exit 1 and one line on stderr; that line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "fleetctl {args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        err
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tunnel_ssh_status_and_journal_on_a_machine_without_systemd() {
    let dir = Dir::new();
    let Some(sshd) = start_sshd(&dir) else {
        return;
    };
    let fleetd = Fleetd::start(&dir);
    let ctl = Ctl::new(&dir, &sshd);
    let port = sshd.port().to_string();

    // list-machines through the tunnel (fd-forward on the tunnel host) once fleetd is up.
    let listed = wait_for("fleetd's machine through the tunnel", || {
        let out = ctl.run(&["list-machines", "--full", "--no-legend"]);
        let stdout = text(&out.stdout);
        (out.status.success() && stdout.contains(&fleetd.machine_id)).then_some(stdout)
    });
    assert!(
        listed.contains("127.0.0.1"),
        "{listed}\n{:?}",
        std::fs::read_to_string(&fleetd.log)
    );
    // The first contact added the tunnel host to the known hosts (accept-new).
    let known = std::fs::read_to_string(dir.known_hosts()).expect("known hosts written");
    assert!(
        known.starts_with(&format!("[127.0.0.1]:{port} ")),
        "{known}"
    );
    assert!(
        known.contains(&sshd.host_key().expect("host key")),
        "{known}"
    );

    // A TCP endpoint through the tunnel: a direct-tcpip channel to it from the tunnel host.
    let mut over_tcp = Ctl::new(&dir, &sshd);
    over_tcp.set(
        "FLEETCTL_ENDPOINT",
        &format!("http://127.0.0.1:{}", fleetd.tcp_port),
    );
    let listed = over_tcp.ok(&["list-machines", "--full", "--no-legend"]);
    assert!(listed.contains(&fleetd.machine_id), "{listed}");

    // start through the tunnel: submitted, scheduled, run by the supervisor, seen active.
    let more = dir.path().join("more");
    std::fs::write(
        dir.path().join("hello.service"),
        format!(
            "[Unit]\nDescription=Hello over SSH\n\n[Service]\nExecStart=/bin/sh -c 'echo hello-from-unit; while sleep 0.2; do if [ -e {m} ]; then rm {m}; echo second-line; fi; done'\n",
            m = more.display()
        ),
    )
    .expect("unit file");
    ctl.ok(&["start", "hello.service"]);
    let units = ctl.ok(&["list-units", "--no-legend"]);
    assert!(
        units.contains("hello.service") && units.contains("active"),
        "{units}"
    );

    // Many requests side by side (fleetctl sends up to 64) share the tunnel's connection,
    // a few channels at a time (sshd refuses sessions past MaxSessions).
    std::fs::write(
        dir.path().join("tick@.service"),
        "[Service]\nExecStart=/bin/sh -c 'echo tick %i; exec sleep 100000'\n",
    )
    .expect("template");
    let instances: Vec<String> = (1..=16).map(|i| format!("tick@{i}.service")).collect();
    let mut args = vec!["start"];
    args.extend(instances.iter().map(String::as_str));
    let started = Instant::now();
    ctl.ok(&args);
    println!(
        "FIGURE fleetctl start of 16 units through the SSH tunnel: {} ms",
        started.elapsed().as_millis()
    );
    let started = Instant::now();
    let units = ctl.ok(&["list-units", "--no-legend"]);
    println!(
        "FIGURE fleetctl list-units through the SSH tunnel: {} ms",
        started.elapsed().as_millis()
    );
    for name in &instances {
        assert!(
            units
                .lines()
                .any(|l| l.starts_with(&format!("{name}\t")) && l.contains("active")),
            "{name} not active:\n{units}"
        );
    }

    // ssh: a unit's machine, a command, its output and exit code; a machine by id prefix.
    let hi = ctl.ok(&["ssh", "--ssh-port", &port, "hello.service", "echo", "hi"]);
    assert_eq!(hi, "hi\n");
    let prefix = &fleetd.machine_id[..12];
    let out = ctl.run(&["ssh", "--ssh-port", &port, prefix, "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = ctl.run(&[
        "ssh",
        "--ssh-port",
        &port,
        "--",
        prefix,
        "--",
        "echo",
        "a",
        "b",
    ]);
    assert_eq!(text(&out.stdout), "a b\n", "{}", text(&out.stderr));
    ctl.fails(&["ssh", "--ssh-port", &port, "nosuch"]);
    // -A: the remote side uses this agent (and sees its one key); without it, no agent there.
    let keys = ctl.ok(&["ssh", "-A", "--ssh-port", &port, prefix, "ssh-add", "-l"]);
    assert!(keys.contains("ED25519"), "{keys}");
    let out = ctl.run(&["ssh", "--ssh-port", &port, prefix, "ssh-add", "-l"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // No command: a shell on a terminal, which runs what is typed (util-linux `script` gives
    // this fleetctl a terminal).
    if let Some((code, shown)) = on_a_terminal(
        &ctl,
        &format!("ssh --ssh-port {port} {prefix}"),
        "tty >/dev/null && echo on-a-tty $((40+2)); exit 7\n",
    ) {
        assert!(shown.contains("on-a-tty 42"), "{shown}");
        assert_eq!(code, Some(7), "{shown}");
    }

    // status: the supervisor's state on the unit's machine, over SSH.
    let status = ctl.ok(&["status", "--ssh-port", &port, "hello.service"]);
    assert!(
        status.contains("hello.service - Hello over SSH"),
        "{status}"
    );
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(status.contains("hello-from-unit"), "{status}");

    // journal: the kept output, with journalctl's flags.
    let journal = ctl.ok(&[
        "journal",
        "--ssh-port",
        &port,
        "--output",
        "cat",
        "hello.service",
    ]);
    assert!(journal.lines().any(|l| l == "hello-from-unit"), "{journal}");
    let journal = ctl.ok(&[
        "journal",
        "--ssh-port",
        &port,
        "--lines",
        "1",
        "hello.service",
    ]);
    assert_eq!(journal.lines().count(), 1, "{journal}");
    ctl.fails(&[
        "journal",
        "--ssh-port",
        &port,
        "--output",
        "json",
        "hello.service",
    ]);

    // journal -f follows what the unit writes next, until interrupted.
    let mut follow = ctl
        .command(&[
            "journal",
            "--ssh-port",
            &port,
            "--output",
            "cat",
            "-f",
            "hello.service",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn journal -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok);
    assert!(
        first
            .as_deref()
            .is_some_and(|l| l.contains("hello-from-unit") || l.contains("fleetd")),
        "{first:?}"
    );
    std::fs::write(&more, "").expect("ask the unit for a line");
    let seen = lines.map_while(Result::ok).find(|l| l == "second-line");
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.as_deref(), Some("second-line"));
}

#[test]
fn known_hosts_and_errors_are_one_clear_line() {
    let dir = Dir::new();
    let Some(mut sshd) = start_sshd(&dir) else {
        return;
    };
    let fleetd = Fleetd::start(&dir);
    let mut ctl = Ctl::new(&dir, &sshd);
    let port = sshd.port();
    let host = format!("[127.0.0.1]:{port}");

    // First contact, strict checking, no terminal: refused, saying how to accept.
    ctl.set("FLEETCTL_STRICT_HOST_KEY_CHECKING", "true");
    let err = ctl.fails(&["list-machines"]);
    assert!(
        err.contains("no terminal") && err.contains("accept-new"),
        "{err}"
    );
    assert!(!dir.known_hosts().exists());

    // First contact on a terminal, answered yes (`script` gives fleetctl a terminal).
    let answered = on_a_terminal(&ctl, "list-machines", "yes\n");
    if let Some((_, out)) = answered {
        assert!(
            out.contains("Are you sure you want to continue connecting"),
            "{out}"
        );
        assert!(
            std::fs::read_to_string(dir.known_hosts())
                .unwrap_or_default()
                .starts_with(&host),
            "{out}"
        );
    } else {
        ctl.set("FLEETCTL_STRICT_HOST_KEY_CHECKING", "accept-new");
    }
    let listed = wait_for("fleetd's machine through the tunnel", || {
        let out = ctl.run(&["list-machines", "--full", "--no-legend"]);
        let stdout = text(&out.stdout);
        (out.status.success() && stdout.contains(&fleetd.machine_id)).then_some(stdout)
    });
    assert!(listed.contains(&fleetd.machine_id));

    // The host key changes: refused, even with accept-new, naming the file and line.
    let ctl_env = ctl.env.clone();
    drop(ctl);
    sshd.change_host_key().expect("new host key");
    let mut ctl = Ctl::new(&dir, &sshd);
    ctl.env = ctl_env;
    for checking in ["true", "accept-new"] {
        ctl.set("FLEETCTL_STRICT_HOST_KEY_CHECKING", checking);
        let err = ctl.fails(&["list-machines"]);
        assert!(
            err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{err}"
        );
        assert!(
            err.contains(&format!("line 1 of {}", dir.known_hosts().display())),
            "{err}"
        );
    }

    // The entry removed (as the message says), the new key is accepted again.
    let out = Command::new("ssh-keygen")
        .args(["-R", &host, "-f"])
        .arg(dir.known_hosts())
        .output()
        .expect("ssh-keygen -R");
    assert!(out.status.success(), "{}", text(&out.stderr));
    ctl.set("FLEETCTL_STRICT_HOST_KEY_CHECKING", "accept-new");
    let listed = ctl.ok(&["list-machines", "--full", "--no-legend"]);
    assert!(listed.contains(&fleetd.machine_id), "{listed}");
    let known = std::fs::read_to_string(dir.known_hosts()).expect("known hosts");
    assert!(
        known.contains(&sshd.host_key().expect("host key")),
        "{known}"
    );
    // Hashed entries (ssh-keygen -H) are read too.
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(dir.known_hosts())
        .output()
        .expect("ssh-keygen -H");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(dir.known_hosts())
        .expect("known hosts")
        .starts_with("|1|"));
    ctl.set("FLEETCTL_STRICT_HOST_KEY_CHECKING", "true");
    ctl.ok(&["list-machines"]);

    // No fleetctl on the tunnel host to run fd-forward: its own error, in one line.
    let mut no_remote = Ctl::new(&dir, &sshd);
    no_remote.env = ctl.env.clone();
    no_remote.set("FLEETCTL_REMOTE_FLEETCTL", "/nonexistent/fleetctl");
    let err = no_remote.fails(&["list-units"]);
    assert!(
        err.contains("exited with status 127") && err.contains("/nonexistent/fleetctl"),
        "{err}"
    );

    // No agent.
    let mut no_agent = Ctl::new(&dir, &sshd);
    no_agent.env = ctl.env.clone();
    no_agent.env.retain(|(k, _)| k != "SSH_AUTH_SOCK");
    let err = no_agent.fails(&["list-machines"]);
    assert!(err.contains("SSH_AUTH_SOCK is not set"), "{err}");

    // An agent with a key the server does not know.
    let agent = sshd.dir().join("agent.sock");
    let wrong = sshd.dir().join("wrong_key");
    let run = |cmd: &mut Command| {
        let out = cmd.env("SSH_AUTH_SOCK", &agent).output().expect("run");
        assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    };
    run(Command::new("ssh-add").arg("-D"));
    let err = ctl.fails(&["list-machines"]);
    assert!(
        err.contains("holds no keys") && err.contains("ssh-add"),
        "{err}"
    );
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong));
    run(Command::new("ssh-add").arg(&wrong));
    let err = ctl.fails(&["list-machines"]);
    assert!(
        err.contains("refused every key") && err.contains("authorized_keys"),
        "{err}"
    );

    // A tunnel host where nothing listens.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    ctl.set("FLEETCTL_TUNNEL", &format!("127.0.0.1:{closed}"));
    let err = ctl.fails(&["list-machines"]);
    assert!(
        err.contains(&format!("127.0.0.1:{closed}")) && err.contains("cannot reach"),
        "{err}"
    );
}

/// Runs `fleetctl ARGS` on a terminal (util-linux `script`) with `typed` as its input; the
/// exit code and what the terminal showed, or `None` where `script` is missing.
fn on_a_terminal(ctl: &Ctl, args: &str, typed: &str) -> Option<(Option<i32>, String)> {
    if !Path::new("/usr/bin/script").exists() {
        println!("no /usr/bin/script: the terminal case is not run");
        return None;
    }
    let mut line = String::new();
    for (k, v) in &ctl.env {
        line.push_str(&format!("{k}='{v}' "));
    }
    line.push_str(&format!("{FLEETCTL} {args}"));
    let mut child = Command::new("/usr/bin/script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .current_dir(ctl.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(typed.as_bytes()).expect("type");
    // Kept open until fleetctl is done: `script` ends the session at the end of its input.
    let out = child.wait_with_output().expect("wait for script");
    drop(stdin);
    println!(
        "$ fleetctl {args} (on a terminal) -> {:?}\n{}",
        out.status.code(),
        text(&out.stdout)
    );
    Some((out.status.code(), text(&out.stdout)))
}
