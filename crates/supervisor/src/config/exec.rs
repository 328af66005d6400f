//! `ExecStartPre=`, `ExecStart=`, `ExecStartPost=`, `ExecStop=` and `ExecStopPost=`: command
//! lines with their prefixes, and the `$VAR`/`${VAR}` expansion applied when a command runs.

use super::context::valid_env_name;
use super::words::{split_words, WordError};
use super::{ConfigError, Options, ServiceType};
use std::collections::BTreeMap;

/// Why an `Exec*=` value is not a command line the supervisor can run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecLineError {
    #[error(transparent)]
    Words(#[from] WordError),
    #[error("the {0:?} prefix is not supported by the process supervisor (it runs every command as the unit's user, with argv[0] = the executable); remove it or run the unit under systemd")]
    UnsupportedPrefix(char),
    #[error("no executable after the prefixes")]
    NoExecutable,
}

/// One `ExecXxx=` command: its words before environment expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCommand {
    /// `-` prefix: a failure of this command is ignored.
    pub ignore_failure: bool,
    /// `:` prefix: no environment variable expansion.
    pub no_env_expand: bool,
    pub words: Vec<String>,
}

/// A service's commands, each list in the order the unit file gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecCommands {
    pub start_pre: Vec<ExecCommand>,
    pub start: Vec<ExecCommand>,
    pub start_post: Vec<ExecCommand>,
    pub stop: Vec<ExecCommand>,
    pub stop_post: Vec<ExecCommand>,
}

/// Reads the `Exec*=` options; only `Type=oneshot` may have no or several `ExecStart=`.
pub(super) fn read(
    o: &Options<'_>,
    service_type: ServiceType,
) -> Result<ExecCommands, ConfigError> {
    let unit = || o.name.to_string();
    let commands = |key: &'static str| -> Result<Vec<ExecCommand>, ConfigError> {
        let mut out = Vec::new();
        for value in o.values(key) {
            if value.trim().is_empty() {
                // An empty assignment resets the list, as in systemd.
                out.clear();
                continue;
            }
            let expanded = o.expand(key, value)?;
            out.extend(
                parse_exec_line(&expanded).map_err(|problem| ConfigError::ExecLine {
                    unit: unit(),
                    option: key,
                    value: value.into(),
                    problem,
                })?,
            );
        }
        Ok(out)
    };
    let exec = ExecCommands {
        start: commands("ExecStart")?,
        start_pre: commands("ExecStartPre")?,
        start_post: commands("ExecStartPost")?,
        stop: commands("ExecStop")?,
        stop_post: commands("ExecStopPost")?,
    };
    match (service_type, exec.start.len()) {
        (_, 0) if service_type != ServiceType::Oneshot => {
            return Err(ConfigError::NoExecStart { unit: unit() })
        }
        (ServiceType::Oneshot, _) | (_, 1) => {}
        _ => return Err(ConfigError::SeveralExecStart { unit: unit() }),
    }
    Ok(exec)
}

/// Parses one `ExecXxx=` value into its commands (several when separated by a lone `;`).
pub fn parse_exec_line(v: &str) -> Result<Vec<ExecCommand>, ExecLineError> {
    let words = split_words(v)?;
    let mut out = Vec::new();
    for group in words.split(|w| w == ";") {
        let mut group: Vec<String> = group
            .iter()
            .map(|w| {
                if w == "\\;" {
                    ";".to_string()
                } else {
                    w.clone()
                }
            })
            .collect();
        if group.is_empty() {
            continue;
        }
        let mut ignore_failure = false;
        let mut no_env_expand = false;
        let first = group.remove(0);
        let mut rest = first.as_str();
        loop {
            match rest.chars().next() {
                Some('-') => ignore_failure = true,
                Some(':') => no_env_expand = true,
                Some(p @ ('@' | '+' | '!')) => return Err(ExecLineError::UnsupportedPrefix(p)),
                _ => break,
            }
            rest = &rest[1..];
        }
        if rest.is_empty() {
            return Err(ExecLineError::NoExecutable);
        }
        group.insert(0, rest.to_string());
        out.push(ExecCommand {
            ignore_failure,
            no_env_expand,
            words: group,
        });
    }
    Ok(out)
}

/// systemd's `replace_env_argv`: a word that is exactly `$NAME` becomes the value split at
/// whitespace (zero or more words); `${NAME}` anywhere becomes the value as is; `$$` is `$`.
pub fn expand_argv(words: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for w in words {
        if let Some(name) = w.strip_prefix('$') {
            if valid_env_name(name) {
                if let Some(v) = env.get(name) {
                    out.extend(v.split_whitespace().map(str::to_string));
                }
                continue;
            }
        }
        out.push(expand_curly(w, env));
    }
    out
}

fn expand_curly(w: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(w.len());
    let mut rest = w;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if valid_env_name(&inner[..end]) => {
                    out.push_str(env.get(&inner[..end]).map(String::as_str).unwrap_or(""));
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_lines() {
        type Want = Result<Vec<(bool, Vec<&'static str>)>, ()>;
        let cases: &[(&str, Want)] = &[
            (
                "/bin/echo a b",
                Ok(vec![(false, vec!["/bin/echo", "a", "b"])]),
            ),
            ("-/bin/false", Ok(vec![(true, vec!["/bin/false"])])),
            (
                r#"/bin/sh -c "echo 'x y'; exit 1""#,
                Ok(vec![(false, vec!["/bin/sh", "-c", "echo 'x y'; exit 1"])]),
            ),
            (
                r#"/bin/echo a"b c"d 'e\tf'"#,
                Ok(vec![(false, vec!["/bin/echo", "ab cd", "e\tf"])]),
            ),
            (
                r"/bin/echo \x41\101\s",
                Ok(vec![(false, vec!["/bin/echo", "AA "])]),
            ),
            (
                "/bin/echo a ; -/bin/true",
                Ok(vec![
                    (false, vec!["/bin/echo", "a"]),
                    (true, vec!["/bin/true"]),
                ]),
            ),
            (r"/bin/echo \;", Ok(vec![(false, vec!["/bin/echo", ";"])])),
            (
                "/bin/echo a \\\n  b",
                Ok(vec![(false, vec!["/bin/echo", "a", "b"])]),
            ),
            ("@/bin/echo x", Err(())),
            ("+/bin/echo", Err(())),
            ("/bin/echo \"open", Err(())),
            ("/bin/echo trailing\\", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_exec_line(input)
                .map(|cmds| {
                    cmds.into_iter()
                        .map(|c| (c.ignore_failure, c.words))
                        .collect::<Vec<_>>()
                })
                .map_err(|_| ());
            let want = want
                .clone()
                .map(|v| v.into_iter().map(|(i, w)| (i, s(&w))).collect::<Vec<_>>());
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn env_expansion() {
        let env: BTreeMap<String, String> = [("A", "one two"), ("B", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases: &[(&[&str], &[&str])] = &[
            (&["/bin/echo", "$A"], &["/bin/echo", "one", "two"]),
            (&["/bin/echo", "${A}"], &["/bin/echo", "one two"]),
            (&["/bin/echo", "pre${B}post"], &["/bin/echo", "prexpost"]),
            (&["/bin/echo", "$UNSET"], &["/bin/echo"]),
            (&["/bin/echo", "${UNSET}"], &["/bin/echo", ""]),
            (&["/bin/echo", "$$A"], &["/bin/echo", "$A"]),
            (&["/bin/echo", "a$B"], &["/bin/echo", "a$B"]),
        ];
        for (input, want) in cases {
            assert_eq!(expand_argv(&s(input), &env), s(want), "{input:?}");
        }
    }
}
