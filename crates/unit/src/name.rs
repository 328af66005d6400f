//! Unit names: validation as fleet's API did it, templates and instances, fleetctl's mangling.

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

impl UnitName {
    /// Validates `name` (fleet's `ValidateName`) and splits it.
    pub fn parse(_name: &str) -> Result<UnitName, NameError> {
        todo!("unit helper")
    }
    /// `foo@.service`
    pub fn is_template(&self) -> bool {
        self.instance.as_deref() == Some("")
    }
    /// `foo@bar.service`
    pub fn is_instance(&self) -> bool {
        matches!(self.instance.as_deref(), Some(i) if !i.is_empty())
    }
    /// The template an instance comes from: `foo@.service`.
    pub fn template(&self) -> String {
        format!("{}@.{}", self.prefix, self.suffix)
    }
}

/// fleetctl's `unitNameMangle`: base name of a path, `.service` appended unless the suffix is a
/// unit type fleet runs.
pub fn mangle(_arg: &str) -> String {
    todo!("unit helper")
}
