//! One load client: its own API connection, a mix of requests on its own units, and what it
//! was acknowledged, to be checked against what fleetd shows afterwards.

use super::LoadOptions;
use anyhow::{Context, Result};
use api::client::StateFilter;
use api::types::Unit;
use api::{Client, ClientError, ClientOptions, TargetState};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kinds of request a client makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `GET /units`, every page.
    ListUnits,
    /// `GET /state`, every page.
    ListStates,
    GetUnit,
    CreateUnit,
    SetState,
    DestroyUnit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ListUnits => "list-units",
            Kind::ListStates => "list-states",
            Kind::GetUnit => "get-unit",
            Kind::CreateUnit => "create-unit",
            Kind::SetState => "set-state",
            Kind::DestroyUnit => "destroy-unit",
        }
    }

    /// The mix, in percent: reads as often as writes, as fleetctl users and scripts do.
    fn pick(rng: &mut fastrand::Rng) -> Kind {
        match rng.u32(0..100) {
            0..20 => Kind::ListUnits,
            20..40 => Kind::ListStates,
            40..60 => Kind::GetUnit,
            60..70 => Kind::CreateUnit,
            70..90 => Kind::SetState,
            _ => Kind::DestroyUnit,
        }
    }
}

/// What a unit is, as far as its client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Known {
    Absent,
    Desired(TargetState),
    /// A `desiredState` that is none of fleet's: never what a client wrote.
    Unreadable,
}

impl std::fmt::Display for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Known::Absent => f.write_str("absent"),
            Known::Desired(s) => write!(f, "desired {s}"),
            Known::Unreadable => f.write_str("an unreadable desiredState"),
        }
    }
}

/// One unit of a client.
#[derive(Debug)]
pub struct Owned {
    pub name: String,
    /// The last acknowledged write (a 2xx), or what the unit was before any.
    pub acked: Known,
    /// Writes after `acked` whose outcome is unknown (503, a timeout, an unclean answer): the
    /// store may have carried them out, even after the answer (an etcd request that outlived
    /// fleetd's timeout). Such a unit is left alone for the rest of the run, and afterwards
    /// may show `acked` or any of these.
    pub unknown: Vec<Known>,
    /// Holds one of the shared launched slots.
    holds_slot: bool,
}

impl Owned {
    fn possible(&self) -> BTreeSet<Known> {
        std::iter::once(self.acked)
            .chain(self.unknown.iter().copied())
            .collect()
    }

    /// Known to exist, with no write of unknown outcome: the client keeps working on it.
    fn live(&self) -> bool {
        self.unknown.is_empty() && matches!(self.acked, Known::Desired(_))
    }

    fn describe(&self) -> String {
        if self.unknown.is_empty() {
            format!("last acknowledged: {}", self.acked)
        } else {
            let unknown: Vec<String> = self.unknown.iter().map(ToString::to_string).collect();
            format!(
                "last acknowledged: {}, then unacknowledged: {}",
                self.acked,
                unknown.join(", ")
            )
        }
    }
}

/// What every client shares.
pub struct Shared {
    endpoint: String,
    tag: String,
    request_timeout: Duration,
    units_per_client: usize,
    max_launched: usize,
    launched: AtomicUsize,
}

impl Shared {
    pub fn new(opts: &LoadOptions, endpoint: &str, tag: &str) -> Shared {
        Shared {
            endpoint: endpoint.to_string(),
            tag: tag.to_string(),
            request_timeout: opts.request_timeout,
            units_per_client: opts.units_per_client.max(1),
            max_launched: opts.max_launched,
            launched: AtomicUsize::new(0),
        }
    }

    /// A client with a connection of its own (each `Client` has its own pool).
    fn client(&self) -> Result<Client> {
        Client::new(
            &self.endpoint,
            ClientOptions {
                request_timeout: self.request_timeout,
            },
        )
        .with_context(|| format!("a client of {}", self.endpoint))
    }

