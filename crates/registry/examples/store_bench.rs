//! Store throughput figures, printed (never asserted).
//!
//! ```text
//! cargo run --release -p fleet-registry --example store_bench            # embedded, in a temp dir
//! cargo run --release -p fleet-registry --example store_bench -- embedded /some/dir
//! cargo run --release -p fleet-registry --example store_bench -- etcd        # own 1-member etcd
//! cargo run --release -p fleet-registry --example store_bench -- etcd 3      # own 3-member etcd
//! cargo run --release -p fleet-registry --example store_bench -- etcd http://127.0.0.1:2379
//! ```
//!
//! [`bench`] takes any `Arc<dyn Store>`, so another backend only needs a line in `main`.

use futures::StreamExt;
use registry::embedded::EmbeddedStore;
use registry::store::range_all;
use registry::{Op, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str).unwrap_or("embedded") {
        "embedded" => {
            let tmp = tempfile::tempdir()?;
            let dir = args
                .get(1)
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| tmp.path().to_path_buf());
            let store = EmbeddedStore::open(&dir)?;
            println!("backend: embedded (redb file {})", store.path().display());
            let store = Arc::new(store);
            bench(store.clone()).await?;
            // Open time (reads every key into memory, checks the file's integrity).
            for i in 0..200 {
                let ops = (0..100)
                    .map(|j| Op::put(format!("/open/{:05}", i * 100 + j), vec![b'x'; 200]))
                    .collect();
                store.txn(vec![], ops, vec![]).await?;
            }
            drop(store);
            let t = Instant::now();
            let store = EmbeddedStore::open(&dir)?;
            println!("open with 20,000 keys:        {:>10.2?}", t.elapsed());
            drop(store);
            Ok(())
        }
        "etcd" => {
            // Our own etcd (data dir under $TMPDIR, default limits), or the endpoints given.
            let arg = args.get(1).map(String::as_str).unwrap_or("1");
            let mut _cluster = None;
            let endpoints = match arg.parse::<usize>() {
                Ok(members) => {
                    let c = testkit::etcd::EtcdCluster::start(members)?;
                    let e = c.endpoints();
                    _cluster = Some(c);
                    e
                }
                Err(_) => arg.split(',').map(str::to_owned).collect(),
            };
            println!("backend: etcd at {}", endpoints.join(","));
            let store = registry::etcd::EtcdStore::connect(registry::etcd::EtcdOptions {
                endpoints,
                request_timeout: Duration::from_secs(10),
                ..Default::default()
            })
            .await?;
            bench(Arc::new(store)).await
        }
        other => anyhow::bail!("unknown backend {other:?}; known: embedded, etcd"),
    }
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>10.0}/s  ({n} in {d:.2?})", n as f64 / d.as_secs_f64())
}

/// Runs every measurement under a fresh prefix of `store`.
pub async fn bench(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let p = format!("/bench/{}/", std::process::id());
    let s = &*store;

    // Sequential single-key puts: one commit (fsync) each. Bounded by count and by time.
    let t = Instant::now();
    let mut n = 0;
    while n < 2000 && t.elapsed() < Duration::from_secs(5) {
        s.txn(
            vec![],
            vec![Op::put(format!("{p}seq/{n}"), "value")],
            vec![],
        )
        .await?;
        n += 1;
    }
    println!("single puts, 1 task:          {}", rate(n, t.elapsed()));

    // Single-key puts from 64 tasks at once: requests arriving during a commit share the next.
    let tasks = 64;
    let each = 50;
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let store = store.clone();
            let p = p.clone();
            tokio::spawn(async move {
                for j in 0..each {
                    store
                        .txn(
                            vec![],
                            vec![Op::put(format!("{p}par/{i}/{j}"), "value")],
                            vec![],
                        )
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    println!(
        "single puts, {tasks} tasks:         {}",
        rate(tasks * each, t.elapsed())
    );

    // Transactions of 100 puts, which is also how the 10,000 keys for the range test are made.
    let t = Instant::now();
    let txns = 100;
    for i in 0..txns {
        let ops = (0..100)
            .map(|j| {
                Op::put(
                    format!("{p}range/{:05}", i * 100 + j),
                    "some value of a unit",
                )
            })
            .collect();
        s.txn(vec![], ops, vec![]).await?;
    }
    let d = t.elapsed();
    println!(
        "txns of 100 puts:             {}  = {:.0} keys/s",
        rate(txns, d),
        (txns * 100) as f64 / d.as_secs_f64()
    );

    // Reads of 10,000 keys.
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        let page = s.range(&format!("{p}range/"), None, 0, None).await?;
        anyhow::ensure!(
            page.kvs.len() == 10_000,
            "range returned {} keys",
            page.kvs.len()
        );
    }
    println!(
        "range of 10,000 keys:         {:>10.2?} each",
        t.elapsed() / reps
    );
    let t = Instant::now();
    for _ in 0..reps {
        range_all(s, &format!("{p}range/"), 1000).await?;
    }
    println!(
        "range_all 10,000 by 1,000:    {:>10.2?} each",
        t.elapsed() / reps
    );
    let t = Instant::now();
    for i in 0..10_000 {
        s.get(&format!("{p}range/{i:05}")).await?;
    }
    println!(
        "gets:                         {}",
        rate(10_000, t.elapsed())
    );

    // Watch throughput: a live watcher while 10,000 keys are written in txns of 100, then a
    // second watcher catching up on the same 10,000 events from history.
    let start = s.range(&p, None, 1, None).await?.revision + 1;
    let mut live = s.watch(&format!("{p}watch/"), start).await?;
    let t = Instant::now();
    let writer = {
        let store = store.clone();
        let p = p.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                let ops = (0..100)
                    .map(|j| Op::put(format!("{p}watch/{:05}", i * 100 + j), "v"))
                    .collect();
                store.txn(vec![], ops, vec![]).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut seen = 0;
    while seen < 10_000 {
        let batch = live
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
        seen += batch.len();
    }
    writer.await??;
    println!("watch, live (write+deliver):  {}", rate(seen, t.elapsed()));
    let mut replay = s.watch(&format!("{p}watch/"), start).await?;
    let t = Instant::now();
    let mut seen = 0;
    while seen < 10_000 {
        let batch = replay
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
        seen += batch.len();
    }
    println!("watch, replay from history:   {}", rate(seen, t.elapsed()));

    // Clean up, so a shared backend is left as it was.
    s.txn(vec![], vec![Op::delete_prefix(&p)], vec![]).await?;
    Ok(())
}
