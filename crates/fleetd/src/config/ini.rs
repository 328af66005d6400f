//! The INI dialect of fleet.conf, as fleet's vendored reader (`glacjay/goini`) understood it.
//!
//! Hand-written on purpose: INI crates (rust-ini, configparser, ini) differ from goini in
//! the details fleet users rely on or trip over — a value ends at the first `#` or `;`
//! unless the whole value is quoted, quotes are removed only when they wrap the entire
//! value, keys are case-insensitive, a trailing `\` joins the next line even on a comment
//! line — so an existing fleet.conf would mean something else.
//!
//! Rules (goini's, except where noted):
//! * lines are trimmed; empty lines and lines starting with `#` or `;` are skipped;
//! * a line ending in `\` is joined with the next (trimmed) line, before anything else;
//! * `[name]` starts a section; fleetd reads only keys before the first section (global
//!   level), later keys are reported back so the caller can warn;
//! * `key = value`: the key is everything up to `=`, a space or a tab, lower-cased; a
//!   value wholly wrapped in `"…"` or `'…'` (no inner quote of the same kind) is taken
//!   verbatim without the quotes; otherwise the value ends at the first `#` or `;` and is
//!   trimmed (`key = "a" # c` keeps its quotes, as in goini);
//! * anything else is a syntax error, reported with its line (goini miscounted lines after
//!   a continuation; we give the line where the entry starts);
//! * a UTF-8 byte-order mark at the start is ignored (goini would have read it as part of
//!   the first key).

/// One `key = value` at global level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    /// Lower-cased.
    pub key: String,
    pub value: String,
    /// 1-based line where the entry starts.
    pub line: usize,
}

/// A parsed file: global entries in file order, and keys found inside sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniFile {
    pub entries: Vec<IniEntry>,
    /// `(section, entry)` for keys fleetd ignores because they are inside `[section]`.
    pub in_sections: Vec<(String, IniEntry)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: expected \"key = value\", a [section] or a # comment, found {text:?}")]
pub struct IniSyntaxError {
    pub line: usize,
    pub text: String,
}

pub fn parse_ini(text: &str) -> Result<IniFile, IniSyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let mut file = IniFile::default();
    let mut section: Option<String> = None;
    while let Some((lineno, first)) = lines.next() {
        let mut line = first.to_string();
        while let Some(stripped) = line.strip_suffix('\\') {
            line = stripped.to_string();
            match lines.next() {
                Some((_, next)) => line.push_str(next),
                None => break,
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') && line.len() >= 2 {
            section = Some(line[1..line.len() - 1].trim().to_lowercase());
            continue;
        }
        let (key, value) = split_key_value(&line).ok_or_else(|| IniSyntaxError {
            line: lineno,
            text: line.clone(),
        })?;
        let entry = IniEntry {
            key: key.to_lowercase(),
            value,
            line: lineno,
        };
        match &section {
            None => file.entries.push(entry),
            Some(name) => file.in_sections.push((name.clone(), entry)),
        }
    }
    Ok(file)
}

