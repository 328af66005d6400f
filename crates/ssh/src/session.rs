//! One authenticated SSH connection: channels for a tunnel (a remote command's stdio or
//! `direct-tcpip`), commands and interactive shells, and the next hop through it.

use crate::known_hosts::{self, Verdict};
use crate::SshError;
use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelStream};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Channels open at once on one connection. fleetctl sends API requests side by side, each on
/// its own channel, and sshd refuses sessions past `MaxSessions` (10 by default).
pub const MAX_CHANNELS: usize = 8;

/// What to do with a host whose key the known-hosts file does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnknown {
    /// Ask on the terminal; refuse when there is none.
    Ask,
    /// Add it to the file without asking (OpenSSH's `accept-new`).
    Accept,
}

/// How host keys are checked.
#[derive(Clone, Debug)]
pub enum HostKeys {
    /// `--strict-host-key-checking=false`: every key is taken, nothing is written.
    Off,
    Check {
        file: PathBuf,
        on_unknown: OnUnknown,
    },
}

#[derive(Clone, Debug)]
pub struct Options {
    pub user: String,
    /// Connection, key exchange and authentication together.
    pub timeout: Duration,
    pub host_keys: HostKeys,
    /// The ssh-agent socket (`SSH_AUTH_SOCK`): the only source of keys, as fleet.
    pub agent: Option<PathBuf>,
    /// Let the remote side use the agent (`-A`).
    pub forward_agent: bool,
}

impl Options {
    /// `SSH_AUTH_SOCK` from the environment.
    pub fn agent_from_env() -> Option<PathBuf> {
        std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    }
}

/// An authenticated connection. Cheap to clone; the connection closes with the last clone.
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle<Handler>>,
    /// `host:port`, for messages.
    name: String,
    slots: Arc<Semaphore>,
    forward_agent: bool,
}

