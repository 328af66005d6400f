//! Where the API listens: unix sockets, TCP addresses, and sockets passed by systemd.
//!
//! ```no_run
//! # async fn demo(router: axum::Router) -> std::io::Result<()> {
//! use server::listen::{bind, serve, systemd_listeners, Listen};
//! let mut listeners = bind(&[Listen::Unix("/var/run/fleet.sock".into()), Listen::Tcp("127.0.0.1:49153".into())]).await?;
//! listeners.extend(systemd_listeners()?);
//! serve(listeners, router, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use crate::access::Peer;
use crate::tls::{ServerTls, TlsListener};
use axum::Router;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An address to listen on (fleetd's `api_listen`, already parsed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    /// `host:port`; port 0 picks a free port (see [`Listener::local_addr`]).
    Tcp(String),
}

/// A bound socket, ready to serve.
#[derive(Debug)]
pub enum Listener {
    /// `path` is the socket file we created and remove when serving ends (`None` for sockets
    /// passed by systemd, which owns their files).
    Unix {
        listener: tokio::net::UnixListener,
        path: Option<PathBuf>,
    },
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// The TCP address, for TCP listeners.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// `unix:///path` or `tcp://host:port`, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp://{a}"),
                Err(_) => "tcp://?".into(),
            },
            Listener::Unix { listener, path } => {
                let p = path.clone().or_else(|| {
                    listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                });
                match p {
                    Some(p) => format!("unix://{}", p.display()),
                    None => "unix://(unnamed)".into(),
                }
            }
        }
    }
}

/// Binds every address. Unix sockets: the parent directory is created, a stale socket file
/// left by a dead fleetd is removed (a live one is an error), and the socket is made mode 0660
/// (fleet's advice: owner and group only; requests on it are trusted by these permissions).
pub async fn bind(listens: &[Listen]) -> io::Result<Vec<Listener>> {
    bind_with_group(listens, None).await
}

/// Like [`bind`], also giving the unix sockets created to group `gid` (`api_socket_group`), so
/// that its members may use the API.
pub async fn bind_with_group(listens: &[Listen], gid: Option<u32>) -> io::Result<Vec<Listener>> {
    let mut out = Vec::with_capacity(listens.len());
    for l in listens {
        out.push(match l {
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot listen on tcp://{addr}: {e}"))
                    })?;
                Listener::Tcp(listener)
            }
            Listen::Unix(path) => bind_unix(path, gid).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on unix://{}: {e}", path.display()),
                )
            })?,
        });
    }
    Ok(out)
}

fn bind_unix(path: &Path, gid: Option<u32>) -> io::Result<Listener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving this socket (is fleetd already running?)",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; remove it or choose another path",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("giving the socket to group {gid} (api_socket_group): {e}; fleetd must run as root or be a member of that group"),
            )
        })?;
    }
    Ok(Listener::Unix {
        listener,
        path: Some(path.to_path_buf()),
    })
}

/// Sockets passed by systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`; fds from 3).
///
/// Hand-written (the protocol is two environment variables and a loop) rather than pulling in
/// a crate for it. The variables are left in the environment: removing them is unsound in a
/// threaded process, and they are harmless to children because `LISTEN_PID` names us. The fds
/// are marked close-on-exec so children (units run by the process supervisor) do not inherit
/// them.
pub fn systemd_listeners() -> io::Result<Vec<Listener>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: i32 = fds.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("LISTEN_FDS={fds:?} is not a number"),
        )
    })?;
    const SD_LISTEN_FDS_START: i32 = 3;
    let mut out = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START.saturating_add(n.max(0)) {
        out.push(listener_from_fd(fd)?);
    }
    Ok(out)
}

fn listener_from_fd(fd: i32) -> io::Result<Listener> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl and getsockname only read the fd's flags and address into the buffers we
    // pass, sized as the kernel expects.
    let family = unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == -1 {
            return Err(io::Error::new(
                io::Error::last_os_error().kind(),
                format!("socket activation fd {fd}: {}", io::Error::last_os_error()),
            ));
        }
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == -1
        {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("socket activation fd {fd} is not a socket: {e}"),
            ));
        }
        i32::from(addr.ss_family)
    };
    match family {
        libc::AF_UNIX => {
            // SAFETY: by the socket activation protocol, fds 3..3+LISTEN_FDS are listening
            // sockets handed to this process (LISTEN_PID matched) and nothing else owns them;
            // this function is called once per fd, so the fd gets exactly one owner.
            let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            std_listener.set_nonblocking(true)?;
            Ok(Listener::Unix { listener: tokio::net::UnixListener::from_std(std_listener)?, path: None })
        }
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: as above: the fd is ours by the protocol and taken exactly once.
            let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std_listener.set_nonblocking(true)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(std_listener)?))
        }
        other => Err(io::Error::new(io::ErrorKind::Unsupported, format!("socket activation fd {fd} has address family {other}; want a unix or TCP stream socket"))),
    }
}

