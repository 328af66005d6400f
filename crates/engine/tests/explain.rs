//! Table tests of the explanations: each names the rule that decided, on a small cluster.

use engine::explain::{explain, Action, UnitExplanation};
use engine::scheduler::{Cluster, ClusterUnit};
use registry::{MachineState, TargetState};
use std::collections::{BTreeMap, BTreeSet};
use unit::Requirements;

fn machine(id: &str, region: &str) -> MachineState {
    MachineState {
        id: id.into(),
        metadata: BTreeMap::from([("region".to_string(), region.to_string())]),
        ..Default::default()
    }
}

fn unit(name: &str, f: impl FnOnce(&mut Requirements)) -> ClusterUnit {
    let mut r = Requirements::default();
    f(&mut r);
    ClusterUnit::new(name, TargetState::Launched, r)
}

fn region(r: &mut Requirements, v: &str) {
    r.machine_metadata
        .insert("region".into(), BTreeSet::from([v.to_string()]));
}

/// Three machines (m1 east, m2 west, m3 west) and the units of the README's example.
fn cluster() -> Cluster {
    Cluster {
        machines: vec![
            machine("m1", "east"),
            machine("m2", "west"),
            machine("m3", "west"),
        ],
        units: vec![
            unit("db.service", |r| region(r, "east")),
            unit("db-backup.service", |r| {
                r.machine_of = vec!["db.service".into()]
            }),
            unit("web1.service", |r| r.conflicts = vec!["web*".into()]),
            unit("web2.service", |r| r.conflicts = vec!["web*".into()]),
            unit("gpu.service", |r| region(r, "north")),
            ClusterUnit::new(
                "off.service",
                TargetState::Inactive,
                Requirements::default(),
            ),
        ],
        placements: BTreeMap::from([("web1.service".to_string(), "m2".to_string())]),
        ..Default::default()
    }
}

fn one(c: &Cluster, name: &str) -> UnitExplanation {
    explain(c, &[name.to_string()]).unwrap().units.remove(0)
}

fn verdict<'a>(u: &'a UnitExplanation, m: &str) -> (bool, &'a str) {
    let v = u.machines.iter().find(|v| v.machine == m).unwrap();
    (v.fits, v.verdict.as_str())
}

/// Unit, action, machine after, part of the reason, and (machine, fits, part of the verdict).
type Case<'a> = (
    &'a str,
    Action,
    Option<&'a str>,
    &'a str,
    Vec<(&'a str, bool, &'a str)>,
);

#[test]
fn reasons_name_the_rule_per_machine() {
    let c = cluster();
    let cases: Vec<Case> = vec![
        (
            "db.service",
            Action::Place,
            Some("m1"),
            "least loaded machine that fits",
            vec![
                ("m1", true, "runs here"),
                (
                    "m2",
                    false,
                    "MachineMetadata wants region=east, machine has region=west",
                ),
            ],
        ),
        (
            "db-backup.service",
            Action::Place,
            Some("m1"),
            "on machine m1 of MachineOf target db.service",
            vec![
                ("m1", true, "runs here"),
                ("m3", false, "MachineOf target db.service runs on m1"),
            ],
        ),
        (
            "web1.service",
            Action::Keep,
            Some("m2"),
            "still fits there",
            vec![
                ("m1", true, "fits ("),
                ("m2", true, "runs here"),
                ("m3", false, "conflicts with web2.service, which runs here"),
            ],
        ),
        (
            "web2.service",
            Action::Place,
            Some("m3"),
            "least loaded",
            vec![
                ("m2", false, "conflicts with web1.service, which runs here"),
                ("m3", true, "runs here"),
            ],
        ),
        (
            "gpu.service",
            Action::None,
            None,
            "no machine matches MachineMetadata region=north",
            vec![(
                "m1",
                false,
                "MachineMetadata wants region=north, machine has region=east",
            )],
        ),
        (
            "off.service",
            Action::None,
            None,
            "desired state is inactive",
            vec![("m1", false, "desired state is inactive")],
        ),
    ];
    for (name, action, after, reason, machines) in cases {
        let u = one(&c, name);
        assert_eq!(u.action, action, "{name}: {u:?}");
        assert_eq!(u.after.as_deref(), after, "{name}: {u:?}");
        assert!(u.reason.contains(reason), "{name}: {:?}", u.reason);
        assert_eq!(u.machines.len(), 3, "{name}");
        for (m, fits, text) in machines {
            let (f, v) = verdict(&u, m);
            assert_eq!(f, fits, "{name} on {m}: {v}");
            assert!(v.contains(text), "{name} on {m}: {v:?} lacks {text:?}");
        }
    }
}

