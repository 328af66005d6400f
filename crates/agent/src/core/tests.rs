//! Table tests of the agent's core: inputs in, effects out.
use super::*;

fn file(n: u32) -> UnitFile {
    UnitFile::parse(&format!("[Service]\nExecStart=/bin/sleep {n}\n")).expect("a unit file")
}

fn entry(n: u32, desired: TargetState) -> ScheduleEntry {
    let f = file(n);
    ScheduleEntry {
        hash: f.hash(),
        desired,
        raw: Some(f.serialize()),
    }
}

fn active() -> SystemdState {
    SystemdState {
        load: "loaded".into(),
        active: "active".into(),
        sub: "running".into(),
    }
}

fn machine() -> MachineState {
    MachineState {
        id: "m1".into(),
        ..MachineState::default()
    }
}

/// A core that has read everything once, with `units` scheduled on it.
fn started(t: Instant, units: &[(&str, u32)]) -> Core {
    let mut core = Core::new(machine(), Vec::new());
    let schedule = units
        .iter()
        .map(|(name, n)| (name.to_string(), entry(*n, TargetState::Launched)))
        .collect();
    core.on(t, Input::Schedule(Update::Reset(schedule)));
    core.on(t, Input::Globals(Update::Reset(vec![])));
    core.on(t, Input::Metadata(Update::Reset(vec![])));
    core
}

/// A core that has read everything once and holds one launched unit, `a.service`.
fn holding_one(t: Instant) -> Core {
    let mut core = started(t, &[]);
    core.held.insert(
        a("a.service"),
        Held {
            hash: file(1).hash(),
            state: TargetState::Launched,
        },
    );
    core
}

/// The actions of the `Run` effects in `effects`.
fn runs(effects: &[Effect]) -> Vec<Vec<Action>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Run(phase) => Some(phase.iter().map(|(a, _)| a.clone()).collect()),
            _ => None,
        })
        .collect()
}

fn published(effects: &[Effect]) -> Vec<(String, TargetState, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { save, .. } => Some(save),
            _ => None,
        })
        .flatten()
        .map(|s| (s.name.clone(), s.agent_state, s.systemd.active.clone()))
        .collect()
}

fn done(t: Instant, core: &mut Core, actions: &[Action]) {
    for a in actions {
        core.on(t, Input::Done(a.clone(), Ok(())));
    }
}

fn a(name: &str) -> String {
    name.to_string()
}

#[test]
fn nothing_is_decided_before_everything_was_read_once() {
    let t = Instant::now();
    let mut core = Core::new(machine(), Vec::new());
    core.on(
        t,
        Input::Schedule(Update::Reset(vec![(
            a("a.service"),
            entry(1, TargetState::Launched),
        )])),
    );
    core.on(t, Input::Globals(Update::Reset(vec![])));
    assert_eq!(runs(&core.ready(t).effects), Vec::<Vec<Action>>::new());
    core.on(t, Input::Metadata(Update::Reset(vec![])));
    assert_eq!(
        runs(&core.ready(t).effects),
        vec![vec![Action::Load(a("a.service"))]]
    );
}

