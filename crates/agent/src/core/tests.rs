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

fn report(t: Instant, core: &mut Core, name: &str, state: Option<SystemdState>) {
    core.on(
        t,
        Input::Reported(
            StateChange {
                name: a(name),
                state,
            },
            None,
        ),
    );
}

fn failed() -> SystemdState {
    SystemdState {
        load: "loaded".into(),
        active: "failed".into(),
        sub: "failed".into(),
    }
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
    // Loaded and not reloaded yet: their states are not published, the manager has none.
    done(t, &mut core, &loads);
    let ready = core.ready(t);
    assert_eq!(runs(&ready.effects), vec![vec![Action::Reload]]);
    assert_eq!(published(&ready.effects), vec![]);
    assert_eq!(
        ready.wake_at, None,
        "nothing to publish, nothing to wake for"
    );
    let t1 = t + PUBLISH_WINDOW;
    done(t1, &mut core, &[Action::Reload]);
    let starts = vec![Action::Start(a("a.service")), Action::Start(a("b.service"))];
    let ready = core.ready(t1);
    assert_eq!(runs(&ready.effects), vec![starts.clone()]);
    // Released by the reload: they go out as they are once the window ends.
    assert_eq!(published(&ready.effects), vec![]);
    assert_eq!(ready.wake_at, Some(t1 + PUBLISH_WINDOW));
    let t2 = t1 + PUBLISH_WINDOW;
    core.on(t2, Input::Tick);
    assert_eq!(
        published(&core.ready(t2).effects),
        vec![
            (a("a.service"), TargetState::Loaded, a("")),
            (a("b.service"), TargetState::Loaded, a(""))
        ]
    );
    core.on(t2, Input::Published(Ok(())));
    // One start done and reported: published a window later while the other is still in
    // flight, not at the end of the run.
    core.on(t2, Input::Done(starts[0].clone(), Ok(())));
    report(t2, &mut core, "a.service", Some(active()));
    let ready = core.ready(t2);
    assert_eq!(published(&ready.effects), vec![]);
    assert_eq!(ready.wake_at, Some(t2 + PUBLISH_WINDOW));
    let t3 = t2 + PUBLISH_WINDOW;
    core.on(t3, Input::Tick);
    assert_eq!(
        published(&core.ready(t3).effects),
        vec![(a("a.service"), TargetState::Launched, a("active"))]
    );
    core.on(t3, Input::Published(Ok(())));
    // The last start ends the run; the manager reports starts itself, so nothing is read.
    core.on(t3, Input::Done(starts[1].clone(), Ok(())));
    let ready = core.ready(t3);
    assert!(
        ready
            .effects
            .iter()
            .all(|e| !matches!(e, Effect::ReadStates(_))),
        "{ready:?}"
    );
    assert_eq!(published(&ready.effects), vec![]);
    let t4 = t3 + PUBLISH_WINDOW;
    core.on(t4, Input::Tick);
    assert_eq!(
        published(&core.ready(t4).effects),
        vec![(a("b.service"), TargetState::Launched, a(""))]
    );
    core.on(t4, Input::Published(Ok(())));
    // Nothing changed: nothing to do, nothing to wake for.
    assert_eq!(core.ready(t4 + PUBLISH_WINDOW), Ready::default());
    // The same state reported again (a resync) writes nothing.
    report(t4, &mut core, "a.service", Some(active()));
    assert_eq!(core.ready(t4).wake_at, Some(t4 + PUBLISH_WINDOW));
    let later = t4 + PUBLISH_WINDOW;
    core.on(later, Input::Tick);
    assert_eq!(core.ready(later), Ready::default());
}

