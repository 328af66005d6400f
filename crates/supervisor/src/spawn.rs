//! Starting a unit's command without `fork`, and waiting for it without a reaper thread.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use supervisor::spawn::{spawn_in_session, Stdio};
//! let env = std::collections::BTreeMap::new();
//! let argv = ["/bin/sleep".to_string(), "1".to_string()];
//! let mut child = spawn_in_session(&argv, &env, Some(std::path::Path::new("/")), Stdio::null())?;
//! let status = child.wait().await?;
//! assert!(status.success());
//! # Ok(()) }
//! ```
//!
//! Why this exists: the standard library only uses `posix_spawn` (a `vfork`-style clone that
//! shares the parent's memory until exec) when no `pre_exec` closure is set, and it offers no
//! stable way to ask for a new session. With `pre_exec(setsid)` every unit start would be a
//! real `fork` of fleetd: copying its page tables, then a copy-on-write fault for every page
//! fleetd touched afterwards, and a TLB shoot-down across the runtime's threads. glibc's
//! `posix_spawn` supports `POSIX_SPAWN_SETSID` (glibc >= 2.26) and `addchdir_np`
//! (glibc >= 2.29), which is all a unit without `User=`/`Group=` needs.
//!
//! Exits are observed through a pidfd (Linux >= 5.3) registered with tokio, so waiting costs
//! no thread and no polling; on older kernels the wait falls back to polling `waitpid`.

use std::collections::BTreeMap;
use std::ffi::{CString, NulError};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// A child process of fleetd, started by [`spawn_in_session`] or adopted with [`Child::own`].
///
/// Dropping it neither kills nor reaps the process: units outlive their supervisor task.
pub struct Child {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Takes over waiting for `pid`, which must be a child of this process that nobody else
    /// waits for.
    pub fn own(pid: i32) -> Child {
        Child {
            pid,
            pidfd: pidfd_open(pid),
            status: None,
        }
    }

    pub fn id(&self) -> i32 {
        self.pid
    }

    /// The exit status, if the process has ended (and reaps it then).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(st) = self.status {
            return Ok(Some(st));
        }
        let mut raw: libc::c_int = 0;
        // SAFETY: waitpid reads only the pid and flags and writes the status through a
        // pointer to a live local integer. The pid is our own unreaped child, so it cannot
        // name another process (a pid is not reused before its zombie is reaped).
        let r = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
        if r == self.pid {
            let st = ExitStatus::from_raw(raw);
            self.status = Some(st);
            Ok(Some(st))
        } else if r == 0 {
            Ok(None)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits until the process ends. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            match self.pidfd.take() {
                Some(fd) => {
                    // A pidfd turns readable when its process exits, and stays readable. The
                    // guard is dropped before `self` is touched again; put the fd back even
                    // if this future is cancelled at the await.
                    let fd = PutBack {
                        slot: &mut self.pidfd,
                        fd: Some(fd),
                    };
                    if let Some(f) = &fd.fd {
                        f.readable().await?.retain_ready();
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Returns a taken pidfd to its slot when dropped (also when the waiting future is dropped).
struct PutBack<'a> {
    slot: &'a mut Option<AsyncFd<OwnedFd>>,
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        *self.slot = self.fd.take();
    }
}

fn pidfd_open(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor (close-on-exec); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    tokio::runtime::Handle::try_current().ok()?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, which is its only owner until dropped,
    // so the descriptor stays open and refers to the same pidfd for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// Where a standard stream of the new process comes from or goes to.
pub struct Stdio<'a> {
    pub stdin: Option<&'a OwnedFd>,
    /// Both stdout and stderr.
    pub output: Option<&'a OwnedFd>,
}

impl Stdio<'_> {
    /// All three on `/dev/null`.
    pub fn null() -> Stdio<'static> {
        Stdio {
            stdin: None,
            output: None,
        }
    }
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("empty command line")]
    EmptyCommand,
    #[error("{what} contains a NUL byte")]
    Nul {
        what: &'static str,
        #[source]
        source: NulError,
    },
    /// Preparing the new process (file actions, attributes) failed before it existed.
    #[error("{step}")]
    Setup {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("executing {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("duplicating the log pipe")]
    LogPipe(#[source] io::Error),
}

fn cstring(what: &'static str, s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|source| SpawnError::Nul { what, source })
}

fn check(step: &'static str, rc: libc::c_int) -> Result<(), SpawnError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(SpawnError::Setup {
            step,
            source: io::Error::from_raw_os_error(rc),
        })
    }
}

