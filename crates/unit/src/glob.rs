//! Go's `path.Match`, which fleet used for `Conflicts=` and `Replaces=` globs.
//!
//! ```
//! use unit::glob::path_match;
//! assert!(path_match("web@*.service", "web@1.service"));
//! assert!(!path_match("web@*", "web@1/x")); // `*` never crosses `/`
//! assert!(!path_match("web[", "web[")); // malformed: matches nothing
//! ```
//!
//! Hand-written because glob crates follow shell/fnmatch rules that differ from Go's
//! (`[^...]` negation, `\\` escapes, `*` never crossing `/`, and errors on malformed patterns).
//! This is a line-by-line port of Go's `path/match.go` (Go 1.16+, which checks the whole
//! pattern for syntax errors): literal characters compare bytes, `?` and classes consume one
//! UTF-8 character (an invalid byte counts as U+FFFD, as in Go).

/// The pattern is malformed (Go's `ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BadPattern;

/// Whether `name` matches the Go `path.Match` `pattern`. A malformed pattern matches nothing.
pub fn path_match(pattern: &str, name: &str) -> bool {
    go_match(pattern.as_bytes(), name.as_bytes()).unwrap_or(false)
}

/// The literal bytes every name matching `pattern` starts with (up to the first `*`, `?`, `[`
/// or `\`). Lets callers narrow candidates in a sorted name list before calling [`path_match`].
///
/// ```
/// assert_eq!(unit::glob::literal_prefix("conflict.*.service"), "conflict.");
/// ```
pub fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Whether `pattern` contains no glob syntax, so that it matches exactly the name equal to it.
pub fn is_literal(pattern: &str) -> bool {
    literal_prefix(pattern).len() == pattern.len()
}

fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        // Look for a match at the current position.
        let (t, ok, err) = match_chunk(chunk, name);
        // The last chunk must exhaust the name, otherwise the star may still help.
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if err.is_some() {
            return Err(BadPattern);
        }
        if star {
            // Look for a match skipping i+1 bytes; `*` cannot skip `/`.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                if ok {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                if err.is_some() {
                    return Err(BadPattern);
                }
                i += 1;
            }
        }
        // Before reporting no match, check that the rest of the pattern is well formed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            if match_chunk(chunk, b"").2.is_some() {
                return Err(BadPattern);
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off the leading stars and the chunk up to the next star outside a class.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let [b'*', rest @ ..] = pattern {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            // A trailing backslash is reported by match_chunk.
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Matches `chunk` against the start of `s`: (rest of s, matched, syntax error). After a
/// mismatch the whole chunk is still scanned so that syntax errors are always found.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> (&'a [u8], bool, Option<BadPattern>) {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0u32;
                if !failed {
                    let (ch, n) = decode_rune(s);
                    r = ch;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let lo = match get_esc(chunk) {
                        Ok((lo, rest)) => {
                            chunk = rest;
                            lo
                        }
                        Err(e) => return (b"", false, Some(e)),
                    };
                    let mut hi = lo;
                    // get_esc never leaves an empty chunk without an error.
                    if chunk.first() == Some(&b'-') {
                        match get_esc(&chunk[1..]) {
                            Ok((h, rest)) => {
                                chunk = rest;
                                hi = h;
                            }
                            Err(e) => return (b"", false, Some(e)),
                        }
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let lit = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&l) => l,
                        None => return (b"", false, Some(BadPattern)),
                    }
                } else {
                    c
                };
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        (b"", false, None)
    } else {
        (s, true, None)
    }
}

