//! Properties of the scheduler over random clusters: every placement it makes satisfies every
//! rule, the same snapshot gives the same plan whatever the input order, a second pass changes
//! nothing, and losing a machine moves only what must move.

use engine::scheduler::{plan, Cluster, ClusterUnit, Plan};
use proptest::prelude::*;
use registry::{MachineState, TargetState};
use std::collections::{BTreeMap, BTreeSet};
use unit::glob::path_match;
use unit::Requirements;

const MACHINE_SLOTS: usize = 7;
const UNIT_SLOTS: usize = 24;

fn machine_id(i: usize) -> String {
    format!("{i:02}{}", "f".repeat(30))
}

fn unit_name(i: usize) -> String {
    match i % 12 {
        10 => "t@.service".to_string(),
        11 => format!("t@{i}.service"),
        _ => format!("u{i:02}.service"),
    }
}

const GLOBS: &[&str] = &[
    "u0*.service",
    "u1?.service",
    "u0[0-4].service",
    "*",
    "t@*",
    "[",
    "u0\\5.service",
];

fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(GLOBS).prop_map(str::to_string),
        (0..UNIT_SLOTS).prop_map(unit_name),
    ]
}

/// A machine with one of `slots` ids; in larger clusters a region is rare, so that a unit
/// asking for one has few machines to choose from.
fn machine(slots: usize) -> impl Strategy<Value = MachineState> {
    let regions = if slots > 20 { slots } else { 3 };
    (0..slots, 0..regions, 0..2usize).prop_map(|(i, region, disk)| {
        let mut metadata = BTreeMap::new();
        if let Some(name) = ["east", "west"].get(region.wrapping_sub(1)) {
            metadata.insert("region".to_string(), name.to_string());
        }
        if disk > 0 {
            metadata.insert("disk".to_string(), "ssd".to_string());
        }
        MachineState {
            id: machine_id(i),
            metadata,
            ..Default::default()
        }
    })
}

fn requirements() -> impl Strategy<Value = Requirements> {
    let id = prop_oneof![
        8 => Just(None),
        1 => (0..MACHINE_SLOTS + 1).prop_map(|i| Some(machine_id(i))),
        1 => (0..MACHINE_SLOTS + 1).prop_map(|i| Some(machine_id(i)[..8].to_string())),
    ];
    let peers = prop_oneof![
        4 => Just(Vec::new()),
        1 => proptest::collection::vec((0..UNIT_SLOTS + 2).prop_map(unit_name), 1..3),
    ];
    let metadata = prop_oneof![
        3 => Just(BTreeMap::new()),
        1 => (proptest::sample::subsequence(vec!["east", "west", "south"], 1..3), any::<bool>()).prop_map(|(regions, disk)| {
            let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            m.insert("region".into(), regions.into_iter().map(str::to_string).collect());
            if disk {
                m.insert("disk".into(), BTreeSet::from(["ssd".to_string()]));
            }
            m
        }),
    ];
    let conflicts =
        prop_oneof![4 => Just(Vec::new()), 1 => proptest::collection::vec(glob(), 1..3)];
    let replaces = prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(glob(), 1..2)];
    (
        id,
        peers,
        metadata,
        conflicts,
        replaces,
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(machine_id, machine_of, machine_metadata, conflicts, replaces, global)| {
                Requirements {
                    machine_id,
                    machine_of,
                    machine_metadata,
                    conflicts,
                    global,
                    replaces,
                    unknown: Vec::new(),
                    dependencies: Default::default(),
                }
            },
        )
}

fn cluster() -> impl Strategy<Value = Cluster> {
    cluster_of(MACHINE_SLOTS)
}

