//! fleet's engine: where units run. The scheduler is a pure function from a cluster snapshot to
//! a plan ([`scheduler::plan`]); the leader's decisions are a pure core ([`core::Core`]); and
//! [`run`] campaigns for leadership through the registry and, while it leads, drives the core
//! from the registry's followers and writes its decisions back, fenced by the leader lease.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry) -> anyhow::Result<()> {
//! use std::time::Duration;
//! let (stop_tx, stop) = tokio::sync::watch::channel(false);
//! let config = engine::EngineConfig {
//!     machine_id: "m1".into(),
//!     interval: Duration::from_secs(2),
//!     agent_ttl: Duration::from_secs(30),
//! };
//! let engine = tokio::spawn(engine::run(registry, config, stop));
//! // ... later: resign and stop.
//! stop_tx.send(true)?;
//! engine.await??;
//! # Ok(())
//! # }
//! ```

pub mod core;
pub mod engine;
pub mod explain;
pub mod metrics;
pub mod model;
pub mod scheduler;

pub use engine::{run, run_answering, run_observed, DumpRequest, EngineConfig};
pub use metrics::EngineMetrics;
