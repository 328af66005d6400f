//! What `fleetctl start` brings along: the submitted units a unit `Requires=`, `Requisite=`,
//! `BindsTo=` or `Wants=` (they must run on its machine, which the engine sees to, and be
//! started with it), and with `--with-deps` also the unit files of those beside the given
//! file and a sidekick's `MachineOf=` target. And the order units are created in, so that no
//! unit is placed and started before a unit it requires exists (fleet's issues 997, 1003,
//! 1079: "Unit sidekick.service failed to load").

use crate::client::Fleet;
use crate::create::{self, Lookup};
use crate::output::Output;
use api::types::Unit;
use api::TargetState;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use unit::{Requirements, UnitFile};

/// The units `file` (of the unit `name`) would bring along, with the option naming each: its
/// dependencies, and with `with_deps` its `MachineOf=` targets too.
pub fn peers(name: &str, file: &UnitFile, with_deps: bool) -> Vec<(String, &'static str)> {
    let req = Requirements::from_unit(file, name);
    // A sidekick's target comes along only when asked, even when the sidekick also
    // BindsTo= it: without --with-deps a sidekick waits for its target, as in fleet.
    let mut out: Vec<(String, &'static str)> = req
        .dependencies
        .colocated()
        .filter(|(n, _)| with_deps || !req.machine_of.iter().any(|t| t == n))
        .map(|(n, k)| (n.to_string(), k.as_str()))
        .collect();
    if with_deps {
        for target in req.machine_of {
            if !out.iter().any(|(n, _)| *n == target) {
                out.push((target, "MachineOf"));
            }
        }
    }
    out
}

/// The file a lookup found: the local one first (as lazy creation takes it), else the
/// registry's.
fn file_of(lookup: &Lookup) -> Option<UnitFile> {
    match &lookup.local {
        Some(found) => found.file.clone().ok(),
        None => lookup.registry.as_ref().map(Unit::file),
    }
}

/// Whether a unit found for a dependency is brought along: one already in the cluster that is
/// not launched yet (a launched one runs, and the engine keeps the two together), or, with
/// `with_deps`, a file beside the given one. Anything else (`network-online.target`, a unit
/// that is nowhere) is systemd's business.
pub fn brings(lookup: &Lookup, with_deps: bool) -> bool {
    match &lookup.registry {
        Some(u) => !matches!(u.desired(), Ok(Some(TargetState::Launched))),
        None => with_deps && lookup.local.as_ref().is_some_and(|f| f.file.is_ok()),
    }
}

/// The arguments of `fleetctl start` with what they bring along added after them, each
/// printed as `Brought along: x.service (Requires)`. Dependencies of what is brought are
/// followed too.
pub async fn bring_along(
    fleet: &Fleet,
    args: &[String],
    with_deps: bool,
    out: &Output,
) -> Result<Vec<String>, ()> {
    let mut result: Vec<String> = args.to_vec();
    let mut seen: BTreeSet<String> = args
        .iter()
        .map(|a| unit::mangle(&create::with_default_type(a)))
        .collect();
    let mut queue: VecDeque<Lookup> = VecDeque::new();
    for arg in args {
        // A local file needs no request: `fleetctl start dir/*` of units without
        // dependencies costs nothing more.
        let local = create::local_lookup(arg);
        let lookup = if local.local.is_some() {
            local
        } else {
            create::gather(fleet, arg)
                .await
                .map_err(|e| out.eprintln(&e))?
        };
        queue.push_back(lookup);
    }
    while let Some(lookup) = queue.pop_front() {
        let Some(file) = file_of(&lookup) else {
            continue;
        };
        let dir = Path::new(&lookup.arg).parent().unwrap_or(Path::new(""));
        for (peer, kind) in peers(&lookup.name, &file, with_deps) {
            if !seen.insert(peer.clone()) || unit::is_template(&peer) {
                continue;
            }
            let beside = dir.join(&peer).to_string_lossy().into_owned();
            let found = create::gather(fleet, &beside)
                .await
                .map_err(|e| out.eprintln(&e))?;
            if !brings(&found, with_deps) {
                continue;
            }
            out.println(&format!("Brought along: {peer} ({kind})"));
            result.push(if found.local.is_some() { beside } else { peer });
            queue.push_back(found);
        }
    }
    Ok(result)
}

/// The order to create `units` in: waves, each created after the one before. A unit waits for
/// the units of the batch it `Requires=`, `Requisite=` or `BindsTo=`, unless it is
/// `MachineOf=` that unit (then the engine holds it back until its target is there anyway).
/// `Wants=` orders nothing: systemd starts a unit whose wanted unit is missing. Units on a
/// cycle of such dependencies share the last wave.
pub fn creation_waves(units: &[Unit]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = units
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();
    let mut first: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); units.len()];
    for (i, u) in units.iter().enumerate() {
        let req = Requirements::from_unit(&u.file(), &u.name);
        for (dep, kind) in req.dependencies.colocated() {
            if kind == unit::DependencyKind::Wants || req.machine_of.iter().any(|t| t == dep) {
                continue;
            }
            if let Some(&j) = index.get(dep) {
                if j != i {
                    first[i].insert(j);
                }
            }
        }
    }
    unit::deps::waves(&first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::Found;

    fn unit(name: &str, body: &str) -> Unit {
        Unit::new(name, &UnitFile::parse(body).unwrap(), TargetState::Launched)
    }

    #[test]
    fn creation_waves_put_required_units_first() {
        let app = "[Unit]\nRequires=db.service\n";
        let db = "[Unit]\nBindsTo=disk.service\n";
        let apache = "[Unit]\nWants=apache-discovery.service\n";
        let discovery = "[Unit]\nBindsTo=apache.service\n[X-Fleet]\nMachineOf=apache.service\n";
        let cases: Vec<(Vec<Unit>, Vec<Vec<usize>>)> = vec![
            (vec![], vec![]),
            (
                vec![
                    unit("app.service", app),
                    unit("db.service", db),
                    unit("disk.service", ""),
                ],
                vec![vec![2], vec![1], vec![0]],
            ),
            // The sidekick pair orders nothing: Wants, and BindsTo to its MachineOf target.
            (
                vec![
                    unit("apache.service", apache),
                    unit("apache-discovery.service", discovery),
                ],
                vec![vec![0, 1]],
            ),
            // A dependency outside the batch orders nothing.
            (vec![unit("app.service", app)], vec![vec![0]]),
            // A cycle goes last, together.
            (
                vec![
                    unit("a.service", "[Unit]\nRequires=b.service\n"),
                    unit("b.service", "[Unit]\nRequires=a.service\n"),
                    unit("c.service", ""),
                ],
                vec![vec![2], vec![0, 1]],
            ),
        ];
        for (units, want) in cases {
            let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
            assert_eq!(creation_waves(&units), want, "{names:?}");
        }
    }

    #[test]
    fn peers_name_dependencies_and_with_deps_machine_of() {
        let file = UnitFile::parse(
            "[Unit]\nBindsTo=web@%i.service\nAfter=web@%i.service\n[X-Fleet]\nMachineOf=web@%i.service\n",
        )
        .unwrap();
        assert!(peers("disc@1.service", &file, false).is_empty());
        assert_eq!(
            peers("disc@1.service", &file, true),
            [("web@1.service".to_string(), "BindsTo")]
        );
        let file = UnitFile::parse("[Unit]\nRequires=db.service\n").unwrap();
        assert_eq!(
            peers("app.service", &file, false),
            [("db.service".to_string(), "Requires")]
        );
        let file = UnitFile::parse("[X-Fleet]\nMachineOf=web.service\n").unwrap();
        assert!(peers("disc.service", &file, false).is_empty());
        assert_eq!(
            peers("disc.service", &file, true),
            [("web.service".to_string(), "MachineOf")]
        );
    }

    #[test]
    fn what_is_brought() {
        let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
        let local = Some(Found {
            path: "u/db.service".into(),
            file: Ok(file.clone()),
            template: false,
        });
        let in_cluster = |state| Some(Unit::new("db.service", &file, state));
        let cases = [
            // (registry, local, with_deps, brought)
            (in_cluster(TargetState::Inactive), None, false, true),
            (in_cluster(TargetState::Loaded), None, false, true),
            (in_cluster(TargetState::Launched), None, true, false),
            (None, local.clone(), false, false),
            (None, local.clone(), true, true),
            (None, None, true, false),
        ];
        for (registry, local, with_deps, want) in cases {
            let lookup = Lookup {
                arg: "u/db.service".into(),
                name: "db.service".into(),
                registry: registry.clone(),
                local: local.clone(),
                registry_template: None,
            };
            assert_eq!(
                brings(&lookup, with_deps),
                want,
                "registry {:?} local {} with_deps {with_deps}",
                registry.map(|u| u.desired_state),
                local.is_some()
            );
        }
    }
}
