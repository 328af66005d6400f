//! Units: jobs, bodies and what the API and the engine read and write of them.

use crate::codec::{decode, Record};
use crate::keys::{KeyShape, Keys};
use crate::model::{GlobalJob, GlobalRollout, Job, TargetState, Unit};
use crate::registry::{AtRevision, Registry, RegistryError, Result, CAS_RETRIES};
use crate::store::{Compare, KeyValue, Op, Revision};
use std::collections::HashMap;
use unit::{UnitFile, UnitHash};

impl Registry {
    /// Every job record, sorted by name.
    pub async fn jobs(&self, at: Option<Revision>) -> Result<AtRevision<Vec<Job>>> {
        self.records(&self.keys.jobs(), at).await
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
                let raw: String = decode(&kv)?;
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
    pub(crate) fn with_bodies(&self, jobs: Vec<Job>, bodies: &[KeyValue]) -> Result<Vec<Unit>> {
        let mut earlier = std::mem::take(
            &mut *self
                .parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut files: HashMap<String, UnitFile> = HashMap::with_capacity(bodies.len());
        let base = self.keys.bodies();
        for kv in bodies {
            let Some(hash) = String::under(&base, &kv.key) else {
                continue;
            };
            if let Some(f) = earlier.remove(&hash) {
                files.insert(hash, f);
                continue;
            }
            let raw: String = decode(kv)?;
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
        let Some(job) = self.record::<Job>(&self.keys.job(name)).await? else {
            return Ok(None);
        };
        let file = self.body(&job.hash, None).await?;
        Ok(file.map(|file| Unit { job, file }))
    }

    /// The job record of `name` running `file`, and the writes that store it with its body
    /// (a global unit's record with `rollout`, the unit's rollout as stored).
    fn unit_writes(
        &self,
        name: &str,
        file: &UnitFile,
        desired: TargetState,
        rollout: Option<GlobalRollout>,
    ) -> (Job, Vec<Op>) {
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
            Op::put(self.keys.job(name), job.encode()),
        ];
        if global {
            let record = GlobalJob {
                job: job.clone(),
                raw,
                rollout,
                revision: 0,
                outcome_since: None,
            };
            ops.push(Op::put(self.keys.global(name), record.encode()));
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
        // No job means no global record either (destroying a unit removes both), nor a
        // rollout (destroying drops it, and one is only made for a unit that exists).
        let (_, ops) = self.unit_writes(name, file, desired, None);
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
        for _ in 0..CAS_RETRIES {
            let job_key = self.keys.job(name);
            let old = self.store.get(&job_key).await?;
            let old_job: Option<Job> = old.as_ref().map(decode).transpose()?;
            let rollout_key = self.keys.rollout(name);
            let rollout = self.store.get(&rollout_key).await?;
            let mut compares = vec![
                Compare::ModRevision(
                    job_key.clone(),
                    old.as_ref().map_or(0, |kv| kv.mod_revision),
                ),
                // The global record carries the rollout as read: a rollout written meanwhile
                // makes this write go round again.
                Compare::ModRevision(
                    rollout_key,
                    rollout.as_ref().map_or(0, |kv| kv.mod_revision),
                ),
            ];
            let rollout: Option<GlobalRollout> = rollout.as_ref().map(decode).transpose()?;
            let (job, mut ops) = self.unit_writes(name, file, desired, rollout);
            if !job.global {
                // A global unit replaced by a plain one loses its global record.
                ops.push(Op::delete(self.keys.global(name)));
            }
            if let Some(old_job) = &old_job {
                if old_job.hash != job.hash {
                    ops.push(Op::delete(self.keys.body_ref(&old_job.hash, name)));
                    self.collect_body(&old_job.hash, &[name], &mut compares, &mut ops)
                        .await?;
                }
            }
            if self.store.txn(compares, ops, vec![]).await?.succeeded {
                return Ok(());
            }
        }
        Err(RegistryError::Contended(name.to_string()))
    }

    /// Adds to a transaction the deletion of the body `hash` if the users in `leaving` (units,
    /// or a rollout's [`Keys::rollout_holder`]) are its last ones.
    pub(crate) async fn collect_body(
        &self,
        hash: &UnitHash,
        leaving: &[&str],
        compares: &mut Vec<Compare>,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let refs = self
            .store
            .range(&self.keys.body_refs(hash), None, leaving.len() + 1, None)
            .await?;
        let theirs: Vec<String> = leaving
            .iter()
            .map(|l| self.keys.body_ref(hash, l))
            .collect();
        let others = refs.kvs.iter().any(|kv| !theirs.contains(&kv.key));
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
            // A rollout of the unit goes with it: a unit created later under the name would
            // otherwise find machines held back on content nobody asked it for.
            let holder = Keys::rollout_holder(name);
            let mut leaving = vec![name];
            if let Some(kv) = self.store.get(&self.keys.rollout(name)).await? {
                let rollout: GlobalRollout = decode(&kv)?;
                compares.push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                ops.push(Op::delete(kv.key));
                ops.push(Op::delete(self.keys.body_ref(&rollout.old, &holder)));
                if rollout.old == job.hash {
                    leaving.push(&holder);
                } else {
                    self.collect_body(&rollout.old, &[&holder], &mut compares, &mut ops)
                        .await?;
                }
            }
            self.collect_body(&job.hash, &leaving, &mut compares, &mut ops)
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
            let mut ops = vec![Op::put(job_key.clone(), job.encode())];
            let mut compares = vec![Compare::ModRevision(job_key, old.mod_revision)];
            if job.global {
                let global_key = self.keys.global(name);
                if let Some(kv) = self.store.get(&global_key).await? {
                    let mut record: GlobalJob = decode(&kv)?;
                    record.job = job.clone();
                    compares.push(Compare::ModRevision(global_key.clone(), kv.mod_revision));
                    ops.push(Op::put(global_key, record.encode()));
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

    /// Every global unit's job record.
    pub async fn global_jobs(&self, at: Option<Revision>) -> Result<AtRevision<Vec<Job>>> {
        // A global record is its job with the unit's text beside it: read as a job, the text
        // is left out.
        let kvs = self.range_at(&self.keys.globals(), at).await?;
        let items = kvs.items.iter().map(decode).collect::<Result<Vec<Job>>>()?;
        Ok(AtRevision {
            items,
            revision: kvs.revision,
        })
    }
}