/// Owns an initialised `posix_spawn_file_actions_t` and destroys it when dropped.
struct FileActions(libc::posix_spawn_file_actions_t);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `spawn_in_session` before this value existed; destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Owns an initialised `posix_spawnattr_t` and destroys it when dropped.
struct Attr(libc::posix_spawnattr_t);

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in `spawn_in_session` before this value existed; destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// Starts `argv` (whose first word is an absolute path) with exactly `env`, as the leader of a
/// new session, with the signal mask cleared and SIGPIPE back to its default (Rust programs
/// ignore it), in `cwd`.
pub fn spawn_in_session(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    stdio: Stdio<'_>,
) -> Result<Child, SpawnError> {
    let Some(program) = argv.first() else {
        return Err(SpawnError::EmptyCommand);
    };
    let c_program = cstring("the program path", program.as_bytes())?;
    let c_argv = argv
        .iter()
        .map(|a| cstring("an argument", a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let c_env = env
        .iter()
        .map(|(k, v)| cstring("an environment variable", format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let c_cwd = cwd
        .map(|d| cstring("the working directory", d.as_os_str().as_bytes()))
        .transpose()?;
    let mut argv_ptrs: Vec<*mut libc::c_char> =
        c_argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = c_env.iter().map(|a| a.as_ptr() as *mut _).collect();
    env_ptrs.push(std::ptr::null_mut());
    let dev_null = c"/dev/null";

    // SAFETY (this block): every pointer passed below points into a value that lives until
    // the end of this function (the CStrings, the pointer vectors ending in NULL, the
    // attribute and file-action objects, which are initialised before use and destroyed
    // exactly once by their guards). posix_spawn copies what it needs before it returns:
    // glibc's child runs on its own stack and execs or exits before the parent resumes.
    // The descriptors named in dup2 actions are borrowed from live OwnedFds.
    unsafe {
        let mut fa = FileActions(std::mem::zeroed());
        check(
            "posix_spawn_file_actions_init",
            libc::posix_spawn_file_actions_init(&mut fa.0),
        )?;
        match stdio.stdin {
            Some(fd) => check(
                "redirecting stdin",
                libc::posix_spawn_file_actions_adddup2(&mut fa.0, fd.as_raw_fd(), 0),
            )?,
            None => check(
                "opening /dev/null as stdin",
                libc::posix_spawn_file_actions_addopen(
                    &mut fa.0,
                    0,
                    dev_null.as_ptr(),
                    libc::O_RDONLY,
                    0,
                ),
            )?,
        }
        match stdio.output {
            Some(fd) => {
                for target in [1, 2] {
                    check(
                        "redirecting output",
                        libc::posix_spawn_file_actions_adddup2(&mut fa.0, fd.as_raw_fd(), target),
                    )?;
                }
            }
            None => {
                check(
                    "opening /dev/null as stdout",
                    libc::posix_spawn_file_actions_addopen(
                        &mut fa.0,
                        1,
                        dev_null.as_ptr(),
                        libc::O_WRONLY,
                        0,
                    ),
                )?;
                check(
                    "redirecting stderr",
                    libc::posix_spawn_file_actions_adddup2(&mut fa.0, 1, 2),
                )?;
            }
        }
        if let Some(dir) = &c_cwd {
            check(
                "changing directory",
                libc::posix_spawn_file_actions_addchdir_np(&mut fa.0, dir.as_ptr()),
            )?;
        }

        let mut attr = Attr(std::mem::zeroed());
        check(
            "posix_spawnattr_init",
            libc::posix_spawnattr_init(&mut attr.0),
        )?;
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let mut default: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut default);
        libc::sigaddset(&mut default, libc::SIGPIPE);
        check(
            "setting the signal mask",
            libc::posix_spawnattr_setsigmask(&mut attr.0, &empty),
        )?;
        check(
            "resetting signals",
            libc::posix_spawnattr_setsigdefault(&mut attr.0, &default),
        )?;
        let flags = libc::POSIX_SPAWN_SETSID
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        check(
            "setting spawn flags",
            libc::posix_spawnattr_setflags(&mut attr.0, flags),
        )?;

        let mut pid: libc::pid_t = 0;
        let rc = libc::posix_spawn(
            &mut pid,
            c_program.as_ptr(),
            &fa.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        );
        if rc != 0 {
            return Err(SpawnError::Exec {
                program: program.clone(),
                source: io::Error::from_raw_os_error(rc),
            });
        }
        Ok(Child::own(pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn exit_codes_and_signals() {
        let env = BTreeMap::new();
        let mut ok = spawn_in_session(&argv(&["/bin/true"]), &env, None, Stdio::null()).unwrap();
        assert!(ok.wait().await.unwrap().success());
        let mut three = spawn_in_session(
            &argv(&["/bin/sh", "-c", "exit 3"]),
            &env,
            None,
            Stdio::null(),
        )
        .unwrap();
        assert_eq!(three.wait().await.unwrap().code(), Some(3));
        let mut sleeper =
            spawn_in_session(&argv(&["/bin/sleep", "30"]), &env, None, Stdio::null()).unwrap();
        assert_eq!(sleeper.try_wait().unwrap(), None);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleeper.id()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert_eq!(sleeper.wait().await.unwrap().signal(), Some(libc::SIGTERM));
        // Waiting again returns the same status instead of an error.
        assert_eq!(sleeper.wait().await.unwrap().signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn new_session_environment_directory_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), "hello there".to_string());
        // Runs `words` to its end with its output in a file of `dir`; returns that output.
        let run = |words: &[&str], cwd: Option<&Path>, file: &str| {
            let path = dir.path().join(file);
            let out = OwnedFd::from(std::fs::File::create(&path).unwrap());
            let stdio = Stdio {
                stdin: None,
                output: Some(&out),
            };
            let child = spawn_in_session(&argv(words), &env, cwd, stdio).unwrap();
            async move {
                let mut child = child;
                assert!(child.wait().await.unwrap().success());
                std::fs::read_to_string(path).unwrap()
            }
        };
        let script = "echo \"$GREETING\"; pwd; cut -d' ' -f6 /proc/$$/stat; echo $$; \
                      echo err >&2";
        let text = run(&["/bin/sh", "-c", script], Some(dir.path()), "out").await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "hello there");
        assert_eq!(
            Path::new(lines[1]).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        // The child leads its own session.
        assert_eq!(lines[2].trim(), lines[3].trim(), "{text}");
        assert_eq!(lines.last(), Some(&"err"));

        // The signal mask and dispositions the program starts with (read by the program
        // itself: a shell changes its own mask around the commands it runs).
        let words = ["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
        let text = run(&words, None, "status").await;
        let mask = |field: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0, "{text}");
        assert_eq!(
            mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {text}"
        );
    }

    #[tokio::test]
    async fn missing_program_is_an_error_naming_it() {
        let env = BTreeMap::new();
        let err = spawn_in_session(&argv(&["/nonexistent/x"]), &env, None, Stdio::null())
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
        let err = spawn_in_session(
            &argv(&["/bin/true"]),
            &env,
            Some(Path::new("/nonexistent-dir")),
            Stdio::null(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/bin/true"), "{err}");
    }
}