/// The rounds: a unit started by one plan changes while the next plan's loads and
/// reload run; its state goes out within the window, not when the next plan reaches its starts.
#[test]
fn states_go_out_while_the_next_plan_loads_and_reloads() {
    let t = Instant::now();
    let mut core = started(t, &[("a.service", 1)]);
    let loads = runs(&core.ready(t).effects).remove(0);
    done(t, &mut core, &loads);
    core.ready(t);
    done(t, &mut core, &[Action::Reload]);
    core.ready(t);
    done(t, &mut core, &[Action::Start(a("a.service"))]);
    report(t, &mut core, "a.service", Some(active()));
    assert_eq!(core.ready(t).wake_at, Some(t + PUBLISH_WINDOW));
    let t = t + PUBLISH_WINDOW;
    assert_eq!(
        published(&core.ready(t).effects),
        vec![(a("a.service"), TargetState::Launched, a("active"))]
    );
    core.on(t, Input::Published(Ok(())));

    // The next plan: b is scheduled and loaded.
    core.on(
        t,
        Input::Schedule(Update::Changes(vec![registry::Change::Put(
            a("b.service"),
            entry(2, TargetState::Launched),
        )])),
    );
    let t = t + RECONCILE_INTERVAL;
    assert_eq!(
        runs(&core.ready(t).effects),
        vec![vec![Action::Load(a("b.service"))]]
    );
    report(t, &mut core, "a.service", Some(failed()));
    let ready = core.ready(t);
    assert_eq!(ready.wake_at, Some(t + PUBLISH_WINDOW));
    let t = t + PUBLISH_WINDOW;
    assert_eq!(
        published(&core.ready(t).effects),
        vec![(a("a.service"), TargetState::Launched, a("failed"))],
        "a's change goes out while b loads"
    );
    core.on(t, Input::Published(Ok(())));
    done(t, &mut core, &[Action::Load(a("b.service"))]);
    assert_eq!(runs(&core.ready(t).effects), vec![vec![Action::Reload]]);
    // During the reload: a's change goes out, b (loaded, not reloaded) stays back.
    report(t, &mut core, "a.service", Some(active()));
    report(t, &mut core, "b.service", None);
    assert_eq!(published(&core.ready(t).effects), vec![]);
    let t = t + PUBLISH_WINDOW;
    assert_eq!(
        published(&core.ready(t).effects),
        vec![(a("a.service"), TargetState::Launched, a("active"))],
        "a's change goes out while the reload runs; b waits for it"
    );
    core.on(t, Input::Published(Ok(())));
    assert_eq!(core.ready(t + PUBLISH_WINDOW).effects, vec![]);
    done(t, &mut core, &[Action::Reload]);
    let ready = core.ready(t);
    assert_eq!(
        runs(&ready.effects),
        vec![vec![Action::Start(a("b.service"))]]
    );
    assert_eq!(published(&ready.effects), vec![]);
    let t = t + PUBLISH_WINDOW;
    assert_eq!(
        published(&core.ready(t).effects),
        vec![(a("b.service"), TargetState::Loaded, a(""))]
    );
}

/// While a publication is in flight, changes wait; once it ends, those whose window has passed
/// go out at once, all together.
#[test]
fn changes_during_a_publication_go_out_together_when_it_ends() {
    let t = Instant::now();
    let mut core = holding_one(t);
    core.held.insert(
        a("b.service"),
        Held {
            hash: file(2).hash(),
            state: TargetState::Launched,
        },
    );
    core.dirty = false;
    assert_eq!(
        published(&core.ready(t).effects).len(),
        2,
        "everything at first"
    );
    report(t, &mut core, "a.service", Some(active()));
    core.ready(t);
    let t1 = t + PUBLISH_WINDOW;
    report(t1, &mut core, "b.service", Some(active()));
    let ready = core.ready(t1);
    assert_eq!(published(&ready.effects), vec![], "one write at a time");
    let t2 = t1 + 3 * PUBLISH_WINDOW;
    core.on(t2, Input::Published(Ok(())));
    assert_eq!(
        published(&core.ready(t2).effects),
        vec![
            (a("a.service"), TargetState::Launched, a("active")),
            (a("b.service"), TargetState::Launched, a("active"))
        ]
    );
}

/// A burst of [`PUBLISH_BATCH`] changes goes out at once, without waiting for the window.
#[test]
fn a_full_batch_goes_out_without_waiting_for_the_window() {
    let t = Instant::now();
    let mut core = started(t, &[]);
    for i in 0..PUBLISH_BATCH {
        core.held.insert(
            format!("u{i}.service"),
            Held {
                hash: file(1).hash(),
                state: TargetState::Launched,
            },
        );
    }
    core.dirty = false;
    assert_eq!(published(&core.ready(t).effects).len(), PUBLISH_BATCH);
    core.on(t, Input::Published(Ok(())));
    for i in 0..PUBLISH_BATCH - 1 {
        report(t, &mut core, &format!("u{i}.service"), Some(active()));
    }
    let ready = core.ready(t);
    assert_eq!(published(&ready.effects), vec![]);
    assert_eq!(ready.wake_at, Some(t + PUBLISH_WINDOW));
    let last = format!("u{}.service", PUBLISH_BATCH - 1);
    report(t, &mut core, &last, Some(active()));
    assert_eq!(published(&core.ready(t).effects).len(), PUBLISH_BATCH);
}

