//! `fleetctl start --replace --rolling=N` on three real fleetd over a real etcd, with the
//! process supervisor: six instances of a template get new content two at a time, each batch
//! active with the new hash before the next is touched (as the states published through the
//! API show), and a new version that fails (its `ExecStartPost=`, or `--health-cmd`) stops the
//! rollout after the first batch with the other units still running the old content.

use anyhow::{ensure, Context, Result};
use api::client::StateFilter;
use cluster::binary::run_fleetctl;
use cluster::cleanup::TAG_VAR;
use cluster::{sample_while, wait_for, Cluster, ClusterSpec, DEFAULT_DEADLINE};
use std::collections::BTreeMap;
use std::path::Path;

const UNITS: [&str; 6] = [
    "web@1.service",
    "web@2.service",
    "web@3.service",
    "web@4.service",
    "web@5.service",
    "web@6.service",
];

/// The template `web@.service` of version `version`, with `extra` lines in `[Service]`; writes
/// it into `dir` and returns its hash as states publish it.
fn write_template(dir: &Path, tag: &str, version: u32, extra: &str) -> Result<String> {
    let text = format!(
        "[Unit]\nDescription=web %i version {version}\n\n[Service]\nEnvironment={TAG_VAR}={tag}\nExecStart=/bin/sleep infinity\n{extra}"
    );
    std::fs::write(dir.join("web@.service"), &text).context("writing web@.service")?;
    Ok(unit::UnitFile::parse(&text)?.hash().to_string())
}

/// unit -> (hash, active state) on its machine, as the API lists them.
type Snapshot = BTreeMap<String, (String, String)>;

async fn snapshot(client: &api::Client) -> Result<Snapshot> {
    let states = client.unit_states(&StateFilter::default()).await?;
    Ok(states
        .into_iter()
        .map(|s| (s.name, (s.hash, s.systemd_active_state)))
        .collect())
}

/// Waits until every unit of `UNITS` is active with `hash`.
async fn wait_all_active(c: &Cluster, hash: &str) -> Result<()> {
    let client = c.client(0);
    wait_for(
        "all six instances active with the expected hash",
        DEFAULT_DEADLINE,
        || async {
            let snap = snapshot(&client).await.map_err(|e| format!("{e:#}"))?;
            let ok = UNITS.iter().all(|u| {
                snap.get(*u)
                    .is_some_and(|(h, a)| h == hash && a == "active")
            });
            if ok {
                Ok(())
            } else {
                Err(format!("{snap:?}"))
            }
        },
    )
    .await
}

/// Six instances of version 1, started from the template in `dir`.
async fn six_instances(c: &Cluster, dir: &Path) -> Result<String> {
    let v1 = write_template(dir, c.tag(), 1, "")?;
    let endpoint = c.machine(0).endpoint();
    let submit = run_fleetctl(&endpoint, dir, &["submit", "web@.service"]).await?;
    ensure!(submit.code == 0, "submit failed: {}", submit.stderr);
    let mut args = vec!["start"];
    args.extend(UNITS);
    let start = run_fleetctl(&endpoint, dir, &args).await?;
    ensure!(start.code == 0, "start failed: {}", start.stderr);
    wait_all_active(c, &v1).await?;
    Ok(v1)
}

