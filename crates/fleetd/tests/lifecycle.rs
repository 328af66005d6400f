//! The real `fleetd` binary through its life on one machine: start, run a unit, signals
//! (SIGTERM leaves, SIGUSR2 and SIGKILL leave units to the next fleetd, SIGHUP reloads), a
//! duplicate machine id, the API before registration, bad configuration and the command line.
//! Embedded registry and process supervisor unless a test says otherwise.

mod common;

use common::{alive, etcd_args, wait_for, Node, DEADLINE, FLEETD, POLL};
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Prints a line a second, so a restart would show in its log as a second start.
const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\n\
    ExecStart=/bin/sh -c \"while true; do echo Hello World; sleep 1; done\"\n";

/// A service whose main process forks a child and prints the child's pid.
const FORKER: &str = "[Service]\n\
    ExecStart=/bin/sh -c \"sleep 600 & echo child=$!; wait\"\n";

fn starts_of(node: &Node, unit: &str) -> usize {
    node.unit_log(unit)
        .matches(&format!("started {unit}"))
        .count()
}

#[test]
fn hello_runs_within_moments_of_submission_and_its_output_is_logged() {
    let node = Node::new("hello");
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    let machines = api.machines().expect("GET machines");
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0].id, node.machine_id);

    let submitted = Instant::now();
    api.submit("hello.service", HELLO, "launched");
    let state = api.wait_running("hello.service");
    println!(
        "hello.service active/running {:?} after PUT (API poll interval {POLL:?})",
        submitted.elapsed()
    );
    assert_eq!(state.machine_id, node.machine_id);
    assert_eq!(state.systemd_load_state, "loaded");
    let unit = api.unit("hello.service").expect("unit exists");
    assert_eq!(unit.desired_state, "launched");
    assert_eq!(unit.machine_id, node.machine_id);

    let pid = node.wait_main_pid("hello.service");
    assert!(alive(pid), "main pid {pid} of hello.service is not running");
    wait_for("Hello World in the unit's log", DEADLINE, || {
        node.unit_log("hello.service")
            .lines()
            .any(|l| l.ends_with(" Hello World"))
            .then_some(())
    });
    assert_eq!(
        starts_of(&node, "hello.service"),
        1,
        "{}",
        node.unit_log("hello.service")
    );
    // The API serves the end of the same output (the dashboard's unit page reads it).
    let lines = api.output("hello.service", 3).expect("GET output");
    assert!(!lines.is_empty() && lines.len() <= 3, "{lines:?}");
    // The supervisor's own "started" line may come after the unit's first output.
    assert!(
        lines.iter().any(|l| l.ends_with(" Hello World")),
        "{lines:?}"
    );
    let unknown = api.output("nope.service", 3).expect_err("no such unit");
    assert!(
        unknown.to_string().contains("unit does not exist"),
        "{unknown}"
    );
    let bad = api.output("hello.service", 0).expect_err("zero lines");
    assert!(bad.to_string().contains("from 1 to"), "{bad}");
    assert!(fleetd.running());
}

#[test]
fn sigterm_stops_the_whole_process_tree_of_units_and_exits_zero() {
    let node = Node::new("sigterm");
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    api.submit("forker.service", FORKER, "launched");
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("forker.service");
    api.wait_running("hello.service");
    let main = node.wait_main_pid("forker.service");
    let hello = node.wait_main_pid("hello.service");
    let child: i32 = wait_for("the forked child's pid in the unit log", DEADLINE, || {
        node.unit_log("forker.service").lines().find_map(|l| {
            l.split_once("child=")
                .and_then(|(_, p)| p.trim().parse().ok())
        })
    });
    assert!(alive(main) && alive(child) && alive(hello));

    fleetd.signal(Signal::SIGTERM);
    let status = fleetd.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: {status}; log:\n{}",
        fleetd.log()
    );
    for (what, pid) in [("main", main), ("forked child", child), ("hello", hello)] {
        assert!(
            !alive(pid),
            "the {what} process {pid} survived fleetd's SIGTERM"
        );
    }
    assert!(
        node.run_records().is_empty(),
        "run records left: {:?}",
        node.run_records()
    );
    assert!(
        node.leftovers().is_empty(),
        "processes left: {:?}",
        node.leftovers()
    );
    assert!(
        !node.socket().exists(),
        "fleetd left its API socket {} behind",
        node.socket().display()
    );
}

