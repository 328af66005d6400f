//! "Lazy creation" of units (fleet-reference 4.4), shared by `submit`, `load`, `start` and
//! `restart`: what to do with one command-line argument, given what the registry and the local
//! filesystem hold. [`decide`] is pure; [`gather`] does the looking.
//!
//! ```
//! use fleetctl::create::{decide, Action, Found, Lookup, Purpose};
//! let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
//! let lookup = Lookup {
//!     arg: "units/hello.service".into(),
//!     name: "hello.service".into(),
//!     registry: None,
//!     local: Some(Found { path: "units/hello.service".into(), file: Ok(file.clone()), template: false }),
//!     registry_template: None,
//! };
//! let d = decide(Purpose::Start, false, &lookup).unwrap();
//! assert_eq!(d.action, Action::Create { file, replace: false });
//! ```

use api::types::Unit;
use api::TargetState;
use std::path::{Path, PathBuf};
use unit::{UnitFile, UnitName};

/// The command creating units; it decides which desired states `--replace` may replace in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Submit,
    Load,
    Start,
    Restart,
}

impl Purpose {
    /// fleet's `allowedReplace`: a unit is replaced only if its desired state is no further
    /// along than the command goes (`submit` will not swap a running unit under you).
    pub fn may_replace(self, desired: &str) -> bool {
        let allowed: &[&str] = match self {
            Purpose::Submit => &["inactive"],
            Purpose::Load => &["inactive", "loaded"],
            Purpose::Start => &["inactive", "loaded", "launched"],
            Purpose::Restart => &[],
        };
        allowed.contains(&desired)
    }

    /// The desired state a unit the command creates is created in. `load` and `start` create
    /// a new unit in their final state in one request; fleet created it `inactive`, waited, and
    /// changed it, three more requests a unit. `restart` does not start a unit it had to create
    /// (fleet's rule), so that one stays `inactive`.
    pub fn creation_state(self) -> TargetState {
        match self {
            Purpose::Submit | Purpose::Restart => TargetState::Inactive,
            Purpose::Load => TargetState::Loaded,
            Purpose::Start => TargetState::Launched,
        }
    }
}

/// A local unit file found for an argument: the file itself or, for an instance, its template
/// beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// The parsed file, or why it could not be read or parsed.
    pub file: Result<UnitFile, String>,
    pub template: bool,
}

/// Everything [`decide`] needs about one argument.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// The argument with `.service` appended when it had no unit type (fleet's
    /// `maybeAppendDefaultUnitType`): the local path looked at.
    pub arg: String,
    /// The unit name ([`unit::mangle`]).
    pub name: String,
    /// The unit of that name in the registry.
    pub registry: Option<Unit>,
    /// The local file at `arg`, else (for an instance) the template beside it.
    pub local: Option<Found>,
    /// The instance's template in the registry; looked up only when [`needs_registry_template`].
    pub registry_template: Option<Unit>,
}

/// What to do with the unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave the registry's unit as it is.
    Keep,
    /// PUT this file under the name (`replace`: a unit of that name exists and is replaced).
    Create { file: UnitFile, replace: bool },
}

/// A line for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Stdout(String),
    Stderr(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub messages: Vec<Message>,
}

/// fleet's `maybeAppendDefaultUnitType`: `.service` appended to an argument whose suffix is not
/// a type fleet runs (so `fleetctl start units/hello` reads `units/hello.service`).
pub fn with_default_type(arg: &str) -> String {
    let recognized = arg
        .rsplit_once('.')
        .is_some_and(|(_, suffix)| unit::is_recognized_type(suffix));
    if recognized {
        arg.to_string()
    } else {
        format!("{arg}.service")
    }
}

/// Whether the registry's template must be fetched: the unit is not in the registry, there is
/// no local file of that name, and the name is an instance.
pub fn needs_registry_template(lookup: &Lookup) -> bool {
    lookup.registry.is_none()
        && lookup.local.as_ref().is_none_or(|f| f.template)
        && UnitName::parse(&lookup.name).is_ok_and(|n| n.is_instance())
}

/// The path of an instance's template beside the argument: `dir(arg)/<prefix>@.<type>`.
pub fn template_path(arg: &str, name: &UnitName) -> PathBuf {
    let dir = Path::new(arg).parent().unwrap_or(Path::new(""));
    dir.join(name.template())
}