impl Session {
    /// Connects to `host:port`, directly or through `via` (a `direct-tcpip` channel of an
    /// existing connection, as fleet reached machines behind its tunnel), checks the host key
    /// and authenticates with the agent's keys.
    pub async fn connect(
        host: &str,
        port: u16,
        opts: &Options,
        via: Option<&Session>,
    ) -> Result<Session, SshError> {
        let name = format!("{host}:{port}");
        let timeout = opts.timeout;
        match tokio::time::timeout(timeout, Self::establish(host, port, opts, via)).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout {
                host: name,
                seconds: timeout.as_secs_f64(),
            }),
        }
    }

    async fn establish(
        host: &str,
        port: u16,
        opts: &Options,
        via: Option<&Session>,
    ) -> Result<Session, SshError> {
        let name = format!("{host}:{port}");
        // The agent first: without a key there is no point in reaching the host.
        let mut agent = open_agent(opts.agent.as_deref()).await?;
        let identities = agent
            .request_identities()
            .await
            .map_err(|e| SshError::Agent {
                socket: opts.agent.clone().unwrap_or_default(),
                message: e.to_string(),
            })?;
        let keys: Vec<PublicKey> = identities
            .into_iter()
            .filter_map(|id| match id {
                AgentIdentity::PublicKey { key, .. } => Some(key),
                AgentIdentity::Certificate { .. } => None,
            })
            .collect();
        if keys.is_empty() {
            return Err(SshError::NoKeys {
                socket: opts.agent.clone().unwrap_or_default(),
            });
        }
        let problem = Arc::new(Mutex::new(None));
        let handler = Handler {
            known_name: known_hosts::host_name(host, port),
            host_keys: opts.host_keys.clone(),
            problem: problem.clone(),
            agent: opts.agent.clone().filter(|_| opts.forward_agent),
        };
        let config = Arc::new(client::Config::default());
        let connected = match via {
            None => {
                let tcp = tokio::net::TcpStream::connect((host, port))
                    .await
                    .map_err(|e| SshError::Connect {
                        host: name.clone(),
                        message: e.to_string(),
                    })?;
                let _ = tcp.set_nodelay(true);
                client::connect_stream(config, tcp, handler).await
            }
            Some(first) => {
                let stream = first.direct_tcpip(host, port).await?;
                client::connect_stream(config, stream, handler).await
            }
        };
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                let taken = problem.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(taken.unwrap_or_else(|| SshError::Protocol {
                    host: name.clone(),
                    message: e.to_string(),
                }));
            }
        };
        let protocol = |e: russh::Error| SshError::Protocol {
            host: name.clone(),
            message: e.to_string(),
        };
        let rsa_hash: Option<HashAlg> = handle
            .best_supported_rsa_hash()
            .await
            .map_err(protocol)?
            .flatten();
        for key in &keys {
            let hash = if key.algorithm().is_rsa() {
                rsa_hash
            } else {
                None
            };
            let result = handle
                .authenticate_publickey_with(opts.user.clone(), key.clone(), hash, &mut agent)
                .await
                .map_err(|e| SshError::Agent {
                    socket: opts.agent.clone().unwrap_or_default(),
                    message: e.to_string(),
                })?;
            if result.success() {
                return Ok(Session {
                    handle: Arc::new(handle),
                    name,
                    slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
                    forward_agent: opts.forward_agent,
                });
            }
        }
        Err(SshError::Denied {
            user: opts.user.clone(),
            host: name,
            keys: keys.len(),
        })
    }

    /// `host:port` of this connection.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn channel_error(&self, what: &str, e: russh::Error) -> SshError {
        SshError::Channel {
            host: self.name.clone(),
            message: format!("{what}: {e}"),
        }
    }

    /// A byte stream to `host:port` as the remote side sees it (`direct-tcpip`).
    pub async fn direct_tcpip(&self, host: &str, port: u16) -> Result<ChannelIo, SshError> {
        let permit = self.slot().await?;
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| self.channel_error(&format!("forwarding to {host}:{port}"), e))?;
        Ok(ChannelIo {
            inner: Inner::Stream(channel.into_stream()),
            _permit: permit,
        })
    }

    /// A remote command's stdin and stdout as one byte stream (fleet's tunnel to a unix
    /// socket runs `fleetctl fd-forward SOCKET` this way). When the command fails (not
    /// installed there, no socket), reading ends with an error that carries its exit status
    /// and stderr, not just a closed stream.
    pub async fn exec_stream(&self, command: &str) -> Result<ChannelIo, SshError> {
        let permit = self.slot().await?;
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error("opening a session", e))?;
        channel
            .exec(false, command)
            .await
            .map_err(|e| self.channel_error(&format!("running {command}"), e))?;
        let (mut read_half, write_half) = channel.split();
        let writer = Box::pin(write_half.make_writer());
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        let what = format!("`{command}` on {}", self.name);
        tokio::spawn(async move {
            let mut stderr: Vec<u8> = Vec::new();
            let mut status = None;
            loop {
                tokio::select! {
                    // The stream was dropped: close the channel, so the command ends too.
                    _ = tx.closed() => {
                        let _ = write_half.close().await;
                        return;
                    }
                    msg = read_half.wait() => match msg {
                        Some(ChannelMsg::Data { data }) => {
                            if tx.send(Ok(data)).await.is_err() {
                                let _ = write_half.close().await;
                                return;
                            }
                        }
                        Some(ChannelMsg::ExtendedData { data, .. }) => {
                            // Enough to say why it failed; the rest is not kept.
                            let room = 2048usize.saturating_sub(stderr.len());
                            stderr.extend_from_slice(&data[..data.len().min(room)]);
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                        Some(ChannelMsg::Close) | None => break,
                        Some(_) => {}
                    }
                }
            }
            if let Some(code) = status.filter(|c| *c != 0) {
                let said = String::from_utf8_lossy(&stderr);
                let said = said.trim().replace('\n', "; ");
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "{what} exited with status {code}: {said}"
                    ))))
                    .await;
            }
        });
        Ok(ChannelIo {
            inner: Inner::Exec {
                rx,
                pending: bytes::Bytes::new(),
                writer,
            },
            _permit: permit,
        })
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, SshError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SshError::Channel {
                host: self.name.clone(),
                message: "the connection is closed".into(),
            })
    }

    /// Runs `command` (or, with `None`, a login shell on a pseudo-terminal) with this
    /// process's stdin, stdout and stderr, and returns its exit status.
    pub async fn run(&self, command: Option<&str>) -> Result<u32, SshError> {
        let _permit = self.slot().await?;
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error("opening a session", e))?;
        if self.forward_agent {
            channel
                .agent_forward(false)
                .await
                .map_err(|e| self.channel_error("forwarding the agent", e))?;
        }
        let mut raw = None;
        match command {
            Some(cmd) => channel
                .exec(true, cmd)
                .await
                .map_err(|e| self.channel_error(&format!("running {cmd}"), e))?,
            None => {
                let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
                let (cols, rows) = crate::terminal::size().unwrap_or((80, 24));
                channel
                    .request_pty(false, &term, cols, rows, 0, 0, &[])
                    .await
                    .map_err(|e| self.channel_error("asking for a terminal", e))?;
                channel
                    .request_shell(true)
                    .await
                    .map_err(|e| self.channel_error("starting a shell", e))?;
                raw = crate::terminal::RawMode::enter();
            }
        }
        let (mut reader, writer) = channel.split();
        let mut input = crate::terminal::stdin_chunks();
        let mut resized =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        let mut status = None;
        let mut input_open = true;
        loop {
            tokio::select! {
                msg = reader.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => write_all(&mut std::io::stdout(), &data),
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        write_all(&mut std::io::stderr(), &data)
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(ChannelMsg::ExitSignal { .. }) => status = Some(255),
                    Some(ChannelMsg::Failure) => {
                        drop(raw);
                        return Err(SshError::Channel {
                            host: self.name.clone(),
                            message: "the server refused to run the command".into(),
                        });
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
                chunk = input.recv(), if input_open => match chunk {
                    Some(bytes) => {
                        if writer.data_bytes(bytes).await.is_err() {
                            input_open = false;
                        }
                    }
                    None => {
                        input_open = false;
                        let _ = writer.eof().await;
                    }
                },
                Some(()) = async { match resized.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                } } => {
                    if let Some((cols, rows)) = crate::terminal::size() {
                        let _ = writer.window_change(cols, rows, 0, 0).await;
                    }
                }
            }
        }
        drop(raw);
        status.ok_or_else(|| SshError::Channel {
            host: self.name.clone(),
            message: "the command ended without an exit status".into(),
        })
    }
}