#[test]
fn a_move_and_what_else_moves() {
    // web1 sits on m1 (east) but now asks for west; the new cache replaces web2 on m3.
    let mut c = cluster();
    c.placements.insert("web2.service".into(), "m3".into());
    c.placements.insert("web1.service".into(), "m1".into());
    c.with_unit(unit("web1.service", |r| region(r, "west")));
    c.with_unit(unit("cache.service", |r| {
        r.machine_id = Some("m3".into());
        r.replaces = vec!["web2.service".into()];
    }));
    let e = explain(&c, &["web1.service".into(), "cache.service".into()]).unwrap();
    let web1 = &e.units[0];
    assert_eq!(web1.action, Action::Move, "{web1:?}");
    assert_eq!(web1.before.as_deref(), Some("m1"));
    assert_eq!(web1.after.as_deref(), Some("m2"));
    let cache = &e.units[1];
    assert_eq!(cache.after.as_deref(), Some("m3"), "{cache:?}");
    assert!(
        verdict(cache, "m1")
            .1
            .contains("MachineID=m3 names another machine"),
        "{cache:?}"
    );
    let moved: Vec<(&str, Option<&str>, Option<&str>)> = e
        .moves
        .iter()
        .map(|m| (m.unit.as_str(), m.from.as_deref(), m.to.as_deref()))
        .collect();
    assert!(
        moved.contains(&("web2.service", Some("m3"), Some("m1"))),
        "web2 is pushed off m3 and conflicts with web1 on m2: {moved:?}"
    );
}

#[test]
fn a_gone_machine_and_a_missing_target_are_named() {
    let mut c = cluster();
    c.placements.insert("web2.service".into(), "m9".into());
    c.with_unit(unit("side.service", |r| {
        r.machine_of = vec!["ghost.service".into()]
    }));
    let e = explain(&c, &["web2.service".into(), "side.service".into()]).unwrap();
    assert_eq!(e.units[0].action, Action::Move);
    assert!(
        e.units[0].reason.starts_with("machine m9 is gone; "),
        "{}",
        e.units[0].reason
    );
    assert_eq!(e.units[1].action, Action::None);
    assert_eq!(
        e.units[1].reason,
        "MachineOf target ghost.service does not exist"
    );
    assert_eq!(
        verdict(&e.units[1], "m1"),
        (false, "MachineOf target ghost.service does not exist")
    );
}

#[test]
fn global_units_and_unknown_names() {
    let mut c = cluster();
    c.with_unit(unit("agent.service", |r| {
        r.global = true;
        region(r, "west");
    }));
    let u = one(&c, "agent.service");
    assert_eq!(u.action, Action::Global);
    assert!(u.reason.contains("2 of 3"), "{}", u.reason);
    assert_eq!(verdict(&u, "m2"), (true, "runs here (global unit)"));
    assert!(!verdict(&u, "m1").0);

    let err = explain(&c, &["nope.service".into(), "db.service".into()]).unwrap_err();
    assert_eq!(err.0, vec!["nope.service".to_string()]);
    assert!(err.to_string().contains("fleetctl submit"), "{err}");
}
