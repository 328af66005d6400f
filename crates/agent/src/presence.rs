//! Machine presence: the machine's record under a lease of TTL `agent_ttl`, kept alive while
//! fleetd runs. The lease id is recorded under `state_dir`, so a fleetd restarted within the
//! TTL (after a crash, SIGKILL or an upgrade) resumes the same lease and registers at once,
//! instead of waiting for its old record to expire as fleet did.

use anyhow::{bail, Context};
use registry::{Announcement, LeaseId, LeaseKeeper, MachineLease, MachineState, Registry};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The lease file under `state_dir`.
pub fn lease_file(state_dir: &Path) -> PathBuf {
    state_dir.join("machine.lease")
}

/// A registered machine.
#[derive(Clone)]
pub struct Presence {
    pub registry: Registry,
    pub machine: MachineState,
    pub lease: MachineLease,
    pub ttl: Duration,
    state_dir: PathBuf,
}

/// The task refreshing a machine lease (see [`Presence::keep_alive`]); stops it when dropped.
pub type Keeper = LeaseKeeper;

#[derive(Debug, thiserror::Error)]
#[error(
    "machine id {id} is already registered by another live fleetd (lease {lease:x}); \
     give this machine its own id (machine_id or /etc/machine-id), or stop the other fleetd \
     and wait agent_ttl for its record to expire"
)]
pub struct DuplicateMachine {
    pub id: String,
    pub lease: LeaseId,
}

impl Presence {
    /// Registers `machine`: resumes the lease recorded under `state_dir` if it is still alive,
    /// else grants a new one. Fails with [`DuplicateMachine`] if another live fleetd holds the id.
    pub async fn register(
        registry: Registry,
        machine: MachineState,
        ttl: Duration,
        state_dir: &Path,
    ) -> anyhow::Result<Presence> {
        let file = lease_file(state_dir);
        let mut lease = None;
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some((id, recorded)) = text.trim().split_once(' ') {
                if id == machine.id {
                    if let Ok(recorded) = recorded.parse::<LeaseId>() {
                        lease = registry.resume_machine_lease(recorded, ttl).await?;
                        if lease.is_some() {
                            tracing::info!(
                                lease = format!("{recorded:x}"),
                                "resumed the machine lease of the previous fleetd"
                            );
                        }
                    }
                }
            }
        }
        let lease = match lease {
            Some(l) => l,
            None => registry.grant_machine_lease(ttl).await?,
        };
        let presence = Presence {
            registry,
            machine,
            lease,
            ttl,
            state_dir: state_dir.to_path_buf(),
        };
        presence.announce().await?;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state_dir {}", state_dir.display()))?;
        std::fs::write(
            &file,
            format!("{} {}\n", presence.machine.id, presence.lease.id()),
        )
        .with_context(|| format!("recording the machine lease in {}", file.display()))?;
        Ok(presence)
    }

    /// Writes the machine record under our lease, unless another lease holds it.
    pub async fn announce(&self) -> anyhow::Result<()> {
        match self.lease.announce(&self.machine).await? {
            Announcement::Written => Ok(()),
            Announcement::TakenBy(holder) => Err(DuplicateMachine {
                id: self.machine.id.clone(),
                lease: holder,
            }
            .into()),
        }
    }

    /// Registers again under a new lease after the old one expired (the registry was
    /// unreachable, or too slow to answer, for longer than the TTL). Everything tied to the old
    /// lease (unit states) must then be written again.
    pub async fn renew(&mut self) -> anyhow::Result<()> {
        tracing::warn!("machine lease expired; registering again");
        self.lease.renew().await?;
        self.announce().await?;
        let file = lease_file(&self.state_dir);
        let record = format!("{} {}\n", self.machine.id, self.lease.id());
        if let Err(e) = std::fs::write(&file, record) {
            tracing::warn!(error = %e, file = %file.display(), "could not record the machine lease");
        }
        Ok(())
    }

    /// Starts refreshing the lease every TTL/3 from a task of its own, so that an agent busy
    /// with a long reconciliation or publication (a registry slow under load) does not let its
    /// machine expire. A lease found expired is sent on the returned receiver, and refreshing
    /// stops until [`Keeper::follow`] names the next one. The task ends with the [`Keeper`].
    pub fn keep_alive(&self) -> (Keeper, tokio::sync::mpsc::Receiver<LeaseId>) {
        self.lease.keep_alive()
    }

    /// The machine leaves the cluster: its record and every state tied to its lease go at once.
    pub async fn leave(&self) -> anyhow::Result<()> {
        self.lease.revoke().await?;
        let _ = std::fs::remove_file(lease_file(&self.state_dir));
        Ok(())
    }
}

