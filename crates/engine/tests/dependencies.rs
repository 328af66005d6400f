//! Dependency groups: units that `Requires=`/`BindsTo=`/`Wants=` one another go on one
//! machine, because systemd resolves those names on the local machine only.

use engine::explain::explain;
use engine::scheduler::{plan, Cluster, ClusterUnit};
use proptest::prelude::*;
use registry::{MachineState, TargetState};
use std::collections::{BTreeMap, BTreeSet};
use unit::{Requirements, UnitFile};

fn machine(id: &str, region: &str) -> MachineState {
    MachineState {
        id: id.into(),
        metadata: BTreeMap::from([("region".to_string(), region.to_string())]),
        ..Default::default()
    }
}

/// A unit from the text of its file, read as the engine reads it.
fn unit(name: &str, body: &str) -> ClusterUnit {
    let file = UnitFile::parse(body).unwrap();
    ClusterUnit::new(
        name,
        TargetState::Launched,
        Requirements::from_unit(&file, name),
    )
}

fn three_machines() -> Vec<MachineState> {
    vec![
        machine("m1", "east"),
        machine("m2", "west"),
        machine("m3", "west"),
    ]
}

fn cluster(units: Vec<ClusterUnit>, placed: &[(&str, &str)]) -> Cluster {
    Cluster {
        machines: three_machines(),
        units,
        placements: placed
            .iter()
            .map(|(u, m)| (u.to_string(), m.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The cluster after one pass, and that pass's reasons.
fn settle(mut c: Cluster) -> (Cluster, BTreeMap<String, String>) {
    let p = plan(&c);
    c.apply(&p);
    assert!(plan(&c).is_empty(), "a second pass changed placements");
    (c, p.unplaceable)
}

fn at<'a>(c: &'a Cluster, unit: &str) -> Option<&'a str> {
    c.placements.get(unit).map(String::as_str)
}

const APACHE: &str = "[Unit]\nWants=apache-discovery.service\n[Service]\nExecStart=/bin/true\n";
const DISCOVERY: &str = "[Unit]\nBindsTo=apache.service\nAfter=apache.service\n\
    [Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=apache.service\n";

#[test]
fn groups_share_a_machine() {
    // (units, placed before, expected groups: each set must share one machine)
    let filler = || unit("a-filler.service", "[Service]\nExecStart=/bin/true\n");
    type Case = (
        &'static str,
        Vec<ClusterUnit>,
        Vec<(&'static str, &'static str)>,
        Vec<Vec<&'static str>>,
    );
    let cases: Vec<Case> = vec![
        (
            "the sidekick pair",
            vec![
                unit("apache.service", APACHE),
                unit("apache-discovery.service", DISCOVERY),
                filler(),
            ],
            vec![],
            vec![vec!["apache.service", "apache-discovery.service"]],
        ),
        (
            "a chain of three, none with MachineOf",
            vec![
                unit("a.service", "[Unit]\nRequires=b.service\n"),
                unit("b.service", "[Unit]\nBindsTo=c.service\n"),
                unit("c.service", ""),
                filler(),
            ],
            vec![("a-filler.service", "m1")],
            vec![vec!["a.service", "b.service", "c.service"]],
        ),
        (
            "several names on one line",
            vec![
                unit("app.service", "[Unit]\nWants=cache.service db.service\n"),
                unit("cache.service", ""),
                unit("db.service", ""),
            ],
            vec![],
            vec![vec!["app.service", "cache.service", "db.service"]],
        ),
        (
            "template instances",
            vec![
                unit("web@1.service", ""),
                unit("web@2.service", ""),
                unit("disc@1.service", "[Unit]\nRequires=web@%i.service\n"),
                unit("disc@2.service", "[Unit]\nRequires=web@%i.service\n"),
            ],
            vec![("web@1.service", "m1"), ("web@2.service", "m2")],
            vec![
                vec!["web@1.service", "disc@1.service"],
                vec!["web@2.service", "disc@2.service"],
            ],
        ),
        (
            "a group placed apart before comes together",
            vec![
                unit("app.service", "[Unit]\nRequires=db.service\n"),
                unit("db.service", ""),
            ],
            vec![("app.service", "m1"), ("db.service", "m2")],
            vec![vec!["app.service", "db.service"]],
        ),
        (
            "the group goes where a member's MachineMetadata allows",
            vec![
                unit("app.service", "[Unit]\nRequires=db.service\n"),
                unit("db.service", "[X-Fleet]\nMachineMetadata=region=east\n"),
            ],
            vec![("a-filler.service", "m1")],
            vec![vec!["app.service", "db.service"]],
        ),
    ];
    for (what, units, placed, groups) in cases {
        let (c, reasons) = settle(cluster(units, &placed));
        for group in groups {
            let first = at(&c, group[0]);
            assert!(
                first.is_some(),
                "{what}: {} not placed: {reasons:?}",
                group[0]
            );
            for u in &group[1..] {
                assert_eq!(at(&c, u), first, "{what}: {u} apart from {}", group[0]);
            }
        }
        assert!(reasons.is_empty(), "{what}: {reasons:?}");
    }
}

#[test]
fn metadata_of_a_member_is_honoured() {
    let (c, _) = settle(cluster(
        vec![
            unit("app.service", "[Unit]\nRequires=db.service\n"),
            unit("db.service", "[X-Fleet]\nMachineMetadata=region=east\n"),
            unit("z.service", ""),
        ],
        &[("z.service", "m2")],
    ));
    assert_eq!(at(&c, "app.service"), Some("m1"));
    assert_eq!(at(&c, "db.service"), Some("m1"));
}

#[test]
fn dependencies_outside_the_cluster_place_nothing() {
    let off = ClusterUnit::new(
        "off.service",
        TargetState::Inactive,
        Requirements::default(),
    );
    let (c, reasons) = settle(cluster(
        vec![
            unit(
                "a.service",
                "[Unit]\nWants=ghost.service\nRequires=off.service\n",
            ),
            unit("b.service", "[Unit]\nRequires=network-online.target\n"),
            off,
        ],
        &[],
    ));
    assert!(reasons.is_empty(), "{reasons:?}");
    // Unrelated units still spread: least loaded first.
    assert_ne!(at(&c, "a.service"), at(&c, "b.service"));
    assert!(at(&c, "off.service").is_none());
}

#[test]
fn a_group_that_grows_does_not_move() {
    let (c, _) = settle(cluster(
        vec![
            unit("aaa.service", "[Unit]\nWants=app.service\n"),
            unit("app.service", "[Unit]\nRequires=db.service\n"),
            unit("db.service", ""),
        ],
        &[("app.service", "m3"), ("db.service", "m3")],
    ));
    for u in ["aaa.service", "app.service", "db.service"] {
        assert_eq!(at(&c, u), Some("m3"), "{u}");
    }
}

#[test]
fn contradicting_members_leave_the_group_unplaced_with_a_reason_naming_the_dependency() {
    let units = vec![
        unit(
            "app.service",
            "[Unit]\nRequires=db.service\n[X-Fleet]\nMachineMetadata=region=west\n",
        ),
        unit("db.service", "[X-Fleet]\nMachineMetadata=region=east\n"),
    ];
    let c = cluster(units, &[]);
    let p = plan(&c);
    assert!(p.add.is_empty(), "{p:?}");
    assert_eq!(
        p.unplaceable["app.service"],
        "no machine it may use can also run its Requires= unit db.service"
    );
    assert_eq!(
        p.unplaceable["db.service"],
        "app.service (which Requires= it) is not scheduled"
    );
    // `fleetctl why` reads the same pass: the verdicts name the dependency too.
    let why = explain(&c, &["app.service".to_string()]).unwrap();
    let m2 = why.units[0]
        .machines
        .iter()
        .find(|v| v.machine == "m2")
        .unwrap();
    assert!(!m2.fits);
    assert_eq!(m2.verdict, "its Requires= unit db.service cannot run here");
    let m1 = why.units[0]
        .machines
        .iter()
        .find(|v| v.machine == "m1")
        .unwrap();
    assert!(m1.verdict.starts_with("MachineMetadata wants"), "{m1:?}");
}

#[test]
fn a_member_that_conflicts_with_what_runs_keeps_the_group_off_that_machine() {
    let (c, reasons) = settle(cluster(
        vec![
            unit("app.service", "[Unit]\nRequires=db.service\n"),
            unit("db.service", "[X-Fleet]\nConflicts=db-*.service\n"),
            unit("db-old.service", ""),
            unit("x.service", ""),
        ],
        // m1 holds the unit db conflicts with; m2 is busiest otherwise.
        &[("db-old.service", "m1"), ("x.service", "m2")],
    ));
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(at(&c, "app.service"), Some("m3"));
    assert_eq!(at(&c, "db.service"), Some("m3"));
}

// Property: whatever the units, their dependencies, metadata and earlier placements, after a
// pass a unit and a submitted unit it Requires/BindsTo/Wants that are both placed share a
// machine, and a second pass changes nothing.

const SLOTS: usize = 8;

fn name(i: usize) -> String {
    format!("u{i}.service")
}

fn arb_unit(i: usize) -> impl Strategy<Value = ClusterUnit> {
    let deps = proptest::collection::vec((0..4usize, 0..SLOTS + 2), 0..3);
    let region = proptest::option::weighted(0.2, prop_oneof![Just("east"), Just("west")]);
    let machine_of = proptest::option::weighted(0.15, 0..SLOTS);
    let conflicts = proptest::option::weighted(0.15, 0..SLOTS);
    let state = prop_oneof![
        6 => Just(TargetState::Launched),
        1 => Just(TargetState::Loaded),
        1 => Just(TargetState::Inactive),
    ];
    (deps, region, machine_of, conflicts, state).prop_map(
        move |(deps, region, machine_of, conflicts, state)| {
            let mut body = String::from("[Unit]\n");
            for (kind, to) in deps {
                let kind = ["Requires", "BindsTo", "Wants", "After"][kind];
                // Slots past SLOTS name units that are not submitted.
                body.push_str(&format!("{kind}={}\n", name(to)));
            }
            body.push_str("[X-Fleet]\n");
            if let Some(r) = region {
                body.push_str(&format!("MachineMetadata=region={r}\n"));
            }
            if let Some(t) = machine_of {
                body.push_str(&format!("MachineOf={}\n", name(t)));
            }
            if let Some(t) = conflicts {
                body.push_str(&format!("Conflicts={}\n", name(t)));
            }
            let n = name(i);
            let file = UnitFile::parse(&body).unwrap();
            ClusterUnit::new(n.clone(), state, Requirements::from_unit(&file, &n))
        },
    )
}

fn arb_cluster() -> impl Strategy<Value = Cluster> {
    let units: Vec<_> = (0..SLOTS).map(arb_unit).collect();
    let placed = proptest::collection::vec(proptest::option::of(0..3usize), SLOTS);
    (units, placed).prop_map(|(units, placed)| {
        let machines = three_machines();
        let placements = placed
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.map(|m| (name(i), machines[m].id.clone())))
            .collect();
        Cluster {
            machines,
            units,
            placements,
            ..Default::default()
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_unit_and_what_it_requires_share_a_machine(mut c in arb_cluster()) {
        let p = plan(&c);
        c.apply(&p);
        let again = plan(&c);
        prop_assert!(again.is_empty(), "second pass moved units: {again:?}");
        let names: BTreeSet<&str> = c.units.iter().map(|u| u.name.as_str()).collect();
        for u in &c.units {
            let Some(m) = c.placements.get(&u.name) else { continue };
            for (dep, kind) in u.requirements.dependencies.colocated() {
                if !names.contains(dep) {
                    continue;
                }
                if let Some(other) = c.placements.get(dep) {
                    prop_assert_eq!(m, other, "{} {}={} apart", u.name, kind, dep);
                }
            }
        }
    }
}
