//! The unit-file model, parser and serializer.
//!
//! ```
//! use unit::UnitFile;
//! let file = UnitFile::parse("[Unit]\nDescription = Hello\n\n[Service]\nExecStart=/bin/true\n").unwrap();
//! assert_eq!(file.values("Unit", "Description").collect::<Vec<_>>(), ["Hello"]);
//! assert_eq!(file.serialize(), "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/true\n");
//! ```
//!
//! The parser is a port of the lexer in go-systemd's `unit/deserialize.go` that fleet vendored,
//! not a systemd-conformant parser: fleet hashed, stored and compared units by what *that* lexer
//! produced, so matching it keeps hashes (and `fleetctl --replace` decisions) identical to fleet's.
//! No crate implements that dialect, hence hand-written.
//!
//! What the normalized form can represent (so that `parse(serialize(u)) == u.normalized()`) is checked by
//! [`UnitFile::check_representable`]; [`crate::validate_unit`] refuses units that are not.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// systemd's `LINE_MAX` as go-systemd assumed it: a line this long (or longer) would be truncated
/// by systemd, so it is rejected up front.
pub const LINE_MAX: usize = 2048;

/// The section fleet reads scheduling requirements from.
pub const FLEET_SECTION: &str = "X-Fleet";

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

/// Why a unit file on disk could not be read or parsed; names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Displays as `path: error`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Displays as `path:line: message`.
    #[error("{}:{}: {}", path.display(), error.line, error.message)]
    Parse { path: PathBuf, error: ParseError },
}

impl UnitOption {
    pub fn new(
        section: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        UnitOption {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }
}

impl UnitFile {
    /// Parses systemd's unit-file dialect the way fleet (go-systemd) did:
    /// - text before the first `[Section]` is ignored (`#`/`;` there start a comment, `[` a section);
    /// - `#` and `;` start a comment line; a comment ending in `\` continues onto the next line;
    /// - `Name=Value` with name and value trimmed; repeated names and sections are all kept in order;
    /// - a value line ending in `\` continues: the backslash and the newline stay in the value, and
    ///   continuation lines are taken verbatim (even if they look like comments) until a line
    ///   without a trailing `\` or a blank line (which leaves the value ending in `\` + newline;
    ///   so does end of input, where go-systemd dropped the newline: see the comment in the code);
    /// - a line of [`LINE_MAX`] bytes or more, a line without `=`, and non-blank text after `]`
    ///   are errors.
    pub fn parse(text: &str) -> Result<UnitFile, ParseError> {
        Lexer::new(text).run().map(UnitFile::from_options)
    }

    /// Reads and parses a unit file; errors name the file and the line (`path:line: message`).
    pub fn from_path(path: &Path) -> Result<UnitFile, FileError> {
        let bytes = std::fs::read(path).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            FileError::Parse {
                path: path.to_path_buf(),
                error: ParseError {
                    line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
                    message: "not valid UTF-8 (unit files must be UTF-8 text)".to_string(),
                },
            }
        })?;
        UnitFile::parse(&text).map_err(|error| FileError::Parse {
            path: path.to_path_buf(),
            error,
        })
    }

    pub fn from_options(options: Vec<UnitOption>) -> UnitFile {
        UnitFile { options }
    }

    /// fleet's normalized text: sections in first-seen order, `Name=Value`, one blank line
    /// between sections. This is what is hashed, stored, written for systemd and printed by `cat`.
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        for (i, group) in self.section_groups().iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(&self.options[group[0]].section);
            out.push_str("]\n");
            for &o in group {
                let option = &self.options[o];
                out.push_str(&option.name);
                out.push('=');
                out.push_str(&option.value);
                out.push('\n');
            }
        }
        out
    }

    /// Indices of the options grouped by section, sections in first-seen order. One pass with
    /// an index by section name: a unit whose sections repeat thousands of times (hostile input
    /// through the API) would otherwise cost time quadratic in its number of options.
    fn section_groups(&self) -> Vec<Vec<usize>> {
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, option) in self.options.iter().enumerate() {
            let g = *index.entry(option.section.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        groups
    }

    /// SHA-1 of [`UnitFile::serialize`].
    pub fn hash(&self) -> crate::UnitHash {
        crate::UnitHash::of(self.serialize().as_bytes())
    }

    /// Values of `name` in `section`, in order.
    pub fn values<'a>(
        &'a self,
        section: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
            .map(|o| o.value.as_str())
    }

    pub fn has_section(&self, section: &str) -> bool {
        self.options.iter().any(|o| o.section == section)
    }

    /// The first `Description=` of `[Unit]`, as fleetctl's `list-unit-files` shows it.
    pub fn description(&self) -> Option<&str> {
        self.values("Unit", "Description").next()
    }

    /// The options grouped by section in first-seen order (file order within a section): the
    /// order [`UnitFile::serialize`] writes them in. Same hash; equal to `parse(serialize())` for
    /// representable files.
    pub fn normalized(&self) -> UnitFile {
        let options = self
            .section_groups()
            .into_iter()
            .flatten()
            .map(|i| self.options[i].clone())
            .collect();
        UnitFile { options }
    }

    /// Whether the normalized form can carry every option unchanged, i.e. whether
    /// `UnitFile::parse(&self.serialize()) == Ok(self.normalized())` (the order changes only
    /// when a section is repeated, since serialization groups sections). Options from the HTTP API
    /// may not; parsed files can fail only on a value line ending in `\` plus whitespace, which
    /// the parser (like fleet's) ends there and trims to a value ending in `\`. The rules:
    /// - section: no `]`, every line of `[section]` shorter than [`LINE_MAX`];
    /// - name: trimmed, no `=`, CR or LF, not starting with `[`, `#` or `;` (may be empty);
    /// - value: trimmed; every LF directly follows a `\` (a continuation); every continuation
    ///   line is non-blank, except that the value may end in `\` + LF (a continuation ended by a
    ///   blank line); otherwise it must not end in `\`;
    /// - every serialized line shorter than [`LINE_MAX`] bytes (counting up to the first CR or LF);
    /// - no NUL byte anywhere.
    pub fn check_representable(&self) -> Result<(), String> {
        for (i, o) in self.options.iter().enumerate() {
            check_option(o)
                .map_err(|e| format!("option {} ({}={:?}): {e}", i + 1, o.name, o.value))?;
        }
        Ok(())
    }
}