#[test]
fn a_plan_runs_phase_by_phase_and_states_go_out_while_units_start() {
    let t = Instant::now();
    let mut core = started(t, &[("a.service", 1), ("b.service", 2)]);
    let loads = vec![Action::Load(a("a.service")), Action::Load(a("b.service"))];
    let ready = core.ready(t);
    assert_eq!(runs(&ready.effects), vec![loads.clone()]);
    match &ready.effects[0] {
        Effect::Run(phase) => {
            assert!(phase.iter().all(|(_, f)| f.is_some()), "loads carry files")
        }
        other => panic!("{other:?}"),
    }
    // A report during the loads is not published: the loaded units have no state yet.
    core.on(
        t,
        Input::Reported(
            StateChange {
                name: a("x.service"),
                state: None,
            },
            None,
        ),
    );
    done(t, &mut core, &loads);
    assert_eq!(runs(&core.ready(t).effects), vec![vec![Action::Reload]]);
    done(t, &mut core, &[Action::Reload]);
    let starts = vec![Action::Start(a("a.service")), Action::Start(a("b.service"))];
    let ready = core.ready(t);
    assert_eq!(runs(&ready.effects), vec![starts.clone()]);
    // The starts may publish: what is known goes out as they begin.
    assert_eq!(
        published(&ready.effects),
        vec![
            (a("a.service"), TargetState::Loaded, a("")),
            (a("b.service"), TargetState::Loaded, a(""))
        ]
    );
    core.on(t, Input::Published(Ok(())));
    // One start done and reported: published at the next interval while the other is
    // still in flight.
    core.on(t, Input::Done(starts[0].clone(), Ok(())));
    core.on(
        t,
        Input::Reported(
            StateChange {
                name: a("a.service"),
                state: Some(active()),
            },
            None,
        ),
    );
    let ready = core.ready(t);
    assert_eq!(published(&ready.effects), vec![]);
    assert_eq!(ready.wake_at, Some(t + PUBLISH_INTERVAL));
    let t2 = t + PUBLISH_INTERVAL;
    core.on(t2, Input::Tick);
    assert_eq!(
        published(&core.ready(t2).effects),
        vec![(a("a.service"), TargetState::Launched, a("active"))]
    );
    core.on(t2, Input::Published(Ok(())));
    // The last start ends the run; the manager reports starts itself, so nothing is read.
    core.on(t2, Input::Done(starts[1].clone(), Ok(())));
    let ready = core.ready(t2);
    assert!(
        ready
            .effects
            .iter()
            .all(|e| !matches!(e, Effect::ReadStates(_))),
        "{ready:?}"
    );
    assert_eq!(published(&ready.effects), vec![]);
    let t3 = t2 + PUBLISH_INTERVAL;
    core.on(t3, Input::Tick);
    assert_eq!(
        published(&core.ready(t3).effects),
        vec![(a("b.service"), TargetState::Launched, a(""))]
    );
    // Nothing changed: nothing to do, nothing to wake for.
    assert_eq!(core.ready(t3 + PUBLISH_INTERVAL), Ready::default());
}

#[test]
fn missing_bodies_are_fetched_together_once() {
    let t = Instant::now();
    let mut core = Core::new(machine(), Vec::new());
    let mut e1 = entry(1, TargetState::Launched);
    let mut e2 = entry(2, TargetState::Launched);
    e1.raw = None;
    e2.raw = None;
    core.on(
        t,
        Input::Schedule(Update::Reset(vec![
            (a("a.service"), e1.clone()),
            (a("b.service"), e2.clone()),
        ])),
    );
    core.on(t, Input::Globals(Update::Reset(vec![])));
    core.on(t, Input::Metadata(Update::Reset(vec![])));
    let ready = core.ready(t);
    assert_eq!(
        ready.effects,
        vec![Effect::FetchBodies(
            vec![e1.hash, e2.hash]
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        )]
    );
    // One found, one not: nothing is decided, and the missing one is not asked for again.
    let t2 = t + RECONCILE_INTERVAL;
    core.on(
        t2,
        Input::Bodies(vec![(e1.hash, Ok(Some(file(1)))), (e2.hash, Ok(None))]),
    );
    assert_eq!(core.ready(t2).effects, vec![]);
    // The schedule changes (b's body is now carried): both are loaded.
    let t3 = t2 + RECONCILE_INTERVAL;
    core.on(
        t3,
        Input::Schedule(Update::Changes(vec![registry::Change::Put(
            a("b.service"),
            entry(2, TargetState::Launched),
        )])),
    );
    assert_eq!(
        runs(&core.ready(t3).effects),
        vec![vec![
            Action::Load(a("a.service")),
            Action::Load(a("b.service"))
        ]]
    );
}

#[test]
fn failed_actions_wait_for_their_retry_and_refused_ones_for_a_change() {
    let t = Instant::now();
    let mut core = started(t, &[("a.service", 1), ("b.service", 2)]);
    let loads = runs(&core.ready(t).effects).remove(0);
    done(t, &mut core, &loads);
    core.ready(t);
    done(t, &mut core, &[Action::Reload]);
    core.ready(t);
    let fail = |reason: &str, refused| ActionError {
        reason: reason.into(),
        refused,
    };
    core.on(
        t,
        Input::Done(Action::Start(a("a.service")), Err(fail("NoReply", false))),
    );
    core.on(
        t,
        Input::Done(
            Action::Start(a("b.service")),
            Err(fail("destructive", true)),
        ),
    );
    let ready = core.ready(t);
    let retry = ready.wake_at.expect("a retry time");
    assert!(
        retry >= t + Duration::from_millis(750) && retry <= t + Duration::from_millis(1250),
        "{:?}",
        retry - t
    );
    assert_eq!(runs(&ready.effects), Vec::<Vec<Action>>::new());
    core.on(retry, Input::Tick);
    assert_eq!(
        runs(&core.ready(retry).effects),
        vec![vec![Action::Start(a("a.service"))]]
    );
    core.on(retry, Input::Done(Action::Start(a("a.service")), Ok(())));
    let ready = core.ready(retry);
    assert_eq!(
        ready.wake_at.filter(|w| *w > retry + PUBLISH_INTERVAL),
        None,
        "b is not retried"
    );
}

