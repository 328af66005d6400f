//! The `[X-Fleet]` section: where a unit may run.
//!
//! ```
//! use unit::{Requirements, UnitFile};
//! let file = UnitFile::parse(
//!     "[X-Fleet]\nMachineOf=web@%i.service\nMachineMetadata=\"region=east\" \"region=west\"\n",
//! ).unwrap();
//! let req = Requirements::from_unit(&file, "web-discovery@8080.service");
//! assert_eq!(req.machine_of, ["web@8080.service"]);
//! assert_eq!(req.machine_metadata["region"].len(), 2);
//! assert!(req.validate().is_ok());
//! ```

use crate::file::FLEET_SECTION;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Scheduling requirements of one unit, with specifiers (`%n %N %p %i`) expanded against its name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID=`: a full machine id or its 8-character short form.
    pub machine_id: Option<String>,
    /// `MachineOf=`: units this one must share a machine with.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: key -> allowed values (OR within a key, AND across keys).
    pub machine_metadata: BTreeMap<String, BTreeSet<String>>,
    /// `Conflicts=`: Go `path.Match` globs of units that must not share this unit's machine.
    pub conflicts: Vec<String>,
    /// `Global=`: run on every machine that matches.
    pub global: bool,
    /// `Replaces=`: globs of units to push off this unit's machine.
    pub replaces: Vec<String>,
    /// `[X-Fleet]` keys fleet does not know (fleetctl warns about them).
    pub unknown: Vec<String>,
    /// `[Unit]` dependencies: the scheduler keeps a unit on the machine of the submitted units
    /// it requires or wants, and the agent starts them first.
    pub dependencies: crate::Dependencies,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequirementsError(pub String);

/// Something in `[X-Fleet]` that fleet silently ignores and fleetctl should warn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementsWarning {
    /// A key fleet does not know, e.g. a misspelt `MachineMetaData`.
    UnknownOption(String),
    /// A `MachineMetadata=` value that is not exactly `key=value` with both parts non-empty.
    MalformedMetadata(String),
}

impl fmt::Display for RequirementsWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequirementsWarning::UnknownOption(key) => {
                write!(
                    f,
                    "unrecognized requirement in [X-Fleet] section: {key:?} (ignored)"
                )
            }
            RequirementsWarning::MalformedMetadata(value) => write!(
                f,
                "MachineMetadata value {value:?} is not of the form key=value (ignored)"
            ),
        }
    }
}

/// Option names of `[X-Fleet]`, with the legacy spellings fleet still read.
pub mod keys {
    pub const MACHINE_ID: &str = "MachineID";
    pub const LEGACY_MACHINE_ID: &str = "X-ConditionMachineID";
    pub const LEGACY_MACHINE_BOOT_ID: &str = "X-ConditionMachineBootID";
    pub const MACHINE_OF: &str = "MachineOf";
    pub const LEGACY_MACHINE_OF: &str = "X-ConditionMachineOf";
    pub const MACHINE_METADATA: &str = "MachineMetadata";
    pub const LEGACY_MACHINE_METADATA: &str = "X-ConditionMachineMetadata";
    pub const CONFLICTS: &str = "Conflicts";
    pub const LEGACY_CONFLICTS: &str = "X-Conflicts";
    pub const GLOBAL: &str = "Global";
    pub const REPLACES: &str = "Replaces";

    /// Every key fleet understands (`job.validRequirements`).
    pub const ALL: [&str; 11] = [
        MACHINE_ID,
        LEGACY_MACHINE_ID,
        LEGACY_MACHINE_BOOT_ID,
        MACHINE_OF,
        LEGACY_MACHINE_OF,
        MACHINE_METADATA,
        LEGACY_MACHINE_METADATA,
        CONFLICTS,
        LEGACY_CONFLICTS,
        GLOBAL,
        REPLACES,
    ];
}

/// fleet's `parseMultivalueLine`: a value that both starts and ends with `"` is split on spaces
/// outside quotes and the quotes dropped (`"a" "b c"` -> `a`, `b c`); any other value is one
/// value. There is no escaping (`"foo\"bar"` -> `foo\bar`), as in fleet.
pub fn parse_multivalue(line: &str) -> Vec<String> {
    if !(line.starts_with('"') && line.ends_with('"')) {
        return vec![line.to_string()];
    }
    let mut values = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => values.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    values.push(current);
    values
}

