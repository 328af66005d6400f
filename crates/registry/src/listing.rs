//! [`ListingView`]: a copy of what the API lists (units as [`UnitView`]s, unit states) kept
//! current by one watch of the cluster's keys, so that a listing costs a copy of pointers
//! instead of reading and decoding every record of the registry.
//!
//! The copy is read at one revision and then follows a single watch of the whole keyspace:
//! a store delivers whole revisions per watch batch, so after each batch the copy is exactly
//! the registry at the revision it names, and a listing taken from it can be paged at that
//! revision (a page token names it) — or read again from the registry at that revision when
//! the copy has moved on.

use crate::codec::decode;
use crate::feed::Feed;
use crate::instances::{merge_rows, vouched};
use crate::keys::{KeyShape, Keys};
use crate::model::{desired_instance, GlobalJob, GlobalSummary, Job, TargetState, UnitState};
use crate::registry::{AtRevision, Registry, Result};
use crate::store::{Event, EventKind, KeyValue, Revision};
use crate::views::UnitView;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use unit::UnitFile;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The followed copy behind the API's listings. Cheap to clone; following stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct ListingView {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    copy: Mutex<Held>,
    /// The revision the copy is at; 0 until it has been read once.
    revision: watch::Sender<Revision>,
}

/// The records a listing needs, by what names them, and the listings last taken.
#[derive(Default)]
struct Held {
    revision: Revision,
    jobs: BTreeMap<String, Job>,
    /// Parsed bodies by hash: bodies never change under a hash.
    bodies: HashMap<String, Arc<UnitFile>>,
    placements: HashMap<String, String>,
    reasons: HashMap<String, String>,
    placed: BTreeMap<(String, String), Arc<UnitState>>,
    /// Global units' exceptions (see [`crate::instances`]).
    global: BTreeMap<(String, String), Arc<UnitState>>,
    /// Global units' jobs, with the revision each record was written at (the text dropped).
    global_jobs: BTreeMap<String, (Job, Revision)>,
    summaries: BTreeMap<String, GlobalSummary>,
    /// The instance rows computed from summaries, by unit then machine, with the (hash,
    /// desired state) they were computed for: kept between listings, so that a listing of a
    /// million instances copies pointers rather than building a million states each time.
    computed: HashMap<String, ComputedRows>,
    units: Option<(Revision, Arc<Vec<UnitView>>)>,
    states: Option<(Revision, Arc<Vec<Arc<UnitState>>>)>,
}

/// The instance rows of one global unit computed for its job's (hash, desired state).
struct ComputedRows {
    hash: unit::UnitHash,
    desired: TargetState,
    rows: HashMap<String, Arc<UnitState>>,
}

/// Which followed record a key holds.
enum Slot {
    GlobalJob(String),
    Summary(String),
    Job(String),
    Body(String),
    Placement(String),
    Reason(String),
    Placed((String, String)),
    Global((String, String)),
}

/// The prefixes of the followed records, built once: every key of every watch batch is
/// tested against them.
struct Bases {
    states: String,
    global_states: String,
    globals: String,
    summaries: String,
    jobs: String,
    bodies: String,
    placements: String,
    reasons: String,
}

impl Bases {
    fn new(keys: &Keys) -> Bases {
        Bases {
            states: keys.states(),
            global_states: keys.global_states(),
            globals: keys.globals(),
            summaries: keys.global_summaries(),
            jobs: keys.jobs(),
            bodies: keys.bodies(),
            placements: keys.placements(),
            reasons: keys.reasons(),
        }
    }
}

fn slot(keys: &Bases, key: &str) -> Option<Slot> {
    // Most keys of a busy cluster are states: tested first.
    if let Some(k) = <(String, String)>::under(&keys.states, key) {
        return Some(Slot::Placed(k));
    }
    if let Some(k) = <(String, String)>::under(&keys.global_states, key) {
        return Some(Slot::Global(k));
    }
    if let Some(k) = String::under(&keys.jobs, key) {
        return Some(Slot::Job(k));
    }
    if let Some(k) = String::under(&keys.summaries, key) {
        return Some(Slot::Summary(k));
    }
    if let Some(k) = String::under(&keys.globals, key) {
        return Some(Slot::GlobalJob(k));
    }
    if let Some(k) = String::under(&keys.bodies, key) {
        return Some(Slot::Body(k));
    }
    if let Some(k) = String::under(&keys.placements, key) {
        return Some(Slot::Placement(k));
    }
    String::under(&keys.reasons, key).map(Slot::Reason)
}

