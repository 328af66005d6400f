//! The `[Unit]` dependencies of a unit (`Requires=`, `Wants=`, `BindsTo=`, `Requisite=`,
//! `After=`, `Before=`), with names resolved as systemd resolves them: several per line,
//! space-separated, specifiers (`%n %N %p %i`) expanded against the unit's own name, and an
//! empty assignment clearing what came before it.
//!
//! ```
//! use unit::{Dependencies, DependencyKind, UnitFile};
//! let file = UnitFile::parse(
//!     "[Unit]\nBindsTo=web@%i.service\nAfter=web@%i.service network.target\n",
//! ).unwrap();
//! let deps = Dependencies::from_unit(&file, "web-discovery@1.service");
//! let placed: Vec<_> = deps.colocated().collect();
//! assert_eq!(placed, [("web@1.service", DependencyKind::BindsTo)]);
//! assert_eq!(deps.after(), ["network.target", "web@1.service"]);
//! ```

use crate::fleet::expansion_within;
use std::fmt;

/// The section systemd reads dependencies from.
pub const UNIT_SECTION: &str = "Unit";

/// A `[Unit]` option naming other units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DependencyKind {
    Requires,
    Requisite,
    BindsTo,
    Wants,
    After,
    Before,
}

impl DependencyKind {
    pub const ALL: [DependencyKind; 6] = [
        DependencyKind::Requires,
        DependencyKind::Requisite,
        DependencyKind::BindsTo,
        DependencyKind::Wants,
        DependencyKind::After,
        DependencyKind::Before,
    ];

    /// The option's name in a unit file.
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyKind::Requires => "Requires",
            DependencyKind::Requisite => "Requisite",
            DependencyKind::BindsTo => "BindsTo",
            DependencyKind::Wants => "Wants",
            DependencyKind::After => "After",
            DependencyKind::Before => "Before",
        }
    }

    /// Whether the other unit must be on the same machine for this one to start as systemd
    /// means it to: systemd resolves these names on the local machine only. `After=`/`Before=`
    /// only order units that run anyway, so they place nothing.
    pub fn colocates(self) -> bool {
        !matches!(self, DependencyKind::After | DependencyKind::Before)
    }
}

impl fmt::Display for DependencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One unit named by a dependency option.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dependency {
    pub kind: DependencyKind,
    pub unit: String,
}

/// A unit's dependencies, in file order, without repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependencies(pub Vec<Dependency>);

impl Dependencies {
    /// Reads `[Unit]` of `file` for the unit called `unit_name`. A name whose expansion would
    /// be longer than any unit name is dropped: it cannot name a unit, and expanding it
    /// anyway would let a small file grow large in memory.
    pub fn from_unit(file: &crate::UnitFile, unit_name: &str) -> Dependencies {
        let mut out: Vec<Dependency> = Vec::new();
        for option in file.options.iter().filter(|o| o.section == UNIT_SECTION) {
            let Some(kind) = DependencyKind::ALL
                .into_iter()
                .find(|k| k.as_str() == option.name)
            else {
                continue;
            };
            if option.value.trim().is_empty() {
                // systemd: an empty assignment resets the list built so far.
                out.retain(|d| d.kind != kind);
                continue;
            }
            for word in option.value.split_whitespace() {
                if expansion_within(word, unit_name, crate::UNIT_NAME_MAX).is_err() {
                    continue;
                }
                let dep = Dependency {
                    kind,
                    unit: crate::expand_specifiers(word, unit_name),
                };
                if dep.unit != unit_name && !out.contains(&dep) {
                    out.push(dep);
                }
            }
        }
        Dependencies(out)
    }

