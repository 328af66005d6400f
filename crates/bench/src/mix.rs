//! The units a benchmark run submits: a mix of what fleet clusters hold.
//!
//! Per 100 units: 1 global, 10 in `Conflicts=` pairs, 10 in `MachineOf=` pairs (a main unit and
//! its sidekick), 9 with `MachineMetadata=zone=…`, 20 instances of one template, and plain units
//! for the rest (each with its own body).
//!
//! ```
//! let units = fleet_bench::mix::units(1000, 3, 1.0);
//! assert_eq!(units.len(), 1000);
//! assert_eq!(units.iter().filter(|u| u.global).count(), 10);
//! ```

use unit::UnitFile;

/// One unit to submit.
#[derive(Clone, Debug)]
pub struct BenchUnit {
    pub name: String,
    pub file: UnitFile,
    pub global: bool,
}

/// How many of each kind a run of `n` units holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub global: usize,
    pub conflict_pairs: usize,
    pub machine_of_pairs: usize,
    pub metadata: usize,
    pub template: usize,
    pub plain: usize,
}

/// The counts for `n` units with `global_percent` of them global.
pub fn counts(n: usize, global_percent: f64) -> Counts {
    let share = |percent: usize| n * percent / 100;
    let global = ((n as f64) * global_percent / 100.0).round() as usize;
    let global = global.min(n);
    let conflict_pairs = share(10) / 2;
    let machine_of_pairs = share(10) / 2;
    let metadata = share(9);
    let template = share(20);
    let used = global + 2 * conflict_pairs + 2 * machine_of_pairs + metadata + template;
    Counts {
        global,
        conflict_pairs,
        machine_of_pairs,
        metadata,
        template,
        plain: n.saturating_sub(used),
    }
}

/// Metadata zones: machine `i` is in zone `z{i % zones}`.
pub fn zones(machines: usize) -> usize {
    machines.clamp(1, 3)
}

/// The zone of machine number `i`.
pub fn zone_of(i: usize, machines: usize) -> String {
    format!("z{}", i % zones(machines))
}

fn file(text: &str) -> UnitFile {
    // Our own fixed texts: a parse failure is a bug in this file, caught by its tests.
    UnitFile::parse(text).unwrap_or_else(|e| panic!("benchmark unit does not parse: {e}\n{text}"))
}

/// The service part every unit shares; `secs` makes bodies distinct where wanted. The command
/// is real so that the same mix runs through the process supervisor.
fn service(description: &str, secs: usize) -> String {
    format!("[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep {secs}\n")
}

/// The units of a run of `n` units over `machines` machines, `global_percent` of them global.
pub fn units(n: usize, machines: usize, global_percent: f64) -> Vec<BenchUnit> {
    let c = counts(n, global_percent);
    let mut out = Vec::with_capacity(n);
    let mut push = |name: String, text: String, global: bool| {
        out.push(BenchUnit {
            name,
            file: file(&text),
            global,
        })
    };
    for k in 0..c.global {
        let text = format!(
            "{}\n[X-Fleet]\nGlobal=true\n",
            service(&format!("global {k}"), 7200 + k)
        );
        push(format!("global-{k}.service"), text, true);
    }
    for k in 0..c.conflict_pairs {
        for side in ["a", "b"] {
            let text = format!(
                "{}\n[X-Fleet]\nConflicts=conf-{k}-*.service\n",
                service(&format!("conflicting pair {k}"), 3600)
            );
            push(format!("conf-{k}-{side}.service"), text, false);
        }
    }
    for k in 0..c.machine_of_pairs {
        push(
            format!("pair-{k}.service"),
            service(&format!("main of pair {k}"), 5400 + k),
            false,
        );
        let text = format!(
            "{}\n[X-Fleet]\nMachineOf=pair-{k}.service\n",
            service(&format!("sidekick of pair {k}"), 3600)
        );
        push(format!("pair-{k}-side.service"), text, false);
    }
    let zones = zones(machines);
    for k in 0..c.metadata {
        let text = format!(
            "{}\n[X-Fleet]\nMachineMetadata=zone=z{}\n",
            service("zoned", 3600),
            k % zones
        );
        push(format!("meta-{k}.service"), text, false);
    }
    // One template body shared by every instance, as `fleetctl start app@{1..N}` submits it.
    let template = service("app %i", 3600);
    for k in 0..c.template {
        push(format!("app@{k}.service"), template.clone(), false);
    }
    for k in 0..c.plain {
        push(
            format!("plain-{k}.service"),
            service(&format!("plain {k}"), 10_000 + k),
            false,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn counts_add_up_for_every_size() {
        for n in [0, 1, 7, 99, 100, 1000, 10_000, 50_000] {
            let c = counts(n, 1.0);
            let total = c.global
                + 2 * c.conflict_pairs
                + 2 * c.machine_of_pairs
                + c.metadata
                + c.template
                + c.plain;
            assert_eq!(total, n, "{c:?}");
            assert_eq!(units(n, 3, 1.0).len(), n);
        }
    }

    #[test]
    fn names_are_unique_and_valid_and_requirements_hold() {
        let all = units(1000, 100, 1.0);
        let names: HashSet<&str> = all.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for u in &all {
            unit::validate_unit(&u.file, &u.name)
                .unwrap_or_else(|e| panic!("{} is not valid: {e}", u.name));
            let req = unit::Requirements::from_unit(&u.file, &u.name);
            assert_eq!(req.global, u.global, "{}", u.name);
            for other in &req.machine_of {
                assert!(
                    names.contains(other.as_str()),
                    "{} follows a missing unit",
                    u.name
                );
            }
        }
        let c = counts(1000, 1.0);
        let kinds = |prefix: &str| all.iter().filter(|u| u.name.starts_with(prefix)).count();
        assert_eq!(kinds("global-"), c.global);
        assert_eq!(kinds("conf-"), 2 * c.conflict_pairs);
        assert_eq!(kinds("meta-"), c.metadata);
        assert_eq!(kinds("app@"), c.template);
    }

    #[test]
    fn template_instances_share_one_body_and_plain_units_do_not() {
        let all = units(1000, 10, 1.0);
        let hashes = |prefix: &str| -> BTreeSet<_> {
            all.iter()
                .filter(|u| u.name.starts_with(prefix))
                .map(|u| u.file.hash())
                .collect()
        };
        assert_eq!(hashes("app@").len(), 1);
        let plain = counts(1000, 1.0).plain;
        assert_eq!(hashes("plain-").len(), plain);
    }

    #[test]
    fn zones_cover_what_metadata_units_ask_for() {
        for machines in [1, 2, 3, 100] {
            let present: BTreeSet<String> = (0..machines).map(|i| zone_of(i, machines)).collect();
            for u in units(200, machines, 1.0) {
                let req = unit::Requirements::from_unit(&u.file, &u.name);
                for values in req.machine_metadata.values() {
                    assert!(values.iter().all(|v| present.contains(v)), "{}", u.name);
                }
            }
        }
    }
}
