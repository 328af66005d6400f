//! Global units' instances, by exception. A machine publishes a state of its own
//! (`gstates/<unit>/<machine>`) only for a global unit that is not as its job wants it, plus
//! one [`GlobalSummary`] (`gsummary/<machine>`) vouching for the rest; the row of (unit,
//! machine) that a reader lists is the exception if there is one, else the
//! [`desired_instance`] if the machine's summary vouches for the unit's current job, else none
//! (as for a state not published yet). Every reader computes rows here, so that they are the
//! ones the machine would have published in full.

use crate::codec::decode_or_skip;
use crate::follow::Raw;
use crate::keys::{KeyShape, Keys};
use crate::model::{desired_instance, GlobalJob, GlobalSummary, Job, UnitState};
use crate::registry::Registry;
use crate::store::{EventKind, KeyValue, Revision};
use crate::{Change, Update};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// The (unit, machine) pairs whose rows the summaries give, in (unit, machine) order: each
/// global job (with the revision its record was last written at) against each summary that
/// vouches for it. An exception of the same pair wins over these (see [`merge_rows`]).
pub(crate) fn vouched<'a>(
    globals: impl IntoIterator<Item = (&'a Job, Revision)>,
    summaries: &'a BTreeMap<String, GlobalSummary>,
) -> impl Iterator<Item = (&'a Job, &'a str)> {
    globals
        .into_iter()
        .filter(|(job, _)| job.global && job.desired != crate::TargetState::Inactive)
        .flat_map(move |(job, written)| {
            summaries
                .iter()
                .filter(move |(_, s)| s.vouches(job, written))
                .map(move |(machine, _)| (job, machine.as_str()))
        })
}

/// Merges two lists sorted by (unit, machine) into one; on the same pair, `b`'s row wins.
pub(crate) fn merge_rows<T>(
    a: Vec<T>,
    b: Vec<T>,
    key: impl for<'a> Fn(&'a T) -> (&'a str, &'a str),
) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => key(x).cmp(&key(y)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match order {
            std::cmp::Ordering::Less => out.extend(a.next()),
            std::cmp::Ordering::Greater => out.extend(b.next()),
            std::cmp::Ordering::Equal => {
                a.next();
                out.extend(b.next());
            }
        }
    }
    out
}

/// Every instance row from the global jobs, the summaries and the exceptions (sorted by
/// (unit, machine)), sorted by (unit, machine).
pub(crate) fn instance_rows(
    globals: &[(Job, Revision)],
    summaries: &BTreeMap<String, GlobalSummary>,
    exceptions: Vec<UnitState>,
) -> Vec<UnitState> {
    let computed: Vec<UnitState> = vouched(globals.iter().map(|(j, r)| (j, *r)), summaries)
        .filter_map(|(job, machine)| desired_instance(job, machine))
        .collect();
    merge_rows(computed, exceptions, state_key)
}

/// A state's (unit, machine).
pub(crate) fn state_key(s: &UnitState) -> (&str, &str) {
    (s.name.as_str(), s.machine_id.as_str())
}

/// A row that changed: (unit, machine) and what it shows now (`None`: no row).
pub type RowChange = ((String, String), Option<UnitState>);

/// The instance rows kept current from changes of global jobs, summaries and exceptions, one
/// at a time, telling which rows each change changed (what the events and the followers of
/// instances need).
#[derive(Clone, Debug, Default)]
pub struct Instances {
    globals: BTreeMap<String, (Job, Revision)>,
    summaries: BTreeMap<String, GlobalSummary>,
    exceptions: BTreeMap<(String, String), UnitState>,
}

impl Instances {
    /// The row of `unit` on `machine`.
    pub fn row(&self, unit: &str, machine: &str) -> Option<UnitState> {
        if let Some(e) = self
            .exceptions
            .get(&(unit.to_string(), machine.to_string()))
        {
            return Some(e.clone());
        }
        let (job, written) = self.globals.get(unit)?;
        let summary = self.summaries.get(machine)?;
        if job.global && summary.vouches(job, *written) {
            desired_instance(job, machine)
        } else {
            None
        }
    }