    /// The units this one must share a machine with, and by which option (the strongest one
    /// when several name the same unit: `Requires` before `Requisite`, `BindsTo`, `Wants`).
    pub fn colocated(&self) -> impl Iterator<Item = (&str, DependencyKind)> + '_ {
        let mut seen: Vec<&str> = Vec::new();
        let mut list: Vec<(&str, DependencyKind)> = Vec::new();
        for kind in DependencyKind::ALL.into_iter().filter(|k| k.colocates()) {
            for d in self.0.iter().filter(|d| d.kind == kind) {
                if !seen.contains(&d.unit.as_str()) {
                    seen.push(&d.unit);
                    list.push((&d.unit, kind));
                }
            }
        }
        list.into_iter()
    }

    /// Units this one is ordered after (`After=`). Sorted, without repeats.
    pub fn after(&self) -> Vec<&str> {
        self.named(DependencyKind::After)
    }

    /// Units this one is ordered before (`Before=`). Sorted, without repeats.
    pub fn before(&self) -> Vec<&str> {
        self.named(DependencyKind::Before)
    }

    fn named(&self, kind: DependencyKind) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .0
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.unit.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Orders items into waves where each item comes after everything `first[i]` names: wave 0 holds
/// the items that wait for nothing, wave 1 those waiting only for wave 0, and so on. Items caught
/// in a cycle come last, together, in one wave (systemd breaks such cycles itself). Both the
/// agent (which units to start first on a machine) and fleetctl (which units to create first)
/// order dependencies this way.
///
/// ```
/// use std::collections::BTreeSet;
/// // 0 waits for 1, 1 waits for 2.
/// let first = vec![BTreeSet::from([1]), BTreeSet::from([2]), BTreeSet::new()];
/// assert_eq!(unit::deps::waves(&first), vec![vec![2], vec![1], vec![0]]);
/// ```
pub fn waves(first: &[std::collections::BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let mut wave_of: Vec<Option<usize>> = vec![None; first.len()];
    let mut waves: Vec<Vec<usize>> = Vec::new();
    loop {
        let ready: Vec<usize> = (0..first.len())
            .filter(|&i| {
                wave_of[i].is_none()
                    && first[i].iter().all(|&j| {
                        wave_of
                            .get(j)
                            .copied()
                            .flatten()
                            .is_some_and(|w| w < waves.len())
                    })
            })
            .collect();
        if ready.is_empty() {
            break;
        }
        for &i in &ready {
            wave_of[i] = Some(waves.len());
        }
        waves.push(ready);
    }
    let stuck: Vec<usize> = (0..first.len()).filter(|&i| wave_of[i].is_none()).collect();
    if !stuck.is_empty() {
        waves.push(stuck);
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnitFile;

    fn deps(body: &str, name: &str) -> Vec<(DependencyKind, String)> {
        Dependencies::from_unit(&UnitFile::parse(body).unwrap(), name)
            .0
            .into_iter()
            .map(|d| (d.kind, d.unit))
            .collect()
    }

    #[test]
    fn parses_each_kind_several_per_line() {
        use DependencyKind::*;
        type Case<'a> = (&'a str, &'a str, &'a [(DependencyKind, &'a str)]);
        let cases: &[Case] = &[
            ("[Unit]\nRequires=a.service b.service\n", "x.service", &[(Requires, "a.service"), (Requires, "b.service")]),
            ("[Unit]\nWants=a.service\nWants=b.service\n", "x.service", &[(Wants, "a.service"), (Wants, "b.service")]),
            ("[Unit]\nBindsTo=web@%i.service\n", "disc@8.service", &[(BindsTo, "web@8.service")]),
            ("[Unit]\nRequisite=%p-db.service\n", "app@1.service", &[(Requisite, "app-db.service")]),
            ("[Unit]\nAfter=a.service\nBefore=b.service\n", "x.service", &[(After, "a.service"), (Before, "b.service")]),
            // An empty assignment clears the kind it names, and only that kind.
            ("[Unit]\nRequires=a.service\nWants=w.service\nRequires=\nRequires=b.service\n", "x.service", &[(Wants, "w.service"), (Requires, "b.service")]),
            // Other sections and other options name no dependency; repeats and self-references go.
            ("[Service]\nRequires=a.service\n[Unit]\nConflicts=c.service\nWants=a.service a.service x.service\n", "x.service", &[(Wants, "a.service")]),
            ("[X-Fleet]\nMachineOf=a.service\n", "x.service", &[]),
        ];
        for (body, name, want) in cases {
            let want: Vec<(DependencyKind, String)> =
                want.iter().map(|(k, u)| (*k, u.to_string())).collect();
            assert_eq!(deps(body, name), want, "{body:?} as {name}");
        }
    }

    #[test]
    fn colocated_names_the_strongest_kind_once() {
        let file = UnitFile::parse(
            "[Unit]\nWants=a.service\nRequires=a.service\nAfter=a.service b.service\nBindsTo=c.service\n",
        )
        .unwrap();
        let d = Dependencies::from_unit(&file, "x.service");
        let got: Vec<_> = d.colocated().collect();
        assert_eq!(
            got,
            [
                ("a.service", DependencyKind::Requires),
                ("c.service", DependencyKind::BindsTo)
            ]
        );
        assert_eq!(d.after(), ["a.service", "b.service"]);
        assert!(d.before().is_empty());
    }

    #[test]
    fn an_expansion_longer_than_a_unit_name_is_dropped() {
        let long = "%n".repeat(200);
        let body = format!("[Unit]\nRequires={long}.service ok.service\n");
        let name = format!("{}.service", "a".repeat(200));
        assert_eq!(
            deps(&body, &name),
            [(DependencyKind::Requires, "ok.service".to_string())]
        );
    }
}