/// Decodes a record, or logs why not: a record that does not decode is left out of listings
/// (as the followers do) rather than failing every listing of the cluster.
fn decoded<T: crate::codec::Record>(kv: &KeyValue) -> Option<T> {
    match decode(kv) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "leaving an undecodable record out of listings");
            None
        }
    }
}

impl Held {
    fn put(&mut self, keys: &Bases, kv: &KeyValue) {
        let Some(slot) = slot(keys, &kv.key) else {
            return;
        };
        match slot {
            Slot::GlobalJob(name) => match decoded::<GlobalJob>(kv) {
                Some(g) => {
                    self.global_jobs.insert(name, (g.job, g.revision));
                }
                None => {
                    self.global_jobs.remove(&name);
                }
            },
            Slot::Summary(machine) => match decoded::<GlobalSummary>(kv) {
                Some(s) => {
                    self.summaries.insert(machine, s);
                }
                None => {
                    self.summaries.remove(&machine);
                }
            },
            Slot::Job(name) => match decoded::<Job>(kv) {
                Some(job) => {
                    self.jobs.insert(name, job);
                }
                None => {
                    self.jobs.remove(&name);
                }
            },
            Slot::Body(hash) => {
                if self.bodies.contains_key(&hash) {
                    return;
                }
                let Some(raw) = decoded::<String>(kv) else {
                    return;
                };
                match UnitFile::parse(&raw) {
                    Ok(f) => {
                        self.bodies.insert(hash, Arc::new(f));
                    }
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "skipping unparsable unit body")
                    }
                }
            }
            Slot::Placement(name) => match decoded::<String>(kv) {
                Some(m) => {
                    self.placements.insert(name, m);
                }
                None => {
                    self.placements.remove(&name);
                }
            },
            Slot::Reason(name) => match decoded::<String>(kv) {
                Some(r) => {
                    self.reasons.insert(name, r);
                }
                None => {
                    self.reasons.remove(&name);
                }
            },
            Slot::Placed(k) => match decoded::<UnitState>(kv) {
                Some(s) => {
                    self.placed.insert(k, Arc::new(s));
                }
                None => {
                    self.placed.remove(&k);
                }
            },
            Slot::Global(k) => match decoded::<UnitState>(kv) {
                Some(s) => {
                    self.global.insert(k, Arc::new(s));
                }
                None => {
                    self.global.remove(&k);
                }
            },
        }
    }

    fn delete(&mut self, keys: &Bases, key: &str) {
        match slot(keys, key) {
            Some(Slot::GlobalJob(n)) => {
                self.global_jobs.remove(&n);
            }
            Some(Slot::Summary(m)) => {
                self.summaries.remove(&m);
            }
            Some(Slot::Job(n)) => {
                self.jobs.remove(&n);
            }
            Some(Slot::Body(h)) => {
                self.bodies.remove(&h);
            }
            Some(Slot::Placement(n)) => {
                self.placements.remove(&n);
            }
            Some(Slot::Reason(n)) => {
                self.reasons.remove(&n);
            }
            Some(Slot::Placed(k)) => {
                self.placed.remove(&k);
            }
            Some(Slot::Global(k)) => {
                self.global.remove(&k);
            }
            None => {}
        }
    }

    /// Every unit as [`Registry::unit_views`] shows it, sorted by name.
    fn unit_views(&mut self) -> Arc<Vec<UnitView>> {
        if let Some((r, units)) = &self.units {
            if *r == self.revision {
                return units.clone();
            }
        }
        let mut items = Vec::with_capacity(self.jobs.len());
        for (name, job) in &self.jobs {
            // A job whose body is missing is left out, as `Registry::units` does.
            let Some(file) = self.bodies.get(&job.hash.to_string()) else {
                continue;
            };
            let machine = self.placements.get(name).cloned();
            let current = if job.global {
                None
            } else {
                Some(match &machine {
                    Some(m) => self
                        .placed
                        .get(&(name.clone(), m.clone()))
                        .map(|s| s.agent_state)
                        .unwrap_or(TargetState::Inactive),
                    None => TargetState::Inactive,
                })
            };
            items.push(UnitView {
                unit: crate::model::Unit {
                    job: job.clone(),
                    file: UnitFile::clone(file),
                },
                machine,
                current,
                reason: self.reasons.get(name).cloned(),
            });
        }
        let items = Arc::new(items);
        self.units = Some((self.revision, items.clone()));
        items
    }

    /// Every state as [`Registry::unit_states`] shows it (global units' instances computed
    /// from the summaries and exceptions), sorted by (unit, machine).
    fn states(&mut self) -> Arc<Vec<Arc<UnitState>>> {
        if let Some((r, states)) = &self.states {
            if *r == self.revision {
                return states.clone();
            }
        }
        let computed = self.computed_rows();
        let exceptions: Vec<Arc<UnitState>> = self.global.values().cloned().collect();
        fn key(s: &Arc<UnitState>) -> (&str, &str) {
            (s.name.as_str(), s.machine_id.as_str())
        }
        let instances = merge_rows(computed, exceptions, key);
        let placed: Vec<Arc<UnitState>> = self.placed.values().cloned().collect();
        let items = merge_rows(placed, instances, key);
        let items = Arc::new(items);
        self.states = Some((self.revision, items.clone()));
        items
    }
}

