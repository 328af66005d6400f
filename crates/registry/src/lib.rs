//! fleet's registry: a small key-value [`Store`] interface with two backends (a real etcd v3
//! cluster, or an embedded single-machine store) and [`Registry`], fleet's data model over it.
//!
//! [`Registry`] is the only code that knows keys, records and transactions. Everyone else uses
//! its typed operations (units, schedule, machines, states), its typed followers
//! ([`Follower`]: a copy of one part of the registry kept current by a watch), the engine's
//! [`Leadership`] (election and fenced writes) and a machine's [`MachineLease`] (presence).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use registry::{embedded::EmbeddedStore, Registry, TargetState, Update};
//! use std::sync::Arc;
//! let store = EmbeddedStore::open(std::path::Path::new("/var/lib/fleet/registry"))?;
//! let registry = Registry::new(Arc::new(store), "/_coreos.com/fleet/");
//! let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 100\n")?;
//! registry.create_unit("sleep.service", &file, TargetState::Launched).await?;
//! for u in registry.units(None).await?.items {
//!     println!("{} {}", u.job.name, u.job.desired);
//! }
//! // Follow the jobs: a first snapshot, then every change.
//! let mut jobs = registry.follow_jobs();
//! if let Some(Update::Reset(all)) = jobs.recv().await {
//!     println!("{} jobs", all.len());
//! }
//! # Ok(()) }
//! ```
//!
//! Every reader watches only what concerns it, from a revision it read; every multi-key change
//! is one transaction; what dies with a machine is attached to that machine's lease.

mod backoff;
mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
mod drain;
pub mod embedded;
pub mod etcd;
mod events;
mod feed;
mod follow;
mod group_commit;
pub mod instances;
mod keys;
mod leadership;
mod listing;
mod machines;
pub mod model;
mod observe;
mod presence;
mod registry;
mod rollout;
mod schedule;
mod states;
pub mod store;
mod units;
mod views;

pub use backoff::Backoff;
pub use events::{ClusterEvent, ClusterEventKind, Deriver, EventFollower, Fact};
pub use follow::{recv_or_never, Change, Follower, Update};
pub use instances::{InstanceFollower, Instances};
pub use leadership::{Campaign, LeaderWatch, Leadership};
pub use listing::ListingView;
pub use machines::{merge_metadata, MetadataChange};
pub use model::*;
pub use observe::{LeaseRefresh, StoreObserver};
pub use presence::{Announcement, LeaseKeeper, MachineLease};
pub use registry::{AtRevision, Registry, RegistryError, Result};
pub use rollout::RolloutWrite;
pub use schedule::ScheduleChange;
pub use views::UnitView;

/// Operations per transaction: etcd refuses more than 128 by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 100;
pub use store::{
    Compare, Event, EventKind, KeyValue, LeaseId, LeaseTimes, Op, RangePage, Revision, Store,
    StoreError, TxnResult, WatchStream,
};
