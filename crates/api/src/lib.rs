//! The light side of fleet's HTTP API v1: the wire types ([`types`]) and a typed client
//! ([`client::Client`]) — what fleetctl, the test harnesses and the benchmark link. Nothing
//! here depends on the registry; the server that answers these requests is the `fleet-server`
//! crate (lib `server`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), api::ClientError> {
//! let client = api::Client::new("unix:///var/run/fleet.sock", api::ClientOptions::default())?;
//! for state in client.unit_states(&api::client::StateFilter::default()).await? {
//!     println!("{} {} {}", state.name, state.machine_id, state.systemd_active_state);
//! }
//! client.set_unit_target_state("hello.service", api::TargetState::Launched).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod client;
pub mod types;

pub use client::{Client, ClientError, ClientOptions, Endpoint, Security};
pub use types::TargetState;