fn check_option(o: &UnitOption) -> Result<(), String> {
    // A NUL byte cannot be carried by a unit file: systemd reads a line only up to it, so the
    // unit systemd runs would not be the unit stored and hashed.
    for (what, text) in [
        ("section name", &o.section),
        ("name", &o.name),
        ("value", &o.value),
    ] {
        if let Some(at) = text.find('\0') {
            return Err(format!(
                "{what} contains a NUL byte (at byte {at}); unit files are text without NUL"
            ));
        }
    }
    if o.section.contains(']') {
        return Err(format!("section name {:?} contains \"]\"", o.section));
    }
    if format!("[{}]", o.section).split('\n').any(too_long) {
        return Err("section header line too long".into());
    }
    let name = &o.name;
    if name.trim() != name {
        return Err("name has surrounding whitespace".into());
    }
    if name.contains(['=', '\r', '\n']) {
        return Err("name contains \"=\", CR or LF".into());
    }
    if name.starts_with(['[', '#', ';']) {
        return Err("name starts with \"[\", \"#\" or \";\"".into());
    }
    let value = &o.value;
    let (core, blank_terminated) = match value.strip_suffix("\\\n") {
        Some(rest) => (&value[..rest.len() + 1], true),
        None => (value.as_str(), false),
    };
    if core.trim() != core {
        return Err("value has surrounding whitespace".into());
    }
    if !blank_terminated && core.ends_with('\\') {
        return Err(
            "value ends with \"\\\", so its normalized line would continue onto the next one; \
             remove the backslash (or the whitespace after it, to make it a continuation)"
                .into(),
        );
    }
    let mut lines = core.split('\n');
    let first = lines.next().unwrap_or_default();
    let mut previous = first;
    for line in lines {
        if !previous.ends_with('\\') {
            return Err("value has a line break not preceded by \"\\\"".into());
        }
        if line.trim().is_empty() {
            return Err("value has a blank continuation line".into());
        }
        previous = line;
    }
    if too_long(&format!("{name}={first}")) || core.split('\n').skip(1).any(too_long) {
        return Err(format!("line too long (max {LINE_MAX} bytes)"));
    }
    Ok(())
}

/// go-systemd's check: `LINE_MAX` bytes with neither CR nor LF.
fn too_long(line: &str) -> bool {
    line.split('\r').next().is_some_and(|l| l.len() >= LINE_MAX)
}

