//! The harness itself: a panicking test leaves no fleetd, unit process, etcd or directory.

use cluster::{Cluster, ClusterSpec};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Default, Debug)]
struct Seen {
    fleetd: Vec<u32>,
    units: Vec<i32>,
    etcd: Vec<u32>,
    dirs: Vec<PathBuf>,
}

#[test]
fn a_panicking_test_leaves_nothing_running() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let c = Cluster::start(ClusterSpec {
                machines: 2,
                ..Default::default()
            })
            .await
            .unwrap();
            c.submit(&[
                c.service("a.service", &[]),
                c.service("b.service", &[("Global", "true")]),
            ])
            .await
            .unwrap();
            c.wait_for_active_units("a and the global b active", |a| {
                a.contains_key("a.service") && a.get("b.service").is_some_and(|m| m.len() == 2)
            })
            .await
            .unwrap();
            {
                let mut s = seen2.lock().unwrap();
                s.fleetd = c.machines().iter().filter_map(|m| m.pid()).collect();
                s.units = c
                    .machines()
                    .iter()
                    .flat_map(|m| m.unit_pids().into_values())
                    .collect();
                s.etcd = c.etcd().members().iter().filter_map(|m| m.pid()).collect();
                s.dirs = vec![
                    c.machine(0).dir().parent().unwrap().to_path_buf(),
                    c.etcd().dir().to_path_buf(),
                ];
            }
            // One machine crashed, one paused: cleanup must cope with both.
            c.machine(0).kill();
            c.machine(1).pause().unwrap();
            panic!("deliberate failure to exercise the cleanup");
        })
    })
    .join();
    assert!(outcome.is_err(), "the test body should have panicked");
    let s = seen.lock().unwrap();
    assert_eq!(s.fleetd.len(), 2, "{s:?}");
    assert_eq!(s.units.len(), 3, "{s:?}");
    assert!(!s.etcd.is_empty(), "{s:?}");
    for pid in &s.fleetd {
        assert!(
            !cluster::cleanup::alive(*pid as i32),
            "fleetd {pid} survived"
        );
    }
    for pid in &s.units {
        assert!(
            !cluster::cleanup::alive(*pid),
            "unit process {pid} survived"
        );
    }
    for pid in &s.etcd {
        assert!(!cluster::cleanup::alive(*pid as i32), "etcd {pid} survived");
    }
    for d in &s.dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}
