//! The operating-system edge of the process supervisor: spawning a command in its own session,
//! reading `/proc`, signalling a unit's processes.

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use super::spawn::{spawn_in_session, Child, SpawnError};

/// Credentials a command drops to before exec (only when fleetd runs as root).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// One command ready to run.
pub struct Spawn<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: Option<&'a Path>,
    pub credentials: Option<&'a Credentials>,
    /// Where stdout and stderr go (the write end of the unit's log pipe).
    pub output: Option<&'a OwnedFd>,
}

/// Spawns the command as the leader of a new session, so that the whole tree it starts can be
/// signalled through its session and process group, and so that it is not hit by signals aimed
/// at fleetd's terminal or process group. Without credentials to drop this is a
/// `posix_spawn` (see [`super::spawn`]); dropping to `User=`/`Group=` needs a real fork.
pub fn spawn(s: Spawn<'_>) -> Result<Child, SpawnError> {
    let Some(creds) = s.credentials.cloned() else {
        return spawn_in_session(
            s.argv,
            s.env,
            s.cwd,
            super::spawn::Stdio {
                stdin: None,
                output: s.output,
            },
        );
    };
    let Some((program, args)) = s.argv.split_first() else {
        return Err(SpawnError::EmptyCommand);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_clear().envs(s.env).stdin(Stdio::null());
    match s.output {
        Some(fd) => {
            cmd.stdout(Stdio::from(fd.try_clone().map_err(SpawnError::LogPipe)?));
            cmd.stderr(Stdio::from(fd.try_clone().map_err(SpawnError::LogPipe)?));
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    if let Some(dir) = s.cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called. It calls setsid, setgroups, setgid and
    // setuid (all async-signal-safe system calls per POSIX / signal-safety(7)) through libc
    // directly, reads only data captured before the fork (`creds` was cloned in the parent;
    // the Vec is only read, never allocated or freed here) and builds an io::Error from an
    // errno (no allocation: `from_raw_os_error` stores the integer).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgroups(creds.groups.len() as _, creds.groups.as_ptr()) < 0
                || libc::setgid(creds.gid) < 0
                || libc::setuid(creds.uid) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: program.clone(),
        source,
    })?;
    // std's Child neither waits nor kills when dropped; from here on the pid is ours to reap.
    Ok(Child::own(child.id() as i32))
}

/// Why a command's executable was not found.
#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    #[error("executable path {0:?} is neither absolute nor a plain file name")]
    Relative(String),
    #[error("executable {name:?} not found in PATH {path}; give an absolute path")]
    NotFound { name: String, path: String },
}

/// Resolves a relative executable through `path` (systemd >= 239 does the same with its fixed
/// search path). Absolute names are returned as they are.
pub fn resolve_executable(name: &str, path: &str) -> Result<PathBuf, ExecutableError> {
    if name.starts_with('/') {
        return Ok(PathBuf::from(name));
    }
    if name.contains('/') {
        return Err(ExecutableError::Relative(name.into()));
    }
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(ExecutableError::NotFound {
        name: name.into(),
        path: path.into(),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    pub session: i32,
    /// Clock ticks since boot: with the pid, identifies the process across pid reuse.
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The command name (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether the process `pid` that started at `start_time` still runs (zombies count as gone).
pub fn alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some(st) if st.start_time == start_time && st.state != 'Z')
}

/// Live (non-zombie) processes whose session or process group is one of `sessions`.
pub fn session_members(sessions: &[i32]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            matches!(proc_stat(pid), Some(st) if st.state != 'Z'
                && (sessions.contains(&st.session) || sessions.contains(&st.pgrp)))
        })
        .collect()
}

/// Sends `sig` to every process of the unit's sessions (by process group and one by one, to
/// reach children that moved to another process group of the same session).
pub fn signal_sessions(sessions: &[i32], sig: Signal) {
    for &sid in sessions.iter().filter(|&&s| s > 1) {
        let _ = kill(Pid::from_raw(-sid), sig);
    }
    for pid in session_members(sessions) {
        if pid > 1 && pid != std::process::id() as i32 {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

pub fn signal_pid(pid: i32, sig: Signal) {
    if pid > 1 {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The account a unit runs as: `User=`/`Group=` when fleetd is root; otherwise fleetd's own
/// user (and `User=` naming anyone else is an error).
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub home: String,
    pub shell: String,
    pub credentials: Option<Credentials>,
}

/// Why the account a unit runs as cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("looking up user {user}")]
    LookupUser {
        user: String,
        #[source]
        source: Errno,
    },
    #[error("User={0}: no such user")]
    NoSuchUser(String),
    #[error("looking up fleetd's own user")]
    OwnUser,
    #[error("looking up group {group}")]
    LookupGroup {
        group: String,
        #[source]
        source: Errno,
    },
    #[error("Group={0}: no such group")]
    NoSuchGroup(String),
    #[error("user name contains NUL")]
    Nul,
    #[error(
        "User=/Group= other than fleetd's own need fleetd to run as root (it runs as uid {0})"
    )]
    NotRoot(libc::uid_t),
}

pub fn account(user: Option<&str>, group: Option<&str>) -> Result<Account, AccountError> {
    use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
    let me = Uid::current();
    let lookup = |u: &str| -> Result<User, AccountError> {
        let found = match u.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(u),
        };
        found
            .map_err(|source| AccountError::LookupUser {
                user: u.into(),
                source,
            })?
            .ok_or_else(|| AccountError::NoSuchUser(u.into()))
    };
    let target = match user {
        Some(u) => lookup(u)?,
        None => User::from_uid(me)
            .ok()
            .flatten()
            .ok_or(AccountError::OwnUser)?,
    };
    let mut gid = target.gid;
    if let Some(g) = group {
        let found = match g.parse::<u32>() {
            Ok(n) => Group::from_gid(Gid::from_raw(n)),
            Err(_) => Group::from_name(g),
        };
        gid = found
            .map_err(|source| AccountError::LookupGroup {
                group: g.into(),
                source,
            })?
            .ok_or_else(|| AccountError::NoSuchGroup(g.into()))?
            .gid;
    }
    let credentials = if user.is_some() || group.is_some() {
        if me.is_root() {
            let cname =
                std::ffi::CString::new(target.name.clone()).map_err(|_| AccountError::Nul)?;
            let groups = getgrouplist(&cname, gid).unwrap_or_else(|_| vec![gid]);
            Some(Credentials {
                uid: target.uid.as_raw(),
                gid: gid.as_raw(),
                groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            })
        } else if target.uid == me && gid == nix::unistd::Gid::current() {
            None
        } else {
            return Err(AccountError::NotRoot(me.as_raw()));
        }
    } else {
        None
    };
    Ok(Account {
        name: target.name,
        uid: target.uid.as_raw(),
        home: target.dir.to_string_lossy().into_owned(),
        shell: target.shell.to_string_lossy().into_owned(),
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let line = "1234 (a (weird) name) S 1 1230 1229 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let st = parse_stat(line).unwrap();
        assert_eq!(
            st,
            ProcStat {
                state: 'S',
                pgrp: 1230,
                session: 1229,
                start_time: 987654
            }
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let st = proc_stat(me).unwrap();
        assert!(alive(me, st.start_time));
        assert!(!alive(me, st.start_time + 1));
    }
}
