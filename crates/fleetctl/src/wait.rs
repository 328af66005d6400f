//! Waiting for units to reach the state a command asked for, done right (fleet-reference 4.7,
//! 11 item 8):
//! - `start` waits for fleet's `launched` *and* systemd's `active` on the unit's machine; a unit
//!   systemd reports `failed` ends the wait with an error;
//! - every wait is bounded: `--block-attempts=N` gives each wait N attempts of 2 s (polling every
//!   250 ms; 0 = no limit, as fleet), `--timeout SECONDS` bounds the whole command (0 = none);
//! - global units are waited for too (see [`judge`]);
//! - while a unit cannot be placed, the engine's reason is printed once (and again if it changes).
//!
//! [`judge`] is the decision, pure; [`run_steps`] is the polling loop around it.

use crate::client::Fleet;
use crate::fields::{is_global, Machines};
use crate::output::Output;
use crate::plan::{Goal, Step};
use api::types::{Unit, UnitState};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// fleet's polling: one attempt is 2 s of polls 250 ms apart.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
pub const ATTEMPT: Duration = Duration::from_secs(2);
/// A global unit is done once every machine it is expected on reports the goal, or, when some
/// expected machine never reports (a `Conflicts=` keeps it off), once the machines that do
/// report have all reached it and this long has passed since the wait began.
pub const GLOBAL_SETTLE: Duration = ATTEMPT;
/// API errors in a row (polls) after which a wait gives up: 2 s of failures.
pub const MAX_ERRORS_IN_A_ROW: u32 = 8;

/// How long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Attempts of [`ATTEMPT`] per wait; 0 = unlimited.
    pub attempts: u32,
    /// When the whole command must be done, if ever.
    pub deadline: Option<Instant>,
}

/// What one poll saw.
pub struct Observation<'a> {
    /// The unit as `GET /units/<name>` returned it (`None`: not in the registry).
    pub unit: Option<&'a Unit>,
    /// Its states on every machine reporting one (only read when the goal needs them).
    pub states: &'a [UnitState],
    pub machines: &'a Machines,
    /// Since the wait began.
    pub elapsed: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done; the line to print.
    Reached(String),
    /// Will not get there; the error to print.
    Failed(String),
    /// Not yet; what it is doing (for the live line and the timeout message).
    Pending(String),
}

/// Whether waiting for `goal` needs the unit's per-machine states.
pub fn needs_states(goal: Goal, unit: Option<&Unit>) -> bool {
    match goal {
        // A destroyed unit is gone once no machine reports it any more.
        Goal::Gone | Goal::Launched => true,
        Goal::Inactive | Goal::Loaded => unit.is_some_and(is_global),
    }
}