impl Held {
    /// The instance rows the summaries give, sorted by (unit, machine), reusing the rows
    /// computed by earlier listings where the job is unchanged.
    fn computed_rows(&mut self) -> Vec<Arc<UnitState>> {
        let Held {
            global_jobs,
            summaries,
            computed,
            ..
        } = self;
        computed.retain(|unit, _| global_jobs.contains_key(unit));
        let mut out = Vec::new();
        let vouched = vouched(global_jobs.values().map(|(j, r)| (j, *r)), summaries);
        for (job, machine) in vouched {
            let cache = match computed.get_mut(&job.name) {
                Some(c) if c.hash == job.hash && c.desired == job.desired => c,
                _ => {
                    computed.insert(
                        job.name.clone(),
                        ComputedRows {
                            hash: job.hash,
                            desired: job.desired,
                            rows: HashMap::new(),
                        },
                    );
                    match computed.get_mut(&job.name) {
                        Some(c) => c,
                        None => continue,
                    }
                }
            };
            let row = match cache.rows.get(machine) {
                Some(row) => row.clone(),
                None => {
                    let Some(state) = desired_instance(job, machine) else {
                        continue;
                    };
                    let row = Arc::new(state);
                    cache.rows.insert(machine.to_string(), row.clone());
                    row
                }
            };
            out.push(row);
        }
        // Rows of machines gone (their summaries with their leases) are dropped.
        for cache in computed.values_mut() {
            if cache.rows.len() > summaries.len() {
                cache.rows.retain(|m, _| summaries.contains_key(m));
            }
        }
        out
    }
}

