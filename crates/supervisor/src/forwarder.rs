//! One log forwarder per state directory: a long-lived process that reads the output pipes of
//! every unit and writes their logs (see [`crate::log`]), instead of one forwarder per run.
//!
//! How output reaches the log: when a run starts its first command, the manager creates the
//! run's pipe and hands the reading end to the forwarder over a unix socket (`SCM_RIGHTS`),
//! with the unit's name and the log's size bound; the forwarder acknowledges with its pid.
//! The commands get the writing end. The forwarder reads all pipes with one reactor (a
//! single-threaded tokio runtime) and writes each unit's lines with the same timestamps and
//! rotation as before.
//!
//! While fleetd is down (stopped, restarting, SIGKILLed): the forwarder is not fleetd's
//! process. It runs as `<helper> __fleet-process-helper log-serve <logs dir>` in its own
//! session and ignores the signals meant for fleetd, so it keeps reading every pipe and
//! writing the logs; the units see no difference. A new manager on the same state directory
//! finds it at the same address (an abstract unix socket named after the logs directory) and
//! hands it the pipes of the runs it starts.
//!
//! When it ends: it exits once it holds no pipe (every unit process closed its output) and no
//! manager is connected, for [`LINGER`]. A manager starts it again when a run needs it; two
//! starting at once are harmless, the second cannot bind the address and exits.
//!
//! If it dies (SIGKILL, OOM) while a manager runs: the manager keeps a duplicate of every
//! reading end it handed over for as long as the run lasts, so the units' pipes stay open and
//! their writes only block once a pipe's buffer (64 KiB) is full, never fail with EPIPE. The
//! manager sees the forwarder's connection close, starts a new one and hands it every
//! reading end again; what the dead one had read but not yet written is lost. Limitation: the
//! pipes of units a manager re-adopted after a restart were handed over by the previous
//! manager, so no duplicate of them is held; if the forwarder dies after such a restart (or
//! while no manager runs), those units' next writes fail (SIGPIPE, which kills a unit that
//! does not handle it) and their output is no longer kept.

use crate::log::{ignore_control_signals, now_stamp, Lines, LogFile};
use crate::spawn::{spawn_in_session, SpawnError, Stdio};
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};

/// The helper's mode that runs the forwarder.
pub(crate) const SERVE: &str = "log-serve";
/// How long a new forwarder waits for its first connection before it exits.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// How long a manager waits for the forwarder to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a manager waits for a forwarder it started to answer at all.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests and replies are small JSON documents; a longer one is refused.
const MAX_MESSAGE: usize = 4096;

/// What a manager asks of the forwarder, one message each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    /// Keep this connection open while the manager runs: the manager learns of the
    /// forwarder's death when it closes.
    Watch,
    /// Read the pipe sent with this message into `<logs dir>/<unit>.log`.
    Take { unit: String, max: u64 },
}

