//! systemd's quoting rules for command lines and `Environment=` values.

/// Why a value does not split into words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("unterminated {quote} quote")]
    Unterminated { quote: char },
    #[error("bad escape \\{escape}: expected {digits} digits")]
    ShortEscape { escape: char, digits: usize },
    /// The escape names no character (`kind`: `\x`, `\u`, `\U` or `octal`).
    #[error("bad {kind} escape")]
    NotAChar { kind: &'static str },
    #[error("\\000 (NUL) is not allowed")]
    Nul,
}

/// Splits a command line (or an `Environment=` value) into words as systemd does: whitespace
/// separates, `"..."` and `'...'` quote (also inside a word), C escapes are decoded, a
/// backslash-newline continuation counts as whitespace. A lone `;` word is returned as `;`
/// and an escaped one as `\;` so that the caller can tell them apart.
pub fn split_words(s: &str) -> Result<Vec<String>, WordError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(e) = chars.next() else {
                    return Err(WordError::TrailingBackslash);
                };
                if e == '\n' {
                    // Continuation line kept by the unit-file parser.
                    if quote.is_none() {
                        if in_word {
                            words.push(std::mem::take(&mut cur));
                            in_word = false;
                        }
                    } else {
                        cur.push(' ');
                    }
                    continue;
                }
                in_word = true;
                if e == ';'
                    && quote.is_none()
                    && cur.is_empty()
                    && matches!(chars.peek(), None | Some(' ' | '\t' | '\n'))
                {
                    cur.push_str("\\;");
                    continue;
                }
                cur.push(unescape(e, &mut chars)?);
            }
            '"' | '\'' if quote.is_none() => {
                quote = Some(c);
                in_word = true;
            }
            q if Some(q) == quote => quote = None,
            ' ' | '\t' | '\n' | '\r' if quote.is_none() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                cur.push(other);
            }
        }
    }
    if let Some(q) = quote {
        return Err(WordError::Unterminated { quote: q });
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unescape(
    e: char,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<char, WordError> {
    let mut take_digits = |n: usize, radix: u32| -> Result<u32, WordError> {
        let mut v = 0u32;
        for _ in 0..n {
            let d = chars
                .next()
                .and_then(|c| c.to_digit(radix))
                .ok_or(WordError::ShortEscape {
                    escape: e,
                    digits: n,
                })?;
            v = v * radix + d;
        }
        Ok(v)
    };
    let c = match e {
        'a' => '\x07',
        'b' => '\x08',
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        's' => ' ',
        'x' => char::from_u32(take_digits(2, 16)?).ok_or(WordError::NotAChar { kind: "\\x" })?,
        'u' => char::from_u32(take_digits(4, 16)?).ok_or(WordError::NotAChar { kind: "\\u" })?,
        'U' => char::from_u32(take_digits(8, 16)?).ok_or(WordError::NotAChar { kind: "\\U" })?,
        '0'..='7' => {
            let rest = take_digits(2, 8)?;
            let v = (e as u32 - '0' as u32) * 64 + rest;
            if v == 0 {
                return Err(WordError::Nul);
            }
            char::from_u32(v).ok_or(WordError::NotAChar { kind: "octal" })?
        }
        other => other,
    };
    Ok(c)
}
