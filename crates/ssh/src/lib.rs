//! fleetctl's SSH client, on [russh](https://docs.rs/russh): keys from the running ssh-agent
//! only (as fleet), optional agent forwarding, fleetctl's own known-hosts file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ssh::SshError> {
//! use ssh::{HostKeys, OnUnknown, Options, Session};
//! let opts = Options {
//!     user: "core".into(),
//!     timeout: std::time::Duration::from_secs(10),
//!     host_keys: HostKeys::Check {
//!         file: ssh::known_hosts::expand_home("~/.fleetctl/known_hosts"),
//!         on_unknown: OnUnknown::Ask,
//!     },
//!     agent: Options::agent_from_env(),
//!     forward_agent: false,
//! };
//! let tunnel = Session::connect("10.0.0.1", 22, &opts, None).await?;
//! // HTTP to that machine's fleetd rides on this stream:
//! let stream = tunnel.exec_stream("fleetctl fd-forward /var/run/fleet.sock").await?;
//! // A machine behind the tunnel, reached through it:
//! let machine = Session::connect("10.0.0.2", 22, &opts, Some(&tunnel)).await?;
//! let code = machine.run(Some("systemctl status -l hello.service")).await?;
//! # let _ = (stream, code); Ok(()) }
//! ```

pub mod known_hosts;
mod session;
pub mod terminal;

pub use session::{ask, ChannelIo, HostKeys, OnUnknown, Options, Session, MAX_CHANNELS};

use std::path::PathBuf;

/// What went wrong, each in one line that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("SSH_AUTH_SOCK is not set: fleetctl authenticates with the keys of a running ssh-agent only; start one (eval $(ssh-agent)) and add your key (ssh-add)")]
    NoAgent,
    #[error("cannot use the ssh-agent at {}: {message} (is ssh-agent running? check SSH_AUTH_SOCK)", socket.display())]
    Agent { socket: PathBuf, message: String },
    #[error("the ssh-agent at {} holds no keys: add yours with ssh-add", socket.display())]
    NoKeys { socket: PathBuf },
    #[error("{user}@{host} refused every key of the ssh-agent ({keys} tried): add your public key to ~{user}/.ssh/authorized_keys there, or choose the user with --ssh-username")]
    Denied {
        user: String,
        host: String,
        keys: usize,
    },
    #[error("cannot reach {host}: {message} (check the address, --ssh-port or --tunnel, and that sshd runs there)")]
    Connect { host: String, message: String },
    #[error("no SSH connection to {host} within {seconds}s (check the address and that sshd runs there, or raise --ssh-timeout)")]
    Timeout { host: String, seconds: f64 },
    #[error("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED for {host}: it offers key {fingerprint}, not the one on line {} of {}; someone may be intercepting the connection, so fleetctl did not connect. If the host key really changed, remove that entry (ssh-keygen -R '{host}' -f {}) and connect again", lines_list(lines), file.display(), file.display())]
    HostKeyChanged {
        host: String,
        file: PathBuf,
        lines: Vec<usize>,
        fingerprint: String,
    },
    #[error("the host key of {host} is marked @revoked on line {line} of {}: not connecting", file.display())]
    HostKeyRevoked {
        host: String,
        file: PathBuf,
        line: usize,
    },
    #[error("the host key of {host} ({fingerprint}) is not in {} and there is no terminal to ask on: connect once from a terminal, or accept new hosts with --strict-host-key-checking=accept-new", file.display())]
    HostKeyUnknown {
        host: String,
        file: PathBuf,
        fingerprint: String,
    },
    #[error("the host key of {host} was not accepted: not connecting")]
    HostKeyNotAccepted { host: String },
    #[error("cannot use the known-hosts file {}: {message} (check --known-hosts-file)", file.display())]
    KnownHostsFile { file: PathBuf, message: String },
    #[error("SSH with {host} failed: {message}")]
    Protocol { host: String, message: String },
    #[error("SSH channel to {host} failed: {message}")]
    Channel { host: String, message: String },
}

fn lines_list(lines: &[usize]) -> String {
    lines
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `host[:port]` (or `[v6]:port`) with `default_port` when none is given.
pub fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("{s:?}: want HOST or HOST:PORT");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port.parse().map_err(|_| bad())?;
            if host.is_empty() {
                return Err(bad());
            }
            Ok((host.to_string(), port))
        }
        _ if s.is_empty() => Err(bad()),
        _ => Ok((s.to_string(), default_port)),
    }
}

/// `s` as one word for the remote shell (sshd runs commands through the user's shell).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./@:=+,%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        for (input, want) in [
            ("10.0.0.1", Ok(("10.0.0.1".to_string(), 22))),
            ("10.0.0.1:2222", Ok(("10.0.0.1".to_string(), 2222))),
            ("[::1]:2222", Ok(("::1".to_string(), 2222))),
            ("[::1]", Ok(("::1".to_string(), 22))),
            ("::1", Ok(("::1".to_string(), 22))),
            ("core.example.com", Ok(("core.example.com".to_string(), 22))),
        ] {
            assert_eq!(split_host_port(input, 22), want, "{input}");
        }
        for bad in ["", "h:x", ":22", "[::1", "h:99999"] {
            assert!(split_host_port(bad, 22).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("hello.service"), "hello.service");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("x;rm -rf /"), "'x;rm -rf /'");
    }
}
