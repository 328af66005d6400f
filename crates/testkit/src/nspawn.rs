//! A real systemd for tests: a machine booted with `systemd-nspawn` from the host's own `/usr`
//! (`/work/shared/spec/real-systemd.md` tells why each flag is there).
//!
//! ```no_run
//! use testkit::nspawn::{nspawn_available, NspawnMachine};
//! if let Err(why) = nspawn_available() {
//!     testkit::skip(&why);
//!     return Ok(());
//! }
//! let machine = NspawnMachine::builder("hello")
//!     .bind_ro("target/debug", "/opt/fleet")
//!     .boot()?;                                 // about half a second
//! let bus = machine.bus_address();              // the container's system bus, from the host
//! let root = machine.root();                    // /proc/<pid1>/root: its file system
//! let out = machine.systemctl(["status", "dbus.service"])?;
//! # let _ = (bus, root, out);
//! # anyhow::Ok(())
//! ```
//!
//! Each machine has a unique name, its own cgroups and temp dir; dropping it powers it off
//! (SIGTERM to nspawn), kills its PID 1 if that did not work in time, and removes its cgroups
//! and files, also when the test panics. The calls block: from an async test, call them before
//! the runtime is busy or inside `tokio::task::block_in_place`.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a boot may take before it counts as failed (a boot takes about 0.5 s).
const BOOT_DEADLINE: Duration = Duration::from_secs(60);
/// How long a clean poweroff may take before PID 1 is killed (it takes 1-2 s).
const POWEROFF_DEADLINE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Keeps first boot from enabling every host service; the machine runs D-Bus and journald.
const PRESET: &str = "enable dbus.service\nenable systemd-journald.service\ndisable *\n";

/// Why nspawn machines cannot be booted here, or `Ok` if they can. Tests that need a machine
/// print the reason and skip.
pub fn nspawn_available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("systemd-nspawn needs root".into());
    }
    for program in ["systemd-nspawn", "nsenter"] {
        if find_program(program).is_none() {
            return Err(format!(
                "{program} is not installed (Debian packages systemd-container, util-linux)"
            ));
        }
    }
    if !Path::new("/usr/lib/systemd/systemd").exists()
        && !Path::new("/lib/systemd/systemd").exists()
    {
        return Err("the host's /usr has no systemd to boot (Debian package systemd)".into());
    }
    if find_program("dbus-daemon").is_none() && find_program("dbus-broker").is_none() {
        return Err("the host's /usr has no D-Bus daemon to boot (Debian package dbus)".into());
    }
    let hierarchies = cgroup_hierarchies()?;
    let probe = format!("fleet-nspawn-probe-{}", unique_suffix());
    for h in &hierarchies {
        let dir = h.join(&probe);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot make a cgroup under {}: {e}", h.display()))?;
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(())
}

