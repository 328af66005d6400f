//! Clusters of real-systemd machines: each machine a `systemd-nspawn` container (testkit)
//! running fleetd as a service with the systemd unit manager, all on one etcd on the host. The
//! containers share the host's network, so they reach etcd and serve the API on 127.0.0.1.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cluster::nspawn::{NspawnCluster, NspawnSpec};
//! let c = tokio::task::block_in_place(|| NspawnCluster::start(NspawnSpec::machines(3)))?;
//! c.submit(&[cluster::units::service("a.service", c.tag(), &[])]).await?;
//! c.wait_active("a active", |a| a.contains_key("a.service")).await?;
//! let real = c.systemd_units(0, "a")?;   // what the container's systemd itself says
//! # let _ = real; Ok(()) }
//! ```

use crate::{wait_for, ActiveUnits, DEFAULT_DEADLINE};
use anyhow::{ensure, Context, Result};
use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::etcd::EtcdCluster;
use testkit::nspawn::NspawnMachine;

/// True (after printing why, or failing under `CI=true`: see [`testkit::skip`]) when
/// real-systemd machines cannot be booted here: the guard at the top of every such test.
pub fn cannot_boot() -> bool {
    match testkit::nspawn::nspawn_available() {
        Ok(()) => false,
        Err(why) => {
            testkit::skip(&why);
            true
        }
    }
}

/// Runs for each machine after it boots and before its fleetd starts.
pub type OnBoot = std::sync::Arc<dyn Fn(usize, &NspawnMachine) -> Result<()> + Send + Sync>;

/// How to start an [`NspawnCluster`].
#[derive(Clone)]
pub struct NspawnSpec {
    pub machines: usize,
    /// fleetd's `--agent-ttl`.
    pub agent_ttl: String,
    /// Environment for fleetd (`NAME=value`), per machine index; for example a
    /// `DBUS_SYSTEM_BUS_ADDRESS` that routes fleetd's bus through a test's proxy.
    pub env: BTreeMap<usize, Vec<String>>,
    /// Set-up for each machine before its fleetd starts (a proxy the env points to, say).
    pub on_boot: Option<OnBoot>,
}

impl NspawnSpec {
    pub fn machines(n: usize) -> NspawnSpec {
        NspawnSpec {
            machines: n,
            agent_ttl: "3s".into(),
            env: BTreeMap::new(),
            on_boot: None,
        }
    }
}

/// One machine of an [`NspawnCluster`].
pub struct NspawnNode {
    pub nspawn: NspawnMachine,
    pub id: String,
    pub client: api::Client,
    /// False once the test powered it off or crashed it.
    pub alive: bool,
}

/// A running cluster of real-systemd machines. Dropping it powers every machine off (which
/// stops fleetd and every unit) and stops etcd; a panicking test first prints each live
/// machine's fleetd journal.
pub struct NspawnCluster {
    pub machines: Vec<NspawnNode>,
    tag: String,
    _etcd: EtcdCluster,
}

