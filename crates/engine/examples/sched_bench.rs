//! Times scheduling passes over synthetic clusters with mixed constraints.
//!
//! ```text
//! cargo run --release -p fleet-engine --example sched_bench            # default sizes
//! cargo run --release -p fleet-engine --example sched_bench -- 10000 1000
//! ```
//!
//! For each size it prints the time of: a full pass placing every unit from nothing, a steady
//! pass over the settled cluster (nothing to do), the pass after one machine is lost, and the
//! pass after another machine is drained (it moves one unit with its MachineOf followers); then
//! a conflict storm and dependency groups (chains of three units placed together).

use engine::scheduler::{plan, Cluster, ClusterUnit};
use registry::{MachineState, TargetState};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use unit::Requirements;

fn machine_id(i: usize) -> String {
    format!("{:08x}{:024x}", i.wrapping_mul(2_654_435_761) as u32, i)
}

fn cluster(units: usize, machines: usize) -> Cluster {
    let machines: Vec<MachineState> = (0..machines)
        .map(|i| {
            let mut metadata = BTreeMap::new();
            metadata.insert(
                "region".to_string(),
                ["east", "west", "north"][i % 3].to_string(),
            );
            if i % 2 == 0 {
                metadata.insert("disk".to_string(), "ssd".to_string());
            }
            MachineState {
                id: machine_id(i),
                metadata,
                ..Default::default()
            }
        })
        .collect();
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut list = vec![
        ClusterUnit::new(
            "agent-global.service",
            TargetState::Launched,
            Requirements {
                global: true,
                ..Default::default()
            },
        ),
        ClusterUnit::new(
            "east-global.service",
            TargetState::Launched,
            Requirements {
                global: true,
                machine_metadata: BTreeMap::from([("region".to_string(), set(&["east"]))]),
                ..Default::default()
            },
        ),
    ];
    for i in 0..units {
        let mut r = Requirements::default();
        let mut name = format!("app{i}.service");
        match i % 20 {
            10 => r.machine_metadata = BTreeMap::from([("region".to_string(), set(&["east"]))]),
            11 => {
                r.machine_metadata = BTreeMap::from([
                    ("region".to_string(), set(&["west", "north"])),
                    ("disk".to_string(), set(&["ssd"])),
                ])
            }
            12 => {
                let id = machine_id(i * 7 % machines.len());
                r.machine_id = Some(if i % 40 == 12 {
                    id[..8].to_string()
                } else {
                    id
                });
            }
            // A sidekick of the pinned unit, and a sidekick of the sidekick.
            13 | 14 => r.machine_of = vec![format!("app{}.service", i - 1)],
            15 => {
                let group = i % 50;
                name = format!("grp{group}@{i}.service");
                r.conflicts = vec![format!("grp{group}@*.service")];
            }
            16 => r.conflicts = vec![format!("app{}.service", i - 16)],
            17 => r.replaces = vec![format!("app{}.service", i - 7)],
            _ => {}
        }
        list.push(ClusterUnit::new(name, TargetState::Launched, r));
    }
    Cluster {
        machines,
        units: list,
        placements: BTreeMap::new(),
        ..Default::default()
    }
}

/// Best of three runs, and the last result.
fn time<T>(f: impl Fn() -> T) -> (Duration, T) {
    let start = Instant::now();
    let mut out = f();
    let mut best = start.elapsed();
    for _ in 0..2 {
        let start = Instant::now();
        out = f();
        best = best.min(start.elapsed());
    }
    (best, out)
}

/// The worst case for reasons: `units` instances that all conflict with each other, more than
/// there are machines, so most stay unplaced and each gets a reason naming its peers.
fn conflict_storm(units: usize, machines: usize) {
    let mut c = cluster(0, machines);
    for i in 0..units {
        let r = Requirements {
            conflicts: vec!["storm@*.service".to_string()],
            ..Default::default()
        };
        c.units.push(ClusterUnit::new(
            format!("storm@{i}.service"),
            TargetState::Launched,
            r,
        ));
    }
    let (full, p) = time(|| plan(&c));
    println!(
        "conflict storm: {units} mutually conflicting units on {machines} machines: {:.1}ms, {} placed, {} unplaceable",
        full.as_secs_f64() * 1e3,
        p.add.len(),
        p.unplaceable.len()
    );
}

/// Dependency groups: `groups` chains of three units (`app@i` Requires `mid@i`, which BindsTo
/// `db@i`), each of which must land on one machine.
fn dependency_groups(groups: usize, machines: usize) {
    let mut c = cluster(0, machines);
    for i in 0..groups {
        for (name, body) in [
            (
                format!("app@{i}.service"),
                "[Unit]\nRequires=mid@%i.service\n",
            ),
            (
                format!("mid@{i}.service"),
                "[Unit]\nBindsTo=db@%i.service\n",
            ),
            (format!("db@{i}.service"), ""),
        ] {
            let file = unit::UnitFile::parse(body).expect("a unit file");
            let r = Requirements::from_unit(&file, &name);
            c.units
                .push(ClusterUnit::new(name, TargetState::Launched, r));
        }
    }
    c.units.sort_by(|a, b| a.name.cmp(&b.name));
    let (full, p) = time(|| plan(&c));
    c.apply(&p);
    let (steady, again) = time(|| plan(&c));
    assert!(again.is_empty(), "a settled cluster must not change");
    let apart = (0..groups)
        .filter(|i| {
            let at = |u: &str| c.placements.get(&format!("{u}@{i}.service"));
            at("app") != at("db") || at("mid") != at("db")
        })
        .count();
    assert_eq!(apart, 0, "every group on one machine");
    println!(
        "dependency groups: {groups} chains of 3 on {machines} machines: full pass {:.1}ms, steady pass {:.1}ms, {} placed",
        full.as_secs_f64() * 1e3,
        steady.as_secs_f64() * 1e3,
        p.add.len()
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = match args.as_slice() {
        [u, m] => vec![(*u, *m)],
        _ => vec![(1_000, 100), (10_000, 1_000), (50_000, 2_000)],
    };
    println!(
        "{:>8} {:>8} {:>12} {:>12} {:>14} {:>8} {:>11} {:>12}",
        "units",
        "machines",
        "full pass",
        "steady pass",
        "machine lost",
        "moved",
        "unplaceable",
        "drain pass"
    );
    for &(units, machines) in &sizes {
        let mut c = cluster(units, machines);
        let (full, p) = time(|| plan(&c));
        c.apply(&p);
        let (steady, again) = time(|| plan(&c));
        assert!(again.is_empty(), "a settled cluster must not change");
        let lost = c.placements.values().next().cloned().unwrap_or_default();
        c.machines.retain(|m| m.id != lost);
        let (after_loss, moved) = time(|| plan(&c));
        c.apply(&moved);
        let busiest = c.placements.values().max().cloned().unwrap_or_default();
        c.drain.machines.insert(busiest);
        let (drain, _) = time(|| plan(&c));
        println!(
            "{units:>8} {machines:>8} {:>10.1}ms {:>10.1}ms {:>12.1}ms {:>8} {:>11} {:>10.1}ms",
            full.as_secs_f64() * 1e3,
            steady.as_secs_f64() * 1e3,
            after_loss.as_secs_f64() * 1e3,
            moved.add.len(),
            p.unplaceable.len(),
            drain.as_secs_f64() * 1e3,
        );
    }
    if args.is_empty() {
        conflict_storm(5_000, 1_000);
        dependency_groups(10_000, 1_000);
    }
}
