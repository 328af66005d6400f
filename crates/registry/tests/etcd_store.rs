//! The etcd backend against real etcd processes started by each test: basic contract,
//! transaction limits, compaction, and survival of member loss and full restarts.

use futures::StreamExt;
use registry::etcd::{EtcdOptions, EtcdStore, MAX_TXN_OPS};
use registry::{Compare, Event, EventKind, Op, Revision, Store, StoreError, WatchStream};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::etcd::EtcdCluster;
use tokio::time::Instant;

/// Generous bound for conditions we wait on; never an expectation of speed.
const DEADLINE: Duration = Duration::from_secs(60);

async fn store_for(cluster: &EtcdCluster, timeout: Duration) -> EtcdStore {
    EtcdStore::connect(EtcdOptions {
        endpoints: cluster.endpoints(),
        request_timeout: timeout,
        ..EtcdOptions::default()
    })
    .await
    .unwrap()
}

fn start(members: usize) -> EtcdCluster {
    tokio::task::block_in_place(|| EtcdCluster::start(members)).unwrap()
}

/// Collects watch events until `want` returns true, failing on errors or after [`DEADLINE`].
async fn collect_until(
    watch: &mut WatchStream,
    seen: &mut Vec<Event>,
    want: impl Fn(&[Event]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !want(seen) {
        let batch = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {} events", seen.len()))
            .expect("watch ended")
            .expect("watch failed");
        assert!(!batch.is_empty(), "empty watch batch");
        seen.extend(batch);
    }
}

fn assert_strictly_increasing(events: &[Event]) {
    for w in events.windows(2) {
        assert!(
            w[0].kv.mod_revision < w[1].kv.mod_revision
                || (w[0].kv.mod_revision == w[1].kv.mod_revision && w[0].kv.key != w[1].kv.key),
            "out of order or repeated: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_contract_on_one_member() {
    let cluster = start(1);
    let store = store_for(&cluster, Duration::from_secs(5)).await;
    let p = "/basic/";

    let r1 = store
        .txn(
            vec![Compare::Missing(format!("{p}a"))],
            vec![Op::put(format!("{p}a"), "1")],
            vec![],
        )
        .await
        .unwrap();
    assert!(r1.succeeded);
    let kv = store.get(&format!("{p}a")).await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"1"[..], r1.revision, r1.revision)
    );

    // A failed compare runs the failure branch.
    let r2 = store
        .txn(
            vec![Compare::Missing(format!("{p}a"))],
            vec![Op::put(format!("{p}a"), "x")],
            vec![Op::put(format!("{p}b"), "2")],
        )
        .await
        .unwrap();
    assert!(!r2.succeeded);
    assert_eq!(r2.revision, r1.revision + 1);
    assert_eq!(
        store.get(&format!("{p}a")).await.unwrap().unwrap().value,
        b"1"
    );

    // Value, ModRevision and Exists compares.
    let ok = store
        .txn(
            vec![
                Compare::Value(format!("{p}a"), b"1".to_vec()),
                Compare::ModRevision(format!("{p}b"), r2.revision),
                Compare::Exists(format!("{p}b")),
                Compare::ModRevision(format!("{p}zz"), 0),
            ],
            vec![Op::put(format!("{p}c"), "3")],
            vec![],
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
    let bad = store
        .txn(
            vec![Compare::Value(format!("{p}missing"), vec![])],
            vec![Op::put(format!("{p}x"), "")],
            vec![],
        )
        .await
        .unwrap();
    assert!(!bad.succeeded, "a value compare on a missing key must fail");

    // Range with pages at one revision; keys outside the prefix stay out.
    store
        .txn(
            vec![],
            vec![Op::put("/basic0", "outside"), Op::put("/basi", "outside")],
            vec![],
        )
        .await
        .unwrap();
    let page = store.range(p, None, 2, None).await.unwrap();
    assert_eq!(
        page.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        [&format!("{p}a"), &format!("{p}b")]
    );
    assert!(page.more);
    let rest = store
        .range(p, Some(&format!("{p}b\0")), 0, Some(page.revision))
        .await
        .unwrap();
    assert_eq!(
        rest.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        [&format!("{p}c")]
    );
    assert!(!rest.more);
    assert_eq!(rest.revision, page.revision);

    // Leases: keys attached disappear on revoke; Lease compare fences.
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert!(store.lease_ttl(lease).await.unwrap().unwrap() > Duration::ZERO);
    assert_eq!(
        store.keep_alive(lease).await.unwrap(),
        Duration::from_secs(30)
    );
    store
        .txn(
            vec![],
            vec![Op::put_leased(format!("{p}leased"), "v", lease)],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&format!("{p}leased"))
            .await
            .unwrap()
            .unwrap()
            .lease,
        lease
    );
    let fenced = store
        .txn(
            vec![Compare::Lease(format!("{p}leased"), lease)],
            vec![Op::put(format!("{p}f"), "1")],
            vec![],
        )
        .await
        .unwrap();
    assert!(fenced.succeeded);
    let unleased = store
        .txn(
            vec![Compare::Lease(format!("{p}nokey"), 0)],
            vec![Op::put(format!("{p}f"), "2")],
            vec![],
        )
        .await
        .unwrap();
    assert!(
        !unleased.succeeded,
        "Lease(key, 0) on a missing key must fail"
    );
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get(&format!("{p}leased")).await.unwrap(), None);
    assert_eq!(store.lease_ttl(lease).await.unwrap(), None);
    assert!(
        matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(l)) if l == lease)
    );
    store.revoke_lease(lease).await.unwrap();
    assert!(matches!(
        store.txn(vec![], vec![Op::put_leased(format!("{p}g"), "v", lease)], vec![]).await,
        Err(StoreError::LeaseNotFound(l)) if l == lease
    ));

    // DeletePrefix and the watch of it.
    let before = store.range(p, None, 0, None).await.unwrap();
    let mut watch = store.watch(p, before.revision + 1).await.unwrap();
    let del = store
        .txn(vec![], vec![Op::delete_prefix(p)], vec![])
        .await
        .unwrap();
    let mut seen = Vec::new();
    collect_until(&mut watch, &mut seen, |s| s.len() >= before.kvs.len()).await;
    assert_eq!(seen.len(), before.kvs.len());
    assert!(seen
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == del.revision));
    assert!(store.range(p, None, 0, None).await.unwrap().kvs.is_empty());
    assert_eq!(
        store.get("/basic0").await.unwrap().unwrap().value,
        b"outside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_above_etcds_op_limit_are_refused_clearly() {
    let cluster = start(1);
    let store = store_for(&cluster, Duration::from_secs(5)).await;
    let ops = |n: usize| {
        (0..n)
            .map(|i| Op::put(format!("/limit/{i:04}"), "v"))
            .collect::<Vec<_>>()
    };
    assert!(
        store
            .txn(vec![], ops(MAX_TXN_OPS), vec![])
            .await
            .unwrap()
            .succeeded
    );
    let err = store
        .txn(vec![], ops(MAX_TXN_OPS + 1), vec![])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    assert!(
        msg.contains("129 success ops") && msg.contains("batches"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_ends_watches_and_old_reads() {
    let cluster = start(1);
    let store = store_for(&cluster, Duration::from_secs(5)).await;
    let first = store
        .txn(vec![], vec![Op::put("/compact/a", "1")], vec![])
        .await
        .unwrap()
        .revision;
    let mut last = first;
    for i in 0..5 {
        last = store
            .txn(vec![], vec![Op::put("/compact/a", format!("{i}"))], vec![])
            .await
            .unwrap()
            .revision;
    }
    store.client().compact(last, None).await.unwrap();

    match store.range("/compact/", None, 0, Some(first)).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (first, last)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let outcome = match store.watch("/compact/", first).await {
        Err(e) => Err(e),
        Ok(mut w) => w.next().await.expect("watch ended without an error"),
    };
    match outcome {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (first, last)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Watching from the compaction revision on still works.
    let mut w = store.watch("/compact/", last).await.unwrap();
    let batch = w.next().await.unwrap().unwrap();
    assert_eq!(batch[0].kv.mod_revision, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_reported_promptly_by_name() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: vec![endpoint.clone()],
        request_timeout: Duration::from_millis(700),
        ..EtcdOptions::default()
    })
    .await
    .unwrap();
    // The outer timeout only turns a hang into a failure.
    let get = tokio::time::timeout(DEADLINE, store.get("/x"))
        .await
        .expect("get hung");
    let txn = tokio::time::timeout(
        DEADLINE,
        store.txn(vec![], vec![Op::put("/x", "1")], vec![]),
    )
    .await
    .expect("txn hung");
    let watch = tokio::time::timeout(DEADLINE, store.watch("/x", 1))
        .await
        .expect("watch hung");
    for err in [
        get.unwrap_err(),
        txn.unwrap_err(),
        watch.err().expect("watch of nothing"),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(msg.contains(&endpoint) && msg.contains("700ms"), "{msg}");
    }
}

/// Writes `key` exactly once, retrying through outages; returns the revision it was written at.
/// A write whose fate was unknown is retried with a create-only compare, so a retry never
/// writes twice: it reads the key back instead.
async fn write_once(store: &EtcdStore, key: &str, value: &str) -> Revision {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match store
            .txn(
                vec![Compare::Missing(key.into())],
                vec![Op::put(key, value)],
                vec![],
            )
            .await
        {
            Ok(r) if r.succeeded => return r.revision,
            Ok(_) => {
                if let Ok(Some(kv)) = store.get(key).await {
                    return kv.mod_revision;
                }
            }
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("write of {key} failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "could not write {key} in {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged write is watched exactly once, in revision order, and is readable.
async fn check_no_loss(
    store: &EtcdStore,
    prefix: &str,
    written: &BTreeMap<String, Revision>,
    seen: &[Event],
) {
    assert_strictly_increasing(seen);
    let watched: BTreeMap<String, Revision> = seen
        .iter()
        .map(|e| (e.kv.key.clone(), e.kv.mod_revision))
        .collect();
    assert_eq!(watched.len(), seen.len(), "a key was delivered twice");
    assert_eq!(
        &watched, written,
        "watched revisions differ from acknowledged writes"
    );
    let read = registry::store::range_all(store, prefix, 100)
        .await
        .unwrap();
    let read: BTreeMap<String, Revision> = read
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect();
    assert_eq!(
        &read, written,
        "stored keys differ from acknowledged writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_lose_one_without_losing_writes_or_events() {
    let mut cluster = start(3);
    let store = store_for(&cluster, Duration::from_secs(2)).await;
    let prefix = "/three/";
    let from = store.range(prefix, None, 0, None).await.unwrap().revision + 1;
    let mut watch = store.watch(prefix, from).await.unwrap();

    const N: usize = 400;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut written = BTreeMap::new();
            for i in 0..N {
                let key = format!("{prefix}{i:05}");
                written.insert(key.clone(), write_once(&store, &key, "v").await);
                let _ = progress_tx.send(i + 1);
            }
            written
        })
    };
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        collect_until(&mut watch, &mut seen, |s| s.len() >= N).await;
        seen
    });

    // Kill every member once, one at a time, each while writes are flowing: one of them is the
    // leader and one serves the watch.
    for (i, at) in [(0usize, N / 8), (1, 3 * N / 8), (2, 5 * N / 8)] {
        progress.wait_for(|n| *n >= at).await.unwrap();
        tokio::task::block_in_place(|| cluster.kill_member(i)).unwrap();
        let resume_at = at + N / 8;
        progress.wait_for(|n| *n >= resume_at).await.unwrap();
        tokio::task::block_in_place(|| cluster.restart_member(i)).unwrap();
    }

    let written = writer.await.unwrap();
    let seen = watcher.await.unwrap();
    assert_eq!(written.len(), N);
    check_no_loss(&store, prefix, &written, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_is_unavailable_then_recovers_and_the_watch_resumes() {
    let mut cluster = start(1);
    let timeout = Duration::from_millis(800);
    let store = store_for(&cluster, timeout).await;
    let prefix = "/restart/";
    let from = store.range(prefix, None, 0, None).await.unwrap().revision + 1;
    let mut watch = store.watch(prefix, from).await.unwrap();
    let mut written = BTreeMap::new();
    let mut seen = Vec::new();
    for i in 0..20 {
        let key = format!("{prefix}{i:03}");
        written.insert(key.clone(), write_once(&store, &key, "v").await);
    }
    collect_until(&mut watch, &mut seen, |s| s.len() >= 10).await;

    tokio::task::block_in_place(|| cluster.stop_all()).unwrap();
    let endpoint = cluster.endpoints()[0].clone();
    let down = [
        store.get("/restart/000").await.map(|_| ()),
        store
            .txn(vec![], vec![Op::put("/restart/x", "1")], vec![])
            .await
            .map(|_| ()),
        store.grant_lease(Duration::from_secs(5)).await.map(|_| ()),
    ];
    for res in down {
        let err = res.expect_err("etcd is down");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(msg.contains(&endpoint) && msg.contains("800ms"), "{msg}");
    }
    // The watch is still open and must not report the outage as an end.
    tokio::task::block_in_place(|| cluster.restart_all()).unwrap();

    // Calls succeed again (the first ones may still be reconnecting).
    let deadline = Instant::now() + DEADLINE;
    while store.get("/restart/000").await.is_err() {
        assert!(Instant::now() < deadline, "etcd did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 20..40 {
        let key = format!("{prefix}{i:03}");
        written.insert(key.clone(), write_once(&store, &key, "v").await);
    }
    collect_until(&mut watch, &mut seen, |s| s.len() >= 40).await;
    check_no_loss(&store, prefix, &written, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_is_usable_as_a_shared_trait_object() {
    let cluster = start(1);
    let store: Arc<dyn Store> = Arc::new(store_for(&cluster, Duration::from_secs(5)).await);
    let r = store
        .txn(vec![], vec![Op::put("/dyn/a", "1")], vec![])
        .await
        .unwrap();
    assert_eq!(
        store.get("/dyn/a").await.unwrap().unwrap().mod_revision,
        r.revision
    );
}

/// A frozen member (SIGSTOP: connections open, nothing answers) must not stall the watch: the
/// HTTP/2 keep-alive notices the silence and the watch resumes on another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_moves_off_a_frozen_member() {
    let mut cluster = start(3);
    let store = store_for(&cluster, Duration::from_secs(2)).await;
    let prefix = "/frozen/";
    let from = store.range(prefix, None, 0, None).await.unwrap().revision + 1;
    let mut watch = store.watch(prefix, from).await.unwrap();
    let mut written = BTreeMap::new();
    let mut seen = Vec::new();
    // Freeze each member in turn (one of them serves the watch), write while it is frozen, and
    // wait for the watch to deliver those writes before thawing it.
    for i in 0..3 {
        tokio::task::block_in_place(|| cluster.pause_member(i)).unwrap();
        for j in 0..10 {
            let key = format!("{prefix}{i}-{j:02}");
            written.insert(key.clone(), write_once(&store, &key, "v").await);
        }
        let want = written.len();
        collect_until(&mut watch, &mut seen, |s| s.len() >= want).await;
        tokio::task::block_in_place(|| cluster.resume_member(i)).unwrap();
    }
    check_no_loss(&store, prefix, &written, &seen).await;
}

/// Responses above gRPC's default 4 MiB decode limit (a watch catching up on a backlog, a
/// large range) must arrive, not break the watch over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_backlogs_and_ranges_above_four_mib_arrive() {
    let cluster = start(1);
    let store = store_for(&cluster, Duration::from_secs(10)).await;
    let prefix = "/big/";
    let from = store.range(prefix, None, 0, None).await.unwrap().revision + 1;
    let value = vec![b'v'; 10_000];
    // 6 revisions of 100 keys of 10 kB: about 6 MB, each transaction below etcd's 1.5 MiB limit.
    for t in 0..6 {
        let ops = (0..100)
            .map(|i| Op::put(format!("{prefix}{t}/{i:03}"), value.clone()))
            .collect();
        store.txn(vec![], ops, vec![]).await.unwrap();
    }
    let all = store.range(prefix, None, 0, None).await.unwrap();
    assert_eq!(all.kvs.len(), 600);
    let mut watch = store.watch(prefix, from).await.unwrap();
    let mut seen = Vec::new();
    collect_until(&mut watch, &mut seen, |s| s.len() >= 600).await;
    assert_eq!(seen.len(), 600);
    assert_strictly_increasing(&seen);
}

/// fleet's default `etcd_servers` names a second, usually closed, port (4001): a dead endpoint
/// beside a live one must not fail requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_beside_a_live_one_is_skipped() {
    let cluster = start(1);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: vec![closed, cluster.endpoints()[0].clone()],
        request_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    })
    .await
    .unwrap();
    for i in 0..100 {
        let key = format!("/mixed/{i:03}");
        let r = store
            .txn(vec![], vec![Op::put(&key, "v")], vec![])
            .await
            .unwrap();
        assert_eq!(
            store.get(&key).await.unwrap().unwrap().mod_revision,
            r.revision
        );
    }
    let mut watch = store.watch("/mixed/", 1).await.unwrap();
    let mut seen = Vec::new();
    collect_until(&mut watch, &mut seen, |s| s.len() >= 100).await;
}
