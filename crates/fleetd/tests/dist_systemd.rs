//! `dist/fleet.service` and `dist/fleet.socket` installed as a packager would, under a real
//! systemd booted with systemd-nspawn, running the built fleetd from `/opt/fleet`: socket
//! activation, readiness (`Type=notify`), the API over the socket from the host, a unit
//! started through systemd, reload, an upgrade restart and the machine leaving on stop.
//!
//! Skipped, with the reason printed, where nspawn cannot run (not root, no systemd-container,
//! no usable cgroups).

mod common;

use common::{wait_for, Api, DEADLINE};
use std::path::{Path, PathBuf};
use std::time::Instant;
use testkit::nspawn::{nspawn_available, NspawnMachine};

const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\n\
    ExecStart=/usr/bin/sh -c \"while true; do echo Hello World; sleep 1; done\"\n";

/// The directory holding the built binaries (`target/debug`).
fn binaries() -> PathBuf {
    Path::new(common::FLEETD)
        .parent()
        .expect("fleetd lives in a directory")
        .to_path_buf()
}

fn dist(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A booted machine with fleet's units installed (not started).
struct Machine {
    m: NspawnMachine,
}

impl Machine {
    /// Boots a machine and installs the dist units, with a drop-in pointing `ExecStart` at
    /// the bound binaries with `options`.
    fn boot(hint: &str, options: &str) -> Option<Machine> {
        if let Err(why) = nspawn_available() {
            testkit::skip(&why);
            return None;
        }
        let started = Instant::now();
        let m = NspawnMachine::builder(hint)
            .bind_ro(binaries(), "/opt/fleet")
            .boot()
            .expect("boot an nspawn machine");
        println!("booted {} in {:?}", m.name(), started.elapsed());
        let machine = Machine { m };
        // A packager installs the units under /usr/lib/systemd/system; the container's /usr
        // is the host's, read-only, so they go to /etc/systemd/system, which systemd reads
        // the same way.
        machine.write("/etc/systemd/system/fleet.service", &dist("fleet.service"));
        machine.write("/etc/systemd/system/fleet.socket", &dist("fleet.socket"));
        machine.write(
            "/etc/systemd/system/fleet.service.d/test.conf",
            &format!(
                "[Service]\nExecStart=\nExecStart=/opt/fleet/fleetd --registry embedded \
                 --state-dir /var/lib/fleet {options}\n"
            ),
        );
        machine.systemctl_ok(&["daemon-reload"]);
        Some(machine)
    }

    fn write(&self, path: &str, text: &str) {
        let host = self.m.host_path(path);
        if let Some(dir) = host.parent() {
            std::fs::create_dir_all(dir).expect("make a directory in the machine");
        }
        std::fs::write(&host, text).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
    }

    /// `systemctl ARGS` inside; its stdout, whatever the status.
    fn systemctl(&self, args: &[&str]) -> String {
        let out = self.m.systemctl(args).expect("systemctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn systemctl_ok(&self, args: &[&str]) {
        let out = self.m.systemctl(args).expect("systemctl");
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.journal("fleet.service")
        );
    }

    /// One property of a unit (`systemctl show -P`).
    fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl(&["show", "-P", name, unit])
    }

    /// The journal of `unit`, as text with fleetd's fields ([`common::journal_text`]).
    fn journal(&self, unit: &str) -> String {
        common::journal_text(&self.journal_json(unit))
    }

    fn journal_json(&self, unit: &str) -> String {
        let out = self
            .m
            .command("journalctl")
            .args(["--no-pager", "-o", "json", "-u", unit])
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_journal(&self, unit: &str, needle: &str) {
        wait_for(
            &format!("{needle:?} in the journal of {unit}"),
            DEADLINE,
            || self.journal(unit).contains(needle).then_some(()),
        );
    }

    fn wait_property(&self, unit: &str, name: &str, want: &str) {
        let mut last = String::new();
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            last = self.property(unit, name);
            if last == want {
                return;
            }
            std::thread::sleep(common::POLL);
        }
        panic!(
            "{unit} {name}={last:?}, want {want:?}; journal:\n{}",
            self.journal(unit)
        );
    }

    /// The API socket of fleet.socket, as the host reaches it.
    fn socket(&self) -> PathBuf {
        self.m.host_path("/run/fleet.sock")
    }

    fn machine_id(&self) -> String {
        std::fs::read_to_string(self.m.host_path("/etc/machine-id"))
            .expect("the machine's /etc/machine-id")
            .trim()
            .to_string()
    }

    /// The environment of a process of the machine (host PID namespace differs: read it
    /// through the machine's /proc).
    fn environ(&self, pid: &str) -> Vec<String> {
        std::fs::read(self.m.host_path(format!("/proc/{pid}/environ")))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Waits until the API answers 200 and returns a client.
fn registered(machine: &Machine) -> Api {
    let api = Api::unix(&machine.socket());
    let until = Instant::now() + DEADLINE;
    loop {
        match api.machines() {
            Ok(_) => return api,
            Err(e) if Instant::now() > until => panic!(
                "fleetd's API did not answer through fleet.socket: {e}\nfleet.service: {}\n{}",
                machine.systemctl(&["status", "--no-pager", "fleet.service"]),
                machine.journal("fleet.service")
            ),
            Err(_) => std::thread::sleep(common::POLL),
        }
    }
}

#[test]
fn socket_activated_fleetd_runs_units_through_systemd() {
    let Some(machine) = Machine::boot("dist", "--unit-manager systemd --agent-ttl 5s") else {
        return;
    };
    machine.systemctl_ok(&["start", "fleet.socket"]);
    assert_eq!(machine.systemctl(&["is-active", "fleet.socket"]), "active");
    assert_eq!(
        machine.systemctl(&["is-active", "fleet.service"]),
        "inactive",
        "fleet.service runs before anyone connected"
    );
    let mode = std::fs::metadata(machine.socket()).expect("the socket exists");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o660
    );

    // The first connection starts fleetd, which serves the socket systemd passed it.
    let started = Instant::now();
    let api = registered(&machine);
    println!(
        "first API answer through socket activation after {:?}",
        started.elapsed()
    );
    // Type=notify: "active" only once fleetd sent READY=1.
    machine.wait_property("fleet.service", "ActiveState", "active");
    assert_eq!(machine.property("fleet.service", "SubState"), "running");
    let main_pid = machine.property("fleet.service", "MainPID");
    let env = machine.environ(&main_pid);
    assert!(
        env.iter().any(|e| e == "LISTEN_FDS=1"),
        "fleetd was not handed the socket: {env:?}"
    );
    // Only systemd's socket is served: the default api_listen, /var/run/fleet.sock, is that
    // same socket and must not be bound a second time.
    let journal = machine.journal("fleet.service");
    let serving: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("serving the fleet API"))
        .collect();
    assert_eq!(serving.len(), 1, "{journal}");
    assert!(serving[0].contains("/run/fleet.sock"), "{journal}");
    assert!(
        !journal.contains('\u{1b}'),
        "terminal escapes in the journal:\n{journal}"
    );
    let machines = api.machines().expect("GET machines");
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0].id, machine.machine_id());
    assert!(api.units().expect("GET units").is_empty());

    // A unit submitted through the API runs as a systemd unit of the machine.
    let submitted = Instant::now();
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("hello.service");
    println!(
        "hello.service active/running {:?} after PUT",
        submitted.elapsed()
    );
    assert_eq!(machine.systemctl(&["is-active", "hello.service"]), "active");
    let status = machine.systemctl(&["status", "--no-pager", "hello.service"]);
    assert!(status.contains("Active: active (running)"), "{status}");
    let hello_pid = machine.property("hello.service", "MainPID");
    assert_ne!(hello_pid, "0");
    let unit = api.unit("hello.service").expect("unit");
    assert_eq!(unit.current_state, "launched");

    // Under systemd, log_format auto speaks journald's native protocol: the placement is an
    // entry of fleet.service whose unit, machine and revision are journal fields.
    let placed = wait_for("the placement in the journal", DEADLINE, || {
        common::journal_entries(&machine.journal_json("fleet.service"))
            .into_iter()
            .find(|e| e["MESSAGE"] == "unit placed" && e["UNIT"] == "hello.service")
    });
    assert_eq!(placed["MACHINE"], machine.machine_id().as_str(), "{placed}");
    let revision = unit::UnitFile::parse(HELLO).expect("HELLO parses").hash();
    assert_eq!(
        placed["REVISION"],
        revision.to_string().as_str(),
        "{placed}"
    );

    // systemctl reload: SIGHUP, fleetd keeps running and serving.
    machine.systemctl_ok(&["reload", "fleet.service"]);
    machine.wait_journal("fleet.service", "Reloading configuration");
    assert_eq!(machine.property("fleet.service", "MainPID"), main_pid);
    api.machines().expect("API after reload");

    // An upgrade: fleetd alone gets SIGUSR2, exits, and Restart= starts a new one on the same
    // socket, which resumes the machine's lease; the unit is not restarted.
    machine.systemctl_ok(&["kill", "--kill-whom=main", "-s", "USR2", "fleet.service"]);
    wait_for("a new fleetd", DEADLINE, || {
        let pid = machine.property("fleet.service", "MainPID");
        (pid != main_pid && pid != "0").then_some(())
    });
    machine.wait_property("fleet.service", "ActiveState", "active");
    assert_eq!(machine.property("fleet.service", "NRestarts"), "1");
    machine.wait_journal("fleet.service", "resumed the machine lease");
    let api = registered(&machine);
    assert_eq!(
        api.wait_running("hello.service").machine_id,
        machine.machine_id()
    );
    assert_eq!(machine.property("hello.service", "MainPID"), hello_pid);

    // systemctl stop: the machine leaves; fleetd stops its units, and the socket goes too
    // (PartOf=).
    machine.systemctl_ok(&["stop", "fleet.service"]);
    assert_eq!(
        machine.systemctl(&["is-active", "fleet.service"]),
        "inactive"
    );
    assert_eq!(machine.property("fleet.service", "Result"), "success");
    assert_eq!(
        machine.systemctl(&["is-active", "hello.service"]),
        "inactive"
    );
    assert_eq!(
        machine.systemctl(&["is-active", "fleet.socket"]),
        "inactive"
    );
    let journal = machine.journal("fleet.service");
    assert!(journal.contains("left the cluster"), "{journal}");
}

