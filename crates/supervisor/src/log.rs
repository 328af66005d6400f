//! Per-unit logs: every line a unit writes to stdout/stderr, with a timestamp, in
//! `state_dir/logs/<unit>.log`, rotated at a size bound.
//!
//! A unit's stdout and stderr are one pipe whose reading end belongs to the state directory's
//! log forwarder (see [`crate::forwarder`]), one process for all units, which writes them
//! here with [`Lines`] and [`LogFile`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// First argument that makes a binary act as the process supervisor's helper.
pub const HELPER_ARG: &str = "__fleet-process-helper";
/// Reply of `<helper> __fleet-process-helper probe`, checked when a manager starts. Version 2
/// serves every unit of a state directory from one process (`log-serve`).
pub const PROBE_REPLY: &str = "fleet-process-helper 2";

/// Rotation bound of a unit's log; one older file (`.log.1`) is kept.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// The forwarder lives as long as the units' output: signals meant for fleetd (a
/// `pkill fleetd`, `systemctl kill fleet`, a SIGUSR2 upgrade) must not end it, or the units'
/// next writes would meet closed pipes.
pub(crate) fn ignore_control_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: SIG_IGN installs no handler code, so nothing can run in signal context;
        // this process is single-threaded at this point.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// Runs the helper and exits if this process was started as the helper; returns otherwise.
/// A binary that serves as the helper (fleetd, `fleet-process-helper`) calls this first thing
/// in `main`.
pub fn run_helper_if_requested() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == HELPER_ARG) != Some(true) {
        return;
    }
    let code = match args.get(2).and_then(|a| a.to_str()) {
        Some("probe") => {
            println!("{PROBE_REPLY}");
            0
        }
        Some(crate::forwarder::SERVE) => match args.get(3) {
            Some(logs_dir) => crate::forwarder::serve(Path::new(logs_dir)),
            None => 2,
        },
        _ => {
            eprintln!(
                "usage: {HELPER_ARG} probe | {} <logs-dir>",
                crate::forwarder::SERVE
            );
            2
        }
    };
    std::process::exit(code);
}

/// `2024-05-01T12:00:00.123Z`: RFC 3339 in UTC with milliseconds.
pub fn format_timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn now_stamp() -> String {
    format_timestamp(SystemTime::now())
}

/// Appends to a log file with rotation. Several writers (a lingering forwarder, fleetd's own
/// messages) may share one file: each appends whole lines with O_APPEND and reopens the file
/// when another writer rotated it away.
pub struct LogFile {
    path: PathBuf,
    max: u64,
    file: Option<std::fs::File>,
}

impl LogFile {
    pub fn new(path: &Path, max: u64) -> LogFile {
        LogFile {
            path: path.to_path_buf(),
            max,
            file: None,
        }
    }

    fn rotated(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Appends `data` (whole lines), rotating before a line that would take the file past the
    /// bound. Errors are dropped: a full disk must not stop the unit.
    pub fn append(&mut self, mut data: &[u8]) {
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::metadata(&self.path).ok();
        let ours = self.file.as_ref().and_then(|f| f.metadata().ok());
        let same = matches!((&current, &ours), (Some(c), Some(o)) if c.ino() == o.ino() && c.dev() == o.dev());
        if !same {
            self.file = None;
        }
        let mut len = current.map(|c| c.len()).unwrap_or(0);
        while !data.is_empty() {
            // The longest prefix of whole lines that fits; at least one line.
            let room = self.max.saturating_sub(len) as usize;
            let mut take = 0;
            for (i, &b) in data.iter().enumerate() {
                if b == b'\n' {
                    if i + 1 > room && take > 0 {
                        break;
                    }
                    take = i + 1;
                    if i + 1 > room {
                        break;
                    }
                }
            }
            if take == 0 {
                take = data.len();
            }
            if len > 0 && len + take as u64 > self.max {
                let _ = std::fs::rename(&self.path, Self::rotated(&self.path));
                self.file = None;
                len = 0;
                continue;
            }
            if self.file.is_none() {
                self.file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .ok();
            }
            if let Some(f) = &mut self.file {
                let _ = f.write_all(&data[..take]);
            }
            len += take as u64;
            data = &data[take..];
        }
    }
}

/// Lines longer than this are cut into several lines.
const MAX_LINE: usize = 16 * 1024;

/// Cuts a unit's output into timestamped lines: each line prefixed with a timestamp and a
/// space, a `\r` before the newline dropped, lines longer than 16 KiB cut into several lines.
#[derive(Default)]
pub struct Lines {
    /// The start of a line whose newline has not come yet.
    pending: Vec<u8>,
}

impl Lines {
    /// The whole lines `data` completes, stamped with `ts`, ready for [`LogFile::append`].
    pub fn feed(&mut self, data: &[u8], ts: &str) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            push_line(&mut out, ts, &self.pending[start..end], MAX_LINE);
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() >= MAX_LINE {
            push_line(&mut out, ts, &self.pending, MAX_LINE);
            self.pending.clear();
        }
        out
    }

    /// At the end of the output: a last line without newline, kept.
    pub fn finish(&mut self, ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            push_line(&mut out, ts, &self.pending, MAX_LINE);
            self.pending.clear();
        }
        out
    }
}

/// Copies `input` to `file` line by line as [`Lines`] cuts it, each line stamped with
/// `stamp()`, the file rotated at `max` bytes.
pub fn forward(mut input: impl Read, file: &Path, max: u64, stamp: impl Fn() -> String) {
    let mut log = LogFile::new(file, max);
    let mut lines = Lines::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let out = lines.feed(&buf[..n], &stamp());
        if !out.is_empty() {
            log.append(&out);
        }
    }
    let out = lines.finish(&stamp());
    if !out.is_empty() {
        log.append(&out);
    }
}

fn push_line(out: &mut Vec<u8>, ts: &str, line: &[u8], max: usize) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    for chunk in line.chunks(max.max(1)) {
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    if line.is_empty() {
        out.extend_from_slice(ts.as_bytes());
        out.extend_from_slice(b" \n");
    }
}

/// A line fleetd itself adds to a unit's log (like systemd's "Started ..." journal lines),
/// rotated at `max` bytes.
pub async fn note(path: PathBuf, message: String, max: u64) {
    let line = format!("{} fleetd: {message}\n", now_stamp());
    let _ =
        tokio::task::spawn_blocking(move || LogFile::new(&path, max).append(line.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        let cases = [
            (0u64, 0u32, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_714_564_800, 123, "2024-05-01T12:00:00.123Z"),
            (4_102_444_799, 999, "2099-12-31T23:59:59.999Z"),
        ];
        for (secs, ms, want) in cases {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms.into());
            assert_eq!(format_timestamp(t), want);
        }
    }

    #[test]
    fn forwards_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.log");
        let input = b"one\ntwo\r\n\nlast".to_vec();
        forward(&input[..], &path, 1 << 20, || "TS".to_string());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "TS one\nTS two\nTS \nTS last\n"
        );

        // A small bound: the file is rotated once it would grow past it, one old file kept.
        let input: Vec<u8> = (0..50)
            .flat_map(|i| format!("line {i:02}\n").into_bytes())
            .collect();
        forward(&input[..], &path, 64, || "T".to_string());
        let current = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(LogFile::rotated(&path)).unwrap();
        assert!(current.len() <= 64, "{current:?}");
        assert!(current.ends_with("T line 49\n"), "{current:?}");
        assert!(!old.is_empty() && old.len() <= 64, "{old:?}");
    }
}
