//! Units for cluster scenarios: long-running services the process manager and systemd can both
//! run, tagged so the harness can find and kill their processes (see [`crate::cleanup`]).

use crate::cleanup::TAG_VAR;
use api::types::{Unit, UnitOption};
use api::TargetState;

/// A `[Service]` that sleeps forever (its main pid stays the same for as long as it runs),
/// with `[X-Fleet]` options given as `(name, value)` pairs.
///
/// ```
/// let u = cluster::units::service("conflict.0.service", "t", &[("Conflicts", "conflict.*.service")]);
/// assert_eq!(u.name, "conflict.0.service");
/// assert_eq!(u.desired_state, "launched");
/// ```
pub fn service(name: &str, tag: &str, x_fleet: &[(&str, &str)]) -> Unit {
    let mut options = vec![
        option("Unit", "Description", &format!("cluster test unit {name}")),
        option("Service", "Environment", &format!("{TAG_VAR}={tag}")),
        option("Service", "ExecStart", "/bin/sleep infinity"),
    ];
    for (key, value) in x_fleet {
        options.push(option("X-Fleet", key, value));
    }
    Unit {
        name: name.to_string(),
        desired_state: TargetState::Launched.to_string(),
        options,
        ..Unit::default()
    }
}

/// The same unit with another desired state.
pub fn with_state(mut unit: Unit, state: TargetState) -> Unit {
    unit.desired_state = state.to_string();
    unit
}

fn option(section: &str, name: &str, value: &str) -> UnitOption {
    UnitOption {
        section: section.to_string(),
        name: name.to_string(),
        value: value.to_string(),
    }
}
