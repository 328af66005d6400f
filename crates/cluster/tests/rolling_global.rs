//! `fleetctl start --replace --rolling` of a global unit on three real fleetd over a real etcd,
//! with the process supervisor: the new content reaches the machines one at a time, in machine
//! id order, each active with the new hash before the next is allowed it (as the states
//! published through the API show, listed while fleetctl runs); a new version that fails on
//! the first machine stops there, the other two keep the old content, the rollout record says
//! so, running the command again resumes it, and a plain `start --replace` drops it.

use anyhow::{ensure, Context, Result};
use api::client::StateFilter;
use cluster::binary::run_fleetctl;
use cluster::cleanup::TAG_VAR;
use cluster::{sample_while, wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use std::collections::BTreeMap;
use std::path::Path;

const UNIT: &str = "g.service";

/// `g.service` (global) of version `version`, with `extra` lines in `[Service]`; writes it
/// into `dir` and returns its hash as states publish it.
fn write_unit(dir: &Path, tag: &str, version: u32, extra: &str) -> Result<String> {
    let text = format!(
        "[Unit]\nDescription=global version {version}\n\n[Service]\nEnvironment={TAG_VAR}={tag}\nExecStart=/bin/sleep infinity\n{extra}\n[X-Fleet]\nGlobal=true\n"
    );
    std::fs::write(dir.join(UNIT), &text).context("writing g.service")?;
    Ok(unit::UnitFile::parse(&text)?.hash().to_string())
}

/// machine -> (hash, active state) of `g.service`, as the API lists them.
type Snapshot = BTreeMap<String, (String, String)>;

async fn snapshot(client: &api::Client) -> Result<Snapshot> {
    let filter = StateFilter {
        unit_name: Some(UNIT.to_string()),
        machine_id: None,
    };
    Ok(client
        .unit_states(&filter)
        .await?
        .into_iter()
        .map(|s| (s.machine_id, (s.hash, s.systemd_active_state)))
        .collect())
}

/// The machine ids, sorted: the order a rollout goes in.
fn ids(c: &Cluster) -> Vec<String> {
    let mut ids: Vec<String> = c.machines().iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids
}

/// Waits until each of `machines` runs `g.service` active with `hash`.
async fn wait_active(c: &Cluster, machines: &[String], hash: &str) -> Result<()> {
    let client = c.client(0);
    wait_for(
        "g.service active with the expected hash",
        DEFAULT_DEADLINE,
        || async {
            let snap = snapshot(&client).await.map_err(|e| format!("{e:#}"))?;
            let ok = machines
                .iter()
                .all(|m| snap.get(m).is_some_and(|(h, a)| h == hash && a == "active"));
            if ok {
                Ok(())
            } else {
                Err(format!("{snap:?}"))
            }
        },
    )
    .await
}

/// Version 1 started on every machine.
async fn started(c: &Cluster, dir: &Path) -> Result<String> {
    let v1 = write_unit(dir, c.tag(), 1, "")?;
    let start = run_fleetctl(&c.machine(0).endpoint(), dir, &["start", UNIT]).await?;
    ensure!(start.code == 0, "start failed: {}", start.stderr);
    wait_active(c, &ids(c), &v1).await?;
    Ok(v1)
}

fn spec() -> ClusterSpec {
    ClusterSpec {
        machines: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_unit_gets_new_content_one_machine_at_a_time() {
    let c = Cluster::start(spec()).await.expect("starting the cluster");
    one_machine_at_a_time(&c).await.unwrap();
}

async fn one_machine_at_a_time(c: &Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let v1 = started(c, dir.path()).await?;
    let v2 = write_unit(dir.path(), c.tag(), 2, "")?;
    let order = ids(c);

    // Every listing of the unit's states while the rollout runs, from another fleetd.
    let observer = c.client(1);
    let (mut seen, run) = sample_while(
        || snapshot(&observer),
        run_fleetctl(
            &c.machine(2).endpoint(),
            dir.path(),
            &["start", "--replace", "--rolling", UNIT],
        ),
    )
    .await;
    let run = run?;
    ensure!(run.code == 0, "rolling replace failed: {}", run.stderr);
    seen.push(snapshot(&c.client(0)).await?);

    // What fleetctl said, machine by machine, in order.
    let short = &v2[..7];
    let mut expected = vec![format!(
        "Replacing {UNIT} on 3 machine(s), 1 at a time: 3 batch(es)"
    )];
    for (i, id) in order.iter().enumerate() {
        // fleetctl names a machine by its id's start and its IP.
        let machine = c
            .machines()
            .iter()
            .find(|m| m.id == *id)
            .context("a machine of the cluster")?;
        expected.push(format!(
            "batch {}/3: machine {}.../{}: active (new hash {short})",
            i + 1,
            &id[..8],
            machine.ip
        ));
    }
    expected.push(format!("All 3 machine(s) run the new content of {UNIT}"));
    run.printed_in_order(&expected)?;

    // What the cluster showed: at most one machine away from a settled content at any time,
    // and no machine with the new content before every machine ahead of it ran it active.
    for (i, snap) in seen.iter().enumerate() {
        let unsettled: Vec<&String> = order
            .iter()
            .filter(|m| {
                !snap
                    .get(*m)
                    .is_some_and(|(h, a)| a == "active" && (*h == v1 || *h == v2))
            })
            .collect();
        ensure!(
            unsettled.len() <= 1,
            "listing {i}: {unsettled:?} restarting at once: {snap:?}"
        );
        let furthest = order
            .iter()
            .rposition(|m| snap.get(m).is_some_and(|(h, _)| *h == v2));
        let Some(furthest) = furthest else { continue };
        for m in &order[..furthest] {
            ensure!(
                snap.get(m).is_some_and(|(h, a)| *h == v2 && a == "active"),
                "listing {i}: {} has the new hash while {m} is {:?}: {snap:?}",
                order[furthest],
                snap.get(m)
            );
        }
        for m in &order[furthest + 1..] {
            ensure!(
                snap.get(m).is_some_and(|(h, _)| *h == v1),
                "listing {i}: {m} left the old content before its turn: {snap:?}"
            );
        }
    }
    wait_active(c, &order, &v2).await?;
    ensure!(
        c.client(0).rollout(UNIT).await?.is_none(),
        "the rollout record should be dropped once every machine runs the new content"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_stops_on_the_first_machine_and_the_rollout_says_so() {
    let c = Cluster::start(spec()).await.expect("starting the cluster");
    failing_version_stops(&c).await.unwrap();
}

async fn failing_version_stops(c: &Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let v1 = started(c, dir.path()).await?;
    let order = ids(c);
    let endpoint = c.machine(1).endpoint();
    // Its own ExecStartPost= fails: the process supervisor never reports it active.
    let v2 = write_unit(dir.path(), c.tag(), 2, "ExecStartPost=/bin/false\n")?;
    let rolling = ["start", "--replace", "--rolling", UNIT];
    let run = run_fleetctl(&endpoint, dir.path(), &rolling).await?;
    ensure!(run.code == 1, "expected exit 1, got {}", run.code);
    ensure!(
        run.stderr.contains(&format!(
            "Rolling replace of {UNIT} stopped in batch 1/3: machine {}...",
            &order[0][..8]
        )) && run.stderr.contains("failed on"),
        "{}",
        run.stderr
    );
    ensure!(
        run.stderr
            .contains("Still running the old content: machine")
            && run.stderr.contains("run this command again to resume it"),
        "{}",
        run.stderr
    );
    ensure!(!run.stdout.contains("batch 2/3"), "{}", run.stdout);
    wait_active(c, &order[1..], &v1).await?;
    let record = c
        .client(0)
        .rollout(UNIT)
        .await?
        .context("the rollout record should be kept")?;
    ensure!(
        record.old_hash == v1 && record.new_hash == v2 && record.allowed_machines == order[..1],
        "the record should allow only the first machine: {record:?}"
    );

    // The same command resumes it: the first machine is looked at again, and fails again.
    let run = run_fleetctl(&endpoint, dir.path(), &rolling).await?;
    ensure!(run.code == 1, "expected exit 1, got {}", run.code);
    ensure!(
        run.stdout.contains(&format!(
            "Resuming the rollout of {UNIT}: 1 machine(s) already allowed the new content"
        )),
        "{}",
        run.stdout
    );
    ensure!(
        run.stderr
            .contains(&format!("Rolling replace of {UNIT} stopped in batch 1/3")),
        "{}",
        run.stderr
    );
    wait_active(c, &order[1..], &v1).await?;

    // A plain replace with working content drops the rollout: every machine runs it.
    let v3 = write_unit(dir.path(), c.tag(), 3, "")?;
    let run = run_fleetctl(&endpoint, dir.path(), &["start", "--replace", UNIT]).await?;
    ensure!(run.code == 0, "start --replace failed: {}", run.stderr);
    ensure!(
        run.stdout.contains(&format!("Rollout of {UNIT} dropped")),
        "{}",
        run.stdout
    );
    wait_active(c, &order, &v3).await?;
    ensure!(
        c.client(0).rollout(UNIT).await?.is_none(),
        "the rollout record should be dropped"
    );
    Ok(())
}
