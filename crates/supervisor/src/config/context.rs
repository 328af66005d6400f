//! Where and as whom a service's commands run: `Environment=`, `EnvironmentFile=`,
//! `WorkingDirectory=`, `User=` and `Group=`.

use super::words::split_words;
use super::{ConfigError, Options};
use std::path::PathBuf;

/// The execution context of a service's commands (systemd.exec), resolved further when a run
/// starts: environment files and the account are read then, as systemd does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecContext {
    /// `Environment=` assignments in order (later ones win).
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` paths; `true` = optional (`-` prefix).
    pub environment_files: Vec<(PathBuf, bool)>,
    /// `WorkingDirectory=`: the path (`~` already resolved to the user's home by the caller's
    /// specifier context) and whether a missing directory is ignored (`-` prefix).
    pub working_directory: Option<(String, bool)>,
    pub user: Option<String>,
    pub group: Option<String>,
}

pub(super) fn read(o: &Options<'_>) -> Result<ExecContext, ConfigError> {
    let unit = || o.name.to_string();
    let mut environment: Vec<(String, String)> = Vec::new();
    for value in o.values("Environment") {
        let expanded = o.expand("Environment", value)?;
        let words = split_words(&expanded).map_err(|problem| ConfigError::Environment {
            unit: unit(),
            value: value.into(),
            problem,
        })?;
        if words.is_empty() {
            environment.clear();
        }
        for word in words {
            // systemd ignores (with a warning) words that are not assignments.
            if let Some((k, v)) = word.split_once('=') {
                if valid_env_name(k) {
                    environment.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    let mut environment_files = Vec::new();
    for value in o.values("EnvironmentFile") {
        let value = value.trim();
        if value.is_empty() {
            environment_files.clear();
            continue;
        }
        let (path, optional) = strip_dash(value);
        let path = o.expand("EnvironmentFile", path)?;
        if !path.starts_with('/') {
            return Err(ConfigError::RelativeEnvironmentFile {
                unit: unit(),
                value: value.into(),
            });
        }
        environment_files.push((PathBuf::from(path), optional));
    }
    let working_directory = match o.last("WorkingDirectory") {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => {
            let (path, optional) = strip_dash(&v);
            let path = o.expand("WorkingDirectory", path)?;
            let path = if path == "~" {
                o.spec.home.clone()
            } else {
                path
            };
            if !path.starts_with('/') {
                return Err(ConfigError::RelativeWorkingDirectory {
                    unit: unit(),
                    value: v,
                });
            }
            Some((path, optional))
        }
    };
    Ok(ExecContext {
        environment,
        environment_files,
        working_directory,
        user: o.expanded("User")?,
        group: o.expanded("Group")?,
    })
}

fn strip_dash(v: &str) -> (&str, bool) {
    match v.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (v, false),
    }
}

pub fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Parses an environment file the way systemd does: `KEY=VALUE` lines, `#`/`;` comments,
/// values in double quotes (with `\` escapes) or single quotes (literal), unquoted values
/// trimmed, backslash-newline continuation. Lines without a valid assignment are skipped.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        // Start of a line: skip leading whitespace and blank lines.
        while matches!(chars.peek(), Some(' ' | '\t' | '\r' | '\n')) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        if first == '#' || first == ';' {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            continue;
        }
        let mut key = String::new();
        let mut saw_eq = false;
        for c in chars.by_ref() {
            match c {
                '=' => {
                    saw_eq = true;
                    break;
                }
                '\n' => break,
                c => key.push(c),
            }
        }
        let key = key.trim().to_string();
        if !saw_eq {
            continue;
        }
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        let mut value = String::new();
        let mut trailing_ws = 0usize;
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, '\n') => break,
                (None, '"' | '\'') => {
                    quote = Some(c);
                    trailing_ws = 0;
                }
                (Some(q), c) if c == q => quote = None,
                (Some('\''), c) => value.push(c),
                (_, '\\') => match chars.next() {
                    Some('\n') => {}
                    Some(e) => {
                        value.push(e);
                        trailing_ws = 0;
                    }
                    None => {}
                },
                (None, c) if c == ' ' || c == '\t' || c == '\r' => {
                    value.push(c);
                    trailing_ws += 1;
                }
                (_, c) => {
                    value.push(c);
                    trailing_ws = 0;
                }
            }
        }
        value.truncate(value.len() - trailing_ws.min(value.len()));
        if valid_env_name(&key) {
            out.push((key, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files() {
        let text = "# comment\n; other\nA=1\n  B = spaced  \nC=\"quoted # not comment\"\nD='single \\n'\nE=esc\\\"aped\nF=cont\\\ninued\nbad line\n1X=no\nG=\n";
        let got = parse_env_file(text);
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "spaced"),
            ("C", "quoted # not comment"),
            ("D", "single \\n"),
            ("E", "esc\"aped"),
            ("F", "continued"),
            ("G", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
