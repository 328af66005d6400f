//! The agent: runs on every machine, announces it, runs the units placed on it through a
//! [`UnitManager`], and publishes their states.

pub mod manager;
pub mod process;
pub mod systemd;

pub use manager::{StateChange, UnitManager};