#[test]
fn a_failed_publication_is_tried_again() {
    let t = Instant::now();
    let mut core = holding_one(t);
    let first = published(&core.ready(t).effects);
    assert_eq!(first.len(), 1);
    core.on(t, Input::Published(Err("etcd unreachable".into())));
    let ready = core.ready(t);
    assert_eq!(published(&ready.effects), vec![]);
    assert_eq!(ready.wake_at, Some(t + RETRY_INTERVAL));
    let later = t + RETRY_INTERVAL;
    core.on(later, Input::Tick);
    assert_eq!(published(&core.ready(later).effects), first);
}

#[test]
fn a_lapsed_lease_is_renewed_and_every_state_published_again() {
    let t = Instant::now();
    let mut core = holding_one(t);
    assert_eq!(published(&core.ready(t).effects).len(), 1);
    core.on(t, Input::Published(Ok(())));
    core.on(t, Input::LeaseLapsed);
    assert_eq!(core.ready(t).effects, vec![Effect::Renew]);
    core.on(t, Input::Renewed(Err("etcd unreachable".into())));
    let ready = core.ready(t);
    assert_eq!(ready.effects, vec![]);
    let later = ready.wake_at.expect("a retry");
    core.on(later, Input::Tick);
    assert_eq!(core.ready(later).effects, vec![Effect::Renew]);
    core.on(later, Input::Renewed(Ok(())));
    assert_eq!(published(&core.ready(later).effects).len(), 1);
}

#[test]
fn a_machine_shutting_down_leaves_and_then_does_nothing() {
    let t = Instant::now();
    let mut core = started(t, &[("a.service", 1)]);
    core.on(t, Input::MachineStopping);
    assert_eq!(core.ready(t).effects, vec![Effect::Leave]);
    core.on(
        t,
        Input::Schedule(Update::Reset(vec![(
            a("b.service"),
            entry(2, TargetState::Launched),
        )])),
    );
    assert_eq!(core.ready(t + Duration::from_secs(1)), Ready::default());
    assert!(core.left());
}

#[test]
fn adopted_units_are_not_started_again() {
    let t = Instant::now();
    let f = file(1);
    let mut core = Core::new(machine(), vec![(a("a.service"), f.hash(), Some(active()))]);
    core.on(
        t,
        Input::Schedule(Update::Reset(vec![(
            a("a.service"),
            entry(1, TargetState::Launched),
        )])),
    );
    core.on(t, Input::Globals(Update::Reset(vec![])));
    core.on(t, Input::Metadata(Update::Reset(vec![])));
    let ready = core.ready(t);
    assert_eq!(runs(&ready.effects), Vec::<Vec<Action>>::new());
    assert_eq!(
        published(&ready.effects),
        vec![(a("a.service"), TargetState::Launched, a("active"))]
    );
}

/// SIGUSR1's account: every unit scheduled here or still held, with what is wanted, what the
/// agent holds and what the unit manager said.
#[test]
fn the_dump_lists_scheduled_and_held_units_with_their_states() {
    let t = Instant::now();
    let mut core = holding_one(t);
    core.on(
        t,
        Input::Schedule(Update::Reset(vec![(
            "b.service".into(),
            entry(2, TargetState::Loaded),
        )])),
    );
    core.on(
        t,
        Input::Reported(
            StateChange {
                name: "a.service".into(),
                state: Some(active()),
            },
            None,
        ),
    );
    let dump = core.dump();
    assert_eq!(dump.machine.id, "m1");
    type Seen<'a> = (
        &'a str,
        Option<TargetState>,
        Option<TargetState>,
        Option<&'a str>,
    );
    let units: Vec<Seen> = dump
        .units
        .iter()
        .map(|u| {
            (
                u.name.as_str(),
                u.desired,
                u.held.map(|(s, _)| s),
                u.current.as_ref().map(|s| s.active.as_str()),
            )
        })
        .collect();
    assert_eq!(
        units,
        vec![
            // No longer scheduled here, still held: the next plan unloads it.
            (
                "a.service",
                None,
                Some(TargetState::Launched),
                Some("active")
            ),
            ("b.service", Some(TargetState::Loaded), None, None),
        ]
    );
    let text = dump.to_string();
    assert!(text.starts_with("agent of machine m1 "), "{text}");
    assert!(
        text.contains("  a.service: desired -, here launched (")
            && text.contains("current loaded/active/running"),
        "{text}"
    );
    assert!(
        text.contains("  b.service: desired loaded, here -, current -"),
        "{text}"
    );
}