#[test]
fn the_coalescing_decision() {
    let t = Instant::now();
    let w = PUBLISH_WINDOW;
    let ms = Duration::from_millis(1);
    // (oldest waiting change seen at, now, changes waiting, everything stale) -> due
    let table: Vec<(Option<Instant>, Instant, usize, bool, Due)> = vec![
        (None, t, 0, false, Due::Nothing),
        (Some(t), t + ms, 0, false, Due::Nothing),
        (None, t, 1, false, Due::At(t + w)),
        (Some(t), t + ms, 5, false, Due::At(t + w)),
        (
            Some(t),
            t + w - ms,
            PUBLISH_BATCH - 1,
            false,
            Due::At(t + w),
        ),
        (Some(t), t + w, 1, false, Due::Now),
        (Some(t), t + 10 * w, 1, false, Due::Now),
        (None, t, PUBLISH_BATCH, false, Due::Now),
        (Some(t), t + ms, PUBLISH_BATCH + 1, false, Due::Now),
        (None, t, 0, true, Due::Now),
        (Some(t), t + ms, 3, true, Due::Now),
    ];
    for (since, now, waiting, all, want) in table {
        let mut c = Coalescer { since };
        assert_eq!(
            c.due(now, waiting, all),
            want,
            "since {since:?}, now {:?}, {waiting} waiting, all {all}",
            now - t
        );
        // The window keeps counting from the oldest change until something is sent.
        match want {
            Due::Nothing => assert_eq!(c.since, None),
            _ => assert_eq!(c.since, Some(since.unwrap_or(now))),
        }
        c.sent();
        assert_eq!(c.since, None);
    }
}

mod coalescing {
    use super::*;
    use proptest::prelude::*;

    const UNITS: usize = 4;

    fn name(i: usize) -> String {
        format!("u{i}.service")
    }

