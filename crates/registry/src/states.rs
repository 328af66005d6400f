//! Unit states as the API reads them. Agents publish them under their machine's lease (see
//! [`crate::MachineLease::publish_states`]); placed units' states and global units' instances'
//! states live apart, so that listing units never reads one state per global unit per machine.

use crate::codec::decode;
use crate::keys::KeyShape;
use crate::model::UnitState;
use crate::registry::{AtRevision, Registry, Result};
use crate::store::Revision;

/// States read per range request of one unit's states.
const UNIT_PAGE: usize = 1000;

impl Registry {
    /// Every published unit state (placed units and global instances), sorted by
    /// (unit, machine).
    pub async fn unit_states(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitState>>> {
        let placed = self.placed_states(at).await?;
        let global = self
            .records::<UnitState>(&self.keys.global_states(), Some(placed.revision))
            .await?;
        let mut items = placed.items;
        items.extend(global.items);
        items.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
        Ok(AtRevision {
            items,
            revision: placed.revision,
        })
    }

    /// The published states of placed (non-global) units, sorted by (unit, machine).
    pub async fn placed_states(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitState>>> {
        self.records(&self.keys.states(), at).await
    }

    /// Every state published for one unit (one per machine), sorted by machine: reads only
    /// that unit's keys, not the whole cluster's states.
    pub async fn states_of_unit(&self, unit: &str) -> Result<Vec<UnitState>> {
        let store = self.store.as_ref();
        let placed = self.keys.unit_states(unit);
        let global = self.keys.global_unit_states(unit);
        let mut kvs = crate::store::range_all(store, &placed, UNIT_PAGE)
            .await?
            .kvs;
        kvs.extend(
            crate::store::range_all(store, &global, UNIT_PAGE)
                .await?
                .kvs,
        );
        let machine = |key: &str| {
            <(String, String)>::under(&self.keys.states(), key)
                .or_else(|| <(String, String)>::under(&self.keys.global_states(), key))
                .map(|(_, machine)| machine)
        };
        kvs.sort_by_cached_key(|kv| machine(&kv.key));
        kvs.iter().map(decode).collect()
    }
}
