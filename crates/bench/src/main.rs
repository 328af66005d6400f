//! `fleet-bench`: starts a real etcd, the engine, the API server and hollow machines in this
//! process, submits a mix of units and prints what it measured.
//!
//! ```sh
//! cargo run --release -p fleet-bench -- --machines 100 --units 1000
//! cargo run --release -p fleet-bench -- --machines 1000 --units 10000
//! cargo run --release -p fleet-bench -- --smoke                  # CI: exit 0 iff all became active
//! cargo run --release -p fleet-bench -- --process                # 3 machines x 1,000 real units
//! cargo run --release -p fleet-bench -- --process --submit-via fleetctl   # fleet's own shape:
//!                                          # one `fleetctl start --no-block` with 1,000 files
//! cargo run -p fleet-bench -- load --clients 200 --seconds 60 --registry etcd   # API load test
//! ```
//!
//! Figures go to stdout (a table), `target/bench/<run>.json` and `target/bench/<run>-*.svg`.

use anyhow::Context;
use clap::Parser;
use fleet_bench::load::{self, LoadOptions, RegistryKind};
use fleet_bench::report;
use fleet_bench::run::{self, Options, SubmitVia};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "fleet-bench",
    about = "fleet's scale benchmark with hollow machines",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    scale: ScaleArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// A load test of the API: one real fleetd, concurrent clients listing and changing units;
    /// exit 0 iff every answer was clean and no acknowledged update was lost.
    Load(LoadArgs),
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Concurrent API clients, each with its own connection.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// How long the clients run, seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// fleetd's registry: the embedded store, or a real etcd this command starts.
    #[arg(long, value_enum, default_value_t = RegistryKind::Embedded)]
    registry: RegistryKind,
    /// Units launched at once, at most (each is a real process).
    #[arg(long, default_value_t = 32)]
    max_launched: usize,
    /// Units each client holds at once, at most.
    #[arg(long, default_value_t = 3)]
    units_per_client: usize,
    /// The clients' request timeout, seconds (a slower answer counts as an error).
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// fleetd's peak RSS bound, MiB.
    #[arg(long, default_value_t = load::DEFAULT_RSS_BOUND / (1024 * 1024))]
    rss_bound_mib: u64,
    /// The fleetd binary [default: fleetd beside this binary, else `cargo build -p fleetd`].
    #[arg(long)]
    fleetd: Option<PathBuf>,
    /// Where the JSON report goes [default: <workspace>/target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ScaleArgs {
    /// Hollow machines (agents) to run [default: 100; 3 with --process].
    #[arg(long)]
    machines: Option<usize>,
    /// Units to submit [default: 1000].
    #[arg(long)]
    units: Option<usize>,
    /// CI mode: 100 x 1,000 with a short steady-state window; no goals, exit 0 iff everything
    /// became active (and moved after the machine loss).
    #[arg(long)]
    smoke: bool,
    /// Real units through the process supervisor (`supervisor::ProcessManager`) instead of
    /// hollow ones; no machine loss (the killed machines' processes would keep running).
    #[arg(long)]
    process: bool,
    /// Share of units that are global (run on every machine), in percent.
    #[arg(long, default_value_t = 1.0)]
    global_percent: f64,
    /// The agents' `agent_ttl`, seconds.
    #[arg(long, default_value_t = 10.0)]
    agent_ttl: f64,
    /// `engine_reconcile_interval`, seconds.
    #[arg(long, default_value_t = 2.0)]
    engine_interval: f64,
    /// etcd client connections the machines share (round robin) [default: min(machines, 8)].
    #[arg(long)]
    etcd_clients: Option<usize>,
    /// `etcd_request_timeout`, seconds.
    #[arg(long, default_value_t = 5.0)]
    etcd_request_timeout: f64,
    /// Submit through the API server (as fleetctl) or straight into the registry.
    #[arg(long, value_enum, default_value_t = SubmitVia::Api)]
    submit_via: SubmitVia,
    /// Submissions in flight.
    #[arg(long, default_value_t = 32)]
    submit_concurrency: usize,
    /// Steady-state window, seconds [default: 10; 2 with --smoke].
    #[arg(long)]
    steady: Option<f64>,
    /// Seconds after every unit is active to read the settled RSS (at least the steady window
    /// and the listings) [default: 35, past fleetd's first release of freed memory; 0 with
    /// --smoke].
    #[arg(long)]
    settle: Option<f64>,
    /// Share of machines killed, in percent (0: skip).
    #[arg(long, default_value_t = 10.0)]
    kill_percent: f64,
    /// Longest wait for a phase, seconds.
    #[arg(long, default_value_t = 300.0)]
    deadline: f64,
    /// The API server's `token_limit` (page size).
    #[arg(long, default_value_t = 100)]
    token_limit: u16,
    /// A flag for etcd, repeatable (`--etcd-arg=--quota-backend-bytes=8589934592`): how an
    /// operator would tune etcd for a registry of a million keys [default: etcd's defaults].
    #[arg(long = "etcd-arg", allow_hyphen_values = true)]
    etcd_args: Vec<String>,
    /// Times each listing is read.
    #[arg(long, default_value_t = 3)]
    list_attempts: usize,
    /// A `fleetctl` binary to time as well [default: fleetctl beside this binary, if built].
    #[arg(long)]
    fleetctl: Option<PathBuf>,
    /// Where the JSON and SVG go [default: <workspace>/target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name of the run (file names) [default: <manager>-<machines>x<units>].
    #[arg(long)]
    run: Option<String>,
}