/// Stops fleetd with `signal`, starts a new one on the same state dir, and checks that it
/// resumed the machine's lease and adopted the running unit without restarting it.
fn new_fleetd_readopts_after(signal: Signal, expect_exit: impl Fn(std::process::ExitStatus)) {
    let node = Node::new(&format!("readopt-{}", signal.as_str()));
    let mut first = node.start(&[]);
    let api = first.wait_registered();
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("hello.service");
    let pid = node.wait_main_pid("hello.service");
    drop(api);

    first.signal(signal);
    expect_exit(first.wait_exit());
    assert!(
        alive(pid),
        "hello.service ({pid}) died with fleetd ({signal})"
    );

    let mut second = node.start(&[]);
    let api = second.wait_registered();
    second.wait_log("resumed the machine lease");
    let state = api.wait_running("hello.service");
    assert_eq!(state.machine_id, node.machine_id);
    let unit = api.unit("hello.service").expect("unit still exists");
    assert_eq!(unit.desired_state, "launched");
    assert_eq!(unit.current_state, "launched");
    // The new fleetd has acted on the unit (it reports it) and did not restart it.
    assert_eq!(node.wait_main_pid("hello.service"), pid);
    assert!(alive(pid));
    assert_eq!(
        starts_of(&node, "hello.service"),
        1,
        "hello.service was restarted:\n{}",
        node.unit_log("hello.service")
    );
    let machines = api.machines().expect("GET machines");
    assert_eq!(machines.len(), 1, "{machines:?}");

    // The adopted unit is still under control: a stop reaches it.
    api.submit("hello.service", HELLO, "loaded");
    wait_for("the adopted unit to stop", DEADLINE, || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn sigusr2_leaves_units_running_for_the_next_fleetd() {
    new_fleetd_readopts_after(Signal::SIGUSR2, |status| {
        assert_eq!(status.code(), Some(0), "SIGUSR2: {status}");
    });
}

#[test]
fn sigkill_leaves_units_running_for_the_next_fleetd() {
    new_fleetd_readopts_after(Signal::SIGKILL, |status| {
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    });
}

#[test]
fn sighup_reloads_the_configuration_and_touches_no_unit() {
    let node = Node::new("sighup");
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("hello.service");
    let pid = node.wait_main_pid("hello.service");

    fleetd.signal(Signal::SIGHUP);
    fleetd.wait_log("Reloading configuration");
    assert!(
        fleetd.running(),
        "fleetd exited on SIGHUP:\n{}",
        fleetd.log()
    );
    let machines = api.machines().expect("API after SIGHUP");
    assert_eq!(machines.len(), 1);
    let state = api.state("hello.service").expect("state after SIGHUP");
    assert_eq!(
        (
            state.systemd_active_state.as_str(),
            state.systemd_sub_state.as_str()
        ),
        ("active", "running")
    );
    // A new unit still gets scheduled and started after the reload.
    api.submit("forker.service", FORKER, "launched");
    api.wait_running("forker.service");
    assert_eq!(node.wait_main_pid("hello.service"), pid);
    assert!(alive(pid));
    assert_eq!(
        starts_of(&node, "hello.service"),
        1,
        "{}",
        node.unit_log("hello.service")
    );
}

/// fleet's SIGUSR1: the state goes to the log (machines, units with their desired and current
/// states, the agent's view, the leading engine's last plan) and fleetd goes on serving.
#[test]
fn sigusr1_dumps_the_state_to_the_log_and_fleetd_goes_on() {
    let node = Node::new("sigusr1");
    let mut fleetd = node.start(&["--public-ip", "10.1.2.3", "--metadata", "role=web"]);
    let api = fleetd.wait_registered();
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("hello.service");
    let id = &node.machine_id;

    fleetd.signal(Signal::SIGUSR1);
    fleetd.wait_log("state dump of fleetd");
    // The dump is one log event: wait for its last part, then read it whole.
    fleetd.wait_log(&format!("engine of machine {id}: leads"));
    let log = fleetd.log();
    let dump = &log[log.find("state dump of fleetd").expect("dump in log")..];
    for line in [
        format!("cluster: 1 machines
  {id} public IP 10.1.2.3, metadata role=web, version "),
        format!(
            "cluster: 1 units
  hello.service: desired launched, current launched, machine {id}, on {id}: loaded/active/running
"
        ),
        format!("agent of machine {id} (public IP 10.1.2.3, metadata role=web): lease held, 1 units
"),
        "  hello.service: desired launched, here launched (".to_string(),
        format!("engine of machine {id}: leads; its model holds 1 machines, 1 units (1 placed, 0 that cannot be placed)
"),
        "  last plan, ".to_string(),
        format!("    place hello.service on {id} (launched)
"),
    ] {
        assert!(dump.contains(&line), "{line:?} not in the dump:
{dump}");
    }
    assert!(
        fleetd.running(),
        "fleetd exited on SIGUSR1:
{}",
        fleetd.log()
    );
    assert_eq!(api.machines().expect("API after SIGUSR1").len(), 1);
    api.submit("forker.service", FORKER, "launched");
    api.wait_running("forker.service");

    fleetd.signal(Signal::SIGTERM);
    let status = fleetd.wait_exit();
    assert!(status.success(), "{status}\n{}", fleetd.log());
}

/// SIGHUP applies metadata at once and names each other changed option, which waits for the
/// next start.
#[test]
fn sighup_names_the_options_that_wait_for_a_restart() {
    let node = Node::new("sighup-names");
    let conf = node.dir().join("fleet.conf");
    std::fs::write(
        &conf,
        "metadata = \"role=web\"\nengine_reconcile_interval = 1\n",
    )
    .unwrap();
    let mut fleetd = node.start(&["--config", conf.to_str().unwrap()]);
    let api = fleetd.wait_registered();
    std::fs::write(
        &conf,
        "metadata = \"role=db\"\nengine_reconcile_interval = 5\n",
    )
    .unwrap();
    fleetd.signal(Signal::SIGHUP);
    fleetd.wait_log("configuration reloaded");
    let log = fleetd.log();
    assert!(
        log.contains("engine_reconcile_interval changed, but cannot change while fleetd runs: it applies at the next start of fleetd"),
        "{log}"
    );
    assert!(!log.contains("metadata changed, but"), "{log}");
    wait_for("metadata role=db announced", DEADLINE, || {
        let machines = api.machines().ok()?;
        (machines.first()?.metadata.get("role").map(String::as_str) == Some("db")).then_some(())
    });
    assert!(fleetd.running(), "{}", fleetd.log());
}

/// A port on loopback that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    l.local_addr().expect("probe port").port()
}

fn etcd_cluster() -> Option<testkit::etcd::EtcdCluster> {
    common::etcd_with_args(&[])
}

#[test]
fn a_second_fleetd_with_the_same_machine_id_is_refused() {
    let Some(etcd) = etcd_cluster() else { return };
    let endpoints = etcd.endpoints().join(",");
    let first_node = Node::new("dup-a");
    let mut args = etcd_args(&first_node, &endpoints);
    let mut first = first_node.start_raw(&args);
    let api = first.wait_registered();

    // Another host (its own state dir and socket), the same machine id, the same registry.
    let second_node = Node::new("dup-b");
    let own = etcd_args(&second_node, &endpoints);
    for flag in ["--state-dir", "--units-directory", "--api-listen"] {
        let i = own.iter().position(|a| a == flag).expect("flag") + 1;
        let j = args.iter().position(|a| a == flag).expect("flag") + 1;
        args[j] = own[i].clone();
    }
    let mut second = second_node.start_raw(&args);
    let status = second.wait_exit();
    let log = second.log();
    assert!(
        !status.success(),
        "the duplicate fleetd exited {status}:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("fleetd:") && l.contains(&first_node.machine_id)),
        "the error does not name machine id {}:\n{log}",
        first_node.machine_id
    );
    assert!(log.contains("already registered"), "{log}");

    // The first one is unaffected.
    assert!(first.running());
    let machines = api.machines().expect("GET machines from the first fleetd");
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].id, first_node.machine_id);
}

#[test]
fn the_api_answers_503_until_the_machine_is_registered() {
    let node = Node::new("unregistered");
    let mut fleetd = node.start_raw(&etcd_args(
        &node,
        &format!("http://127.0.0.1:{}", closed_port()),
    ));
    let api = fleetd.api();
    let err = wait_for("the API socket to answer", DEADLINE, || {
        match api.machines() {
            Err(api::ClientError::Api { status, message }) => Some((status, message)),
            Err(_) => None,
            Ok(m) => panic!("machines listed without a registry: {m:?}"),
        }
    });
    assert_eq!(err.0, 503, "{err:?}");
    assert!(
        err.1
            .starts_with("fleet server unable to communicate with etcd"),
        "{err:?}"
    );
    for path_result in [api.units().map(|_| ()), api.machines().map(|_| ())] {
        assert_eq!(path_result.err().and_then(|e| e.status()), Some(503));
    }
    // Waiting for the registry, fleetd still obeys SIGTERM at once.
    fleetd.signal(Signal::SIGTERM);
    let status = fleetd.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", fleetd.log());
}

#[test]
fn the_api_turns_available_when_etcd_comes_up() {
    let Some(mut etcd) = etcd_cluster() else {
        return;
    };
    etcd.kill_member(0).expect("stop etcd");
    let node = Node::new("late-etcd");
    let mut fleetd = node.start_raw(&etcd_args(&node, &etcd.endpoints().join(",")));
    let api = fleetd.api();
    let status = wait_for("a 503 from the API", DEADLINE, || {
        api.machines().err().and_then(|e| e.status())
    });
    assert_eq!(status, 503);
    etcd.restart_member(0).expect("restart etcd");
    let api = fleetd.wait_registered();
    let machines = api.machines().expect("GET machines");
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].id, node.machine_id);
}

/// Runs fleetd to its exit (killing it if it outlives the deadline); its status and output.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(FLEETD);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .env("NO_COLOR", "1");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEET_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn fleetd");
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fleetd {args:?} still ran after {DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    };
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out_path), read(&err_path))
}

