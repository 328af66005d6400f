//! The engine's Prometheus families, kept by the driver ([`crate::engine`]) from what it
//! observes: passes and their cost, placements written, and, after each pass, the model it
//! scheduled over (machines, units by desired state, units that cannot be placed). The gauges
//! are those of the leader; an engine that does not lead shows 0 (and `fleet_engine_leader`
//! 0), so a sum over every fleetd is the cluster's figure.

use crate::model::Model;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use registry::{ScheduleChange, TargetState};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Cheap to clone: clones update the same families.
#[derive(Clone)]
pub struct EngineMetrics {
    leader: Gauge,
    passes: Counter,
    pass_duration: Histogram,
    placements: Counter,
    unplacements: Counter,
    unplaceable: Gauge,
    machines: Gauge,
    units: Family<StateLabels, Gauge>,
}

impl Default for EngineMetrics {
    /// Families registered nowhere: counted, never served.
    fn default() -> Self {
        EngineMetrics {
            leader: Gauge::default(),
            passes: Counter::default(),
            // 0.1 ms to about 13 s, doubling: a pass over a few units takes microseconds,
            // one over 10,000 units and 1,000 machines tens of milliseconds.
            pass_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            placements: Counter::default(),
            unplacements: Counter::default(),
            unplaceable: Gauge::default(),
            machines: Gauge::default(),
            units: Family::default(),
        }
    }
}

const STATES: [TargetState; 3] = [
    TargetState::Inactive,
    TargetState::Loaded,
    TargetState::Launched,
];

impl EngineMetrics {
    /// The engine's families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> EngineMetrics {
        let m = EngineMetrics::default();
        registry.register(
            "fleet_engine_leader",
            "Whether this fleetd's engine leads (1) or not (0)",
            m.leader.clone(),
        );
        registry.register(
            "fleet_engine_passes",
            "Scheduling passes of the leading engine",
            m.passes.clone(),
        );
        registry.register(
            "fleet_engine_pass_duration_seconds",
            "Time one scheduling pass took to decide",
            m.pass_duration.clone(),
        );
        registry.register(
            "fleet_engine_placements",
            "Units placed on a machine by the leading engine (written to the registry)",
            m.placements.clone(),
        );
        registry.register(
            "fleet_engine_unplacements",
            "Units taken off a machine by the leading engine (written to the registry)",
            m.unplacements.clone(),
        );
        registry.register(
            "fleet_engine_unplaceable_units",
            "Units the leading engine could not place at its last pass",
            m.unplaceable.clone(),
        );
        registry.register(
            "fleet_machines",
            "Machines present in the cluster, as the leading engine saw them at its last pass",
            m.machines.clone(),
        );
        registry.register(
            "fleet_units_desired",
            "Units by desired state, as the leading engine saw them at its last pass",
            m.units.clone(),
        );
        m.leading(false);
        m
    }

    pub(crate) fn leading(&self, leads: bool) {
        self.leader.set(i64::from(leads));
        if !leads {
            self.machines.set(0);
            self.unplaceable.set(0);
            for s in STATES {
                self.units
                    .get_or_create(&StateLabels { state: s.as_str() })
                    .set(0);
            }
        }
    }

    /// A pass ran over `model` and took `took` to decide.
    pub(crate) fn passed(&self, model: &Model, took: Duration) {
        self.passes.inc();
        self.pass_duration.observe(took.as_secs_f64());
        self.machines
            .set(i64::try_from(model.machines.len()).unwrap_or(i64::MAX));
        self.unplaceable
            .set(i64::try_from(model.reasons.len()).unwrap_or(i64::MAX));
        let mut by_state = [0i64; STATES.len()];
        for job in model.jobs.values() {
            if let Some(i) = STATES.iter().position(|s| *s == job.desired) {
                by_state[i] += 1;
            }
        }
        for (s, n) in STATES.iter().zip(by_state) {
            self.units
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(n);
        }
    }

    /// `changes` were written to the registry.
    pub(crate) fn written(&self, changes: &[ScheduleChange]) {
        for c in changes {
            match c {
                ScheduleChange::Place { .. } => {
                    self.placements.inc();
                }
                ScheduleChange::Unplace { .. } => {
                    self.unplacements.inc();
                }
                ScheduleChange::Update { .. } | ScheduleChange::Reason { .. } => {}
            }
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
    fn a_pass_sets_the_gauges_and_losing_the_lead_clears_them() {
        let mut r = Registry::default();
        let m = EngineMetrics::register(&mut r);
        let mut model = Model::new();
        model
            .machines
            .insert("m1".into(), registry::MachineState::default());
        model
            .reasons
            .insert("a.service".into(), "no machine".into());
        m.leading(true);
        m.passed(&model, Duration::from_millis(3));
        let out = render(&r);
        for line in [
            "fleet_engine_leader 1\n",
            "fleet_machines 1\n",
            "fleet_engine_unplaceable_units 1\n",
            "fleet_engine_passes_total 1\n",
            "fleet_engine_pass_duration_seconds_count 1\n",
            "fleet_units_desired{state=\"launched\"} 0\n",
        ] {
            assert!(out.contains(line), "{line} missing from:\n{out}");
        }
        m.leading(false);
        let out = render(&r);
        assert!(out.contains("fleet_machines 0\n"), "{out}");
        assert!(out.contains("fleet_engine_leader 0\n"), "{out}");
    }
}