/// The main pid the process supervisor recorded for `unit` inside the machine.
fn supervised_pid(machine: &Machine, unit: &str) -> i32 {
    let record = machine
        .m
        .host_path(format!("/var/lib/fleet/units/process/run/{unit}.json"));
    wait_for(&format!("a run record of {unit}"), DEADLINE, || {
        let text = std::fs::read_to_string(&record).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get("main_pid")?.as_i64().map(|p| p as i32)
    })
}

/// Whether `pid` (of the machine's PID namespace) is alive.
fn alive_in(machine: &Machine, pid: i32) -> bool {
    std::fs::read_to_string(machine.m.host_path(format!("/proc/{pid}/stat"))).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits for systemd to run a fleetd other than `old` and for its API to answer.
fn restarted(machine: &Machine, old: &str) -> (String, Api) {
    let pid = wait_for("a new fleetd", DEADLINE, || {
        let pid = machine.property("fleet.service", "MainPID");
        (pid != old && pid != "0").then_some(pid)
    });
    machine.wait_property("fleet.service", "ActiveState", "active");
    (pid, registered(machine))
}

#[test]
fn process_supervisor_units_outlive_fleetd_restarts_under_systemd() {
    // KillMode=process at work: the process supervisor's units live in fleet.service's
    // cgroup, and neither a crash nor an upgrade of fleetd takes them down; only fleetd's own
    // leave on `systemctl stop` does.
    let Some(machine) = Machine::boot(
        "dist-process",
        // Runtime files on the machine's disk (not its /run tmpfs) so the host can read them.
        "--unit-manager process --agent-ttl 10s --units-directory /var/lib/fleet/units",
    ) else {
        return;
    };
    machine.systemctl_ok(&["start", "fleet.service"]);
    assert_eq!(machine.systemctl(&["is-active", "fleet.socket"]), "active");
    assert_eq!(machine.property("fleet.service", "ActiveState"), "active");
    let first = machine.property("fleet.service", "MainPID");
    let api = registered(&machine);
    api.submit("hello.service", HELLO, "launched");
    api.wait_running("hello.service");
    let hello = supervised_pid(&machine, "hello.service");
    assert!(alive_in(&machine, hello));

    // A crash: systemd restarts fleetd, which adopts the unit.
    machine.systemctl_ok(&["kill", "--kill-whom=main", "-s", "KILL", "fleet.service"]);
    let (second, api) = restarted(&machine, &first);
    assert_eq!(machine.property("fleet.service", "NRestarts"), "1");
    machine.wait_journal("fleet.service", "re-adopted unit");
    api.wait_running("hello.service");
    assert!(alive_in(&machine, hello), "hello.service died with fleetd");
    assert_eq!(supervised_pid(&machine, "hello.service"), hello);

    // An upgrade: the same, through fleetd's own exit.
    machine.systemctl_ok(&["kill", "--kill-whom=main", "-s", "USR2", "fleet.service"]);
    let (_, api) = restarted(&machine, &second);
    assert_eq!(machine.property("fleet.service", "NRestarts"), "2");
    api.wait_running("hello.service");
    assert!(
        alive_in(&machine, hello),
        "hello.service died in the upgrade"
    );
    assert_eq!(supervised_pid(&machine, "hello.service"), hello);
    let log = std::fs::read_to_string(
        machine
            .m
            .host_path("/var/lib/fleet/process/logs/hello.service.log"),
    )
    .unwrap_or_default();
    assert_eq!(log.matches("started hello.service").count(), 1, "{log}");

    // Stop: fleetd stops the unit itself and exits cleanly.
    machine.systemctl_ok(&["stop", "fleet.service"]);
    assert_eq!(machine.property("fleet.service", "Result"), "success");
    assert!(
        !alive_in(&machine, hello),
        "hello.service survived systemctl stop fleet"
    );
    let journal = machine.journal("fleet.service");
    assert!(journal.contains("left the cluster"), "{journal}");
}
