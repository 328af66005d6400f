//! Drain marks: a machine marked drained takes no new units and the engine moves its units
//! away (see the engine's scheduler). A mark is not under the machine's lease: a drained
//! machine that restarts (or loses its lease for a while) comes back drained, until
//! `undrain_machine` takes the mark away.

use crate::codec::Record;
use crate::model::DrainMark;
use crate::registry::{Registry, Result};
use crate::store::{Compare, Op};
use std::collections::BTreeMap;

impl Registry {
    /// Marks `machine` drained. Returns `false` if it already was (its first mark stays, so
    /// `since` tells how long it has been drained).
    pub async fn drain_machine(&self, machine: &str, mark: &DrainMark) -> Result<bool> {
        let key = self.keys.drain(machine);
        let put = Op::put(key.clone(), mark.encode());
        let created = self
            .store
            .txn(vec![Compare::Missing(key.clone())], vec![put], vec![])
            .await?;
        Ok(created.succeeded)
    }

    /// Takes `machine`'s drain mark away. Returns `false` if it had none.
    pub async fn undrain_machine(&self, machine: &str) -> Result<bool> {
        let key = self.keys.drain(machine);
        let gone = self
            .store
            .txn(
                vec![Compare::Exists(key.clone())],
                vec![Op::delete(key)],
                vec![],
            )
            .await?;
        Ok(gone.succeeded)
    }

    /// Every drain mark, by machine id (machines that are not present keep theirs).
    pub async fn drains(&self) -> Result<BTreeMap<String, DrainMark>> {
        Ok(self
            .record_map::<String, DrainMark>(&self.keys.drains(), None)
            .await?
            .items)
    }

    /// One machine's drain mark, if it has one.
    pub async fn drain_mark(&self, machine: &str) -> Result<Option<DrainMark>> {
        self.record(&self.keys.drain(machine)).await
    }

    /// Every drain mark, by machine id (what the engine leaves out of new placements).
    pub fn follow_drains(&self) -> crate::Follower<String, DrainMark> {
        crate::follow::follower(self, self.keys.drains())
    }
}
