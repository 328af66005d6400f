//! Rollouts of global units (`rollout/<unit>`): while a global unit's job names a rollout's new
//! content, the machines the rollout does not allow yet keep running its old content (see
//! [`GlobalRollout::hash_for`], which the agents apply). The record holds the old body with a
//! reference of its own (`unitref/<old>/rollout=<unit>`), so that replacing the unit's content
//! does not collect the body the held-back machines still run; dropping the record lets it go.
//! Each write copies the rollout into the unit's global record (`global/<unit>`), which is what
//! agents follow, so that they see the unit's content and its rollout together.

use crate::codec::{decode, Record};
use crate::keys::Keys;
use crate::model::{GlobalJob, GlobalRollout};
use crate::registry::{Registry, RegistryError, Result, CAS_RETRIES};
use crate::store::{Compare, KeyValue, Op};
use std::collections::BTreeMap;

/// What [`Registry::put_rollout`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutWrite {
    Created,
    Updated,
    /// The old content is not stored (any more): no machine could be held on it.
    OldBodyMissing,
}

impl Registry {
    /// Creates or replaces the rollout of `unit`. The old body must be stored: a rollout whose
    /// machines could not read their content would hold nothing back.
    pub async fn put_rollout(&self, unit: &str, rollout: &GlobalRollout) -> Result<RolloutWrite> {
        let key = self.keys.rollout(unit);
        let holder = Keys::rollout_holder(unit);
        for _ in 0..CAS_RETRIES {
            let existing = self.store.get(&key).await?;
            let before: Option<GlobalRollout> = existing.as_ref().map(decode).transpose()?;
            let Some(body) = self.store.get(&self.keys.body(&rollout.old)).await? else {
                return Ok(RolloutWrite::OldBodyMissing);
            };
            let mut compares = vec![
                Compare::ModRevision(
                    key.clone(),
                    existing.as_ref().map_or(0, |kv| kv.mod_revision),
                ),
                Compare::ModRevision(body.key.clone(), body.mod_revision),
            ];
            // Rewriting the body bumps its mod revision, which a garbage collection running
            // meanwhile compares against: it cannot delete the body this rollout now holds.
            let mut ops = vec![
                Op::put(key.clone(), rollout.encode()),
                Op::put(body.key, body.value),
                Op::put(self.keys.body_ref(&rollout.old, &holder), Vec::new()),
            ];
            self.copy_to_global(unit, Some(rollout), &mut compares, &mut ops)
                .await?;
            if let Some(before) = &before {
                if before.old != rollout.old {
                    ops.push(Op::delete(self.keys.body_ref(&before.old, &holder)));
                    self.collect_body(&before.old, &[&holder], &mut compares, &mut ops)
                        .await?;
                }
            }
            if self.store.txn(compares, ops, vec![]).await?.succeeded {
                return Ok(if before.is_some() {
                    RolloutWrite::Updated
                } else {
                    RolloutWrite::Created
                });
            }
        }
        Err(RegistryError::Contended(key))
    }

    /// Drops the rollout of `unit`: every machine runs the unit's job content. The old body goes
    /// if no unit uses it any more. Returns `false` if there was none.
    pub async fn delete_rollout(&self, unit: &str) -> Result<bool> {
        let key = self.keys.rollout(unit);
        let holder = Keys::rollout_holder(unit);
        for _ in 0..CAS_RETRIES {
            let Some(existing) = self.store.get(&key).await? else {
                return Ok(false);
            };
            let rollout: GlobalRollout = decode(&existing)?;
            let mut compares = vec![Compare::ModRevision(key.clone(), existing.mod_revision)];
            let mut ops = vec![
                Op::delete(key.clone()),
                Op::delete(self.keys.body_ref(&rollout.old, &holder)),
            ];
            self.copy_to_global(unit, None, &mut compares, &mut ops)
                .await?;
            self.collect_body(&rollout.old, &[&holder], &mut compares, &mut ops)
                .await?;
            if self.store.txn(compares, ops, vec![]).await?.succeeded {
                return Ok(true);
            }
        }
        Err(RegistryError::Contended(key))
    }

    /// Adds to a transaction the rewrite of `unit`'s global record with `rollout`, if it has
    /// one (only a global unit has).
    async fn copy_to_global(
        &self,
        unit: &str,
        rollout: Option<&GlobalRollout>,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<Op>,
    ) -> Result<()> {
        let key = self.keys.global(unit);
        let kv: Option<KeyValue> = self.store.get(&key).await?;
        compares.push(Compare::ModRevision(
            key.clone(),
            kv.as_ref().map_or(0, |kv| kv.mod_revision),
        ));
        if let Some(kv) = kv {
            let mut record: GlobalJob = decode(&kv)?;
            record.rollout = rollout.cloned();
            // The job is as it was: keep the revision the machines' summaries vouch against.
            record.outcome_since = Some(record.revision);
            ops.push(Op::put(key, record.encode()));
        }
        Ok(())
    }

    /// The rollout of `unit`, if one is in progress.
    pub async fn rollout(&self, unit: &str) -> Result<Option<GlobalRollout>> {
        self.record(&self.keys.rollout(unit)).await
    }

    /// Every rollout in progress, by unit.
    pub async fn rollouts(&self) -> Result<BTreeMap<String, GlobalRollout>> {
        Ok(self
            .record_map::<String, GlobalRollout>(&self.keys.rollouts(), None)
            .await?
            .items)
    }
}
