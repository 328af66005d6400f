//! `fleetctl fd-forward SOCKET`: copies stdin to a unix socket and the socket to stdout, so an
//! SSH session running it on a remote machine carries HTTP to that machine's fleetd (fleet's
//! tunnel). Plain threads and blocking I/O: two copies, nothing to schedule.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

/// Runs the proxy until the socket side closes. Unlike fleet (which exited 0 even when it could
/// not connect), a connection failure is an error.
pub fn run(socket: &str) -> i32 {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Unable to connect to {socket}: {e} (is fleetd running?)");
            return 1;
        }
    };
    let Ok(writer) = stream.try_clone() else {
        eprintln!("Unable to use the connection to {socket}");
        return 1;
    };
    // stdin -> socket; at end of input, half-close so the server sees EOF and can finish.
    std::thread::spawn(move || {
        let mut writer = writer;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
        let _ = writer.shutdown(Shutdown::Write);
    });
    // socket -> stdout, until the server closes.
    let mut reader = stream;
    let mut buf = [0u8; 16 * 1024];
    let mut stdout = std::io::stdout().lock();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return 0,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return 0;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("Error reading from {socket}: {e}");
                return 1;
            }
        }
    }
}
