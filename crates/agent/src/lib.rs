//! The agent: runs on every machine, announces it ([`Presence`]), runs the units placed on it
//! through a [`UnitManager`] (systemd over D-Bus, or our process supervisor), and publishes
//! their states. Its decisions are a pure core ([`core::Core`]); [`Agent`] drives it.
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry, machine: registry::MachineState) -> anyhow::Result<()> {
//! use agent::{Agent, Presence, Shutdown};
//! use std::sync::Arc;
//! use std::time::Duration;
//! let presence = Presence::register(registry, machine, Duration::from_secs(30), "/var/lib/fleet".as_ref()).await?;
//! let manager = agent::systemd::SystemdManager::connect(Default::default()).await?;
//! let (stop_tx, stop) = tokio::sync::watch::channel(None);
//! let agent = tokio::spawn(Agent::new(presence, Arc::new(manager)).run(stop));
//! // SIGTERM: stop the units and leave the cluster.
//! stop_tx.send(Some(Shutdown::Leave))?;
//! agent.await??;
//! # Ok(())
//! # }
//! ```

pub mod agent;
pub mod core;
pub mod manager;
pub mod metrics;
pub mod presence;
pub mod process;
pub mod reconcile;
pub mod systemd;

pub use agent::{Agent, Shutdown};
pub use manager::{Refused, StateChange, UnitManager};
pub use metrics::AgentMetrics;
pub use presence::Presence;
