//! A load test of the API (issue 17, item 5): one real fleetd on the embedded registry or on
//! etcd, `clients` concurrent API clients listing and changing units for a while, then the
//! checks: every answer is 2xx, a 4xx naming its problem, or 503 (no transport error, no other
//! 5xx); no lost update (each client's last acknowledged desired state of each of its units is
//! what a GET and a listing show afterwards); fleetd still serves and its peak RSS stays under a
//! bound. Figures: requests/s, p50/p99/max latency per kind of request, answers by status,
//! fleetd's peak RSS.
//!
//! ```sh
//! cargo run -p fleet-bench -- load --clients 200 --seconds 60 --registry embedded
//! cargo run -p fleet-bench -- load --clients 200 --seconds 60 --registry etcd
//! ```

mod client;
pub mod fleetd;
pub mod report;

use anyhow::{Context, Result};
use client::{ClientRecord, Shared};
pub use report::LoadReport;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which registry fleetd runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    Embedded,
    Etcd,
}

impl RegistryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryKind::Embedded => "embedded",
            RegistryKind::Etcd => "etcd",
        }
    }
}

/// fleetd's peak RSS must stay below this. fleetd idles at a few tens of MB; the load adds at
/// most `clients * units_per_client` units (600 of about 1 KB each at the defaults), one
/// connection per client (tens of KB of buffers each) and the listings' caches, together well
/// under 100 MB. 512 MiB leaves room for allocator slack and a debug build, and is still
/// crossed by a leak of 20 KB per request over a minute at the rates measured here (tens of
/// thousands of requests), or by buffering without bound under overload.
pub const DEFAULT_RSS_BOUND: u64 = 512 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub clients: usize,
    pub duration: Duration,
    pub registry: RegistryKind,
    /// Units launched at once across all clients, at most: each is a real process, and the
    /// run should measure the API, not a machine swamped by process starts.
    pub max_launched: usize,
    /// Units each client holds at once, at most.
    pub units_per_client: usize,
    /// The clients' request timeout. A request that takes longer counts as an error (the
    /// server neither answered nor refused).
    pub request_timeout: Duration,
    pub rss_bound: u64,
    /// The fleetd binary to run.
    pub fleetd: PathBuf,
}

impl LoadOptions {
    /// The issue's run: 200 clients for 60 s, at most 32 launched units, 3 units per client.
    pub fn new(registry: RegistryKind, fleetd: PathBuf) -> LoadOptions {
        LoadOptions {
            clients: 200,
            duration: Duration::from_secs(60),
            registry,
            max_launched: 32,
            units_per_client: 3,
            request_timeout: Duration::from_secs(30),
            rss_bound: DEFAULT_RSS_BOUND,
            fleetd,
        }
    }
}

/// The fleetd binary: `fleetd` beside the running executable if there is one (a `cargo build
/// --bins` put both there), else what the cluster harness finds or builds
/// ([`cluster::binary::fleetd_binary`], `FLEETD_BIN` overrides).
pub fn fleetd_binary() -> Result<PathBuf> {
    if std::env::var_os("FLEETD_BIN").is_none() {
        if let Some(p) = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.join("fleetd")))
            .filter(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    cluster::binary::fleetd_binary()
}

/// Runs a load test on a runtime of its own (`etcd`: the endpoint for [`RegistryKind::Etcd`]).
pub fn run_blocking(opts: &LoadOptions, etcd: Option<&str>) -> Result<LoadReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(run(opts, etcd));
    runtime.shutdown_timeout(Duration::from_secs(5));
    report
}

/// Starts fleetd, runs the clients for `opts.duration`, checks what fleetd shows afterwards and
/// stops fleetd.
pub async fn run(opts: &LoadOptions, etcd: Option<&str>) -> Result<LoadReport> {
    let mut fleetd = fleetd::Fleetd::start(&opts.fleetd, opts.registry, etcd)?;
    fleetd.wait_serving().await?;
    let pid = fleetd.pid().context("fleetd is not running")?;
    let rss_start = crate::sys::rss_bytes(&pid.to_string());
    let cpu_start = crate::sys::process_cpu_seconds(pid);
    let own_cpu_start = crate::sys::cpu_seconds();

    let peak_rss = Arc::new(AtomicU64::new(rss_start));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak_rss.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(crate::sys::rss_bytes(&pid.to_string()), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let shared = Arc::new(Shared::new(opts, fleetd.endpoint(), fleetd.tag()));
    let start = Instant::now();
    let end = start + opts.duration;
    let mut tasks = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let shared = shared.clone();
        tasks.push(tokio::spawn(
            async move { client::drive(i, shared, end).await },
        ));
    }
    let mut records: Vec<ClientRecord> = Vec::with_capacity(opts.clients);
    for t in tasks {
        records.push(t.await.context("a load client panicked")??);
    }
    let elapsed = start.elapsed();
    let cpu = crate::sys::process_cpu_seconds(pid) - cpu_start;
    let own_cpu = crate::sys::cpu_seconds() - own_cpu_start;

    // Afterwards, quietly: what every client was acknowledged must be what fleetd shows.
    let check = client::check_after(&shared, &mut records).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let rss_end = crate::sys::rss_bytes(&pid.to_string());
    let exited = fleetd.exited();
    let log = fleetd.log();
    let stop = if exited.is_none() {
        Some(fleetd.stop().await)
    } else {
        None
    };

    let mut r = report::build(opts, elapsed, &records, check);
    r.fleetd_cpu_s = cpu;
    r.clients_cpu_s = own_cpu;
    r.fleetd_rss_start_bytes = rss_start;
    r.fleetd_rss_peak_bytes = peak_rss.load(Ordering::Relaxed).max(rss_end);
    r.fleetd_rss_end_bytes = rss_end;
    if let Some(status) = exited {
        r.fleetd_problems
            .push(format!("fleetd exited during the run ({status})"));
    }
    for line in log.lines().filter(|l| l.contains("panicked")).take(5) {
        r.fleetd_problems.push(format!("fleetd panicked: {line}"));
    }
    r.fleetd_log_errors = log.lines().filter(|l| l.contains("ERROR")).count();
    r.fleetd_log_error_sample = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(5)
        .map(str::to_string)
        .collect();
    match stop {
        Some(Ok(status)) if !status.success() => r.fleetd_problems.push(format!(
            "fleetd exited with {status} on SIGTERM after the run"
        )),
        Some(Err(e)) => r
            .fleetd_problems
            .push(format!("stopping fleetd after the run: {e:#}")),
        _ => {}
    }
    Ok(r)
}
