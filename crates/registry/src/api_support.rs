//! Registry reads the HTTP API needs beyond [`Registry`]'s core (owned by the API work).

use crate::registry::{Registry, RegistryError, Result};
use crate::store::range_all;
use crate::UnitState;

impl Registry {
    /// Every state published for one unit (one per machine), sorted by machine: reads only
    /// that unit's keys, not the whole cluster's states.
    pub async fn states_of_unit(&self, unit: &str) -> Result<Vec<UnitState>> {
        let mut kvs = range_all(self.store.as_ref(), &self.keys.unit_states(unit), 1000)
            .await?
            .kvs;
        let global = self.keys.global_unit_states(unit);
        kvs.extend(range_all(self.store.as_ref(), &global, 1000).await?.kvs);
        kvs.sort_by(|a, b| a.key.rsplit('/').next().cmp(&b.key.rsplit('/').next()));
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| RegistryError::Corrupt {
                    key: kv.key.clone(),
                    message: e.to_string(),
                })
            })
            .collect()
    }
}
