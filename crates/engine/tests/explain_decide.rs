//! The explanation against the leader's own decision: over random models, where `explain`
//! says a unit ends up is where the schedule is after the writes `Model::decide` produces.

use engine::explain::explain;
use engine::model::Model;
use proptest::prelude::*;
use registry::{Job, MachineState, ScheduleChange, ScheduleEntry, TargetState};
use std::collections::BTreeMap;
use unit::UnitHash;

const OPTIONS: &[(&str, &str)] = &[
    ("MachineMetadata", "region=east"),
    ("MachineMetadata", "region=west"),
    ("MachineMetadata", "region=north"),
    ("Conflicts", "u*"),
    ("Conflicts", "u1.service"),
    ("MachineOf", "u0.service"),
    ("MachineOf", "u5.service"),
    ("Replaces", "u2.service"),
    ("Global", "true"),
];

fn hash(name: &str) -> UnitHash {
    UnitHash::of(name.as_bytes())
}

/// What a model is built from (a `Model` itself prints nothing when a case fails).
#[derive(Clone, Debug, Default)]
struct Snapshot {
    machines: BTreeMap<String, MachineState>,
    jobs: BTreeMap<String, Job>,
    placed: BTreeMap<String, (String, ScheduleEntry)>,
}

impl Snapshot {
    fn model(self) -> Model {
        let mut m = Model::new();
        m.machines = self.machines;
        m.jobs = self.jobs;
        m.placed = self.placed;
        m
    }
}

prop_compose! {
    fn snapshot()(
        regions in proptest::collection::vec(0..3usize, 0..5),
        units in proptest::collection::vec(
            (proptest::sample::subsequence(OPTIONS.to_vec(), 0..3), 0..4usize, proptest::option::of(0..5usize)),
            0..8,
        ),
    ) -> Snapshot {
        let mut m = Snapshot::default();
        for (i, r) in regions.iter().enumerate() {
            let id = format!("m{i}");
            let mut metadata = BTreeMap::new();
            if let Some(name) = ["east", "west"].get(*r) {
                metadata.insert("region".to_string(), name.to_string());
            }
            m.machines.insert(id.clone(), MachineState { id, metadata, ..Default::default() });
        }
        for (i, (options, desired, at)) in units.into_iter().enumerate() {
            let name = format!("u{i}.service");
            let desired = [TargetState::Launched, TargetState::Launched, TargetState::Loaded, TargetState::Inactive][desired];
            let x_fleet: Vec<(String, String)> =
                options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let job = Job { name: name.clone(), hash: hash(&name), desired, global: false, x_fleet: Some(x_fleet) };
            if let Some(at) = at {
                let entry = ScheduleEntry { hash: job.hash, desired, raw: None };
                m.placed.insert(name.clone(), (format!("m{at}"), entry));
            }
            m.jobs.insert(name, job);
        }
        m
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn explanation_matches_decide(s in snapshot()) {
        let mut m = s.model();
        prop_assert!(m.missing_bodies().is_empty(), "every job carries its options");
        let names: Vec<String> = m.jobs.keys().cloned().collect();
        let e = explain(&m.cluster(), &names).unwrap();
        let mut after: BTreeMap<String, String> =
            m.placed.iter().map(|(u, (machine, _))| (u.clone(), machine.clone())).collect();
        for change in m.decide() {
            match change {
                ScheduleChange::Unplace { unit, machine } => {
                    if after.get(&unit) == Some(&machine) {
                        after.remove(&unit);
                    }
                }
                ScheduleChange::Place { unit, machine, .. } => {
                    after.insert(unit, machine);
                }
                ScheduleChange::Update { .. } | ScheduleChange::Reason { .. } => {}
            }
        }
        for u in &e.units {
            prop_assert_eq!(u.after.as_ref(), after.get(&u.name), "{:?}", u);
        }
    }
}
