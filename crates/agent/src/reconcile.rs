//! The agent's decisions as pure functions: which units belong on this machine, and what to do
//! to get from what runs to that.
//!
//! ```
//! use agent::reconcile::{plan, Action, Held, Wanted};
//! use registry::TargetState;
//! use std::collections::BTreeMap;
//! let hash = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap().hash();
//! let wanted = BTreeMap::from([("a.service".to_string(), Wanted { hash, state: TargetState::Launched })]);
//! let actions = plan(&wanted, &BTreeMap::new());
//! assert_eq!(actions, vec![Action::Load("a.service".into()), Action::Reload, Action::Start("a.service".into())]);
//! ```

use registry::{MachineState, TargetState};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use unit::{Requirements, UnitHash};

/// What should be true of a unit on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub hash: UnitHash,
    /// `Loaded` or `Launched`.
    pub state: TargetState,
}

/// What the agent holds of a unit: the file it loaded and how far it took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub hash: UnitHash,
    /// `Loaded` or `Launched`.
    pub state: TargetState,
}

/// One step for the unit manager. A plan lists all unloads, then all loads, then one reload,
/// then stops, then starts: every unit of the machine is loaded (and the manager reloaded once)
/// before any is started, so a unit that `Requires=` another placed here finds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Unload(String),
    Load(String),
    Reload,
    Stop(String),
    Start(String),
}

impl Action {
    pub fn unit(&self) -> Option<&str> {
        match self {
            Action::Unload(u) | Action::Load(u) | Action::Stop(u) | Action::Start(u) => Some(u),
            Action::Reload => None,
        }
    }
}

/// The actions that take `held` to `wanted` (fleet's task calculation, per unit).
pub fn plan(wanted: &BTreeMap<String, Wanted>, held: &BTreeMap<String, Held>) -> Vec<Action> {
    let mut unloads = Vec::new();
    let mut loads = Vec::new();
    let mut stops = Vec::new();
    let mut starts = Vec::new();
    for (name, h) in held {
        match wanted.get(name) {
            Some(w) if w.state != TargetState::Inactive => {
                if w.hash != h.hash {
                    // A replaced unit: unload the old file, load the new one, start it again
                    // if wanted (how `--replace` propagates).
                    unloads.push(Action::Unload(name.clone()));
                    loads.push(Action::Load(name.clone()));
                    if w.state == TargetState::Launched {
                        starts.push(Action::Start(name.clone()));
                    }
                } else if w.state == TargetState::Launched && h.state != TargetState::Launched {
                    starts.push(Action::Start(name.clone()));
                } else if w.state == TargetState::Loaded && h.state == TargetState::Launched {
                    stops.push(Action::Stop(name.clone()));
                }
            }
            _ => unloads.push(Action::Unload(name.clone())),
        }
    }
    for (name, w) in wanted {
        if w.state == TargetState::Inactive || held.contains_key(name) {
            continue;
        }
        loads.push(Action::Load(name.clone()));
        if w.state == TargetState::Launched {
            starts.push(Action::Start(name.clone()));
        }
    }
    let reload = !(unloads.is_empty() && loads.is_empty());
    let mut out = unloads;
    out.extend(loads);
    if reload {
        out.push(Action::Reload);
    }
    out.extend(stops);
    out.extend(starts);
    out
}

/// A unit this machine may hold, with what the agent needs to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub hash: UnitHash,
    pub desired: TargetState,
    pub global: bool,
    /// Shared with the agent's cache: a reconcile looks at every unit of the machine, and
    /// copying each one's requirements made that the agent's biggest cost under bursts.
    pub requirements: std::sync::Arc<Requirements>,
}

/// Why a candidate is not wanted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub unit: String,
    pub reason: String,
}

