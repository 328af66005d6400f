//! What each state-changing command does to one unit, as a list of steps: pure functions of the
//! unit as the registry shows it. The steps are run by [`crate::wait`].
//!
//! ```
//! use fleetctl::plan::{stop, Goal, Step};
//! use api::{types::Unit, TargetState};
//! let unit = Unit { name: "a.service".into(), desired_state: "launched".into(),
//!                   current_state: "launched".into(), ..Unit::default() };
//! assert_eq!(stop(&unit).unwrap(), [Step::Set(TargetState::Loaded), Step::Wait(Goal::Loaded)]);
//! ```

use api::types::Unit;
use api::TargetState;

/// A state a command waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Inactive,
    Loaded,
    /// fleet's `launched` and systemd's `active`.
    Launched,
    /// The unit is no longer in the registry.
    Gone,
}

impl Goal {
    /// The word fleet printed for the state.
    pub fn word(self) -> &'static str {
        match self {
            Goal::Inactive => "inactive",
            Goal::Loaded => "loaded",
            Goal::Launched => "launched",
            Goal::Gone => "destroyed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Set(TargetState),
    Destroy,
    Wait(Goal),
    /// `--no-block`: say what was asked without waiting for it (fleet's "Triggered unit %s %s").
    Triggered(&'static str),
}

/// The line a [`Step::Triggered`] prints; `destroy` says "Destroyed", as fleet did.
pub fn triggered_line(name: &str, verb: &str) -> String {
    if verb == "destroy" {
        format!("Destroyed {name}")
    } else {
        format!("Triggered unit {name} {verb}")
    }
}

fn is_template(unit: &Unit) -> bool {
    unit::UnitName::parse(&unit.name).is_ok_and(|n| n.is_template())
}

fn template_error(unit: &Unit, verb: &str) -> String {
    let example = unit::UnitName::parse(&unit.name)
        .map(|n| n.instance_name("1"))
        .unwrap_or_default();
    format!(
        "Unable to {verb} template unit {}: templates cannot be loaded or started; {verb} an instance such as {example}",
        unit.name
    )
}

/// `load`: desired `loaded` (unless it already is), then wait for it.
pub fn load(unit: &Unit) -> Result<Vec<Step>, String> {
    if is_template(unit) {
        return Err(template_error(unit, "load"));
    }
    Ok(set_then_wait(unit, TargetState::Loaded, Goal::Loaded))
}

/// `start`: desired `launched` (unless it already is), then wait for launched and active.
pub fn start(unit: &Unit) -> Result<Vec<Step>, String> {
    if is_template(unit) {
        return Err(template_error(unit, "start"));
    }
    Ok(set_then_wait(unit, TargetState::Launched, Goal::Launched))
}

fn set_then_wait(unit: &Unit, state: TargetState, goal: Goal) -> Vec<Step> {
    if unit.desired_state == state.to_string() {
        vec![Step::Wait(goal)]
    } else {
        vec![Step::Set(state), Step::Wait(goal)]
    }
}

/// `stop`: back to `loaded`. A unit nobody asked to be loaded anywhere cannot be stopped
/// (fleet's error, exit 1).
pub fn stop(unit: &Unit) -> Result<Vec<Step>, String> {
    let global = crate::fields::is_global(unit);
    let inactive = unit.desired_state == "inactive"
        && (global || unit.current_state.is_empty() || unit.current_state == "inactive");
    if inactive {
        return Err(format!(
            "Unable to stop unit {} in state inactive",
            unit.name
        ));
    }
    Ok(set_then_wait(unit, TargetState::Loaded, Goal::Loaded))
}

/// `unload`: back to `inactive`.
pub fn unload(unit: &Unit) -> Vec<Step> {
    set_then_wait(unit, TargetState::Inactive, Goal::Inactive)
}

/// `destroy`: delete, then wait until the registry no longer has it.
pub fn destroy(_unit: &Unit) -> Vec<Step> {
    vec![Step::Destroy, Step::Wait(Goal::Gone)]
}

/// `restart`: a launched unit is stopped (waiting until it is `loaded`) and started again
/// (waiting until launched and active); a loaded one is only started.
pub fn restart(unit: &Unit) -> Result<Vec<Step>, String> {
    if is_template(unit) {
        return Err(template_error(unit, "restart"));
    }
    match unit.desired_state.as_str() {
        "launched" => Ok(vec![
            Step::Set(TargetState::Loaded),
            Step::Wait(Goal::Loaded),
            Step::Set(TargetState::Launched),
            Step::Wait(Goal::Launched),
        ]),
        "loaded" => Ok(vec![
            Step::Set(TargetState::Launched),
            Step::Wait(Goal::Launched),
        ]),
        state => Err(format!(
            "Unable to restart unit {} in state {}: start it first",
            unit.name,
            if state.is_empty() { "inactive" } else { state }
        )),
    }
}

/// With `--no-block`, the waits are dropped and replaced by a "Triggered" line, except a
/// `restart`'s wait for the stop: without it the stop and the start would race and the unit
/// might never stop.
pub fn without_waits(steps: Vec<Step>, verb: &'static str) -> Vec<Step> {
    let last_set = steps.iter().rposition(|s| matches!(s, Step::Set(_)));
    let mut kept: Vec<Step> = steps
        .into_iter()
        .enumerate()
        .filter(|(i, s)| !matches!(s, Step::Wait(_)) || last_set.is_some_and(|l| *i < l))
        .map(|(_, s)| s)
        .collect();
    kept.push(Step::Triggered(verb));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::types::UnitOption;

    fn unit(name: &str, desired: &str, current: &str) -> Unit {
        Unit {
            name: name.into(),
            desired_state: desired.into(),
            current_state: current.into(),
            ..Unit::default()
        }
    }

    use Goal::*;
    use Step::*;
    use TargetState as T;

    #[test]
    fn plans_per_state() {
        let a = "a.service";
        assert_eq!(
            load(&unit(a, "inactive", "inactive")).unwrap(),
            [Set(T::Loaded), Wait(Loaded)]
        );
        assert_eq!(
            load(&unit(a, "loaded", "inactive")).unwrap(),
            [Wait(Loaded)]
        );
        assert_eq!(
            load(&unit(a, "launched", "launched")).unwrap(),
            [Set(T::Loaded), Wait(Loaded)]
        );
        assert_eq!(
            start(&unit(a, "launched", "loaded")).unwrap(),
            [Wait(Launched)]
        );
        assert_eq!(
            start(&unit(a, "loaded", "loaded")).unwrap(),
            [Set(T::Launched), Wait(Launched)]
        );
        assert_eq!(
            stop(&unit(a, "inactive", "inactive")).unwrap_err(),
            "Unable to stop unit a.service in state inactive"
        );
        assert_eq!(stop(&unit(a, "loaded", "loaded")).unwrap(), [Wait(Loaded)]);
        assert_eq!(
            stop(&unit(a, "launched", "inactive")).unwrap(),
            [Set(T::Loaded), Wait(Loaded)]
        );
        assert_eq!(unload(&unit(a, "inactive", "inactive")), [Wait(Inactive)]);
        assert_eq!(
            unload(&unit(a, "launched", "launched")),
            [Set(T::Inactive), Wait(Inactive)]
        );
        assert_eq!(
            destroy(&unit(a, "launched", "launched")),
            [Destroy, Wait(Gone)]
        );
        assert_eq!(
            restart(&unit(a, "launched", "launched")).unwrap(),
            [
                Set(T::Loaded),
                Wait(Loaded),
                Set(T::Launched),
                Wait(Launched)
            ]
        );
        assert_eq!(
            restart(&unit(a, "loaded", "loaded")).unwrap(),
            [Set(T::Launched), Wait(Launched)]
        );
        assert!(restart(&unit(a, "inactive", "inactive"))
            .unwrap_err()
            .contains("in state inactive"));
    }

    #[test]
    fn global_units_have_no_current_state() {
        let mut g = unit("g.service", "inactive", "");
        g.options.push(UnitOption {
            section: "X-Fleet".into(),
            name: "Global".into(),
            value: "true".into(),
        });
        assert!(stop(&g).is_err());
        g.desired_state = "launched".into();
        assert_eq!(stop(&g).unwrap(), [Set(T::Loaded), Wait(Loaded)]);
    }

    #[test]
    fn templates_are_refused_before_asking_the_server() {
        let t = unit("web@.service", "inactive", "inactive");
        assert!(start(&t).unwrap_err().contains("web@1.service"));
        assert!(load(&t).is_err());
        assert!(restart(&t).is_err());
        assert_eq!(unload(&t), [Wait(Inactive)]);
    }

    #[test]
    fn no_block_keeps_only_the_restart_stop_wait() {
        assert_eq!(
            without_waits(vec![Set(T::Loaded), Wait(Loaded)], "stop"),
            [Set(T::Loaded), Triggered("stop")]
        );
        assert_eq!(
            without_waits(vec![Wait(Loaded)], "load"),
            [Triggered("load")]
        );
        assert_eq!(
            without_waits(vec![Destroy, Wait(Gone)], "destroy"),
            [Destroy, Triggered("destroy")]
        );
        assert_eq!(
            without_waits(
                vec![
                    Set(T::Loaded),
                    Wait(Loaded),
                    Set(T::Launched),
                    Wait(Launched)
                ],
                "start"
            ),
            [
                Set(T::Loaded),
                Wait(Loaded),
                Set(T::Launched),
                Triggered("start")
            ]
        );
        assert_eq!(
            triggered_line("a.service", "start"),
            "Triggered unit a.service start"
        );
        assert_eq!(
            triggered_line("a.service", "destroy"),
            "Destroyed a.service"
        );
    }
}
