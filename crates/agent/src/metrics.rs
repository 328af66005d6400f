//! The agent's Prometheus families, kept by its driver ([`crate::Agent`]) from what it sees:
//! the unit manager's actions and their failures, this machine's units by the state the unit
//! manager reports (kept from its reports, no extra reads), and the machine leases lost.

use crate::presence::LeaseLosses;
use crate::reconcile::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// Cheap to clone: clones update the same families.
#[derive(Clone, Default)]
pub struct AgentMetrics {
    actions: Family<ActionLabels, Counter>,
    failures: Family<ActionLabels, Counter>,
    units: Family<StateLabels, Gauge>,
    /// Each unit's last reported active state, to move it between the gauge's labels.
    current: Arc<Mutex<HashMap<String, String>>>,
    /// Machine leases lost; hand it to [`crate::Presence::with_lease_losses`].
    pub lease_losses: LeaseLosses,
}

pub(crate) fn action_label(action: &Action) -> &'static str {
    match action {
        Action::Unload(_) => "unload",
        Action::Load(_) => "load",
        Action::Reload => "reload",
        Action::Stop(_) => "stop",
        Action::Start(_) => "start",
    }
}

impl AgentMetrics {
    /// The agent's families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let m = AgentMetrics::default();
        registry.register(
            "fleet_agent_unit_actions",
            "Actions asked of the unit manager (load, start, stop, unload, reload)",
            m.actions.clone(),
        );
        registry.register(
            "fleet_agent_unit_action_failures",
            "Actions of the unit manager that failed, by action",
            m.failures.clone(),
        );
        registry.register(
            "fleet_agent_units",
            "Units on this machine by the active state the unit manager last reported",
            m.units.clone(),
        );
        registry.register(
            "fleet_agent_leases_lost",
            "Machine leases the registry let expire while this fleetd ran",
            m.lease_losses.counter(),
        );
        // Known labels start at 0, so that the series exist (and rate() works) before the
        // first event.
        for action in ["load", "start", "stop", "unload", "reload"] {
            let labels = ActionLabels { action };
            m.actions.get_or_create(&labels).inc_by(0);
            m.failures.get_or_create(&labels).inc_by(0);
        }
        for state in ["active", "inactive", "failed", "activating", "deactivating"] {
            m.units
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .inc_by(0);
        }
        m
    }

    /// `action` ended, `ok` or not.
    pub(crate) fn acted(&self, action: &Action, ok: bool) {
        let labels = ActionLabels {
            action: action_label(action),
        };
        self.actions.get_or_create(&labels).inc();
        if !ok {
            self.failures.get_or_create(&labels).inc();
        }
    }

    /// The unit manager reported `unit` in `active` state (`None`: it no longer holds it).
    pub(crate) fn reported(&self, unit: &str, active: Option<&str>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let old = match active {
            Some(state) => {
                if current.get(unit).map(String::as_str) == Some(state) {
                    return;
                }
                self.units
                    .get_or_create(&StateLabels {
                        state: state.to_string(),
                    })
                    .inc();
                current.insert(unit.to_string(), state.to_string())
            }
            None => current.remove(unit),
        };
        if let Some(old) = old {
            self.units.get_or_create(&StateLabels { state: old }).dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, r).expect("encode");
        out
    }

    #[test]
    fn units_move_between_states_and_actions_count_failures() {
        let mut r = Registry::default();
        let m = AgentMetrics::register(&mut r);
        m.reported("a.service", Some("activating"));
        m.reported("b.service", Some("activating"));
        m.reported("a.service", Some("active"));
        m.reported("a.service", Some("active"));
        m.reported("b.service", None);
        m.acted(&Action::Start("a.service".into()), true);
        m.acted(&Action::Start("b.service".into()), false);
        m.lease_losses.record();
        let out = render(&r);
        for line in [
            "fleet_agent_units{state=\"active\"} 1\n",
            "fleet_agent_units{state=\"activating\"} 0\n",
            "fleet_agent_unit_actions_total{action=\"start\"} 2\n",
            "fleet_agent_unit_action_failures_total{action=\"start\"} 1\n",
            "fleet_agent_leases_lost_total 1\n",
        ] {
            assert!(out.contains(line), "{line} missing from:\n{out}");
        }
    }
}
