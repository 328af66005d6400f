//! systemd socket activation: a child process (this test binary again) gets a listening TCP
//! socket as fd 3 with `LISTEN_PID`/`LISTEN_FDS` set as systemd sets them, and serves the API
//! on it.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

const CHILD: &str = "FLEET_API_ACTIVATION_CHILD";
const TEST: &str = "systemd_socket_activation_serves_the_passed_socket";

/// Kills the child by PID when the test ends, whether it passed or not.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new("/bin/sh");
    // `$$` is the shell's pid, which `exec` hands to the test binary: what systemd sets.
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" --exact "$1" --nocapture --test-threads=1"#)
        .arg(&exe)
        .arg(TEST)
        .env(CHILD, "1")
        // The child's harness lines would read like a second test run; its panics (stderr) stay.
        .stdout(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls dup2/fcntl,
    // which are async-signal-safe, on an fd the parent keeps open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                // Already fd 3: just let it survive exec.
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _child = Reap(cmd.spawn().expect("spawn child"));
    // Only the child holds the socket now: if it does not serve it, the request fails.
    drop(listener);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = api::Client::new(
            &format!("http://{addr}"),
            api::ClientOptions {
                request_timeout: Duration::from_secs(60),
            },
        )
        .expect("client");
        let doc = client
            .discovery()
            .await
            .expect("discovery through the activated socket");
        assert_eq!(doc["id"], "fleet:v1");
    });
}

fn child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listeners = server::listen::systemd_listeners().expect("socket activation");
        assert_eq!(listeners.len(), 1, "LISTEN_FDS=1 with our pid");
        assert!(listeners[0].local_addr().is_some(), "a TCP socket");
        let env = common::Env::new(100).await;
        // Served until the parent kills this process.
        let _ = server::listen::serve(
            listeners,
            server::router(env.state.clone()),
            std::future::pending(),
        )
        .await;
    });
}
