//! [`Registry`]: fleet's data model over a [`Store`].
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn registry::Store>) -> anyhow::Result<()> {
//! use registry::{Registry, TargetState};
//! let reg = Registry::new(store, "/_coreos.com/fleet/");
//! let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 100\n")?;
//! reg.create_unit("sleep.service", &file, TargetState::Launched).await?;
//! for u in reg.units(None).await?.items {
//!     println!("{} {}", u.job.name, u.job.desired);
//! }
//! # Ok(()) }
//! ```

use crate::keys::Keys;
use crate::model::*;
use crate::store::{range_all, Compare, KeyValue, Op, Revision, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use unit::{UnitFile, UnitHash};

/// Keys read per range request when listing: 110,000 states in pages of 1,000 took 3 s (one
/// round trip after another) and made `fleetctl list-units` time out; pages of 10,000 (a few
/// MB each) take 1.1 s.
const PAGE: usize = 10000;
/// How often a read-modify-write retries when another writer got there first.
const CAS_RETRIES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be decoded: the key names it.
    #[error("corrupt registry record at {key}: {message}")]
    Corrupt { key: String, message: String },
    /// Too many concurrent writers to one record.
    #[error("gave up updating {0} after {CAS_RETRIES} concurrent modifications")]
    Contended(String),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Items read at one store revision.
#[derive(Clone, Debug, Default)]
pub struct AtRevision<T> {
    pub items: T,
    pub revision: Revision,
}

/// Merges dynamic metadata over configured metadata as fleet did: dynamic values win, and an
/// empty dynamic value removes the key.
pub fn merge_metadata(metadata: &mut BTreeMap<String, String>, dynamic: &BTreeMap<String, String>) {
    for (k, v) in dynamic {
        if v.is_empty() {
            metadata.remove(k);
        } else {
            metadata.insert(k.clone(), v.clone());
        }
    }
}

/// One change of dynamic machine metadata (`value: None` removes the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataChange {
    pub machine: String,
    pub key: String,
    pub value: Option<String>,
}

/// A unit as the API shows it: job and file, where it is placed, how far it got there, and
/// why it is not placed if it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitView {
    pub unit: Unit,
    pub machine: Option<String>,
    /// fleet's `currentState`: `None` for global units.
    pub current: Option<TargetState>,
    pub reason: Option<String>,
}

/// One engine decision, as [`Registry::apply_schedule`] writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Place `unit` on `machine` (and clear its reason).
    Place {
        unit: String,
        machine: String,
        entry: ScheduleEntry,
    },
    /// Tell `machine` a new hash or desired state of a unit placed there.
    Update {
        unit: String,
        machine: String,
        entry: ScheduleEntry,
    },
    /// Take `unit` off `machine`.
    Unplace { unit: String, machine: String },
    /// Why `unit` cannot be placed (`None` clears it).
    Reason {
        unit: String,
        reason: Option<String>,
    },
}

/// fleet's registry over any [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    /// Bodies parsed by the last listing, by hash (bodies never change under a hash): the next
    /// listing parses only new ones. Replaced by each listing, so it holds one listing's worth.
    parsed: Arc<std::sync::Mutex<HashMap<String, UnitFile>>>,
    /// Creations and target-state changes written together (see [`crate::group_commit`]).
    writes: Arc<crate::group_commit::GroupCommit>,
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| RegistryError::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain records cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => key,
        Op::DeletePrefix { prefix } => prefix,
    }
}

