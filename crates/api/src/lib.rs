//! fleet's HTTP API v1: the wire types, the server (axum) over a [`registry::Registry`], the
//! listeners it serves on, and a typed client.
//!
//! fleetd mounts it like this:
//!
//! ```no_run
//! # async fn demo(registry: registry::Registry, shutdown: tokio::sync::oneshot::Receiver<()>) -> anyhow::Result<()> {
//! use api::listen::{bind, serve, systemd_listeners, Listen};
//! let state = api::ApiState::new(registry, 100); // token_limit
//! let mut listeners = bind(&[Listen::Unix("/var/run/fleet.sock".into())]).await?;
//! listeners.extend(systemd_listeners()?);
//! let server = tokio::spawn(serve(listeners, api::router(state.clone()), async { let _ = shutdown.await; }));
//! // once this machine is registered in the registry:
//! state.set_available(true);
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! and fleetctl talks to it with [`client::Client`].

pub mod client;
pub mod listen;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod token;
pub mod types;

pub use client::{Client, ClientError, ClientOptions};
pub use server::{router, ApiError, ApiState, DISCOVERY_JSON, VERSION};
pub use types::TargetState;
