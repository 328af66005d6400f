//! Registry reads the HTTP API needs beyond [`Registry`]'s core (owned by the API work).

use crate::registry::{Registry, RegistryError, Result};
use crate::store::range_all;
use crate::UnitState;

impl Registry {
    /// Every state published for one unit (one per machine), sorted by machine: reads only
    /// that unit's keys, not the whole cluster's states.
    pub async fn states_of_unit(&self, unit: &str) -> Result<Vec<UnitState>> {
        let page = range_all(self.store.as_ref(), &self.keys.unit_states(unit), 1000).await?;
        page.kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| RegistryError::Corrupt {
                    key: kv.key.clone(),
                    message: e.to_string(),
                })
            })
            .collect()
    }
}
