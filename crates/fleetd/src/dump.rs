//! SIGUSR1: a readable account of fleetd's state in its log, as fleet dumped its agent's and
//! engine's state and went on. The cluster as the registry has it (machines, units with their
//! desired and current states), then this machine's agent and engine as their drivers tell it.

use registry::Registry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long each part of a dump may take: a registry or a driver that does not answer leaves a
/// note in the dump instead of holding it up.
const PART_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a dump asks this machine's agent and engine for their parts.
#[derive(Clone)]
pub struct Dumpers {
    pub agent: mpsc::Sender<agent::agent::DumpRequest>,
    /// `None` when this machine runs no engine (`disable_engine`).
    pub engine: Option<mpsc::Sender<engine::DumpRequest>>,
}

/// The whole dump, as logged.
pub async fn dump(registry: &Registry, machine_id: &str, dumpers: &Dumpers) -> String {
    let mut text = format!(
        "state dump of fleetd {} on machine {machine_id}\n",
        crate::daemon::VERSION
    );
    match tokio::time::timeout(PART_TIMEOUT, cluster(registry)).await {
        Ok(Ok(part)) => text.push_str(&part),
        Ok(Err(e)) => {
            let _ = writeln!(text, "cluster: the registry could not be read: {e:#}");
        }
        Err(_) => {
            let _ = writeln!(
                text,
                "cluster: the registry did not answer within {PART_TIMEOUT:?}"
            );
        }
    }
    text.push_str(&ask("agent", &dumpers.agent).await);
    match &dumpers.engine {
        Some(engine) => text.push_str(&ask("engine", engine).await),
        None => text.push_str("engine: disabled on this machine (disable_engine)\n"),
    }
    text
}

/// The cluster as the registry has it.
async fn cluster(registry: &Registry) -> anyhow::Result<String> {
    let machines = registry.machines(None).await?.items;
    let units = registry.unit_views(None).await?.items;
    let states = registry.unit_states(None).await?.items;
    let mut text = String::new();
    let _ = writeln!(text, "cluster: {} machines", machines.len());
    for m in &machines {
        let metadata: Vec<String> = m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            text,
            "  {} public IP {}, metadata {}, version {}{}",
            m.id,
            or_dash(&m.public_ip),
            or_dash(&metadata.join(",")),
            or_dash(&m.version),
            if m.disable_engine {
                ", engine disabled"
            } else {
                ""
            }
        );
    }
    let mut by_unit: BTreeMap<&str, Vec<&registry::UnitState>> = BTreeMap::new();
    for s in &states {
        by_unit.entry(s.name.as_str()).or_default().push(s);
    }
    let _ = writeln!(text, "cluster: {} units", units.len());
    for u in &units {
        let job = &u.unit.job;
        let _ = write!(
            text,
            "  {}: desired {}, current {}, machine {}",
            job.name,
            job.desired,
            u.current.map_or("-".to_string(), |c| c.to_string()),
            u.machine.as_deref().unwrap_or("-"),
        );
        for s in by_unit.get(job.name.as_str()).into_iter().flatten() {
            let _ = write!(
                text,
                ", on {}: {}/{}/{}",
                s.machine_id, s.systemd.load, s.systemd.active, s.systemd.sub
            );
            if let Some(reason) = &s.reason {
                let _ = write!(text, " ({reason})");
            }
        }
        if let Some(reason) = &u.reason {
            let _ = write!(text, ", not placed: {reason}");
        }
        text.push('\n');
    }
    Ok(text)
}

/// One driver's part: its answer, or why there is none.
async fn ask(part: &str, requests: &mpsc::Sender<oneshot::Sender<String>>) -> String {
    let (reply, answer) = oneshot::channel();
    if requests.send(reply).await.is_err() {
        return format!("{part}: stopped\n");
    }
    match tokio::time::timeout(PART_TIMEOUT, answer).await {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => format!("{part}: stopped before answering\n"),
        Err(_) => format!("{part}: busy, no answer within {PART_TIMEOUT:?}\n"),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
