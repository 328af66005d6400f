//! How each kind of record is stored: one codec per record kind, used by every read, write and
//! follower, so that a record is encoded and decoded the same way wherever it is touched.
//!
//! | record | stored as |
//! |---|---|
//! | [`Job`], [`GlobalJob`], [`GlobalSummary`], [`ScheduleEntry`], [`MachineState`], [`UnitState`], [`DrainMark`], [`GlobalRollout`] | JSON |
//! | text: a unit body, a placement (machine id), a reason, a metadata value, the leader's id | UTF-8 |

use crate::model::{
    DrainMark, GlobalJob, GlobalRollout, GlobalSummary, Job, MachineState, ScheduleEntry, UnitState,
};
use crate::registry::{RegistryError, Result};
use crate::store::KeyValue;

/// A record kind the registry stores: how it is written and read back.
pub(crate) trait Record: Sized {
    /// The stored bytes.
    fn encode(&self) -> Vec<u8>;
    /// The record from stored bytes, or why they are not one.
    fn decode(value: &[u8]) -> std::result::Result<Self, String>;
    /// The record as read at a key last written at `revision`: records that carry their
    /// revision ([`GlobalJob`]) take it in.
    fn written_at(self, _revision: crate::store::Revision) -> Self {
        self
    }
}

macro_rules! json_records {
    ($($kind:ty),*) => {$(
        impl Record for $kind {
            fn encode(&self) -> Vec<u8> {
                // Serializing our own plain records cannot fail (no maps with non-string keys).
                serde_json::to_vec(self).unwrap_or_default()
            }
            fn decode(value: &[u8]) -> std::result::Result<Self, String> {
                serde_json::from_slice(value).map_err(|e| e.to_string())
            }
        }
    )*};
}

json_records!(
    Job,
    ScheduleEntry,
    GlobalSummary,
    MachineState,
    UnitState,
    DrainMark,
    GlobalRollout
);

impl Record for GlobalJob {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn decode(value: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }
    fn written_at(mut self, revision: crate::store::Revision) -> Self {
        self.revision = self.outcome_since.unwrap_or(revision);
        self
    }
}

/// Text records.
impl Record for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode(value: &[u8]) -> std::result::Result<Self, String> {
        String::from_utf8(value.to_vec()).map_err(|e| e.to_string())
    }
}

/// The record stored at `kv`; a record that does not decode is reported as corrupt, naming
/// its key.
pub(crate) fn decode<T: Record>(kv: &KeyValue) -> Result<T> {
    T::decode(&kv.value)
        .map(|v| v.written_at(kv.mod_revision))
        .map_err(|message| RegistryError::Corrupt {
            key: kv.key.clone(),
            message,
        })
}

/// The record stored at `kv`, or `None` (logged) if it does not decode: a follower must not
/// stop on one bad record.
pub(crate) fn decode_or_skip<T: Record>(kv: &KeyValue) -> Option<T> {
    match T::decode(&kv.value) {
        Ok(v) => Some(v.written_at(kv.mod_revision)),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring undecodable registry record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored bytes are the registry's wire format (fleet's Go fleetctl and running
    /// clusters read them): field names and their order must not change.
    #[test]
    fn records_keep_their_stored_form() {
        let state = UnitState {
            name: "a.service".into(),
            machine_id: "m1".into(),
            hash: "1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9".parse().unwrap(),
            systemd: crate::SystemdState {
                load: "loaded".into(),
                active: "active".into(),
                sub: "running".into(),
            },
            agent_state: crate::TargetState::Launched,
            reason: None,
            global: false,
        };
        assert_eq!(
            String::from_utf8(state.encode()).unwrap(),
            r#"{"name":"a.service","machineID":"m1","hash":"1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9","loadState":"loaded","activeState":"active","subState":"running","agentState":"launched"}"#
        );
        assert_eq!(UnitState::decode(&state.encode()).unwrap(), state);
        let entry = ScheduleEntry {
            hash: state.hash,
            desired: crate::TargetState::Loaded,
            raw: None,
        };
        assert_eq!(
            String::from_utf8(entry.encode()).unwrap(),
            r#"{"hash":"1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9","desiredState":"loaded"}"#
        );
        let machine = MachineState {
            id: "m1".into(),
            public_ip: "10.0.0.1".into(),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(machine.encode()).unwrap(),
            r#"{"id":"m1","publicIP":"10.0.0.1","metadata":{},"version":"","disableEngine":false}"#
        );
        let kv = KeyValue {
            key: "/t/job/x".into(),
            value: b"{".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        assert!(
            matches!(decode::<Job>(&kv), Err(RegistryError::Corrupt { key, .. }) if key == "/t/job/x")
        );
        assert_eq!(decode_or_skip::<Job>(&kv), None);
        assert_eq!(String::decode(b"m1").unwrap(), "m1");
    }
}