/// One step of go-systemd's state-function lexer. The line-length check runs before every step,
/// exactly where go-systemd ran it (so, like there, not on the continuation lines of a comment).
enum Step {
    NextSection,
    SectionName,
    SectionSuffix(String),
    IgnoreLine { in_section: bool },
    NextSectionOrOption,
    OptionName,
    OptionValue { name: String, partial: String },
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    /// Cached index of the next CR/LF at or after some earlier position (or `text.len()`).
    next_break: Option<usize>,
    section: String,
    options: Vec<UnitOption>,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer {
            text,
            pos: 0,
            next_break: None,
            section: String::new(),
            options: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Vec<UnitOption>, ParseError> {
        let mut step = Some(Step::NextSection);
        while let Some(current) = step {
            self.check_line_length()?;
            step = self.step(current)?;
        }
        Ok(self.options)
    }

    fn error(&self, at: usize, message: impl Into<String>) -> ParseError {
        let line = 1 + self.text.as_bytes()[..at.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        ParseError {
            line,
            message: message.into(),
        }
    }

    /// go-systemd peeks `LINE_MAX` bytes ahead and fails if they hold no line break. (It only
    /// did so when its read buffer happened to hold that much; we always do.)
    fn check_line_length(&mut self) -> Result<(), ParseError> {
        if self.text.len() - self.pos < LINE_MAX {
            return Ok(());
        }
        let next_break = match self.next_break {
            Some(b) if b >= self.pos => b,
            _ => {
                let rest = &self.text.as_bytes()[self.pos..];
                let b = self.pos + memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                self.next_break = Some(b);
                b
            }
        };
        if next_break - self.pos >= LINE_MAX {
            return Err(self.error(self.pos, format!("line too long (max {LINE_MAX} bytes)")));
        }
        Ok(())
    }

    fn next_char(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    /// go-systemd's `toEOL`: the rest of the line without its LF; a CR is dropped only before
    /// end of input (so `\r\n` leaves the CR in the line, as it did there). Returns (line, eof).
    fn read_line(&mut self) -> (&'a str, bool) {
        let rest = &self.text[self.pos..];
        match rest.find('\n') {
            Some(i) => {
                self.pos += i + 1;
                (&rest[..i], false)
            }
            None => {
                self.pos = self.text.len();
                (rest.strip_suffix('\r').unwrap_or(rest), true)
            }
        }
    }

    fn step(&mut self, step: Step) -> Result<Option<Step>, ParseError> {
        Ok(Some(match step {
            Step::NextSection => {
                let Some(c) = self.next_char() else {
                    return Ok(None);
                };
                self.pos += c.len_utf8();
                match c {
                    '[' => Step::SectionName,
                    '#' | ';' => Step::IgnoreLine { in_section: false },
                    _ => Step::NextSection,
                }
            }
            Step::SectionName => match self.text[self.pos..].find(']') {
                None => {
                    return Err(
                        self.error(self.pos, "unable to find end of section (missing \"]\")")
                    )
                }
                Some(i) => {
                    let section = self.text[self.pos..self.pos + i].to_string();
                    self.pos += i + 1;
                    Step::SectionSuffix(section)
                }
            },
            Step::SectionSuffix(section) => {
                let at = self.pos;
                let (garbage, _) = self.read_line();
                let garbage = garbage.trim();
                if !garbage.is_empty() {
                    return Err(self.error(
                        at,
                        format!("found garbage after section name [{section}]: {garbage:?}"),
                    ));
                }
                self.section = section;
                Step::NextSectionOrOption
            }
            Step::IgnoreLine { in_section } => {
                loop {
                    let (line, _) = self.read_line();
                    let line = line.strip_suffix(' ').unwrap_or(line);
                    if !line.ends_with('\\') {
                        break;
                    }
                }
                if in_section {
                    Step::NextSectionOrOption
                } else {
                    Step::NextSection
                }
            }
            Step::NextSectionOrOption => {
                let Some(c) = self.next_char() else {
                    return Ok(None);
                };
                if c.is_whitespace() {
                    self.pos += c.len_utf8();
                    Step::NextSectionOrOption
                } else if c == '[' {
                    self.pos += 1;
                    Step::SectionName
                } else if c == '#' || c == ';' {
                    self.pos += 1;
                    Step::IgnoreLine { in_section: true }
                } else {
                    Step::OptionName
                }
            }
            Step::OptionName => {
                let start = self.pos;
                let rest = &self.text[start..];
                let end = rest.find(['=', '\n', '\r']);
                match end.map(|i| (i, rest.as_bytes()[i])) {
                    Some((i, b'=')) => {
                        self.pos += i + 1;
                        Step::OptionValue {
                            name: rest[..i].trim().to_string(),
                            partial: String::new(),
                        }
                    }
                    found => {
                        let line = &rest[..found.map_or(rest.len(), |(i, _)| i)];
                        return Err(self.error(
                            start,
                            format!("expected Name=Value, found {line:?} (no \"=\" on this line)"),
                        ));
                    }
                }
            }
            Step::OptionValue { name, mut partial } => {
                let (line, eof) = self.read_line();
                if !line.trim().is_empty() {
                    partial.push_str(line);
                    if line.ends_with('\\') {
                        // Deliberate difference from go-systemd, which added no newline at end
                        // of input: there a file ending in `\` without a final newline gave a
                        // value that its own serialization did not reproduce (the stored copy
                        // re-parsed to another unit with another hash). Here a missing final
                        // newline changes nothing, and every parsed value round-trips.
                        partial.push('\n');
                        if eof {
                            return Ok(Some(self.finish_option(name, partial)));
                        }
                        return Ok(Some(Step::OptionValue { name, partial }));
                    }
                }
                self.finish_option(name, partial)
            }
        }))
    }

    fn finish_option(&mut self, name: String, partial: String) -> Step {
        // A continuation ended by a blank line keeps its final newline, as in go-systemd.
        let value = if partial.ends_with('\n') {
            format!("{}\n", partial.trim())
        } else {
            partial.trim().to_string()
        };
        self.options.push(UnitOption {
            section: self.section.clone(),
            name,
            value,
        });
        Step::NextSectionOrOption
    }
}

fn memchr2(a: u8, b: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&x| x == a || x == b)
}

impl fmt::Display for UnitFile {
    /// The normalized form ([`UnitFile::serialize`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialize())
    }
}

impl std::str::FromStr for UnitFile {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitFile::parse(s)
    }
}
