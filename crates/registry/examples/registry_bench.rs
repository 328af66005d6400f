//! fleet-level registry figures, printed (never asserted): unit creations per second through
//! `Registry::create_unit`, engine schedule writes per second through `Leadership::apply_schedule`
//! (batched, fenced transactions), on the embedded store and on a real one-member etcd started
//! here.
//!
//! ```text
//! cargo run --release -p fleet-registry --example registry_bench [-- UNITS]
//! ```

use registry::{Registry, ScheduleChange, ScheduleEntry, Store, TargetState};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let units: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir()?;
    let embedded: Arc<dyn Store> = Arc::new(registry::embedded::EmbeddedStore::open(tmp.path())?);
    bench("embedded", embedded, units).await?;
    let cluster = tokio::task::block_in_place(testkit::etcd::EtcdCluster::single)?;
    let etcd: Arc<dyn Store> = Arc::new(
        registry::etcd::EtcdStore::connect(registry::etcd::EtcdOptions {
            endpoints: cluster.endpoints(),
            request_timeout: Duration::from_secs(10),
            ..Default::default()
        })
        .await?,
    );
    bench("etcd (1 member)", etcd, units).await
}

async fn bench(backend: &str, store: Arc<dyn Store>, units: usize) -> anyhow::Result<()> {
    let reg = Registry::new(store, "/bench/");
    // Unit creations: 32 in flight, as the API serves concurrent fleetctl requests.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (reg, next) = (reg.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= units {
                    return anyhow::Ok(());
                }
                let text = format!("[Service]\nExecStart=/bin/sleep {i}\n");
                let file = unit::UnitFile::parse(&text)?;
                reg.create_unit(&format!("u{i}.service"), &file, TargetState::Launched)
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let create = started.elapsed();
    // Schedule writes: one engine pass placing every unit, fenced by a leader lease.
    let registry::Campaign::Won(leadership) = reg
        .campaign("bench-machine", Duration::from_secs(30))
        .await?
    else {
        anyhow::bail!("another engine leads");
    };
    let jobs = reg.jobs(None).await?.items;
    let changes: Vec<ScheduleChange> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| ScheduleChange::Place {
            unit: j.name.clone(),
            machine: format!("m{}", i % 100),
            entry: ScheduleEntry {
                hash: j.hash,
                desired: j.desired,
                raw: None,
            },
        })
        .collect();
    let started = Instant::now();
    anyhow::ensure!(leadership.apply_schedule(&changes).await?, "fence failed");
    let schedule = started.elapsed();
    // One agent's first read of its schedule (what a steady agent never repeats).
    let started = Instant::now();
    let mine = reg.machine_schedule("m7", None).await?.items.len();
    let read = started.elapsed();
    println!(
        "{backend}: {units} unit creations in {:.2} s = {:.0}/s; placing {} units (3 ops each, \
         transactions of <= {} ops) in {:.2} s = {:.0} placements/s; one machine's schedule \
         ({mine} units) read in {:.1} ms",
        create.as_secs_f64(),
        units as f64 / create.as_secs_f64(),
        changes.len(),
        registry::MAX_TXN_OPS,
        schedule.as_secs_f64(),
        changes.len() as f64 / schedule.as_secs_f64(),
        read.as_secs_f64() * 1000.0
    );
    Ok(())
}
