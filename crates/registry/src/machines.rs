//! Machines: their presence records (written under their leases, see [`crate::MachineLease`])
//! and the dynamic metadata set through the API.

use crate::codec::decode_or_skip;
use crate::model::MachineState;
use crate::registry::{AtRevision, Registry, Result};
use crate::store::{LeaseTimes, Op, Revision};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::BTreeMap;

/// Lease queries in flight at once: enough to answer a large cluster quickly without a burst
/// of hundreds of requests at the store.
const LEASE_QUERIES: usize = 16;

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
    /// The machine's id.
    pub machine: String,
    /// The metadata key.
    pub key: String,
    /// The new value; `None` removes the key.
    pub value: Option<String>,
}

impl Registry {
    /// Every present machine, sorted by id, with dynamic metadata merged over its configured
    /// metadata (dynamic wins).
    pub async fn machines(&self, at: Option<Revision>) -> Result<AtRevision<Vec<MachineState>>> {
        let AtRevision {
            items: mut machines,
            revision,
        } = self
            .records::<MachineState>(&self.keys.machines(), at)
            .await?;
        let dynamic = self.dynamic_metadata(Some(revision)).await?;
        for m in &mut machines {
            if let Some(d) = dynamic.get(&m.id) {
                merge_metadata(&mut m.metadata, d);
            }
        }
        Ok(AtRevision {
            items: machines,
            revision,
        })
    }

    /// machine id -> the times of the lease its presence record is written under. A machine
    /// whose lease ended between the read and the query, or whose record has no lease, is
    /// left out: it is on its way out of the cluster.
    pub async fn machine_leases(&self) -> Result<BTreeMap<String, LeaseTimes>> {
        let kvs = self.range_at(&self.keys.machines(), None).await?;
        let owners: Vec<(String, i64)> = kvs
            .items
            .iter()
            .filter(|kv| kv.lease != 0)
            .filter_map(|kv| decode_or_skip::<MachineState>(kv).map(|m| (m.id, kv.lease)))
            .collect();
        let store = &self.store;
        stream::iter(owners)
            .map(|(id, lease)| async move {
                Ok::<_, crate::RegistryError>(store.lease_times(lease).await?.map(|t| (id, t)))
            })
            .buffer_unordered(LEASE_QUERIES)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await
    }

    /// machine -> key -> value of metadata set through the API.
    pub async fn dynamic_metadata(
        &self,
        at: Option<Revision>,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let flat = self
            .record_map::<(String, String), String>(&self.keys.all_metadata(), at)
            .await?;
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for ((machine, key), value) in flat.items {
            out.entry(machine).or_default().insert(key, value);
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
}
