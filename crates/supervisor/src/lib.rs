//! Our own process supervisor: runs the service subset of systemd units as plain processes,
//! with systemd's state names, on hosts without systemd.
//!
//! ```no_run
//! # async fn example(file: unit::UnitFile) -> Result<(), supervisor::Error> {
//! use supervisor::{ProcessManager, SubState};
//! let manager = ProcessManager::builder("/var/lib/fleet/process".into())
//!     .on_change(|change| println!("{}: {:?}", change.name, change.status))
//!     .open()?;
//! manager.load("web.service", &file).await?;
//! manager.start("web.service")?;
//! if manager.status("web.service").is_some_and(|s| s.sub == SubState::Running) {
//!     let log = manager.log_path("web.service"); // state_dir/logs/web.service.log
//! }
//! # Ok(()) }
//! ```
//!
//! This crate depends on the unit-file parser only. fleet's agent owns the `UnitManager` trait
//! (systemd over D-Bus implements it too) and adapts this typed API to it in
//! `agent::process`, so the dependency points from the agent to the supervisor, never back.
//!
//! What it runs is the subset [`config`] reads. Files under `runtime_dir` (fleetd:
//! `units_directory/process`, on the tmpfs systemd mounts at `/run`: they only need to outlive
//! fleetd, not the boot, and every unit start writes them):
//! - `units/<name>`: the normalized unit file, as loaded;
//! - `run/<name>.json`: a running unit's main pid, its start time (`/proc/<pid>/stat`, to
//!   guard against pid reuse), its sessions and the boot id.
//!
//! Under `state_dir` (kept across reboots):
//! - `logs/<name>.log` (+ `.log.1`): its stdout/stderr, one timestamped line per line.
//!
//! Every command of a unit runs as the leader of its own session (setsid): stopping signals the
//! whole tree, and nothing of the unit depends on fleetd staying alive. Output goes through
//! one log forwarder process per state directory, never through fleetd: it reads every unit's
//! pipe and keeps writing the logs while fleetd is down (the `forwarder` module says how, and
//! what happens when it dies). A new manager on the same directories re-adopts what still
//! runs: it reports it `active/running`, watches its main pid and can stop it; it restarts
//! nothing.
//!
//! Limits, by design: no cgroups, so a process that calls `setsid` itself leaves the unit's
//! sessions and is not killed on stop (except the main pid of `Type=forking`); after a
//! re-adoption the main pid is not fleetd's child, so its exit status is unknown and counted
//! as a failure. There is no reload: a load takes effect at once, for the next start.

pub mod config;
mod error;
mod forwarder;
pub mod inspect;
pub mod log;
mod manager;
mod open;
pub mod spawn;
mod state;
mod supervise;
pub mod sys;
mod units;

pub use config::ConfigError;
pub use error::Error;
pub use forwarder::ForwarderError;
pub use log::run_helper_if_requested;
pub use manager::ProcessManager;
pub use open::Builder;
pub use state::{ActiveState, LoadState, StateChange, SubState, UnitStatus};