/// The units this machine should hold: everything the engine scheduled here, plus every global
/// unit whose `MachineMetadata` matches this machine, minus any unit that conflicts with one
/// already accepted (in name order, so the alphabetically first of two conflicting units wins,
/// as in fleet). Units with desired state `inactive` are not wanted.
pub fn wanted_units(
    machine: &MachineState,
    candidates: &[Candidate],
) -> (BTreeMap<String, Wanted>, Vec<Refusal>) {
    let mut sorted: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.desired != TargetState::Inactive)
        .collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut accepted: Vec<&Candidate> = Vec::new();
    // Only units with `Conflicts=` patterns can conflict with a unit that has none: checking
    // just those keeps a pass linear when few units declare conflicts (the usual case).
    let mut accepted_with_patterns: Vec<&Candidate> = Vec::new();
    let mut refused = Vec::new();
    for c in sorted {
        if c.global && !unit::metadata_matches(&c.requirements.machine_metadata, &machine.metadata)
        {
            continue;
        }
        let against = if c.requirements.conflicts.is_empty() {
            &accepted_with_patterns
        } else {
            &accepted
        };
        if let Some(other) = against.iter().find(|a| conflicts(a, c)) {
            refused.push(Refusal {
                unit: c.name.clone(),
                reason: format!("conflicts with {} on this machine", other.name),
            });
            continue;
        }
        if !c.requirements.conflicts.is_empty() {
            accepted_with_patterns.push(c);
        }
        accepted.push(c);
    }
    let wanted = accepted
        .into_iter()
        .map(|c| {
            (
                c.name.clone(),
                Wanted {
                    hash: c.hash,
                    state: c.desired,
                },
            )
        })
        .collect();
    (wanted, refused)
}

fn conflicts(a: &Candidate, b: &Candidate) -> bool {
    a.name != b.name
        && (a.requirements.conflicts_with(&b.name) || b.requirements.conflicts_with(&a.name))
}

/// The last failed action on a unit, and when it may be tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub action: Action,
    /// What went wrong, as published in the unit's state.
    pub reason: String,
    /// Failures of this action in a row.
    pub attempts: u32,
    /// `None`: refused for good (the unit manager said retrying cannot help); not tried again
    /// until the unit needs another action.
    pub retry_at: Option<Instant>,
}

/// The first retry waits about this long; each failure in a row doubles it, up to
/// [`LAST_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
pub const LAST_RETRY_DELAY: Duration = Duration::from_secs(60);

/// How long to wait after the `attempts`-th failure in a row: exponential, spread by `jitter`
/// (any number; a random one) over 75-125 % so that a thousand units failing together are not
/// retried together.
pub fn retry_delay(attempts: u32, jitter: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    let base = FIRST_RETRY_DELAY
        .saturating_mul(1 << doublings)
        .min(LAST_RETRY_DELAY);
    base.mul_f64(0.75 + (jitter % 1001) as f64 / 2000.0)
}

/// Records that `action` failed with `reason` at `now`; `for_good` when retrying cannot help.
/// A failure of the same action as the last one counts as one more in a row.
pub fn record_failure(
    last: Option<&Failure>,
    action: &Action,
    reason: String,
    for_good: bool,
    now: Instant,
    jitter: u64,
) -> Failure {
    let attempts = match last {
        Some(f) if &f.action == action => f.attempts.saturating_add(1),
        _ => 1,
    };
    Failure {
        action: action.clone(),
        reason,
        attempts,
        retry_at: (!for_good).then(|| now + retry_delay(attempts, jitter)),
    }
}

/// Splits a plan into the actions to take now and those that wait: an action that failed last
/// time waits until its retry time (for ever if it was refused for good). Any other action on
/// the unit goes at once: the unit's wanted state changed, so the old failure says nothing of
/// it. The reload goes if a load or unload goes.
pub fn defer(
    actions: Vec<Action>,
    failures: &BTreeMap<String, Failure>,
    now: Instant,
) -> (Vec<Action>, Vec<Action>) {
    let (mut go, wait): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
        let Some(unit) = a.unit() else { return true };
        match failures.get(unit) {
            Some(f) if &f.action == a => f.retry_at.is_some_and(|at| at <= now),
            _ => true,
        }
    });
    if !go
        .iter()
        .any(|a| matches!(a, Action::Load(_) | Action::Unload(_)))
    {
        go.retain(|a| a != &Action::Reload);
    }
    (go, wait)
}

