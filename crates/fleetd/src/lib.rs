//! fleetd: fleet's configuration (file, `FLEET_*` environment, flags: [`config::load`]) and the
//! wiring of the agent, the engine and the API server over one registry ([`daemon::run`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fleetd::config::{load, process_env, Loaded};
//! match load(std::env::args_os(), &process_env, "/etc/fleet/fleet.conf".as_ref())? {
//!     Loaded::Run(cfg) => fleetd::daemon::run(*cfg).await,
//!     _ => Ok(()), // --version, --help, completion, man: printed by the binary
//! }
//! # }
//! ```

pub mod config;
pub mod daemon;
pub mod dump;
pub mod logging;
pub mod memory;
