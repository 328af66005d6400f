//! A real OpenSSH server (`/usr/sbin/sshd`, Debian's openssh-server) on a free loopback port,
//! with its own host key, config and authorized keys in a temp dir, plus an `ssh-agent`
//! holding a test key that the server accepts. Both are killed by PID on drop.
//!
//! ```no_run
//! let Some(sshd) = testkit::sshd::Sshd::start(&[("PATH", "/usr/bin:/bin")])? else {
//!     return Ok(()); // skipped: no sshd here (and not CI)
//! };
//! println!("ssh -p {} root@127.0.0.1 with SSH_AUTH_SOCK={}", sshd.port(), sshd.agent_socket().display());
//! # Ok::<(), anyhow::Error>(())
//! ```

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd or the agent may take to come up.
const READY: Duration = Duration::from_secs(20);

pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    env: Vec<(String, String)>,
    sshd: Option<Child>,
    agent: Option<Child>,
}

impl Sshd {
    /// Starts sshd and the agent; `env` is set in every session sshd starts (`SetEnv`).
    /// `Ok(None)` when this machine has no sshd, ssh-agent or ssh-keygen (after
    /// [`crate::skip`], which fails the test under `CI=true`).
    pub fn start(env: &[(&str, &str)]) -> Result<Option<Sshd>> {
        for tool in [SSHD, "ssh-agent", "ssh-add", "ssh-keygen"] {
            if which(tool).is_none() {
                crate::skip(&format!(
                    "{tool} is not installed (Debian: apt-get install openssh-server openssh-client)"
                ));
                return Ok(None);
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("sshd-")
            .tempdir()
            .context("temp dir for sshd")?;
        // sshd checks that the directories above its files are not writable by others.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("a free loopback port")?;
            l.local_addr()?.port()
        };
        let mut s = Sshd {
            dir,
            port,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sshd: None,
            agent: None,
        };
        keygen(&s.dir.path().join("host_key"))?;
        keygen(&s.dir.path().join("user_key"))?;
        std::fs::copy(
            s.dir.path().join("user_key.pub"),
            s.dir.path().join("authorized_keys"),
        )
        .context("authorized_keys")?;
        s.write_config()?;
        s.spawn_sshd()?;
        s.spawn_agent()?;
        let out = Command::new("ssh-add")
            .arg(s.dir.path().join("user_key"))
            .env("SSH_AUTH_SOCK", s.agent_socket())
            .output()
            .context("running ssh-add")?;
        if !out.status.success() {
            bail!("ssh-add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Some(s))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user sessions run as: whoever runs the test (sshd runs as that user).
    pub fn user(&self) -> String {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".into())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `SSH_AUTH_SOCK` of the agent that holds the test key.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The server's public host key, `type base64`.
    pub fn host_key(&self) -> Result<String> {
        let text = std::fs::read_to_string(self.dir.path().join("host_key.pub"))?;
        Ok(text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// sshd's log (`-E`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Restarts sshd on the same port with a new host key, as a reinstalled machine (or a
    /// machine in the middle) would present.
    pub fn change_host_key(&mut self) -> Result<()> {
        self.kill_sshd();
        for f in ["host_key", "host_key.pub"] {
            let _ = std::fs::remove_file(self.dir.path().join(f));
        }
        keygen(&self.dir.path().join("host_key"))?;
        self.spawn_sshd()
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.path().display();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
             AllowAgentForwarding yes\nMaxSessions 10\nLogLevel VERBOSE\n",
            port = self.port
        );
        if !self.env.is_empty() {
            let vars: Vec<String> = self
                .env
                .iter()
                .map(|(k, v)| format!("\"{k}={v}\""))
                .collect();
            config.push_str(&format!("SetEnv {}\n", vars.join(" ")));
        }
        std::fs::write(self.dir.path().join("sshd_config"), config).context("sshd_config")
    }

    fn spawn_sshd(&mut self) -> Result<()> {
        // Debian's sshd refuses to start without its privilege separation directory, which
        // only its own service unit creates.
        let _ = std::fs::create_dir_all("/run/sshd");
        let d = self.dir.path();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sshd")?;
        self.sshd = Some(child);
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.sshd.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("sshd exited ({status}): {}", self.log());
                }
            }
            if start.elapsed() > READY {
                bail!(
                    "sshd did not listen on port {} within {READY:?}: {}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_agent(&mut self) -> Result<()> {
        let sock = self.agent_socket();
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ssh-agent")?;
        self.agent = Some(child);
        let start = Instant::now();
        while !sock.exists() {
            if start.elapsed() > READY {
                bail!(
                    "ssh-agent did not create {} within {READY:?}",
                    sock.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn kill_sshd(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            // SIGKILL to the listener's PID; sessions it forked end with their connections.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_sshd();
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).is_file().then(|| PathBuf::from(tool));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}
