//! The leader's model of the cluster, kept current from registry watches, and the translation
//! of the scheduler's plan into registry writes.

use registry::keys::Keys;
use registry::mirror::{apply, json, text, Update};
use registry::EventKind;
use registry::{Job, MachineState, Registry, ScheduleChange, ScheduleEntry};
use std::collections::{BTreeMap, HashMap};

/// Body reads (for records without their `[X-Fleet]` options) in flight at once.
const CONCURRENT_READS: usize = 32;
use unit::{Requirements, UnitFile, UnitHash};

#[derive(Default)]
pub struct Model {
    keys: Option<Keys>,
    pub jobs: BTreeMap<String, Job>,
    pub machines: BTreeMap<String, MachineState>,
    /// machine -> key -> value set through the API.
    pub metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// unit -> (machine, entry) as written in `schedule/`.
    pub placed: BTreeMap<String, (String, ScheduleEntry)>,
    pub reasons: BTreeMap<String, String>,
    pub bodies: HashMap<UnitHash, UnitFile>,
    /// Unit texts by hash, as stored under `unit/`: carried in the schedule entries the engine
    /// writes, so agents need not read them.
    pub texts: BTreeMap<String, String>,
    /// unit -> the hash its requirements were read from, and those requirements: parsing
    /// `[X-Fleet]` of every unit on every pass would dominate a pass at 10,000 units.
    requirements: HashMap<String, (UnitHash, Requirements)>,
}

impl Model {
    pub fn new(keys: Keys) -> Model {
        Model {
            keys: Some(keys),
            ..Default::default()
        }
    }

    fn keys(&self) -> &Keys {
        // Built with `new`; a default Model is only used in tests that set what they need.
        self.keys.as_ref().expect("Model::new sets keys")
    }

    pub fn apply_jobs(&mut self, u: Update) {
        let base = self.keys().jobs();
        apply(&mut self.jobs, &base, u, |_, kv| json(kv));
    }

    pub fn apply_machines(&mut self, u: Update) {
        let base = self.keys().machines();
        apply(&mut self.machines, &base, u, |_, kv| json(kv));
    }

    pub fn apply_metadata(&mut self, u: Update) {
        let base = self.keys().all_metadata();
        // Keys are `<machine>/<key>`: keep a flat map, then regroup.
        let mut flat: BTreeMap<String, String> = self
            .metadata
            .iter()
            .flat_map(|(m, kv)| kv.iter().map(move |(k, v)| (format!("{m}/{k}"), v.clone())))
            .collect();
        apply(&mut flat, &base, u, |_, kv| text(kv));
        self.metadata.clear();
        for (mk, v) in flat {
            if let Some((m, k)) = mk.split_once('/') {
                self.metadata
                    .entry(m.to_string())
                    .or_default()
                    .insert(k.to_string(), v);
            }
        }
    }