    /// Every row, sorted by (unit, machine).
    pub fn rows(&self) -> Vec<UnitState> {
        let globals: Vec<(Job, Revision)> = self.globals.values().cloned().collect();
        instance_rows(
            &globals,
            &self.summaries,
            self.exceptions.values().cloned().collect(),
        )
    }

    /// Applies `change`, and says which of the rows of `pairs` it changed.
    fn diff(
        &mut self,
        pairs: Vec<(String, String)>,
        change: impl FnOnce(&mut Self),
    ) -> Vec<RowChange> {
        let before: Vec<Option<UnitState>> = pairs.iter().map(|(u, m)| self.row(u, m)).collect();
        change(self);
        pairs
            .into_iter()
            .zip(before)
            .filter_map(|(pair, before)| {
                let now = self.row(&pair.0, &pair.1);
                (now != before).then_some((pair, now))
            })
            .collect()
    }

    /// A global unit's job (and the revision its record was written at) is now `job`; `None`:
    /// the unit is gone or no longer global.
    pub fn global(&mut self, unit: &str, job: Option<(Job, Revision)>) -> Vec<RowChange> {
        // Exceptions win over the job: only the computed rows can change.
        let pairs = self
            .summaries
            .keys()
            .map(|m| (unit.to_string(), m.clone()))
            .collect();
        self.diff(pairs, |me| match job {
            Some(j) => {
                me.globals.insert(unit.to_string(), j);
            }
            None => {
                me.globals.remove(unit);
            }
        })
    }

    /// Machine `machine`'s summary is now `summary`.
    pub fn summary(&mut self, machine: &str, summary: Option<GlobalSummary>) -> Vec<RowChange> {
        let pairs = self
            .globals
            .keys()
            .map(|u| (u.clone(), machine.to_string()))
            .collect();
        self.diff(pairs, |me| match summary {
            Some(s) => {
                me.summaries.insert(machine.to_string(), s);
            }
            None => {
                me.summaries.remove(machine);
            }
        })
    }

    /// The exception of `unit` on `machine` is now `state`.
    pub fn exception(
        &mut self,
        unit: &str,
        machine: &str,
        state: Option<UnitState>,
    ) -> Vec<RowChange> {
        let pair = (unit.to_string(), machine.to_string());
        self.diff(vec![pair.clone()], |me| match state {
            Some(s) => {
                me.exceptions.insert(pair, s);
            }
            None => {
                me.exceptions.remove(&pair);
            }
        })
    }

    /// Takes in the record at `key` (`None`: deleted) if it is one instances are computed
    /// from; `None` if it is not.
    pub(crate) fn take(
        &mut self,
        keys: &InstanceKeys,
        key: &str,
        value: Option<&KeyValue>,
    ) -> Option<Vec<RowChange>> {
        if let Some(unit) = String::under(&keys.globals, key) {
            let job = value
                .and_then(decode_or_skip::<GlobalJob>)
                .map(|g| (g.job, g.revision));
            return Some(self.global(&unit, job));
        }
        if let Some(machine) = String::under(&keys.summaries, key) {
            let summary = value.and_then(decode_or_skip::<GlobalSummary>);
            return Some(self.summary(&machine, summary));
        }
        if let Some((unit, machine)) = <(String, String)>::under(&keys.exceptions, key) {
            let state = value.and_then(decode_or_skip::<UnitState>);
            return Some(self.exception(&unit, &machine, state));
        }
        None
    }
}

/// The prefixes instances are computed from.
#[derive(Clone, Debug)]
pub(crate) struct InstanceKeys {
    pub globals: String,
    pub summaries: String,
    pub exceptions: String,
}

impl InstanceKeys {
    pub fn new(keys: &Keys) -> InstanceKeys {
        InstanceKeys {
            globals: keys.globals(),
            summaries: keys.global_summaries(),
            exceptions: keys.global_states(),
        }
    }
}

