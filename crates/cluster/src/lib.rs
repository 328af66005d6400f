//! Cluster tests for fleet: a real etcd and several `fleetd` processes on loopback, driven
//! through fleet's HTTP API.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cluster::{Cluster, ClusterSpec};
//! let cluster = Cluster::start(ClusterSpec { machines: 3, ..Default::default() }).await?;
//! cluster.submit(&[cluster.service("hello.service", &[])]).await?;
//! let active = cluster
//!     .wait_for_active_units("hello active", |a| a.contains_key("hello.service"))
//!     .await?;
//! let machine = cluster.index_of(&active["hello.service"][0]).unwrap();
//! cluster.machine(machine).kill();                 // SIGKILL: the machine crashes
//! cluster
//!     .wait_for_active_units("hello moved", |a| {
//!         a.get("hello.service").is_some_and(|m| !m.contains(&cluster.machine(machine).id))
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Each machine is a fleetd with its own machine id, state dir, units dir, API unix socket and
//! TCP port on 127.0.0.1, `--public-ip 127.0.0.<n>` and the process unit manager; every
//! cluster has its own etcd (1 or 3 members, [`testkit::etcd`]) and key prefix, so clusters run
//! in parallel. A network partition is simulated by SIGSTOP ([`Machine::pause`]): the machine's
//! lease runs out while its units keep running, as on a cut-off machine.
//!
//! Dropping the [`Cluster`] kills every fleetd, every unit process (by the process manager's run
//! records, their process groups and the units' tag) and etcd, and removes the temp dirs, also
//! when a test panics; it then first prints each machine's log tail and the registry's keys.
//! The harness runs `cargo build -p fleetd` once per process ([`binary`]); `FLEETD_BIN`
//! overrides. `FLEET_CLUSTER_LOG` sets fleetd's `RUST_LOG` (default `info`).
//!
//! The scenarios: `cargo test -p fleet-cluster -- --nocapture` (figures are lines starting
//! with `FIGURE`); `--test-threads 4` runs them in about 35 s on an idle 2-core machine (the
//! clusters mostly wait). `tests/nspawn.rs` repeats two of them under real systemd in
//! `systemd-nspawn` containers, and skips with the reason where nspawn cannot run.

pub mod binary;
pub mod cleanup;
mod cluster;
mod machine;
pub mod metrics;
pub mod nspawn;
pub mod units;

pub use cluster::{
    sample_while, wait_for, ActiveUnits, Cluster, ClusterSpec, DEFAULT_DEADLINE, POLL_INTERVAL,
};
pub use machine::{Machine, UnitManagerKind};
