//! fleet's engine: the scheduler (a pure function from a cluster snapshot to a plan) and the
//! leader loop that feeds it from the registry and writes its decisions back.

pub mod core;
pub mod engine;
pub mod model;
pub mod scheduler;

pub use engine::{run, EngineConfig};