#[test]
fn bad_configuration_stops_fleetd_at_start_naming_option_value_and_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("fleet.conf");
    std::fs::write(&conf, "# test\nagent_ttl = 5 parsecs\n").expect("write config");
    let conf = conf.display().to_string();
    // (flags, environment, what the error must name: option, value, source)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], [&'a str; 3]);
    let cases: [Case; 4] = [
        (
            &["--agent-ttl", "banana"],
            &[],
            ["agent_ttl", "\"banana\"", "--agent-ttl"],
        ),
        (
            &[],
            &[("FLEET_TOKEN_LIMIT", "lots")],
            ["token_limit", "\"lots\"", "FLEET_TOKEN_LIMIT"],
        ),
        (
            &["--config", &conf],
            &[],
            ["agent_ttl", "\"5 parsecs\"", &conf],
        ),
        (
            &["--registry", "zookeeper"],
            &[],
            ["registry", "zookeeper", "--registry"],
        ),
    ];
    for (args, env, expect) in cases {
        let (status, _, err) = run_to_exit(args, env);
        assert_eq!(status.code(), Some(1), "{args:?} {env:?}: {status}\n{err}");
        for needle in expect {
            assert!(
                err.contains(needle),
                "{args:?} {env:?}: {needle:?} not in {err:?}"
            );
        }
    }
}

