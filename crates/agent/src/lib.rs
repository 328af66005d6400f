//! The agent: runs on every machine, announces it, runs the units placed on it through a
//! [`UnitManager`], and publishes their states.

pub mod agent;
pub mod core;
pub mod manager;
pub mod presence;
pub mod process;
pub mod reconcile;
pub mod systemd;

pub use agent::{Agent, Shutdown};
pub use manager::{Refused, StateChange, UnitManager};
pub use presence::Presence;