/// fleet's `unitPrintf`: replaces `%n` (full name), `%N` (name without type suffix), `%p`
/// (prefix) and `%i` (instance) in `value`, one after the other as fleet did. Names without a
/// `.` leave the value untouched (fleet's `NewUnitNameInfo` returned nil for them). The name
/// need not be valid otherwise.
pub fn expand_specifiers(value: &str, unit_name: &str) -> String {
    let Some(dot) = unit_name.rfind('.') else {
        return value.to_string();
    };
    let stem = &unit_name[..dot];
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    value
        .replace("%n", unit_name)
        .replace("%N", stem)
        .replace("%p", prefix)
        .replace("%i", instance)
}

/// Whether [`expand_specifiers`]`(value, unit_name)` stays within `cap` bytes, found without
/// building anything larger: each replacement is applied to the previous one's output (as
/// fleet did, so `%%n` on `Nginx.service` yields a `%N` that the next step expands), and the
/// length of each step is counted before it is built. `Err` holds the length that went over.
pub(crate) fn expansion_within(value: &str, unit_name: &str, cap: usize) -> Result<(), usize> {
    let Some(dot) = unit_name.rfind('.') else {
        return Ok(());
    };
    let stem = &unit_name[..dot];
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    let mut current = value.to_string();
    for (spec, with) in [
        ("%n", unit_name),
        ("%N", stem),
        ("%p", prefix),
        ("%i", instance),
    ] {
        let n = current.matches(spec).count();
        let len = current.len() - 2 * n + n * with.len();
        if len > cap {
            return Err(len);
        }
        current = current.replace(spec, with);
    }
    Ok(())
}

/// fleet's `HasMetadata`: whether a machine's `metadata` has every key `required` names (a
/// unit's `MachineMetadata=`), each with one of the values allowed for it.
pub fn metadata_matches(
    required: &BTreeMap<String, BTreeSet<String>>,
    metadata: &BTreeMap<String, String>,
) -> bool {
    required
        .iter()
        .all(|(key, allowed)| metadata.get(key).is_some_and(|v| allowed.contains(v)))
}

/// fleet's `isTruthyValue`.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "t"
    )
}

impl Requirements {
    /// Reads `[X-Fleet]` of `file` for the unit called `unit_name`.
    pub fn from_unit(file: &crate::UnitFile, unit_name: &str) -> Requirements {
        Requirements::from_unit_with_warnings(file, unit_name).0
    }

    /// As [`Requirements::from_unit`], plus what fleet ignored silently (unknown keys, malformed
    /// `MachineMetadata=` values), for fleetctl to warn about.
    pub fn from_unit_with_warnings(
        file: &crate::UnitFile,
        unit_name: &str,
    ) -> (Requirements, Vec<RequirementsWarning>) {
        // key -> values after multi-value splitting and specifier expansion, keys in file order.
        let mut values: Vec<(&str, Vec<String>)> = Vec::new();
        for option in file.options.iter().filter(|o| o.section == FLEET_SECTION) {
            let expanded = parse_multivalue(&option.value)
                .into_iter()
                .map(|v| expand_specifiers(&v, unit_name));
            match values.iter_mut().find(|(k, _)| *k == option.name) {
                Some((_, list)) => list.extend(expanded),
                None => values.push((&option.name, expanded.collect())),
            }
        }
        let get = |key: &str| -> &[String] {
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(&[][..], |(_, v)| v.as_slice())
        };

        let mut warnings = Vec::new();
        let mut req = Requirements {
            // The first value of the first key present, modern spelling first (fleet's
            // RequiredTarget). An empty `MachineID=` is kept as `Some("")`: fleet treated it as
            // a target no machine has.
            machine_id: [
                keys::MACHINE_ID,
                keys::LEGACY_MACHINE_ID,
                keys::LEGACY_MACHINE_BOOT_ID,
            ]
            .iter()
            .find_map(|k| get(k).first().cloned()),
            machine_of: [get(keys::LEGACY_MACHINE_OF), get(keys::MACHINE_OF)].concat(),
            conflicts: [get(keys::LEGACY_CONFLICTS), get(keys::CONFLICTS)]
                .concat()
                .iter()
                .flat_map(|v| v.split_whitespace().map(str::to_string))
                .collect(),
            global: get(keys::GLOBAL).last().is_some_and(|v| is_truthy(v)),
            replaces: get(keys::REPLACES).to_vec(),
            dependencies: crate::Dependencies::from_unit(file, unit_name),
            ..Requirements::default()
        };
        for pair in [
            get(keys::LEGACY_MACHINE_METADATA),
            get(keys::MACHINE_METADATA),
        ]
        .concat()
        {
            // fleet split on every `=` and wanted exactly two non-empty parts.
            let parts: Vec<&str> = pair.split('=').collect();
            match parts[..] {
                [key, value] if !key.is_empty() && !value.is_empty() => {
                    req.machine_metadata
                        .entry(key.to_string())
                        .or_default()
                        .insert(value.to_string());
                }
                _ => warnings.push(RequirementsWarning::MalformedMetadata(pair)),
            }
        }
        for (key, _) in &values {
            if !keys::ALL.contains(key) {
                req.unknown.push(key.to_string());
                warnings.push(RequirementsWarning::UnknownOption(key.to_string()));
            }
        }
        (req, warnings)
    }