#[test]
fn version_and_positional_arguments() {
    let (status, out, _) = run_to_exit(&["--version"], &[]);
    assert!(status.success(), "{status}");
    assert_eq!(
        out.trim(),
        format!("fleetd version {}", env!("CARGO_PKG_VERSION"))
    );

    let (status, _, err) = run_to_exit(&["foo"], &[]);
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(
        err.contains("takes no arguments. Did you mean to invoke fleetctl instead?"),
        "{err}"
    );
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let close = stat.rfind(')').expect("stat has (comm)");
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5); f[0] is field 3.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn an_idle_fleetd_sleeps() {
    // A fleetd with nothing to do wakes for lease keep-alives only. This caught an agent
    // loop spinning on a closed channel (half a core, forever). The bound is loose on
    // purpose: a busy loop takes all the CPU it gets; an idle daemon takes next to none.
    let node = Node::new("idle");
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("hello.service");
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let ticks_per_s = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let window = std::time::Duration::from_secs(3);
    let before = cpu_ticks(fleetd.pid());
    let started = Instant::now();
    std::thread::sleep(window);
    let used = (cpu_ticks(fleetd.pid()) - before) as f64 / ticks_per_s;
    let share = used / started.elapsed().as_secs_f64();
    println!(
        "idle fleetd used {used:.2} s of CPU in {:?} ({:.1}% of a core)",
        started.elapsed(),
        share * 100.0
    );
    assert!(
        share < 0.2,
        "an idle fleetd used {:.0}% of a core",
        share * 100.0
    );
}
