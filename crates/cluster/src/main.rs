//! `fleet-cluster up --machines 3`: a local fleet cluster for manual runs. Prints each machine's
//! endpoints and command line; Ctrl-C (or SIGTERM) tears everything down.

use clap::{Parser, Subcommand};
use cluster::{Cluster, ClusterSpec};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "fleet-cluster",
    about = "Run a local fleet cluster (etcd + fleetds on loopback)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster and keep it running until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        machines: usize,
        /// etcd members: 1 or 3.
        #[arg(long, default_value_t = 1)]
        etcd_members: usize,
        /// agent_ttl in seconds.
        #[arg(long, default_value_t = 3.0)]
        agent_ttl: f64,
        /// engine_reconcile_interval in seconds.
        #[arg(long, default_value_t = 1.0)]
        engine_interval: f64,
        /// Metadata for machine N: `N:key=value,key=value` (repeatable).
        #[arg(long = "metadata", value_name = "N:K=V,...")]
        metadata: Vec<String>,
    },
}

fn parse_metadata(specs: &[String]) -> Result<Vec<BTreeMap<String, String>>, String> {
    let mut out: Vec<BTreeMap<String, String>> = Vec::new();
    for spec in specs {
        let (index, pairs) = spec
            .split_once(':')
            .ok_or_else(|| format!("--metadata {spec:?}: want N:key=value,..."))?;
        let index: usize = index
            .parse()
            .map_err(|_| format!("--metadata {spec:?}: {index:?} is not a machine index"))?;
        if out.len() <= index {
            out.resize(index + 1, BTreeMap::new());
        }
        for pair in pairs.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("--metadata {spec:?}: {pair:?} has no '='"))?;
            out[index].insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

async fn up(spec: ClusterSpec) -> anyhow::Result<()> {
    let cluster = Cluster::start(spec).await?;
    println!("etcd: {}", cluster.etcd().endpoints().join(","));
    println!("key prefix: {}", cluster.key_prefix());
    for m in cluster.machines() {
        println!(
            "machine {} id={} ip={} api={} {} log={}",
            m.index,
            m.id,
            m.ip,
            m.endpoint(),
            m.tcp_endpoint(),
            m.log_path().display()
        );
        println!("  {}", m.command_line());
    }
    println!(
        "try: FLEETCTL_ENDPOINT={} fleetctl list-machines",
        cluster.machine(0).endpoint()
    );
    println!("Ctrl-C stops the cluster.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping");
    drop(cluster);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Up {
        machines,
        etcd_members,
        agent_ttl,
        engine_interval,
        metadata,
    } = cli.command;
    let metadata = match parse_metadata(&metadata) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fleet-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Ok(agent_ttl), Ok(engine_interval)) = (
        Duration::try_from_secs_f64(agent_ttl),
        Duration::try_from_secs_f64(engine_interval),
    ) else {
        eprintln!("fleet-cluster: --agent-ttl and --engine-interval want seconds, e.g. 3");
        return ExitCode::FAILURE;
    };
    let spec = ClusterSpec {
        machines,
        etcd_members,
        agent_ttl,
        engine_interval,
        metadata,
        ..Default::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-cluster: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(up(spec)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}