fn write_all(out: &mut impl Write, data: &[u8]) {
    let _ = out.write_all(data);
    let _ = out.flush();
}

async fn open_agent(
    socket: Option<&std::path::Path>,
) -> Result<AgentClient<tokio::net::UnixStream>, SshError> {
    let Some(socket) = socket else {
        return Err(SshError::NoAgent);
    };
    AgentClient::connect_uds(socket)
        .await
        .map_err(|e| SshError::Agent {
            socket: socket.to_path_buf(),
            message: e.to_string(),
        })
}

/// A channel as a byte stream; its slot on the connection is freed when it is dropped.
pub struct ChannelIo {
    inner: Inner,
    _permit: OwnedSemaphorePermit,
}

enum Inner {
    Stream(ChannelStream<client::Msg>),
    /// A command's stdout as chunks from the task that reads the channel (which also keeps its
    /// stderr and exit status), and its stdin.
    Exec {
        rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
        pending: bytes::Bytes,
        writer: Pin<Box<dyn AsyncWrite + Send>>,
    },
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Stream(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Exec { rx, pending, .. } => {
                while pending.is_empty() {
                    match rx.poll_recv(cx) {
                        Poll::Pending => return Poll::Pending,
                        // End of the command's output.
                        Poll::Ready(None) => return Poll::Ready(Ok(())),
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                        Poll::Ready(Some(Ok(data))) => *pending = data,
                    }
                }
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending.split_to(n));
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for ChannelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Stream(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Exec { writer, .. } => writer.as_mut().poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Stream(s) => Pin::new(s).poll_flush(cx),
            Inner::Exec { writer, .. } => writer.as_mut().poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Stream(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Exec { writer, .. } => writer.as_mut().poll_shutdown(cx),
        }
    }
}

/// russh's callbacks: the host-key check and agent forwarding.
pub(crate) struct Handler {
    known_name: String,
    host_keys: HostKeys,
    /// Why the host key was refused, for the error the caller sees (russh only says
    /// "unknown key").
    problem: Arc<Mutex<Option<SshError>>>,
    /// The agent to forward, when `-A` asked for it.
    agent: Option<PathBuf>,
}

impl Handler {
    fn refuse(&self, e: SshError) -> Result<bool, russh::Error> {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        Ok(false)
    }

