//! Unit files as fleet understands them: the systemd unit-file dialect, fleet's normalized
//! serialization and SHA-1 hash, unit names (templates and instances), and the `[X-Fleet]`
//! scheduling requirements, and a unit's target state.
//!
//! ```
//! use unit::UnitFile;
//! let file = UnitFile::parse("[Service]\nExecStart=/bin/sleep 100\n").unwrap();
//! assert_eq!(file.hash().to_string(), "1c6fb6f3684bafb0c173d8b8b957ceff031180c1");
//! ```

pub mod deps;
pub mod file;
pub mod fleet;
pub mod glob;
pub mod hash;
pub mod name;
pub mod state;

pub use deps::{Dependencies, Dependency, DependencyKind};
pub use file::{FileError, ParseError, UnitFile, UnitOption, FLEET_SECTION, LINE_MAX};
pub use fleet::{
    expand_specifiers, is_truthy, metadata_matches, parse_multivalue, validate_unit, InvalidUnit,
    Requirements, RequirementsError, RequirementsWarning, MAX_EXPANDED_VALUE_BYTES, MAX_OPTIONS,
    MAX_REQUIREMENT_VALUES,
};
pub use hash::UnitHash;
pub use name::{is_recognized_type, is_template, mangle, NameError, UnitName, UNIT_NAME_MAX};
pub use state::{TargetState, TargetStateError};
