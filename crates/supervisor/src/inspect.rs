//! What `fleetctl status` and `fleetctl journal` show of a unit on a machine whose unit
//! manager is this supervisor: read from the files the supervisor writes (see the crate's
//! documentation), by another process, without fleetd's help.
//!
//! ```no_run
//! let dirs = supervisor::inspect::Dirs::new("/var/lib/fleet/process".into(), "/run/fleet/units/process".into());
//! let status = dirs.status("hello.service");
//! print!("{}", status.render(&dirs.log_tail("hello.service", 10)));
//! std::process::exit(status.exit_code());
//! ```
//!
//! The supervisor keeps a failed unit's state in fleetd's memory only; read from outside, a
//! unit that is not running is `inactive (dead)`, and its log says why it stopped.

use crate::units::{RecordedState, RunRecord};
use crate::{sys, ActiveState, SubState};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// The supervisor's two directories (fleetd: `state_dir/process` and
/// `units_directory/process`).
#[derive(Clone, Debug)]
pub struct Dirs {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

/// A unit's state as the files tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    /// The unit file, when loaded.
    pub unit_file: Option<PathBuf>,
    pub description: Option<String>,
    pub active: ActiveState,
    pub sub: SubState,
    pub main_pid: Option<i32>,
}

impl Dirs {
    pub fn new(state_dir: PathBuf, runtime_dir: PathBuf) -> Dirs {
        Dirs {
            state_dir,
            runtime_dir,
        }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    pub fn status(&self, name: &str) -> Status {
        let path = self.runtime_dir.join("units").join(name);
        let text = std::fs::read_to_string(&path).ok();
        let description = text.as_deref().and_then(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("Description="))
                .next_back()
                .map(str::to_string)
        });
        let record: Option<RunRecord> =
            std::fs::read(self.runtime_dir.join("run").join(format!("{name}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .ok();
        let (active, sub, main_pid) = match record {
            // A record from before a reboot describes nothing that runs now.
            Some(r) if boot.as_deref().is_some_and(|b| b != r.boot_id) => {
                (ActiveState::Inactive, SubState::Dead, None)
            }
            Some(r) if r.sub == RecordedState::Exited => {
                (ActiveState::Active, SubState::Exited, None)
            }
            Some(RunRecord {
                main_pid: Some(pid),
                main_start_time: Some(start),
                ..
            }) if sys::alive(pid, start) => (ActiveState::Active, SubState::Running, Some(pid)),
            _ => (ActiveState::Inactive, SubState::Dead, None),
        };
        Status {
            name: name.to_string(),
            unit_file: text.map(|_| path),
            description,
            active,
            sub,
            main_pid,
        }
    }

    /// The last `n` lines of the unit's log (the rotated file first if the current one is
    /// short).
    pub fn log_tail(&self, name: &str, n: usize) -> Vec<String> {
        let path = self.log_path(name);
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        let mut lines: Vec<String> = Vec::new();
        for p in [PathBuf::from(rotated), path] {
            if let Ok(text) = std::fs::read(&p) {
                lines.extend(String::from_utf8_lossy(&text).lines().map(str::to_string));
            }
        }
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// Prints the last `n` lines in `mode`, then, with `follow`, every line appended (also
    /// across a rotation of the file) until the process is interrupted or `reader_gone` says
    /// nobody reads `out` any more (checked between polls: a quiet log never writes, so a
    /// closed pipe alone would not end the follow).
    pub fn print_log(
        &self,
        name: &str,
        n: usize,
        mode: OutputMode,
        follow: bool,
        out: &mut impl std::io::Write,
        reader_gone: &dyn Fn() -> bool,
    ) -> std::io::Result<()> {
        for line in self.log_tail(name, n) {
            writeln!(out, "{}", mode.format(&line))?;
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        let path = self.log_path(name);
        let mut file = std::fs::File::open(&path).ok();
        let mut pos = file
            .as_mut()
            .and_then(|f| f.seek(SeekFrom::End(0)).ok())
            .unwrap_or(0);
        let mut partial = String::new();
        loop {
            use std::os::unix::fs::MetadataExt;
            if reader_gone() {
                return Ok(());
            }
            let current = std::fs::metadata(&path).ok();
            let ours = file.as_ref().and_then(|f| f.metadata().ok());
            let same = matches!((&current, &ours), (Some(c), Some(o)) if c.ino() == o.ino());
            if !same && current.is_some() {
                // Rotated (or created): the new file is read from its start.
                file = std::fs::File::open(&path).ok();
                pos = 0;
            }
            if let Some(f) = file.as_mut() {
                let len = f.metadata().map(|m| m.len()).unwrap_or(pos);
                if len < pos {
                    pos = 0;
                }
                if len > pos {
                    f.seek(SeekFrom::Start(pos))?;
                    let mut chunk = Vec::new();
                    f.take(len - pos).read_to_end(&mut chunk)?;
                    pos += chunk.len() as u64;
                    partial.push_str(&String::from_utf8_lossy(&chunk));
                    let mut rest = String::new();
                    let mut reader = std::io::Cursor::new(std::mem::take(&mut partial));
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line)? == 0 {
                            break;
                        }
                        match line.strip_suffix('\n') {
                            Some(l) => writeln!(out, "{}", mode.format(l))?,
                            None => rest = line,
                        }
                    }
                    partial = rest;
                    out.flush()?;
                }
            }
            // The supervisor's forwarder writes whole lines at its own pace; polling a file is
            // what `tail -f` does too where inotify is not worth a dependency.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// journalctl's `--output` modes that mean something for the supervisor's logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// The line as kept: timestamp, then the message.
    Short,
    /// The message only.
    Cat,
}

impl OutputMode {
    pub fn parse(s: &str) -> Result<OutputMode, String> {
        match s {
            "short" | "short-iso" | "short-precise" | "short-full" | "short-iso-precise" => {
                Ok(OutputMode::Short)
            }
            "cat" => Ok(OutputMode::Cat),
            other => Err(format!(
                "--output={other} is not available for units of the process supervisor (their logs are plain lines); use short or cat"
            )),
        }
    }

    fn format(self, line: &str) -> String {
        match self {
            OutputMode::Short => line.to_string(),
            OutputMode::Cat => line
                .split_once(' ')
                .map(|(_, msg)| msg)
                .unwrap_or(line)
                .to_string(),
        }
    }
}

impl Status {
    /// `systemctl status`'s exit code: 0 active, 3 not active, 4 no such unit.
    pub fn exit_code(&self) -> i32 {
        if self.unit_file.is_none() && self.active != ActiveState::Active {
            4
        } else if self.active == ActiveState::Active {
            0
        } else {
            3
        }
    }

    /// `systemctl status -l`'s shape, followed by the log lines given.
    pub fn render(&self, log: &[String]) -> String {
        let mut s = String::new();
        let dot = if self.active == ActiveState::Active {
            "●"
        } else {
            "○"
        };
        match &self.description {
            Some(d) => s.push_str(&format!("{dot} {} - {d}\n", self.name)),
            None => s.push_str(&format!("{dot} {}\n", self.name)),
        }
        match &self.unit_file {
            Some(p) => s.push_str(&format!(
                "     Loaded: loaded ({}; fleet process supervisor)\n",
                p.display()
            )),
            None => s.push_str("     Loaded: not-found (not loaded on this machine)\n"),
        }
        s.push_str(&format!(
            "     Active: {} ({})\n",
            self.active.as_str(),
            self.sub.as_str()
        ));
        if let Some(pid) = self.main_pid {
            s.push_str(&format!("   Main PID: {pid}\n"));
        }
        if !log.is_empty() {
            s.push('\n');
            for line in log {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, Dirs) {
        let t = tempfile::tempdir().expect("temp dir");
        let d = Dirs::new(t.path().join("state"), t.path().join("run"));
        for dir in [
            d.state_dir.join("logs"),
            d.runtime_dir.join("units"),
            d.runtime_dir.join("run"),
        ] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        (t, d)
    }

    #[test]
    fn states_from_the_files() {
        let (_t, d) = dirs();
        let missing = d.status("nope.service");
        assert_eq!(
            (missing.active, missing.exit_code()),
            (ActiveState::Inactive, 4)
        );

        std::fs::write(
            d.runtime_dir.join("units/a.service"),
            "[Unit]\nDescription=Hello A\n\n[Service]\nExecStart=/bin/true\n",
        )
        .expect("write");
        let loaded = d.status("a.service");
        assert_eq!((loaded.sub, loaded.exit_code()), (SubState::Dead, 3));
        assert_eq!(loaded.description.as_deref(), Some("Hello A"));

        // This test's own pid stands for a running main process.
        let me = std::process::id() as i32;
        let start = sys::proc_stat(me).expect("own stat").start_time;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default();
        let record = |pid: i32, start: u64, sub: &str, boot: &str| {
            format!(
                r#"{{"boot_id":"{boot}","main_pid":{pid},"main_start_time":{start},"sessions":[],"sub":"{sub}"}}"#
            )
        };
        let rec = d.runtime_dir.join("run/a.service.json");
        std::fs::write(&rec, record(me, start, "running", &boot)).expect("write");
        let running = d.status("a.service");
        assert_eq!(
            (
                running.active,
                running.sub,
                running.main_pid,
                running.exit_code()
            ),
            (ActiveState::Active, SubState::Running, Some(me), 0)
        );
        let shown = running.render(&["2026-01-01T00:00:00.000Z hi".into()]);
        assert!(shown.contains("Active: active (running)"), "{shown}");
        assert!(shown.contains(&format!("Main PID: {me}")), "{shown}");
        assert!(shown.ends_with("hi\n"), "{shown}");

        // A reused pid (other start time) is not the unit.
        std::fs::write(&rec, record(me, start + 1, "running", &boot)).expect("write");
        assert_eq!(d.status("a.service").sub, SubState::Dead);
        std::fs::write(&rec, record(me, start, "exited", &boot)).expect("write");
        assert_eq!(d.status("a.service").sub, SubState::Exited);
        std::fs::write(&rec, record(me, start, "running", "another-boot")).expect("write");
        if !boot.is_empty() {
            assert_eq!(d.status("a.service").sub, SubState::Dead);
        }
    }

    #[test]
    fn log_tail_spans_the_rotated_file() {
        let (_t, d) = dirs();
        assert!(d.log_tail("a.service", 10).is_empty());
        let log = d.log_path("a.service");
        std::fs::write(format!("{}.1", log.display()), "t1 one\nt2 two\n").expect("write");
        std::fs::write(&log, "t3 three\n").expect("write");
        assert_eq!(d.log_tail("a.service", 2), vec!["t2 two", "t3 three"]);
        assert_eq!(d.log_tail("a.service", 10).len(), 3);
        let mut out = Vec::new();
        d.print_log("a.service", 2, OutputMode::Cat, false, &mut out, &|| false)
            .expect("print");
        assert_eq!(String::from_utf8_lossy(&out), "two\nthree\n");
    }

    #[test]
    fn output_modes() {
        assert_eq!(OutputMode::parse("short"), Ok(OutputMode::Short));
        assert_eq!(OutputMode::parse("cat"), Ok(OutputMode::Cat));
        assert!(OutputMode::parse("json")
            .unwrap_err()
            .contains("short or cat"));
    }
}