fn beside_me(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.is_file().then_some(p)
}

fn main() -> ExitCode {
    // The engine, API and agents run in this process as in fleetd, with fleetd's malloc
    // settings, so that its RSS stands for theirs.
    fleetd::memory::limit_arenas();
    // With --process, this binary can serve as the supervisor's log forwarder.
    supervisor::run_helper_if_requested();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let result = match cli.command {
        Some(Command::Load(args)) => load_main(args),
        None => main_result(cli.scale),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main_result(cli: ScaleArgs) -> anyhow::Result<bool> {
    let machines = cli.machines.unwrap_or(if cli.process { 3 } else { 100 });
    let units = cli.units.unwrap_or(1000);
    let (machines, units) = if cli.smoke {
        (100, 1000)
    } else {
        (machines, units)
    };
    let manager = if cli.process { "process" } else { "hollow" };
    let run_name = cli.run.clone().unwrap_or_else(|| {
        let kind = if cli.smoke { "smoke" } else { manager };
        format!("{kind}-{machines}x{units}")
    });
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench"));
    let work = tempfile::Builder::new()
        .prefix("fleet-bench-")
        .tempdir()
        .context("creating a work dir")?;
    // fleetd keeps the process supervisor's unit files and run records in its runtime directory
    // (`/run/fleet/units/process`), a tmpfs on a systemd host; the bench's machines keep
    // theirs on a tmpfs too (`/run` if it is one, else `/dev/shm`).
    let runtime = tempfile::Builder::new()
        .prefix("fleet-bench-run-")
        .tempdir_in(tmpfs_dir())
        .context("creating a runtime dir")?;
    let process_helper = if cli.process {
        Some(match beside_me("fleet-process-helper") {
            Some(h) => h,
            None => std::env::current_exe().context("finding this executable")?,
        })
    } else {
        None
    };
    let opts = Options {
        run: run_name.clone(),
        machines,
        units,
        global_percent: cli.global_percent,
        agent_ttl: Duration::from_secs_f64(cli.agent_ttl),
        engine_interval: Duration::from_secs_f64(cli.engine_interval),
        etcd_clients: cli.etcd_clients.unwrap_or(machines.clamp(1, 8)),
        etcd_request_timeout: Duration::from_secs_f64(cli.etcd_request_timeout),
        submit_via: cli.submit_via,
        submit_concurrency: cli.submit_concurrency,
        steady: Duration::from_secs_f64(cli.steady.unwrap_or(if cli.smoke { 2.0 } else { 10.0 })),
        settle: Duration::from_secs_f64(cli.settle.unwrap_or(if cli.smoke { 0.0 } else { 35.0 })),
        kill_percent: if cli.process { 0.0 } else { cli.kill_percent },
        deadline: Duration::from_secs_f64(cli.deadline),
        token_limit: cli.token_limit,
        list_attempts: cli.list_attempts,
        process_helper,
        fleetctl: cli.fleetctl.clone().or_else(|| beside_me("fleetctl")),
        work_dir: work.path().to_path_buf(),
        runtime_dir: runtime.path().to_path_buf(),
    };

    // etcd first: starting it blocks, and the runtime should not be busy meanwhile.
    let etcd =
        testkit::etcd::EtcdCluster::single_with_args(&cli.etcd_args).context("starting etcd")?;
    let member = etcd.member(0);
    let endpoint = member.endpoint();
    let metrics_url = format!("{endpoint}/metrics");
    let etcd_pid = member.pid();
    eprintln!(
        "{run_name}: etcd {endpoint} (data in {}), {machines} {manager} machines, {units} units",
        etcd.dir().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.spawn(fleetd::memory::release_periodically());
    let report = runtime.block_on(run::run(&opts, &endpoint, &metrics_url, etcd_pid))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(etcd);

    println!("{}", report::table(&report));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join(format!("{run_name}.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let mut marks = vec![(report.submit_s, "submitted")];
    if report.all_active_s.is_none() {
        marks.push((opts.deadline.as_secs_f64(), "deadline"));
    }
    let svg = out.join(format!("{run_name}-submit.svg"));
    std::fs::write(
        &svg,
        report::svg(
            &format!("{run_name}: units active after submitting {units}"),
            &report.timeline,
            report.expected_active,
            &marks,
        ),
    )
    .with_context(|| format!("writing {}", svg.display()))?;
    let mut written = vec![json, svg];
    if let Some(f) = &report.failover {
        let expected = report.expected_active - report.global_units * f.killed_machines;
        let path = out.join(format!("{run_name}-failover.svg"));
        std::fs::write(
            &path,
            report::svg(
                &format!(
                    "{run_name}: units active after killing {} machines (agent_ttl {:.0} s)",
                    f.killed_machines, report.agent_ttl_s
                ),
                &f.timeline,
                expected,
                &[(report.agent_ttl_s, "agent_ttl")],
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(report.ok())
}

fn load_main(args: LoadArgs) -> anyhow::Result<bool> {
    let fleetd = match args.fleetd {
        Some(f) => f,
        None => load::fleetd_binary()?,
    };
    let opts = LoadOptions {
        clients: args.clients,
        duration: Duration::from_secs_f64(args.seconds),
        max_launched: args.max_launched,
        units_per_client: args.units_per_client,
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        rss_bound: args.rss_bound_mib * 1024 * 1024,
        ..LoadOptions::new(args.registry, fleetd)
    };
    let etcd = match args.registry {
        RegistryKind::Etcd => Some(testkit::etcd::EtcdCluster::single().context("starting etcd")?),
        RegistryKind::Embedded => None,
    };
    let endpoint = etcd.as_ref().map(|e| e.member(0).endpoint());
    let report = load::run_blocking(&opts, endpoint.as_deref())?;
    drop(etcd);
    println!("{}", report.table());
    let out = args
        .out
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join(format!("load-{}.json", args.registry.as_str()));
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!("wrote {}", json.display());
    Ok(report.problems().is_empty())
}

/// A directory on a tmpfs: `/run` where systemd mounted one, else `/dev/shm`, else the temp dir.
fn tmpfs_dir() -> PathBuf {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    ["/run", "/dev/shm"]
        .iter()
        .map(PathBuf::from)
        .find(|d| statfs(d).is_ok_and(|st| st.filesystem_type() == TMPFS_MAGIC))
        .unwrap_or_else(std::env::temp_dir)
}
