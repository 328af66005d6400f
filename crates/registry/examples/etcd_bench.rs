//! Throughput of the etcd [`Store`] against a real etcd: single puts, 100-op transactions and
//! a range of 10,000 keys. Prints figures; asserts nothing.
//!
//! ```text
//! cargo run --release -p fleet-registry --example etcd_bench            # starts its own etcd
//! cargo run --release -p fleet-registry --example etcd_bench -- --members 3
//! cargo run --release -p fleet-registry --example etcd_bench -- --endpoints http://127.0.0.1:2379
//! ```
//!
//! With its own etcd, the data dir is under `$TMPDIR` (fsync cost depends on that disk).

use anyhow::{bail, Context, Result};
use registry::etcd::{EtcdOptions, EtcdStore};
use registry::store::range_all;
use registry::{Op, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::etcd::EtcdCluster;

const SEQUENTIAL_PUTS: usize = 1_000;
const CONCURRENT_PUTS: usize = 4_000;
const WRITERS: usize = 32;
const TXNS: usize = 100;
const OPS_PER_TXN: usize = 100;
const RANGE_KEYS: usize = 10_000;
const RANGE_REPEATS: usize = 5;
/// A realistic record size (a unit state is a few hundred bytes of JSON).
const VALUE: [u8; 200] = [b'x'; 200];

#[tokio::main]
async fn main() -> Result<()> {
    let mut members = 1;
    let mut endpoints: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--members" => members = args.next().context("--members N")?.parse()?,
            "--endpoints" => {
                let list = args.next().context("--endpoints URL[,URL...]")?;
                endpoints = Some(list.split(',').map(str::to_owned).collect());
            }
            other => bail!("unknown argument {other}; see the example's doc comment"),
        }
    }
    let _cluster;
    let endpoints = match endpoints {
        Some(e) => e,
        None => {
            let c = EtcdCluster::start(members)?;
            let e = c.endpoints();
            _cluster = c;
            e
        }
    };
    println!("etcd endpoints: {}", endpoints.join(","));
    let store = Arc::new(
        EtcdStore::connect(EtcdOptions {
            endpoints,
            request_timeout: Duration::from_secs(10),
            ..EtcdOptions::default()
        })
        .await?,
    );
    let run = format!("/bench/{}/", std::process::id());

    // Sequential single puts: one round trip and one fsync each.
    let t = Instant::now();
    for i in 0..SEQUENTIAL_PUTS {
        store
            .txn(
                vec![],
                vec![Op::put(format!("{run}seq/{i:06}"), VALUE)],
                vec![],
            )
            .await?;
    }
    report_rate("puts/s, one writer", SEQUENTIAL_PUTS, t.elapsed());

    // Concurrent single puts: etcd batches them into fewer fsyncs.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..CONCURRENT_PUTS).step_by(WRITERS) {
                store
                    .txn(
                        vec![],
                        vec![Op::put(format!("{run}par/{i:06}"), VALUE)],
                        vec![],
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    report_rate(
        &format!("puts/s, {WRITERS} writers"),
        CONCURRENT_PUTS,
        t.elapsed(),
    );

    // 100-op transactions, one writer.
    let t = Instant::now();
    for n in 0..TXNS {
        let ops = (0..OPS_PER_TXN)
            .map(|i| Op::put(format!("{run}txn/{n:04}/{i:03}"), VALUE))
            .collect();
        store.txn(vec![], ops, vec![]).await?;
    }
    let el = t.elapsed();
    report_rate(&format!("{OPS_PER_TXN}-op txns/s, one writer"), TXNS, el);
    report_rate("  = keys written/s", TXNS * OPS_PER_TXN, el);

    // A range of 10,000 keys, in pages of 1,000 at one revision and in one request.
    for chunk in (0..RANGE_KEYS).collect::<Vec<_>>().chunks(OPS_PER_TXN) {
        let ops = chunk
            .iter()
            .map(|i| Op::put(format!("{run}range/{i:06}"), VALUE))
            .collect();
        store.txn(vec![], ops, vec![]).await?;
    }
    let prefix = format!("{run}range/");
    for (label, page) in [("pages of 1000", 1000), ("one request", 0)] {
        let mut times = Vec::new();
        for _ in 0..RANGE_REPEATS {
            let t = Instant::now();
            let got = range_all(store.as_ref() as &dyn Store, &prefix, page).await?;
            times.push(t.elapsed());
            if got.kvs.len() != RANGE_KEYS {
                bail!("range returned {} keys, wrote {RANGE_KEYS}", got.kvs.len());
            }
        }
        times.sort();
        println!(
            "range of {RANGE_KEYS} keys ({label}): median {:.1} ms, best {:.1} ms over {RANGE_REPEATS} runs",
            ms(times[times.len() / 2]),
            ms(times[0])
        );
    }
    store
        .txn(vec![], vec![Op::delete_prefix(run)], vec![])
        .await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report_rate(what: &str, n: usize, elapsed: Duration) {
    println!(
        "{what}: {:.0} ({n} in {:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
