//! Lease keep-alives: one long-lived stream per lease this process refreshes, on the lease
//! connection (see [`EtcdStore::connect`]).

use super::EtcdStore;
use crate::store::{LeaseId, Result, StoreError};
use etcd_client as ec;
use std::time::Duration;

pub(super) type Keeper = (ec::LeaseKeeper, ec::LeaseKeepAliveStream);

impl EtcdStore {
    /// [`crate::Store::keep_alive`], on the lease's own long-lived stream.
    ///
    /// The stream is taken out of the map while in use and put back only after a full
    /// exchange: a caller that gives up half-way (its own deadline, shorter than what is left
    /// of the TTL) drops the future, and with it a stream whose next message would be the
    /// answer to a request nobody waits for any more.
    pub(super) async fn refresh_lease(&self, lease: LeaseId) -> Result<Duration> {
        let kept = self
            .inner
            .keepers
            .lock()
            .ok()
            .and_then(|mut k| k.remove(&lease));
        if let Some(mut keeper) = kept {
            // Reuse this lease's stream; on any trouble drop it and open a fresh one below.
            let refreshed = tokio::time::timeout(self.inner.opts.request_timeout, async {
                let (k, stream) = &mut keeper;
                k.keep_alive().await?;
                stream.message().await
            })
            .await;
            match refreshed {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    self.keep_keeper(lease, keeper);
                    return Ok(Duration::from_secs(resp.ttl().unsigned_abs()));
                }
                Ok(Ok(Some(_))) => return Err(StoreError::LeaseNotFound(lease)),
                _ => {}
            }
        }
        // Open the lease's stream: etcd-client sends one refresh and consumes its answer, so a
        // second request returns the TTL to us.
        let res = self
            .call("lease keep-alive", true, |mut c| async move {
                let (mut keeper, mut stream) = c.lease.keep_alive(lease).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) => Ok((resp.ttl(), keeper, stream)),
                    None => Err(ec::Error::LeaseKeepAliveError(
                        "keep-alive stream closed".into(),
                    )),
                }
            })
            .await;
        match res {
            Ok((ttl, keeper, stream)) if ttl > 0 => {
                self.keep_keeper(lease, (keeper, stream));
                Ok(Duration::from_secs(ttl.unsigned_abs()))
            }
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Err(StoreError::LeaseNotFound(lease)),
            Err(StoreError::Other(msg)) if msg.contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(e),
        }
    }

    fn keep_keeper(&self, lease: LeaseId, keeper: Keeper) {
        if let Ok(mut k) = self.inner.keepers.lock() {
            k.insert(lease, keeper);
        }
    }

    pub(super) fn forget_keeper(&self, lease: LeaseId) {
        if let Ok(mut k) = self.inner.keepers.lock() {
            k.remove(&lease);
        }
    }
}