/// A stream of global units' instance rows as [`Update`]s by (unit, machine), as a follower of
/// published states would deliver them if every machine published every instance. Following
/// stops when it is dropped.
pub struct InstanceFollower {
    raw: mpsc::Receiver<Raw>,
    keys: InstanceKeys,
    instances: Instances,
}

impl InstanceFollower {
    /// The next update; `None` only if following ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Update<(String, String), UnitState>> {
        let raw = self.raw.recv().await?;
        Some(match raw {
            Raw::Reset(kvs) => {
                self.instances = Instances::default();
                for kv in &kvs {
                    self.instances.take(&self.keys, &kv.key, Some(kv));
                }
                Update::Reset(
                    self.instances
                        .rows()
                        .into_iter()
                        .map(|s| ((s.name.clone(), s.machine_id.clone()), s))
                        .collect(),
                )
            }
            Raw::Events(events) => {
                let mut changes = Vec::new();
                for e in &events {
                    let value = match e.kind {
                        EventKind::Put => Some(&e.kv),
                        EventKind::Delete => None,
                    };
                    let Some(rows) = self.instances.take(&self.keys, &e.kv.key, value) else {
                        continue;
                    };
                    changes.extend(rows.into_iter().map(|(pair, row)| match row {
                        Some(s) => Change::Put(pair, s),
                        None => Change::Delete(pair),
                    }));
                }
                Update::Changes(changes)
            }
        })
    }
}

