//! fleet's registry: a small key-value [`Store`] interface with two backends (a real etcd v3
//! cluster, or an embedded single-machine store) and [`Registry`], fleet's data model over it.
//!
//! Every reader watches only what concerns it, from a revision it read; every multi-key change
//! is one transaction; what dies with a machine is attached to that machine's lease.

mod api_support;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod etcd;
mod group_commit;
pub mod keys;
pub mod mirror;
pub mod model;
pub mod registry;
pub mod store;

pub use model::*;
pub use registry::{
    merge_metadata, AtRevision, MetadataChange, Registry, RegistryError, ScheduleChange, UnitView,
};

/// Operations per transaction: etcd refuses more than 128 by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 100;
pub use store::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, RangePage, Revision, Store, StoreError,
    TxnResult, WatchStream,
};
