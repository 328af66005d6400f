//! fleetd: configuration and wiring of the agent, engine and API server.

pub mod config;
pub mod daemon;
pub mod logging;
