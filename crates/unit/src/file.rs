//! The unit-file model, parser and serializer.

use serde::{Deserialize, Serialize};

/// One `Name=Value` line of a section, as fleet's API carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitOption {
    pub section: String,
    pub name: String,
    pub value: String,
}

/// A parsed unit file: its options in file order (sections merged as systemd does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    pub options: Vec<UnitOption>,
}

/// Why a unit file could not be parsed; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl UnitFile {
    /// Parses systemd's unit-file dialect the way fleet (go-systemd) did.
    pub fn parse(_text: &str) -> Result<UnitFile, ParseError> {
        todo!("unit helper")
    }

    pub fn from_options(options: Vec<UnitOption>) -> UnitFile {
        UnitFile { options }
    }

    /// fleet's normalized text: sections in first-seen order, `Name=Value`, one blank line
    /// between sections. This is what is hashed, stored, written for systemd and printed by `cat`.
    pub fn serialize(&self) -> String {
        todo!("unit helper")
    }

    /// SHA-1 of [`UnitFile::serialize`].
    pub fn hash(&self) -> crate::UnitHash {
        crate::UnitHash::of(self.serialize().as_bytes())
    }

    /// Values of `name` in `section`, in order.
    pub fn values<'a>(&'a self, section: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
            .map(|o| o.value.as_str())
    }

    pub fn has_section(&self, section: &str) -> bool {
        self.options.iter().any(|o| o.section == section)
    }
}
