//! Unit names: validation as fleet's API did it, templates and instances, fleetctl's mangling.
//!
//! ```
//! use unit::{mangle, UnitName};
//! let name = UnitName::parse("web@8080.service").unwrap();
//! assert!(name.is_instance());
//! assert_eq!(name.template(), "web@.service");
//! assert_eq!(mangle("units/hello"), "hello.service");
//! assert!(UnitName::parse("hello").is_err());
//! ```

/// A validated unit name split into its parts (`foo@bar.service`: prefix `foo`, instance `bar`,
/// suffix `service`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitName {
    pub full: String,
    pub prefix: String,
    pub instance: Option<String>,
    pub suffix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid unit name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: String,
}

/// systemd's (and fleet's) `UNIT_NAME_MAX`.
pub const UNIT_NAME_MAX: usize = 256;

/// Unit types fleet's API accepts (`api/units.go:validUnitTypes`).
pub const VALID_UNIT_TYPES: [&str; 13] = [
    "automount",
    "busname",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "snapshot",
    "socket",
    "swap",
    "target",
    "timer",
];

/// Unit types that may be templates or instances (systemd's `unit_type_may_template`).
pub const TEMPLATE_UNIT_TYPES: [&str; 5] = ["path", "service", "socket", "target", "timer"];

/// Unit types fleet's agent runs and fleetctl leaves unmangled (`unit.RecognizedUnitType`).
pub const RECOGNIZED_UNIT_TYPES: [&str; 7] = [
    "service",
    "socket",
    "timer",
    "path",
    "device",
    "mount",
    "automount",
];

/// Whether `suffix` (without the dot: `service`) is a type fleet's agent runs.
pub fn is_recognized_type(suffix: &str) -> bool {
    RECOGNIZED_UNIT_TYPES.contains(&suffix)
}

/// Whether `name` is a template (`foo@.service`: an `@` with nothing after it before the type
/// suffix), valid or not: templates are never placed or started, only their instances are, and
/// the scheduler decides this for every name in the registry without validating it again.
pub fn is_template(name: &str) -> bool {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    stem.split_once('@')
        .is_some_and(|(_, instance)| instance.is_empty())
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')
}

impl UnitName {
    /// Validates `name` (fleet's `ValidateName`) and splits it.
    pub fn parse(name: &str) -> Result<UnitName, NameError> {
        let fail = |reason: String| NameError {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(fail("unit name cannot be empty".into()));
        }
        if name.len() > UNIT_NAME_MAX {
            return Err(fail(format!(
                "unit name is {} bytes long, the maximum is {UNIT_NAME_MAX}",
                name.len()
            )));
        }
        let Some(dot) = name.rfind('.') else {
            return Err(fail(
                "unit name must end in a type suffix such as \".service\" (no \".\" found)".into(),
            ));
        };
        let (stem, suffix) = (&name[..dot], &name[dot + 1..]);
        if suffix.is_empty() {
            return Err(fail("unit name cannot end in \".\"".into()));
        }
        if !VALID_UNIT_TYPES.contains(&suffix) {
            return Err(fail(format!(
                "unknown unit type {suffix:?}; use one of {}",
                VALID_UNIT_TYPES.join(", ")
            )));
        }
        if stem.contains('@') && !TEMPLATE_UNIT_TYPES.contains(&suffix) {
            return Err(fail(format!(
                "units of type {suffix:?} cannot be templates or instances (\"@\"); only {} can",
                TEMPLATE_UNIT_TYPES.join(", ")
            )));
        }
        if let Some(c) = stem.chars().find(|&c| !valid_char(c)) {
            return Err(fail(format!(
                "invalid character {c:?}; allowed are ASCII letters, digits and \":-_.\\@\""
            )));
        }
        if name.starts_with('@') {
            return Err(fail("unit name cannot start with \"@\"".into()));
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) => (p, Some(i.to_string())),
            None => (stem, None),
        };
        Ok(UnitName {
            full: name.to_string(),
            prefix: prefix.to_string(),
            instance,
            suffix: suffix.to_string(),
        })
    }
    /// `foo@.service`
    pub fn is_template(&self) -> bool {
        is_template(&self.full)
    }
    /// `foo@bar.service`
    pub fn is_instance(&self) -> bool {
        matches!(self.instance.as_deref(), Some(i) if !i.is_empty())
    }
    /// The template an instance comes from: `foo@.service`.
    pub fn template(&self) -> String {
        format!("{}@.{}", self.prefix, self.suffix)
    }
    /// The name without its type suffix (`foo@bar`): systemd's and fleet's `%N`.
    pub fn stem(&self) -> &str {
        &self.full[..self.full.len() - self.suffix.len() - 1]
    }
    /// This template's instance called `instance`: `foo@.service` + `1` = `foo@1.service`.
    pub fn instance_name(&self, instance: &str) -> String {
        format!("{}@{instance}.{}", self.prefix, self.suffix)
    }
    /// Whether the agent runs this type (see [`is_recognized_type`]).
    pub fn is_recognized_type(&self) -> bool {
        is_recognized_type(&self.suffix)
    }
}

impl std::fmt::Display for UnitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

impl std::str::FromStr for UnitName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitName::parse(s)
    }
}

/// fleetctl's `unitNameMangle`: base name of a path, `.service` appended unless the suffix is a
/// unit type fleet runs.
pub fn mangle(arg: &str) -> String {
    let base = go_path_base(arg);
    let recognized = base
        .rsplit_once('.')
        .is_some_and(|(_, suffix)| is_recognized_type(suffix));
    if recognized {
        base.to_string()
    } else {
        format!("{base}.service")
    }
}

/// Go's `path.Base`: the last `/`-separated element, trailing slashes ignored; `.` for an empty
/// path and `/` for a path of slashes only.
fn go_path_base(path: &str) -> &str {
    if path.is_empty() {
        return ".";
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}