    proptest! {
        /// Whatever the reports and however long writes take: with no write in flight, a
        /// change never waits longer than the window; one write is in flight at a time; every
        /// write carries a change; and the registry ends with the last state reported.
        #[test]
        fn changes_wait_at_most_a_window_and_the_last_state_is_published(
            reports in proptest::collection::vec((0u64..8, 0..UNITS, any::<bool>()), 1..60),
            latencies in proptest::collection::vec(0u64..25, 60),
        ) {
            let t0 = Instant::now();
            let mut core = started(t0, &[]);
            for i in 0..UNITS {
                core.held.insert(name(i), Held { hash: file(1).hash(), state: TargetState::Launched });
            }
            core.dirty = false;
            // What the registry has (as the writes carry it), what the writes sent so far carry
            // (in flight or done), what was reported last, and since when each unit's reported
            // state differs from what was sent.
            let mut registry: BTreeMap<String, String> = BTreeMap::new();
            let mut sent: BTreeMap<String, String> = BTreeMap::new();
            let mut reported: BTreeMap<String, String> = BTreeMap::new();
            let mut differs: BTreeMap<String, Instant> = BTreeMap::new();
            for i in 0..UNITS {
                reported.insert(name(i), String::new());
                differs.insert(name(i), t0);
            }
            let mut at = Vec::new();
            let mut when = 0;
            for (gap, unit, up) in &reports {
                when += gap;
                at.push((when, *unit, *up));
            }
            let end = when + 200;
            let mut in_flight: Option<(u64, Vec<UnitState>)> = None;
            let mut writes = 0;
            for step in 0..=end {
                let now = t0 + Duration::from_millis(step);
                if in_flight.as_ref().is_some_and(|(done, _)| *done == step) {
                    let (_, saved) = in_flight.take().unwrap();
                    for s in saved {
                        registry.insert(s.name.clone(), s.systemd.active.clone());
                    }
                    core.on(now, Input::Published(Ok(())));
                }
                let refresh = |differs: &mut BTreeMap<String, Instant>,
                               sent: &BTreeMap<String, String>,
                               reported: &BTreeMap<String, String>| {
                    for (unit, state) in reported {
                        if sent.get(unit).is_some_and(|r| r == state) {
                            differs.remove(unit);
                        } else {
                            differs.entry(unit.clone()).or_insert(now);
                        }
                    }
                };
                refresh(&mut differs, &sent, &reported);
                for (_, unit, up) in at.iter().filter(|(w, _, _)| *w == step) {
                    let state = if *up { active() } else { failed() };
                    reported.insert(name(*unit), state.active.clone());
                    report(now, &mut core, &name(*unit), Some(state));
                }
                refresh(&mut differs, &sent, &reported);
                let idle = in_flight.is_none();
                let ready = core.ready(now);
                let saves: Vec<UnitState> = ready.effects.iter().filter_map(|e| match e {
                    Effect::Publish { save, .. } => Some(save.clone()),
                    _ => None,
                }).flatten().collect();
                let wrote = ready.effects.iter().any(|e| matches!(e, Effect::Publish { .. }));
                prop_assert!(!wrote || idle, "a write while another is in flight");
                let overdue = differs.values().any(|since| *since + PUBLISH_WINDOW <= now);
                if idle && overdue {
                    prop_assert!(wrote, "a change waited longer than the window at {step} ms: {differs:?}");
                }
                if idle && !wrote && !differs.is_empty() {
                    let oldest = differs.values().min().copied();
                    prop_assert!(ready.wake_at.is_some() && ready.wake_at <= oldest.map(|o| o + PUBLISH_WINDOW),
                        "no wake-up for a waiting change at {step} ms: {:?} ms, waiting {:?}",
                        ready.wake_at.map(|w| w - t0),
                        differs.iter().map(|(u, s)| (u, *s - t0)).collect::<Vec<_>>());
                }
                if wrote {
                    prop_assert!(!saves.is_empty(), "an empty write");
                    for s in &saves {
                        sent.insert(s.name.clone(), s.systemd.active.clone());
                    }
                    let latency = latencies[writes % latencies.len()];
                    writes += 1;
                    in_flight = Some((step + latency.max(1), saves));
                }
            }
            prop_assert!(in_flight.is_none());
            prop_assert_eq!(&registry, &reported);
            prop_assert_eq!(core.ready(t0 + Duration::from_millis(end + 1)), Ready::default());
        }
    }
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
    // The units' states go out first (loaded, with the failures' reasons).
    let ready = core.ready(t);
    assert_eq!(ready.wake_at, Some(t + PUBLISH_WINDOW));
    let t1 = t + PUBLISH_WINDOW;
    core.on(t1, Input::Tick);
    assert_eq!(published(&core.ready(t1).effects).len(), 2);
    core.on(t1, Input::Published(Ok(())));
    let ready = core.ready(t1);
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
        ready.wake_at.filter(|w| *w > retry + PUBLISH_WINDOW),
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

/// Publications failing in a row wait 2, 4, 8 s ... up to `PUBLISH_RETRY_MAX`; one that
/// succeeds ends the run.
#[test]
fn failed_publications_in_a_row_wait_longer_each_time() {
    let mut t = Instant::now();
    let mut core = holding_one(t);
    let first = published(&core.ready(t).effects);
    let mut waits = Vec::new();
    for _ in 0..6 {
        core.on(t, Input::Published(Err("etcd unreachable".into())));
        let ready = core.ready(t);
        assert_eq!(published(&ready.effects), vec![]);
        let retry = ready.wake_at.expect("a retry time");
        waits.push((retry - t).as_secs());
        t = retry;
        core.on(t, Input::Tick);
        assert_eq!(published(&core.ready(t).effects), first);
    }
    assert_eq!(waits, vec![2, 4, 8, 16, 30, 30]);
    core.on(t, Input::Published(Ok(())));
    // The next failure, after a success, waits the first interval again.
    report(t, &mut core, "a.service", Some(active()));
    assert_eq!(
        published(&core.ready(t).effects),
        vec![],
        "within the window"
    );
    t += PUBLISH_WINDOW;
    assert_eq!(published(&core.ready(t).effects).len(), 1);
    core.on(t, Input::Published(Err("etcd unreachable".into())));
    assert_eq!(core.ready(t).wake_at, Some(t + RETRY_INTERVAL));
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

#[test]
fn a_group_is_loaded_and_reloaded_once_then_started_dependencies_first() {
    let t = Instant::now();
    let body = |text: &str| {
        let f = UnitFile::parse(text).expect("a unit file");
        ScheduleEntry {
            hash: f.hash(),
            desired: TargetState::Launched,
            raw: Some(f.serialize()),
        }
    };
    let mut core = Core::new(machine(), Vec::new());
    let schedule = vec![
        (
            a("app.service"),
            body("[Unit]\nRequires=db.service\n[Service]\nExecStart=/bin/sleep 1\n"),
        ),
        (
            a("db.service"),
            body("[Unit]\nBindsTo=disk.service\n[Service]\nExecStart=/bin/sleep 2\n"),
        ),
        (
            a("disk.service"),
            body("[Service]\nExecStart=/bin/sleep 3\n"),
        ),
    ]
    .into_iter()
    .collect();
    core.on(t, Input::Schedule(Update::Reset(schedule)));
    core.on(t, Input::Globals(Update::Reset(vec![])));
    core.on(t, Input::Metadata(Update::Reset(vec![])));
    let loads: Vec<Action> = ["app.service", "db.service", "disk.service"]
        .iter()
        .map(|n| Action::Load(a(n)))
        .collect();
    assert_eq!(runs(&core.ready(t).effects), vec![loads.clone()]);
    done(t, &mut core, &loads);
    assert_eq!(runs(&core.ready(t).effects), vec![vec![Action::Reload]]);
    done(t, &mut core, &[Action::Reload]);
    for wave in ["disk.service", "db.service", "app.service"] {
        let start = vec![Action::Start(a(wave))];
        assert_eq!(runs(&core.ready(t).effects), vec![start.clone()], "{wave}");
        done(t, &mut core, &start);
    }
    assert_eq!(runs(&core.ready(t).effects), Vec::<Vec<Action>>::new());
}

fn global_file(n: u32) -> UnitFile {
    UnitFile::parse(&format!(
        "[Service]\nExecStart=/bin/sleep {n}\n\n[X-Fleet]\nGlobal=true\n"
    ))
    .expect("a unit file")
}

/// The global record of `name` with content `n`, under `rollout`.
fn global(name: &str, n: u32, rollout: Option<GlobalRollout>) -> (String, GlobalJob) {
    let f = global_file(n);
    (
        a(name),
        GlobalJob {
            job: Job {
                name: a(name),
                hash: f.hash(),
                desired: TargetState::Launched,
                global: true,
                x_fleet: None,
            },
            raw: f.serialize(),
            rollout,
            revision: 0,
            outcome_since: None,
        },
    )
}

fn rollout(old: u32, new: u32, allowed: &[&str]) -> GlobalRollout {
    GlobalRollout {
        old: global_file(old).hash(),
        new: global_file(new).hash(),
        allowed: allowed.iter().map(|m| a(m)).collect(),
    }
}

#[test]
fn a_global_unit_runs_the_content_its_rollout_gives_this_machine() {
    let t = Instant::now();
    // (the rollout of g.service, whose job names content 2; the content m1 runs)
    let cases: &[(Option<GlobalRollout>, u32)] = &[
        (None, 2),
        (Some(rollout(1, 2, &[])), 1),
        (Some(rollout(1, 2, &["m2"])), 1),
        (Some(rollout(1, 2, &["m1", "m2"])), 2),
        // A rollout of other content than the job's holds nothing back.
        (Some(rollout(2, 3, &[])), 2),
    ];
    for (r, runs) in cases {
        let mut core = started(t, &[]);
        let record = global("g.service", 2, r.clone());
        core.on(t, Input::Globals(Update::Reset(vec![record])));
        assert_eq!(
            core.revision("g.service"),
            Some(global_file(*runs).hash()),
            "{r:?}"
        );
    }
    // A record without its rollout any more (the rollout dropped, or a Reset) lets it go.
    let mut core = started(t, &[]);
    let held = global("g.service", 2, Some(rollout(1, 2, &[])));
    core.on(t, Input::Globals(Update::Reset(vec![held])));
    core.on(
        t,
        Input::Globals(Update::Changes(vec![registry::Change::Put(
            a("g.service"),
            global("g.service", 2, None).1,
        )])),
    );
    assert_eq!(core.revision("g.service"), Some(global_file(2).hash()));
}

#[test]
fn a_machine_held_back_keeps_the_old_content_until_the_rollout_allows_it() {
    let t = Instant::now();
    let old = global_file(1);
    // The machine runs content 1; the job names 2, and the rollout holds m1 on 1.
    let mut core = Core::new(
        machine(),
        vec![(a("g.service"), old.hash(), Some(active()))],
    );
    core.on(t, Input::Schedule(Update::Reset(vec![])));
    core.on(t, Input::Metadata(Update::Reset(vec![])));
    let record = global("g.service", 2, Some(rollout(1, 2, &["m2"])));
    core.on(t, Input::Globals(Update::Reset(vec![record])));
    // The old body is not carried by the global record: it is read from the registry.
    let ready = core.ready(t);
    assert!(
        ready
            .effects
            .contains(&Effect::FetchBodies(vec![old.hash()])),
        "{:?}",
        ready.effects
    );
    assert_eq!(runs(&ready.effects), Vec::<Vec<Action>>::new());
    let t = t + RECONCILE_INTERVAL;
    core.on(t, Input::Bodies(vec![(old.hash(), Ok(Some(old.clone())))]));
    let ready = core.ready(t);
    assert_eq!(runs(&ready.effects), Vec::<Vec<Action>>::new());
    assert_eq!(core.revision("g.service"), Some(old.hash()));
    // Its turn: the rollout allows m1, and the new content replaces the old.
    let t = t + RECONCILE_INTERVAL;
    core.on(
        t,
        Input::Globals(Update::Changes(vec![registry::Change::Put(
            a("g.service"),
            global("g.service", 2, Some(rollout(1, 2, &["m1", "m2"]))).1,
        )])),
    );
    // The replacement's first phase: the old file goes (then the new one is loaded and
    // started, as for any replaced unit).
    assert_eq!(
        runs(&core.ready(t).effects),
        vec![vec![Action::Unload(a("g.service"))]]
    );
}

// ----- global units by exception -----

fn global_record(
    name: &str,
    n: u32,
    desired: TargetState,
    extra: &str,
    revision: i64,
) -> GlobalJob {
    let f = UnitFile::parse(&format!(
        "[Service]\nExecStart=/bin/sleep {n}\n\n[X-Fleet]\nGlobal=true\n{extra}"
    ))
    .expect("a unit file");
    GlobalJob {
        job: Job {
            name: name.to_string(),
            hash: f.hash(),
            desired,
            global: true,
            x_fleet: Some(registry::Job::fleet_options(&f)),
        },
        raw: f.serialize(),
        rollout: None,
        revision,
        outcome_since: None,
    }
}

fn inactive() -> SystemdState {
    SystemdState {
        load: "loaded".into(),
        active: "inactive".into(),
        sub: "dead".into(),
    }
}

/// A machine's side of the registry, as its publications leave it: states by unit, and its
/// summary.
#[derive(Default)]
struct Written {
    states: BTreeMap<String, UnitState>,
    summary: Option<GlobalSummary>,
    publications: Vec<Effect>,
}

/// Runs the core against a unit manager whose units end up as `world` says (a unit started
/// or loaded reports its state from there), answering every effect, until it is idle.
/// Carries out a phase at `t` as a manager that does everything asked would: each action
/// done, and the state of each unit started or stopped reported as `world` has it.
fn carry_out(
    t: Instant,
    core: &mut Core,
    phase: &[(Action, Option<UnitFile>)],
    world: &BTreeMap<String, SystemdState>,
) {
    for (action, _) in phase {
        core.on(t, Input::Done(action.clone(), Ok(())));
        if let Action::Start(u) | Action::Stop(u) = action {
            report(t, core, u, world.get(u).cloned());
        }
    }
}

/// Global unit number `i`, launched, its record written at revision `i`.
fn launched_global(i: u32) -> GlobalJob {
    global_record(
        &format!("g{i}.service"),
        i,
        TargetState::Launched,
        "",
        i64::from(i),
    )
}

fn settle(
    t: &mut Instant,
    core: &mut Core,
    world: &BTreeMap<String, SystemdState>,
    written: &mut Written,
) {
    // Until nothing is left to do, now or later (a summary held back for its interval).
    for _ in 0..10_000 {
        let ready = core.ready(*t);
        if ready.effects.is_empty() && ready.wake_at.is_none() {
            return;
        }
        for effect in ready.effects {
            match &effect {
                Effect::Run(phase) => carry_out(*t, core, phase, world),
                Effect::ReadStates(names) => {
                    let states = names
                        .iter()
                        .map(|n| (n.clone(), world.get(n).cloned(), None))
                        .collect();
                    core.on(*t, Input::States(Ok(states)));
                }
                Effect::Publish {
                    moved,
                    save,
                    remove,
                    summary,
                } => {
                    for n in moved.iter().chain(remove) {
                        written.states.remove(n);
                    }
                    for s in save {
                        written.states.insert(s.name.clone(), s.clone());
                    }
                    if summary.is_some() {
                        written.summary = summary.clone();
                    }
                    written.publications.push(effect.clone());
                    core.on(*t, Input::Published(Ok(())));
                }
                _ => {}
            }
        }
        *t += Duration::from_millis(5);
    }
}

/// The rows readers compute from what the machine wrote, sorted by unit.
fn rows(globals: &[GlobalJob], written: &Written) -> Vec<UnitState> {
    let mut instances = registry::Instances::default();
    for g in globals {
        instances.global(&g.job.name, Some((g.job.clone(), g.revision)));
    }
    instances.summary("m1", written.summary.clone());
    for s in written.states.values().filter(|s| s.global) {
        instances.exception(&s.name, &s.machine_id, Some(s.clone()));
    }
    instances.rows()
}

/// The state the machine holds of each global unit: what a full publication would write.
fn full_publication(core: &Core) -> Vec<UnitState> {
    core.held
        .iter()
        .filter(|(n, _)| core.globals.contains_key(*n))
        .map(|(n, h)| core.state_of(n, h))
        .collect()
}

/// Which global units a machine publishes an exception for, and which its summary covers: a
/// unit as its job wants it (launched and running, or loaded) is covered; a failed one, one
/// whose metadata does not match (not run here) and one not loaded yet are not. The rows
/// readers compute equal the states a full publication gives.
#[test]
fn global_units_are_published_by_exception() {
    let mut t = Instant::now();
    let mut core = started(t, &[]);
    let globals = vec![
        global_record("g1.service", 1, TargetState::Launched, "", 5),
        global_record("g2.service", 2, TargetState::Loaded, "", 6),
        global_record(
            "g3.service",
            3,
            TargetState::Launched,
            "MachineMetadata=role=db\n",
            7,
        ),
        global_record("g4.service", 4, TargetState::Launched, "", 8),
    ];
    core.on(
        t,
        Input::Globals(Update::Reset(
            globals
                .iter()
                .map(|g| (g.job.name.clone(), g.clone()))
                .collect(),
        )),
    );
    let world: BTreeMap<String, SystemdState> = [
        (a("g1.service"), active()),
        (a("g2.service"), inactive()),
        (a("g4.service"), failed()),
    ]
    .into_iter()
    .collect();
    let mut written = Written::default();
    settle(&mut t, &mut core, &world, &mut written);

    // Only the failed unit ever had a state of its own: the units on their way (loaded, being
    // started) were not published as exceptions to be deleted a moment later.
    let saved: BTreeSet<&str> = written
        .publications
        .iter()
        .flat_map(|p| match p {
            Effect::Publish { save, .. } => save.iter().map(|s| s.name.as_str()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(saved, ["g4.service"].into_iter().collect());
    assert_eq!(
        written.states.keys().collect::<Vec<_>>(),
        vec!["g4.service"]
    );
    assert_eq!(written.states["g4.service"].systemd, failed());
    let absent: BTreeSet<String> = [a("g3.service"), a("g4.service")].into_iter().collect();
    assert_eq!(
        written.summary,
        Some(GlobalSummary {
            revision: 8,
            absent
        })
    );
    assert_eq!(rows(&globals, &written), full_publication(&core));
    assert_eq!(rows(&globals, &written).len(), 3);

    // g4 runs again: its exception goes, in the write that covers it.
    let mut world = world;
    world.insert(a("g4.service"), active());
    report(t, &mut core, "g4.service", Some(active()));
    written.publications.clear();
    settle(&mut t, &mut core, &world, &mut written);
    assert_eq!(
        written.publications,
        vec![Effect::Publish {
            moved: vec![],
            save: vec![],
            remove: vec![a("g4.service")],
            summary: Some(GlobalSummary {
                revision: 8,
                absent: [a("g3.service")].into_iter().collect()
            }),
        }]
    );
    assert!(written.states.is_empty());
    assert_eq!(rows(&globals, &written), full_publication(&core));

    // g1 gets another body: the machine runs the old one (an exception) until it replaced it,
    // then it is covered again at the new revision; nothing stays behind.
    let newer = global_record("g1.service", 11, TargetState::Launched, "", 9);
    let mut globals = globals;
    globals[0] = newer.clone();
    core.on(
        t,
        Input::Globals(Update::Changes(vec![registry::Change::Put(
            a("g1.service"),
            newer,
        )])),
    );
    written.publications.clear();
    settle(&mut t, &mut core, &world, &mut written);
    assert!(written.states.is_empty(), "{:?}", written.states);
    assert_eq!(
        written.summary,
        Some(GlobalSummary {
            revision: 9,
            absent: [a("g3.service")].into_iter().collect()
        })
    );
    assert_eq!(rows(&globals, &written), full_publication(&core));
    assert_eq!(core.held["g1.service"].hash, globals[0].job.hash);
}

/// A machine with no global unit writes no summary; a lease renewed writes it again.
#[test]
fn the_summary_is_written_when_there_is_something_to_vouch_for() {
    let mut t = Instant::now();
    let mut core = started(t, &[("a.service", 1)]);
    let world: BTreeMap<String, SystemdState> = [(a("a.service"), active())].into_iter().collect();
    let mut written = Written::default();
    settle(&mut t, &mut core, &world, &mut written);
    assert_eq!(written.summary, None);
    assert!(written.states.contains_key("a.service"));

    let g = global_record("g.service", 2, TargetState::Launched, "", 3);
    core.on(
        t,
        Input::Globals(Update::Changes(vec![registry::Change::Put(
            a("g.service"),
            g,
        )])),
    );
    let world: BTreeMap<String, SystemdState> =
        [(a("a.service"), active()), (a("g.service"), active())]
            .into_iter()
            .collect();
    settle(&mut t, &mut core, &world, &mut written);
    let summary = Some(GlobalSummary {
        revision: 3,
        absent: BTreeSet::new(),
    });
    assert_eq!(written.summary, summary);
    assert!(!written.states.contains_key("g.service"));

    // The lease lapsed and was renewed: everything, the summary too, is written again.
    core.on(t, Input::LeaseLapsed);
    let ready = core.ready(t);
    assert!(ready.effects.contains(&Effect::Renew));
    core.on(t, Input::Renewed(Ok(())));
    let mut again = Written::default();
    settle(&mut t, &mut core, &world, &mut again);
    assert_eq!(again.summary, summary);
    assert_eq!(again.states.keys().collect::<Vec<_>>(), vec!["a.service"]);
}

/// Global units created one after another: a summary that changes alone is written at most
/// once per `SUMMARY_INTERVAL`, with everything that changed meanwhile.
#[test]
fn a_summary_changing_alone_is_written_at_most_once_per_interval() {
    let mut t = Instant::now();
    let mut core = started(t, &[]);
    let g = launched_global;
    core.on(
        t,
        Input::Globals(Update::Reset(vec![(a("g1.service"), g(1))])),
    );
    let mut world: BTreeMap<String, SystemdState> = BTreeMap::new();
    world.insert(a("g1.service"), active());
    let mut written = Written::default();
    settle(&mut t, &mut core, &world, &mut written);
    assert_eq!(written.summary.as_ref().map(|s| s.revision), Some(1));

    // Three more global units, 100 ms apart, each started at once.
    let mut summaries: Vec<(Duration, GlobalSummary)> = Vec::new();
    let first = t;
    let last_written = core.summary_written_at.expect("a summary written");
    for i in 2..=4 {
        world.insert(format!("g{i}.service"), active());
        core.on(
            t,
            Input::Globals(Update::Changes(vec![registry::Change::Put(
                format!("g{i}.service"),
                g(i),
            )])),
        );
        for _ in 0..20 {
            let ready = core.ready(t);
            for effect in ready.effects {
                if let Effect::Publish {
                    summary: Some(s), ..
                } = &effect
                {
                    summaries.push((t - first, s.clone()));
                }
                match effect {
                    Effect::Run(phase) => carry_out(t, &mut core, &phase, &world),
                    Effect::Publish { .. } => core.on(t, Input::Published(Ok(()))),
                    _ => {}
                }
            }
            t += Duration::from_millis(5);
        }
    }
    settle(&mut t, &mut core, &world, &mut written);
    let last = core.summary.clone().expect("a summary");
    assert_eq!(last.revision, 4);
    assert!(last.absent.is_empty(), "{last:?}");
    // During the 300 ms of creations, less than an interval after the last summary, no
    // summary went out: they waited for the interval, then went as one.
    assert!(first - last_written + Duration::from_millis(300) < SUMMARY_INTERVAL);
    assert!(summaries.is_empty(), "{summaries:?}");
}

/// A registry that answers slowly spaces the summaries out: after a publication that took
/// 800 ms, a summary changing alone waits ten times as long, not `SUMMARY_INTERVAL`.
#[test]
fn a_slow_registry_spaces_summaries_out() {
    let mut t = Instant::now();
    let mut core = started(t, &[]);
    let g = launched_global;
    let mut world: BTreeMap<String, SystemdState> = BTreeMap::new();
    // The first summary goes at once; the registry takes 800 ms to answer it.
    world.insert(a("g1.service"), active());
    core.on(
        t,
        Input::Globals(Update::Reset(vec![(a("g1.service"), g(1))])),
    );
    let mut sent_at = None;
    for _ in 0..100 {
        for effect in core.ready(t).effects {
            match effect {
                Effect::Run(phase) => carry_out(t, &mut core, &phase, &world),
                Effect::Publish {
                    summary: Some(_), ..
                } => sent_at = Some(t),
                Effect::Publish { .. } => core.on(t, Input::Published(Ok(()))),
                _ => {}
            }
        }
        if sent_at.is_some() {
            break;
        }
        t += Duration::from_millis(5);
    }
    let sent_at = sent_at.expect("a summary sent");
    t = sent_at + Duration::from_millis(800);
    core.on(t, Input::Published(Ok(())));
    // A new global unit 1.5 s after: past SUMMARY_INTERVAL, but the summary waits for 8 s
    // after the last.
    t = sent_at + Duration::from_millis(1500);
    world.insert(a("g2.service"), active());
    core.on(
        t,
        Input::Globals(Update::Changes(vec![registry::Change::Put(
            a("g2.service"),
            g(2),
        )])),
    );
    let mut summary_at = None;
    for _ in 0..2000 {
        let ready = core.ready(t);
        for effect in ready.effects {
            match effect {
                Effect::Run(phase) => carry_out(t, &mut core, &phase, &world),
                Effect::Publish { summary, .. } => {
                    if summary.is_some() {
                        summary_at.get_or_insert(t);
                    }
                    core.on(t, Input::Published(Ok(())));
                }
                _ => {}
            }
        }
        if summary_at.is_some() {
            break;
        }
        t += Duration::from_millis(10);
    }
    let waited = summary_at.expect("the summary went in the end") - sent_at;
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_millis(8100),
        "{waited:?}"
    );
}

/// A global unit whose start is done before the manager reports it active is not published
/// as an exception (its state before the start) meanwhile: the report brings it covered.
#[test]
fn a_started_global_unit_waits_for_its_report() {
    let mut t = Instant::now();
    let mut core = started(t, &[]);
    core.on(
        t,
        Input::Globals(Update::Reset(vec![(
            a("g.service"),
            global_record("g.service", 1, TargetState::Launched, "", 4),
        )])),
    );
    let mut saved: Vec<String> = Vec::new();
    let mut summaries: Vec<GlobalSummary> = Vec::new();
    // Run the plan; the starts are done, and the manager says nothing yet.
    for _ in 0..400 {
        let ready = core.ready(t);
        for effect in ready.effects {
            match effect {
                Effect::Run(phase) => {
                    for (action, _) in phase {
                        if let Action::Load(u) = &action {
                            report(t, &mut core, u, Some(inactive()));
                        }
                        core.on(t, Input::Done(action, Ok(())));
                    }
                }
                Effect::Publish { save, summary, .. } => {
                    saved.extend(save.into_iter().map(|s| s.name));
                    summaries.extend(summary);
                    core.on(t, Input::Published(Ok(())));
                }
                _ => {}
            }
        }
        t += Duration::from_millis(5);
    }
    assert_eq!(saved, Vec::<String>::new());
    assert!(core.held.contains_key("g.service"));
    report(t, &mut core, "g.service", Some(active()));
    settle(&mut t, &mut core, &BTreeMap::new(), &mut Written::default());
    assert_eq!(saved, Vec::<String>::new());
    assert_eq!(
        core.summary,
        Some(GlobalSummary {
            revision: 4,
            absent: BTreeSet::new()
        })
    );
}
