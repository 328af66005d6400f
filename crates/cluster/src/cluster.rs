//! A cluster of fleetd processes on loopback over a real etcd.

use crate::binary::fleetd_binary;
use crate::cleanup;
use crate::machine::{Launch, Machine, UnitManagerKind};
use anyhow::{bail, Context, Result};
use api::types::{Unit, UnitState};
use registry::etcd::{EtcdOptions, EtcdStore};
use registry::Registry;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::etcd::EtcdCluster;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub machines: usize,
    /// 1 or 3.
    pub etcd_members: usize,
    pub agent_ttl: Duration,
    pub engine_interval: Duration,
    /// Metadata per machine, by index, added to `host=m<index>`; missing entries add nothing.
    pub metadata: Vec<BTreeMap<String, String>>,
    pub unit_manager: UnitManagerKind,
    /// More fleetd flags for every machine.
    pub extra_args: Vec<String>,
}

impl Default for ClusterSpec {
    /// Three machines, one etcd member, `agent_ttl` 3 s and a 1 s engine interval (fleet's
    /// functional-test settings), the process unit manager.
    fn default() -> Self {
        ClusterSpec {
            machines: 3,
            etcd_members: 1,
            agent_ttl: Duration::from_secs(3),
            engine_interval: Duration::from_secs(1),
            metadata: Vec::new(),
            unit_manager: UnitManagerKind::Process,
            extra_args: Vec::new(),
        }
    }
}

impl ClusterSpec {
    /// The default cluster, one machine per entry, each with metadata `region=<entry>`: what
    /// the scenario tests use to steer units to some machines and keep others free.
    pub fn with_regions(regions: &[&str]) -> ClusterSpec {
        ClusterSpec {
            machines: regions.len(),
            metadata: regions
                .iter()
                .map(|r| BTreeMap::from([("region".to_string(), r.to_string())]))
                .collect(),
            ..Default::default()
        }
    }
}

