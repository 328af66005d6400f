//! The leader's model of the cluster, kept current from registry watches, and the translation
//! of the scheduler's plan into registry writes.

use registry::{Change, DrainMark, Job, MachineState, ScheduleChange, ScheduleEntry, Update};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use unit::{Requirements, UnitFile, UnitHash};

#[derive(Default)]
pub struct Model {
    pub jobs: BTreeMap<String, Job>,
    pub machines: BTreeMap<String, MachineState>,
    /// machine -> key -> value set through the API.
    pub metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// unit -> (machine, entry) as the schedule has it.
    pub placed: BTreeMap<String, (String, ScheduleEntry)>,
    pub reasons: BTreeMap<String, String>,
    pub bodies: HashMap<UnitHash, UnitFile>,
    /// Unit texts by hash, as the registry stores unit bodies: carried in the schedule entries
    /// the engine writes, so agents need not read them.
    pub texts: BTreeMap<UnitHash, String>,
    /// unit -> the hash its requirements were read from, and those requirements: parsing
    /// `[X-Fleet]` of every unit on every pass would dominate a pass at 10,000 units.
    requirements: HashMap<String, (UnitHash, Requirements)>,
    /// Drain marks, by machine id.
    pub drains: BTreeMap<String, DrainMark>,
    /// Units moved off drained machines that do not run at their new place yet (kept by the
    /// core, which watches their states).
    pub moving: BTreeSet<String>,
}

impl Model {
    /// An empty model, filled by the followers' updates.
    pub fn new() -> Model {
        Model::default()
    }

    /// Applies changes of the job records, named by unit.
    pub fn apply_jobs(&mut self, u: Update<String, Job>) {
        u.apply_to(&mut self.jobs);
    }

    /// Applies changes of the machines present, named by machine id.
    pub fn apply_machines(&mut self, u: Update<String, MachineState>) {
        u.apply_to(&mut self.machines);
    }

    /// Applies changes of dynamic metadata, named `(machine, key)`.
    pub fn apply_metadata(&mut self, u: Update<(String, String), String>) {
        let set = |metadata: &mut BTreeMap<String, BTreeMap<String, String>>, m: String, k, v| {
            metadata.entry(m).or_default().insert(k, v);
        };
        match u {
            Update::Reset(items) => {
                self.metadata.clear();
                for ((m, k), v) in items {
                    set(&mut self.metadata, m, k, v);
                }
            }
            Update::Changes(changes) => {
                for change in changes {
                    match change {
                        Change::Put((m, k), v) => set(&mut self.metadata, m, k, v),
                        Change::Delete((m, k)) => {
                            if let Some(keys) = self.metadata.get_mut(&m) {
                                keys.remove(&k);
                                if keys.is_empty() {
                                    self.metadata.remove(&m);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies schedule changes, named `(machine, unit)`, in place (rebuilding the whole copy
    /// per update made a burst of placements quadratic).
    pub fn apply_schedule(&mut self, u: Update<(String, String), ScheduleEntry>) {
        // The model is keyed by unit. The text an entry carries is for the agent; the model
        // has it under `texts`.
        let u = u.map(|e| ScheduleEntry { raw: None, ..e });
        match u {
            Update::Reset(items) => {
                self.placed.clear();
                for ((m, u), e) in items {
                    self.placed.insert(u, (m, e));
                }
            }
            Update::Changes(changes) => {
                for change in changes {
                    match change {
                        Change::Put((m, u), e) => {
                            self.placed.insert(u, (m, e));
                        }
                        // Only the entry on that machine goes (a move may deliver the new
                        // machine's put first).
                        Change::Delete((m, u)) => {
                            if self.placed.get(&u).is_some_and(|(pm, _)| *pm == m) {
                                self.placed.remove(&u);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies changes of the drain marks, named by machine id.
    pub fn apply_drains(&mut self, u: Update<String, DrainMark>) {
        u.apply_to(&mut self.drains);
    }

    /// The placements `changes` moves off drained machines: (unit, from, to).
    pub fn drain_moves(&self, changes: &[ScheduleChange]) -> Vec<(String, String, String)> {
        changes
            .iter()
            .filter_map(|c| match c {
                ScheduleChange::Place { unit, machine, .. } => {
                    let (from, _) = self.placed.get(unit)?;
                    (from != machine && self.drains.contains_key(from))
                        .then(|| (unit.clone(), from.clone(), machine.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Applies changes of the unit texts, named by hash.
    pub fn apply_texts(&mut self, u: Update<UnitHash, String>) {
        u.apply_to(&mut self.texts);
    }

    /// The entry that tells a machine about `job`, with its text if known.
    fn entry(&self, job: &Job) -> ScheduleEntry {
        ScheduleEntry {
            hash: job.hash,
            desired: job.desired,
            raw: self.texts.get(&job.hash).cloned(),
        }
    }

    /// Applies changes of the reasons units cannot be placed, named by unit.
    pub fn apply_reasons(&mut self, u: Update<String, String>) {
        u.apply_to(&mut self.reasons);
    }

    /// Brings the requirements of every job up to date from what the model holds: the job
    /// record's `[X-Fleet]` options where it carries them, otherwise its body (the text the
    /// model follows). Returns the hashes of bodies still unknown, to be read from the
    /// registry and handed to [`Model::take_bodies`].
    pub fn missing_bodies(&mut self) -> Vec<UnitHash> {
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
                    let followed = self.texts.get(&job.hash);
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
        missing
    }

    /// Takes in bodies read from the registry (`None` where it has none, an error text where
    /// reading failed) and derives the requirements still missing. Bodies no job needs any
    /// more are dropped.
    pub fn take_bodies(&mut self, read: Vec<(UnitHash, Result<Option<UnitFile>, String>)>) {
        for (hash, read) in read {
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
            drain: crate::scheduler::Drain {
                machines: self.drains.keys().cloned().collect(),
                moving: self.moving.clone(),
            },
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