/// What [`check_exposure`] needs to know about the API's protection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exposure {
    /// TCP listeners serve TLS.
    pub tls: bool,
    /// TLS requires client certificates (`api_tls_client_ca`).
    pub client_certs: bool,
    /// A tokens file is set (`api_tokens_file`).
    pub tokens: bool,
    /// The operator accepts unprotected TCP listeners off loopback (`api_insecure_tcp`).
    pub insecure_tcp: bool,
}

/// Whether the TCP listeners may be served as configured: one off loopback needs TLS, and
/// TLS with client authentication (client certificates or tokens), unless `insecure_tcp`.
/// `Ok` holds the warnings to log (listeners served only because of `insecure_tcp`).
pub fn check_exposure(listeners: &[Listener], exposure: Exposure) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for l in listeners {
        let Some(addr) = l.local_addr() else {
            continue;
        };
        if addr.ip().is_loopback() {
            continue;
        }
        let problem = if !exposure.tls {
            Some("without TLS anyone on the network can read and change the cluster; set api_tls_cert and api_tls_key")
        } else if !exposure.client_certs && !exposure.tokens {
            Some("TLS alone lets any client in; set api_tls_client_ca (client certificates) or api_tokens_file (tokens)")
        } else {
            None
        };
        let Some(problem) = problem else {
            continue;
        };
        if exposure.insecure_tcp {
            warnings.push(format!(
                "the API listens on tcp://{addr} off loopback unprotected because api_insecure_tcp = true: {problem}"
            ));
        } else {
            return Err(format!(
                "refusing to serve the API on tcp://{addr}: {problem} (or listen on loopback, or set api_insecure_tcp = true to accept the risk)"
            ));
        }
    }
    Ok(warnings)
}

/// Serves `router` on every listener until `shutdown` completes, then stops accepting, lets
/// requests in flight finish, and removes the unix socket files it created.
pub async fn serve(
    listeners: Vec<Listener>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listeners, router, None, shutdown).await
}

/// Like [`serve`], with TLS on every TCP listener when `tls` is given. Each request carries
/// the [`Peer`] its listener stands for, which the API's access check reads.
pub async fn serve_with(
    listeners: Vec<Listener>,
    router: Router,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut socket_files = Vec::new();
    for l in listeners {
        let name = l.describe();
        tracing::info!(listener = %name, "serving the fleet API");
        let mut stop = stop_rx.clone();
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match l {
            Listener::Tcp(listener) if tls.is_some() => {
                let Some(tls) = tls.clone() else { continue };
                let router = router.clone().layer(axum::Extension(Peer::Tcp {
                    client_verified: tls.verifies_clients(),
                }));
                let listener = TlsListener::new(listener, tls)?;
                tasks.spawn(async move {
                    (
                        name,
                        axum::serve(listener, router)
                            .with_graceful_shutdown(signal)
                            .await,
                    )
                });
            }
            Listener::Tcp(listener) => {
                let router = router.clone().layer(axum::Extension(Peer::Tcp {
                    client_verified: false,
                }));
                tasks.spawn(async move {
                    (
                        name,
                        axum::serve(listener, router)
                            .with_graceful_shutdown(signal)
                            .await,
                    )
                });
            }
            Listener::Unix { listener, path } => {
                let router = router.clone().layer(axum::Extension(Peer::Local));
                socket_files.extend(path);
                tasks.spawn(async move {
                    (
                        name,
                        axum::serve(listener, router)
                            .with_graceful_shutdown(signal)
                            .await,
                    )
                });
            }
        }
    }
    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => {}
        // A listener failing ends serving on all, so fleetd can report it and stop.
        Some(done) = tasks.join_next() => {
            result = match done {
                Ok((name, Err(e))) => Err(io::Error::new(e.kind(), format!("serving on {name}: {e}"))),
                Ok((name, Ok(()))) => Err(io::Error::other(format!("serving on {name} stopped unexpectedly"))),
                Err(e) => Err(io::Error::other(format!("API listener task failed: {e}"))),
            };
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, Err(e))) = done {
            tracing::warn!(listener = %name, error = %e, "API listener ended with an error");
        }
    }
    for path in socket_files {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::debug!(path = %path.display(), error = %e, "could not remove API socket file");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_socket_is_created_with_mode_0660_replacing_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/fleet.sock");
        // A stale socket: bound, then its listener dropped (nobody accepts on it).
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let ls = bind(&[Listen::Unix(path.clone())]).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert_eq!(ls[0].describe(), format!("unix://{}", path.display()));
        // Now it is live: a second bind must refuse instead of stealing it.
        let err = bind(&[Listen::Unix(path.clone())]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[tokio::test]
    async fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.sock");
        std::fs::write(&path, "keep me").unwrap();
        assert!(bind(&[Listen::Unix(path.clone())]).await.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn tcp_port_zero_reports_the_chosen_port() {
        let ls = bind(&[Listen::Tcp("127.0.0.1:0".into())]).await.unwrap();
        let addr = ls[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(ls[0].describe(), format!("tcp://{addr}"));
    }
}
