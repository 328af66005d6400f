//! The API's load test (issue 17, item 5), on the embedded registry and on etcd: 200 clients
//! for 60 s each against one real fleetd (`FLEET_LOAD_SECONDS` and `FLEET_LOAD_CLIENTS` make a
//! developer's run shorter or smaller; CI leaves them unset).
//!
//! The figures are printed to stderr, which cargo shows for a passing test only with
//! `--nocapture`, and written to `<target dir>/bench/load-<registry>.json` either way:
//!
//! ```sh
//! cargo test -p fleet-bench --test load -- --nocapture
//! ```

use fleet_bench::load::{self, LoadOptions, LoadReport, RegistryKind};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The two runs take turns: each is meant to have the machine to itself, as a load test
/// measures what one fleetd can take.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn options(registry: RegistryKind) -> LoadOptions {
    let fleetd = load::fleetd_binary().unwrap_or_else(|e| panic!("finding fleetd: {e:#}"));
    LoadOptions {
        clients: env_number("FLEET_LOAD_CLIENTS", 200) as usize,
        duration: Duration::from_secs(env_number("FLEET_LOAD_SECONDS", 60)),
        ..LoadOptions::new(registry, fleetd)
    }
}

/// Prints the figures, writes them as JSON beside the build, and fails naming every problem.
fn report(r: &LoadReport) {
    let table = r.table();
    eprintln!("{table}");
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(&tmp).join("bench");
    let path = dir.join(format!("load-{}.json", r.registry.as_str()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, serde_json::to_vec_pretty(r).unwrap_or_default()));
    match written {
        Ok(()) => eprintln!("figures written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    let problems = r.problems();
    assert!(
        problems.is_empty(),
        "the load run on {} found problems:\n{}\n\n{table}",
        r.registry.as_str(),
        problems.join("\n")
    );
}

#[test]
fn load_on_the_embedded_registry() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = options(RegistryKind::Embedded);
    let r = load::run_blocking(&opts, None).unwrap_or_else(|e| panic!("load run: {e:#}"));
    report(&r);
}

#[test]
fn load_on_etcd() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(etcd) = testkit::etcd::started_or_skip(testkit::etcd::EtcdCluster::single()) else {
        return;
    };
    let opts = options(RegistryKind::Etcd);
    let endpoint = etcd.member(0).endpoint();
    let r =
        load::run_blocking(&opts, Some(&endpoint)).unwrap_or_else(|e| panic!("load run: {e:#}"));
    drop(etcd);
    report(&r);
}