    fn try_take_slot(&self) -> bool {
        self.launched
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_launched).then_some(n + 1)
            })
            .is_ok()
    }

    fn release_slot(&self) {
        let _ = self
            .launched
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// What one client did and saw.
#[derive(Debug, Default)]
pub struct ClientRecord {
    pub units: Vec<Owned>,
    /// Latency of every request, microseconds.
    pub samples: Vec<(Kind, u64)>,
    /// Answers by kind and status (`2xx`, `404`, `503`, `timeout`, `transport`, ...).
    pub statuses: BTreeMap<(Kind, String), u64>,
    /// Answers other than 2xx, a 4xx with a message, or 503; the first few in full.
    pub unclean: u64,
    pub unclean_sample: Vec<String>,
    /// Clean refusals (4xx), the first few in full: the load should cause none, so they are
    /// shown.
    pub refused_sample: Vec<String>,
    /// 503s, the first few in full: why fleetd could not serve.
    pub unavailable_sample: Vec<String>,
    /// Reads during the run that contradicted an acknowledged write.
    pub lost: Vec<String>,
}

/// How an answer counts.
enum Outcome {
    /// 2xx.
    Done,
    /// A 4xx naming its problem: nothing was changed.
    Refused,
    /// 503, a timeout or an unclean answer: a write may or may not have happened.
    Unknown,
}

const SAMPLE: usize = 5;

impl ClientRecord {
    fn note<T>(&mut self, kind: Kind, started: Instant, r: &Result<T, ClientError>) -> Outcome {
        self.samples
            .push((kind, started.elapsed().as_micros() as u64));
        let (label, outcome) = match r {
            Ok(_) => ("2xx".to_string(), Outcome::Done),
            Err(e) => self.classify(kind, e),
        };
        *self.statuses.entry((kind, label)).or_default() += 1;
        outcome
    }

    fn note_label(&mut self, kind: Kind, started: Instant, label: &str) {
        self.samples
            .push((kind, started.elapsed().as_micros() as u64));
        *self.statuses.entry((kind, label.to_string())).or_default() += 1;
    }

    fn classify(&mut self, kind: Kind, e: &ClientError) -> (String, Outcome) {
        match e {
            ClientError::Api {
                status: 503,
                message,
            } => {
                if self.unavailable_sample.len() < SAMPLE {
                    self.unavailable_sample
                        .push(format!("{}: {message}", kind.as_str()));
                }
                ("503".into(), Outcome::Unknown)
            }
            ClientError::Api { status, message }
                if (400..500).contains(status) && !message.trim().is_empty() =>
            {
                if self.refused_sample.len() < SAMPLE {
                    self.refused_sample
                        .push(format!("{}: {status} {message}", kind.as_str()));
                }
                (status.to_string(), Outcome::Refused)
            }
            other => {
                let label = match other {
                    ClientError::Api { status, .. } => status.to_string(),
                    ClientError::Timeout { .. } => "timeout".into(),
                    ClientError::Connect { .. } => "transport".into(),
                    ClientError::Protocol { .. } => "protocol".into(),
                    ClientError::InvalidEndpoint { .. } => "invalid-endpoint".into(),
                    ClientError::Tls { .. } => "tls".into(),
                    ClientError::Credentials(_) => "credentials".into(),
                };
                self.unclean += 1;
                if self.unclean_sample.len() < SAMPLE {
                    self.unclean_sample
                        .push(format!("{}: {other}", kind.as_str()));
                }
                (label, Outcome::Unknown)
            }
        }
    }
}

/// Runs client number `i` until `end`.
pub async fn drive(i: usize, shared: Arc<Shared>, end: Instant) -> Result<ClientRecord> {
    let client = shared.client()?;
    let mut rec = ClientRecord::default();
    // Seeded by the client's number: a run's mix can be replayed.
    let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
    let mut created = 0usize;
    while Instant::now() < end {
        let live: Vec<usize> = (0..rec.units.len())
            .filter(|&u| rec.units[u].live())
            .collect();
        let mut kind = Kind::pick(&mut rng);
        if live.is_empty() && matches!(kind, Kind::GetUnit | Kind::SetState | Kind::DestroyUnit) {
            kind = Kind::CreateUnit;
        }
        if kind == Kind::CreateUnit && live.len() >= shared.units_per_client {
            kind = Kind::SetState;
        }
        let pick = if live.is_empty() {
            0
        } else {
            live[rng.usize(..live.len())]
        };
        let started = Instant::now();
        match kind {
            Kind::ListUnits => {
                let r = client.units().await;
                rec.note(kind, started, &r);
            }
            Kind::ListStates => {
                let r = client.unit_states(&StateFilter::default()).await;
                rec.note(kind, started, &r);
            }
            Kind::GetUnit => {
                let name = rec.units[pick].name.clone();
                let r = client.unit(&name).await;
                match &r {
                    Ok(None) => rec.note_label(kind, started, "404"),
                    _ => {
                        rec.note(kind, started, &r);
                    }
                }
                let seen = match r {
                    Ok(Some(u)) => Some(known_of(&u)),
                    Ok(None) => Some(Known::Absent),
                    Err(_) => None,
                };
                if let Some(seen) = seen {
                    let unit = &rec.units[pick];
                    if seen != unit.acked {
                        let msg = format!(
                            "during the run, GET {} showed {seen}; {}",
                            unit.name,
                            unit.describe()
                        );
                        rec.lost.push(msg);
                    }
                }
            }
            Kind::CreateUnit => {
                let name = format!("load-{i:03}-{created}.service");
                created += 1;
                rec.units.push(Owned {
                    name: name.clone(),
                    acked: Known::Absent,
                    unknown: Vec::new(),
                    holds_slot: false,
                });
                let u = rec.units.len() - 1;
                let state = choose_state(&mut rng, &shared, &mut rec.units[u], None);
                let unit = cluster::units::with_state(
                    cluster::units::service(&name, &shared.tag, &[]),
                    state,
                );
                let r = client.create_or_update_unit(&unit).await;
                let outcome = rec.note(kind, started, &r);
                settle(&mut rec.units[u], outcome, Known::Desired(state), &shared);
            }
            Kind::SetState => {
                let current = match rec.units[pick].acked {
                    Known::Desired(s) => Some(s),
                    Known::Absent | Known::Unreadable => None,
                };
                let state = choose_state(&mut rng, &shared, &mut rec.units[pick], current);
                let name = rec.units[pick].name.clone();
                let r = client.set_unit_target_state(&name, state).await;
                let outcome = rec.note(kind, started, &r);
                settle(
                    &mut rec.units[pick],
                    outcome,
                    Known::Desired(state),
                    &shared,
                );
            }
            Kind::DestroyUnit => {
                let name = rec.units[pick].name.clone();
                let r = client.destroy_unit(&name).await;
                if let Ok(false) = r {
                    rec.note_label(kind, started, "404");
                    let msg = format!(
                        "during the run, DELETE {name} answered 404; {}",
                        rec.units[pick].describe()
                    );
                    rec.lost.push(msg);
                    rec.units[pick].acked = Known::Absent;
                    settle(
                        &mut rec.units[pick],
                        Outcome::Refused,
                        Known::Absent,
                        &shared,
                    );
                } else {
                    let outcome = rec.note(kind, started, &r);
                    settle(&mut rec.units[pick], outcome, Known::Absent, &shared);
                }
            }
        }
    }
    Ok(rec)
}

/// A desired state other than `current`; `launched` only while a launched slot can be had
/// (the unit keeps the one it holds).
fn choose_state(
    rng: &mut fastrand::Rng,
    shared: &Shared,
    unit: &mut Owned,
    current: Option<TargetState>,
) -> TargetState {
    let all = [
        TargetState::Inactive,
        TargetState::Loaded,
        TargetState::Launched,
    ];
    let others: Vec<TargetState> = all.into_iter().filter(|s| Some(*s) != current).collect();
    let wanted = others[rng.usize(..others.len())];
    if wanted != TargetState::Launched {
        return wanted;
    }
    if unit.holds_slot || shared.try_take_slot() {
        unit.holds_slot = true;
        return wanted;
    }
    others
        .into_iter()
        .find(|s| *s != TargetState::Launched)
        .unwrap_or(TargetState::Inactive)
}

/// Records the outcome of a write of `wrote` and gives back the launched slot once the unit
/// cannot be launched any more.
fn settle(unit: &mut Owned, outcome: Outcome, wrote: Known, shared: &Shared) {
    match outcome {
        Outcome::Done => unit.acked = wrote,
        Outcome::Refused => {}
        Outcome::Unknown => unit.unknown.push(wrote),
    }
    if unit.holds_slot
        && !unit
            .possible()
            .contains(&Known::Desired(TargetState::Launched))
    {
        unit.holds_slot = false;
        shared.release_slot();
    }
}

fn known_of(u: &Unit) -> Known {
    match u.desired_state.parse::<TargetState>() {
        Ok(s) => Known::Desired(s),
        Err(_) => Known::Unreadable,
    }
}

/// A lost update, if what `how` showed after the run is neither the last acknowledged write
/// nor one of unknown outcome after it.
fn judge(unit: &Owned, seen: Known, how: &str) -> Option<String> {
    (!unit.possible().contains(&seen)).then(|| {
        format!(
            "after the run, {how} shows {} {seen}; {}",
            unit.name,
            unit.describe()
        )
    })
}

/// What the check after the run found.
#[derive(Debug, Default)]
pub struct Check {
    pub units_checked: usize,
    /// Units whose GET or listing contradicts an acknowledged write.
    pub lost: Vec<String>,
    /// Requests of the check itself that failed after retries (the check could not tell).
    pub errors: Vec<String>,
    /// fleetd's API answered after the run.
    pub serving: bool,
}

/// Attempts per request of the check: it runs after the load, so a 503 should be rare; a few
/// retries make sure one does not hide or fake a result.
const CHECK_ATTEMPTS: usize = 20;

async fn retry<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match f().await {
            Err(e) if e.status() == Some(503) && n < CHECK_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// Reads every unit of every client once by GET and once in a listing, and compares with what
/// each client was acknowledged.
pub async fn check_after(shared: &Shared, records: &mut [ClientRecord]) -> Check {
    let mut check = Check::default();
    let client = match shared.client() {
        Ok(c) => c,
        Err(e) => {
            check.errors.push(format!("{e:#}"));
            return check;
        }
    };
    check.serving = retry(|| client.machines())
        .await
        .is_ok_and(|m| !m.is_empty());
    let units: Vec<&Owned> = records.iter().flat_map(|r| r.units.iter()).collect();
    check.units_checked = units.len();
    let gets: Vec<(usize, Result<Option<Unit>, ClientError>)> =
        futures::stream::iter(units.iter().enumerate())
            .map(|(n, u)| {
                let client = client.clone();
                async move { (n, retry(|| client.unit(&u.name)).await) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for (n, r) in gets {
        let u = units[n];
        match r {
            Ok(seen) => {
                let seen = seen.as_ref().map_or(Known::Absent, known_of);
                check.lost.extend(judge(u, seen, "GET"));
            }
            Err(e) => check.errors.push(format!("GET {}: {e}", u.name)),
        }
    }
    match retry(|| client.units()).await {
        Ok(listed) => {
            let listed: BTreeMap<&str, Known> = listed
                .iter()
                .map(|u| (u.name.as_str(), known_of(u)))
                .collect();
            for u in &units {
                let seen = listed
                    .get(u.name.as_str())
                    .copied()
                    .unwrap_or(Known::Absent);
                check.lost.extend(judge(u, seen, "the listing"));
            }
        }
        Err(e) => check.errors.push(format!("listing the units: {e}")),
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetState::*;

    fn shared(max_launched: usize) -> Shared {
        let mut opts = LoadOptions::new(super::super::RegistryKind::Embedded, "fleetd".into());
        opts.max_launched = max_launched;
        Shared::new(&opts, "unix:///nowhere", "t")
    }

    fn unit(acked: Known) -> Owned {
        Owned {
            name: "u.service".into(),
            acked,
            unknown: Vec::new(),
            holds_slot: false,
        }
    }

    #[test]
    fn only_the_acknowledged_state_passes_a_certain_unit() {
        let mut u = unit(Known::Absent);
        let s = shared(4);
        settle(&mut u, Outcome::Done, Known::Desired(Loaded), &s);
        assert_eq!(judge(&u, Known::Desired(Loaded), "GET"), None);
        let lost = judge(&u, Known::Desired(Inactive), "GET").expect("a lost update");
        assert!(lost.contains("last acknowledged: desired loaded"), "{lost}");
        assert!(judge(&u, Known::Absent, "GET").is_some());
        assert!(judge(&u, Known::Unreadable, "GET").is_some());
        // A refused write changes nothing.
        settle(&mut u, Outcome::Refused, Known::Desired(Launched), &s);
        assert!(judge(&u, Known::Desired(Launched), "GET").is_some());
        assert!(u.live());
    }

    #[test]
    fn a_write_of_unknown_outcome_allows_either_and_retires_the_unit() {
        let s = shared(4);
        let mut u = unit(Known::Desired(Inactive));
        settle(&mut u, Outcome::Unknown, Known::Absent, &s);
        assert!(!u.live());
        assert_eq!(judge(&u, Known::Desired(Inactive), "GET"), None);
        assert_eq!(judge(&u, Known::Absent, "GET"), None);
        assert!(judge(&u, Known::Desired(Launched), "GET").is_some());
    }

    #[test]
    fn launched_slots_are_bounded_and_given_back() {
        let s = shared(1);
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut a, mut b) = (unit(Known::Absent), unit(Known::Absent));
        // Until `a` draws launched (and takes the only slot).
        while choose_state(&mut rng, &s, &mut a, None) != Launched {}
        settle(&mut a, Outcome::Done, Known::Desired(Launched), &s);
        for _ in 0..100 {
            assert_ne!(choose_state(&mut rng, &s, &mut b, None), Launched);
        }
        // Re-targeting away from launched gives the slot back ...
        let next = choose_state(&mut rng, &s, &mut a, Some(Launched));
        assert_ne!(next, Launched);
        settle(&mut a, Outcome::Done, Known::Desired(next), &s);
        assert!(!a.holds_slot);
        // ... unless the write's outcome is unknown: the unit may still be launched.
        let mut c = unit(Known::Absent);
        while choose_state(&mut rng, &s, &mut c, None) != Launched {}
        settle(&mut c, Outcome::Done, Known::Desired(Launched), &s);
        settle(&mut c, Outcome::Unknown, Known::Desired(Inactive), &s);
        assert!(c.holds_slot);
        assert!(!s.try_take_slot());
    }
}