/// Up to `slots` machines (ids from `slots` choices).
fn cluster_of(slots: usize) -> impl Strategy<Value = Cluster> {
    let desired = prop_oneof![8 => Just(TargetState::Launched), 2 => Just(TargetState::Loaded), 1 => Just(TargetState::Inactive)];
    let unit = (
        0..UNIT_SLOTS,
        desired,
        requirements(),
        proptest::option::weighted(0.4, 0..slots + 1),
    );
    (
        proptest::collection::vec(machine(slots), 0..slots),
        proptest::collection::vec(unit, 0..UNIT_SLOTS),
    )
        .prop_map(|(mut machines, units)| {
            // Machine ids are unique in the registry.
            machines.sort_by(|a, b| a.id.cmp(&b.id));
            machines.dedup_by(|a, b| a.id == b.id);
            let mut placements = BTreeMap::new();
            let mut list: Vec<ClusterUnit> = Vec::new();
            for (i, desired, requirements, at) in units {
                // Names are unique in the registry.
                if list.iter().any(|u| u.name == unit_name(i)) {
                    continue;
                }
                let u = ClusterUnit::new(unit_name(i), desired, requirements);
                if let Some(m) = at {
                    placements.insert(u.name.clone(), machine_id(m));
                }
                list.push(u);
            }
            Cluster {
                machines,
                units: list,
                placements,
                ..Default::default()
            }
        })
}

/// The units that count, by name, as the scheduler reads them (first of a repeated name).
fn units(c: &Cluster) -> BTreeMap<&str, &ClusterUnit> {
    let mut map = BTreeMap::new();
    for u in &c.units {
        map.entry(u.name.as_str()).or_insert(u);
    }
    map
}

fn machines(c: &Cluster) -> BTreeMap<&str, &MachineState> {
    let mut map = BTreeMap::new();
    for m in &c.machines {
        map.entry(m.id.as_str()).or_insert(m);
    }
    map
}

fn runs(u: &ClusterUnit) -> bool {
    u.desired != TargetState::Inactive && !unit::is_template(&u.name)
}

fn schedulable(u: &ClusterUnit) -> bool {
    runs(u) && !u.is_global()
}

fn conflict(a: &ClusterUnit, b: &ClusterUnit) -> bool {
    a.name != b.name
        && (a.requirements.conflicts_with(&b.name) || b.requirements.conflicts_with(&a.name))
}

fn metadata_ok(m: &MachineState, u: &ClusterUnit) -> bool {
    u.requirements
        .machine_metadata
        .iter()
        .all(|(k, vs)| m.metadata.get(k).is_some_and(|v| vs.contains(v)))
}

/// Machine -> global units running there: metadata matches and no earlier-named global there
/// conflicts (fleet 6.5).
fn globals(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    let units = units(c);
    let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, m) in machines(c) {
        let here = on.entry(id.to_string()).or_default();
        for u in units.values().filter(|u| runs(u) && u.is_global()) {
            if metadata_ok(m, u) && !here.iter().any(|h| conflict(units[h.as_str()], u)) {
                here.push(u.name.clone());
            }
        }
    }
    on
}

/// Whether `from` replaces `to`, and `to` does not (through any chain) replace `from`.
fn replaces_one_way(units: &BTreeMap<&str, &ClusterUnit>, from: &str, to: &str) -> bool {
    let edge = |a: &str, b: &str| {
        a != b
            && schedulable(units[a])
            && schedulable(units[b])
            && units[a]
                .requirements
                .replaces
                .iter()
                .any(|g| path_match(g, b))
    };
    if !edge(from, to) {
        return false;
    }
    let mut seen = BTreeSet::from([to]);
    let mut stack = vec![to];
    while let Some(a) = stack.pop() {
        for &b in units.keys() {
            if edge(a, b) {
                if b == from {
                    return false;
                }
                if seen.insert(b) {
                    stack.push(b);
                }
            }
        }
    }
    true
}

