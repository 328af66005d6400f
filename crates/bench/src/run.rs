//! One benchmark run: hollow (or real) machines, the real engine and API server over one etcd,
//! and the measurements of the issue (time to active, steady load, listing, machine loss,
//! CPU and memory).

use crate::etcd_metrics::{self, Load};
use crate::hollow::HollowManager;
use crate::mix::{self, BenchUnit};
use crate::report::{Failover, Listing, RunReport, Supervised, Timeline};
use crate::sys;
use crate::tracker::Tracker;
use agent::presence::LeaseLosses;
use agent::{Agent, Presence, Shutdown, UnitManager};
use anyhow::Context;
use futures::StreamExt;
use registry::etcd::{EtcdOptions, EtcdStore};
use registry::{Change, MachineState, Registry, TargetState, Update};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// fleet's default `etcd_key_prefix`.
pub const PREFIX: &str = "/_coreos.com/fleet/";

/// How units are submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SubmitVia {
    /// `PUT /fleet/v1/units/<name>` to the API server (what fleetctl does).
    Api,
    /// `Registry::create_unit` directly.
    Registry,
    /// One `fleetctl start --no-block <files>` with every unit (fleet's own benchmark shape).
    Fleetctl,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub run: String,
    pub machines: usize,
    pub units: usize,
    pub global_percent: f64,
    pub agent_ttl: Duration,
    pub engine_interval: Duration,
    pub etcd_clients: usize,
    pub etcd_request_timeout: Duration,
    pub submit_via: SubmitVia,
    pub submit_concurrency: usize,
    pub steady: Duration,
    /// How long after every unit is active the settled RSS is read (at least the steady
    /// window and the listings).
    pub settle: Duration,
    /// Share of machines killed; 0 skips the machine-loss phase.
    pub kill_percent: f64,
    /// Longest wait for a phase to complete.
    pub deadline: Duration,
    pub token_limit: u16,
    pub list_attempts: usize,
    /// Real units through the process supervisor, with this log-forwarder executable.
    pub process_helper: Option<PathBuf>,
    pub fleetctl: Option<PathBuf>,
    /// State dirs and the API socket go here.
    pub work_dir: PathBuf,
    /// Where machines keep runtime files (on a tmpfs, as `/run` is under systemd).
    pub runtime_dir: PathBuf,
}

