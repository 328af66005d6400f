//! fleetd's log formats, read as a log shipper would: `--log-format json` prints one JSON
//! object a line, and the lines of an engine placement and an agent action carry the unit,
//! the machine and the unit's revision as fields; `journald` reaches the journal.

mod common;

use common::{wait_for, Node, DEADLINE};
use serde_json::Value;

const SLEEPER: &str = "[Service]\nExecStart=/bin/sleep 600\n";

/// Every line of `log` as JSON; panics naming a line that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\nthe whole log:\n{log}"))
        })
        .collect()
}

/// A field of a JSON line, at the top (an event's own fields) or in its span (the agent's
/// machine).
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get(name)
        .or_else(|| line.get("span").and_then(|s| s.get(name)))
        .and_then(Value::as_str)
}

#[test]
fn json_logs_carry_unit_machine_and_revision() {
    let node = Node::new("json-log");
    let mut fleetd = node.start(&["--log-format", "json"]);
    let api = fleetd.wait_registered();
    api.submit("sleeper.service", SLEEPER, "launched");
    api.wait_running("sleeper.service");
    let revision = unit::UnitFile::parse(SLEEPER)
        .expect("the test unit parses")
        .hash()
        .to_string();

    let with_message = |message: &str| {
        let lines = json_lines(&fleetd.log());
        lines
            .into_iter()
            .find(|l| l.get("message").and_then(Value::as_str) == Some(message))
    };
    let placed = wait_for("the placement logged", DEADLINE, || {
        with_message("unit placed")
    });
    assert_eq!(field(&placed, "unit"), Some("sleeper.service"), "{placed}");
    assert_eq!(
        field(&placed, "machine"),
        Some(node.machine_id.as_str()),
        "{placed}"
    );
    assert_eq!(
        field(&placed, "revision"),
        Some(revision.as_str()),
        "{placed}"
    );
    assert_eq!(field(&placed, "level"), Some("INFO"), "{placed}");

    let lines = json_lines(&fleetd.log());
    let started = lines
        .iter()
        .find(|l| field(l, "message") == Some("unit action") && field(l, "action") == Some("start"))
        .unwrap_or_else(|| panic!("no start logged:\n{}", fleetd.log()));
    assert_eq!(field(started, "unit"), Some("sleeper.service"), "{started}");
    assert_eq!(
        field(started, "machine"),
        Some(node.machine_id.as_str()),
        "{started}"
    );
    assert_eq!(
        field(started, "revision"),
        Some(revision.as_str()),
        "{started}"
    );
    assert!(fleetd.running());
}

#[test]
fn a_bad_log_format_is_refused_naming_the_choices() {
    let node = Node::new("bad-log-format");
    let mut fleetd = node.start(&["--log-format", "xml"]);
    let status = fleetd.wait_exit();
    assert!(!status.success());
    let log = fleetd.log();
    assert!(
        log.contains("log_format") || log.contains("log-format"),
        "{log}"
    );
    assert!(
        log.contains("expected auto, text, json or journald"),
        "{log}"
    );
}

/// Needs a journal on this host (journald's socket and `journalctl`): skipped where there is
/// none, in CI too, since CI's machines are containers without one. journald's output is
/// tested for real in `dist_systemd.rs` (fleetd as a unit of a systemd booted with nspawn,
/// `log_format` auto), and the choice of format in `fleetd::logging`'s unit tests.
#[test]
fn journald_lines_carry_their_fields() {
    let socket = std::path::Path::new(fleetd::logging::JOURNAL_SOCKET);
    let journalctl = std::path::Path::new("/usr/bin/journalctl");
    if !socket.exists() || !journalctl.exists() {
        eprintln!(
            "skipped: no journal here ({} or {} missing)",
            socket.display(),
            journalctl.display()
        );
        return;
    }
    let node = Node::new("journald-log");
    let mut fleetd = node.start(&["--log-format", "journald"]);
    let api = fleetd.wait_registered();
    api.submit("sleeper.service", SLEEPER, "launched");
    api.wait_running("sleeper.service");
    let query = || {
        let out = std::process::Command::new(journalctl)
            .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=fleetd"])
            .arg(format!("MACHINE={}", node.machine_id))
            .arg("UNIT=sleeper.service")
            .output()
            .expect("running journalctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l.get("MESSAGE").and_then(Value::as_str) == Some("unit placed"))
    };
    let placed = wait_for("the placement in the journal", DEADLINE, query);
    assert!(placed.get("REVISION").is_some(), "{placed}");
    assert!(fleetd.running());
}