/// Every rule holds for the placements of `c`, and `p` (the plan that produced them) explains
/// every schedulable unit left out.
fn check_rules(c: &Cluster, p: &Plan) -> Result<(), TestCaseError> {
    let units = units(c);
    let machines = machines(c);
    let globals = globals(c);
    for (name, id) in &c.placements {
        let u = units
            .get(name.as_str())
            .ok_or_else(|| TestCaseError::fail(format!("{name} placed but unknown")))?;
        prop_assert!(
            schedulable(u),
            "{name} placed but should not run or is global"
        );
        let m = machines
            .get(id.as_str())
            .ok_or_else(|| TestCaseError::fail(format!("{name} on gone machine {id}")))?;
        if let Some(want) = &u.requirements.machine_id {
            prop_assert!(m.matches_id(want), "{name} MachineID {want} on {id}");
        }
        prop_assert!(metadata_ok(m, u), "{name} metadata on {id}");
        for peer in &u.requirements.machine_of {
            let with_it = c.placements.get(peer) == Some(id) || globals[id.as_str()].contains(peer);
            prop_assert!(
                with_it,
                "{name} on {id} without its MachineOf target {peer}"
            );
        }
        prop_assert!(
            !p.unplaceable.contains_key(name),
            "{name} both placed and unplaceable"
        );
    }
    for (id, here) in &globals {
        let mut all: Vec<&ClusterUnit> = here.iter().map(|g| units[g.as_str()]).collect();
        all.extend(
            c.placements
                .iter()
                .filter(|(_, m)| *m == id)
                .map(|(u, _)| units[u.as_str()]),
        );
        for a in &all {
            for b in &all {
                prop_assert!(
                    !conflict(a, b),
                    "{} and {} conflict on {id}",
                    a.name,
                    b.name
                );
                if a.name != b.name {
                    prop_assert!(
                        !replaces_one_way(&units, &a.name, &b.name),
                        "{} replaces {} on {id}",
                        a.name,
                        b.name
                    );
                }
            }
        }
    }
    for u in units.values().filter(|u| schedulable(u)) {
        let placed = c.placements.contains_key(&u.name);
        let reason = p.unplaceable.get(&u.name);
        prop_assert!(
            placed != reason.is_some(),
            "{}: placed {placed}, reason {reason:?}",
            u.name
        );
        if let Some(r) = reason {
            prop_assert!(!r.trim().is_empty());
        }
    }
    Ok(())
}