    /// fleet's `ValidateOptions` combination rules; the error names both options.
    pub fn validate(&self) -> Result<(), RequirementsError> {
        let has_id = self.machine_id.is_some();
        let has_peers = !self.machine_of.is_empty();
        let has_conflicts = !self.conflicts.is_empty();
        let has_replaces = !self.replaces.is_empty();
        let rules = [
            (has_id && has_peers, keys::MACHINE_ID, keys::MACHINE_OF),
            (has_id && has_conflicts, keys::MACHINE_ID, keys::CONFLICTS),
            (has_id && self.global, keys::MACHINE_ID, keys::GLOBAL),
            (has_id && has_replaces, keys::MACHINE_ID, keys::REPLACES),
            (self.global && has_peers, keys::GLOBAL, keys::MACHINE_OF),
            (self.global && has_replaces, keys::GLOBAL, keys::REPLACES),
            (
                has_conflicts && has_replaces,
                keys::CONFLICTS,
                keys::REPLACES,
            ),
        ];
        match rules.iter().find(|(broken, _, _)| *broken) {
            Some((_, a, b)) => Err(RequirementsError(format!(
                "{a} cannot be used with {b} in [X-Fleet]; remove one of them"
            ))),
            None => Ok(()),
        }
    }

    /// Whether any `Conflicts=` glob matches `unit_name` (Go `path.Match`).
    pub fn conflicts_with(&self, unit_name: &str) -> bool {
        self.conflicts
            .iter()
            .any(|g| crate::glob::path_match(g, unit_name))
    }

    /// Whether any `Replaces=` glob matches `unit_name` (Go `path.Match`).
    pub fn replaces_unit(&self, unit_name: &str) -> bool {
        self.replaces
            .iter()
            .any(|g| crate::glob::path_match(g, unit_name))
    }
}

/// The most options a unit may have. systemd sets no limit, and real units have tens; the
/// bound keeps what one request can make fleetd store, hash, schedule and write small (a 1 MiB
/// body holds some 25,000 short options), far above any real unit.
pub const MAX_OPTIONS: usize = 10_000;

/// The most values (after splitting multi-value lines) all `[X-Fleet]` options of a unit may
/// hold together. Validation and scheduling compare every `MachineOf=` peer with every
/// `Conflicts=`/`Replaces=` glob, so this bounds that work (500 x 500 matches at most); real
/// units name a handful of peers and globs.
pub const MAX_REQUIREMENT_VALUES: usize = 1_000;

/// The longest an `[X-Fleet]` value may grow when its specifiers (`%n %N %p %i`) are
/// expanded: the same bound as a line of the file, [`crate::LINE_MAX`]. The values are unit
/// names, globs, machine ids and metadata, all far shorter; without a bound a value of a
/// thousand `%n` on a 256-byte name would expand to 256 KB, per option. Expansion is one pass
/// per specifier over the text, never of its own output, and unit names cannot contain `%`, so
/// it cannot recurse.
pub const MAX_EXPANDED_VALUE_BYTES: usize = crate::LINE_MAX;

