//! fleetctl's exit code and first error line for the common failures, next to fleet's, against
//! a real fleetd (embedded registry, process supervisor). Where ours differs from fleet's on
//! purpose, the row says why; the README of fleetctl lists the same differences.

mod common;

use common::Node;
use std::path::Path;

struct Case {
    what: &'static str,
    args: &'static [&'static str],
    /// Our exit code and a piece of the first line of stderr.
    code: i32,
    first_line: &'static str,
    /// A line that ours prints before the error line fleet would have printed first; the error
    /// line (`first_line`) must then follow it.
    note_first: &'static str,
    /// fleet's exit code, and why ours differs where it does.
    fleet_code: i32,
    why_different: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "cat of an unknown unit",
        args: &["cat", "nosuch.service"],
        code: 1,
        first_line: "Unit nosuch.service not found",
        note_first: "",
        fleet_code: 1,
        why_different: "",
    },
    Case {
        what: "start of a unit neither in the registry nor on disk",
        args: &["start", "nosuch.service"],
        code: 1,
        first_line: "unable to find Unit(nosuch.service) in Registry or on filesystem",
        note_first: "",
        fleet_code: 1,
        why_different: "",
    },
    Case {
        what: "stop of an unknown unit",
        args: &["stop", "nosuch.service"],
        code: 0,
        first_line: "Unit nosuch.service not found in registry",
        note_first: "",
        fleet_code: 0,
        why_different: "",
    },
    Case {
        what: "destroy of an unknown unit",
        args: &["destroy", "nosuch.service"],
        code: 0,
        first_line: "Unit nosuch.service not found in registry",
        note_first: "",
        fleet_code: 0,
        why_different: "",
    },
    Case {
        what: "submit of a malformed unit file",
        args: &["submit", "broken.service"],
        code: 1,
        first_line: "broken.service",
        note_first: "",
        fleet_code: 1,
        why_different: "",
    },
    Case {
        what: "start with no unit",
        args: &["start"],
        code: 0,
        first_line: "No units given",
        note_first: "",
        fleet_code: 0,
        why_different: "",
    },
    Case {
        what: "start of a unit no machine can take, attempts exhausted",
        args: &["start", "--block-attempts=1", "picky.service"],
        code: 1,
        first_line: "timed out waiting for unit picky.service to report state launched",
        note_first: "Unit picky.service cannot be placed: no machine matches MachineMetadata",
        fleet_code: 1,
        why_different: "",
    },
    Case {
        what: "restart of an inactive unit",
        args: &["restart", "idle.service"],
        code: 1,
        first_line: "Unable to restart unit idle.service in state inactive",
        note_first: "",
        fleet_code: 0,
        why_different: "fleet printed the error and exited 0, so a script could not tell",
    },
    Case {
        what: "stop of an inactive unit",
        args: &["stop", "idle.service"],
        code: 1,
        first_line: "Unable to stop unit idle.service in state inactive",
        note_first: "",
        fleet_code: 1,
        why_different: "",
    },
    Case {
        what: "an unknown command",
        args: &["bogus"],
        code: 2,
        first_line: "unrecognized subcommand 'bogus'",
        note_first: "",
        fleet_code: 0,
        why_different: "cobra's errors exited 0 in fleet (its exit code was never set)",
    },
    Case {
        what: "an unknown flag",
        args: &["list-units", "--bogus"],
        code: 2,
        first_line: "unexpected argument '--bogus'",
        note_first: "",
        fleet_code: 0,
        why_different: "as for unknown commands",
    },
];

fn run(endpoint: &str, dir: &Path, args: &[&str]) -> (i32, String) {
    let out = common::run_fleetctl(endpoint, Some(dir), args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn common_failures_exit_as_fleet_did_or_as_documented() {
    let node = Node::new("exit-codes");
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    let dir = node.dir().join("unitfiles");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.service"),
        "[Service\nExecStart=/bin/true\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("picky.service"),
        "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nMachineMetadata=region=nowhere\n",
    )
    .unwrap();
    api.submit(
        "idle.service",
        "[Service]\nExecStart=/bin/sleep 100\n",
        "inactive",
    );
    let endpoint = format!("unix://{}", node.socket().display());

    let mut failures = Vec::new();
    for case in CASES {
        assert!(
            case.code == case.fleet_code || !case.why_different.is_empty(),
            "{}: a difference from fleet needs its reason",
            case.what
        );
        let (code, stderr) = run(&endpoint, &dir, case.args);
        let mut lines = stderr.lines();
        if !case.note_first.is_empty() && lines.next().is_none_or(|l| !l.contains(case.note_first))
        {
            failures.push(format!(
                "{}: want first {:?}, got {stderr:?}",
                case.what, case.note_first
            ));
        }
        let first = lines.next().unwrap_or("");
        println!("{}: exit {code}, {first:?}", case.what);
        if code != case.code || !first.contains(case.first_line) {
            failures.push(format!(
                "{} (fleetctl {}): exit {code} (want {}), first line {first:?} (want it to \
                 contain {:?})",
                case.what,
                case.args.join(" "),
                case.code,
                case.first_line
            ));
        }
    }

    // An unreachable endpoint, for a command that reads and one that writes.
    for args in [&["list-units"][..], &["start", "idle.service"]] {
        let (code, stderr) = run("unix:///nonexistent/fleet.sock", &dir, args);
        let first = stderr.lines().next().unwrap_or("");
        if code != 1 || !first.contains("unix:///nonexistent/fleet.sock") {
            failures.push(format!(
                "unreachable endpoint, fleetctl {}: exit {code}, {first:?}",
                args.join(" ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing above changed the unit that was there.
    let idle = api.unit("idle.service").expect("idle.service still there");
    assert_eq!(idle.desired_state, "inactive");
}