/// One (possibly escaped) character of a class range, and the rest of the chunk.
fn get_esc(mut chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (r, n) = decode_rune(chunk);
    if r == REPLACEMENT && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

const REPLACEMENT: u32 = 0xFFFD;

/// Go's `utf8.DecodeRune`: the first character and its length; (U+FFFD, 1) for an invalid
/// sequence, (U+FFFD, 0) for empty input.
fn decode_rune(s: &[u8]) -> (u32, usize) {
    let Some(&first) = s.first() else {
        return (REPLACEMENT, 0);
    };
    let width = match first {
        0x00..=0x7F => return (u32::from(first), 1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (REPLACEMENT, 1),
    };
    match s.get(..width).map(std::str::from_utf8) {
        Some(Ok(text)) => match text.chars().next() {
            Some(ch) => (u32::from(ch), width),
            None => (REPLACEMENT, 1),
        },
        _ => (REPLACEMENT, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's own `path/match_test.go` table (pattern, name, matches, malformed), plus the cases
    /// Go added when it began checking the whole pattern.
    const GO_TABLE: &[(&str, &str, bool, bool)] = &[
        ("abc", "abc", true, false),
        ("*", "abc", true, false),
        ("*c", "abc", true, false),
        ("a*", "a", true, false),
        ("a*", "abc", true, false),
        ("a*", "ab/c", false, false),
        ("a*/b", "abc/b", true, false),
        ("a*/b", "a/c/b", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
        ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
        ("ab[c]", "abc", true, false),
        ("ab[b-d]", "abc", true, false),
        ("ab[e-g]", "abc", false, false),
        ("ab[^c]", "abc", false, false),
        ("ab[^b-d]", "abc", false, false),
        ("ab[^e-g]", "abc", true, false),
        ("a\\*b", "a*b", true, false),
        ("a\\*b", "ab", false, false),
        ("a?b", "a☺b", true, false),
        ("a[^a]b", "a☺b", true, false),
        ("a???b", "a☺b", false, false),
        ("a[^a][^a][^a]b", "a☺b", false, false),
        ("[a-ζ]*", "α", true, false),
        ("*[a-ζ]", "A", false, false),
        ("a?b", "a/b", false, false),
        ("a*b", "a/b", false, false),
        ("[\\]a]", "]", true, false),
        ("[\\-]", "-", true, false),
        ("[x\\-]", "x", true, false),
        ("[x\\-]", "-", true, false),
        ("[x\\-]", "z", false, false),
        ("[\\-x]", "x", true, false),
        ("[\\-x]", "-", true, false),
        ("[\\-x]", "a", false, false),
        ("[]a]", "]", false, true),
        ("[-]", "-", false, true),
        ("[x-]", "x", false, true),
        ("[x-]", "-", false, true),
        ("[x-]", "z", false, true),
        ("[-x]", "x", false, true),
        ("[-x]", "-", false, true),
        ("[-x]", "a", false, true),
        ("\\", "a", false, true),
        ("[a-b-c]", "a", false, true),
        ("[", "a", false, true),
        ("[^", "a", false, true),
        ("[^bc", "a", false, true),
        ("a[", "a", false, true),
        ("a[", "ab", false, true),
        ("a[", "x", false, true),
        ("a/b[", "x", false, true),
        ("*x", "xxx", true, false),
    ];

    #[test]
    fn go_match_test_table() {
        for &(pattern, name, want, bad) in GO_TABLE {
            let got = go_match(pattern.as_bytes(), name.as_bytes());
            let want_result = if bad { Err(BadPattern) } else { Ok(want) };
            assert_eq!(got, want_result, "Match({pattern:?}, {name:?})");
            assert_eq!(
                path_match(pattern, name),
                want,
                "path_match({pattern:?}, {name:?})"
            );
        }
    }

    #[test]
    fn fleet_conflict_globs() {
        assert!(path_match("conflict.*.service", "conflict.3.service"));
        assert!(!path_match("conflict.*.service", "conflict.service"));
        assert!(path_match("web@*.service", "web@.service"));
        assert!(path_match("*", "anything.service"));
        assert!(!path_match("foo.service", "foo.service.bak"));
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("abc"), "abc");
        assert_eq!(literal_prefix("a\\*b"), "a");
        assert_eq!(literal_prefix("ab[c]"), "ab");
        assert_eq!(literal_prefix("?x"), "");
        assert!(is_literal("db.service"));
        assert!(!is_literal("db.*"));
    }

    proptest::proptest! {
        /// A pattern without glob syntax matches exactly itself; the literal prefix of any
        /// pattern starts every name it matches; no input panics.
        #[test]
        fn literal_patterns_match_only_themselves(p in "[a-z.@/-]{0,8}", n in "[a-z.@/-]{0,8}") {
            proptest::prop_assert_eq!(path_match(&p, &n), p == n);
        }

        #[test]
        fn prefix_is_necessary(p in "[a-c*?\\[\\]^\\\\/-]{0,8}", n in "[a-c/\\]\\[-]{0,8}") {
            if path_match(&p, &n) {
                proptest::prop_assert!(n.starts_with(literal_prefix(&p)));
            }
        }

        #[test]
        fn never_panics(p in "\\PC{0,10}", n in "\\PC{0,10}") {
            let _ = path_match(&p, &n);
        }
    }
}
