//! A unit's target state: what fleet is asked to do with it (`inactive`, `loaded`,
//! `launched`), shared by the registry's records and the API's wire types.
//!
//! ```
//! use unit::TargetState;
//! let state: TargetState = "launched".parse().unwrap();
//! assert_eq!(state, TargetState::Launched);
//! assert_eq!(state.to_string(), "launched");
//! assert_eq!(
//!     "running".parse::<TargetState>().unwrap_err().to_string(),
//!     "invalid state \"running\": want one of inactive, loaded, launched"
//! );
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A unit's desired state (fleet's "target state"): fleet's names, on the wire.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    #[default]
    Inactive,
    Loaded,
    Launched,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid state {0:?}: want one of inactive, loaded, launched")]
pub struct TargetStateError(pub String);

impl FromStr for TargetState {
    type Err = TargetStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inactive" => Ok(TargetState::Inactive),
            "loaded" => Ok(TargetState::Loaded),
            "launched" => Ok(TargetState::Launched),
            other => Err(TargetStateError(other.to_string())),
        }
    }
}