/// The cgroup hierarchies nspawn must be started in: the named systemd v1 hierarchy and the
/// unified one on a hybrid host, the root on a pure cgroup v2 host.
fn cgroup_hierarchies() -> Result<Vec<PathBuf>, String> {
    let base = Path::new("/sys/fs/cgroup");
    let (systemd, unified) = (base.join("systemd"), base.join("unified"));
    if systemd.is_dir() && unified.join("cgroup.procs").exists() {
        Ok(vec![systemd, unified])
    } else if base.join("cgroup.controllers").exists() {
        Ok(vec![base.to_path_buf()])
    } else {
        Err(
            "no cgroup hierarchy for nspawn: want /sys/fs/cgroup/{systemd,unified} or cgroup v2 \
             at /sys/fs/cgroup"
                .into(),
        )
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Unique among the processes of this host: PID, a counter, and the clock.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{n:x}{:04x}", std::process::id(), nanos & 0xffff)
}

/// `fleet-<hint>-<suffix>`: letters, digits and dashes, short enough for a host name.
fn machine_name(hint: &str) -> String {
    let mut clean = String::new();
    for c in hint.chars() {
        if c.is_ascii_alphanumeric() {
            clean.push(c.to_ascii_lowercase());
        } else if !clean.ends_with('-') {
            clean.push('-');
        }
    }
    clean.truncate(24);
    let hint = clean.trim_matches('-');
    if hint.is_empty() {
        format!("fleet-{}", unique_suffix())
    } else {
        format!("fleet-{hint}-{}", unique_suffix())
    }
}

/// Options of a machine before it boots; see [`NspawnMachine::builder`].
#[derive(Clone, Debug)]
pub struct NspawnBuilder {
    name_hint: String,
    binds: Vec<String>,
    args: Vec<String>,
}

impl NspawnBuilder {
    /// Makes host directory `host` visible read-only at `container` (e.g. the build's
    /// binaries at `/opt/fleet`).
    pub fn bind_ro(mut self, host: impl AsRef<Path>, container: impl AsRef<Path>) -> Self {
        self.binds
            .push(bind_arg("--bind-ro", host.as_ref(), container.as_ref()));
        self
    }

    /// Makes host directory `host` visible read-write at `container`.
    pub fn bind(mut self, host: impl AsRef<Path>, container: impl AsRef<Path>) -> Self {
        self.binds
            .push(bind_arg("--bind", host.as_ref(), container.as_ref()));
        self
    }

    /// One more `systemd-nspawn` option, e.g. `--network-namespace-path=/run/netns/n1` or
    /// `--uuid=...`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Boots the machine and waits until systemd reports `running` or `degraded`.
    pub fn boot(self) -> Result<NspawnMachine> {
        nspawn_available()
            .map_err(|why| anyhow::anyhow!("cannot boot an nspawn machine: {why}"))?;
        let hierarchies = cgroup_hierarchies().map_err(anyhow::Error::msg)?;
        let name = machine_name(&self.name_hint);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("cannot make the machine's temp dir")?;
        let preset = dir.path().join("00-test.preset");
        std::fs::write(&preset, PRESET).context("cannot write the preset file")?;
        let log_path = dir.path().join("console.log");
        let log = File::create(&log_path).context("cannot create the console log")?;
        let log_err = log.try_clone().context("cannot share the console log")?;

        // From here on, dropping `machine` undoes whatever was done.
        let mut machine = NspawnMachine {
            name,
            cgroups: Vec::new(),
            child: None,
            pid1: None,
            log_path,
            _dir: dir,
        };
        for h in &hierarchies {
            let cg = h.join(&machine.name);
            std::fs::create_dir(&cg)
                .with_context(|| format!("cannot make cgroup {}", cg.display()))?;
            machine.cgroups.push(cg);
        }

        // nspawn must start from its own cgroup in every hierarchy, or all containers share
        // one; the shell moves itself there and then becomes nspawn.
        let cgroups: Vec<String> = machine
            .cgroups
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"for d in $FLEET_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 97; done; exec systemd-nspawn "$@""#)
            .arg("sh")
            .args(["-D", "/", "--volatile=yes", "--keep-unit", "--register=no"])
            .arg(format!("--machine={}", machine.name))
            .arg(bind_arg("--bind-ro", &preset, Path::new("/etc/systemd/system-preset/00-test.preset")))
            .args(&self.binds)
            .args(&self.args)
            .args(["-b", "--console=pipe", "systemd.mask=systemd-firstboot.service"])
            .env("FLEET_CGROUPS", cgroups.join(" "))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd.spawn().context("cannot run systemd-nspawn")?;
        let nspawn_pid = child.id();
        machine.child = Some(child);

        let deadline = Instant::now() + BOOT_DEADLINE;
        let pid1 = loop {
            if let Some(pid) = child_named(nspawn_pid, "systemd") {
                break pid;
            }
            machine.check_running("start systemd")?;
            if Instant::now() > deadline {
                bail!(
                    "{}: systemd did not start within {BOOT_DEADLINE:?}{}",
                    machine.name,
                    machine.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        machine.pid1 = Some(pid1);

        let mut last = String::new();
        loop {
            if let Ok(out) = machine.systemctl(["is-system-running"]) {
                last = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if last == "running" || last == "degraded" {
                    return Ok(machine);
                }
            }
            machine.check_running("finish booting")?;
            if Instant::now() > deadline {
                bail!(
                    "{}: systemd is {last:?}, not running, after {BOOT_DEADLINE:?}{}",
                    machine.name,
                    machine.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

fn bind_arg(flag: &str, host: &Path, container: &Path) -> String {
    // nspawn wants absolute host paths.
    let host = std::path::absolute(host).unwrap_or_else(|_| host.to_path_buf());
    format!("{flag}={}:{}", host.display(), container.display())
}

/// A child of `parent` whose command name is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the
        // last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) && &stat[open + 1..close] == comm {
            return Some(pid);
        }
    }
    None
}

/// A booted machine: a real systemd as PID 1 of a container, with its own D-Bus system bus.
#[derive(Debug)]
pub struct NspawnMachine {
    name: String,
    cgroups: Vec<PathBuf>,
    child: Option<Child>,
    pid1: Option<u32>,
    log_path: PathBuf,
    // Held only to be removed on drop, after `Drop::drop` has stopped the machine.
    _dir: tempfile::TempDir,
}

impl NspawnMachine {
    /// Boots a machine with the default options; `name_hint` becomes part of its unique name.
    pub fn boot(name_hint: &str) -> Result<NspawnMachine> {
        Self::builder(name_hint).boot()
    }

    /// A machine to configure (binds, extra nspawn options) before [`NspawnBuilder::boot`].
    pub fn builder(name_hint: &str) -> NspawnBuilder {
        NspawnBuilder {
            name_hint: name_hint.to_string(),
            binds: Vec::new(),
            args: Vec::new(),
        }
    }

    /// The machine (and host) name inside the container.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host PID of the container's systemd.
    pub fn pid1(&self) -> u32 {
        // A machine is only handed out once PID 1 is known.
        self.pid1.unwrap_or(0)
    }

    /// The host PID of the systemd-nspawn process.
    pub fn nspawn_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The container's root file system as the host reaches it: `/proc/<pid1>/root`.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid1()))
    }

    /// Where the host reaches the container's `path`.
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.root().join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The D-Bus address of the container's system bus, usable from the host.
    pub fn bus_address(&self) -> String {
        format!(
            "unix:path={}",
            self.host_path("/run/dbus/system_bus_socket").display()
        )
    }

    /// A command that runs `program` inside the container (all its namespaces, via nsenter).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid1().to_string())
            .arg("-a")
            .arg(program);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `systemctl ARGS` inside the container; the output whatever the exit status.
    pub fn systemctl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command("systemctl");
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("{}: cannot run systemctl through nsenter", self.name))
    }

    /// What nspawn and the container's console printed so far.
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILLs the container's PID 1, which takes the whole machine down at once: a machine
    /// crash. Waits for nspawn to exit.
    pub fn crash(&mut self) -> Result<()> {
        if let Some(pid1) = self.pid1.filter(|&p| self.owns(p)) {
            kill(Pid::from_raw(pid1 as i32), Signal::SIGKILL)
                .with_context(|| format!("{}: cannot kill PID 1 ({pid1})", self.name))?;
        }
        if !self.wait_nspawn(POWEROFF_DEADLINE) {
            bail!(
                "{}: nspawn still runs after its PID 1 was killed",
                self.name
            );
        }
        Ok(())
    }

    /// Asks the machine to power off cleanly (SIGTERM to nspawn: systemd inside runs its
    /// shutdown, as `poweroff` would) without waiting; see [`NspawnMachine::wait_off`].
    pub fn request_power_off(&self) -> Result<()> {
        if let Some(pid) = self.nspawn_pid() {
            kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
                .with_context(|| format!("{}: cannot signal nspawn ({pid})", self.name))?;
        }
        Ok(())
    }

    /// Waits up to `limit` for the machine to be off (nspawn exited); true if it is.
    pub fn wait_off(&mut self, limit: Duration) -> bool {
        self.wait_nspawn(limit)
    }

    /// Whether `pid` is still a process of this machine (PIDs are reused).
    fn owns(&self, pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cg| cg.contains(&format!("/{}/", self.name)))
    }

    /// Fails with the console log if nspawn has exited.
    fn check_running(&mut self, doing: &str) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "{}: systemd-nspawn exited ({status}) before systemd could {doing}{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = self.console_log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; console log ({}):\n{tail}", self.log_path.display())
    }

    /// Waits up to `limit` for nspawn to exit; true if it has.
    fn wait_nspawn(&mut self, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() > deadline => return false,
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Removes the machine's cgroups, deepest first; retries while the last processes exit.
    fn remove_cgroups(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for cg in &self.cgroups {
            while remove_tree(cg).is_err() && Instant::now() < deadline {
                std::thread::sleep(POLL_INTERVAL);
            }
            if cg.exists() {
                eprintln!(
                    "nspawn {}: could not remove cgroup {}",
                    self.name,
                    cg.display()
                );
            }
        }
    }
}

/// rmdir of a cgroup directory tree (cgroup files go with their directory).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Drop for NspawnMachine {
    fn drop(&mut self) {
        if let Some(pid) = self.nspawn_pid() {
            // A clean poweroff first: the container's units get stopped.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if !self.wait_nspawn(POWEROFF_DEADLINE) {
            eprintln!(
                "nspawn {}: no poweroff within {POWEROFF_DEADLINE:?}; killing PID 1",
                self.name
            );
        }
        // Also when nspawn is gone but left the container running (it was SIGKILLed).
        if let Some(pid1) = self.pid1.filter(|&p| self.owns(p)) {
            let _ = kill(Pid::from_raw(pid1 as i32), Signal::SIGKILL);
        }
        if !self.wait_nspawn(POWEROFF_DEADLINE) {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.remove_cgroups();
        // nspawn leaves this empty directory behind ("Attempted to remove disk file system").
        let _ = std::fs::remove_dir(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_are_unique_and_valid_host_names() {
        let a = machine_name("Systemd Load/Start test, with a long hint");
        let b = machine_name("Systemd Load/Start test, with a long hint");
        assert_ne!(a, b);
        for name in [&a, &b, &machine_name(""), &machine_name("--")] {
            assert!(name.len() <= 64, "{name}");
            assert!(name.starts_with("fleet-"), "{name}");
            assert!(!name.ends_with('-') && !name.contains("--"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
    }

    #[test]
    fn children_are_found_by_name() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id();
        let found = child_named(me, "sleep");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(child.id()));
        assert_eq!(child_named(me, "no-such-program"), None);
    }

    #[test]
    fn boots_and_powers_off() {
        if let Err(why) = nspawn_available() {
            crate::skip(&why);
            return;
        }
        let started = Instant::now();
        let machine = NspawnMachine::boot("testkit-boot").unwrap();
        eprintln!("booted {} in {:?}", machine.name(), started.elapsed());
        let out = machine.systemctl(["is-active", "dbus.service"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "active");
        assert!(machine.host_path("/run/dbus/system_bus_socket").exists());
        let hostname = machine.command("hostname").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&hostname.stdout).trim(),
            machine.name()
        );
        let (pid1, name, cgroups) = (
            machine.pid1(),
            machine.name.clone(),
            machine.cgroups.clone(),
        );
        drop(machine);
        let cgroup = std::fs::read_to_string(format!("/proc/{pid1}/cgroup")).unwrap_or_default();
        assert!(
            !cgroup.contains(&format!("/{name}/")),
            "PID 1 {pid1} survived"
        );
        for cg in cgroups {
            assert!(!cg.exists(), "{} left behind", cg.display());
        }
    }
}
