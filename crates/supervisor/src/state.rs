//! A unit's state in systemd's vocabulary. The names are what fleet publishes and what
//! `fleetctl list-units` shows, so [`as_str`](SubState::as_str) must give systemd's spelling.

use std::fmt;

/// Whether the unit's file could be read as a service the supervisor can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadState {
    Loaded,
    /// The file names a unit type or setting the supervisor cannot run; see
    /// [`ProcessManager::reason`](crate::ProcessManager::reason).
    Error,
}

/// systemd's high-level state of a unit. The supervisor has no reload, so systemd's
/// `reloading` never occurs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActiveState {
    Active,
    Inactive,
    Failed,
    Activating,
    Deactivating,
}

/// systemd's service sub-state: where in its start or stop sequence the unit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubState {
    Dead,
    StartPre,
    Start,
    StartPost,
    Running,
    /// A oneshot with `RemainAfterExit=yes` that has run.
    Exited,
    Stop,
    StopSigterm,
    StopSigkill,
    StopPost,
    FinalSigterm,
    FinalSigkill,
    Failed,
    /// Waiting `RestartSec=` before the next start.
    AutoRestart,
}

impl LoadState {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadState::Loaded => "loaded",
            LoadState::Error => "error",
        }
    }
}

impl ActiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
        }
    }

    /// Inactive or failed: nothing of the unit runs (as far as the supervisor knows).
    pub fn is_stopped(self) -> bool {
        matches!(self, ActiveState::Inactive | ActiveState::Failed)
    }
}

impl SubState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubState::Dead => "dead",
            SubState::StartPre => "start-pre",
            SubState::Start => "start",
            SubState::StartPost => "start-post",
            SubState::Running => "running",
            SubState::Exited => "exited",
            SubState::Stop => "stop",
            SubState::StopSigterm => "stop-sigterm",
            SubState::StopSigkill => "stop-sigkill",
            SubState::StopPost => "stop-post",
            SubState::FinalSigterm => "final-sigterm",
            SubState::FinalSigkill => "final-sigkill",
            SubState::Failed => "failed",
            SubState::AutoRestart => "auto-restart",
        }
    }

    /// The active state systemd reports with this sub-state. Every service sub-state belongs to
    /// exactly one active state, so the supervisor only ever sets the sub-state and the pair
    /// cannot disagree.
    pub fn active(self) -> ActiveState {
        match self {
            SubState::Dead => ActiveState::Inactive,
            SubState::Failed => ActiveState::Failed,
            SubState::StartPre | SubState::Start | SubState::StartPost | SubState::AutoRestart => {
                ActiveState::Activating
            }
            SubState::Running | SubState::Exited => ActiveState::Active,
            SubState::Stop
            | SubState::StopSigterm
            | SubState::StopSigkill
            | SubState::StopPost
            | SubState::FinalSigterm
            | SubState::FinalSigkill => ActiveState::Deactivating,
        }
    }
}

impl fmt::Display for LoadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SubState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit's load, active and sub state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitStatus {
    pub load: LoadState,
    pub sub: SubState,
}

impl UnitStatus {
    pub fn active(&self) -> ActiveState {
        self.sub.active()
    }
}

/// `loaded/active/running`, the order `systemctl` lists them in.
impl fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.load, self.active(), self.sub)
    }
}

/// A unit's status changed (`status` is `None`: the unit was unloaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub name: String,
    pub status: Option<UnitStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_systemds() {
        let subs: &[(SubState, &str, &str)] = &[
            (SubState::Dead, "dead", "inactive"),
            (SubState::StartPre, "start-pre", "activating"),
            (SubState::Start, "start", "activating"),
            (SubState::StartPost, "start-post", "activating"),
            (SubState::Running, "running", "active"),
            (SubState::Exited, "exited", "active"),
            (SubState::Stop, "stop", "deactivating"),
            (SubState::StopSigterm, "stop-sigterm", "deactivating"),
            (SubState::StopSigkill, "stop-sigkill", "deactivating"),
            (SubState::StopPost, "stop-post", "deactivating"),
            (SubState::FinalSigterm, "final-sigterm", "deactivating"),
            (SubState::FinalSigkill, "final-sigkill", "deactivating"),
            (SubState::Failed, "failed", "failed"),
            (SubState::AutoRestart, "auto-restart", "activating"),
        ];
        for (sub, name, active) in subs {
            assert_eq!(sub.as_str(), *name);
            assert_eq!(sub.to_string(), *name);
            assert_eq!(sub.active().as_str(), *active, "{sub:?}");
            assert_eq!(sub.active().to_string(), *active, "{sub:?}");
        }
        let loads = [(LoadState::Loaded, "loaded"), (LoadState::Error, "error")];
        for (load, name) in loads {
            assert_eq!(load.as_str(), name);
            assert_eq!(load.to_string(), name);
        }
        let stopped = [
            (ActiveState::Active, false),
            (ActiveState::Inactive, true),
            (ActiveState::Failed, true),
            (ActiveState::Activating, false),
            (ActiveState::Deactivating, false),
        ];
        for (active, want) in stopped {
            assert_eq!(active.is_stopped(), want, "{active:?}");
        }
        let status = UnitStatus {
            load: LoadState::Error,
            sub: SubState::Failed,
        };
        assert_eq!(status.to_string(), "error/failed/failed");
    }
}
