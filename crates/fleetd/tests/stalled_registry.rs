//! A registry that stalls for half of `agent_ttl` (a real etcd frozen with SIGSTOP, then
//! thawed) costs a fleetd neither its machine lease nor any unit state: lease refreshes are
//! bounded, retried at once, and go over a connection of their own.

mod common;

use common::{arg_of, etcd_args, wait_for, Node, DEADLINE, POLL};
use registry::etcd::{EtcdOptions, EtcdStore};
use registry::{Registry, Store};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENT_TTL: Duration = Duration::from_secs(4);
const UNITS: usize = 30;

/// The registry as fleetd sees it, read straight from etcd.
struct View {
    rt: tokio::runtime::Runtime,
    store: Arc<EtcdStore>,
    registry: Registry,
}

impl View {
    fn new(endpoints: Vec<String>, prefix: &str) -> View {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let store = rt
            .block_on(EtcdStore::connect(EtcdOptions {
                endpoints,
                ..EtcdOptions::default()
            }))
            .expect("connecting to the test's etcd");
        let store = Arc::new(store);
        let registry = Registry::new(store.clone(), prefix);
        View {
            rt,
            store,
            registry,
        }
    }

    /// The lease holding the machine's record.
    fn machine_lease(&self, id: &str) -> Option<i64> {
        self.rt
            .block_on(self.registry.machine_lease(id))
            .expect("reading the machine record")
    }

    /// Each unit's published (active, sub) state.
    fn states(&self) -> BTreeMap<String, (String, String)> {
        self.rt
            .block_on(self.registry.unit_states(None))
            .expect("reading unit states")
            .items
            .into_iter()
            .map(|s| (s.name, (s.systemd.active, s.systemd.sub)))
            .collect()
    }

    fn lease_alive(&self, lease: i64) -> bool {
        self.rt
            .block_on(self.store.lease_ttl(lease))
            .expect("reading the lease's TTL")
            .is_some()
    }
}

/// `GET /metrics` on fleetd's API socket, by hand: the test's API client speaks only fleet's
/// API v1.
fn metrics(socket: &std::path::Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect to the API socket");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .expect("send GET /metrics");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read /metrics");
    out
}

/// One fleetd on a fresh etcd, with [`UNITS`] units active.
struct Setup {
    etcd: testkit::etcd::EtcdCluster,
    node: Node,
    fleetd: common::Fleetd,
    view: View,
    names: Vec<String>,
}

fn running() -> (String, String) {
    (String::from("active"), String::from("running"))
}

impl Setup {
    fn start(hint: &str) -> Option<Setup> {
        let etcd = common::etcd_with_args(&[])?;
        let node = Node::new(hint);
        let mut args = etcd_args(&node, &etcd.endpoints().join(","));
        let ttl_at = args
            .iter()
            .position(|a| a == "--agent-ttl")
            .expect("--agent-ttl")
            + 1;
        args[ttl_at] = format!("{}s", AGENT_TTL.as_secs());
        let prefix = arg_of(&args, "--etcd-key-prefix")
            .expect("a key prefix")
            .to_string();
        let mut fleetd = node.start_raw(&args);
        let api = fleetd.wait_registered();
        let names: Vec<String> = (0..UNITS)
            .map(|i| format!("{hint}-{i:02}.service"))
            .collect();
        for name in &names {
            api.submit(name, "[Service]\nExecStart=/bin/sleep 600\n", "launched");
        }
        let view = View::new(etcd.endpoints(), &prefix);
        let setup = Setup {
            etcd,
            node,
            fleetd,
            view,
            names,
        };
        setup.wait_all_running();
        Some(setup)
    }

    fn wait_all_running(&self) {
        wait_for("every unit published active/running", DEADLINE * 2, || {
            let states = self.view.states();
            let running = running();
            (self.names.iter().all(|n| states.get(n) == Some(&running))).then_some(())
        });
    }

    fn lease_file(&self) -> String {
        lease_file_of(&self.node)
    }
}

/// What fleetd recorded of its machine lease under `state_dir`.
fn lease_file_of(node: &Node) -> String {
    std::fs::read_to_string(node.state_dir().join("machine.lease"))
        .expect("fleetd records its machine lease")
}

#[test]
fn a_registry_stalled_for_half_the_agent_ttl_costs_no_lease_and_no_unit_state() {
    let Some(mut setup) = Setup::start("stall") else {
        return;
    };
    let Setup {
        etcd,
        node,
        fleetd,
        view,
        names,
    } = &mut setup;
    let running = running();
    let lease = view
        .machine_lease(&node.machine_id)
        .expect("the machine is registered");
    let lease_file = lease_file_of(node);

    // The stall itself: nothing to poll while etcd is frozen. Killed by PID with the cluster
    // (SIGKILL reaches a stopped process) if anything below fails.
    etcd.pause_member(0).expect("SIGSTOP etcd");
    std::thread::sleep(AGENT_TTL / 2);
    etcd.resume_member(0).expect("SIGCONT etcd");
    let thawed = Instant::now();

    // Had no refresh gone through after the stall, etcd would drop the lease within a TTL of
    // the last one before it: look until then, on every poll.
    while thawed.elapsed() < AGENT_TTL + AGENT_TTL / 2 {
        assert_eq!(
            view.machine_lease(&node.machine_id),
            Some(lease),
            "the machine record lost its lease; fleetd's log:\n{}",
            fleetd.log()
        );
        assert!(view.lease_alive(lease), "lease {lease:x} expired");
        std::thread::sleep(POLL);
    }
    let states = view.states();
    for name in names.iter() {
        assert_eq!(
            states.get(name),
            Some(&running),
            "{name}'s state; fleetd's log:\n{}",
            fleetd.log()
        );
    }
    assert_eq!(
        lease_file_of(node),
        lease_file,
        "fleetd registered again under another lease"
    );
    let log = fleetd.log();
    assert!(!log.contains("machine lease lost"), "{log}");
    let metrics = metrics(&fleetd.socket);
    assert!(
        metrics.contains("\nfleet_agent_leases_lost_total 0\n"),
        "{metrics}"
    );
    assert!(fleetd.running(), "{log}");
}

/// A lease lost anyway (revoked here, as etcd drops one it did not hear from for a TTL) is
/// counted and logged; the machine registers again under a new lease and writes every unit
/// state again (paced) under it.
#[test]
fn a_lost_lease_is_counted_and_every_state_is_written_again_under_the_new_one() {
    let Some(setup) = Setup::start("lost") else {
        return;
    };
    let id = &setup.node.machine_id;
    let lease = setup
        .view
        .machine_lease(id)
        .expect("the machine is registered");
    setup
        .view
        .rt
        .block_on(setup.view.store.revoke_lease(lease))
        .expect("revoking the machine lease");
    let renewed = wait_for("the machine registered again", DEADLINE, || {
        setup.view.machine_lease(id).filter(|l| *l != lease)
    });
    setup.wait_all_running();
    assert!(setup.view.lease_alive(renewed));
    assert!(
        setup.lease_file().contains(&renewed.to_string()),
        "the new lease is recorded: {}",
        setup.lease_file()
    );
    let log = setup.fleetd.log();
    assert_eq!(log.matches("machine lease lost").count(), 1, "{log}");
    let metrics = metrics(&setup.fleetd.socket);
    assert!(
        metrics.contains("\nfleet_agent_leases_lost_total 1\n"),
        "{metrics}"
    );
}