fn differs_warning(registry_name: &str, found: &Found) -> String {
    let kind = if found.template {
        "local template unit file"
    } else {
        "local unit file"
    };
    format!(
        "WARNING: Unit {registry_name} in registry differs from {kind} {}. Add --replace to override.",
        found.path.display()
    )
}

/// Decides what to do with one argument (fleet's `checkUnitCreation` + `getUnitFile`), with
/// fleet's messages. Errors are fatal for the command.
pub fn decide(purpose: Purpose, replace: bool, lookup: &Lookup) -> Result<Decision, String> {
    let name = &lookup.name;
    let keep = |messages| {
        Ok(Decision {
            action: Action::Keep,
            messages,
        })
    };
    if let Some(existing) = &lookup.registry {
        let Some(found) = &lookup.local else {
            if replace {
                return Err(format!(
                    "cannot replace Unit({name}): no local unit file {} to replace it with",
                    lookup.arg
                ));
            }
            return keep(vec![]);
        };
        let local = match &found.file {
            Ok(file) => file,
            Err(e) if replace => {
                return Err(format!("failed getting Unit({name}) from file: {e}"));
            }
            Err(e) => {
                return keep(vec![Message::Stderr(format!(
                    "WARNING: cannot compare Unit({name}) in registry with local file: {e}"
                ))]);
            }
        };
        if local.hash() == existing.file().hash() {
            let messages = if replace {
                vec![Message::Stdout(format!(
                    "Found same Unit({name}) in Registry, nothing to do"
                ))]
            } else {
                vec![]
            };
            return keep(messages);
        }
        if !replace {
            return keep(vec![Message::Stderr(differs_warning(name, found))]);
        }
        if !purpose.may_replace(&existing.desired_state) {
            return keep(vec![Message::Stderr(format!(
                "Warning: can not replace Unit({name}) in state '{}', use the appropriate command",
                existing.desired_state
            ))]);
        }
        return Ok(Decision {
            action: Action::Create {
                file: local.clone(),
                replace: true,
            },
            messages: vec![],
        });
    }

    // Not in the registry: the local file, else the instance's template.
    if let Some(found) = lookup.local.as_ref().filter(|f| !f.template) {
        return match &found.file {
            Ok(file) => Ok(Decision {
                action: Action::Create {
                    file: file.clone(),
                    replace: false,
                },
                messages: vec![],
            }),
            Err(e) => Err(format!("failed getting Unit({name}) from file: {e}")),
        };
    }
    let parsed = UnitName::parse(name).map_err(|e| e.to_string())?;
    if !parsed.is_instance() {
        return Err(format!(
            "unable to find Unit({name}) in Registry or on filesystem"
        ));
    }
    let template = parsed.template();
    let local_template = lookup.local.as_ref().filter(|f| f.template);
    // With --replace the local template wins over the registry's: the user asked for local content.
    let use_local = replace && local_template.is_some_and(|f| f.file.is_ok());
    if let (Some(registry_template), false) = (&lookup.registry_template, use_local) {
        let file = registry_template.file();
        let mut messages = vec![];
        if let Some(found) = local_template {
            if let Ok(local) = &found.file {
                if local.hash() != file.hash() {
                    messages.push(Message::Stderr(differs_warning(&template, found)));
                }
            }
        }
        return Ok(Decision {
            action: Action::Create {
                file,
                replace: false,
            },
            messages,
        });
    }
    match local_template {
        Some(Found { file: Ok(file), .. }) => Ok(Decision {
            action: Action::Create {
                file: file.clone(),
                replace: false,
            },
            messages: vec![],
        }),
        Some(Found { file: Err(e), .. }) => Err(format!(
            "unable to load template Unit({template}) from file: {e}"
        )),
        None => Err(format!(
            "unable to find Unit({name}) or template Unit({template}) in Registry or on filesystem"
        )),
    }
}

/// Client-side validation before a PUT (fleet's `ValidateName` + `ValidateOptions`), and the
/// `[X-Fleet]` warnings fleet's `ValidateRequirements` printed.
pub fn validate(name: &str, file: &UnitFile) -> Result<Vec<Message>, String> {
    UnitName::parse(name).map_err(|e| e.to_string())?;
    unit::validate_unit(file, name).map_err(|e| format!("invalid unit {name}: {e}"))?;
    let (_, warnings) = unit::Requirements::from_unit_with_warnings(file, name);
    Ok(warnings
        .into_iter()
        .map(|w| Message::Stderr(format!("WARNING: Unit {name}: {w}")))
        .collect())
}