impl Registry {
    /// Global units' instances as rows by (unit, machine), computed from the global jobs, the
    /// machines' summaries and their exceptions (one watch over the keyspace, or reads every so
    /// often if the registry polls).
    pub fn follow_global_instances(&self) -> InstanceFollower {
        let raw = self.follow_raw(self.keys.prefix().to_string());
        InstanceFollower {
            raw,
            keys: InstanceKeys::new(&self.keys),
            instances: Instances::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SystemdState;
    use crate::TargetState;
    use std::collections::BTreeSet;

    fn job(name: &str, n: u32, desired: TargetState) -> Job {
        let file = unit::UnitFile::parse(&format!("[Service]\nExecStart=/bin/sleep {n}\n"))
            .expect("a unit file");
        Job {
            name: name.to_string(),
            hash: file.hash(),
            desired,
            global: true,
            x_fleet: Some(vec![]),
        }
    }

    fn failed(job: &Job, machine: &str) -> UnitState {
        UnitState {
            systemd: SystemdState {
                load: "loaded".into(),
                active: "failed".into(),
                sub: "failed".into(),
            },
            reason: Some("exit 1".into()),
            ..desired_instance(job, machine).expect("a wanted job")
        }
    }

    fn summary(revision: Revision, absent: &[&str]) -> GlobalSummary {
        GlobalSummary {
            revision,
            absent: absent.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A small deterministic generator: the tests need varied mixes, not cryptographic ones.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Random mixes of outcomes on random machines: the rows computed from summaries and
    /// exceptions equal, row for row, the states the machines would publish in full. Each
    /// machine's "truth" is what it runs of each global unit; it publishes as the agent does
    /// (an exception for what differs from the desired instance, the rest vouched for at the
    /// revision of its view, absent what it does not run), and may lag behind the jobs.
    #[test]
    fn computed_rows_equal_a_full_publication() {
        let mut rng = Lcg(7);
        for round in 0..300 {
            let units = 1 + rng.next(6) as usize;
            let machines = 1 + rng.next(5) as usize;
            // The jobs, each written at its revision.
            let mut jobs: Vec<(Job, Revision)> = (0..units)
                .map(|u| {
                    let desired = match rng.next(4) {
                        0 => TargetState::Loaded,
                        1 => TargetState::Inactive,
                        _ => TargetState::Launched,
                    };
                    let j = job(&format!("g{u}.service"), rng.next(3) as u32, desired);
                    (j, 1 + rng.next(20) as Revision)
                })
                .collect();
            jobs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            let latest = jobs.iter().map(|(_, r)| *r).max().unwrap_or(0);
            let mut full: Vec<UnitState> = Vec::new();
            let mut summaries = BTreeMap::new();
            let mut exceptions = Vec::new();
            for m in 0..machines {
                let machine = format!("m{m}");
                // The machine's view: every job as last written (a machine that lags behind
                // a job shows no row for it until it publishes again: see the test below).
                let seen = latest + rng.next(3) as Revision;
                let mut absent = BTreeSet::new();
                for (j, _) in &jobs {
                    // What the machine holds of the unit, if anything, as it would publish it.
                    let state = match rng.next(6) {
                        0 => None,
                        1 if j.desired != TargetState::Inactive => Some(failed(j, &machine)),
                        2 if j.desired != TargetState::Inactive => Some(UnitState {
                            hash: job(&j.name, 9, j.desired).hash,
                            ..failed(j, &machine)
                        }),
                        _ => desired_instance(j, &machine),
                    };
                    let Some(state) = state else {
                        absent.insert(j.name.clone());
                        continue;
                    };
                    full.push(state.clone());
                    // The agent's decision: covered, or published as an exception.
                    if Some(&state) != desired_instance(j, &machine).as_ref() {
                        exceptions.push(state);
                    }
                }
                summaries.insert(
                    machine,
                    summary(seen, &absent.iter().map(String::as_str).collect::<Vec<_>>()),
                );
            }
            full.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
            exceptions.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
            let rows = instance_rows(&jobs, &summaries, exceptions.clone());
            assert_eq!(rows, full, "round {round}");

            // The same rows kept current change by change, in any order.
            let mut inst = Instances::default();
            let mut shown: BTreeMap<(String, String), UnitState> = BTreeMap::new();
            let mut apply = |changes: Vec<RowChange>| {
                for (pair, row) in changes {
                    match row {
                        Some(s) => shown.insert(pair, s),
                        None => shown.remove(&pair),
                    };
                }
            };
            for s in &exceptions {
                apply(inst.exception(&s.name, &s.machine_id, Some(s.clone())));
            }
            for (m, s) in &summaries {
                apply(inst.summary(m, Some(s.clone())));
            }
            for (j, r) in &jobs {
                apply(inst.global(&j.name, Some((j.clone(), *r))));
            }
            assert_eq!(
                shown.into_values().collect::<Vec<_>>(),
                full,
                "round {round}, incremental"
            );
            assert_eq!(inst.rows(), rows);
        }
    }

    #[test]
    fn an_exception_wins_and_its_removal_shows_the_vouched_row() {
        let g = job("g.service", 1, TargetState::Launched);
        let mut inst = Instances::default();
        assert_eq!(inst.global("g.service", Some((g.clone(), 5))), vec![]);
        let row = desired_instance(&g, "m1");
        let pair = ("g.service".to_string(), "m1".to_string());
        // A summary at an older revision vouches for nothing of this job.
        assert_eq!(inst.summary("m1", Some(summary(4, &[]))), vec![]);
        assert_eq!(
            inst.summary("m1", Some(summary(5, &[]))),
            vec![(pair.clone(), row.clone())]
        );
        let bad = failed(&g, "m1");
        assert_eq!(
            inst.exception("g.service", "m1", Some(bad.clone())),
            vec![(pair.clone(), Some(bad))]
        );
        assert_eq!(
            inst.exception("g.service", "m1", None),
            vec![(pair.clone(), row)]
        );
        // Named absent: no row; the machine's lease gone: no row either.
        assert_eq!(
            inst.summary("m1", Some(summary(5, &["g.service"]))),
            vec![(pair.clone(), None)]
        );
        assert_eq!(inst.summary("m1", None), vec![]);
        // A job rewritten after the summary's revision is not vouched for.
        inst.summary("m1", Some(summary(5, &[])));
        assert_eq!(inst.global("g.service", Some((g, 6))), vec![(pair, None)]);
    }
}