fn spec() -> ClusterSpec {
    ClusterSpec {
        machines: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_instances_two_at_a_time_end_on_the_new_hash_in_batch_order() {
    let c = Cluster::start(spec()).await.expect("starting the cluster");
    new_hash_in_batch_order(&c).await.unwrap();
}

async fn new_hash_in_batch_order(c: &Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let v1 = six_instances(c, dir.path()).await?;
    let v2 = write_template(dir.path(), c.tag(), 2, "")?;

    // Every listing of states while the rollout runs, from another fleetd than fleetctl's.
    let endpoint = c.machine(2).endpoint();
    let observer = c.client(1);
    let (mut seen, run) = sample_while(
        || snapshot(&observer),
        run_fleetctl(
            &endpoint,
            dir.path(),
            &["start", "--replace", "--rolling=2", "web@.service"],
        ),
    )
    .await;
    let run = run?;
    ensure!(run.code == 0, "rolling replace failed: {}", run.stderr);
    seen.push(snapshot(&c.client(0)).await?);

    // What fleetctl said, batch by batch, in order.
    let short = &v2[..7];
    let expected = [
        "Replacing 6 unit(s), 2 at a time: 3 batch(es)".to_string(),
        format!("batch 1/3: web@1.service web@2.service: active (new hash {short})"),
        format!("batch 2/3: web@3.service web@4.service: active (new hash {short})"),
        format!("batch 3/3: web@5.service web@6.service: active (new hash {short})"),
        "All 6 unit(s) run their new content".to_string(),
        "Template web@.service updated to the new content".to_string(),
    ];
    run.printed_in_order(&expected)?;

    // What the cluster showed: no unit of a batch had the new content before every unit of the
    // batches before it was active with it.
    let batch_of = |u: &str| UNITS.iter().position(|x| *x == u).map(|i| i / 2);
    for (i, snap) in seen.iter().enumerate() {
        let furthest = snap
            .iter()
            .filter(|(_, (h, _))| *h == v2)
            .filter_map(|(u, _)| batch_of(u))
            .max();
        let Some(furthest) = furthest else { continue };
        for u in UNITS.iter().filter(|u| batch_of(u) < Some(furthest)) {
            ensure!(
                snap.get(*u).is_some_and(|(h, a)| *h == v2 && a == "active"),
                "listing {i}: a unit of batch {} has the new hash while {u} is {:?}: {snap:?}",
                furthest + 1,
                snap.get(*u)
            );
        }
        for u in UNITS.iter().filter(|u| batch_of(u) > Some(furthest)) {
            ensure!(
                snap.get(*u).is_some_and(|(h, _)| *h == v1),
                "listing {i}: {u} left the old content before its batch: {snap:?}"
            );
        }
    }
    // The listing after the rollout: everything new and active.
    let last = seen.last().context("no listing")?;
    for u in UNITS {
        ensure!(
            last.get(u).is_some_and(|(h, a)| *h == v2 && a == "active"),
            "{u} after the rollout: {:?}",
            last.get(u)
        );
    }
    let template = c
        .client(0)
        .unit("web@.service")
        .await?
        .context("the template is gone")?;
    ensure!(
        template.file().hash().to_string() == v2,
        "the template was not updated"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_version_stops_after_the_first_batch() {
    let c = Cluster::start(spec()).await.expect("starting the cluster");
    failing_version_stops(&c).await.unwrap();
}

/// The units of batches 2 and 3 still active with `hash`.
async fn rest_untouched(c: &Cluster, hash: &str) -> Result<()> {
    let snap = snapshot(&c.client(0)).await?;
    for u in &UNITS[2..] {
        ensure!(
            snap.get(*u)
                .is_some_and(|(h, a)| h == hash && a == "active"),
            "{u} should still run the old content: {:?}",
            snap.get(*u)
        );
    }
    Ok(())
}

async fn failing_version_stops(c: &Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let v1 = six_instances(c, dir.path()).await?;
    let endpoint = c.machine(1).endpoint();
    let old_rest =
        "Still running the old content: web@3.service web@4.service web@5.service web@6.service";

    // A version whose own ExecStartPost= fails: systemd (here the process supervisor) never
    // reports it active.
    let v2 = write_template(dir.path(), c.tag(), 2, "ExecStartPost=/bin/false\n")?;
    let run = run_fleetctl(
        &endpoint,
        dir.path(),
        &["start", "--replace", "--rolling=2", "web@*.service"],
    )
    .await?;
    ensure!(run.code == 1, "expected exit 1, got {}", run.code);
    ensure!(
        run.stderr
            .contains("Rolling replace stopped in batch 1/3: web@")
            && run.stderr.contains("failed on"),
        "{}",
        run.stderr
    );
    ensure!(run.stderr.contains(old_rest), "{}", run.stderr);
    ensure!(!run.stdout.contains("batch 2/3"), "{}", run.stdout);
    rest_untouched(c, &v1).await?;
    let snap = snapshot(&c.client(0)).await?;
    ensure!(
        UNITS[..2]
            .iter()
            .any(|u| snap.get(*u).is_some_and(|(h, _)| *h == v2)),
        "the first batch should have the failing content: {snap:?}"
    );
    let template = c
        .client(0)
        .unit("web@.service")
        .await?
        .context("template")?;
    ensure!(
        template.file().hash().to_string() == v1,
        "a failed rollout must leave the template alone"
    );

    // A version that starts, but fails the operator's health command on web@2.
    let v3 = write_template(dir.path(), c.tag(), 3, "")?;
    let run = run_fleetctl(
        &endpoint,
        dir.path(),
        &[
            "start",
            "--replace",
            "--rolling=2",
            "--batch-timeout=20",
            "--health-cmd",
            "test -n \"$MACHINE\" && test \"$UNIT\" != web@2.service",
            "web@.service",
        ],
    )
    .await?;
    ensure!(run.code == 1, "expected exit 1, got {}", run.code);
    ensure!(
        run.stdout
            .contains("batch 1/3: web@1.service passed the health check"),
        "{}",
        run.stdout
    );
    ensure!(
        run.stderr.contains(
            "Rolling replace stopped in batch 1/3: web@2.service has not passed the health check in time: health check failing: exit status 1"
        ),
        "{}",
        run.stderr
    );
    ensure!(run.stderr.contains(old_rest), "{}", run.stderr);
    rest_untouched(c, &v1).await?;
    let snap = snapshot(&c.client(0)).await?;
    for u in &UNITS[..2] {
        ensure!(
            snap.get(*u).is_some_and(|(h, a)| *h == v3 && a == "active"),
            "{u} should run the new content: {:?}",
            snap.get(*u)
        );
    }
    Ok(())
}
