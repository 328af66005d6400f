//! Killing what the process unit manager started, so that no unit outlives its test.
//!
//! The process manager runs each command of a unit as the leader of its own session and records
//! the session leaders and the main pid in `<runtime_dir>/run/<unit>.json` (fleetd's runtime dir
//! is `<units_directory>/process`); the log
//! forwarder of each run has the unit's log path (under `state_dir`) on its command line. A
//! fleetd killed between spawning a unit and writing its record leaves a process no record names,
//! so the units the harness builds carry `FLEET_CLUSTER_TAG=<tag>` in their environment and every
//! process with that tag is killed as well.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The environment variable the harness's units carry (see [`crate::units`]).
pub const TAG_VAR: &str = "FLEET_CLUSTER_TAG";

/// The part of the process manager's run record the harness reads.
#[derive(Debug, Deserialize)]
struct RunRecord {
    main_pid: Option<i32>,
    #[serde(default)]
    sessions: Vec<i32>,
}

fn records(runtime_dir: &Path) -> Vec<(String, RunRecord)> {
    let dir = runtime_dir.join("run");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        if let Ok(rec) = serde_json::from_slice::<RunRecord>(&text) {
            out.push((name.to_string(), rec));
        }
    }
    out
}

/// Main pids of the units the process manager with `runtime_dir` runs, by unit name (only
/// those whose process is alive).
pub fn unit_main_pids(runtime_dir: &Path) -> BTreeMap<String, i32> {
    records(runtime_dir)
        .into_iter()
        .filter_map(|(name, rec)| Some((name, rec.main_pid?)))
        .filter(|(_, pid)| alive(*pid))
        .collect()
}

/// Whether `pid` runs (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// SIGKILLs every session and main pid recorded under `state_dir`. Returns how many signals were
/// delivered.
pub fn kill_recorded_units(runtime_dir: &Path) -> usize {
    let mut delivered = 0;
    for (_, rec) in records(runtime_dir) {
        for session in rec.sessions.iter().copied().filter(|p| *p > 1) {
            // A session leader's pid is its process group id.
            if killpg(Pid::from_raw(session), Signal::SIGKILL).is_ok() {
                delivered += 1;
            }
        }
        if let Some(pid) = rec.main_pid.filter(|p| *p > 1) {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                delivered += 1;
            }
        }
    }
    delivered
}

/// SIGKILLs every process whose environment holds `FLEET_CLUSTER_TAG=<tag>` or whose command
/// line mentions `dir` (log forwarders, units started from files under it), and its process
/// group when it leads one. Never touches this process.
pub fn kill_tagged(tag: &str, dir: &Path) -> usize {
    let me = std::process::id() as i32;
    let needle_env = format!("{TAG_VAR}={tag}");
    let needle_dir = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut delivered = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || pid <= 1 {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let tagged = environ
            .split(|b| *b == 0)
            .any(|var| var == needle_env.as_bytes());
        let mentions_dir = !needle_dir.is_empty()
            && cmdline
                .split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(&needle_dir));
        if tagged || mentions_dir {
            if nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok() == Some(Pid::from_raw(pid)) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                delivered += 1;
            }
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_tells_a_running_process_from_a_reaped_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(alive(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn recorded_sessions_are_killed_and_pids_read() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        // A session leader with a child in its group, as the process manager starts units.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 30 & wait"]).process_group(0);
        let mut leader = cmd.spawn().unwrap();
        let pid = leader.id() as i32;
        std::fs::write(
            run.join("a.service.json"),
            format!(r#"{{"boot_id":"x","main_pid":{pid},"main_start_time":1,"sessions":[{pid}],"sub":"running"}}"#),
        )
        .unwrap();
        assert_eq!(
            unit_main_pids(dir.path()),
            BTreeMap::from([("a.service".to_string(), pid)])
        );
        assert!(kill_recorded_units(dir.path()) >= 1);
        leader.wait().unwrap();
        assert!(unit_main_pids(dir.path()).is_empty());
    }
}
