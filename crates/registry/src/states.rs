//! Unit states as the API reads them. Agents publish them under their machine's lease (see
//! [`crate::MachineLease::publish_states`]); placed units' states and global units' instances'
//! states live apart, so that listing units never reads one state per global unit per machine;
//! global units' instances are published by exception (see [`crate::instances`]).

use crate::codec::decode;
use crate::model::{GlobalSummary, Job, UnitState};
use crate::registry::{AtRevision, Registry, Result};
use crate::store::Revision;

/// States read per range request of one unit's states.
const UNIT_PAGE: usize = 1000;

impl Registry {
    /// Every unit state (placed units' published states and global units' instances, see
    /// [`crate::instances`]), sorted by (unit, machine).
    pub async fn unit_states(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitState>>> {
        let placed = self.placed_states(at).await?;
        let at = Some(placed.revision);
        let instances = self.instances(at).await?;
        Ok(AtRevision {
            items: crate::instances::merge_rows(
                placed.items,
                instances,
                crate::instances::state_key,
            ),
            revision: placed.revision,
        })
    }

    /// Every global unit's instance row, read at `at`, sorted by (unit, machine).
    async fn instances(&self, at: Option<Revision>) -> Result<Vec<UnitState>> {
        let (globals, summaries, exceptions) = (
            self.keys.globals(),
            self.keys.global_summaries(),
            self.keys.global_states(),
        );
        let (globals, summaries, exceptions) = tokio::try_join!(
            self.range_at(&globals, at),
            self.record_map::<String, GlobalSummary>(&summaries, at),
            self.records::<UnitState>(&exceptions, at),
        )?;
        let globals = globals
            .items
            .iter()
            .map(|kv| Ok((decode::<Job>(kv)?, kv.mod_revision)))
            .collect::<Result<Vec<_>>>()?;
        let mut exceptions = exceptions.items;
        exceptions.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
        Ok(crate::instances::instance_rows(
            &globals,
            &summaries.items,
            exceptions,
        ))
    }

    /// The published states of placed (non-global) units, sorted by (unit, machine).
    pub async fn placed_states(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitState>>> {
        self.records(&self.keys.states(), at).await
    }

    /// Every state of one unit (one per machine), sorted by machine: reads only that unit's
    /// keys (and, for a global unit, the machines' summaries), not the whole cluster's states.
    pub async fn states_of_unit(&self, unit: &str) -> Result<Vec<UnitState>> {
        let store = self.store.as_ref();
        let placed = self.keys.unit_states(unit);
        let global = self.keys.global_unit_states(unit);
        let first = crate::store::range_all(store, &placed, UNIT_PAGE).await?;
        let at = Some(first.revision);
        let job_key = self.keys.global(unit);
        let (exceptions, job) =
            tokio::try_join!(self.range_at(&global, at), self.range_at(&job_key, at),)?;
        let mut states = first
            .kvs
            .iter()
            .chain(&exceptions.items)
            .map(decode)
            .collect::<Result<Vec<UnitState>>>()?;
        // The range of `global/<unit>` also holds units whose names begin with this one's.
        if let Some(kv) = job.items.iter().find(|kv| kv.key == job_key) {
            let job: Job = decode(kv)?;
            let summaries = self
                .record_map::<String, GlobalSummary>(&self.keys.global_summaries(), at)
                .await?;
            let rows = crate::instances::instance_rows(
                &[(job, kv.mod_revision)],
                &summaries.items,
                Vec::new(),
            );
            // An exception wins over the row its machine's summary gives.
            for row in rows {
                if !states.iter().any(|s| s.machine_id == row.machine_id) {
                    states.push(row);
                }
            }
        }
        states.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
        Ok(states)
    }
}