impl NspawnCluster {
    /// Boots the machines and starts fleetd in each (blocking: call from `block_in_place`).
    pub fn start(spec: NspawnSpec) -> Result<NspawnCluster> {
        let binary = crate::binary::fleetd_binary()?;
        let bin_dir = binary.parent().context("fleetd's directory")?.to_path_buf();
        let etcd = EtcdCluster::single()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{:x}{nanos:08x}", std::process::id());
        let mut machines = Vec::new();
        for i in 0..spec.machines {
            let nspawn = NspawnMachine::builder(&format!("fc{i}"))
                .bind_ro(&bin_dir, "/opt/fleet")
                .boot()?;
            if let Some(hook) = &spec.on_boot {
                hook(i, &nspawn)?;
            }
            let id = format!("{:0>24}{i:08x}", tag);
            let id = id[id.len() - 32..].to_string();
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.local_addr()?.port()
            };
            let mut cmd = nspawn.command("systemd-run");
            cmd.args(["--unit=fleetd-test", "--setenv=RUST_LOG=info"]);
            for var in spec.env.get(&i).into_iter().flatten() {
                cmd.arg(format!("--setenv={var}"));
            }
            let out = cmd
                .args([
                    "/opt/fleet/fleetd",
                    "--etcd-servers",
                    &etcd.endpoints().join(","),
                    "--etcd-key-prefix",
                    &format!("/fleet-nspawn-{tag}/"),
                    "--machine-id",
                    &id,
                    "--api-listen",
                    &format!("tcp://127.0.0.1:{port}"),
                    "--agent-ttl",
                    &spec.agent_ttl,
                    "--engine-reconcile-interval",
                    "1",
                    "--public-ip",
                    &format!("127.0.0.{}", i + 1),
                    "--metadata",
                    &format!("host=m{i}"),
                    "--unit-manager",
                    "systemd",
                    "--units-directory",
                    "/run/fleet/units",
                    "--state-dir",
                    "/var/lib/fleet",
                ])
                .output()
                .context("systemd-run fleetd in the container")?;
            ensure!(
                out.status.success(),
                "systemd-run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let client = api::Client::new(
                &format!("http://127.0.0.1:{port}"),
                api::ClientOptions {
                    request_timeout: Duration::from_secs(10),
                },
            )?;
            machines.push(NspawnNode {
                nspawn,
                id,
                client,
                alive: true,
            });
        }
        Ok(NspawnCluster {
            machines,
            tag,
            _etcd: etcd,
        })
    }

    /// The tag of this cluster's units (see [`crate::units::service`]).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.id == id)
    }

    fn any_client(&self) -> Result<&api::Client> {
        Ok(&self
            .machines
            .iter()
            .find(|m| m.alive)
            .context("no machine is up")?
            .client)
    }

    /// Every published unit state, as a live machine's API lists it.
    pub async fn unit_states(&self) -> Result<Vec<api::types::UnitState>> {
        let mut last = None;
        for m in self.machines.iter().filter(|m| m.alive) {
            match m.client.unit_states(&Default::default()).await {
                Ok(states) => return Ok(states),
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow::anyhow!("no machine answered: {last:?}"))
    }

    /// unit -> live machines where it is published `active`.
    pub async fn active_units(&self) -> Result<ActiveUnits> {
        let mut out = ActiveUnits::new();
        for s in self.unit_states().await? {
            let live = self
                .index_of(&s.machine_id)
                .is_some_and(|i| self.machines[i].alive);
            if s.systemd_active_state == "active" && live {
                out.entry(s.name).or_default().push(s.machine_id);
            }
        }
        Ok(out)
    }

    pub async fn wait_active(
        &self,
        what: &str,
        pred: impl Fn(&ActiveUnits) -> bool,
    ) -> Result<ActiveUnits> {
        self.wait_active_within(what, DEFAULT_DEADLINE, pred).await
    }

    pub async fn wait_active_within(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&ActiveUnits) -> bool,
    ) -> Result<ActiveUnits> {
        crate::cluster::wait_until_active(what, deadline, || self.active_units(), pred).await
    }

    /// Submits the units, 32 requests at a time, each retried until the deadline.
    pub async fn submit(&self, units: &[api::types::Unit]) -> Result<()> {
        let client = self.any_client()?;
        let results: Vec<Result<()>> = futures::stream::iter(units)
            .map(|u| async move {
                wait_for(
                    &format!("submitting {}", u.name),
                    DEFAULT_DEADLINE,
                    || async {
                        client
                            .create_or_update_unit(u)
                            .await
                            .map_err(|e| e.to_string())
                    },
                )
                .await
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// What machine `i`'s systemd itself says of the units whose names start with `prefix`:
    /// name -> (active state, sub state, main PID). A unit systemd does not have loaded is
    /// not listed (it is `inactive`/`dead`).
    pub fn systemd_units(&self, i: usize, prefix: &str) -> Result<BTreeMap<String, SystemdUnit>> {
        let m = &self.machines[i].nspawn;
        let pattern = format!("{prefix}*");
        let out = m.systemctl([
            "show",
            "--no-pager",
            "-p",
            "Id,ActiveState,SubState,MainPID",
            &pattern,
        ])?;
        ensure!(
            out.status.success(),
            "systemctl show on machine {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(parse_show(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The last `lines` lines of machine `i`'s fleetd journal.
    pub fn fleetd_journal(&self, i: usize, lines: usize) -> String {
        self.machines[i]
            .nspawn
            .command("journalctl")
            .args(["-u", "fleetd-test", "-n", &lines.to_string(), "--no-pager"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn print_diagnostics(&self) {
        for (i, m) in self.machines.iter().enumerate().filter(|(_, m)| m.alive) {
            eprintln!(
                "----- nspawn machine {i} ({}) fleetd journal -----\n{}",
                m.id,
                self.fleetd_journal(i, 40)
            );
        }
    }
}

/// One unit as systemd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemdUnit {
    pub active: String,
    pub sub: String,
    pub main_pid: u32,
}

/// Parses `systemctl show -p Id,ActiveState,SubState,MainPID` output: blocks of `Key=value`
/// lines separated by blank lines.
fn parse_show(text: &str) -> BTreeMap<String, SystemdUnit> {
    let mut out = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut unit = SystemdUnit {
            active: String::new(),
            sub: String::new(),
            main_pid: 0,
        };
        for line in block.lines() {
            match line.split_once('=') {
                Some(("Id", v)) => id = Some(v.to_string()),
                Some(("ActiveState", v)) => unit.active = v.to_string(),
                Some(("SubState", v)) => unit.sub = v.to_string(),
                Some(("MainPID", v)) => unit.main_pid = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        if let Some(id) = id {
            out.insert(id, unit);
        }
    }
    out
}

impl Drop for NspawnCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        // The containers' poweroff (NspawnMachine's drop) stops fleetd and every unit.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_blocks_are_read() {
        let text = "Id=a.service\nActiveState=active\nSubState=running\nMainPID=42\n\n\
                    MainPID=0\nId=b.service\nActiveState=inactive\nSubState=dead\n";
        let units = parse_show(text);
        assert_eq!(units.len(), 2);
        assert_eq!(
            units["a.service"],
            SystemdUnit {
                active: "active".into(),
                sub: "running".into(),
                main_pid: 42
            }
        );
        assert_eq!(units["b.service"].sub, "dead");
    }
}