    /// Applies schedule changes in place (rebuilding the whole copy per update made a burst of
    /// placements quadratic).
    pub fn apply_schedule(&mut self, u: Update) {
        let base = self.keys().schedules();
        // Keys are `<machine>/<unit>`; the model is keyed by unit.
        let split = |key: &str| -> Option<(String, String)> {
            let (m, u) = key.strip_prefix(&base)?.split_once('/')?;
            Some((m.to_string(), u.to_string()))
        };
        // The text an entry carries is for the agent; the model has it under `texts`.
        let decode = |kv: &registry::KeyValue| {
            json::<ScheduleEntry>(kv).map(|e| ScheduleEntry { raw: None, ..e })
        };
        match u {
            Update::Reset { kvs, .. } => {
                self.placed.clear();
                for kv in &kvs {
                    if let (Some((m, u)), Some(e)) = (split(&kv.key), decode(kv)) {
                        self.placed.insert(u, (m, e));
                    }
                }
            }
            Update::Events { events, .. } => {
                for ev in events {
                    let Some((m, u)) = split(&ev.kv.key) else {
                        continue;
                    };
                    let entry = match ev.kind {
                        EventKind::Put => decode(&ev.kv),
                        EventKind::Delete => None,
                    };
                    match entry {
                        Some(e) => {
                            self.placed.insert(u, (m, e));
                        }
                        // Only the entry on that machine goes (a move may deliver the new
                        // machine's put first).
                        None => {
                            if self.placed.get(&u).is_some_and(|(pm, _)| *pm == m) {
                                self.placed.remove(&u);
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn apply_texts(&mut self, u: Update) {
        let base = self.keys().bodies();
        apply(&mut self.texts, &base, u, |_, kv| text(kv));
    }

    /// The entry that tells a machine about `job`, with its text if known.
    fn entry(&self, job: &Job) -> ScheduleEntry {
        ScheduleEntry {
            hash: job.hash,
            desired: job.desired,
            raw: self.texts.get(&job.hash.to_string()).cloned(),
        }
    }

    pub fn apply_reasons(&mut self, u: Update) {
        let base = self.keys().reasons();
        apply(&mut self.reasons, &base, u, |_, kv| text(kv));
    }

    /// Brings the requirements of every job up to date: from the job record's `[X-Fleet]`
    /// options where it carries them, otherwise from its body: the text the model follows under
    /// `unit/`, or, if that has not arrived yet, read (side by side) from the registry.
    pub async fn update_requirements(&mut self, registry: &Registry) {
        let jobs = &self.jobs;
        self.requirements
            .retain(|name, (hash, _)| jobs.get(name).is_some_and(|j| j.hash == *hash));
        let mut missing: Vec<UnitHash> = Vec::new();
        for job in self.jobs.values() {
            if self.requirements.contains_key(&job.name) {
                continue;
            }
            match job.requirements() {
                Some(req) => {
                    self.requirements.insert(job.name.clone(), (job.hash, req));
                }
                None if !self.bodies.contains_key(&job.hash) => {
                    let followed = self.texts.get(&job.hash.to_string());
                    match followed.and_then(|raw| UnitFile::parse(raw).ok()) {
                        Some(file) if file.hash() == job.hash => {
                            self.bodies.insert(job.hash, file);
                        }
                        _ => missing.push(job.hash),
                    }
                }
                None => {}
            }
        }
        missing.sort();
        missing.dedup();
        for (hash, read) in registry.bodies(missing, CONCURRENT_READS).await {
            match read {
                Ok(Some(file)) => {
                    self.bodies.insert(hash, file);
                }
                Ok(None) => tracing::warn!(hash = %hash, "unit body missing from the registry"),
                Err(e) => tracing::warn!(hash = %hash, error = %e, "reading unit body failed"),
            }
        }
        let used: std::collections::HashSet<UnitHash> = self
            .jobs
            .values()
            .filter(|j| !self.requirements.contains_key(&j.name))
            .map(|j| j.hash)
            .collect();
        self.bodies.retain(|h, _| used.contains(h));
        for job in self.jobs.values() {
            if self.requirements.contains_key(&job.name) {
                continue;
            }
            if let Some(file) = self.bodies.get(&job.hash) {
                let req = Requirements::from_unit(file, &job.name);
                self.requirements.insert(job.name.clone(), (job.hash, req));
            }
        }
    }

    /// Machines with their dynamic metadata merged over their configured metadata.
    pub fn machines_with_metadata(&self) -> Vec<MachineState> {
        self.machines
            .values()
            .map(|m| {
                let mut m = m.clone();
                if let Some(d) = self.metadata.get(&m.id) {
                    registry::merge_metadata(&mut m.metadata, d);
                }
                m
            })
            .collect()
    }

    /// Requirements of a job, if its body is known.
    pub fn requirements(&self, job: &Job) -> Option<Requirements> {
        match self.requirements.get(&job.name) {
            Some((hash, req)) if *hash == job.hash => Some(req.clone()),
            _ => self
                .bodies
                .get(&job.hash)
                .map(|f| Requirements::from_unit(f, &job.name)),
        }
    }

    /// Records writes that succeeded, so the next pass does not wait for their watch echo.
    pub fn applied(&mut self, changes: &[ScheduleChange]) {
        for c in changes {
            match c {
                ScheduleChange::Place {
                    unit,
                    machine,
                    entry,
                }
                | ScheduleChange::Update {
                    unit,
                    machine,
                    entry,
                } => {
                    let entry = ScheduleEntry {
                        raw: None,
                        ..entry.clone()
                    };
                    self.placed.insert(unit.clone(), (machine.clone(), entry));
                    if matches!(c, ScheduleChange::Place { .. }) {
                        self.reasons.remove(unit);
                    }
                }
                ScheduleChange::Unplace { unit, .. } => {
                    self.placed.remove(unit);
                }
                ScheduleChange::Reason {
                    unit,
                    reason: Some(r),
                } => {
                    self.reasons.insert(unit.clone(), r.clone());
                }
                ScheduleChange::Reason { unit, reason: None } => {
                    self.reasons.remove(unit);
                }
            }
        }
    }
}

impl Model {
    /// The scheduler's snapshot of this model. Jobs whose body is unknown are left out, and so
    /// are their placements: nothing is decided about them until their body is read.
    pub fn cluster(&self) -> crate::scheduler::Cluster {
        let mut units = Vec::with_capacity(self.jobs.len());
        let mut unknown = std::collections::BTreeSet::new();
        for job in self.jobs.values() {
            match self.requirements(job) {
                Some(requirements) => units.push(crate::scheduler::ClusterUnit {
                    name: job.name.clone(),
                    desired: job.desired,
                    requirements,
                    global: job.global,
                }),
                None => {
                    unknown.insert(job.name.as_str());
                }
            }
        }
        let placements = self
            .placed
            .iter()
            .filter(|(u, _)| !unknown.contains(u.as_str()))
            .map(|(u, (m, _))| (u.clone(), m.clone()))
            .collect();
        crate::scheduler::Cluster {
            machines: self.machines_with_metadata(),
            units,
            placements,
        }
    }

    /// One scheduling pass, as the registry writes it: placements taken away, placements
    /// made, new hashes or desired states told to the machines of units that stay, and reasons
    /// set or cleared.
    pub fn decide(&self) -> Vec<ScheduleChange> {
        let cluster = self.cluster();
        let plan = crate::scheduler::plan(&cluster);
        let mut changes = Vec::new();
        let mut moved = std::collections::BTreeSet::new();
        for p in &plan.remove {
            moved.insert(p.unit.as_str());
            changes.push(ScheduleChange::Unplace {
                unit: p.unit.clone(),
                machine: p.machine.clone(),
            });
        }
        // Placements of units whose job is gone are the scheduler's to remove; anything it did
        // not mention stays.
        for p in &plan.add {
            let Some(job) = self.jobs.get(&p.unit) else {
                continue;
            };
            changes.push(ScheduleChange::Place {
                unit: p.unit.clone(),
                machine: p.machine.clone(),
                entry: self.entry(job),
            });
        }
        for (unit, (machine, entry)) in &self.placed {
            if moved.contains(unit.as_str()) {
                continue;
            }
            let Some(job) = self.jobs.get(unit) else {
                continue;
            };
            if entry.hash != job.hash || entry.desired != job.desired {
                changes.push(ScheduleChange::Update {
                    unit: unit.clone(),
                    machine: machine.clone(),
                    entry: self.entry(job),
                });
            }
        }
        for (unit, reason) in &plan.unplaceable {
            if self.reasons.get(unit) != Some(reason) {
                changes.push(ScheduleChange::Reason {
                    unit: unit.clone(),
                    reason: Some(reason.clone()),
                });
            }
        }
        // A reason goes once its unit is placed or gone (written only where one exists: most
        // placements have none to remove).
        for unit in self.reasons.keys() {
            if !plan.unplaceable.contains_key(unit) {
                changes.push(ScheduleChange::Reason {
                    unit: unit.clone(),
                    reason: None,
                });
            }
        }
        changes
    }
}