impl Registry {
    /// A [`ListingView`] of this registry, read now and kept current by a watch; `None` when
    /// the registry polls instead of watching (fleet's `disable_watches`): listings then read
    /// the registry. Call within a Tokio runtime.
    pub fn follow_listings(&self) -> Option<ListingView> {
        if self.poll.is_some() {
            return None;
        }
        let shared = Arc::new(Shared {
            copy: Mutex::new(Held::default()),
            revision: watch::Sender::new(0),
        });
        let task = tokio::spawn(follow_listings(self.clone(), Arc::downgrade(&shared)));
        Some(ListingView {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// The registry's current revision: every write made before this call returns is at or
    /// below it.
    pub async fn current_revision(&self) -> Result<Revision> {
        Ok(self
            .store
            .range(&self.keys.leader(), None, 1, None)
            .await?
            .revision)
    }

    /// What a listing needs, read at one revision (the first read's).
    async fn read_listed(&self) -> Result<Held> {
        let keys = &self.keys;
        let jobs = self.range_at(&keys.jobs(), None).await?;
        let at = Some(jobs.revision);
        let prefixes = [
            keys.bodies(),
            keys.placements(),
            keys.reasons(),
            keys.states(),
            keys.global_states(),
            keys.globals(),
            keys.global_summaries(),
        ];
        let (bodies, placements, reasons, placed, global, globals, summaries) = tokio::try_join!(
            self.range_at(&prefixes[0], at),
            self.range_at(&prefixes[1], at),
            self.range_at(&prefixes[2], at),
            self.range_at(&prefixes[3], at),
            self.range_at(&prefixes[4], at),
            self.range_at(&prefixes[5], at),
            self.range_at(&prefixes[6], at),
        )?;
        let mut copy = Held {
            revision: jobs.revision,
            ..Held::default()
        };
        let bases = Bases::new(keys);
        for part in [
            jobs, bodies, placements, reasons, placed, global, globals, summaries,
        ] {
            for kv in &part.items {
                copy.put(&bases, kv);
            }
        }
        Ok(copy)
    }
}

impl ListingView {
    /// The revision the copy is at; `None` until it has been read.
    pub fn revision(&self) -> Option<Revision> {
        let r = *self.shared.revision.borrow();
        (r > 0).then_some(r)
    }

    /// Waits until the copy is at `revision` or later, at most `within`; the copy's revision,
    /// or `None` if it did not get there in time.
    pub async fn reach(&self, revision: Revision, within: Duration) -> Option<Revision> {
        let mut rx = self.shared.revision.subscribe();
        let reached = tokio::time::timeout(within, async {
            rx.wait_for(|r| *r > 0 && *r >= revision).await.map(|r| *r)
        })
        .await;
        match reached {
            Ok(Ok(r)) => Some(r),
            _ => None,
        }
    }

    fn copy(&self) -> std::sync::MutexGuard<'_, Held> {
        self.shared
            .copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every unit as [`Registry::unit_views`] reads it, at the copy's revision; `None` until
    /// the copy has been read.
    pub fn units(&self) -> Option<AtRevision<Arc<Vec<UnitView>>>> {
        let mut copy = self.copy();
        (copy.revision > 0).then(|| AtRevision {
            items: copy.unit_views(),
            revision: copy.revision,
        })
    }

    /// Every published state as [`Registry::unit_states`] reads it, at the copy's revision;
    /// `None` until the copy has been read.
    pub fn states(&self) -> Option<AtRevision<Arc<Vec<Arc<UnitState>>>>> {
        let mut copy = self.copy();
        (copy.revision > 0).then(|| AtRevision {
            items: copy.states(),
            revision: copy.revision,
        })
    }
}

/// Reads the copy, then follows the keyspace until the view is dropped, through the
/// registry's shared watch of it (see [`crate::feed`]); when the feed says so (a compaction,
/// or this copy fell behind) it reads the copy again (the old one serves meanwhile).
async fn follow_listings(registry: Registry, shared: std::sync::Weak<Shared>) {
    let mut backoff = crate::Backoff::new(RETRY_MIN, RETRY_MAX);
    let bases = Bases::new(&registry.keys);
    'subscribe: loop {
        let mut feed = registry
            .feed
            .subscribe(&registry.store, registry.keys.prefix());
        if feed.started().await.is_none() {
            continue 'subscribe;
        }
        'read: loop {
            let copy = match registry.read_listed().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the registry for listings failed; retrying");
                    tokio::time::sleep(backoff.wait()).await;
                    if shared.strong_count() == 0 {
                        return;
                    }
                    continue 'read;
                }
            };
            backoff.reset();
            let mut last = copy.revision;
            {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                *shared.copy.lock().unwrap_or_else(PoisonError::into_inner) = copy;
                shared.revision.send_replace(last);
            }
            loop {
                match feed.recv().await {
                    Some(Feed::Events(events)) => {
                        let events = crate::feed::after(&events, last);
                        if events.is_empty() {
                            continue;
                        }
                        let Some(shared) = shared.upgrade() else {
                            return;
                        };
                        last = apply(&shared, &bases, &events, last);
                    }
                    Some(Feed::Reread) => continue 'read,
                    None => continue 'subscribe,
                }
            }
        }
    }
}

/// Applies one watch batch (whole revisions) and publishes the revision it ends at.
fn apply(shared: &Shared, keys: &Bases, events: &[Event], last: Revision) -> Revision {
    let mut copy = shared.copy.lock().unwrap_or_else(PoisonError::into_inner);
    for ev in events {
        match ev.kind {
            EventKind::Put => copy.put(keys, &ev.kv),
            EventKind::Delete => copy.delete(keys, &ev.kv.key),
        }
    }
    let revision = events
        .iter()
        .map(|e| e.kv.mod_revision)
        .max()
        .unwrap_or(last)
        .max(last);
    copy.revision = revision;
    drop(copy);
    shared.revision.send_replace(revision);
    revision
}
