//! Our keyspace under `etcd_key_prefix`. fleet's v2 layout relied on per-key TTLs that etcd v3
//! does not have, so the layout is ours; see the README's design notes.
//!
//! | key | value | lease |
//! |---|---|---|
//! | `job/<unit>` | [`crate::Job`] JSON | none |
//! | `global/<unit>` | [`crate::GlobalJob`] JSON (the job, its text and its rollout), global units only (what agents watch) | none |
//! | `unit/<hash>` | normalized unit text | none; removed with its last reference |
//! | `unitref/<hash>/<unit>` | empty: one per unit using the body | none |
//! | `schedule/<machine>/<unit>` | [`crate::ScheduleEntry`] JSON, with the unit's text when the engine has it | none; engine-written |
//! | `placement/<unit>` | machine id | none; engine-written with the above |
//! | `reason/<unit>` | why the engine cannot place the unit | none |
//! | `machines/<id>` | [`crate::MachineState`] JSON | the machine's |
//! | `metadata/<id>/<key>` | dynamic metadata value | none |
//! | `states/<unit>/<machine>` | [`crate::UnitState`] JSON of a placed unit | the publishing machine's |
//! | `gstates/<unit>/<machine>` | [`crate::UnitState`] JSON of a global unit's instance that is not as its job wants it (an exception: failed, starting, another body, present where it should not run) | the publishing machine's |
//! | `gsummary/<machine>` | [`crate::GlobalSummary`] JSON: the global units the machine runs as their jobs want without a `gstates/` record of their own (see [`crate::desired_instance`]) | the machine's |
//! | `engine/leader` | the leader's machine id | the leader's |
//! | `rollout/<unit>` | [`crate::GlobalRollout`] JSON: a global unit's new content reaches only the machines it allows | none: stays until finished or dropped |
//! | `unitref/<hash>/rollout=<unit>` | empty: a rollout's hold on the old body (`=` is in no unit name) | none |
//! | `drain/<machine>` | [`crate::DrainMark`] JSON: the machine takes no new units and its units move away | none: outlives the machine's lease |
//!
//! Keys are built by [`Keys`] and read back by [`KeyShape`]: one parser per shape of what
//! follows a prefix (`<name>`, `<a>/<b>`, `<hash>`, or nothing for a single key).

use unit::UnitHash;

