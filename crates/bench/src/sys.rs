//! What the process (and etcd's) cost: CPU time and memory.

use nix::sys::resource::{getrusage, UsageWho};

/// CPU seconds (user + system) used by this process so far.
pub fn cpu_seconds() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// Peak resident set of this process, in bytes (Linux reports `ru_maxrss` in KiB).
pub fn peak_rss_bytes() -> u64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| u64::try_from(u.max_rss()).unwrap_or(0) * 1024)
        .unwrap_or(0)
}

/// Current resident set of process `pid` (`self` for this one), in bytes, from
/// `/proc/<pid>/status`.
pub fn rss_bytes(pid: &str) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of [`rss_bytes`] (heap and stacks; the rest is the binary's and
/// libraries' pages).
pub fn rss_anon_bytes(pid: &str) -> u64 {
    status_bytes(pid, "RssAnon:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes; 0 if unreadable.
fn status_bytes(pid: &str, field: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds used by process `pid` (user + system), from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds used by process `pid` from `/proc/<pid>/schedstat` (nanoseconds on the CPU,
/// current as of the process's last switch): `/proc/<pid>/stat` counts whole clock ticks,
/// which rounds a short-lived or idle process to zero.
pub fn precise_cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(|| process_cpu_seconds(pid), |ns| ns / 1e9)
}

/// The CPU seconds of this process's children other than `exclude`, split by whether their
/// command line holds `marker`: `((with, cpu), (without, cpu))`. Children that already ended
/// are not counted.
pub fn children_cpu_seconds(marker: &str, exclude: Option<u32>) -> ((usize, f64), (usize, f64)) {
    let me = std::process::id().to_string();
    let (mut with, mut without) = ((0, 0.0), (0, 0.0));
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (with, without);
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid != Some(me.as_str()) || Some(pid) == exclude {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cpu = precise_cpu_seconds(pid);
        let slot = if String::from_utf8_lossy(&cmdline).contains(marker) {
            &mut with
        } else {
            &mut without
        };
        slot.0 += 1;
        slot.1 += cpu;
    }
    (with, without)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_figures_are_positive() {
        // Burn a little CPU so the figure cannot be zero by rounding.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds() > 0.0);
        assert!(peak_rss_bytes() > 0);
        assert!(rss_bytes("self") > 0);
        assert!(rss_anon_bytes("self") > 0);
        assert!(rss_anon_bytes("self") <= rss_bytes("self"));
        assert!(process_cpu_seconds(std::process::id()) >= 0.0);
        assert_eq!(rss_bytes("no-such-pid"), 0);
    }

    #[test]
    fn children_are_split_by_their_command_line() {
        let mut kids: Vec<std::process::Child> = ["marked-child", "other"]
            .iter()
            .map(|arg| {
                std::process::Command::new("/bin/sh")
                    .args(["-c", "read x", arg])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let ((with, _), (without, _)) = children_cpu_seconds("marked-child", None);
        for k in &mut kids {
            drop(k.stdin.take());
            k.wait().unwrap();
        }
        assert_eq!(with, 1);
        // Other tests of this binary may have children of their own at the same time.
        assert!(without >= 1);
    }
}