fn text(kv: &KeyValue) -> Result<String> {
    String::from_utf8(kv.value.clone()).map_err(|e| RegistryError::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, prefix: &str) -> Registry {
        Registry {
            store,
            keys: Keys::new(prefix),
            parsed: Arc::default(),
            writes: Arc::default(),
        }
    }

    async fn range_at(
        &self,
        prefix: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<Vec<KeyValue>>> {
        let page = match at {
            None => range_all(self.store.as_ref(), prefix, PAGE).await?,
            Some(rev) => {
                let mut out = Vec::new();
                let mut start: Option<String> = None;
                loop {
                    let p = self
                        .store
                        .range(prefix, start.as_deref(), PAGE, Some(rev))
                        .await?;
                    let more = p.more;
                    out.extend(p.kvs);
                    match (more, out.last()) {
                        (true, Some(last)) => start = Some(format!("{}\0", last.key)),
                        _ => break,
                    }
                }
                crate::store::RangePage {
                    kvs: out,
                    more: false,
                    revision: rev,
                }
            }
        };
        Ok(AtRevision {
            items: page.kvs,
            revision: page.revision,
        })
    }

    /// Text records under `base`, keyed by what follows it.
    async fn text_map(
        &self,
        base: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, String>>> {
        let kvs = self.range_at(base, at).await?;
        let mut items = BTreeMap::new();
        for kv in &kvs.items {
            items.insert(kv.key[base.len()..].to_string(), text(kv)?);
        }
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    // ----- units -----

    /// Every job record, sorted by name.
    pub async fn jobs(&self, at: Option<Revision>) -> Result<AtRevision<Vec<Job>>> {
        let kvs = self.range_at(&self.keys.jobs(), at).await?;
        let items = kvs.items.iter().map(decode).collect::<Result<Vec<Job>>>()?;
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    /// The unit body stored under `hash`.
    pub async fn body(&self, hash: &UnitHash, at: Option<Revision>) -> Result<Option<UnitFile>> {
        let key = self.keys.body(hash);
        let kv = match at {
            None => self.store.get(&key).await?,
            Some(rev) => self
                .store
                .range(&key, None, 1, Some(rev))
                .await?
                .kvs
                .into_iter()
                .find(|kv| kv.key == key),
        };
        match kv {
            None => Ok(None),
            Some(kv) => {
                let raw = text(&kv)?;
                let file = UnitFile::parse(&raw).map_err(|e| RegistryError::Corrupt {
                    key: kv.key.clone(),
                    message: e.to_string(),
                })?;
                Ok(Some(file))
            }
        }
    }

    /// The bodies stored under `hashes`, read `in_flight` at a time (the engine and the agents
    /// read the bodies of a burst of new units this way). Results come in no particular order.
    pub async fn bodies(
        &self,
        hashes: impl IntoIterator<Item = UnitHash>,
        in_flight: usize,
    ) -> Vec<(UnitHash, Result<Option<UnitFile>>)> {
        use futures::StreamExt;
        let reads: Vec<_> = hashes
            .into_iter()
            .map(|hash| async move { (hash, self.body(&hash, None).await) })
            .collect();
        futures::stream::iter(reads)
            .buffer_unordered(in_flight.max(1))
            .collect()
            .await
    }

    /// Every unit with its file, sorted by name, read at one revision. Jobs whose body is
    /// missing are skipped (as fleet did), with a warning.
    pub async fn units(&self, at: Option<Revision>) -> Result<AtRevision<Vec<Unit>>> {
        let jobs = self.jobs(at).await?;
        let bodies = self
            .range_at(&self.keys.bodies(), Some(jobs.revision))
            .await?;
        Ok(AtRevision {
            items: self.with_bodies(jobs.items, &bodies.items)?,
            revision: jobs.revision,
        })
    }

    /// Pairs jobs with their bodies (read at the jobs' revision).
    fn with_bodies(&self, jobs: Vec<Job>, bodies: &[KeyValue]) -> Result<Vec<Unit>> {
        let mut earlier = std::mem::take(
            &mut *self
                .parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut files: HashMap<String, UnitFile> = HashMap::with_capacity(bodies.len());
        for kv in bodies {
            let hash = kv.key.trim_start_matches(&self.keys.bodies()).to_string();
            if let Some(f) = earlier.remove(&hash) {
                files.insert(hash, f);
                continue;
            }
            let raw = text(kv)?;
            match UnitFile::parse(&raw) {
                Ok(f) => {
                    files.insert(hash, f);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "skipping unparsable unit body")
                }
            }
        }
        let mut items = Vec::with_capacity(jobs.len());
        for job in jobs {
            match files.get(&job.hash.to_string()) {
                Some(file) => items.push(Unit {
                    job,
                    file: file.clone(),
                }),
                None => {
                    tracing::warn!(unit = %job.name, hash = %job.hash, "unit body missing; skipping unit")
                }
            }
        }
        *self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        Ok(items)
    }

    /// One unit with its file.
    pub async fn unit(&self, name: &str) -> Result<Option<Unit>> {
        let Some(kv) = self.store.get(&self.keys.job(name)).await? else {
            return Ok(None);
        };
        let job: Job = decode(&kv)?;
        let file = self.body(&job.hash, None).await?;
        Ok(file.map(|file| Unit { job, file }))
    }

    /// The job record of `name` running `file`, and the writes that store it with its body.
    fn unit_writes(&self, name: &str, file: &UnitFile, desired: TargetState) -> (Job, Vec<Op>) {
        let hash = file.hash();
        let global = unit::Requirements::from_unit(file, name).global;
        let job = Job {
            name: name.to_string(),
            hash,
            desired,
            global,
            x_fleet: Some(Job::fleet_options(file)),
        };
        let raw = file.serialize();
        let mut ops = vec![
            // Rewriting the body on every create bumps its mod revision, which is what
            // garbage collection compares against to never delete a body in use.
            Op::put(self.keys.body(&hash), raw.clone()),
            Op::put(self.keys.body_ref(&hash, name), Vec::new()),
            Op::put(self.keys.job(name), encode(&job)),
        ];
        if global {
            let record = GlobalJob {
                job: job.clone(),
                raw,
            };
            ops.push(Op::put(self.keys.global(name), encode(&record)));
        }
        (job, ops)
    }

    /// Creates `name` if no unit of that name exists, in one transaction and one round trip
    /// (shared with creations that arrive meanwhile). Returns false (writing nothing) if it
    /// exists.
    pub async fn create_unit_if_absent(
        &self,
        name: &str,
        file: &UnitFile,
        desired: TargetState,
    ) -> Result<bool> {
        // No job means no global record either (destroying a unit removes both).
        let (_, ops) = self.unit_writes(name, file, desired);
        let absent = vec![Compare::ModRevision(self.keys.job(name), 0)];
        Ok(self
            .writes
            .write(self.store.clone(), name.to_string(), absent, ops)
            .await?)
    }

    /// Creates `name`, or replaces its file and desired state if it exists, in one transaction.
    /// The old body is removed when no unit refers to it any more.
    pub async fn create_unit(
        &self,
        name: &str,
        file: &UnitFile,
        desired: TargetState,
    ) -> Result<()> {
        let (job, new_ops) = self.unit_writes(name, file, desired);
        for _ in 0..CAS_RETRIES {
            let job_key = self.keys.job(name);
            let old = self.store.get(&job_key).await?;
            let old_job: Option<Job> = old.as_ref().map(decode).transpose()?;
            let mut compares = vec![Compare::ModRevision(
                job_key.clone(),
                old.as_ref().map_or(0, |kv| kv.mod_revision),
            )];
            let mut ops = new_ops.clone();
            if !job.global {
                // A global unit replaced by a plain one loses its global record.
                ops.push(Op::delete(self.keys.global(name)));
            }
            if let Some(old_job) = &old_job {
                if old_job.hash != job.hash {
                    ops.push(Op::delete(self.keys.body_ref(&old_job.hash, name)));
                    self.collect_body(&old_job.hash, name, &mut compares, &mut ops)
                        .await?;
                }
            }
            if self.store.txn(compares, ops, vec![]).await?.succeeded {
                return Ok(());
            }
        }
        Err(RegistryError::Contended(name.to_string()))
    }

    /// Adds to a transaction the deletion of the body `hash` if `leaving` is its last user.
    async fn collect_body(
        &self,
        hash: &UnitHash,
        leaving: &str,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let refs = self
            .store
            .range(&self.keys.body_refs(hash), None, 2, None)
            .await?;
        let others = refs
            .kvs
            .iter()
            .any(|kv| !kv.key.ends_with(&format!("/{leaving}")));
        if others {
            return Ok(());
        }
        if let Some(body) = self.store.get(&self.keys.body(hash)).await? {
            compares.push(Compare::ModRevision(body.key.clone(), body.mod_revision));
            ops.push(Op::delete(body.key));
        }
        Ok(())
    }

    /// Removes a unit (its job, its body if unused, its reason). Returns false if it did not exist.
    /// The engine then unschedules it and its agent unloads it.
    pub async fn destroy_unit(&self, name: &str) -> Result<bool> {
        for _ in 0..CAS_RETRIES {
            let job_key = self.keys.job(name);
            let Some(old) = self.store.get(&job_key).await? else {
                return Ok(false);
            };
            let job: Job = decode(&old)?;
            let mut compares = vec![Compare::ModRevision(job_key.clone(), old.mod_revision)];
            let mut ops = vec![
                Op::delete(job_key),
                Op::delete(self.keys.global(name)),
                Op::delete(self.keys.body_ref(&job.hash, name)),
                Op::delete(self.keys.reason(name)),
            ];
            self.collect_body(&job.hash, name, &mut compares, &mut ops)
                .await?;
            if self.store.txn(compares, ops, vec![]).await?.succeeded {
                return Ok(true);
            }
        }
        Err(RegistryError::Contended(name.to_string()))
    }

    /// Sets a unit's desired state. Returns false if the unit does not exist.
    pub async fn set_target_state(&self, name: &str, desired: TargetState) -> Result<bool> {
        for _ in 0..CAS_RETRIES {
            let job_key = self.keys.job(name);
            let Some(old) = self.store.get(&job_key).await? else {
                return Ok(false);
            };
            let mut job: Job = decode(&old)?;
            if job.desired == desired {
                return Ok(true);
            }
            job.desired = desired;
            let mut ops = vec![Op::put(job_key.clone(), encode(&job))];
            let mut compares = vec![Compare::ModRevision(job_key, old.mod_revision)];
            if job.global {
                let global_key = self.keys.global(name);
                if let Some(kv) = self.store.get(&global_key).await? {
                    let mut record: GlobalJob = decode(&kv)?;
                    record.job = job.clone();
                    compares.push(Compare::ModRevision(global_key.clone(), kv.mod_revision));
                    ops.push(Op::put(global_key, encode(&record)));
                }
            }
            let written = self
                .writes
                .write(self.store.clone(), name.to_string(), compares, ops)
                .await?;
            if written {
                return Ok(true);
            }
        }
        Err(RegistryError::Contended(name.to_string()))
    }

    // ----- schedule (written by the engine) -----

    /// unit -> machine for every placed unit.
    pub async fn placements(
        &self,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, String>>> {
        self.text_map(&self.keys.placements(), at).await
    }

    /// unit -> why the engine cannot place it.
    pub async fn reasons(
        &self,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, String>>> {
        self.text_map(&self.keys.reasons(), at).await
    }

    /// The schedule of one machine: unit -> entry.
    pub async fn machine_schedule(
        &self,
        machine: &str,
        at: Option<Revision>,
    ) -> Result<AtRevision<BTreeMap<String, ScheduleEntry>>> {
        let base = self.keys.machine_schedule(machine);
        let kvs = self.range_at(&base, at).await?;
        let mut items = BTreeMap::new();
        for kv in &kvs.items {
            items.insert(kv.key[base.len()..].to_string(), decode(kv)?);
        }
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    /// Every global unit's job record.
    pub async fn global_jobs(&self, at: Option<Revision>) -> Result<AtRevision<Vec<Job>>> {
        let kvs = self.range_at(&self.keys.globals(), at).await?;
        let items = kvs.items.iter().map(decode).collect::<Result<Vec<Job>>>()?;
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    /// Writes engine decisions in transactions of at most [`crate::MAX_TXN_OPS`] operations,
    /// each fenced by the engine's leader lease: a deposed leader's writes fail. Returns false
    /// (having written only the batches before) if the fence failed.
    pub async fn apply_schedule(
        &self,
        changes: &[ScheduleChange],
        leader_lease: crate::LeaseId,
    ) -> Result<bool> {
        let mut ops: Vec<Op> = Vec::with_capacity(changes.len() * 3);
        let mut batches: Vec<Vec<Op>> = Vec::new();
        for change in changes {
            let mut these = match change {
                ScheduleChange::Place {
                    unit,
                    machine,
                    entry,
                } => vec![
                    Op::put(self.keys.schedule(machine, unit), encode(entry)),
                    Op::put(self.keys.placement(unit), machine.clone()),
                ],
                ScheduleChange::Update {
                    unit,
                    machine,
                    entry,
                } => vec![Op::put(self.keys.schedule(machine, unit), encode(entry))],
                ScheduleChange::Unplace { unit, machine } => {
                    vec![
                        Op::delete(self.keys.schedule(machine, unit)),
                        Op::delete(self.keys.placement(unit)),
                    ]
                }
                ScheduleChange::Reason {
                    unit,
                    reason: Some(r),
                } => vec![Op::put(self.keys.reason(unit), r.clone())],
                ScheduleChange::Reason { unit, reason: None } => {
                    vec![Op::delete(self.keys.reason(unit))]
                }
            };
            // The ops of one change stay in one transaction.
            if ops.len() + these.len() > crate::MAX_TXN_OPS {
                batches.push(std::mem::take(&mut ops));
            }
            for op in these.drain(..) {
                // etcd refuses a transaction that writes one key twice (a unit moving within
                // one batch deletes and puts its placement): the later op is the one meant.
                let key = op_key(&op);
                ops.retain(|o| op_key(o) != key);
                ops.push(op);
            }
        }
        if !ops.is_empty() {
            batches.push(ops);
        }
        for batch in batches {
            let fence = vec![Compare::Lease(self.keys.leader(), leader_lease)];
            if !self.store.txn(fence, batch, vec![]).await?.succeeded {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Tries to become the engine leader under `lease`. Returns the leader's machine id
    /// afterwards (ours if we won or already held it).
    pub async fn campaign(&self, machine: &str, lease: crate::LeaseId) -> Result<Option<String>> {
        let key = self.keys.leader();
        self.store
            .txn(
                vec![Compare::Missing(key.clone())],
                vec![Op::put_leased(key.clone(), machine.to_string(), lease)],
                vec![],
            )
            .await?;
        self.leader().await
    }

    /// The engine leader's machine id, if there is a leader.
    pub async fn leader(&self) -> Result<Option<String>> {
        match self.store.get(&self.keys.leader()).await? {
            Some(kv) => Ok(Some(text(&kv)?)),
            None => Ok(None),
        }
    }

    // ----- machines -----

    /// Announces a machine under its lease (create or refresh).
    pub async fn register_machine(
        &self,
        machine: &MachineState,
        lease: crate::LeaseId,
    ) -> Result<()> {
        self.store
            .txn(
                vec![],
                vec![Op::put_leased(
                    self.keys.machine(&machine.id),
                    encode(machine),
                    lease,
                )],
                vec![],
            )
            .await?;
        Ok(())
    }

    /// Every present machine, sorted by id, with dynamic metadata merged over its configured
    /// metadata (dynamic wins).
    pub async fn machines(&self, at: Option<Revision>) -> Result<AtRevision<Vec<MachineState>>> {
        let kvs = self.range_at(&self.keys.machines(), at).await?;
        let mut machines = kvs
            .items
            .iter()
            .map(decode)
            .collect::<Result<Vec<MachineState>>>()?;
        let dynamic = self.dynamic_metadata(Some(kvs.revision)).await?;
        for m in &mut machines {
            if let Some(d) = dynamic.get(&m.id) {
                m.metadata
                    .extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        Ok(AtRevision {
            items: machines,
            revision: kvs.revision,
        })
    }

    /// machine -> key -> value of metadata set through the API.
    pub async fn dynamic_metadata(
        &self,
        at: Option<Revision>,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let base = self.keys.all_metadata();
        let kvs = self.range_at(&base, at).await?;
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for kv in &kvs.items {
            let rest = &kv.key[base.len()..];
            if let Some((machine, key)) = rest.split_once('/') {
                out.entry(machine.to_string())
                    .or_default()
                    .insert(key.to_string(), text(kv)?);
            }
        }
        Ok(out)
    }

    /// Applies metadata changes in one transaction.
    pub async fn set_metadata(&self, changes: &[MetadataChange]) -> Result<()> {
        // Later changes of one key win: etcd refuses a transaction that writes a key twice.
        let mut last: BTreeMap<String, Op> = BTreeMap::new();
        for c in changes {
            let key = self.keys.metadata(&c.machine, &c.key);
            let op = match &c.value {
                Some(v) => Op::put(key.clone(), v.clone()),
                None => Op::delete(key.clone()),
            };
            last.insert(key, op);
        }
        self.store
            .txn(vec![], last.into_values().collect(), vec![])
            .await?;
        Ok(())
    }

    // ----- unit states (written by agents) -----

    /// Every published unit state (placed units and global instances), sorted by
    /// (unit, machine).
    pub async fn unit_states(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitState>>> {
        let placed = self.placed_states(at).await?;
        let global = self
            .range_at(&self.keys.global_states(), Some(placed.revision))
            .await?;
        let mut items = placed.items;
        for kv in &global.items {
            items.push(decode(kv)?);
        }
        items.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
        Ok(AtRevision {
            items,
            revision: placed.revision,
        })
    }

    /// The published states of placed (non-global) units, sorted by (unit, machine).
    pub async fn placed_states(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitState>>> {
        let kvs = self.range_at(&self.keys.states(), at).await?;
        let items = kvs
            .items
            .iter()
            .map(decode)
            .collect::<Result<Vec<UnitState>>>()?;
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }

    /// Publishes states of this machine's units under its lease, and removes states of units it
    /// no longer holds (under both prefixes), in transactions of at most
    /// [`crate::MAX_TXN_OPS`] operations. A unit whose state moves between the prefixes (replaced
    /// by a global unit of the same name, or the reverse) is removed in an earlier call.
    pub async fn publish_states(
        &self,
        machine: &str,
        lease: crate::LeaseId,
        save: &[UnitState],
        remove: &[String],
    ) -> Result<()> {
        let mut ops: Vec<Op> = Vec::with_capacity(2 * (save.len() + remove.len()));
        for s in save {
            ops.push(Op::put_leased(
                self.keys.state_of(&s.name, machine, s.global),
                encode(s),
                lease,
            ));
        }
        for u in remove {
            ops.push(Op::delete(self.keys.state(u, machine)));
            ops.push(Op::delete(self.keys.global_state(u, machine)));
        }
        for chunk in ops.chunks(crate::MAX_TXN_OPS) {
            self.store.txn(vec![], chunk.to_vec(), vec![]).await?;
        }
        Ok(())
    }

    // ----- the API's view -----

    /// Every unit as the API lists it, read at one revision (pass it back for later pages).
    pub async fn unit_views(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitView>>> {
        let jobs = self.jobs(at).await?;
        let revision = jobs.revision;
        let at = Some(revision);
        // The rest is read at the jobs' revision, side by side. Global units have no current
        // state of their own: their instances' states are not read.
        let bodies_prefix = self.keys.bodies();
        let (bodies, placements, reasons, states) = tokio::try_join!(
            self.range_at(&bodies_prefix, at),
            self.placements(at),
            self.reasons(at),
            self.placed_states(at)
        )?;
        let units = self.with_bodies(jobs.items, &bodies.items)?;
        let (placements, reasons, states) = (placements.items, reasons.items, states.items);
        let mut agent_state: BTreeMap<(&str, &str), TargetState> = BTreeMap::new();
        for s in &states {
            agent_state.insert((s.name.as_str(), s.machine_id.as_str()), s.agent_state);
        }
        let items = units
            .into_iter()
            .map(|u| {
                let name = u.job.name.clone();
                let machine = placements.get(&name).cloned();
                let current = if u.job.global {
                    None
                } else {
                    Some(match &machine {
                        Some(m) => agent_state
                            .get(&(name.as_str(), m.as_str()))
                            .copied()
                            .unwrap_or(TargetState::Inactive),
                        None => TargetState::Inactive,
                    })
                };
                UnitView {
                    reason: reasons.get(&name).cloned(),
                    unit: u,
                    machine,
                    current,
                }
            })
            .collect();
        Ok(AtRevision { items, revision })
    }

    /// One unit as the API shows it.
    pub async fn unit_view(&self, name: &str) -> Result<Option<UnitView>> {
        let Some(unit) = self.unit(name).await? else {
            return Ok(None);
        };
        let machine = match self.store.get(&self.keys.placement(name)).await? {
            Some(kv) => Some(text(&kv)?),
            None => None,
        };
        let reason = match self.store.get(&self.keys.reason(name)).await? {
            Some(kv) => Some(text(&kv)?),
            None => None,
        };
        let current = if unit.job.global {
            None
        } else {
            Some(match &machine {
                Some(m) => match self.store.get(&self.keys.state(name, m)).await? {
                    Some(kv) => decode::<UnitState>(&kv)?.agent_state,
                    None => TargetState::Inactive,
                },
                None => TargetState::Inactive,
            })
        };
        Ok(Some(UnitView {
            unit,
            machine,
            current,
            reason,
        }))
    }
}