/// The forwarder's answer: its pid, or why it refused.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Why a run's output could not be given to the log forwarder (the run then goes on without
/// a log), or why a manager could not set the forwarder up.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("creating the log pipe")]
    Pipe(#[source] Errno),
    #[error("naming the log forwarder's socket for {}", logs_dir.display())]
    Address {
        logs_dir: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("starting the log forwarder {}", helper.display())]
    Start {
        helper: PathBuf,
        #[source]
        source: SpawnError,
    },
    #[error("the log forwarder {} started but did not answer within {START_TIMEOUT:?} (is it a fleet-process-helper of this version? set FLEET_PROCESS_HELPER)", helper.display())]
    NoAnswer { helper: PathBuf },
    #[error("duplicating a held pipe's reading end")]
    Duplicate(#[source] io::Error),
    #[error("talking to the log forwarder")]
    Io(#[source] Errno),
    #[error("the log forwarder closed the connection before answering")]
    Closed,
    #[error("the log forwarder refused: {0}")]
    Refused(String),
    #[error("unreadable answer from the log forwarder")]
    BadReply(#[source] serde_json::Error),
}

/// The abstract unix socket of the forwarder serving `logs_dir`. Abstract: no file to clean up
/// after a crash, and no limit on the directory's path length (the name is a hash of it).
fn address(logs_dir: &Path) -> Result<UnixAddr, ForwarderError> {
    let name = format!(
        "fleet-process-forwarder/{:016x}",
        fnv1a(logs_dir.as_os_str().as_bytes())
    );
    UnixAddr::new_abstract(name.as_bytes()).map_err(|source| ForwarderError::Address {
        logs_dir: logs_dir.into(),
        source,
    })
}

/// 64-bit FNV-1a. Hand-written (six lines) because the address must be the same for every
/// fleetd build that may meet this forwarder, which std's `DefaultHasher` does not promise.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---- The forwarder process ----

/// Runs the forwarder for `logs_dir` until it is idle; returns the exit code.
pub(crate) fn serve(logs_dir: &Path) -> i32 {
    ignore_control_signals();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("log forwarder: starting the tokio runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve_async(logs_dir.to_path_buf())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("log forwarder for {}: {e}", logs_dir.display());
            1
        }
    }
}

/// One open descriptor per running unit: the default soft limit (often 1024) is too low for a
/// host running thousands, so take the hard limit as fleetd does.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// What the forwarder's tasks share: how many pipes and connections are open.
struct Served {
    logs_dir: PathBuf,
    live: AtomicUsize,
    /// Whether anything was ever open: until then, idle only means "not yet".
    started: AtomicBool,
    changed: Notify,
}

impl Served {
    fn begin(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_one();
    }

    fn idle(&self) -> bool {
        self.live.load(Ordering::SeqCst) == 0
    }

    /// Idle after having served: done.
    fn done(&self) -> bool {
        self.started.load(Ordering::SeqCst) && self.idle()
    }
}

async fn serve_async(logs_dir: PathBuf) -> io::Result<()> {
    let addr = address(&logs_dir).map_err(io::Error::other)?;
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match socket::bind(sock.as_raw_fd(), &addr) {
        Ok(()) => {}
        // Another forwarder serves this directory: it was started at the same moment.
        Err(Errno::EADDRINUSE) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    socket::listen(&sock, Backlog::MAXCONN)?;
    let listener = register(sock, Interest::READABLE)?;
    let served = Arc::new(Served {
        logs_dir,
        live: AtomicUsize::new(0),
        started: AtomicBool::new(false),
        changed: Notify::new(),
    });
    let first_deadline = tokio::time::Instant::now() + LINGER;
    loop {
        if served.done() {
            return Ok(());
        }
        let waiting = !served.started.load(Ordering::SeqCst);
        tokio::select! {
            ready = listener.readable() => {
                let mut ready = ready?;
                loop {
                    match socket::accept4(
                        listener.get_ref(),
                        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                    ) {
                        Ok(conn) => {
                            if peer_allowed(&conn) {
                                served.begin();
                                tokio::spawn(connection(served.clone(), conn));
                            }
                        }
                        Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                        // EAGAIN: all accepted. Anything else (EMFILE): try again on the next
                        // connection rather than spin.
                        Err(_) => {
                            ready.clear_ready();
                            break;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(first_deadline), if waiting => {
                if served.idle() {
                    return Ok(());
                }
            }
            _ = served.changed.notified() => {}
        }
    }
}

/// Registers `fd` with the current runtime's reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, its only owner until dropped, so the
    // descriptor stays open and names the same file for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// Only this user (or root) may hand pipes over: another local user could otherwise write
/// into any unit's log.
fn peer_allowed(conn: &OwnedFd) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    match socket::getsockopt(conn, socket::sockopt::PeerCredentials) {
        Ok(cred) => cred.uid() == me || cred.uid() == 0,
        Err(_) => false,
    }
}

/// A message received on a connection: its bytes and the descriptors sent with it.
struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message; nothing else knows them, so each gets exactly one owner.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated,
    })
}

/// Serves one manager's connection until it closes.
async fn connection(served: Arc<Served>, conn: OwnedFd) {
    if let Ok(conn) = register(conn, Interest::READABLE) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let got = conn
                .async_io(Interest::READABLE, |fd| receive(fd.as_raw_fd(), &mut buf))
                .await;
            let msg = match got {
                Ok(m) if m.len == 0 && m.fds.is_empty() => break,
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let reply = match take_request(&served, &buf[..msg.len], msg.fds, msg.truncated) {
                Ok(()) => Reply {
                    pid: Some(std::process::id()),
                    error: None,
                },
                Err(e) => Reply {
                    pid: None,
                    error: Some(e),
                },
            };
            let bytes = serde_json::to_vec(&reply).unwrap_or_default();
            // One small message on a fresh socket: its buffer has room, so this does not
            // block; a manager that stopped reading loses its answer.
            if socket::send(conn.as_raw_fd(), &bytes, MsgFlags::MSG_DONTWAIT).is_err() {
                break;
            }
        }
    }
    served.end();
}

/// Acts on one request; `Err` is the reason told to the manager.
fn take_request(
    served: &Arc<Served>,
    bytes: &[u8],
    mut fds: Vec<OwnedFd>,
    truncated: bool,
) -> Result<(), String> {
    if truncated {
        return Err(
            "the request or its pipe did not arrive whole (too long, or no descriptor left)".into(),
        );
    }
    let request: Request =
        serde_json::from_slice(bytes).map_err(|e| format!("unreadable request: {e}"))?;
    let (unit, max) = match request {
        Request::Watch => return Ok(()),
        Request::Take { unit, max } => (unit, max),
    };
    crate::units::check_name(&unit).map_err(|e| e.to_string())?;
    if max == 0 {
        return Err(format!("{unit}: a log size bound of 0 bytes"));
    }
    if fds.len() != 1 {
        return Err(format!(
            "{unit}: want exactly one pipe with the request, got {}",
            fds.len()
        ));
    }
    let pipe = fds.remove(0);
    let flags = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| format!("{unit}: reading the pipe's flags: {e}"))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| format!("{unit}: making the pipe non-blocking: {e}"))?;
    let pipe = register(pipe, Interest::READABLE)
        .map_err(|e| format!("{unit}: watching the pipe: {e}"))?;
    let path = served.logs_dir.join(format!("{unit}.log"));
    served.begin();
    tokio::spawn(drain(served.clone(), pipe, path, max));
    Ok(())
}