/// How long the wait helpers wait by default before failing: generous, since the suite runs
/// many clusters at once on a small machine. They return as soon as the condition holds.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// How often the wait helpers poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `work` while taking `sample` every [`POLL_INTERVAL`]; returns the samples taken (failed
/// ones left out) and what `work` gave: what the cluster looked like while a command ran.
pub async fn sample_while<T, S, SF, W>(mut sample: S, work: W) -> (Vec<T>, W::Output)
where
    S: FnMut() -> SF,
    SF: Future<Output = Result<T>>,
    W: Future,
{
    let mut seen = Vec::new();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return (seen, out),
            taken = async {
                let taken = sample().await;
                tokio::time::sleep(POLL_INTERVAL).await;
                taken
            } => {
                if let Ok(s) = taken {
                    seen.push(s);
                }
            }
        }
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`, or fails after `deadline`
/// naming `what` and the last value seen (through `check`'s `Err`).
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let end = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) => {
                if Instant::now() >= end {
                    bail!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Units active per machine: unit name -> machine ids where systemd says `active`.
pub type ActiveUnits = BTreeMap<String, Vec<String>>;

/// Polls `read` until `pred` holds for the active units it gives, or fails after `deadline`
/// saying what was active last (the count, and the first few units).
pub(crate) async fn wait_until_active<F, Fut>(
    what: &str,
    deadline: Duration,
    read: F,
    pred: impl Fn(&ActiveUnits) -> bool,
) -> Result<ActiveUnits>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<ActiveUnits>>,
{
    wait_for(what, deadline, || async {
        let active = read().await.map_err(|e| format!("{e:#}"))?;
        if pred(&active) {
            Ok(active)
        } else {
            let first: Vec<_> = active.iter().take(8).collect();
            Err(format!("{} units active, first: {first:?}", active.len()))
        }
    })
    .await
}

/// A running cluster: etcd, fleetds, their dirs. Dropping it kills every fleetd and every unit
/// process they started and removes the dirs, also when the test panics (then it first prints
/// each machine's log tail and the registry's keys).
pub struct Cluster {
    machines: Vec<Machine>,
    launch: Arc<Launch>,
    /// The harness's own view of the registry (what tests check beside the API).
    registry: Registry,
    tag: String,
    // Dropped last: processes die before their directories go.
    etcd: EtcdCluster,
    dir: tempfile::TempDir,
}

fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:08x}{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cluster {
    /// Starts etcd and `spec.machines` fleetds and waits until every machine is registered.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        let binary = tokio::task::spawn_blocking(fleetd_binary)
            .await
            .context("building fleetd")??;
        let members = spec.etcd_members;
        let etcd = tokio::task::spawn_blocking(move || EtcdCluster::start(members))
            .await
            .context("starting etcd")??;
        let tag = unique_tag();
        let dir = tempfile::Builder::new()
            .prefix("fleet-cluster-")
            .tempdir()
            .context("creating the cluster's temp dir")?;
        let store = EtcdStore::connect(EtcdOptions {
            endpoints: etcd.endpoints(),
            request_timeout: Duration::from_secs(2),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        })
        .await
        .context("connecting the harness to etcd")?;
        let launch = Arc::new(Launch {
            binary,
            etcd_servers: etcd.endpoints(),
            key_prefix: format!("/fleet-cluster-{tag}/"),
            agent_ttl: spec.agent_ttl,
            engine_interval: spec.engine_interval,
            unit_manager: spec.unit_manager,
            extra_args: spec.extra_args.clone(),
        });
        let registry = Registry::new(Arc::new(store), &launch.key_prefix);
        let mut cluster = Cluster {
            machines: Vec::new(),
            launch,
            registry,
            tag,
            etcd,
            dir,
        };
        for i in 0..spec.machines {
            let metadata = spec.metadata.get(i).cloned().unwrap_or_default();
            cluster.add_machine(metadata).await?;
        }
        cluster.wait_for_machines(spec.machines).await?;
        Ok(cluster)
    }

    /// Starts one more machine (index = the number of machines so far) with `metadata` beside
    /// `host=m<index>`, and waits until its API answers. Returns its index.
    pub async fn add_machine(&mut self, metadata: BTreeMap<String, String>) -> Result<usize> {
        let index = self.machines.len();
        let mut all = BTreeMap::from([("host".to_string(), format!("m{index}"))]);
        all.extend(metadata);
        // Same prefix for the whole cluster so machine ids sort by index, as the scheduler's
        // tie-break (lowest id first) then follows the index.
        let id = format!("{:0>24}{index:08x}", self.tag);
        let id = id[id.len() - 32..].to_string();
        let machine = Machine::new(
            index,
            id,
            all,
            self.dir.path().join(format!("m{index}")),
            self.launch.clone(),
        )?;
        machine.start().await?;
        self.machines.push(machine);
        Ok(index)
    }

    pub fn machine(&self, i: usize) -> &Machine {
        &self.machines[i]
    }

    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// The index of the machine with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.id == id)
    }

    /// An API client of machine `i`.
    pub fn client(&self, i: usize) -> api::Client {
        self.machines[i].client()
    }

    /// The tag the harness's units carry (pass it to [`crate::units::service`]).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The etcd key prefix of this cluster.
    pub fn key_prefix(&self) -> &str {
        &self.launch.key_prefix
    }

    pub fn etcd(&self) -> &EtcdCluster {
        &self.etcd
    }

    pub fn etcd_mut(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }

    /// A tagged long-running service (see [`crate::units::service`]).
    pub fn service(&self, name: &str, x_fleet: &[(&str, &str)]) -> Unit {
        crate::units::service(name, &self.tag, x_fleet)
    }

    /// Runs `call` against the first serving machine that answers, trying each in turn (a
    /// killed or paused machine does not answer).
    pub async fn api<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(api::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, api::ClientError>>,
    {
        let mut errors = Vec::new();
        for m in self.machines.iter().filter(|m| m.is_serving()) {
            match call(m.client()).await {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(format!("machine {}: {e}", m.index)),
            }
        }
        bail!("no machine answered: {}", errors.join("; "))
    }

    /// Submits units through any serving machine.
    pub async fn submit(&self, units: &[Unit]) -> Result<()> {
        for u in units {
            self.api(|c| async move { c.create_or_update_unit(u).await })
                .await
                .with_context(|| format!("submitting {}", u.name))?;
        }
        Ok(())
    }

    /// Every unit as the API lists it.
    pub async fn units(&self) -> Result<Vec<Unit>> {
        self.api(|c| async move { c.units().await }).await
    }

    /// Every published unit state.
    pub async fn unit_states(&self) -> Result<Vec<UnitState>> {
        self.api(|c| async move { c.unit_states(&Default::default()).await })
            .await
    }

    /// Units that systemd (or the process manager) reports `active`, with their machines.
    pub async fn active_units(&self) -> Result<ActiveUnits> {
        let mut out = ActiveUnits::new();
        for s in self.unit_states().await? {
            if s.systemd_active_state == "active" {
                out.entry(s.name).or_default().push(s.machine_id);
            }
        }
        Ok(out)
    }

    /// The machine the engine placed `name` on, per the API (`None` if unplaced).
    pub async fn unit_placement(&self, name: &str) -> Result<Option<String>> {
        let unit = self
            .api(|c| async move { c.unit(name).await })
            .await?
            .with_context(|| format!("unit {name} does not exist"))?;
        Ok(Some(unit.machine_id).filter(|m| !m.is_empty()))
    }

    /// Waits until the API lists exactly `n` machines; returns their ids, sorted.
    pub async fn wait_for_machines(&self, n: usize) -> Result<Vec<String>> {
        wait_for(&format!("{n} machines"), DEFAULT_DEADLINE, || async {
            let ids: Vec<String> = self
                .api(|c| async move { c.machines().await })
                .await
                .map_err(|e| format!("{e:#}"))?
                .into_iter()
                .map(|m| m.id)
                .collect();
            if ids.len() == n {
                Ok(ids)
            } else {
                Err(format!("{ids:?}"))
            }
        })
        .await
    }

    /// Waits until the active units satisfy `pred`; returns them.
    pub async fn wait_for_active_units(
        &self,
        what: &str,
        pred: impl Fn(&ActiveUnits) -> bool,
    ) -> Result<ActiveUnits> {
        self.wait_for_active_units_within(what, DEFAULT_DEADLINE, pred)
            .await
    }

    /// [`Self::wait_for_active_units`] with its own deadline.
    pub async fn wait_for_active_units_within(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&ActiveUnits) -> bool,
    ) -> Result<ActiveUnits> {
        wait_until_active(what, deadline, || self.active_units(), pred).await
    }

    /// Every key under the cluster's prefix with its value (lossy UTF-8), read from etcd.
    pub async fn registry_dump(&self) -> Result<Vec<(String, String)>> {
        self.registry.dump().await.context("reading the registry")
    }

    /// The engine's schedule as (machine id, unit) pairs, sorted.
    pub async fn schedule_entries(&self) -> Result<Vec<(String, String)>> {
        let schedule = self
            .registry
            .schedule(None)
            .await
            .context("reading the schedule")?;
        Ok(schedule.items.into_keys().collect())
    }

    /// unit -> machine id for every placed unit, as the engine wrote it.
    pub async fn placements(&self) -> Result<BTreeMap<String, String>> {
        let placements = self
            .registry
            .placements(None)
            .await
            .context("reading the placements")?;
        Ok(placements.items)
    }

    /// The machine id of the engine leader, if one leads.
    pub async fn leader(&self) -> Result<Option<String>> {
        self.registry
            .leader()
            .await
            .context("reading the engine leader")
    }

    /// Waits until a machine that serves leads the engine; returns its index.
    pub async fn wait_for_leader(&self) -> Result<usize> {
        wait_for("an engine leader", DEFAULT_DEADLINE, || async {
            let leader = self.leader().await.map_err(|e| format!("{e:#}"))?;
            match leader.as_deref().and_then(|id| self.index_of(id)) {
                Some(i) if self.machines[i].is_serving() => Ok(i),
                _ => Err(format!("leader key {leader:?}")),
            }
        })
        .await
    }

    /// Prints what helps to understand a failure: each machine's log tail and the registry.
    pub fn print_diagnostics(&self) {
        for m in &self.machines {
            eprintln!(
                "----- machine {} ({}) fleetd log tail ({}) -----\n{}",
                m.index,
                m.id,
                m.log_path().display(),
                m.log_tail(40)
            );
        }
        for (i, member) in self.etcd.members().iter().enumerate() {
            eprintln!(
                "----- etcd member {i} log tail -----\n{}",
                member.log_tail(5)
            );
        }
        // The test's runtime may be the one panicking: read etcd from a thread of our own.
        let registry = self.registry.clone();
        let dump = std::thread::spawn(move || -> Result<Vec<(String, String)>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let dump = tokio::time::timeout(Duration::from_secs(5), registry.dump())
                    .await
                    .context("etcd did not answer within 5 s")??;
                Ok(dump)
            })
        })
        .join();
        eprintln!("----- registry under {} -----", self.launch.key_prefix);
        match dump {
            Ok(Ok(kvs)) => {
                for (k, v) in kvs {
                    let v: String = v.escape_debug().take(200).collect();
                    eprintln!("{k} = {v}");
                }
            }
            Ok(Err(e)) => eprintln!("(cannot read the registry: {e:#})"),
            Err(_) => eprintln!("(reading the registry panicked)"),
        }
    }

    /// Kills every fleetd and every unit process they started. Drop does this too.
    pub fn kill_everything(&self) {
        for m in &self.machines {
            m.kill();
        }
        for m in &self.machines {
            cleanup::kill_recorded_units(&m.process_runtime_dir());
        }
        cleanup::kill_tagged(&self.tag, self.dir.path());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        self.kill_everything();
        // etcd and the temp dir go with the remaining fields.
    }
}
