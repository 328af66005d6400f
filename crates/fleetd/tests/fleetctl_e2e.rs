//! The real `fleetctl` against a real `fleetd` (embedded registry, process supervisor): the
//! commands a fleet user types, end to end, on `hello.service` and on ten `hello@N` instances
//! started in one call.

mod common;

use common::{wait_for, Node, DEADLINE};
use std::path::{Path, PathBuf};
use std::process::Output;

struct Ctl {
    endpoint: String,
    cwd: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        common::run_fleetctl(&self.endpoint, Some(&self.cwd), args)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "fleetctl {args:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `list-units` rows as (unit, active, sub).
    fn active_units(&self) -> Vec<(String, String, String)> {
        self.ok(&["list-units", "--no-legend", "--fields", "unit,active,sub"])
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect()
    }

    /// `list-unit-files` rows as (unit, dstate, state).
    fn unit_files(&self) -> Vec<(String, String, String)> {
        self.ok(&[
            "list-unit-files",
            "--no-legend",
            "--fields",
            "unit,dstate,state",
        ])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn fleetctl_drives_a_real_fleetd() {
    let node = Node::new("fleetctl");
    let mut fleetd = node.start(&[]);
    fleetd.wait_registered();
    let units_dir = node.dir().join("unitfiles");
    std::fs::create_dir_all(&units_dir).unwrap();
    for f in ["hello.service", "hello@.service"] {
        std::fs::copy(examples().join(f), units_dir.join(f)).unwrap();
    }
    let ctl = Ctl {
        endpoint: format!("unix://{}", node.socket().display()),
        cwd: units_dir.clone(),
    };

    let machines = ctl.ok(&[
        "list-machines",
        "--no-legend",
        "--full",
        "--fields",
        "machine",
    ]);
    assert_eq!(machines.trim(), node.machine_id);

    // One unit through every state.
    ctl.ok(&["submit", "hello"]);
    assert_eq!(
        ctl.unit_files(),
        vec![("hello.service".into(), "inactive".into(), "inactive".into())]
    );
    ctl.ok(&["load", "hello.service"]);
    assert_eq!(
        ctl.unit_files(),
        vec![("hello.service".into(), "loaded".into(), "loaded".into())]
    );
    let started = ctl.ok(&["start", "hello.service"]);
    assert!(
        started.contains("Unit hello.service launched on"),
        "{started}"
    );
    // Into a pipe the waits print plain lines: no cursor movement for logs and `| cat`.
    assert!(!started.contains('\u{1b}'), "{started:?}");
    assert_eq!(
        ctl.active_units(),
        vec![("hello.service".into(), "active".into(), "running".into())]
    );
    let pid = node.wait_main_pid("hello.service");
    ctl.ok(&["restart", "hello.service"]);
    assert_eq!(
        ctl.active_units(),
        vec![("hello.service".into(), "active".into(), "running".into())]
    );
    let restarted = node.wait_main_pid("hello.service");
    assert_ne!(pid, restarted, "restart gave the unit a new process");
    ctl.ok(&["stop", "hello.service"]);
    assert_eq!(
        ctl.unit_files(),
        vec![("hello.service".into(), "loaded".into(), "loaded".into())]
    );
    assert_eq!(ctl.active_units()[0].1, "inactive");
    ctl.ok(&["unload", "hello.service"]);
    assert_eq!(
        ctl.unit_files(),
        vec![("hello.service".into(), "inactive".into(), "inactive".into())]
    );
    // The agent removes its state record after the unit leaves the schedule (as fleet's
    // agent did), so list-units catches up a moment after unload returns.
    wait_for("hello.service gone from list-units", DEADLINE, || {
        ctl.active_units().is_empty().then_some(())
    });
    assert!(ctl
        .ok(&["destroy", "hello.service"])
        .contains("Destroyed hello.service"));
    assert!(ctl.unit_files().is_empty());

    // Ten instances of the template beside them, in one call.
    let instances: Vec<String> = (1..=10).map(|i| format!("hello@{i}.service")).collect();
    let mut args = vec!["start"];
    args.extend(instances.iter().map(String::as_str));
    ctl.ok(&args);
    let active = ctl.active_units();
    assert_eq!(active.len(), 10, "{active:?}");
    assert!(
        active
            .iter()
            .all(|(_, a, s)| a == "active" && s == "running"),
        "{active:?}"
    );
    // Listed in name order (hello@10 sorts before hello@2, as fleet's sorted keys did).
    let names: Vec<String> = ctl.unit_files().into_iter().map(|(u, _, _)| u).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 10);

    // --replace changes what cat prints, and the replaced unit runs again.
    let before = ctl.ok(&["cat", "hello@3.service"]);
    let changed_dir = node.dir().join("changed");
    std::fs::create_dir_all(&changed_dir).unwrap();
    let text = std::fs::read_to_string(examples().join("hello@.service"))
        .unwrap()
        .replace("sleep 1", "sleep 2");
    std::fs::write(changed_dir.join("hello@3.service"), text).unwrap();
    let path = changed_dir.join("hello@3.service");
    ctl.ok(&["start", "--replace", path.to_str().unwrap()]);
    let after = ctl.ok(&["cat", "hello@3.service"]);
    assert_ne!(before, after);
    assert!(after.contains("sleep 2"), "{after}");
    wait_for("hello@3.service running again", DEADLINE, || {
        ctl.active_units()
            .iter()
            .any(|(u, a, s)| u == "hello@3.service" && a == "active" && s == "running")
            .then_some(())
    });

    let mut args = vec!["destroy"];
    args.extend(instances.iter().map(String::as_str));
    ctl.ok(&args);
    assert!(ctl.unit_files().is_empty());
    wait_for("the instances gone from list-units", DEADLINE, || {
        ctl.active_units().is_empty().then_some(())
    });
    assert!(fleetd.running());
}