/// Copies one pipe into its log until every writer has closed it.
async fn drain(served: Arc<Served>, pipe: AsyncFd<OwnedFd>, path: PathBuf, max: u64) {
    let mut log = LogFile::new(&path, max);
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let got = pipe
            .async_io(Interest::READABLE, |fd| {
                nix::unistd::read(fd, &mut buf).map_err(io::Error::from)
            })
            .await;
        match got {
            Ok(0) => break,
            Ok(n) => {
                // Blocking writes on the reactor's only thread: appends to a local file are
                // short, and the pipes wait in their kernel buffers meanwhile.
                let out = lines.feed(&buf[..n], &now_stamp());
                if !out.is_empty() {
                    log.append(&out);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let out = lines.finish(&now_stamp());
    if !out.is_empty() {
        log.append(&out);
    }
    served.end();
}

// ---- The manager's side ----

/// A manager's handle on its state directory's forwarder.
pub(crate) struct Forwarder {
    helper: PathBuf,
    logs_dir: PathBuf,
    addr: UnixAddr,
    max: u64,
    /// A duplicate of the reading end of every pipe handed over by this manager whose run
    /// still lasts, with the pid of the forwarder that has it. Only locked for quick updates:
    /// a run's end drops its entry from an async task.
    held: Mutex<BTreeMap<u64, Held>>,
    /// Read-locked by each hand-over until its pipe is in `held`, write-locked while pipes are
    /// handed to a new forwarder: a pipe handed to a dying forwarder is then either in `held`
    /// for the new one or handed to the new one itself, never to both or neither.
    handing: RwLock<()>,
    next_id: AtomicU64,
    /// One start at a time from this manager.
    starting: Mutex<()>,
}

struct Held {
    unit: String,
    read: OwnedFd,
    given_to: u32,
}

/// Keeps a run's reading end (see [`Forwarder::pipe`]) until dropped at the run's end.
pub(crate) struct HeldPipe {
    forwarder: Arc<Forwarder>,
    id: u64,
}

impl Drop for HeldPipe {
    fn drop(&mut self) {
        self.forwarder.held().remove(&self.id);
    }
}

impl Forwarder {
    pub(crate) fn new(
        helper: PathBuf,
        logs_dir: PathBuf,
        max: u64,
    ) -> Result<Forwarder, ForwarderError> {
        // The same directory spelled differently must find the same forwarder.
        let logs_dir = logs_dir.canonicalize().unwrap_or(logs_dir);
        Ok(Forwarder {
            addr: address(&logs_dir)?,
            helper,
            logs_dir,
            max,
            held: Mutex::new(BTreeMap::new()),
            handing: RwLock::new(()),
            next_id: AtomicU64::new(0),
            starting: Mutex::new(()),
        })
    }

    fn held(&self) -> MutexGuard<'_, BTreeMap<u64, Held>> {
        // Poisoned only if a thread panicked mid-update; the map is still usable.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new pipe for `unit`'s output, its reading end handed to the forwarder (started if
    /// none runs): returns the writing end for the unit's commands and the guard that keeps
    /// the reading end open while the run lasts. Blocks; call it off the async workers.
    pub(crate) fn pipe(
        self: &Arc<Self>,
        unit: &str,
    ) -> Result<(OwnedFd, HeldPipe), ForwarderError> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ForwarderError::Pipe)?;
        let _handing = self.handing.read().unwrap_or_else(|e| e.into_inner());
        let (given_to, _conn) = self.request(&self.take(unit), Some(read.as_raw_fd()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.held().insert(
            id,
            Held {
                unit: unit.to_string(),
                read,
                given_to,
            },
        );
        Ok((
            write,
            HeldPipe {
                forwarder: self.clone(),
                id,
            },
        ))
    }

    fn take(&self, unit: &str) -> Request {
        Request::Take {
            unit: unit.to_string(),
            max: self.max,
        }
    }

    /// Sends one request (with `fd`, if any) on a new connection, starting the forwarder if
    /// none answers; returns the answering forwarder's pid and the connection.
    fn request(
        &self,
        request: &Request,
        fd: Option<RawFd>,
    ) -> Result<(u32, OwnedFd), ForwarderError> {
        let bytes = serde_json::to_vec(request).map_err(ForwarderError::BadReply)?;
        let mut last = ForwarderError::Closed;
        // A forwarder that was just exiting (idle) closes connections it did not accept:
        // the next attempt starts a new one.
        for _ in 0..3 {
            let conn = match self.connect_or_start() {
                Ok(c) => c,
                Err(e @ (ForwarderError::Start { .. } | ForwarderError::NoAnswer { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match exchange(&conn, &bytes, fd) {
                Ok(pid) => return Ok((pid, conn)),
                Err(e @ ForwarderError::Refused(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn connect(&self) -> Result<OwnedFd, Errno> {
        let sock = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // Before connecting: a unix socket's connect waits up to the send timeout when the
        // forwarder's backlog is full.
        let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&sock, socket::sockopt::ReceiveTimeout, &timeout)?;
        socket::setsockopt(&sock, socket::sockopt::SendTimeout, &timeout)?;
        socket::connect(sock.as_raw_fd(), &self.addr)?;
        Ok(sock)
    }

    fn connect_or_start(&self) -> Result<OwnedFd, ForwarderError> {
        if let Ok(c) = self.connect() {
            return Ok(c);
        }
        let _one = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        // Started by another thread while this one waited?
        if let Ok(c) = self.connect() {
            return Ok(c);
        }
        let mut child = self.start()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.connect() {
                Ok(c) => {
                    reap_later(child);
                    return Ok(c);
                }
                Err(e) => {
                    // An exited forwarder lost the race to bind (and another answers now)
                    // or could not run at all.
                    let exited = matches!(child.try_wait(), Ok(Some(_)));
                    if exited || Instant::now() >= deadline {
                        if exited {
                            if let Ok(c) = self.connect() {
                                return Ok(c);
                            }
                        } else {
                            reap_later(child);
                        }
                        tracing::debug!("log forwarder not answering: {e}");
                        return Err(ForwarderError::NoAnswer {
                            helper: self.helper.clone(),
                        });
                    }
                    // Polls for the new process's socket: there is nothing to wait on.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn start(&self) -> Result<crate::spawn::Child, ForwarderError> {
        let argv = [
            self.helper.to_string_lossy().into_owned(),
            crate::log::HELPER_ARG.to_string(),
            SERVE.to_string(),
            self.logs_dir.to_string_lossy().into_owned(),
        ];
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        // Its own session, so that signals for fleetd's process group (Ctrl-C) or for the
        // units' sessions do not reach it.
        spawn_in_session(&argv, &env, Some(Path::new("/")), Stdio::null()).map_err(|source| {
            ForwarderError::Start {
                helper: self.helper.clone(),
                source,
            }
        })
    }

    /// Hands every held pipe that forwarder `pid` does not have to it: after the previous
    /// forwarder died, the new one gets the running units' output. Blocks.
    fn hand_again(&self, pid: u32) {
        let _handing = self.handing.write().unwrap_or_else(|e| e.into_inner());
        // Duplicates to hand over without holding `held`; a run that ends meanwhile only
        // makes its pipe read by the forwarder until its last writer closes it, as usual.
        let missing: Vec<(u64, String, io::Result<OwnedFd>)> = self
            .held()
            .iter()
            .filter(|(_, h)| h.given_to != pid)
            .map(|(id, h)| (*id, h.unit.clone(), h.read.try_clone()))
            .collect();
        let mut given = 0;
        for (id, unit, read) in missing {
            let handed = match read {
                Ok(read) => self.request(&self.take(&unit), Some(read.as_raw_fd())),
                Err(e) => Err(ForwarderError::Io(Errno::from_raw(
                    e.raw_os_error().unwrap_or(0),
                ))),
            };
            match handed {
                Ok((to, _)) => {
                    if let Some(h) = self.held().get_mut(&id) {
                        h.given_to = to;
                    }
                    given += 1;
                }
                Err(e) => {
                    tracing::warn!(unit = %unit, "the new log forwarder did not take this unit's output (it stays in the pipe): {}", crate::error::chain(&e))
                }
            }
        }
        if given > 0 {
            tracing::info!(
                "handed {given} running units' output to the new log forwarder (pid {pid})"
            );
        }
    }

    /// Watches the forwarder while the manager runs (starting it now), and after it dies
    /// starts another and hands it the running units' pipes. Ends when `shutdown` closes.
    pub(crate) async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<()>) {
        let ended = async move { while shutdown.changed().await.is_ok() {} };
        tokio::pin!(ended);
        // Doubles while the forwarder cannot be reached, so that a broken helper is retried
        // without flooding fleetd's log.
        let mut pause = Duration::from_secs(1);
        loop {
            let me = self.clone();
            let connected = tokio::task::spawn_blocking(move || {
                let (pid, conn) = me.request(&Request::Watch, None)?;
                me.hand_again(pid);
                Ok::<_, ForwarderError>((pid, conn))
            })
            .await;
            let wait = match connected {
                Ok(Ok((pid, conn))) => match register(conn, Interest::READABLE) {
                    Ok(conn) => {
                        tokio::select! {
                            _ = closed(&conn) => {}
                            _ = &mut ended => return,
                        }
                        tracing::warn!("the log forwarder (pid {pid}) ended; starting another and handing it the running units' output");
                        pause = Duration::from_secs(1);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                Ok(Err(e)) => Some(crate::error::chain(&e)),
                Err(e) => Some(e.to_string()),
            };
            if let Some(problem) = wait {
                tracing::warn!(
                    "cannot reach the log forwarder, trying again in {pause:?}: {problem}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut ended => return,
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Returns when the forwarder closes `conn` (it never writes on a watch connection).
async fn closed(conn: &AsyncFd<OwnedFd>) {
    let mut buf = [0u8; 64];
    loop {
        let got = conn
            .async_io(Interest::READABLE, |fd| {
                socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)
            })
            .await;
        match got {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends `bytes` (with `fd`) and reads the answer: the forwarder's pid.
fn exchange(conn: &OwnedFd, bytes: &[u8], fd: Option<RawFd>) -> Result<u32, ForwarderError> {
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    loop {
        match socket::sendmsg::<()>(
            conn.as_fd().as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ForwarderError::Io(e)),
        }
    }
    let mut buf = [0u8; MAX_MESSAGE];
    let n = loop {
        match socket::recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ForwarderError::Io(e)),
        }
    };
    if n == 0 {
        return Err(ForwarderError::Closed);
    }
    let reply: Reply = serde_json::from_slice(&buf[..n]).map_err(ForwarderError::BadReply)?;
    match (reply.pid, reply.error) {
        (Some(pid), None) => Ok(pid),
        (_, Some(e)) => Err(ForwarderError::Refused(e)),
        (None, None) => Err(ForwarderError::Refused("an empty answer".into())),
    }
}

/// Reaps a forwarder this process started once it exits, if this process still runs then.
fn reap_later(mut child: crate::spawn::Child) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = child.wait().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_stable_and_per_directory() {
        // Pinned: fleetd builds that differ must still find each other's forwarder.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = address(Path::new("/var/lib/fleet/process/logs")).unwrap();
        let b = address(Path::new("/var/lib/fleet/other/logs")).unwrap();
        assert_ne!(a.as_abstract(), b.as_abstract());
        let long = PathBuf::from(format!("/{}", "d/".repeat(200)));
        assert!(address(&long).is_ok());
    }

    #[test]
    fn requests_are_refused_with_a_reason() {
        let served = Arc::new(Served {
            logs_dir: PathBuf::from("/nonexistent"),
            live: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            changed: Notify::new(),
        });
        let take = |unit: &str, max: u64| {
            serde_json::to_vec(&Request::Take {
                unit: unit.into(),
                max,
            })
            .unwrap()
        };
        let err = take_request(&served, &take("../x.service", 10), vec![], false).unwrap_err();
        assert!(err.contains("invalid unit name"), "{err}");
        let err = take_request(&served, &take("a.service", 0), vec![], false).unwrap_err();
        assert!(err.contains("0 bytes"), "{err}");
        let err = take_request(&served, &take("a.service", 10), vec![], false).unwrap_err();
        assert!(err.contains("exactly one pipe"), "{err}");
        let err = take_request(&served, b"{\"op\":\"reboot\"}", vec![], false).unwrap_err();
        assert!(err.contains("unreadable request"), "{err}");
        let err = take_request(&served, b"{}", vec![], true).unwrap_err();
        assert!(err.contains("did not arrive whole"), "{err}");
        assert!(served.idle());
    }
}