struct Machine {
    id: String,
    shutdown: watch::Sender<Option<Shutdown>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn machine_id(i: usize) -> String {
    // 32 hex digits like /etc/machine-id, distinct in their first 8 (fleetctl's short ids).
    format!("{:08x}{:024x}", 0xb000_0000u32 as usize + i, i)
}

async fn start_machine(
    i: usize,
    registry: Registry,
    opts: &Options,
    losses: &LeaseLosses,
) -> anyhow::Result<Machine> {
    let id = machine_id(i);
    let machine = MachineState {
        id: id.clone(),
        public_ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        metadata: BTreeMap::from([
            ("zone".to_string(), mix::zone_of(i, opts.machines)),
            ("bench".to_string(), "hollow".to_string()),
        ]),
        version: "fleet-bench".into(),
        disable_engine: true,
    };
    let state_dir = opts.work_dir.join("machines").join(&id);
    let presence = Presence::register(registry, machine, opts.agent_ttl, &state_dir)
        .await
        .with_context(|| format!("registering machine {id}"))?
        .with_lease_losses(losses.clone());
    let manager: Arc<dyn UnitManager> = match &opts.process_helper {
        Some(helper) => Arc::new(
            agent::process::ProcessUnitManager::open(
                supervisor::ProcessManager::builder(state_dir.join("process"))
                    .runtime_dir(opts.runtime_dir.join(&id).join("process"))
                    .helper(helper.clone()),
            )
            .with_context(|| format!("starting the process supervisor of {id}"))?,
        ),
        None => Arc::new(HollowManager::new()),
    };
    let (shutdown, rx) = watch::channel(None);
    let task = tokio::spawn(Agent::new(presence, manager).run(rx));
    Ok(Machine { id, shutdown, task })
}

async fn start_machines(
    range: std::ops::Range<usize>,
    registries: &[Registry],
    opts: &Options,
    losses: &LeaseLosses,
) -> anyhow::Result<Vec<Machine>> {
    let results: Vec<anyhow::Result<Machine>> = futures::stream::iter(range)
        .map(|i| start_machine(i, registries[i % registries.len()].clone(), opts, losses))
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Keeps `tracker` current from the published states of placed units, or of global units'
/// instances (`global`).
fn track_states(
    registry: &Registry,
    tracker: Arc<Mutex<Tracker>>,
    global: bool,
) -> tokio::task::JoinHandle<()> {
    // Global units' instances are computed from the machines' summaries and exceptions, as
    // the API lists them.
    let mut placed = (!global).then(|| registry.follow_placed_states());
    let mut instances = global.then(|| registry.follow_global_instances());
    tokio::spawn(async move {
        let active = |s: &registry::UnitState| s.systemd.active == "active";
        loop {
            let update = match (&mut placed, &mut instances) {
                (Some(f), _) => f.recv().await,
                (None, Some(f)) => f.recv().await,
                (None, None) => None,
            };
            let Some(update) = update else { break };
            let mut t = lock(&tracker);
            match update {
                Update::Reset(items) => {
                    t.clear(global);
                    for ((u, m), s) in &items {
                        t.apply(u, m, active(s));
                    }
                }
                Update::Changes(changes) => {
                    for change in &changes {
                        match change {
                            Change::Put((u, m), s) => t.apply(u, m, active(s)),
                            Change::Delete((u, m)) => t.remove(u, m),
                        }
                    }
                }
            }
        }
    })
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Samples the active count every 50 ms from `start` until everything is active on `live`
/// machines or the deadline passes; returns the time it took (if reached) and the samples.
async fn wait_all_active(
    tracker: Arc<Mutex<Tracker>>,
    live: usize,
    start: Instant,
    deadline: Duration,
) -> (Option<f64>, Timeline) {
    let mut timeline = Vec::new();
    loop {
        let (active, done) = {
            let t = lock(&tracker);
            (t.active(), t.done(live))
        };
        let now = start.elapsed().as_secs_f64();
        timeline.push((now, active));
        if done {
            return (Some(now), timeline);
        }
        if start.elapsed() > deadline {
            return (None, timeline);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(
    units: &[BenchUnit],
    opts: &Options,
    registry: &Registry,
    client: &api::Client,
    endpoint: &str,
) -> Vec<String> {
    if opts.submit_via == SubmitVia::Fleetctl {
        return submit_with_fleetctl(units, opts, endpoint)
            .await
            .err()
            .map(|e| vec![format!("{e:#}")])
            .unwrap_or_default();
    }
    let results: Vec<Result<(), String>> = futures::stream::iter(units)
        .map(|u| async move {
            match opts.submit_via {
                SubmitVia::Api => client
                    .create_or_update_unit(&api::types::Unit::new(
                        &u.name,
                        &u.file,
                        TargetState::Launched,
                    ))
                    .await
                    .map_err(|e| format!("submitting {}: {e}", u.name)),
                SubmitVia::Registry | SubmitVia::Fleetctl => registry
                    .create_unit(&u.name, &u.file, TargetState::Launched)
                    .await
                    .map_err(|e| format!("submitting {}: {e}", u.name)),
            }
        })
        .buffer_unordered(opts.submit_concurrency.max(1))
        .collect()
        .await;
    results.into_iter().filter_map(Result::err).collect()
}

/// Writes every unit to a file and starts them all with one `fleetctl start --no-block`.
async fn submit_with_fleetctl(
    units: &[BenchUnit],
    opts: &Options,
    endpoint: &str,
) -> anyhow::Result<()> {
    let fleetctl = opts
        .fleetctl
        .as_ref()
        .context("--submit-via fleetctl needs a fleetctl binary (build it, or pass --fleetctl)")?;
    let dir = opts.work_dir.join("unit-files");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut paths = Vec::with_capacity(units.len());
    for u in units {
        let path = dir.join(&u.name);
        std::fs::write(&path, u.file.serialize())
            .with_context(|| format!("writing {}", path.display()))?;
        paths.push(path);
    }
    let out = tokio::process::Command::new(fleetctl)
        .args(["--endpoint", endpoint, "start", "--no-block"])
        .args(&paths)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {}", fleetctl.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "fleetctl start failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn time_ms<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<(f64, T), String> {
    let t = Instant::now();
    let v = f.await.map_err(|e| e.to_string())?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, v))
}

async fn fleetctl_ms(fleetctl: &PathBuf, endpoint: &str, command: &str) -> Option<f64> {
    let t = Instant::now();
    let out = tokio::process::Command::new(fleetctl)
        .args(["--endpoint", endpoint, command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => Some(t.elapsed().as_secs_f64() * 1000.0),
        Ok(o) => {
            tracing::warn!(command, stderr = %String::from_utf8_lossy(&o.stderr), "fleetctl failed");
            None
        }
        Err(e) => {
            tracing::warn!(command, error = %e, "running fleetctl failed");
            None
        }
    }
}

async fn listing(opts: &Options, client: &api::Client, endpoint: &str) -> (Listing, Vec<String>) {
    let mut l = Listing::default();
    let mut errors = Vec::new();
    for _ in 0..opts.list_attempts {
        match time_ms(client.units()).await {
            Ok((ms, units)) => {
                l.list_unit_files_ms.push(ms);
                l.unit_files = units.len();
            }
            Err(e) => errors.push(format!("list-unit-files: {e}")),
        }
        match time_ms(client.unit_states(&api::client::StateFilter::default())).await {
            Ok((ms, states)) => {
                l.list_units_ms.push(ms);
                l.unit_states = states.len();
            }
            Err(e) => errors.push(format!("list-units: {e}")),
        }
    }
    if let Some(f) = &opts.fleetctl {
        l.fleetctl_list_unit_files_ms = fleetctl_ms(f, endpoint, "list-unit-files").await;
        l.fleetctl_list_units_ms = fleetctl_ms(f, endpoint, "list-units").await;
    }
    (l, errors)
}

async fn steady_load(metrics_url: &str, window: Duration) -> anyhow::Result<Load> {
    let before = etcd_metrics::scrape(metrics_url).await?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let after = etcd_metrics::scrape(metrics_url).await?;
    Ok(Load::between(&before, &after, t.elapsed().as_secs_f64()))
}

/// Waits until `n` machines are registered.
async fn wait_machines(registry: &Registry, n: usize, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let have = registry.machines(None).await?.items.len();
        if have >= n {
            return Ok(());
        }
        if start.elapsed() > deadline {
            anyhow::bail!("only {have} of {n} machines registered after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the benchmark against the etcd at `endpoint` (its `/metrics` at `metrics_url`; etcd's
/// process is `etcd_pid`).
pub async fn run(
    opts: &Options,
    endpoint: &str,
    metrics_url: &str,
    etcd_pid: Option<u32>,
) -> anyhow::Result<RunReport> {
    let mut report = RunReport {
        run: opts.run.clone(),
        manager: if opts.process_helper.is_some() {
            "process"
        } else {
            "hollow"
        }
        .into(),
        machines: opts.machines,
        units: opts.units,
        agent_ttl_s: opts.agent_ttl.as_secs_f64(),
        etcd_clients: opts.etcd_clients.max(1),
        submitted_via: format!("{:?}", opts.submit_via).to_lowercase(),
        submit_concurrency: opts.submit_concurrency,
        ..RunReport::default()
    };
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mut registries = Vec::new();
    for _ in 0..opts.etcd_clients.max(1) {
        let store = EtcdStore::connect(EtcdOptions {
            endpoints: vec![endpoint.to_string()],
            request_timeout: opts.etcd_request_timeout,
            ..EtcdOptions::default()
        })
        .await
        .context("connecting to etcd")?;
        registries.push(Registry::new(Arc::new(store), PREFIX));
    }
    let registry = registries[0].clone();

    // The API server, as fleetd serves it, on a unix socket.
    let socket = opts.work_dir.join("fleet.sock");
    let api_state = server::ApiState::new(registry.clone(), opts.token_limit);
    api_state.set_available(true);
    let listeners = server::listen::bind(&[server::listen::Listen::Unix(socket.clone())])
        .await
        .context("binding the API socket")?;
    let (api_stop, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(server::listen::serve(
        listeners,
        server::router(api_state),
        async move {
            let _ = api_stop_rx.await;
        },
    ));
    let api_endpoint = format!("unix://{}", socket.display());
    let client = api::Client::new(
        &api_endpoint,
        api::ClientOptions {
            request_timeout: Duration::from_secs(120),
        },
    )?;

    // The engine.
    let (engine_stop, engine_stop_rx) = watch::channel(false);
    let engine_task = tokio::spawn(engine::run(
        registry.clone(),
        engine::EngineConfig {
            machine_id: "fleet-bench-engine".into(),
            interval: opts.engine_interval,
            agent_ttl: opts.agent_ttl,
        },
        engine_stop_rx,
    ));

    let units = mix::units(opts.units, opts.machines, opts.global_percent);
    let globals: HashSet<String> = units
        .iter()
        .filter(|u| u.global)
        .map(|u| u.name.clone())
        .collect();
    report.global_units = globals.len();
    let tracker = Arc::new(Mutex::new(Tracker::new(
        globals.clone(),
        units.len() - globals.len(),
    )));
    report.expected_active = lock(&tracker).expected(opts.machines);
    let tracker_tasks =
        [false, true].map(|global| track_states(&registry, tracker.clone(), global));

    // Machines, in two halves to see what one more agent costs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.memory.rss_before_agents = sys::rss_bytes("self");
    let started = Instant::now();
    let half = opts.machines / 2;
    // Every machine counts its lost leases here.
    let losses = LeaseLosses::default();
    let mut machines = start_machines(0..half, &registries, opts, &losses).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.memory.rss_half_agents = sys::rss_bytes("self");
    machines.extend(start_machines(half..opts.machines, &registries, opts, &losses).await?);
    wait_machines(&registry, opts.machines, opts.deadline).await?;
    report.agents_start_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.memory.rss_all_agents = sys::rss_bytes("self");
    let m = &mut report.memory;
    let n = opts.machines.max(1) as u64;
    m.per_agent_idle = m.rss_all_agents.saturating_sub(m.rss_before_agents) / n;
    m.per_agent_marginal =
        m.rss_all_agents.saturating_sub(m.rss_half_agents) / (opts.machines - half).max(1) as u64;

    // Submit, and wait for every unit to be active.
    eprintln!(
        "{}: {} machines up in {:.2} s; submitting {} units",
        opts.run,
        opts.machines,
        report.agents_start_s,
        units.len()
    );
    // etcd's writes and keys from the first submission to all active: what the agents'
    // publications cost the registry.
    let writes_before = etcd_metrics::scrape(metrics_url).await.ok();
    let t0 = Instant::now();
    let waiter = tokio::spawn(wait_all_active(
        tracker.clone(),
        opts.machines,
        t0,
        opts.deadline,
    ));
    // A registry too slow to take the units would otherwise hold the run forever (each request
    // waits out its timeout in turn): past the deadline the run ends, saying how far it got.
    match tokio::time::timeout(
        opts.deadline,
        submit(&units, opts, &registry, &client, &api_endpoint),
    )
    .await
    {
        Ok(errors) => report.errors.extend(errors),
        Err(_) => report.errors.push(format!(
            "submitting {} units did not finish within the deadline of {:?} (--deadline)",
            units.len(),
            opts.deadline
        )),
    }
    report.submit_s = t0.elapsed().as_secs_f64();
    let (all_active, timeline) = waiter.await.context("waiting for units")?;
    report.all_active_s = all_active;
    report.units_per_s = all_active.map(|s| opts.units as f64 / s);
    report.timeline = timeline;
    eprintln!(
        "{}: submitted in {:.2} s, all active: {:?}",
        opts.run, report.submit_s, report.all_active_s
    );
    if let (Some(before), Ok(after)) = (writes_before, etcd_metrics::scrape(metrics_url).await) {
        let delta = |name: &str| after.total(name) - before.total(name);
        eprintln!(
            "{}: etcd from submission to all active: {} puts, {} deletes, {} txns; {} keys after",
            opts.run,
            delta("etcd_debugging_mvcc_put_total"),
            delta("etcd_debugging_mvcc_delete_total"),
            delta("etcd_debugging_mvcc_txn_total"),
            after.total("etcd_debugging_mvcc_keys_total"),
        );
        let requests =
            |s: &etcd_metrics::Sample| s.by_label("grpc_server_msg_received_total", "grpc_method");
        let (was, is) = (requests(&before), requests(&after));
        let by_method: Vec<String> = is
            .iter()
            .map(|(m, n)| (m, n - was.get(m).copied().unwrap_or(0.0)))
            .filter(|(_, n)| *n > 0.0)
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        eprintln!(
            "{}: etcd requests meanwhile: {}",
            opts.run,
            by_method.join(", ")
        );
        eprintln!(
            "{}: etcd meanwhile: {} watch events sent, {} proposals applied, {} WAL fsyncs",
            opts.run,
            delta("etcd_debugging_mvcc_events_total"),
            delta("etcd_server_proposals_applied_total"),
            delta("etcd_disk_wal_fsync_duration_seconds_count"),
        );
    }
    let burst_over = Instant::now();
    report.memory.rss_all_active = sys::rss_bytes("self");
    report.memory.anon_all_active = sys::rss_anon_bytes("self");
    report.memory.per_agent_loaded = report
        .memory
        .rss_all_active
        .saturating_sub(report.memory.rss_before_agents)
        / n;

    if report.all_active_s.is_some() {
        // Let the last publications and engine passes settle, then watch etcd idle.
        tokio::time::sleep(Duration::from_secs(2).max(opts.engine_interval)).await;
        match steady_load(metrics_url, opts.steady).await {
            Ok(load) => report.steady = Some(load),
            Err(e) => report.errors.push(format!("steady-state metrics: {e:#}")),
        }
        let (listing, errors) = listing(opts, &client, &api_endpoint).await;
        report.listing = listing;
        report.errors.extend(errors);
        if let Some(rest) = opts.settle.checked_sub(burst_over.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let m = &mut report.memory;
        m.settled_after_s = burst_over.elapsed().as_secs_f64();
        m.rss_settled = sys::rss_bytes("self");
        m.anon_settled = sys::rss_anon_bytes("self");
        eprintln!(
            "{}: RSS {:.1} MB when all active, {:.1} MB {:.0} s later",
            opts.run,
            m.rss_all_active as f64 / 1048576.0,
            m.rss_settled as f64 / 1048576.0,
            m.settled_after_s
        );
    }

    // Machine loss: stop 10% of the agents abruptly (no leave, no keep-alives).
    let kill = ((opts.machines as f64) * opts.kill_percent / 100.0).round() as usize;
    if report.all_active_s.is_some() && kill > 0 && kill < opts.machines {
        let victims: HashSet<usize> = (0..kill).map(|j| j * opts.machines / kill).collect();
        let dead: HashSet<String> = victims.iter().map(|&i| machines[i].id.clone()).collect();
        let units_to_move: usize = {
            let t = lock(&tracker);
            dead.iter().map(|m| t.placed_on(m).len()).sum()
        };
        let t_kill = Instant::now();
        for &i in &victims {
            machines[i].task.abort();
        }
        lock(&tracker).mark_dead(dead.clone());
        eprintln!(
            "{}: killed {} machines holding {} units",
            opts.run,
            dead.len(),
            units_to_move
        );
        let (moved, timeline) = wait_all_active(
            tracker.clone(),
            opts.machines - dead.len(),
            t_kill,
            opts.deadline.max(opts.agent_ttl * 3),
        )
        .await;
        report.failover = Some(Failover {
            killed_machines: dead.len(),
            units_to_move,
            all_active_elsewhere_s: moved,
            timeline,
        });
        machines.retain(|m| !dead.contains(&m.id));
    }

    // Read before the teardown, while every machine still runs.
    report.leases_lost = losses.count();
    if report.leases_lost > 0 {
        eprintln!(
            "{}: {} machine leases lost during the run",
            opts.run, report.leases_lost
        );
    }
    report.cpu_s = sys::cpu_seconds();
    if opts.process_helper.is_some() {
        let ((forwarders, forwarders_cpu_s), (unit_processes, units_cpu_s)) =
            sys::children_cpu_seconds(supervisor::log::HELPER_ARG, etcd_pid);
        report.supervised = Some(Supervised {
            forwarders,
            forwarders_cpu_s,
            unit_processes,
            units_cpu_s,
            units: lock(&tracker).expected(machines.len()),
        });
    }
    report.memory.peak_rss = sys::peak_rss_bytes();
    if let Some(pid) = etcd_pid {
        report.etcd_cpu_s = sys::process_cpu_seconds(pid);
        report.etcd_rss = sys::rss_bytes(&pid.to_string());
    }

    // Tear down: real units are stopped (the machines leave); hollow ones just end.
    let leave = opts.process_helper.is_some();
    for m in &machines {
        if leave {
            let _ = m.shutdown.send(Some(Shutdown::Leave));
        } else {
            m.task.abort();
        }
    }
    for m in machines {
        match tokio::time::timeout(Duration::from_secs(60), m.task).await {
            Ok(Ok(Err(e))) if leave => report
                .errors
                .push(format!("machine {} leaving: {e:#}", m.id)),
            Err(_) if leave => report
                .errors
                .push(format!("machine {} did not leave within 60 s", m.id)),
            _ => {}
        }
    }
    let _ = engine_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), engine_task).await;
    for task in tracker_tasks {
        task.abort();
    }
    let _ = api_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), api_task).await;
    Ok(report)
}