/// The keys of one fleet cluster under a prefix (normalized to end in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let mut p = prefix.to_string();
        if !p.ends_with('/') {
            p.push('/');
        }
        Keys { prefix: p }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn jobs(&self) -> String {
        format!("{}job/", self.prefix)
    }
    pub fn job(&self, unit: &str) -> String {
        format!("{}job/{unit}", self.prefix)
    }
    pub fn globals(&self) -> String {
        format!("{}global/", self.prefix)
    }
    pub fn global(&self, unit: &str) -> String {
        format!("{}global/{unit}", self.prefix)
    }
    pub fn bodies(&self) -> String {
        format!("{}unit/", self.prefix)
    }
    pub fn body(&self, hash: &UnitHash) -> String {
        format!("{}unit/{hash}", self.prefix)
    }
    pub fn body_refs(&self, hash: &UnitHash) -> String {
        format!("{}unitref/{hash}/", self.prefix)
    }
    pub fn body_ref(&self, hash: &UnitHash, unit: &str) -> String {
        format!("{}unitref/{hash}/{unit}", self.prefix)
    }
    pub fn schedules(&self) -> String {
        format!("{}schedule/", self.prefix)
    }
    pub fn machine_schedule(&self, machine: &str) -> String {
        format!("{}schedule/{machine}/", self.prefix)
    }
    pub fn schedule(&self, machine: &str, unit: &str) -> String {
        format!("{}schedule/{machine}/{unit}", self.prefix)
    }
    pub fn placements(&self) -> String {
        format!("{}placement/", self.prefix)
    }
    pub fn placement(&self, unit: &str) -> String {
        format!("{}placement/{unit}", self.prefix)
    }
    pub fn reasons(&self) -> String {
        format!("{}reason/", self.prefix)
    }
    pub fn reason(&self, unit: &str) -> String {
        format!("{}reason/{unit}", self.prefix)
    }
    pub fn machines(&self) -> String {
        format!("{}machines/", self.prefix)
    }
    pub fn machine(&self, id: &str) -> String {
        format!("{}machines/{id}", self.prefix)
    }
    pub fn all_metadata(&self) -> String {
        format!("{}metadata/", self.prefix)
    }
    pub fn machine_metadata(&self, id: &str) -> String {
        format!("{}metadata/{id}/", self.prefix)
    }
    pub fn metadata(&self, id: &str, key: &str) -> String {
        format!("{}metadata/{id}/{key}", self.prefix)
    }
    pub fn states(&self) -> String {
        format!("{}states/", self.prefix)
    }
    pub fn unit_states(&self, unit: &str) -> String {
        format!("{}states/{unit}/", self.prefix)
    }
    pub fn state(&self, unit: &str, machine: &str) -> String {
        format!("{}states/{unit}/{machine}", self.prefix)
    }
    /// Where the states of global units' instances live (see [`crate::UnitState::global`]).
    pub fn global_states(&self) -> String {
        format!("{}gstates/", self.prefix)
    }
    pub fn global_unit_states(&self, unit: &str) -> String {
        format!("{}gstates/{unit}/", self.prefix)
    }
    pub fn global_state(&self, unit: &str, machine: &str) -> String {
        format!("{}gstates/{unit}/{machine}", self.prefix)
    }
    pub fn global_summaries(&self) -> String {
        format!("{}gsummary/", self.prefix)
    }
    pub fn global_summary(&self, machine: &str) -> String {
        format!("{}gsummary/{machine}", self.prefix)
    }
    /// The key of a published state, by whether it belongs to a global unit.
    pub fn state_of(&self, unit: &str, machine: &str, global: bool) -> String {
        if global {
            self.global_state(unit, machine)
        } else {
            self.state(unit, machine)
        }
    }
    pub fn leader(&self) -> String {
        format!("{}engine/leader", self.prefix)
    }
    pub fn rollouts(&self) -> String {
        format!("{}rollout/", self.prefix)
    }
    pub fn rollout(&self, unit: &str) -> String {
        format!("{}rollout/{unit}", self.prefix)
    }
    /// The name a rollout's reference to its old body goes by among the units' references.
    pub fn rollout_holder(unit: &str) -> String {
        format!("rollout={unit}")
    }
    pub fn drains(&self) -> String {
        format!("{}drain/", self.prefix)
    }
    pub fn drain(&self, machine: &str) -> String {
        format!("{}drain/{machine}", self.prefix)
    }
}

/// What follows a prefix in a key, parsed: the one place that knows how each shape of key
/// reads back. A key that does not have the shape is not one of the records followed or read.
pub(crate) trait KeyShape: Sized {
    /// Parses `rest`, the part of a key after the prefix it was found under.
    fn parse(rest: &str) -> Option<Self>;

    /// Parses `key` if it lies under `base`.
    fn under(base: &str, key: &str) -> Option<Self> {
        Self::parse(key.strip_prefix(base)?)
    }
}

/// `<name>`: a unit, machine or hash named by the rest of the key (`job/<unit>`,
/// `machines/<id>`, `reason/<unit>`, `schedule/<machine>/<unit>` under one machine's prefix...).
impl KeyShape for String {
    fn parse(rest: &str) -> Option<String> {
        Some(rest.to_string())
    }
}

/// `<a>/<b>`: two names, split at the first `/` (`schedule/<machine>/<unit>`,
/// `metadata/<machine>/<key>`, `states/<unit>/<machine>`).
impl KeyShape for (String, String) {
    fn parse(rest: &str) -> Option<(String, String)> {
        let (a, b) = rest.split_once('/')?;
        Some((a.to_string(), b.to_string()))
    }
}

/// `<hash>`: a unit body's content address (`unit/<hash>`).
impl KeyShape for UnitHash {
    fn parse(rest: &str) -> Option<UnitHash> {
        rest.parse().ok()
    }
}