/// goini's four regular expressions, in their order of trial.
fn split_key_value(line: &str) -> Option<(&str, String)> {
    let key_end = line.find(['=', ' ', '\t']).unwrap_or(line.len());
    if key_end == 0 {
        return None;
    }
    let key = &line[..key_end];
    let rest = line[key_end..].trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix('=')?.trim_start_matches([' ', '\t']);
    for quote in ['"', '\''] {
        if let Some(inner) = rest.strip_prefix(quote).and_then(|r| r.strip_suffix(quote)) {
            if !inner.contains(quote) {
                return Some((key, inner.to_string()));
            }
        }
    }
    let end = rest.find(['#', ';']).unwrap_or(rest.len());
    Some((key, rest[..end].trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn global(text: &str) -> Vec<(String, String, usize)> {
        parse_ini(text)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.key, e.value, e.line))
            .collect()
    }

    fn one(text: &str) -> (String, String) {
        let entries = global(text);
        assert_eq!(entries.len(), 1, "{text:?} -> {entries:?}");
        (entries[0].0.clone(), entries[0].1.clone())
    }

    #[test]
    fn goini_value_rules() {
        let table: &[(&str, &str, &str)] = &[
            ("agent_ttl = 30s", "agent_ttl", "30s"),
            ("agent_ttl=30s", "agent_ttl", "30s"),
            ("  agent_ttl\t=\t30s  ", "agent_ttl", "30s"),
            ("AGENT_TTL = 30s", "agent_ttl", "30s"),
            (r#"agent_ttl = "30s""#, "agent_ttl", "30s"),
            ("agent_ttl = '30s'", "agent_ttl", "30s"),
            (
                r#"metadata = "a=b # not a comment; really""#,
                "metadata",
                "a=b # not a comment; really",
            ),
            ("metadata = ' spaced '", "metadata", " spaced "),
            ("metadata = a=b # comment", "metadata", "a=b"),
            ("metadata = a=b; comment", "metadata", "a=b"),
            ("metadata = a=b#c", "metadata", "a=b"),
            (
                r#"public_ip = "1.2.3.4" # quoted then comment"#,
                "public_ip",
                r#""1.2.3.4""#,
            ),
            (r#"metadata = "a"b""#, "metadata", r#""a"b""#),
            (
                r#"metadata = "unterminated"#,
                "metadata",
                r#""unterminated"#,
            ),
            ("public_ip =", "public_ip", ""),
            ("public_ip = # nothing", "public_ip", ""),
            (r#"public_ip = """#, "public_ip", ""),
            (
                r#"etcd_servers=["http://127.0.0.1:2379", "http://127.0.0.1:4001"]"#,
                "etcd_servers",
                r#"["http://127.0.0.1:2379", "http://127.0.0.1:4001"]"#,
            ),
            ("k = a = b", "k", "a = b"),
        ];
        for (text, key, value) in table {
            assert_eq!(one(text), (key.to_string(), value.to_string()), "{text:?}");
        }
    }

    #[test]
    fn comments_blank_lines_sections_and_line_numbers() {
        let text = "# comment\n; other comment\n\n   \nverbosity = 1\n[section]\nagent_ttl = 3s\n[ Other ]\nx=1\n";
        let parsed = parse_ini(text).unwrap();
        assert_eq!(
            parsed.entries,
            vec![IniEntry {
                key: "verbosity".into(),
                value: "1".into(),
                line: 5
            }]
        );
        let ignored: Vec<_> = parsed
            .in_sections
            .iter()
            .map(|(s, e)| (s.as_str(), e.key.as_str(), e.line))
            .collect();
        assert_eq!(
            ignored,
            vec![("section", "agent_ttl", 7), ("other", "x", 9)]
        );
    }

    #[test]
    fn continuation_lines() {
        let text = "metadata = a=1,\\\n   b=2,\\\n c=3\nverbosity=2\r\n";
        assert_eq!(
            global(text),
            vec![
                ("metadata".into(), "a=1,b=2,c=3".into(), 1),
                ("verbosity".into(), "2".into(), 4),
            ]
        );
        // goini joins before looking for comments: a commented line ending in `\`
        // swallows the next line.
        assert_eq!(
            global("# old \\\nverbosity = 1\nagent_ttl=1s"),
            vec![("agent_ttl".into(), "1s".into(), 3)]
        );
        // A trailing `\` on the last line is dropped.
        assert_eq!(
            global("verbosity = 1\\"),
            vec![("verbosity".into(), "1".into(), 1)]
        );
    }

    #[test]
    fn later_duplicates_come_later() {
        assert_eq!(
            global("verbosity=1\nverbosity=2"),
            vec![
                ("verbosity".into(), "1".into(), 1),
                ("verbosity".into(), "2".into(), 2)
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("verbosity 1", 1),
            ("ok=1\n= value", 2),
            ("ok=1\n\nagent ttl = 3s", 3),
            ("[unclosed\n", 1),
        ] {
            let err = parse_ini(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
        }
        let err = parse_ini("\nverbosity: 1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: expected \"key = value\", a [section] or a # comment, found \"verbosity: 1\""
        );
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(one("\u{feff}verbosity=1"), ("verbosity".into(), "1".into()));
    }

    proptest! {
        #[test]
        fn never_panics(text in "[ -~\t\n\r\\\\#;=\"'\\[\\]]{0,200}") {
            let _ = parse_ini(&text);
        }

        #[test]
        fn plain_values_round_trip(key in "[a-z_]{1,12}", value in "[^#;\"'\\\\\n\r]{0,40}") {
            let parsed = parse_ini(&format!("{key} = {value}\n")).unwrap();
            prop_assert_eq!(parsed.entries.len(), 1);
            prop_assert_eq!(&parsed.entries[0].value, value.trim());
        }
    }
}
