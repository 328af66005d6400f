//! The units as the API shows them: job, file, placement, how far the unit got there, and why
//! it is not placed, read together.

use crate::model::{TargetState, Unit, UnitState};
use crate::registry::{AtRevision, Registry, Result};
use crate::store::Revision;
use std::collections::BTreeMap;

/// A unit as the API shows it: job and file, where it is placed, how far it got there, and
/// why it is not placed if it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitView {
    pub unit: Unit,
    pub machine: Option<String>,
    /// fleet's `currentState`: `None` for global units.
    pub current: Option<TargetState>,
    pub reason: Option<String>,
}

impl Registry {
    /// Every unit as the API lists it, read at one revision (pass it back for later pages).
    pub async fn unit_views(&self, at: Option<Revision>) -> Result<AtRevision<Vec<UnitView>>> {
        let jobs = self.jobs(at).await?;
        let revision = jobs.revision;
        let at = Some(revision);
        // The rest is read at the jobs' revision, side by side. Global units have no current
        // state of their own: their instances' states are not read.
        let bodies_prefix = self.keys.bodies();
        let (bodies, placements, reasons, states) = tokio::try_join!(
            self.range_at(&bodies_prefix, at),
            self.placements(at),
            self.reasons(at),
            self.placed_states(at)
        )?;
        let units = self.with_bodies(jobs.items, &bodies.items)?;
        let (placements, reasons, states) = (placements.items, reasons.items, states.items);
        let mut agent_state: BTreeMap<(&str, &str), TargetState> = BTreeMap::new();
        for s in &states {
            agent_state.insert((s.name.as_str(), s.machine_id.as_str()), s.agent_state);
        }
        let items = units
            .into_iter()
            .map(|u| {
                let name = u.job.name.clone();
                let machine = placements.get(&name).cloned();
                let current = if u.job.global {
                    None
                } else {
                    Some(match &machine {
                        Some(m) => agent_state
                            .get(&(name.as_str(), m.as_str()))
                            .copied()
                            .unwrap_or(TargetState::Inactive),
                        None => TargetState::Inactive,
                    })
                };
                UnitView {
                    reason: reasons.get(&name).cloned(),
                    unit: u,
                    machine,
                    current,
                }
            })
            .collect();
        Ok(AtRevision { items, revision })
    }

    /// One unit as the API shows it.
    pub async fn unit_view(&self, name: &str) -> Result<Option<UnitView>> {
        let Some(unit) = self.unit(name).await? else {
            return Ok(None);
        };
        let machine: Option<String> = self.record(&self.keys.placement(name)).await?;
        let reason: Option<String> = self.record(&self.keys.reason(name)).await?;
        let current = if unit.job.global {
            None
        } else {
            Some(match &machine {
                Some(m) => match self.record::<UnitState>(&self.keys.state(name, m)).await? {
                    Some(state) => state.agent_state,
                    None => TargetState::Inactive,
                },
                None => TargetState::Inactive,
            })
        };
        Ok(Some(UnitView {
            unit,
            machine,
            current,
            reason,
        }))
    }
}