/// Reads a local unit file if one exists at `path` (anything there counts, so a directory gives
/// an error rather than being skipped, as in fleet).
pub fn read_local(path: &Path, template: bool) -> Option<Found> {
    if std::fs::symlink_metadata(path).is_err() {
        return None;
    }
    Some(Found {
        path: path.to_path_buf(),
        file: UnitFile::from_path(path).map_err(|e| e.to_string()),
        template,
    })
}

/// The local part of a [`Lookup`] for `arg` (the registry fields are left empty).
pub fn local_lookup(arg: &str) -> Lookup {
    let arg = with_default_type(arg);
    let name = unit::mangle(&arg);
    let local = read_local(Path::new(&arg), false).or_else(|| {
        let parsed = UnitName::parse(&name).ok().filter(|n| n.is_instance())?;
        read_local(&template_path(&arg, &parsed), true)
    });
    Lookup {
        arg,
        name,
        local,
        ..Lookup::default()
    }
}

/// Everything about `arg`, from the filesystem and the registry.
pub async fn gather(fleet: &crate::client::Fleet, arg: &str) -> Result<Lookup, String> {
    let mut lookup = local_lookup(arg);
    lookup.registry = fleet
        .unit(&lookup.name)
        .await
        .map_err(|e| format!("error retrieving Unit({}) from Registry: {e}", lookup.name))?;
    if needs_registry_template(&lookup) {
        if let Ok(parsed) = UnitName::parse(&lookup.name) {
            let template = parsed.template();
            lookup.registry_template = fleet.unit(&template).await.map_err(|e| {
                format!("error retrieving template Unit({template}) from Registry: {e}")
            })?;
        }
    }
    Ok(lookup)
}

