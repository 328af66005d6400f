//! A readable account of what the agent holds and wants (fleetd's SIGUSR1, as fleet dumped its
//! agent's state to the log): read from the core, changing nothing.

use super::Core;
use registry::{MachineState, SystemdState, TargetState};
use std::collections::BTreeSet;
use std::fmt;
use unit::UnitHash;

/// The agent's state as [`Core::dump`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentDump {
    pub machine: MachineState,
    /// The machine's lease is held (not lapsed or being renewed).
    pub lease_held: bool,
    /// The machine left the cluster for its shutdown.
    pub left: bool,
    /// Every unit scheduled here, global, or held by the unit manager, by name.
    pub units: Vec<UnitDump>,
}

/// One unit as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitDump {
    pub name: String,
    pub global: bool,
    /// What the schedule (or the global unit's record) asks: `None` if nothing asks for it
    /// here any more.
    pub desired: Option<TargetState>,
    /// What the agent has made of it so far (`Loaded` or `Launched`) and with which body;
    /// `None` if the unit manager does not hold it.
    pub held: Option<(TargetState, UnitHash)>,
    /// The unit manager's last word on it.
    pub current: Option<SystemdState>,
    /// The last failed action and why, until one succeeds.
    pub failure: Option<String>,
}

impl Core {
    /// What this agent holds and wants, for a readable dump.
    pub fn dump(&self) -> AgentDump {
        let names: BTreeSet<&String> = self
            .schedule
            .keys()
            .chain(self.globals.keys())
            .chain(self.held.keys())
            .collect();
        let units = names
            .into_iter()
            .map(|name| {
                let global = self.globals.get(name);
                UnitDump {
                    name: name.clone(),
                    global: global.is_some(),
                    desired: self
                        .schedule
                        .get(name)
                        .map(|e| e.desired)
                        .or(global.map(|j| j.desired)),
                    held: self.held.get(name).map(|h| (h.state, h.hash)),
                    current: self.systemd.get(name).cloned(),
                    failure: self
                        .failures
                        .get(name)
                        .map(|f| format!("{:?}: {}", f.action, f.reason)),
                }
            })
            .collect();
        AgentDump {
            machine: self.machine.clone(),
            lease_held: self.lease == super::LeaseStatus::Held,
            left: self.left,
            units,
        }
    }
}

impl fmt::Display for AgentDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.machine;
        let metadata: Vec<String> = m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let lease = match (self.left, self.lease_held) {
            (true, _) => "left the cluster",
            (false, true) => "lease held",
            (false, false) => "lease lapsed, registering again",
        };
        writeln!(
            f,
            "agent of machine {} (public IP {}, metadata {}): {lease}, {} units",
            m.id,
            if m.public_ip.is_empty() {
                "-"
            } else {
                &m.public_ip
            },
            if metadata.is_empty() {
                "-".to_string()
            } else {
                metadata.join(",")
            },
            self.units.len()
        )?;
        for u in &self.units {
            let desired = u.desired.map_or("-".to_string(), |d| d.to_string());
            let held = u.held.map_or("-".to_string(), |(s, h)| {
                format!("{s} ({})", &h.to_string()[..7])
            });
            let current = u.current.as_ref().map_or("-".to_string(), |s| {
                format!("{}/{}/{}", s.load, s.active, s.sub)
            });
            write!(
                f,
                "  {}{}: desired {desired}, here {held}, current {current}",
                u.name,
                if u.global { " (global)" } else { "" }
            )?;
            if let Some(failure) = &u.failure {
                write!(f, ", failing: {failure}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