    fn check_key(&self, key: &PublicKey) -> Result<bool, russh::Error> {
        let HostKeys::Check { file, on_unknown } = &self.host_keys else {
            return Ok(true);
        };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return self.refuse(SshError::KnownHostsFile {
                    file: file.clone(),
                    message: e.to_string(),
                })
            }
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match known_hosts::check(&text, &self.known_name, key) {
            Verdict::Known => Ok(true),
            Verdict::Changed(lines) => self.refuse(SshError::HostKeyChanged {
                host: self.known_name.clone(),
                file: file.clone(),
                lines,
                fingerprint,
            }),
            Verdict::Revoked(line) => self.refuse(SshError::HostKeyRevoked {
                host: self.known_name.clone(),
                file: file.clone(),
                line,
            }),
            Verdict::Unknown => {
                let accepted = match on_unknown {
                    OnUnknown::Accept => true,
                    OnUnknown::Ask => {
                        if !std::io::stdin().is_terminal() {
                            return self.refuse(SshError::HostKeyUnknown {
                                host: self.known_name.clone(),
                                file: file.clone(),
                                fingerprint,
                            });
                        }
                        // Blocking on the terminal is what the user waits for anyway; nothing
                        // else runs on this connection before the answer.
                        ask(
                            &self.known_name,
                            key,
                            &fingerprint,
                            &mut std::io::stdin().lock(),
                            &mut std::io::stderr(),
                        )
                    }
                };
                if !accepted {
                    return self.refuse(SshError::HostKeyNotAccepted {
                        host: self.known_name.clone(),
                    });
                }
                if let Err(e) = known_hosts::append(file, &self.known_name, key) {
                    return self.refuse(SshError::KnownHostsFile {
                        file: file.clone(),
                        message: e.to_string(),
                    });
                }
                eprintln!(
                    "Warning: Permanently added '{}' ({}) to the list of known hosts.",
                    self.known_name,
                    key.algorithm()
                );
                Ok(true)
            }
        }
    }
}

/// OpenSSH's question on first contact; `true` on "yes".
pub fn ask(
    host: &str,
    key: &PublicKey,
    fingerprint: &str,
    input: &mut impl std::io::BufRead,
    prompt: &mut impl Write,
) -> bool {
    let _ = write!(
        prompt,
        "The authenticity of host '{host}' can't be established.\n{} key fingerprint is {fingerprint}.\nAre you sure you want to continue connecting (yes/no)? ",
        key.algorithm()
    );
    let _ = prompt.flush();
    loop {
        let mut answer = String::new();
        match input.read_line(&mut answer) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        match answer.trim().to_ascii_lowercase().as_str() {
            "yes" | "y" => return true,
            "no" | "n" => return false,
            _ => {
                let _ = write!(prompt, "Please type 'yes' or 'no': ");
                let _ = prompt.flush();
            }
        }
    }
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check_key(key),
            PublicKeyOrCertificate::Certificate(_) => self.refuse(SshError::Protocol {
                host: self.known_name.clone(),
                message: "the host offered a certificate; fleetctl checks plain host keys only"
                    .into(),
            }),
        }
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // Only when `-A` asked for it; dropping `reply` refuses the channel.
        let Some(socket) = self.agent.clone() else {
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            if let Ok(mut agent) = tokio::net::UnixStream::connect(&socket).await {
                let mut stream = channel.into_stream();
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_takes_yes_or_no() {
        let key = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMp+3lPshsOFMvj6w9kSxNav/uyphc2XSYx9dml2MZpb",
        )
        .expect("key");
        for (input, want) in [
            ("yes\n", true),
            ("y\n", true),
            ("no\n", false),
            ("", false),
            ("maybe\nYES\n", true),
            ("maybe\n", false),
        ] {
            let mut prompt = Vec::new();
            let got = ask("h", &key, "SHA256:x", &mut input.as_bytes(), &mut prompt);
            assert_eq!(got, want, "{input:?}");
            let shown = String::from_utf8_lossy(&prompt);
            assert!(
                shown.contains("(yes/no)?") && shown.contains("SHA256:x"),
                "{shown}"
            );
        }
    }
}