fn state_text(s: &UnitState) -> String {
    let mut t = format!(
        "{}/{}/{}",
        dash(&s.systemd_load_state),
        dash(&s.systemd_active_state),
        dash(&s.systemd_sub_state)
    );
    if let Some(r) = &s.reason {
        t.push_str(" (");
        t.push_str(r);
        t.push(')');
    }
    t
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Whether systemd's active state counts as stopped for a wait for `loaded`.
fn stopped(s: &UnitState) -> bool {
    !matches!(
        s.systemd_active_state.as_str(),
        "active" | "activating" | "deactivating" | "reloading"
    )
}

/// Decides one poll of the wait for `goal` of unit `name`.
///
/// A unit (not global): `inactive`/`loaded` = fleet's `currentState`; `launched` = `currentState`
/// `launched` and systemd `active` on the machine it is scheduled to (`failed` there fails).
///
/// A global unit has no `currentState`; it is judged by the states machines publish. `inactive`:
/// no machine reports it. `loaded`: every reporting machine has it loaded and not running.
/// `launched`: every reporting machine has it `active` (one `failed` fails). And every machine
/// whose metadata matches the unit's `MachineMetadata=` must report it, or, if one never does,
/// [`GLOBAL_SETTLE`] must have passed with at least one machine there. If no machine matches,
/// there is nothing to wait for.
pub fn judge(name: &str, goal: Goal, obs: &Observation) -> Verdict {
    let Some(unit) = obs.unit else {
        return if goal == Goal::Gone {
            if obs.states.is_empty() {
                Verdict::Reached(format!("Destroyed {name}"))
            } else {
                Verdict::Pending(format!("stopping on {} machine(s)", obs.states.len()))
            }
        } else {
            Verdict::Failed(format!(
                "Unit {name} was removed from the registry while waiting for it to be {}",
                goal.word()
            ))
        };
    };
    if goal == Goal::Gone {
        return Verdict::Pending("destroying".into());
    }
    if is_global(unit) {
        return judge_global(name, goal, unit, obs);
    }
    let current = dash(&unit.current_state);
    let placed = !unit.machine_id.is_empty();
    let legend = obs.machines.legend(&unit.machine_id, false);
    let pending = |what: String| {
        if !placed && goal != Goal::Inactive {
            match &unit.reason {
                Some(r) => Verdict::Pending(format!("{current}, not placed: {r}")),
                None => Verdict::Pending(format!("{current}, waiting to be placed on a machine")),
            }
        } else {
            Verdict::Pending(what)
        }
    };
    match goal {
        Goal::Inactive if current == "inactive" => {
            Verdict::Reached(format!("Unit {name} inactive"))
        }
        Goal::Loaded if current == "loaded" => Verdict::Reached(if placed {
            format!("Unit {name} loaded on {legend}")
        } else {
            format!("Unit {name} loaded")
        }),
        Goal::Launched if current == "launched" => {
            match obs.states.iter().find(|s| s.machine_id == unit.machine_id) {
                Some(s) if s.systemd_active_state == "active" => {
                    Verdict::Reached(format!("Unit {name} launched on {legend}"))
                }
                Some(s) if s.systemd_active_state == "failed" => Verdict::Failed(format!(
                    "Unit {name} failed on {legend}: systemd reports {}",
                    state_text(s)
                )),
                Some(s) => {
                    Verdict::Pending(format!("launched on {legend}, systemd {}", state_text(s)))
                }
                None => Verdict::Pending(format!("launched on {legend}, no systemd state yet")),
            }
        }
        _ if placed => pending(format!("{current} on {legend}")),
        _ => pending(current.to_string()),
    }
}

/// Machines a global unit is expected on: those matching its `MachineMetadata=`.
pub fn global_targets(unit: &Unit, machines: &Machines) -> BTreeSet<String> {
    let req = unit::Requirements::from_unit(&unit.file(), &unit.name);
    machines
        .0
        .values()
        .filter(|m| unit::metadata_matches(&req.machine_metadata, &m.metadata))
        .map(|m| m.id.clone())
        .collect()
}

fn judge_global(name: &str, goal: Goal, unit: &Unit, obs: &Observation) -> Verdict {
    let states = obs.states;
    if goal == Goal::Inactive {
        return if states.is_empty() {
            Verdict::Reached(format!("Unit {name} inactive"))
        } else {
            Verdict::Pending(format!("still on {} machine(s)", states.len()))
        };
    }
    if let Some(s) = states
        .iter()
        .find(|s| goal == Goal::Launched && s.systemd_active_state == "failed")
    {
        return Verdict::Failed(format!(
            "Unit {name} failed on {}: systemd reports {}",
            obs.machines.legend(&s.machine_id, false),
            state_text(s)
        ));
    }
    let expected = global_targets(unit, obs.machines);
    if expected.is_empty() {
        return Verdict::Reached(format!(
            "Triggered global unit {name} {}: no machine matches its requirements",
            if goal == Goal::Launched {
                "start"
            } else {
                "load"
            }
        ));
    }
    let reached = |s: &UnitState| match goal {
        Goal::Launched => s.systemd_active_state == "active",
        _ => s.systemd_load_state == "loaded" && stopped(s),
    };
    let done: Vec<&UnitState> = states.iter().filter(|s| reached(s)).collect();
    let reporting: BTreeSet<&str> = states.iter().map(|s| s.machine_id.as_str()).collect();
    let all_expected = expected.iter().all(|m| reporting.contains(m.as_str()));
    let settled = !states.is_empty() && obs.elapsed >= GLOBAL_SETTLE;
    if done.len() == states.len() && (all_expected || settled) {
        let on = if done.len() <= 3 {
            done.iter()
                .map(|s| obs.machines.legend(&s.machine_id, false))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!("{} machines", done.len())
        };
        return Verdict::Reached(format!("Unit {name} {} on {on}", goal.word()));
    }
    Verdict::Pending(format!(
        "{} of {} machine(s) {}",
        done.len(),
        expected.len().max(states.len()),
        goal.word()
    ))
}

/// Runs `steps` for one unit, printing as fleet did. `Err` = the unit failed (already printed).
pub async fn run_steps(
    fleet: &Fleet,
    name: &str,
    steps: &[Step],
    limits: Limits,
    machines: &Machines,
    out: &Output,
) -> Result<(), ()> {
    for step in steps {
        match *step {
            Step::Set(state) => {
                if let Err(e) = fleet.set_target_state(name, state).await {
                    out.eprintln(&format!(
                        "Error setting target state of unit {name} to {state}: {e}"
                    ));
                    return Err(());
                }
            }
            Step::Destroy => match fleet.destroy_unit(name).await {
                Ok(_) => {}
                Err(e) => {
                    out.eprintln(&format!("Error destroying units: {e}"));
                    return Err(());
                }
            },
            Step::Wait(goal) => wait_for(fleet, name, goal, limits, machines, out).await?,
            Step::Triggered(verb) => out.println(&crate::plan::triggered_line(name, verb)),
        }
    }
    Ok(())
}

async fn wait_for(
    fleet: &Fleet,
    name: &str,
    goal: Goal,
    limits: Limits,
    machines: &Machines,
    out: &Output,
) -> Result<(), ()> {
    let start = Instant::now();
    let attempts_end = (limits.attempts > 0).then(|| start + ATTEMPT * limits.attempts);
    let end = match (attempts_end, limits.deadline) {
        (Some(a), Some(d)) => Some(a.min(d)),
        (a, d) => a.or(d),
    };
    let mut errors = 0;
    let mut last: String;
    let mut reason_shown: Option<String> = None;
    loop {
        match poll(fleet, name, goal, machines, start.elapsed()).await {
            Ok((verdict, reason)) => {
                errors = 0;
                if let Some(r) = reason.filter(|r| reason_shown.as_ref() != Some(r)) {
                    out.eprintln(&format!("Unit {name} cannot be placed: {r}"));
                    reason_shown = Some(r);
                }
                match verdict {
                    Verdict::Reached(line) => {
                        out.done(name);
                        out.println(&line);
                        return Ok(());
                    }
                    Verdict::Failed(line) => {
                        out.done(name);
                        out.eprintln(&line);
                        return Err(());
                    }
                    Verdict::Pending(what) => {
                        out.status(name, &what);
                        last = what;
                    }
                }
            }
            Err(e) => {
                errors += 1;
                last = format!("error: {e}");
                out.status(name, &last);
                if errors >= MAX_ERRORS_IN_A_ROW {
                    out.done(name);
                    out.eprintln(&format!(
                        "Error waiting for unit {name} to be {}: {e}",
                        goal.word()
                    ));
                    return Err(());
                }
            }
        }
        let next = Instant::now() + POLL_INTERVAL;
        if end.is_some_and(|e| next > e) {
            out.done(name);
            out.eprintln(&format!(
                "Error waiting for units: timed out waiting for unit {name} to report state {} (last seen: {last})",
                goal.word()
            ));
            return Err(());
        }
        tokio::time::sleep_until(next).await;
    }
}

/// One poll: the verdict, and the engine's reason when the unit is waiting to be placed.
async fn poll(
    fleet: &Fleet,
    name: &str,
    goal: Goal,
    machines: &Machines,
    elapsed: Duration,
) -> Result<(Verdict, Option<String>), api::ClientError> {
    let unit = fleet.unit(name).await?;
    let states = if needs_states(goal, unit.as_ref()) {
        fleet.unit_states(Some(name)).await?
    } else {
        Vec::new()
    };
    let obs = Observation {
        unit: unit.as_ref(),
        states: &states,
        machines,
        elapsed,
    };
    let verdict = judge(name, goal, &obs);
    let reason = match (&verdict, &unit) {
        (Verdict::Pending(_), Some(u))
            if u.machine_id.is_empty() && !matches!(goal, Goal::Inactive | Goal::Gone) =>
        {
            u.reason.clone()
        }
        _ => None,
    };
    Ok((verdict, reason))
}

/// Runs every unit's steps concurrently; `true` if all succeeded.
pub async fn run_all(
    fleet: &Fleet,
    plans: Vec<(String, Vec<Step>)>,
    limits: Limits,
    out: Arc<Output>,
) -> bool {
    let waits = plans
        .iter()
        .any(|(_, steps)| steps.iter().any(|s| matches!(s, Step::Wait(_))));
    // Machines only name where units landed; a failure to list them only costs the IPs.
    let machines = if waits {
        Machines::new(fleet.machines().await.unwrap_or_default())
    } else {
        Machines::default()
    };
    let machines = Arc::new(machines);
    let mut tasks = tokio::task::JoinSet::new();
    for (name, steps) in plans {
        let (fleet, machines, out) = (fleet.clone(), machines.clone(), out.clone());
        tasks.spawn(async move {
            run_steps(&fleet, &name, &steps, limits, &machines, &out)
                .await
                .is_ok()
        });
    }
    let mut ok = true;
    while let Some(result) = tasks.join_next().await {
        ok &= result.unwrap_or(false);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::types::{Machine, UnitOption};

    const M1: &str = "113f16a7b6e24a2bbdbc8d6c3ee3a0b3";
    const M2: &str = "22222222b6e24a2bbdbc8d6c3ee3a0b3";

    fn machines() -> Machines {
        Machines::new(vec![
            Machine {
                id: M1.into(),
                primary_ip: "10.0.0.1".into(),
                metadata: [("role".to_string(), "web".to_string())].into(),
            },
            Machine {
                id: M2.into(),
                primary_ip: String::new(),
                metadata: [("role".to_string(), "db".to_string())].into(),
            },
        ])
    }

    fn unit(current: &str, machine: &str) -> Unit {
        Unit {
            name: "a.service".into(),
            desired_state: "launched".into(),
            current_state: current.into(),
            machine_id: machine.into(),
            options: vec![UnitOption {
                section: "Service".into(),
                name: "ExecStart".into(),
                value: "/bin/true".into(),
            }],
            ..Unit::default()
        }
    }

    fn global(extra: Option<(&str, &str)>) -> Unit {
        let mut u = unit("", "");
        u.name = "g.service".into();
        u.options.push(UnitOption {
            section: "X-Fleet".into(),
            name: "Global".into(),
            value: "true".into(),
        });
        if let Some((k, v)) = extra {
            u.options.push(UnitOption {
                section: "X-Fleet".into(),
                name: k.into(),
                value: v.into(),
            });
        }
        u
    }

    fn state(machine: &str, load: &str, active: &str) -> UnitState {
        UnitState {
            name: "a.service".into(),
            machine_id: machine.into(),
            systemd_load_state: load.into(),
            systemd_active_state: active.into(),
            systemd_sub_state: "x".into(),
            ..UnitState::default()
        }
    }

    fn verdict(goal: Goal, u: Option<&Unit>, states: &[UnitState], elapsed: Duration) -> Verdict {
        let m = machines();
        judge(
            "a.service",
            goal,
            &Observation {
                unit: u,
                states,
                machines: &m,
                elapsed,
            },
        )
    }

    fn reached(v: &Verdict) -> bool {
        matches!(v, Verdict::Reached(_))
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn start_waits_for_launched_and_active() {
        let u = unit("launched", M1);
        assert!(!reached(&verdict(
            Goal::Launched,
            Some(&unit("loaded", M1)),
            &[state(M1, "loaded", "active")],
            NOW
        )));
        assert!(!reached(&verdict(Goal::Launched, Some(&u), &[], NOW)));
        assert!(!reached(&verdict(
            Goal::Launched,
            Some(&u),
            &[state(M1, "loaded", "activating")],
            NOW
        )));
        // Another machine's state does not count.
        assert!(!reached(&verdict(
            Goal::Launched,
            Some(&u),
            &[state(M2, "loaded", "active")],
            NOW
        )));
        assert_eq!(
            verdict(
                Goal::Launched,
                Some(&u),
                &[state(M1, "loaded", "active")],
                NOW
            ),
            Verdict::Reached("Unit a.service launched on 113f16a7.../10.0.0.1".into())
        );
        let failed = verdict(
            Goal::Launched,
            Some(&u),
            &[state(M1, "loaded", "failed")],
            NOW,
        );
        assert!(
            matches!(&failed, Verdict::Failed(t) if t.starts_with("Unit a.service failed on 113f16a7.../10.0.0.1: systemd reports loaded/failed/x")),
            "{failed:?}"
        );
    }

    #[test]
    fn other_goals_follow_current_state() {
        assert_eq!(
            verdict(Goal::Loaded, Some(&unit("loaded", M2)), &[], NOW),
            Verdict::Reached("Unit a.service loaded on 22222222...".into())
        );
        assert!(!reached(&verdict(
            Goal::Loaded,
            Some(&unit("launched", M1)),
            &[],
            NOW
        )));
        assert_eq!(
            verdict(Goal::Inactive, Some(&unit("inactive", "")), &[], NOW),
            Verdict::Reached("Unit a.service inactive".into())
        );
        assert_eq!(
            verdict(Goal::Gone, None, &[], NOW),
            Verdict::Reached("Destroyed a.service".into())
        );
        assert!(!reached(&verdict(
            Goal::Gone,
            None,
            &[state(M1, "loaded", "active")],
            NOW
        )));
        assert!(!reached(&verdict(
            Goal::Gone,
            Some(&unit("inactive", "")),
            &[],
            NOW
        )));
        assert!(matches!(
            verdict(Goal::Loaded, None, &[], NOW),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn unplaceable_units_show_the_engines_reason() {
        let mut u = unit("inactive", "");
        u.reason = Some("no machine matches MachineMetadata".into());
        assert_eq!(
            verdict(Goal::Launched, Some(&u), &[], NOW),
            Verdict::Pending("inactive, not placed: no machine matches MachineMetadata".into())
        );
    }

    #[test]
    fn global_units_wait_for_every_matching_machine() {
        let g = global(None);
        // Nothing reported yet: pending.
        assert!(!reached(&verdict(
            Goal::Launched,
            Some(&g),
            &[],
            Duration::from_secs(60)
        )));
        // One of two expected machines active: pending until the settle time...
        let one = [state(M1, "loaded", "active")];
        assert!(!reached(&verdict(Goal::Launched, Some(&g), &one, NOW)));
        // ...after which the machines that report are enough.
        assert!(reached(&verdict(
            Goal::Launched,
            Some(&g),
            &one,
            GLOBAL_SETTLE
        )));
        let both = [state(M1, "loaded", "active"), state(M2, "loaded", "active")];
        assert_eq!(
            verdict(Goal::Launched, Some(&g), &both, NOW),
            Verdict::Reached("Unit a.service launched on 113f16a7.../10.0.0.1, 22222222...".into())
        );
        let mixed = [
            state(M1, "loaded", "active"),
            state(M2, "loaded", "activating"),
        ];
        assert!(!reached(&verdict(
            Goal::Launched,
            Some(&g),
            &mixed,
            GLOBAL_SETTLE
        )));
        let failed = [state(M1, "loaded", "failed"), state(M2, "loaded", "active")];
        assert!(matches!(
            verdict(Goal::Launched, Some(&g), &failed, NOW),
            Verdict::Failed(_)
        ));
        // Stop: loaded and not running everywhere.
        let stopped = [
            state(M1, "loaded", "inactive"),
            state(M2, "loaded", "failed"),
        ];
        assert!(reached(&verdict(Goal::Loaded, Some(&g), &stopped, NOW)));
        assert!(!reached(&verdict(
            Goal::Loaded,
            Some(&g),
            &both,
            GLOBAL_SETTLE
        )));
        // Unload: gone everywhere.
        assert!(!reached(&verdict(Goal::Inactive, Some(&g), &stopped, NOW)));
        assert!(reached(&verdict(Goal::Inactive, Some(&g), &[], NOW)));
    }

    #[test]
    fn global_units_only_expect_machines_matching_metadata() {
        let web = global(Some(("MachineMetadata", "role=web")));
        assert_eq!(
            global_targets(&web, &machines()),
            BTreeSet::from([M1.to_string()])
        );
        assert!(reached(&verdict(
            Goal::Launched,
            Some(&web),
            &[state(M1, "loaded", "active")],
            NOW
        )));
        let none = global(Some(("MachineMetadata", "role=cache")));
        let v = verdict(Goal::Launched, Some(&none), &[], NOW);
        assert!(
            matches!(&v, Verdict::Reached(t) if t.contains("no machine matches")),
            "{v:?}"
        );
    }

    #[test]
    fn states_are_read_only_when_needed() {
        assert!(needs_states(Goal::Launched, Some(&unit("loaded", M1))));
        assert!(!needs_states(Goal::Loaded, Some(&unit("loaded", M1))));
        assert!(needs_states(Goal::Loaded, Some(&global(None))));
        assert!(needs_states(Goal::Gone, Some(&global(None))));
    }
}