/// The machine id from `/etc/machine-id`-like file contents.
pub fn read_machine_id(path: &Path) -> anyhow::Result<String> {
    let id = std::fs::read_to_string(path)
        .with_context(|| format!("reading machine id from {}", path.display()))?;
    let id = id.trim().to_string();
    if id.is_empty() {
        bail!(
            "{} is empty: set machine_id in the configuration",
            path.display()
        );
    }
    Ok(id)
}

/// The IPv4 address this machine uses for its default route, found without sending anything:
/// connecting a UDP socket only selects a route and source address.
pub fn detect_public_ip() -> Option<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then(|| ip.to_string())
}

/// Finds this machine's public IP ([`detect_public_ip`] in fleetd); a parameter so that tests
/// can change what is found.
pub type DetectIp = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// When `public_ip` is not configured (`configured` false; a reload may change it), detects the
/// address again every `every` (fleet did on each heartbeat: DHCP may move it) and sends the
/// machine record on `records` with the new address when it changes, logging the change; the
/// agent announces it. A detection that finds nothing keeps the last address. Ends when no one
/// receives the records any more.
pub async fn redetect_public_ip(
    records: watch::Sender<MachineState>,
    detect: DetectIp,
    every: Duration,
    configured: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = records.closed() => return,
            _ = ticks.tick() => {}
        }
        if *configured.borrow() {
            continue;
        }
        let Some(found) = detect() else {
            continue;
        };
        records.send_if_modified(|machine| {
            if machine.public_ip == found {
                return false;
            }
            tracing::info!(old = %machine.public_ip, new = %found, "public IP changed; announcing it");
            machine.public_ip = found.clone();
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The detector's answers change under the watcher; the clock is paused, so the test waits
    /// for no real interval.
    #[tokio::test(start_paused = true)]
    async fn a_changed_public_ip_is_sent_once_and_a_configured_one_is_left_alone() {
        let found = Arc::new(Mutex::new(Some("10.0.0.1".to_string())));
        let detect: DetectIp = {
            let found = found.clone();
            Arc::new(move || found.lock().ok().and_then(|f| f.clone()))
        };
        let machine = MachineState {
            id: "m1".into(),
            public_ip: "10.0.0.1".into(),
            ..MachineState::default()
        };
        let (records, mut rx) = watch::channel(machine);
        let (configured_tx, configured) = watch::channel(false);
        let every = Duration::from_secs(10);
        tokio::spawn(redetect_public_ip(records, detect, every, configured));

        // The same address: nothing is sent.
        tokio::time::sleep(every * 3).await;
        assert!(!rx.has_changed().unwrap());

        *found.lock().unwrap() = Some("10.0.0.2".into());
        rx.changed().await.unwrap();
        let sent = rx.borrow_and_update().clone();
        assert_eq!(sent.public_ip, "10.0.0.2");
        assert_eq!(sent.id, "m1", "the rest of the record is kept");

        // Nothing found: the last address stays.
        *found.lock().unwrap() = None;
        tokio::time::sleep(every * 3).await;
        assert!(!rx.has_changed().unwrap());

        // Configured (after a reload): detection stops.
        configured_tx.send(true).unwrap();
        *found.lock().unwrap() = Some("10.0.0.3".into());
        tokio::time::sleep(every * 3).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().public_ip, "10.0.0.2");

        // Unset again: the new address goes out.
        configured_tx.send(false).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().public_ip, "10.0.0.3");
    }
}