/// Settles `c` by one pass and checks the pass was final.
fn settle(c: &mut Cluster) -> Result<Plan, TestCaseError> {
    let p = plan(c);
    c.apply(&p);
    let again = plan(c);
    prop_assert!(
        again.is_empty(),
        "second pass moved units: {again:?}\nfirst pass: {p:?}"
    );
    prop_assert_eq!(
        again.unplaceable.keys().collect::<Vec<_>>(),
        p.unplaceable.keys().collect::<Vec<_>>()
    );
    Ok(p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn placements_obey_every_rule_and_settle_in_one_pass(mut c in cluster()) {
        let p = settle(&mut c)?;
        check_rules(&c, &p)?;
    }

    /// Many machines, few matching a unit's metadata: the scheduler's other search path.
    #[test]
    fn rules_hold_on_larger_clusters(mut c in cluster_of(60)) {
        let p = settle(&mut c)?;
        check_rules(&c, &p)?;
    }

    #[test]
    fn same_snapshot_same_plan(c in cluster(), rotate in 0..UNIT_SLOTS) {
        let mut shuffled = c.clone();
        shuffled.machines.reverse();
        let len = shuffled.units.len().max(1);
        shuffled.units.rotate_left(rotate % len);
        prop_assert_eq!(plan(&c), plan(&shuffled));
    }

    #[test]
    fn losing_a_machine_moves_only_what_must_move(mut c in cluster(), lost in 0..MACHINE_SLOTS) {
        settle(&mut c)?;
        let before = c.placements.clone();
        let Some(gone) = c.machines.get(lost % c.machines.len().max(1)).map(|m| m.id.clone()) else {
            return Ok(());
        };
        c.machines.retain(|m| m.id != gone);
        let p = settle(&mut c)?;
        check_rules(&c, &p)?;
        let units = units(&c);
        // A removal is explained by the lost machine, by a MachineOf target that moved, or by
        // a unit placed next to it that replaces it.
        let mut moved: BTreeSet<&str> = BTreeSet::new();
        loop {
            let mut grew = false;
            for r in &p.remove {
                let u = units[r.unit.as_str()];
                let explained = r.machine == gone
                    || u.requirements.machine_of.iter().any(|t| moved.contains(t.as_str()))
                    || p.add.iter().any(|a| a.machine == r.machine && replaces_one_way(&units, &a.unit, &r.unit));
                if explained && moved.insert(r.unit.as_str()) {
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        for r in &p.remove {
            prop_assert!(moved.contains(r.unit.as_str()), "{} moved off {} for no reason; before {before:?}, plan {p:?}", r.unit, r.machine);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The explanation comes from the pass that decides: where it says each unit goes is where
    /// `plan` puts it, the chosen machine's verdict is "fits", and a schedulable unit left
    /// unplaced has no machine that fits.
    #[test]
    fn explanation_agrees_with_plan(c in cluster()) {
        let names: Vec<String> = units(&c).keys().map(|n| n.to_string()).collect();
        let e = engine::explain::explain(&c, &names).unwrap();
        let mut after = c.clone();
        after.apply(&plan(&c));
        for u in &e.units {
            prop_assert_eq!(u.after.as_ref(), after.placements.get(&u.name), "{}", u.name);
            if let Some(m) = &u.after {
                let v = u.machines.iter().find(|v| &v.machine == m).unwrap();
                prop_assert!(v.fits, "{}: {:?}", u.name, v);
            } else if schedulable(units(&c)[u.name.as_str()]) {
                prop_assert!(u.machines.iter().all(|v| !v.fits), "{}: {:?}", u.name, u.machines);
            }
        }
        prop_assert!(e.moves.is_empty(), "every unit was asked about: {:?}", e.moves);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Draining a machine of a settled cluster: no pass places a unit on it, each pass moves at
    /// most one unit that follows no other off it (its MachineOf followers go along), a unit
    /// taken off it is placed elsewhere in the same pass, no unit moves while one is in motion,
    /// and every rule holds after each pass. Passes go on until the drain moves nothing more.
    #[test]
    fn a_drained_machine_never_receives_a_placement(mut c in cluster(), drained in 0..MACHINE_SLOTS) {
        settle(&mut c)?;
        let Some(id) = c.machines.get(drained % c.machines.len().max(1)).map(|m| m.id.clone()) else {
            return Ok(());
        };
        c.drain.machines.insert(id.clone());
        for _ in 0..=UNIT_SLOTS {
            // A unit in motion holds every other back.
            if let Some(any) = c.placements.keys().next().cloned() {
                let mut busy = c.clone();
                busy.drain.moving.insert(any);
                let p = plan(&busy);
                prop_assert!(p.remove.iter().all(|r| r.machine != id), "moved while busy: {p:?}");
            }
            let p = plan(&c);
            prop_assert!(p.add.iter().all(|a| a.machine != id), "placed on drained {id}: {p:?}");
            let units = units(&c);
            // The units taken off form one MachineOf group: a follower of two units binds both
            // into the group, so count the groups among them, not the units that follow none.
            let off: Vec<&str> = p
                .remove
                .iter()
                .filter(|r| r.machine == id)
                .map(|r| r.unit.as_str())
                .collect();
            let mut group: BTreeMap<&str, usize> = off.iter().enumerate().map(|(i, u)| (*u, i)).collect();
            loop {
                let mut merged = false;
                for u in &off {
                    for t in &units[*u].requirements.machine_of {
                        if let (Some(&a), Some(&b)) = (group.get(u), group.get(t.as_str())) {
                            if a != b {
                                let (keep, drop) = (a.min(b), a.max(b));
                                group.values_mut().filter(|g| **g == drop).for_each(|g| *g = keep);
                                merged = true;
                            }
                        }
                    }
                }
                if !merged {
                    break;
                }
            }
            let groups: BTreeSet<usize> = group.into_values().collect();
            prop_assert!(groups.len() <= 1, "more than one unit group moved at once: {p:?}");
            for r in p.remove.iter().filter(|r| r.machine == id) {
                prop_assert!(p.add.iter().any(|a| a.unit == r.unit), "{} taken off {id} and placed nowhere: {p:?}", r.unit);
            }
            c.apply(&p);
            check_rules(&c, &p)?;
            if p.is_empty() {
                break;
            }
        }
        // What is left on the drained machine is reported as staying.
        let report = engine::scheduler::drain_report(&c);
        for r in &report {
            prop_assert!(matches!(r.status, engine::scheduler::DrainStatus::Stays(_)), "{r:?} left at the end");
        }
        let left = c.placements.values().filter(|m| **m == id).count();
        prop_assert_eq!(report.len(), left);
    }
}
