//! The real engine loop over a real registry (embedded, and etcd started by the test): fleet's
//! scheduling scenarios end to end, leader election and fencing.

use engine::EngineConfig;
use registry::{Announcement, MachineLease, MachineState, Registry, Store, TargetState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use unit::UnitFile;

const TTL: Duration = Duration::from_secs(2);

fn unit(body: &str) -> UnitFile {
    UnitFile::parse(body).expect("test unit parses")
}

/// Machine ids that differ in their first 8 characters, so short ids are unambiguous.
fn machine_id(i: usize) -> String {
    format!("{:08x}{i:024x}", i + 1)
}

/// Registers machine `i` under a fresh lease; returns the lease.
async fn add_machine(reg: &Registry, i: usize, metadata: &[(&str, &str)]) -> MachineLease {
    let lease = reg
        .grant_machine_lease(Duration::from_secs(30))
        .await
        .unwrap();
    let m = MachineState {
        id: machine_id(i),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    assert_eq!(lease.announce(&m).await.unwrap(), Announcement::Written);
    lease
}

fn start_engine(
    reg: &Registry,
    i: usize,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (tx, rx) = watch::channel(false);
    let cfg = EngineConfig {
        machine_id: machine_id(i),
        interval: Duration::from_millis(500),
        agent_ttl: TTL,
    };
    let handle = tokio::spawn(engine::run(reg.clone(), cfg, rx));
    (tx, handle)
}

/// Polls the placements until `check` holds (or panics with the last placements after 20 s).
/// Reads with `read` every 20 ms until `done` holds of what it read, and returns that; panics
/// naming `what` and showing the last read after 20 s.
async fn poll<T: std::fmt::Debug>(
    what: &str,
    mut read: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = read().await;
        if done(&v) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last read: {v:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the placements until `check` holds.
async fn wait_placements(
    reg: &Registry,
    what: &str,
    check: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    poll(
        what,
        async || reg.placements(None).await.unwrap().items,
        check,
    )
    .await
}

/// Creates `u<i>.service` for every `i` in `range`, launched, all with one plain body.
async fn create_plain(reg: &Registry, range: std::ops::Range<usize>) {
    let body = unit("[Service]\nExecStart=/bin/true\n");
    for i in range {
        reg.create_unit(&format!("u{i}.service"), &body, TargetState::Launched)
            .await
            .unwrap();
    }
}

async fn conflicts_spread(reg: Registry) {
    for i in 0..3 {
        add_machine(&reg, i, &[]).await;
    }
    let (stop, handle) = start_engine(&reg, 0);
    let body =
        unit("[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nConflicts=conflict.*.service\n");
    for i in 0..5 {
        reg.create_unit(
            &format!("conflict.{i}.service"),
            &body,
            TargetState::Launched,
        )
        .await
        .unwrap();
    }
    let p = wait_placements(&reg, "3 placed conflict units", |p| p.len() == 3).await;
    let machines: std::collections::BTreeSet<_> = p.values().collect();
    assert_eq!(
        machines.len(),
        3,
        "conflicting units share a machine: {p:?}"
    );
    let reasons = wait_until_reasons(&reg, 2).await;
    for r in reasons.values() {
        assert!(
            r.contains("conflict"),
            "reason should name the conflict: {r}"
        );
    }
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

async fn wait_until_reasons(reg: &Registry, n: usize) -> BTreeMap<String, String> {
    let what = format!("{n} reasons");
    poll(
        &what,
        async || reg.reasons(None).await.unwrap().items,
        |r| r.len() == n,
    )
    .await
}

async fn machine_of_pairs_move_together(reg: Registry) {
    let mut leases = Vec::new();
    for i in 0..3 {
        leases.push(add_machine(&reg, i, &[]).await);
    }
    let (stop, handle) = start_engine(&reg, 0);
    for i in 0..3 {
        reg.create_unit(
            &format!("ping.{i}.service"),
            &unit("[Service]\nExecStart=/bin/sleep 1000\n"),
            TargetState::Launched,
        )
        .await
        .unwrap();
        let pong = format!(
            "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineOf=ping.{i}.service\n"
        );
        reg.create_unit(
            &format!("pong.{i}.service"),
            &unit(&pong),
            TargetState::Launched,
        )
        .await
        .unwrap();
    }
    let paired = |p: &BTreeMap<String, String>| {
        (0..3).all(|i| {
            let ping = p.get(&format!("ping.{i}.service"));
            ping.is_some() && ping == p.get(&format!("pong.{i}.service"))
        })
    };
    let p = wait_placements(&reg, "ping/pong pairs", paired).await;
    let victim = p["ping.1.service"].clone();
    let victim_index = (0..3).find(|i| machine_id(*i) == victim).unwrap();
    leases[victim_index].revoke().await.unwrap();
    let p = wait_placements(&reg, "pairs moved off the lost machine", |p| {
        paired(p) && !p.values().any(|m| *m == victim)
    })
    .await;
    assert_ne!(p["ping.1.service"], victim);
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

async fn leader_failover_is_fenced(reg: Registry) {
    for i in 0..2 {
        add_machine(&reg, i, &[]).await;
    }
    let (stop_a, a) = start_engine(&reg, 0);
    let leader = poll(
        "a leader elected",
        async || reg.leader().await.unwrap(),
        Option::is_some,
    )
    .await;
    assert_eq!(leader, Some(machine_id(0)));
    let (stop_b, b) = start_engine(&reg, 1);
    create_plain(&reg, 0..20).await;
    wait_placements(&reg, "20 units placed", |p| p.len() == 20).await;
    // The leader steps down (as when its machine goes): the other engine takes over at once.
    stop_a.send(true).unwrap();
    a.await.unwrap().unwrap();
    poll(
        "the second engine leading",
        async || reg.leader().await.unwrap(),
        |l| *l == Some(machine_id(1)),
    )
    .await;
    create_plain(&reg, 20..30).await;
    wait_placements(&reg, "30 units placed", |p| p.len() == 30).await;
    // Every unit appears in exactly one machine's schedule.
    let schedule = reg.schedule(None).await.unwrap().items;
    let mut seen = BTreeMap::new();
    for (_machine, unit) in schedule.into_keys() {
        *seen.entry(unit).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 30);
    assert!(
        seen.values().all(|n| *n == 1),
        "a unit is scheduled twice: {seen:?}"
    );
    stop_b.send(true).unwrap();
    b.await.unwrap().unwrap();
}

async fn metadata_change_moves_unit(reg: Registry) {
    add_machine(&reg, 0, &[("region", "east")]).await;
    add_machine(&reg, 1, &[("region", "west")]).await;
    let (stop, handle) = start_engine(&reg, 0);
    let body = unit("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineMetadata=region=east\n");
    reg.create_unit("east.service", &body, TargetState::Launched)
        .await
        .unwrap();
    wait_placements(&reg, "east.service on machine 0", |p| {
        p.get("east.service") == Some(&machine_id(0))
    })
    .await;
    reg.set_metadata(&[
        registry::MetadataChange {
            machine: machine_id(0),
            key: "region".into(),
            value: Some("west".into()),
        },
        registry::MetadataChange {
            machine: machine_id(1),
            key: "region".into(),
            value: Some("east".into()),
        },
    ])
    .await
    .unwrap();
    wait_placements(&reg, "east.service moved to machine 1", |p| {
        p.get("east.service") == Some(&machine_id(1))
    })
    .await;
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

async fn one_way_conflict_machine_id_and_replaces(reg: Registry) {
    add_machine(&reg, 0, &[]).await;
    add_machine(&reg, 1, &[]).await;
    let (stop, handle) = start_engine(&reg, 0);
    // MachineID pinning, full and short (first 8 characters) id.
    let pin = |id: &str| {
        unit(&format!(
            "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineID={id}\n"
        ))
    };
    reg.create_unit(
        "pin-full.service",
        &pin(&machine_id(1)),
        TargetState::Launched,
    )
    .await
    .unwrap();
    reg.create_unit(
        "pin-short.service",
        &pin(&machine_id(1)[..8]),
        TargetState::Launched,
    )
    .await
    .unwrap();
    wait_placements(&reg, "pinned units on machine 1", |p| {
        p.get("pin-full.service") == Some(&machine_id(1))
            && p.get("pin-short.service") == Some(&machine_id(1))
    })
    .await;
    // One-way conflict: the conflicting unit goes elsewhere, whichever unit declares it.
    reg.create_unit("hello.service", &pin(&machine_id(0)), TargetState::Launched)
        .await
        .unwrap();
    let one_way = unit("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nConflicts=hello.service\n");
    reg.create_unit(
        "conflicts-with-hello.service",
        &one_way,
        TargetState::Launched,
    )
    .await
    .unwrap();
    wait_placements(&reg, "the one-way conflict honoured", |p| {
        p.get("hello.service") == Some(&machine_id(0))
            && p.get("conflicts-with-hello.service") == Some(&machine_id(1))
    })
    .await;
    // Replaces: the replacing unit takes machine 0, the replaced unit moves away.
    reg.create_unit(
        "replace.0.service",
        &unit("[Service]\nExecStart=/bin/true\n"),
        TargetState::Launched,
    )
    .await
    .unwrap();
    let p = wait_placements(&reg, "replace.0 placed", |p| {
        p.contains_key("replace.0.service")
    })
    .await;
    let old = p["replace.0.service"].clone();
    // fleet refuses MachineID with Replaces, so the replacing unit is steered by metadata.
    reg.set_metadata(&[registry::MetadataChange {
        machine: old.clone(),
        key: "kick".into(),
        value: Some("here".into()),
    }])
    .await
    .unwrap();
    let kick = unit("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nReplaces=replace.0.service\nMachineMetadata=kick=here\n");
    reg.create_unit("replace-kick0.service", &kick, TargetState::Launched)
        .await
        .unwrap();
    wait_placements(&reg, "kick on the old machine, replace.0 moved", |p| {
        p.get("replace-kick0.service") == Some(&old)
            && p.get("replace.0.service").is_some_and(|m| *m != old)
    })
    .await;
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

/// The entry that places a unit carries the unit's text, so the agent need not read it; an
/// entry that only changes the desired state still carries it.
async fn schedule_entries_carry_unit_text(reg: Registry) {
    add_machine(&reg, 0, &[]).await;
    let body = unit("[Service]\nExecStart=/bin/sleep 1000\n");
    reg.create_unit("carried.service", &body, TargetState::Loaded)
        .await
        .unwrap();
    let (stop, handle) = start_engine(&reg, 0);
    let entry = |reg: Registry, unit: &'static str| async move {
        let mine = reg.machine_schedule(&machine_id(0), None).await.unwrap();
        mine.items.get(unit).cloned()
    };
    let placed = poll(
        "carried.service placed",
        async || entry(reg.clone(), "carried.service").await,
        |e| e.is_some(),
    )
    .await
    .unwrap();
    let text = placed.raw.expect("the placement carries the unit's text");
    assert_eq!(unit(&text).hash(), body.hash());
    reg.set_target_state("carried.service", TargetState::Launched)
        .await
        .unwrap();
    let updated = poll(
        "carried.service launched",
        async || entry(reg.clone(), "carried.service").await,
        |e| {
            e.as_ref()
                .is_some_and(|e| e.desired == TargetState::Launched)
        },
    )
    .await
    .unwrap();
    assert_eq!(updated.raw.as_deref(), Some(text.as_str()));
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

fn embedded() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(registry::embedded::EmbeddedStore::open(dir.path()).unwrap());
    (dir, Registry::new(store, "/fleet-test/"))
}

async fn etcd() -> (testkit::etcd::EtcdCluster, Registry) {
    let cluster = testkit::etcd::EtcdCluster::single().expect("etcd starts");
    let opts = registry::etcd::EtcdOptions {
        endpoints: cluster.endpoints(),
        request_timeout: Duration::from_secs(5),
        ca_file: None,
        cert_file: None,
        key_file: None,
        username: None,
        password: None,
    };
    let store: Arc<dyn Store> = Arc::new(registry::etcd::EtcdStore::connect(opts).await.unwrap());
    (cluster, Registry::new(store, "/fleet-test/"))
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let (_dir, reg) = super::embedded();
                super::$name(reg).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                    .with_test_writer()
                    .try_init();
                let (_etcd, reg) = super::etcd().await;
                super::$name(reg).await;
            }
        }
    };
}

on_both!(conflicts_spread);
on_both!(schedule_entries_carry_unit_text);
on_both!(machine_of_pairs_move_together);
on_both!(leader_failover_is_fenced);
on_both!(metadata_change_moves_unit);
on_both!(one_way_conflict_machine_id_and_replaces);

/// Asks an engine for its dump (SIGUSR1's account); panics if it does not answer within 20 s.
async fn dump_of(requests: &tokio::sync::mpsc::Sender<engine::DumpRequest>) -> String {
    let (reply, answer) = tokio::sync::oneshot::channel();
    requests.send(reply).await.expect("engine takes requests");
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("engine answered within 20 s")
        .expect("engine answered")
}

/// SIGUSR1's account: the leader tells its model and the plan it wrote last; the other engine
/// names the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_tell_who_leads_and_the_last_plan() {
    let (_dir, reg) = embedded();
    let _m0 = add_machine(&reg, 0, &[]).await;
    let mut engines = Vec::new();
    for i in 0..2 {
        let (stop, stop_rx) = watch::channel(false);
        let (requests, dumps) = tokio::sync::mpsc::channel(1);
        let cfg = EngineConfig {
            machine_id: machine_id(i),
            interval: Duration::from_millis(500),
            agent_ttl: TTL,
        };
        let handle = tokio::spawn(engine::run_answering(
            reg.clone(),
            cfg,
            stop_rx,
            Some(dumps),
        ));
        engines.push((stop, requests, handle));
    }
    create_plain(&reg, 0..1).await;
    wait_placements(&reg, "u0 placed", |p| p.len() == 1).await;
    let leader = reg.leader().await.unwrap().expect("an engine leads");
    let mut texts = Vec::new();
    for (_, requests, _) in &engines {
        texts.push(dump_of(requests).await);
    }
    let (leading, other): (Vec<&String>, Vec<&String>) =
        texts.iter().partition(|t| t.contains(": leads;"));
    assert_eq!((leading.len(), other.len()), (1, 1), "{texts:#?}");
    assert!(
        leading[0].starts_with(&format!(
            "engine of machine {leader}: leads; its model holds 1 machines, 1 units (1 placed"
        )),
        "{}",
        leading[0]
    );
    assert!(
        leading[0].contains(&format!(
            "    place u0.service on {} (launched)",
            machine_id(0)
        )),
        "{}",
        leading[0]
    );
    assert_eq!(
        other[0].as_str(),
        format!("engine: not leading (the engine of machine {leader} leads)\n")
    );
    for (stop, _, handle) in engines {
        stop.send(true).unwrap();
        handle.await.unwrap().unwrap();
    }
}

/// fleet's `disable_watches`: an engine whose registry is read every interval instead of
/// watched places a unit, and moves it when its machine leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_engine_places_and_moves_units() {
    let (_dir, reg) = embedded();
    let m0 = add_machine(&reg, 0, &[]).await;
    let (stop, handle) = start_engine(&reg.clone().polling(Duration::from_millis(200)), 0);
    create_plain(&reg, 0..1).await;
    wait_placements(&reg, "u0 placed on machine 0", |p| {
        p.get("u0.service") == Some(&machine_id(0))
    })
    .await;
    let _m1 = add_machine(&reg, 1, &[]).await;
    m0.revoke().await.unwrap();
    wait_placements(&reg, "u0 moved to machine 1", |p| {
        p.get("u0.service") == Some(&machine_id(1))
    })
    .await;
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}
