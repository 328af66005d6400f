//! The scheduler's rules, one table or scenario each (fleet's functional scheduling tests
//! recast as snapshots).

use engine::scheduler::{plan, Cluster, ClusterUnit, Placement, Plan};
use registry::{MachineState, TargetState};
use std::collections::{BTreeMap, BTreeSet};
use unit::Requirements;

fn machine(id: &str, metadata: &[(&str, &str)]) -> MachineState {
    MachineState {
        id: id.to_string(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn machines(ids: &[&str]) -> Vec<MachineState> {
    ids.iter().map(|id| machine(id, &[])).collect()
}

fn unit(name: &str) -> ClusterUnit {
    ClusterUnit::new(name, TargetState::Launched, Requirements::default())
}

fn with(name: &str, f: impl FnOnce(&mut Requirements)) -> ClusterUnit {
    let mut r = Requirements::default();
    f(&mut r);
    ClusterUnit::new(name, TargetState::Launched, r)
}

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry(k.to_string()).or_default().insert(v.to_string());
    }
    m
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn cluster(
    machines: Vec<MachineState>,
    units: Vec<ClusterUnit>,
    placed: &[(&str, &str)],
) -> Cluster {
    Cluster {
        machines,
        units,
        placements: placed
            .iter()
            .map(|(u, m)| (u.to_string(), m.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Plans, applies, checks that a second pass changes nothing, and returns the plan and the
/// resulting placements.
fn settle(c: &mut Cluster) -> Plan {
    let p = plan(c);
    c.apply(&p);
    let again = plan(c);
    assert!(
        again.is_empty(),
        "second pass changed placements: {again:?}\nafter first: {p:?}"
    );
    assert_eq!(
        again.unplaceable.keys().collect::<Vec<_>>(),
        p.unplaceable.keys().collect::<Vec<_>>(),
        "second pass disagrees about unplaceable units"
    );
    p
}

fn placed(c: &Cluster, u: &str) -> Option<String> {
    c.placements.get(u).cloned()
}

#[test]
fn least_loaded_then_machine_id() {
    let mut c = cluster(
        machines(&["m3", "m1", "m2"]),
        (1..=5).map(|i| unit(&format!("u{i}.service"))).collect(),
        &[],
    );
    settle(&mut c);
    let want = [
        ("u1", "m1"),
        ("u2", "m2"),
        ("u3", "m3"),
        ("u4", "m1"),
        ("u5", "m2"),
    ];
    for (u, m) in want {
        assert_eq!(
            placed(&c, &format!("{u}.service")).as_deref(),
            Some(m),
            "{u}"
        );
    }
}

#[test]
fn load_counts_global_units_where_they_run() {
    // g runs on m1 only (metadata), so the first unit goes to m2, the next ones alternate.
    let g = with("g.service", |r| {
        r.global = true;
        r.machine_metadata = metadata(&[("role", "edge")]);
    });
    let inactive_global = ClusterUnit {
        desired: TargetState::Inactive,
        ..with("h.service", |r| r.global = true)
    };
    let mut c = cluster(
        vec![machine("m1", &[("role", "edge")]), machine("m2", &[])],
        vec![
            g,
            inactive_global,
            unit("a.service"),
            unit("b.service"),
            unit("c.service"),
        ],
        &[],
    );
    let p = settle(&mut c);
    assert_eq!(placed(&c, "a.service").as_deref(), Some("m2"));
    assert_eq!(placed(&c, "b.service").as_deref(), Some("m1"));
    assert_eq!(placed(&c, "c.service").as_deref(), Some("m2"));
    assert_eq!(
        placed(&c, "g.service"),
        None,
        "global units are never placed"
    );
    assert!(p.unplaceable.is_empty());
}

#[test]
fn five_mutually_conflicting_units_on_three_machines() {
    let units = (0..5).map(|i| {
        with(&format!("conflict.{i}.service"), |r| {
            r.conflicts = strings(&["conflict.*.service"])
        })
    });
    let mut c = cluster(machines(&["m1", "m2", "m3"]), units.collect(), &[]);
    let p = settle(&mut c);
    let used: BTreeSet<&String> = c.placements.values().collect();
    assert_eq!(c.placements.len(), 3);
    assert_eq!(
        used.len(),
        3,
        "placed units share a machine: {:?}",
        c.placements
    );
    assert_eq!(p.unplaceable.len(), 2);
    for (u, reason) in &p.unplaceable {
        assert!(!c.placements.contains_key(u));
        assert!(
            reason.starts_with("conflicts with conflict."),
            "{u}: {reason}"
        );
        assert!(reason.ends_with("on every machine"), "{u}: {reason}");
    }
}

#[test]
fn conflicts_apply_in_both_directions() {
    // Only a.service names the conflict; whichever is placed first, they end up apart.
    for (first, second) in [("a.service", "b.service"), ("b.service", "a.service")] {
        let a = with("a.service", |r| r.conflicts = strings(&["b.service"]));
        let mut c = cluster(
            machines(&["m1", "m2"]),
            vec![a, unit("b.service")],
            &[(first, "m1")],
        );
        settle(&mut c);
        assert_eq!(placed(&c, first).as_deref(), Some("m1"));
        assert_eq!(
            placed(&c, second).as_deref(),
            Some("m2"),
            "{second} must avoid {first}"
        );
    }
    // On one machine the later one is left out, with the peer named.
    let a = with("a.service", |r| r.conflicts = strings(&["b.service"]));
    let mut c = cluster(machines(&["m1"]), vec![a, unit("b.service")], &[]);
    let p = settle(&mut c);
    assert_eq!(placed(&c, "a.service").as_deref(), Some("m1"));
    assert_eq!(
        p.unplaceable.get("b.service").map(String::as_str),
        Some("conflicts with a.service on every machine")
    );
}

#[test]
fn a_unit_does_not_conflict_with_itself() {
    let mut c = cluster(
        machines(&["m1"]),
        vec![with("web.service", |r| r.conflicts = strings(&["web*"]))],
        &[],
    );
    settle(&mut c);
    assert_eq!(placed(&c, "web.service").as_deref(), Some("m1"));
}

#[test]
fn machine_id_full_and_short() {
    let long1 = "1234abcd00000000000000000000aaaa";
    let long2 = "99990000000000000000000000000000";
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        (long2, Some(long2), None),
        ("1234abcd", Some(long1), None),
        (
            "1234abc",
            None,
            Some("MachineID 1234abc matches no machine"),
        ),
        (
            "deadbeef",
            None,
            Some("MachineID deadbeef matches no machine"),
        ),
    ];
    for &(id, want, reason) in cases {
        let u = with("pin.service", |r| r.machine_id = Some(id.to_string()));
        // A filler unit makes long1 the more loaded machine, so only the pin can choose it.
        let mut c = cluster(
            machines(&[long1, long2]),
            vec![u, unit("filler.service")],
            &[("filler.service", long1)],
        );
        let p = settle(&mut c);
        assert_eq!(placed(&c, "pin.service").as_deref(), want, "MachineID={id}");
        assert_eq!(
            p.unplaceable.get("pin.service").map(String::as_str),
            reason,
            "MachineID={id}"
        );
    }
}

#[test]
fn machine_metadata_or_within_key_and_across_keys() {
    let ms = vec![
        machine("m1", &[("region", "east"), ("disk", "hdd")]),
        machine("m2", &[("region", "west"), ("disk", "ssd")]),
        machine("m3", &[("region", "north"), ("disk", "ssd")]),
        machine("m4", &[("disk", "ssd")]),
    ];
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&[("region", "east")], &["m1"]),
        (&[("region", "east"), ("region", "west")], &["m1", "m2"]),
        (
            &[("region", "east"), ("region", "west"), ("disk", "ssd")],
            &["m2"],
        ),
        (&[("disk", "ssd")], &["m2", "m3", "m4"]),
        (&[("region", "south")], &[]),
        (&[("region", "east"), ("disk", "ssd")], &[]),
    ];
    for &(req, allowed) in cases {
        // Enough units to fill every allowed machine, so a wrong match would show.
        let units: Vec<ClusterUnit> = (0..6)
            .map(|i| {
                with(&format!("u{i}.service"), |r| {
                    r.machine_metadata = metadata(req)
                })
            })
            .collect();
        let mut c = cluster(ms.clone(), units, &[]);
        let p = settle(&mut c);
        let used: BTreeSet<&str> = c.placements.values().map(String::as_str).collect();
        assert_eq!(
            used,
            allowed.iter().copied().collect(),
            "MachineMetadata {req:?}"
        );
        if allowed.is_empty() {
            assert_eq!(p.unplaceable.len(), 6);
            let reason = &p.unplaceable["u0.service"];
            assert!(
                reason.starts_with("no machine matches MachineMetadata "),
                "{reason}"
            );
        }
    }
    let u = with("u.service", |r| {
        r.machine_metadata = metadata(&[("region", "east"), ("region", "west")])
    });
    let p = plan(&cluster(machines(&["m1"]), vec![u], &[]));
    assert_eq!(
        p.unplaceable["u.service"],
        "no machine matches MachineMetadata region=east|west"
    );
}

fn ping_pong(n: usize) -> Vec<ClusterUnit> {
    let mut units = Vec::new();
    for i in 0..n {
        units.push(unit(&format!("ping.{i}.service")));
        units.push(with(&format!("pong.{i}.service"), |r| {
            r.machine_of = strings(&[&format!("ping.{i}.service")])
        }));
    }
    units
}

#[test]
fn machine_of_pairs_move_together() {
    let mut c = cluster(machines(&["m1", "m2", "m3"]), ping_pong(3), &[]);
    settle(&mut c);
    for i in 0..3 {
        let ping = placed(&c, &format!("ping.{i}.service"));
        assert!(ping.is_some());
        assert_eq!(placed(&c, &format!("pong.{i}.service")), ping, "pair {i}");
    }
    let gone = placed(&c, "ping.0.service").unwrap_or_default();
    c.machines.retain(|m| m.id != gone);
    let p = settle(&mut c);
    assert_eq!(
        p.remove,
        vec![
            Placement::new("ping.0.service", gone.as_str()),
            Placement::new("pong.0.service", gone.as_str())
        ]
    );
    assert_eq!(p.add.len(), 2, "both move in one pass: {p:?}");
    assert_eq!(placed(&c, "ping.0.service"), placed(&c, "pong.0.service"));
    assert_ne!(placed(&c, "ping.0.service"), Some(gone));
}

#[test]
fn machine_of_chain_in_one_pass() {
    // a follows b follows c: names sort followers first, the order must not matter.
    let a = with("a.service", |r| r.machine_of = strings(&["b.service"]));
    let b = with("b.service", |r| r.machine_of = strings(&["c.service"]));
    let z = with("z.service", |r| {
        r.machine_of = strings(&["a.service", "c.service"])
    });
    let mut c = cluster(
        machines(&["m1", "m2", "m3"]),
        vec![a, b, unit("c.service"), z],
        &[],
    );
    let p = settle(&mut c);
    assert!(p.unplaceable.is_empty(), "{p:?}");
    let m = placed(&c, "c.service");
    for u in ["a.service", "b.service", "z.service"] {
        assert_eq!(placed(&c, u), m, "{u}");
    }
}

#[test]
fn machine_of_cycle_and_missing_targets_have_reasons() {
    let a = with("a.service", |r| r.machine_of = strings(&["b.service"]));
    let b = with("b.service", |r| r.machine_of = strings(&["a.service"]));
    let f = with("f.service", |r| r.machine_of = strings(&["a.service"]));
    let x = with("x.service", |r| r.machine_of = strings(&["db.service"]));
    let y = with("y.service", |r| r.machine_of = strings(&["off.service"]));
    let off = ClusterUnit {
        desired: TargetState::Inactive,
        ..unit("off.service")
    };
    let mut c = cluster(
        machines(&["m1"]),
        vec![a, b, f, x, y, off],
        &[("a.service", "m1")],
    );
    let p = settle(&mut c);
    let want = [
        (
            "a.service",
            "MachineOf cycle: a.service -> b.service -> a.service",
        ),
        (
            "b.service",
            "MachineOf cycle: b.service -> a.service -> b.service",
        ),
        ("f.service", "MachineOf target a.service is not scheduled"),
        ("x.service", "MachineOf target db.service does not exist"),
        ("y.service", "MachineOf target off.service is not scheduled"),
    ];
    assert_eq!(
        p.unplaceable,
        want.iter()
            .map(|(u, r)| (u.to_string(), r.to_string()))
            .collect()
    );
    assert_eq!(p.remove, vec![Placement::new("a.service", "m1")]);
    assert!(c.placements.is_empty());
}

#[test]
fn machine_of_a_global_unit() {
    let g = with("g.service", |r| {
        r.global = true;
        r.machine_metadata = metadata(&[("role", "db")]);
    });
    let f = with("f.service", |r| r.machine_of = strings(&["g.service"]));
    let mut c = cluster(
        vec![machine("m1", &[]), machine("m2", &[("role", "db")])],
        vec![g, f],
        &[],
    );
    settle(&mut c);
    assert_eq!(placed(&c, "f.service").as_deref(), Some("m2"));
}

#[test]
fn replaced_unit_moves_and_replacing_unit_stays() {
    let new = with("new.service", |r| r.replaces = strings(&["old.service"]));
    let mut c = cluster(
        machines(&["m1", "m2"]),
        vec![new, unit("old.service")],
        &[("new.service", "m1"), ("old.service", "m1")],
    );
    let p = settle(&mut c);
    assert_eq!(p.remove, vec![Placement::new("old.service", "m1")]);
    assert_eq!(p.add, vec![Placement::new("old.service", "m2")]);
}

#[test]
fn placing_a_replacing_unit_pushes_the_replaced_one_off() {
    // new follows anchor onto m1, where old is: old moves to m2 with its follower.
    let new = with("new.service", |r| {
        r.replaces = strings(&["old*.service"]);
        r.machine_of = strings(&["anchor.service"]);
    });
    let side = with("side.service", |r| r.machine_of = strings(&["old.service"]));
    let mut c = cluster(
        machines(&["m1", "m2"]),
        vec![unit("anchor.service"), new, unit("old.service"), side],
        &[
            ("anchor.service", "m1"),
            ("old.service", "m1"),
            ("side.service", "m1"),
        ],
    );
    let p = settle(&mut c);
    assert_eq!(placed(&c, "new.service").as_deref(), Some("m1"));
    assert_eq!(placed(&c, "old.service").as_deref(), Some("m2"));
    assert_eq!(placed(&c, "side.service").as_deref(), Some("m2"));
    assert!(p.unplaceable.is_empty());
}

#[test]
fn replaced_unit_with_nowhere_to_go_stays_unplaced() {
    let new = with("new.service", |r| r.replaces = strings(&["old.service"]));
    let old = with("old.service", |r| r.machine_id = Some("m1".into()));
    let mut c = cluster(
        machines(&["m1", "m2"]),
        vec![new, old],
        &[("new.service", "m1"), ("old.service", "m1")],
    );
    let p = settle(&mut c);
    assert_eq!(placed(&c, "new.service").as_deref(), Some("m1"));
    assert_eq!(placed(&c, "old.service"), None);
    assert_eq!(
        p.unplaceable["old.service"],
        "is replaced by new.service on machine m1"
    );
}

#[test]
fn circular_replaces_are_ignored() {
    let a = with("a.service", |r| r.replaces = strings(&["b.service"]));
    let b = with("b.service", |r| r.replaces = strings(&["c.service"]));
    let cc = with("c.service", |r| r.replaces = strings(&["a.service"]));
    let mut c = cluster(
        machines(&["m1", "m2"]),
        vec![a, b, cc],
        &[
            ("a.service", "m1"),
            ("b.service", "m1"),
            ("c.service", "m1"),
        ],
    );
    assert!(settle(&mut c).is_empty());
}

#[test]
fn units_that_should_not_run_are_taken_off() {
    let off = ClusterUnit {
        desired: TargetState::Inactive,
        ..unit("off.service")
    };
    let global = with("g.service", |r| r.global = true);
    let template = unit("web@.service");
    let mut c = cluster(
        machines(&["m1"]),
        vec![off, global, template, unit("web@1.service")],
        &[
            ("off.service", "m1"),
            ("g.service", "m1"),
            ("gone.service", "m1"),
            ("web@.service", "m1"),
        ],
    );
    let p = settle(&mut c);
    let removed: Vec<&str> = p.remove.iter().map(|p| p.unit.as_str()).collect();
    assert_eq!(
        removed,
        ["g.service", "gone.service", "off.service", "web@.service"]
    );
    assert_eq!(p.add, vec![Placement::new("web@1.service", "m1")]);
    assert!(p.unplaceable.is_empty());
}

#[test]
fn placed_units_stay_while_they_fit() {
    // Everything on m1, m2 empty: nothing moves (no rebalancing).
    let units: Vec<ClusterUnit> = (0..4).map(|i| unit(&format!("u{i}.service"))).collect();
    let placed_all: Vec<(String, &str)> = (0..4).map(|i| (format!("u{i}.service"), "m1")).collect();
    let refs: Vec<(&str, &str)> = placed_all.iter().map(|(u, m)| (u.as_str(), *m)).collect();
    let c = cluster(machines(&["m1", "m2"]), units, &refs);
    assert_eq!(plan(&c), Plan::default());
}

#[test]
fn units_move_when_their_machine_stops_matching() {
    let u = with("u.service", |r| {
        r.machine_metadata = metadata(&[("region", "east")])
    });
    let v = with("v.service", |r| r.machine_id = Some("m1".into()));
    let mut c = cluster(
        vec![machine("m1", &[]), machine("m2", &[("region", "east")])],
        vec![u, v],
        &[("u.service", "m1"), ("v.service", "m2")],
    );
    let p = settle(&mut c);
    assert_eq!(
        p.remove,
        vec![
            Placement::new("u.service", "m1"),
            Placement::new("v.service", "m2")
        ]
    );
    assert_eq!(
        p.add,
        vec![
            Placement::new("u.service", "m2"),
            Placement::new("v.service", "m1")
        ]
    );
}

#[test]
fn newly_conflicting_placed_units_the_later_name_moves() {
    for conflicts_on in ["a.service", "b.service"] {
        let mk = |name: &str| {
            if name == conflicts_on {
                let other = if name == "a.service" {
                    "b.service"
                } else {
                    "a.service"
                };
                with(name, |r| r.conflicts = strings(&[other]))
            } else {
                unit(name)
            }
        };
        let mut c = cluster(
            machines(&["m1", "m2"]),
            vec![mk("a.service"), mk("b.service")],
            &[("a.service", "m1"), ("b.service", "m1")],
        );
        let p = settle(&mut c);
        assert_eq!(
            p.remove,
            vec![Placement::new("b.service", "m1")],
            "Conflicts on {conflicts_on}"
        );
        assert_eq!(p.add, vec![Placement::new("b.service", "m2")]);
    }
}

#[test]
fn conflicting_global_units_first_name_wins_and_non_globals_avoid_them() {
    let g1 = with("g1.service", |r| {
        r.global = true;
        r.conflicts = strings(&["g2.service", "app.service"]);
    });
    let g2 = with("g2.service", |r| r.global = true);
    let lone = with("lone.service", |r| r.global = true);
    let mut c = cluster(
        vec![machine("m1", &[]), machine("m2", &[])],
        vec![g1, g2, lone, unit("app.service")],
        &[("app.service", "m1")],
    );
    let p = settle(&mut c);
    assert_eq!(p.remove, vec![Placement::new("app.service", "m1")]);
    assert_eq!(
        p.unplaceable["app.service"],
        "conflicts with g1.service on every machine"
    );
}

#[test]
fn no_machines() {
    let mut c = cluster(vec![], vec![unit("a.service")], &[("a.service", "m1")]);
    let p = settle(&mut c);
    assert_eq!(p.unplaceable["a.service"], "no machines");
    assert_eq!(p.remove, vec![Placement::new("a.service", "m1")]);
}

#[test]
fn input_order_does_not_matter() {
    let mut units = ping_pong(4);
    units.extend((0..6).map(|i| {
        with(&format!("c{i}.service"), |r| {
            r.conflicts = strings(&["c*.service"])
        })
    }));
    let ms = machines(&["m1", "m2", "m3", "m4"]);
    let a = cluster(ms.clone(), units.clone(), &[("c5.service", "m2")]);
    let mut b = a.clone();
    b.units.reverse();
    b.machines.reverse();
    assert_eq!(plan(&a), plan(&b));
}

#[test]
fn few_matching_machines_in_a_large_cluster() {
    // 2 of 40 machines match; the busier one already holds two units.
    let mut ms = machines(
        &(0..40)
            .map(|i| format!("m{i:02}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    ms[7].metadata.insert("region".into(), "east".into());
    ms[30].metadata.insert("region".into(), "east".into());
    let east = |name: &str| {
        with(name, |r| {
            r.machine_metadata = metadata(&[("region", "east")])
        })
    };
    let mut c = cluster(
        ms,
        vec![
            unit("x.service"),
            unit("y.service"),
            east("a.service"),
            east("b.service"),
            east("c.service"),
        ],
        &[("x.service", "m07"), ("y.service", "m07")],
    );
    settle(&mut c);
    assert_eq!(placed(&c, "a.service").as_deref(), Some("m30"));
    assert_eq!(placed(&c, "b.service").as_deref(), Some("m30"));
    // Now both hold two units: the tie goes to the smaller id.
    assert_eq!(placed(&c, "c.service").as_deref(), Some("m07"));
}

// ----- drain -----

fn drained(mut c: Cluster, ids: &[&str]) -> Cluster {
    c.drain.machines = ids.iter().map(|s| s.to_string()).collect();
    c
}

fn report(c: &Cluster) -> Vec<(String, String, engine::scheduler::DrainStatus)> {
    engine::scheduler::drain_report(c)
        .into_iter()
        .map(|r| (r.unit, r.machine, r.status))
        .collect()
}

#[test]
fn a_drained_machine_sends_its_units_away_one_at_a_time() {
    use engine::scheduler::DrainStatus::{Moves, Waits};
    let mut c = drained(
        cluster(
            machines(&["m1", "m2", "m3"]),
            vec![unit("a.service"), unit("b.service"), unit("c.service")],
            &[
                ("a.service", "m1"),
                ("b.service", "m1"),
                ("c.service", "m2"),
            ],
        ),
        &["m1"],
    );
    assert_eq!(
        report(&c),
        vec![
            ("a.service".into(), "m1".into(), Moves("m3".into())),
            ("b.service".into(), "m1".into(), Waits),
        ]
    );
    let p = plan(&c);
    assert_eq!(p.remove, vec![Placement::new("a.service", "m1")]);
    assert_eq!(p.add, vec![Placement::new("a.service", "m3")]);
    c.apply(&p);
    // a is in motion: b waits for it to run at its new place.
    c.drain.moving.insert("a.service".into());
    assert!(plan(&c).is_empty());
    c.drain.moving.clear();
    let p = plan(&c);
    assert_eq!(p.remove, vec![Placement::new("b.service", "m1")]);
    assert_eq!(p.add.len(), 1);
    assert_ne!(p.add[0].machine, "m1");
    c.apply(&p);
    assert!(plan(&c).is_empty());
    assert_eq!(report(&c), vec![]);
}

#[test]
fn a_drained_machine_takes_no_new_unit_and_says_so() {
    let c = drained(
        cluster(machines(&["m1", "m2"]), vec![unit("a.service")], &[]),
        &["m1"],
    );
    assert_eq!(plan(&c).add, vec![Placement::new("a.service", "m2")]);
    let c = drained(c, &["m1", "m2"]);
    let p = plan(&c);
    assert!(p.add.is_empty());
    let why = &p.unplaceable["a.service"];
    assert!(why.contains("machines m1, m2 are drained"), "{why}");
    let e = engine::explain::explain(&c, &["a.service".to_string()]).unwrap();
    assert!(e.units[0]
        .machines
        .iter()
        .all(|v| !v.fits && v.verdict.contains("drained")));
}

#[test]
fn conflicts_decide_where_drained_units_go_and_whether_they_can() {
    use engine::scheduler::DrainStatus::{Moves, Stays};
    let conflicting = |name: &str, other: &str| {
        let other = other.to_string();
        with(name, move |r| r.conflicts = vec![other])
    };
    // x conflicts with y on m2: x goes to m3, though m2 is as loaded.
    let c = drained(
        cluster(
            machines(&["m1", "m2", "m3"]),
            vec![
                conflicting("x.service", "y.service"),
                unit("y.service"),
                unit("z.service"),
            ],
            &[
                ("x.service", "m1"),
                ("y.service", "m2"),
                ("z.service", "m3"),
            ],
        ),
        &["m1"],
    );
    assert_eq!(
        report(&c),
        vec![("x.service".into(), "m1".into(), Moves("m3".into()))]
    );
    // Without m3, x has nowhere to go: it stays where it runs, and the report says why.
    let c = drained(
        cluster(
            machines(&["m1", "m2"]),
            vec![conflicting("x.service", "y.service"), unit("y.service")],
            &[("x.service", "m1"), ("y.service", "m2")],
        ),
        &["m1"],
    );
    assert!(plan(&c).is_empty());
    match &report(&c)[..] {
        [(u, m, Stays(why))] if u == "x.service" && m == "m1" => {
            assert!(why.contains("conflicts with y.service"), "{why}");
            assert!(why.contains("machine m1 is drained"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pinned_units_stay_and_followers_move_with_their_target() {
    use engine::scheduler::DrainStatus::{Moves, Stays};
    let c = drained(
        cluster(
            machines(&["m1", "m2"]),
            vec![
                unit("db.service"),
                with("db-backup.service", |r| {
                    r.machine_of = strings(&["db.service"])
                }),
                with("pinned.service", |r| r.machine_id = Some("m1".into())),
                with("pinned-log.service", |r| {
                    r.machine_of = strings(&["pinned.service"])
                }),
            ],
            &[
                ("db.service", "m1"),
                ("db-backup.service", "m1"),
                ("pinned.service", "m1"),
                ("pinned-log.service", "m1"),
            ],
        ),
        &["m1"],
    );
    // In name order: `-` sorts before `.`.
    let r = report(&c);
    assert_eq!(
        r[0],
        ("db-backup.service".into(), "m1".into(), Moves("m2".into()))
    );
    assert_eq!(r[1], ("db.service".into(), "m1".into(), Moves("m2".into())));
    assert!(
        matches!(&r[2], (u, _, Stays(why)) if u == "pinned-log.service" && why.contains("moves only with pinned.service")),
        "{r:?}"
    );
    assert!(
        matches!(&r[3], (u, _, Stays(why)) if u == "pinned.service" && why.contains("MachineID=m1")),
        "{r:?}"
    );
    let p = plan(&c);
    assert_eq!(
        p.add,
        vec![
            Placement::new("db-backup.service", "m2"),
            Placement::new("db.service", "m2")
        ]
    );
    // Moved units say why in `fleetctl why`.
    let e = engine::explain::explain(&c, &["db.service".to_string()]).unwrap();
    assert!(
        e.units[0].reason.starts_with("machine m1 is drained"),
        "{}",
        e.units[0].reason
    );
}