/// The unit to PUT for a creation: a replacement is created `inactive`, so that the old
/// content is taken down before the new one starts; a new unit in `purpose`'s
/// [`Purpose::creation_state`].
pub fn new_unit(name: &str, file: &UnitFile, purpose: Purpose, replace: bool) -> Unit {
    let state = if replace {
        TargetState::Inactive
    } else {
        purpose.creation_state()
    };
    Unit::new(name, file, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(exec: &str) -> UnitFile {
        UnitFile::parse(&format!("[Service]\nExecStart={exec}\n")).unwrap()
    }

    fn registry_unit(name: &str, f: &UnitFile, desired: &str) -> Unit {
        let mut u = Unit::new(name, f, TargetState::Inactive);
        u.desired_state = desired.into();
        u
    }

    fn found(path: &str, f: Result<UnitFile, String>, template: bool) -> Option<Found> {
        Some(Found {
            path: path.into(),
            file: f,
            template,
        })
    }

    fn lookup(name: &str) -> Lookup {
        Lookup {
            arg: name.into(),
            name: name.into(),
            ..Lookup::default()
        }
    }

    #[test]
    fn default_type_and_template_paths() {
        assert_eq!(with_default_type("units/hello"), "units/hello.service");
        assert_eq!(with_default_type("hello.socket"), "hello.socket");
        assert_eq!(with_default_type("a.d/hello"), "a.d/hello.service");
        assert_eq!(with_default_type("foo.target"), "foo.target.service");
        let n = UnitName::parse("web@8080.service").unwrap();
        assert_eq!(
            template_path("units/web@8080.service", &n),
            Path::new("units/web@.service")
        );
        assert_eq!(
            template_path("web@8080.service", &n),
            Path::new("web@.service")
        );
    }

    #[test]
    fn replace_is_allowed_per_command_and_desired_state() {
        let table = [
            (Purpose::Submit, "inactive", true),
            (Purpose::Submit, "loaded", false),
            (Purpose::Submit, "launched", false),
            (Purpose::Load, "inactive", true),
            (Purpose::Load, "loaded", true),
            (Purpose::Load, "launched", false),
            (Purpose::Start, "inactive", true),
            (Purpose::Start, "loaded", true),
            (Purpose::Start, "launched", true),
            (Purpose::Restart, "inactive", false),
        ];
        for (purpose, desired, allowed) in table {
            assert_eq!(
                purpose.may_replace(desired),
                allowed,
                "{purpose:?} {desired}"
            );
        }
    }

    #[test]
    fn existing_unit_decisions() {
        let old = file("/bin/old");
        let new = file("/bin/new");
        // (replace, desired, local file, expected action, expected message prefix)
        struct Case {
            purpose: Purpose,
            replace: bool,
            desired: &'static str,
            local: Option<Found>,
            replaced: bool,
            message: Option<&'static str>,
        }
        let cases = [
            Case { purpose: Purpose::Start, replace: false, desired: "launched", local: None, replaced: false, message: None },
            Case { purpose: Purpose::Start, replace: false, desired: "launched", local: found("hello.service", Ok(old.clone()), false), replaced: false, message: None },
            Case { purpose: Purpose::Start, replace: false, desired: "launched", local: found("hello.service", Ok(new.clone()), false), replaced: false,
                   message: Some("WARNING: Unit hello.service in registry differs from local unit file hello.service. Add --replace to override.") },
            Case { purpose: Purpose::Start, replace: true, desired: "launched", local: found("hello.service", Ok(old.clone()), false), replaced: false,
                   message: Some("Found same Unit(hello.service) in Registry, nothing to do") },
            Case { purpose: Purpose::Start, replace: true, desired: "launched", local: found("hello.service", Ok(new.clone()), false), replaced: true, message: None },
            Case { purpose: Purpose::Submit, replace: true, desired: "loaded", local: found("hello.service", Ok(new.clone()), false), replaced: false,
                   message: Some("Warning: can not replace Unit(hello.service) in state 'loaded', use the appropriate command") },
            Case { purpose: Purpose::Load, replace: true, desired: "loaded", local: found("hello.service", Ok(new.clone()), false), replaced: true, message: None },
            Case { purpose: Purpose::Start, replace: false, desired: "inactive", local: found("hello.service", Err("bad".into()), false), replaced: false,
                   message: Some("WARNING: cannot compare") },
        ];
        for (i, c) in cases.into_iter().enumerate() {
            let mut l = lookup("hello.service");
            l.registry = Some(registry_unit("hello.service", &old, c.desired));
            l.local = c.local;
            let d = decide(c.purpose, c.replace, &l).unwrap();
            assert_eq!(
                d.action,
                if c.replaced {
                    Action::Create {
                        file: new.clone(),
                        replace: true,
                    }
                } else {
                    Action::Keep
                },
                "case {i}"
            );
            match c.message {
                None => assert!(d.messages.is_empty(), "case {i}: {:?}", d.messages),
                Some(prefix) => {
                    let text = match &d.messages[..] {
                        [Message::Stdout(t)] | [Message::Stderr(t)] => t.clone(),
                        other => panic!("case {i}: {other:?}"),
                    };
                    assert!(text.starts_with(prefix), "case {i}: {text}");
                }
            }
        }
        // --replace without anything local to replace with, or with an unreadable file: an error.
        let mut l = lookup("hello.service");
        l.registry = Some(registry_unit("hello.service", &old, "launched"));
        assert!(decide(Purpose::Start, true, &l).is_err());
        l.local = found("hello.service", Err("line 1: bad".into()), false);
        assert!(decide(Purpose::Start, true, &l)
            .unwrap_err()
            .contains("line 1: bad"));
    }

    #[test]
    fn instance_differs_from_local_template_warns_with_template_wording() {
        let mut l = lookup("web@1.service");
        l.registry = Some(registry_unit("web@1.service", &file("/bin/a"), "launched"));
        l.local = found("web@.service", Ok(file("/bin/b")), true);
        let d = decide(Purpose::Start, false, &l).unwrap();
        assert_eq!(
            d.messages,
            [Message::Stderr(
                "WARNING: Unit web@1.service in registry differs from local template unit file web@.service. Add --replace to override.".into()
            )]
        );
    }

    #[test]
    fn new_units_start_in_the_commands_final_state_and_replacements_inactive() {
        let f = file("/bin/true");
        for (purpose, replace, want) in [
            (Purpose::Submit, false, "inactive"),
            (Purpose::Load, false, "loaded"),
            (Purpose::Start, false, "launched"),
            (Purpose::Restart, false, "inactive"),
            (Purpose::Load, true, "inactive"),
            (Purpose::Start, true, "inactive"),
        ] {
            let u = new_unit("a.service", &f, purpose, replace);
            assert_eq!(u.desired_state, want, "{purpose:?} replace={replace}");
            assert_eq!(u.file(), f);
        }
    }

    #[test]
    fn new_unit_sources_in_fleets_order() {
        let local = file("/bin/local");
        let tmpl_local = file("/bin/tmpl-local");
        let tmpl_registry = file("/bin/tmpl-registry");

        // A local file.
        let mut l = lookup("hello.service");
        l.local = found("hello.service", Ok(local.clone()), false);
        assert!(!needs_registry_template(&l));
        assert_eq!(
            decide(Purpose::Submit, false, &l).unwrap().action,
            Action::Create {
                file: local.clone(),
                replace: false
            }
        );
        l.local = found("hello.service", Err("x".into()), false);
        assert!(decide(Purpose::Submit, false, &l)
            .unwrap_err()
            .starts_with("failed getting Unit(hello.service) from file"));

        // Nothing: not an instance.
        let l = lookup("hello.service");
        assert!(!needs_registry_template(&l));
        assert_eq!(
            decide(Purpose::Submit, false, &l).unwrap_err(),
            "unable to find Unit(hello.service) in Registry or on filesystem"
        );

        // An instance: the registry's template first (a copy of its options), then the local one.
        let mut l = lookup("web@1.service");
        assert!(needs_registry_template(&l));
        assert_eq!(
            decide(Purpose::Start, false, &l).unwrap_err(),
            "unable to find Unit(web@1.service) or template Unit(web@.service) in Registry or on filesystem"
        );
        l.local = found("web@.service", Ok(tmpl_local.clone()), true);
        assert!(needs_registry_template(&l));
        assert_eq!(
            decide(Purpose::Start, false, &l).unwrap().action,
            Action::Create {
                file: tmpl_local.clone(),
                replace: false
            }
        );
        l.registry_template = Some(registry_unit("web@.service", &tmpl_registry, "inactive"));
        let d = decide(Purpose::Start, false, &l).unwrap();
        assert_eq!(
            d.action,
            Action::Create {
                file: tmpl_registry.clone(),
                replace: false
            }
        );
        assert_eq!(d.messages.len(), 1, "local template differs: warned");
        // --replace prefers the local template.
        assert_eq!(
            decide(Purpose::Start, true, &l).unwrap().action,
            Action::Create {
                file: tmpl_local,
                replace: false
            }
        );
        l.local = None;
        let d = decide(Purpose::Start, true, &l).unwrap();
        assert_eq!(
            d.action,
            Action::Create {
                file: tmpl_registry,
                replace: false
            }
        );
        assert!(d.messages.is_empty());
        // A broken local template is an error only when it is what would be used.
        let mut l = lookup("web@1.service");
        l.local = found("web@.service", Err("line 2: bad".into()), true);
        assert!(decide(Purpose::Start, false, &l)
            .unwrap_err()
            .contains("line 2: bad"));
    }

    #[test]
    fn validation_refuses_bad_names_and_options_and_warns_on_unknown_keys() {
        let ok = file("/bin/true");
        assert_eq!(validate("hello.service", &ok).unwrap(), []);
        assert!(validate("hello", &ok).is_err());
        assert!(validate("@x.service", &ok).is_err());
        let conflicting = UnitFile::parse("[X-Fleet]\nMachineID=abc\nGlobal=true\n").unwrap();
        assert!(validate("a.service", &conflicting)
            .unwrap_err()
            .contains("Global"));
        let unknown = UnitFile::parse("[X-Fleet]\nMachineMetaData=a=b\n").unwrap();
        let warnings = validate("a.service", &unknown).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            matches!(&warnings[0], Message::Stderr(t) if t.starts_with("WARNING: Unit a.service: ") && t.contains("MachineMetaData"))
        );
    }

    #[test]
    fn local_lookup_reads_files_and_templates_beside_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("hello.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
        std::fs::write(d.join("web@.service"), "[Service]\nExecStart=/bin/web %i\n").unwrap();
        std::fs::create_dir(d.join("sub.service")).unwrap();

        let l = local_lookup(&format!("{}/hello", d.display()));
        assert_eq!(l.name, "hello.service");
        assert!(matches!(
            &l.local,
            Some(Found {
                file: Ok(_),
                template: false,
                ..
            })
        ));

        let l = local_lookup(&format!("{}/web@80.service", d.display()));
        assert_eq!(l.name, "web@80.service");
        let found = l.local.unwrap();
        assert!(found.template);
        assert_eq!(found.path, d.join("web@.service"));

        let l = local_lookup(&format!("{}/sub", d.display()));
        assert!(
            matches!(&l.local, Some(Found { file: Err(_), .. })),
            "a directory is an error"
        );

        let l = local_lookup(&format!("{}/absent.service", d.display()));
        assert!(l.local.is_none());
    }
}
