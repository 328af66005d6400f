//! Machine presence: the machine's record under a lease of TTL `agent_ttl`, kept alive while
//! fleetd runs. The lease id is recorded under `state_dir`, so a fleetd restarted within the
//! TTL (after a crash, SIGKILL or an upgrade) resumes the same lease and registers at once,
//! instead of waiting for its old record to expire as fleet did.

use anyhow::{bail, Context};
use registry::{
    Announcement, LeaseId, LeaseKeeper, MachineLease, MachineState, Registry, UnitState,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

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
    losses: LeaseLosses,
}

/// How many machine leases were lost (found expired by the registry while this fleetd ran):
/// none, unless the registry was unreachable or too slow for longer than `agent_ttl`. Cheap to
/// clone; clones count together (fleetd serves it at `/metrics`, fleet-bench sums its machines).
#[derive(Clone, Debug, Default)]
pub struct LeaseLosses(prometheus_client::metrics::counter::Counter);

impl LeaseLosses {
    /// Counts one loss; the count so far, this one included.
    pub fn record(&self) -> u64 {
        self.0.inc() + 1
    }

    pub fn count(&self) -> u64 {
        self.0.get()
    }

    /// The counter itself, to register for `/metrics` (clones count together).
    pub fn counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.0.clone()
    }
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
            losses: LeaseLosses::default(),
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

    /// Counts this machine's lost leases in `losses` (shared with others, or read elsewhere).
    pub fn with_lease_losses(mut self, losses: LeaseLosses) -> Presence {
        self.losses = losses;
        self
    }

    /// The counter of this machine's lost leases.
    pub fn lease_losses(&self) -> &LeaseLosses {
        &self.losses
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
    /// machine expire; on a connection of its own with etcd, so a refresh never waits behind
    /// bulk writes. A refresh that fails or is slow is logged and retried at once (see
    /// [`MachineLease::keep_alive`]). A lease found expired is sent on the returned receiver, and refreshing
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

/// After a lost lease, unit states are written again at most this many at once...
pub const REPUBLISH_BURST: u32 = registry::MAX_TXN_OPS as u32;
/// ...then at most this many a second (a 1,000-unit machine takes about 2 s): a thousand
/// machines losing their leases together (a registry stalled past the TTL) would otherwise
/// write every state at once, slow the registry down and make the next losses.
pub const REPUBLISH_PER_SECOND: u32 = 4 * registry::MAX_TXN_OPS as u32;

/// When machines that lost their leases together start writing their states again: spread
/// uniformly over this fraction of the TTL.
const REPUBLISH_SPREAD_OF_TTL: u32 = 4;

/// A token bucket: up to `burst` tokens, refilled at `per_second`. Pure: the caller says what
/// time it is.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    /// Negative when takers were promised tokens not there yet: later ones wait behind them.
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket. `per_second` of 0 is taken as 1 (a bucket that never refills would
    /// stall its takers for ever).
    pub fn new(burst: u32, per_second: u32) -> TokenBucket {
        TokenBucket {
            burst: f64::from(burst),
            per_second: f64::from(per_second.max(1)),
            tokens: f64::from(burst),
            at: None,
        }
    }

    /// Takes `n` tokens at `now`: when they may be spent (`now` if the bucket holds them, else
    /// once refilled; the bucket goes into debt, so the next taker waits behind this one).
    pub fn take(&mut self, now: Instant, n: u32) -> Instant {
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
        self.tokens -= f64::from(n);
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// The bucket a machine's republications after lost leases share: it outlives one loss, so a
/// lease lost again and again is republished no faster.
pub fn republish_bucket() -> Arc<Mutex<TokenBucket>> {
    Arc::new(Mutex::new(TokenBucket::new(
        REPUBLISH_BURST,
        REPUBLISH_PER_SECOND,
    )))
}

/// How long to wait before writing states again after a lost lease, for a uniform `draw` in
/// [0, 1): spread over a quarter of `ttl`.
pub fn republish_delay(ttl: Duration, draw: f64) -> Duration {
    (ttl / REPUBLISH_SPREAD_OF_TTL).mul_f64(draw.clamp(0.0, 1.0))
}

/// When each batch of `states` goes out, `batch` states at a time, starting at `start` and
/// paced by `bucket`.
pub fn republish_times(
    bucket: &mut TokenBucket,
    start: Instant,
    states: usize,
    batch: usize,
) -> Vec<Instant> {
    let batch = batch.max(1);
    (0..states.div_ceil(batch))
        .map(|i| {
            let n = (states - i * batch).min(batch);
            bucket.take(start, u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect()
}

/// Writes states again after a lost lease, as [`MachineLease::publish_states`] does, but paced:
/// after `delay`, a transaction's worth at a time as `bucket` allows; then removes `remove`.
pub async fn republish_paced(
    lease: &MachineLease,
    machine: &str,
    save: &[UnitState],
    remove: &[String],
    bucket: &Mutex<TokenBucket>,
    delay: Duration,
) -> registry::Result<()> {
    tokio::time::sleep(delay).await;
    for chunk in save.chunks(registry::MAX_TXN_OPS) {
        let at = {
            // A poisoned bucket holds plain numbers still valid: keep using it.
            let mut b = bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            b.take(
                Instant::now(),
                u32::try_from(chunk.len()).unwrap_or(u32::MAX),
            )
        };
        tokio::time::sleep_until(at).await;
        lease.publish_states(machine, chunk, &[]).await?;
    }
    if !remove.is_empty() {
        lease.publish_states(machine, &[], remove).await?;
    }
    Ok(())
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

    #[test]
    fn republishing_goes_a_burst_at_once_then_at_the_bucket_rate() {
        let ms = Duration::from_millis;
        let t = Instant::now();
        // (burst, per second, states, batch, each batch's delay from the start)
        let table: &[(u32, u32, usize, usize, &[u64])] = &[
            // Within the burst: all at once.
            (100, 400, 100, 100, &[0]),
            (100, 400, 0, 100, &[]),
            // Past it: each further batch waits for its tokens (100 at 400/s = 250 ms).
            (100, 400, 350, 100, &[0, 250, 500, 625]),
            (100, 400, 250, 50, &[0, 0, 125, 250, 375]),
            // A batch larger than the burst goes into debt; the next waits it out.
            (10, 100, 60, 30, &[200, 500]),
        ];
        for &(burst, rate, states, batch, want) in table {
            let mut bucket = TokenBucket::new(burst, rate);
            let got: Vec<Duration> = republish_times(&mut bucket, t, states, batch)
                .into_iter()
                .map(|at| at - t)
                .collect();
            let want: Vec<Duration> = want.iter().map(|&m| ms(m)).collect();
            assert_eq!(
                got, want,
                "burst {burst}, {rate}/s, {states} states by {batch}"
            );
        }
    }

    #[test]
    fn a_bucket_refills_with_time_up_to_its_burst_and_no_further() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut bucket = TokenBucket::new(100, 100);
        assert_eq!(bucket.take(t, 100), t, "full at first");
        assert_eq!(bucket.take(t, 50), t + Duration::from_millis(500));
        // A lease lost again right after: it waits behind the first republication.
        assert_eq!(bucket.take(t, 100), t + Duration::from_millis(1500));
        // Long idle: the bucket is full again, but holds no more than its burst.
        let later = t + s(60);
        assert_eq!(bucket.take(later, 100), later);
        assert_eq!(bucket.take(later, 100), later + s(1));
    }

    #[test]
    fn machines_that_lose_their_leases_together_start_again_spread_over_a_quarter_ttl() {
        let ttl = Duration::from_secs(8);
        for (draw, want) in [(0.0, 0), (0.5, 1000), (0.75, 1500), (7.0, 2000), (-1.0, 0)] {
            assert_eq!(
                republish_delay(ttl, draw),
                Duration::from_millis(want),
                "draw {draw}"
            );
        }
    }

    #[test]
    fn lease_losses_count_together_across_clones() {
        let losses = LeaseLosses::default();
        let other = losses.clone();
        assert_eq!(losses.record(), 1);
        assert_eq!(other.record(), 2);
        assert_eq!(losses.count(), 2);
    }

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
