//! The conflict and machine-loss scenarios with fleetd under a real systemd: each machine is a
//! `systemd-nspawn` container (testkit) running fleetd as a service with `--unit-manager
//! systemd`. The containers share the host's network, so they reach the test's etcd and serve
//! the API on 127.0.0.1. Skipped, with the reason printed, where nspawn cannot run.

use anyhow::{ensure, Context, Result};
use cluster::{wait_for, ActiveUnits, DEFAULT_DEADLINE};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use testkit::etcd::EtcdCluster;
use testkit::nspawn::{nspawn_available, NspawnMachine};

struct Machine {
    nspawn: NspawnMachine,
    id: String,
    client: api::Client,
    alive: bool,
}

struct NspawnCluster {
    machines: Vec<Machine>,
    tag: String,
    _etcd: EtcdCluster,
}

impl NspawnCluster {
    fn start(n: usize) -> Result<NspawnCluster> {
        let binary = cluster::binary::fleetd_binary()?;
        let bin_dir = binary.parent().context("fleetd's directory")?.to_path_buf();
        let etcd = EtcdCluster::single()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{:x}{nanos:08x}", std::process::id());
        let mut machines = Vec::new();
        for i in 0..n {
            let nspawn = NspawnMachine::builder(&format!("fc{i}"))
                .bind_ro(&bin_dir, "/opt/fleet")
                .boot()?;
            let id = format!("{:0>24}{i:08x}", tag);
            let id = id[id.len() - 32..].to_string();
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.local_addr()?.port()
            };
            let out = nspawn
                .command("systemd-run")
                .args([
                    "--unit=fleetd-test",
                    "--setenv=RUST_LOG=info",
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
                    "3s",
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
                    request_timeout: Duration::from_secs(5),
                },
            )?;
            machines.push(Machine {
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

    fn index_of(&self, id: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.id == id)
    }

    async fn active_units(&self) -> Result<ActiveUnits> {
        let mut last = None;
        for m in self.machines.iter().filter(|m| m.alive) {
            match m.client.unit_states(&Default::default()).await {
                Ok(states) => {
                    let mut out = ActiveUnits::new();
                    for s in states {
                        let live = self
                            .index_of(&s.machine_id)
                            .is_some_and(|i| self.machines[i].alive);
                        if s.systemd_active_state == "active" && live {
                            out.entry(s.name).or_default().push(s.machine_id);
                        }
                    }
                    return Ok(out);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow::anyhow!("no machine answered: {last:?}"))
    }

    async fn wait_active(
        &self,
        what: &str,
        pred: impl Fn(&ActiveUnits) -> bool,
    ) -> Result<ActiveUnits> {
        wait_for(what, DEFAULT_DEADLINE, || async {
            let a = self.active_units().await.map_err(|e| format!("{e:#}"))?;
            if pred(&a) {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        })
        .await
    }

    async fn submit(&self, units: &[api::types::Unit]) -> Result<()> {
        let client = &self
            .machines
            .iter()
            .find(|m| m.alive)
            .context("no machine")?
            .client;
        for u in units {
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
            .await?;
        }
        Ok(())
    }

    fn print_diagnostics(&self) {
        for (i, m) in self.machines.iter().enumerate().filter(|(_, m)| m.alive) {
            let log = m
                .nspawn
                .command("journalctl")
                .args(["-u", "fleetd-test", "-n", "40", "--no-pager"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!(
                "----- nspawn machine {i} ({}) fleetd journal -----\n{log}",
                m.id
            );
        }
    }
}

impl Drop for NspawnCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        // The containers' poweroff (NspawnMachine's drop) stops fleetd and every unit.
    }
}

fn skip() -> bool {
    match nspawn_available() {
        Ok(()) => false,
        Err(why) => {
            testkit::skip(&why);
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nspawn_five_conflicting_units_on_three_machines() {
    if skip() {
        return;
    }
    let c = tokio::task::block_in_place(|| NspawnCluster::start(3)).unwrap();
    async {
        let units: Vec<_> = (0..5)
            .map(|i| {
                cluster::units::service(
                    &format!("conflict.{i}.service"),
                    &c.tag,
                    &[("Conflicts", "conflict.*.service")],
                )
            })
            .collect();
        c.submit(&units).await?;
        let active = c
            .wait_active("three conflict units active under systemd", |a| {
                a.len() == 3
            })
            .await?;
        let machines: BTreeSet<&String> = active.values().flatten().collect();
        ensure!(
            machines.len() == 3 && active.values().all(|m| m.len() == 1),
            "{active:?}"
        );
        // systemd itself runs them: ask the container's systemd.
        for (unit, ms) in &active {
            let i = c.index_of(&ms[0]).context("machine")?;
            let out = c.machines[i].nspawn.systemctl(["is-active", unit])?;
            ensure!(
                String::from_utf8_lossy(&out.stdout).trim() == "active",
                "systemctl is-active {unit} on machine {i}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nspawn_crashed_machine_units_run_elsewhere() {
    if skip() {
        return;
    }
    let mut c = tokio::task::block_in_place(|| NspawnCluster::start(3)).unwrap();
    let result = async {
        let names: Vec<String> = (0..6).map(|i| format!("loss.{i}.service")).collect();
        let units: Vec<_> = names
            .iter()
            .map(|n| cluster::units::service(n, &c.tag, &[]))
            .collect();
        c.submit(&units).await?;
        let once = |a: &ActiveUnits| names.iter().all(|n| a.get(n).is_some_and(|m| m.len() == 1));
        let active = c.wait_active("six units active under systemd", once).await?;
        let victim_id = active[&names[0]][0].clone();
        let victim = c.index_of(&victim_id).context("victim")?;
        let moving = active.values().filter(|m| m[0] == victim_id).count();
        let t0 = Instant::now();
        tokio::task::block_in_place(|| c.machines[victim].nspawn.crash())?;
        c.machines[victim].alive = false;
        let c = &c;
        c.wait_active("the crashed machine's units active elsewhere", once)
            .await?;
        println!(
            "FIGURE nspawn machine crash (systemd): {moving} units active elsewhere {:.2} s after the container's PID 1 was killed",
            t0.elapsed().as_secs_f64()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.unwrap();
}