/// Why the API refuses a unit's options (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUnit {
    /// The normalized form does not parse back (e.g. a line too long for systemd).
    #[error("unit file does not parse after normalization: {0}")]
    Parse(#[from] crate::ParseError),
    /// Options the normalized form would change (fleet accepted these and stored something
    /// else than was sent, e.g. a value ending in `\` that systemd then joined with the next line).
    #[error("unit file cannot be stored as given: {0}")]
    Unrepresentable(String),
    /// `[X-Fleet]` options that cannot all hold.
    #[error("unresolvable requirements: {0}")]
    Requirements(#[from] RequirementsError),
    /// More options than [`MAX_OPTIONS`].
    #[error("too many options: {0} (at most {MAX_OPTIONS} per unit)")]
    TooManyOptions(usize),
    /// More `[X-Fleet]` values than [`MAX_REQUIREMENT_VALUES`].
    #[error("too many [X-Fleet] values: {0} (at most {MAX_REQUIREMENT_VALUES} per unit)")]
    TooManyRequirementValues(usize),
    /// An `[X-Fleet]` value longer than [`MAX_EXPANDED_VALUE_BYTES`] once expanded.
    #[error(
        "[X-Fleet] {name}= expands to {bytes} bytes or more with its specifiers (at \
         most {MAX_EXPANDED_VALUE_BYTES}); use fewer specifiers or a shorter unit name"
    )]
    ExpansionTooLong { name: String, bytes: usize },
}

/// fleet's API `ValidateOptions` in full, for a unit about to be created:
/// 1. the normalized form must parse back (fleet serialized the options and parsed them again,
///    which catches lines of [`crate::LINE_MAX`] bytes or more and names with `=` or newlines);
///    stricter than fleet, it must also parse back to the same options
///    ([`crate::UnitFile::check_representable`]), so nothing is silently changed;
/// 2. no `MachineOf=` peer may be matched by one of the unit's own `Conflicts=` or `Replaces=`
///    globs;
/// 3. [`Requirements::validate`]'s forbidden combinations.
///
/// Unlike fleet, which validated without a unit name, specifiers are expanded against
/// `unit_name` (pass `""` to get fleet's exact behaviour). Unknown `[X-Fleet]` keys are not an
/// error here (the API ignored them); see [`Requirements::from_unit_with_warnings`].
/// Returns the unit's requirements.
pub fn validate_unit(file: &crate::UnitFile, unit_name: &str) -> Result<Requirements, InvalidUnit> {
    // The bounds first, before any work that grows with the input.
    if file.options.len() > MAX_OPTIONS {
        return Err(InvalidUnit::TooManyOptions(file.options.len()));
    }
    let mut values = 0usize;
    for option in file.options.iter().filter(|o| o.section == FLEET_SECTION) {
        for value in parse_multivalue(&option.value) {
            values += 1;
            if values > MAX_REQUIREMENT_VALUES {
                return Err(InvalidUnit::TooManyRequirementValues(values));
            }
            // Only values with specifiers are bounded: a long literal value is the file's own
            // size, which the body limit already bounds.
            if value.contains('%') {
                expansion_within(&value, unit_name, MAX_EXPANDED_VALUE_BYTES).map_err(|bytes| {
                    InvalidUnit::ExpansionTooLong {
                        name: option.name.clone(),
                        bytes,
                    }
                })?;
            }
        }
    }
    crate::UnitFile::parse(&file.serialize())?;
    file.check_representable()
        .map_err(InvalidUnit::Unrepresentable)?;
    let req = Requirements::from_unit(file, unit_name);
    for peer in &req.machine_of {
        if let Some(glob) = req
            .conflicts
            .iter()
            .find(|g| crate::glob::path_match(g, peer))
        {
            return Err(RequirementsError(format!(
                "MachineOf peer {peer:?} matches Conflicts glob {glob:?}"
            ))
            .into());
        }
        if let Some(glob) = req
            .replaces
            .iter()
            .find(|g| crate::glob::path_match(g, peer))
        {
            return Err(RequirementsError(format!(
                "MachineOf peer {peer:?} matches Replaces glob {glob:?}"
            ))
            .into());
        }
    }
    req.validate()?;
    Ok(req)
}