/// Splits the units of one start phase into waves, each started after the one before has
/// been, by the order systemd would keep: `After=` and `Before=` between units of the phase,
/// and, for a pair with no such order, a unit after what it `Requires=`/`Wants=`/`BindsTo=`/
/// `Requisite=`. The process supervisor knows nothing of these options, and systemd starts a
/// unit's dependencies itself only when their files were there first; starting the
/// dependencies first is right for both.
/// Within a wave, units keep their order; units on an ordering cycle share the last wave
/// (systemd breaks such cycles itself, and the supervisor has no order to keep).
pub fn start_waves(
    starts: Vec<String>,
    requirements: &dyn Fn(&str) -> Option<std::sync::Arc<Requirements>>,
) -> Vec<Vec<String>> {
    use std::collections::BTreeSet;
    let index: BTreeMap<&str, usize> = starts
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let found: Vec<Option<std::sync::Arc<Requirements>>> =
        starts.iter().map(|n| requirements(n)).collect();
    let within = |names: Vec<&str>, i: usize| -> Vec<usize> {
        names
            .into_iter()
            .filter_map(|n| index.get(n).copied())
            .filter(|&j| j != i)
            .collect()
    };
    // first[i]: the units of this phase that must start before starts[i].
    let mut first: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); starts.len()];
    for (i, req) in found.iter().enumerate() {
        let Some(req) = req else { continue };
        for j in within(req.dependencies.after(), i) {
            first[i].insert(j);
        }
        for j in within(req.dependencies.before(), i) {
            first[j].insert(i);
        }
    }
    let ordered: Vec<BTreeSet<usize>> = first.clone();
    for (i, req) in found.iter().enumerate() {
        let Some(req) = req else { continue };
        let deps = req.dependencies.colocated().map(|(n, _)| n).collect();
        for j in within(deps, i) {
            if !ordered[i].contains(&j) && !ordered[j].contains(&i) {
                first[i].insert(j);
            }
        }
    }
    if first.iter().all(BTreeSet::is_empty) {
        return if starts.is_empty() {
            Vec::new()
        } else {
            vec![starts]
        };
    }
    unit::deps::waves(&first)
        .into_iter()
        .map(|w| w.into_iter().map(|i| starts[i].clone()).collect())
        .collect()
}