/// Nothing: the key itself (`engine/leader`).
impl KeyShape for () {
    fn parse(rest: &str) -> Option<()> {
        rest.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_reads_back_the_keys_built() {
        let keys = Keys::new("/fleet");
        assert_eq!(keys.prefix(), "/fleet/");
        assert_eq!(
            String::under(&keys.jobs(), &keys.job("a.service")),
            Some("a.service".to_string())
        );
        assert_eq!(String::under(&keys.jobs(), &keys.reason("a.service")), None);
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(
            <(String, String)>::under(&keys.schedules(), &keys.schedule("m1", "a.service")),
            pair("m1", "a.service")
        );
        assert_eq!(
            String::under(
                &keys.machine_schedule("m1"),
                &keys.schedule("m1", "a.service")
            ),
            Some("a.service".to_string())
        );
        assert_eq!(
            <(String, String)>::under(&keys.all_metadata(), &keys.metadata("m1", "zone")),
            pair("m1", "zone")
        );
        assert_eq!(
            <(String, String)>::under(&keys.states(), &keys.state_of("a.service", "m1", false)),
            pair("a.service", "m1")
        );
        assert_eq!(
            <(String, String)>::under(
                &keys.global_states(),
                &keys.state_of("g.service", "m1", true)
            ),
            pair("g.service", "m1")
        );
        // A key of another shape under the prefix is not one of its records.
        assert_eq!(
            <(String, String)>::under(&keys.schedules(), "/fleet/schedule/m1"),
            None
        );
        let hash: UnitHash = "1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9".parse().unwrap();
        assert_eq!(
            UnitHash::under(&keys.bodies(), &keys.body(&hash)),
            Some(hash)
        );
        assert_eq!(UnitHash::under(&keys.bodies(), "/fleet/unit/nothex"), None);
        assert_eq!(<()>::under(&keys.leader(), &keys.leader()), Some(()));
        assert_eq!(<()>::under(&keys.leader(), "/fleet/engine/leader2"), None);
    }

    /// The keyspace is shared with running clusters: the layout must not move.
    #[test]
    fn the_layout_stays_as_running_clusters_have_it() {
        let keys = Keys::new("/_coreos.com/fleet/");
        let hash: UnitHash = "1c6fb6f0d8d2ff5bea1ea31f6d8e1b8c8a3bb0f9".parse().unwrap();
        let p = "/_coreos.com/fleet/";
        assert_eq!(keys.job("a"), format!("{p}job/a"));
        assert_eq!(keys.global("a"), format!("{p}global/a"));
        assert_eq!(keys.body(&hash), format!("{p}unit/{hash}"));
        assert_eq!(keys.body_ref(&hash, "a"), format!("{p}unitref/{hash}/a"));
        assert_eq!(keys.schedule("m", "a"), format!("{p}schedule/m/a"));
        assert_eq!(keys.placement("a"), format!("{p}placement/a"));
        assert_eq!(keys.reason("a"), format!("{p}reason/a"));
        assert_eq!(keys.machine("m"), format!("{p}machines/m"));
        assert_eq!(keys.machine_metadata("m"), format!("{p}metadata/m/"));
        assert_eq!(keys.metadata("m", "k"), format!("{p}metadata/m/k"));
        assert_eq!(keys.state("a", "m"), format!("{p}states/a/m"));
        assert_eq!(keys.global_state("a", "m"), format!("{p}gstates/a/m"));
        assert_eq!(keys.global_summary("m"), format!("{p}gsummary/m"));
        assert_eq!(
            String::under(&keys.global_summaries(), &keys.global_summary("m")),
            Some("m".to_string())
        );
        assert_eq!(keys.leader(), format!("{p}engine/leader"));
        assert_eq!(keys.drain("m"), format!("{p}drain/m"));
        assert_eq!(keys.rollout("g"), format!("{p}rollout/g"));
        assert_eq!(
            keys.body_ref(&hash, &Keys::rollout_holder("g")),
            format!("{p}unitref/{hash}/rollout=g")
        );
        assert_eq!(
            String::under(&keys.drains(), &keys.drain("m")),
            Some("m".to_string())
        );
    }
}
