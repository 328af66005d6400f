//! Explanations read from a finished pass: the verdicts use the pass's own checks (`fit`,
//! `runs_global`, the recorded reasons and choices), so they say what the pass did.

use super::{show_metadata, Block, Chosen, Kind, Metadata, Pass};
use crate::explain::{Action, Explanation, MachineVerdict, Move, UnitExplanation, UnknownUnits};
use crate::scheduler::ix::{Ix, MachineIx, UnitIx};
use crate::scheduler::Cluster;
use std::collections::{BTreeMap, BTreeSet};

pub(in crate::scheduler) fn explain(
    cluster: &Cluster,
    wanted: &[String],
) -> Result<Explanation, UnknownUnits> {
    super::with_pass(cluster, |pass| {
        let rel = pass.rel;
        let mut asked: Vec<UnitIx> = Vec::new();
        let mut missing = Vec::new();
        for name in wanted {
            match rel
                .units
                .as_slice()
                .binary_search_by(|u| u.name.as_str().cmp(name))
            {
                Ok(i) if !asked.contains(&UnitIx::new(i)) => asked.push(UnitIx::new(i)),
                Ok(_) => {}
                Err(_) => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(UnknownUnits(missing));
        }
        let units: Vec<UnitExplanation> = asked
            .iter()
            .map(|&u| pass.explain_unit(u, &cluster.placements))
            .collect();
        let asked_names: BTreeSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
        let plan = pass.into_plan(&cluster.placements);
        let mut moves: BTreeMap<String, Move> = BTreeMap::new();
        for (p, removed) in plan
            .remove
            .iter()
            .map(|p| (p, true))
            .chain(plan.add.iter().map(|p| (p, false)))
        {
            if asked_names.contains(p.unit.as_str()) {
                continue;
            }
            let m = moves.entry(p.unit.clone()).or_insert_with(|| Move {
                unit: p.unit.clone(),
                from: None,
                to: None,
            });
            if removed {
                m.from = Some(p.machine.clone());
            } else {
                m.to = Some(p.machine.clone());
            }
        }
        Ok(Explanation {
            units,
            moves: moves.into_values().collect(),
        })
    })
}

impl Pass<'_> {
    fn explain_unit(&self, u: UnitIx, placements: &BTreeMap<String, String>) -> UnitExplanation {
        let rel = self.rel;
        let unit = rel.units[u];
        let before = placements.get(&unit.name).cloned();
        let after = self.at[u].map(|m| self.machines[m].id.clone());
        let kind = rel.kind[u];
        let action = match (kind, &before, &after) {
            (Kind::Global, _, _) => Action::Global,
            (_, None, None) => Action::None,
            (_, None, Some(_)) => Action::Place,
            (_, Some(a), Some(b)) if a == b => Action::Keep,
            (_, Some(_), Some(_)) => Action::Move,
            (_, Some(_), None) => Action::Unplace,
        };
        let inert = match kind {
            Kind::Inert if unit::is_template(&unit.name) => Some(
                "a template runs nowhere: start an instance of it (name@instance.service)"
                    .to_string(),
            ),
            Kind::Inert => Some(
                "desired state is inactive: the engine places only loaded or launched units"
                    .to_string(),
            ),
            _ => None,
        };
        let machines: Vec<MachineVerdict> = self
            .machines
            .indices()
            .map(|m| {
                let (fits, verdict) = match (&inert, kind) {
                    (Some(why), _) => (false, why.clone()),
                    (None, Kind::Global) => self.global_verdict(u, m),
                    (None, _) => self.verdict(u, m),
                };
                MachineVerdict {
                    machine: self.machines[m].id.clone(),
                    fits,
                    verdict,
                }
            })
            .collect();
        let reason = if let Some(why) = inert {
            why
        } else if kind == Kind::Global {
            let n = self.global_machines[u].len();
            format!(
                "global unit: runs on every machine it matches ({n} of {})",
                self.machines.len()
            )
        } else {
            match (self.at[u], &self.chosen[u]) {
                (Some(_), Some(Chosen::Kept)) => {
                    "still fits there, and a placed unit is not moved while it fits".to_string()
                }
                (Some(_), Some(Chosen::LeastLoaded { load, scope })) => format!(
                    "the least loaded machine that fits {scope} ({load} units there before)"
                ),
                (Some(m), None) => format!("placed on {}", self.machines[m].id),
                (None, _) => self.reasons[u]
                    .clone()
                    .unwrap_or_else(|| "not placed".to_string()),
            }
        };
        // A placement on a machine that left is why a unit moves: no verdict line names it.
        let drained_from = before.as_ref().filter(|m| {
            self.machines
                .iter_enumerated()
                .any(|(i, x)| x.id == **m && self.drained[i])
        });
        let reason = match drained_from {
            Some(m) if matches!(action, Action::Move) => {
                format!("machine {m} is drained; {reason}")
            }
            _ => reason,
        };
        let reason = match &before {
            Some(m)
                if matches!(action, Action::Move | Action::Unplace)
                    && !self.machines.iter().any(|x| x.id == *m) =>
            {
                format!("machine {m} is gone; {reason}")
            }
            _ => reason,
        };
        UnitExplanation {
            name: unit.name.clone(),
            global: kind == Kind::Global || unit.is_global(),
            action,
            before,
            after,
            reason,
            machines,
        }
    }

    /// A global unit on `m`: the checks of `place_globals`.
    fn global_verdict(&self, g: UnitIx, m: MachineIx) -> (bool, String) {
        let rel = self.rel;
        if self.runs_global(g, m) {
            return (true, "runs here (global unit)".to_string());
        }
        let req = &rel.units[g].requirements;
        if let Some(why) = metadata_misfit(&req.machine_metadata, &self.machines[m].metadata) {
            return (false, why);
        }
        match self.globals_on[m]
            .iter()
            .find(|&&h| rel.conflicts.conflict(g, h))
        {
            Some(&h) => (
                false,
                format!(
                    "conflicts with global unit {}, which runs here (its name sorts first)",
                    rel.name(h)
                ),
            ),
            None => (false, "does not run here".to_string()),
        }
    }

    /// A schedulable unit on `m`, judged on the pass's final state with the pass's checks.
    fn verdict(&self, u: UnitIx, m: MachineIx) -> (bool, String) {
        let rel = self.rel;
        let req = &rel.units[u].requirements;
        let machine = self.machines[m];
        if let Some(why) = self.unplaceable(u) {
            return (false, why);
        }
        if let Some(id) = req
            .machine_id
            .as_deref()
            .filter(|id| !machine.matches_id(id))
        {
            return (false, format!("MachineID={id} names another machine"));
        }
        if let Some(why) = metadata_misfit(&req.machine_metadata, &machine.metadata) {
            return (false, why);
        }
        if let Some(&g) = rel.global_targets[u]
            .iter()
            .find(|&&g| !self.runs_global(g, m))
        {
            return (
                false,
                format!(
                    "MachineOf target {} (global) does not run here",
                    rel.name(g)
                ),
            );
        }
        if let Some(&g) = self.globals_on[m]
            .iter()
            .find(|&&g| rel.conflicts.conflict(u, g))
        {
            return (
                false,
                format!(
                    "conflicts with global unit {}, which runs here",
                    rel.name(g)
                ),
            );
        }
        if let Some(&v) = rel.group[u]
            .iter()
            .find(|&&v| !self.member_fits(u, v, m, self.at[u] != Some(m)))
        {
            return (false, format!("{} cannot run here", rel.relation(u, v)));
        }
        for &t in &rel.targets[u] {
            match self.at[t] {
                None => return (false, format!("{} is not scheduled", rel.peer(u, t))),
                Some(tm) if tm != m => {
                    return (
                        false,
                        format!("{} runs on {}", rel.peer(u, t), self.machines[tm].id),
                    )
                }
                Some(_) => {}
            }
        }
        if self.drained[m] {
            return if self.at[u] == Some(m) {
                (true, "runs here; the machine is drained, so it moves when its turn comes and a machine takes it".to_string())
            } else {
                (
                    false,
                    "machine is drained: it takes no new units".to_string(),
                )
            };
        }
        match self.fit(u, m) {
            Err(Block::Drained) => (
                false,
                "machine is drained: it takes no new units".to_string(),
            ),
            Err(Block::Conflict(v)) => (
                false,
                format!("conflicts with {}, which runs here", rel.name(v)),
            ),
            Err(Block::ReplacedBy(j)) => (
                false,
                format!("replaced by {}, which runs here", rel.name(j)),
            ),
            Err(Block::WouldEvictTarget(t)) => (
                false,
                format!("would push off its MachineOf target {}", rel.name(t)),
            ),
            Err(Block::EvictionBudget) => (
                false,
                "would push off units this pass already moved".to_string(),
            ),
            Ok(_) if self.at[u] == Some(m) => (true, "runs here".to_string()),
            Ok(evicted) if !evicted.is_empty() => {
                let names: Vec<&str> = evicted.iter().map(|&v| rel.name(v)).collect();
                (
                    true,
                    format!("fits, pushing off {} (Replaces)", names.join(", ")),
                )
            }
            Ok(_) => (true, format!("fits ({} units here)", self.load(m))),
        }
    }
}

/// The first required metadata key `have` does not satisfy, named with both sides.
fn metadata_misfit(required: &Metadata, have: &BTreeMap<String, String>) -> Option<String> {
    required.iter().find_map(|(key, allowed)| {
        let wanted = show_metadata(&BTreeMap::from([(key.clone(), allowed.clone())]));
        match have.get(key) {
            Some(v) if allowed.contains(v) => None,
            Some(v) => Some(format!(
                "MachineMetadata wants {wanted}, machine has {key}={v}"
            )),
            None => Some(format!(
                "MachineMetadata wants {wanted}, machine has no {key}"
            )),
        }
    })
}