/// When the earliest waiting retry is due, if any action waits for a retry.
pub fn next_retry(failures: &BTreeMap<String, Failure>) -> Option<Instant> {
    failures.values().filter_map(|f| f.retry_at).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> UnitHash {
        UnitHash([n; 20])
    }
    fn w(n: u8, s: TargetState) -> Wanted {
        Wanted {
            hash: h(n),
            state: s,
        }
    }
    fn held(n: u8, s: TargetState) -> Held {
        Held {
            hash: h(n),
            state: s,
        }
    }
    use TargetState::*;

    #[test]
    fn retry_delays_double_with_jitter_and_stop_growing() {
        // (attempts, jitter) -> delay: jitter 0 gives 75 %, 500 gives 100 %, 1000 gives 125 %.
        let cases = [
            (1, 500, Duration::from_secs(1)),
            (2, 500, Duration::from_secs(2)),
            (3, 500, Duration::from_secs(4)),
            (1, 0, Duration::from_millis(750)),
            (1, 1000, Duration::from_millis(1250)),
            (7, 500, Duration::from_secs(60)),
            (40, 1000, Duration::from_secs(75)),
            (0, 500, Duration::from_secs(1)),
        ];
        for (attempts, jitter, want) in cases {
            assert_eq!(retry_delay(attempts, jitter), want, "{attempts} {jitter}");
        }
    }

    #[test]
    fn failures_in_a_row_count_up_and_a_new_action_starts_over() {
        let now = Instant::now();
        let start = Action::Start("u".into());
        let first = record_failure(None, &start, "x".into(), false, now, 500);
        assert_eq!(first.attempts, 1);
        assert_eq!(first.retry_at, Some(now + Duration::from_secs(1)));
        let second = record_failure(Some(&first), &start, "x".into(), false, now, 500);
        assert_eq!(second.attempts, 2);
        assert_eq!(second.retry_at, Some(now + Duration::from_secs(2)));
        let stop = Action::Stop("u".into());
        let other = record_failure(Some(&second), &stop, "y".into(), false, now, 500);
        assert_eq!(other.attempts, 1);
        let refused = record_failure(Some(&other), &start, "z".into(), true, now, 500);
        assert_eq!(refused.retry_at, None);
    }

    #[test]
    fn actions_wait_for_their_retry_time() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let f = |action: Action, retry_at: Option<Instant>| Failure {
            action,
            reason: "r".into(),
            attempts: 1,
            retry_at,
        };
        let failures = BTreeMap::from([
            // Waiting: its start is held back.
            ("a".to_string(), f(Action::Start("a".into()), Some(later))),
            // Due: its start goes.
            ("b".to_string(), f(Action::Start("b".into()), Some(now))),
            // Refused for good: held back for ever.
            ("c".to_string(), f(Action::Start("c".into()), None)),
            // Failed to start, now to be stopped: the stop goes at once.
            ("d".to_string(), f(Action::Start("d".into()), Some(later))),
        ]);
        let plan = vec![
            Action::Load("e".into()),
            Action::Reload,
            Action::Stop("d".into()),
            Action::Start("a".into()),
            Action::Start("b".into()),
            Action::Start("c".into()),
        ];
        let (now_actions, waiting) = defer(plan, &failures, now);
        assert_eq!(
            now_actions,
            vec![
                Action::Load("e".into()),
                Action::Reload,
                Action::Stop("d".into()),
                Action::Start("b".into()),
            ]
        );
        assert_eq!(
            waiting,
            vec![Action::Start("a".into()), Action::Start("c".into())]
        );
        assert_eq!(next_retry(&failures), Some(now));
        assert_eq!(next_retry(&BTreeMap::new()), None);
        // A reload with nothing loaded or unloaded is not worth a daemon-reload.
        let failures =
            BTreeMap::from([("e".to_string(), f(Action::Load("e".into()), Some(later)))]);
        let plan = vec![Action::Load("e".into()), Action::Reload];
        let (go, waiting) = defer(plan, &failures, now);
        assert!(go.is_empty(), "{go:?}");
        assert_eq!(waiting, vec![Action::Load("e".into())]);
    }

    #[test]
    fn task_table() {
        // (wanted, held, expected actions) for one unit "u", as fleet's agent task cases.
        let u = || "u".to_string();
        let cases: Vec<(Option<Wanted>, Option<Held>, Vec<Action>)> = vec![
            (None, None, vec![]),
            (
                Some(w(1, Loaded)),
                None,
                vec![Action::Load(u()), Action::Reload],
            ),
            (
                Some(w(1, Launched)),
                None,
                vec![Action::Load(u()), Action::Reload, Action::Start(u())],
            ),
            (Some(w(1, Inactive)), None, vec![]),
            (
                None,
                Some(held(1, Loaded)),
                vec![Action::Unload(u()), Action::Reload],
            ),
            (
                None,
                Some(held(1, Launched)),
                vec![Action::Unload(u()), Action::Reload],
            ),
            (
                Some(w(1, Inactive)),
                Some(held(1, Launched)),
                vec![Action::Unload(u()), Action::Reload],
            ),
            (Some(w(1, Loaded)), Some(held(1, Loaded)), vec![]),
            (Some(w(1, Launched)), Some(held(1, Launched)), vec![]),
            (
                Some(w(1, Launched)),
                Some(held(1, Loaded)),
                vec![Action::Start(u())],
            ),
            (
                Some(w(1, Loaded)),
                Some(held(1, Launched)),
                vec![Action::Stop(u())],
            ),
            (
                Some(w(2, Launched)),
                Some(held(1, Launched)),
                vec![
                    Action::Unload(u()),
                    Action::Load(u()),
                    Action::Reload,
                    Action::Start(u()),
                ],
            ),
            (
                Some(w(2, Loaded)),
                Some(held(1, Launched)),
                vec![Action::Unload(u()), Action::Load(u()), Action::Reload],
            ),
        ];
        for (i, (wa, he, expected)) in cases.into_iter().enumerate() {
            let wanted: BTreeMap<_, _> = wa.into_iter().map(|x| (u(), x)).collect();
            let heldm: BTreeMap<_, _> = he.into_iter().map(|x| (u(), x)).collect();
            assert_eq!(plan(&wanted, &heldm), expected, "case {i}");
        }
    }

    #[test]
    fn everything_loads_before_anything_starts() {
        let wanted: BTreeMap<_, _> = [
            ("a", w(1, Launched)),
            ("b", w(2, Launched)),
            ("c", w(3, Loaded)),
        ]
        .into_iter()
        .map(|(n, x)| (n.to_string(), x))
        .collect();
        let heldm: BTreeMap<_, _> = [("z".to_string(), held(9, Launched))].into_iter().collect();
        let actions = plan(&wanted, &heldm);
        let first_start = actions
            .iter()
            .position(|a| matches!(a, Action::Start(_)))
            .unwrap();
        let last_load = actions
            .iter()
            .rposition(|a| matches!(a, Action::Load(_) | Action::Unload(_)))
            .unwrap();
        let reload = actions.iter().position(|a| *a == Action::Reload).unwrap();
        assert!(last_load < reload && reload < first_start, "{actions:?}");
        assert_eq!(actions.iter().filter(|a| **a == Action::Reload).count(), 1);
    }

    #[test]
    fn starts_come_in_dependency_waves() {
        fn req(body: &str, name: &str) -> std::sync::Arc<Requirements> {
            let file = unit::UnitFile::parse(body).unwrap();
            std::sync::Arc::new(Requirements::from_unit(&file, name))
        }
        let bodies: BTreeMap<&str, &str> = BTreeMap::from([
            ("apache.service", "[Unit]\nWants=apache-discovery.service\n"),
            (
                "apache-discovery.service",
                "[Unit]\nBindsTo=apache.service\nAfter=apache.service\n",
            ),
            ("a.service", "[Unit]\nRequires=b.service\n"),
            ("b.service", "[Unit]\nRequires=c.service\nAfter=c.service\n"),
            ("c.service", ""),
            ("early.service", "[Unit]\nBefore=a.service\n"),
            ("x.service", "[Unit]\nAfter=y.service\n"),
            ("y.service", "[Unit]\nAfter=x.service\n"),
            ("loner.service", "[Unit]\nRequires=elsewhere.service\n"),
        ]);
        let lookup = |n: &str| bodies.get(n).map(|b| req(b, n));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Vec<String>, Vec<Vec<String>>)> = vec![
            (s(&[]), vec![]),
            (
                s(&["c.service", "loner.service"]),
                vec![s(&["c.service", "loner.service"])],
            ),
            // BindsTo with After: the main unit first (as systemd orders them).
            (
                s(&["apache-discovery.service", "apache.service"]),
                vec![s(&["apache.service"]), s(&["apache-discovery.service"])],
            ),
            // A chain of three, and a Before= that goes ahead of it.
            (
                s(&["a.service", "b.service", "c.service", "early.service"]),
                vec![
                    s(&["c.service", "early.service"]),
                    s(&["b.service"]),
                    s(&["a.service"]),
                ],
            ),
            // Only units of this phase count: b is running already.
            (s(&["a.service"]), vec![s(&["a.service"])]),
            // An ordering cycle does not hold the others back.
            (
                s(&["c.service", "x.service", "y.service"]),
                vec![s(&["c.service"]), s(&["x.service", "y.service"])],
            ),
        ];
        for (starts, want) in cases {
            assert_eq!(start_waves(starts.clone(), &lookup), want, "{starts:?}");
        }
    }

    fn cand(name: &str, global: bool, conflicts: &[&str], meta: &[(&str, &str)]) -> Candidate {
        let mut requirements = Requirements {
            global,
            ..Default::default()
        };
        requirements.conflicts = conflicts.iter().map(|s| s.to_string()).collect();
        for (k, v) in meta {
            requirements
                .machine_metadata
                .entry(k.to_string())
                .or_default()
                .insert(v.to_string());
        }
        Candidate {
            name: name.into(),
            hash: h(1),
            desired: Launched,
            global,
            requirements: requirements.into(),
        }
    }

    #[test]
    fn globals_follow_metadata_and_first_conflict_wins() {
        let mut m = MachineState {
            id: "m1".into(),
            ..Default::default()
        };
        m.metadata.insert("region".into(), "east".into());
        let cands = vec![
            cand(
                "conflict-global.1.service",
                true,
                &["conflict-global.*.service"],
                &[],
            ),
            cand(
                "conflict-global.0.service",
                true,
                &["conflict-global.*.service"],
                &[],
            ),
            cand("east.service", true, &[], &[("region", "east")]),
            cand("west.service", true, &[], &[("region", "west")]),
            cand("hello.service", false, &[], &[]),
        ];
        let (wanted, refused) = wanted_units(&m, &cands);
        let names: Vec<_> = wanted.keys().cloned().collect();
        assert_eq!(
            names,
            vec!["conflict-global.0.service", "east.service", "hello.service"]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].unit, "conflict-global.1.service");
    }
}
