//! fleetctl's known-hosts file, in OpenSSH's format: `[@marker] patterns keytype base64 [comment]`
//! with plain patterns (`host`, `[host]:port`, `*`/`?` wildcards, `!` negation) and hashed
//! entries (`|1|base64(salt)|base64(HMAC-SHA1(salt, host))`, which fleet could not read).
//!
//! Hand-written: russh's own `known_hosts` module neither reports which line holds a changed
//! key (the warning must name it) nor lets the caller ask before adding one.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the file says of a host's key.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A line for the host holds this key.
    Known,
    /// The host is in the file, but with another key: the lines (1-based) that name it.
    Changed(Vec<usize>),
    /// The key is marked `@revoked` on this line.
    Revoked(usize),
    /// The file says nothing of the host.
    Unknown,
}

/// How a host is written in the file: `host` on port 22, `[host]:port` otherwise.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `key` of `host` (as [`host_name`] writes it) against the file's text.
pub fn check(text: &str, host: &str, key: &PublicKey) -> Verdict {
    let mut changed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(entry) = Entry::parse(line) else {
            continue;
        };
        if entry.marker.as_deref() == Some("@cert-authority") || !entry.matches(host) {
            continue;
        }
        let same = entry
            .key
            .as_ref()
            .is_some_and(|k| k.key_data() == key.key_data());
        if entry.marker.as_deref() == Some("@revoked") {
            if same {
                return Verdict::Revoked(i + 1);
            }
            continue;
        }
        if same {
            return Verdict::Known;
        }
        changed.push(i + 1);
    }
    if changed.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Changed(changed)
    }
}

/// The line [`append`] writes for a host.
pub fn line(host: &str, key: &PublicKey) -> String {
    let openssh = key.to_openssh().unwrap_or_default();
    // `to_openssh` ends with the key's comment, which is not part of the entry.
    let mut parts = openssh.split_whitespace();
    let (kind, data) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    format!("{host} {kind} {data}")
}

/// Adds a host's key to the file, creating it (and its directory, private to the user).
pub fn append(path: &Path, host: &str, key: &PublicKey) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let existing = std::fs::read(path)?;
    let sep = if existing.last().is_some_and(|b| *b != b'\n') {
        "\n"
    } else {
        ""
    };
    writeln!(file, "{sep}{}", line(host, key))
}

/// `~/` at the start of a path is the user's home (as fleet's default `~/.fleetctl/known_hosts`).
pub fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => PathBuf::from(path),
        },
        None => PathBuf::from(path),
    }
}

struct Entry {
    marker: Option<String>,
    patterns: String,
    /// `None` for a key type this build cannot read: it still counts as "the host is known".
    key: Option<PublicKey>,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next()?;
        let marker = if first.starts_with('@') {
            let m = first.to_string();
            first = fields.next()?;
            Some(m)
        } else {
            None
        };
        let kind = fields.next()?;
        let data = fields.next()?;
        Some(Entry {
            marker,
            patterns: first.to_string(),
            key: PublicKey::from_openssh(&format!("{kind} {data}")).ok(),
        })
    }

    /// OpenSSH's rule: some pattern matches and no negated one does.
    fn matches(&self, host: &str) -> bool {
        if let Some(hashed) = self.patterns.strip_prefix("|1|") {
            return hashed_matches(hashed, host);
        }
        let mut any = false;
        for pattern in self.patterns.split(',') {
            if let Some(negated) = pattern.strip_prefix('!') {
                if wildcard(negated.as_bytes(), host.as_bytes()) {
                    return false;
                }
            } else if wildcard(pattern.as_bytes(), host.as_bytes()) {
                any = true;
            }
        }
        any
    }
}

/// `salt|hash`, both base64: the host matches if HMAC-SHA1 keyed with the salt gives the hash.
fn hashed_matches(hashed: &str, host: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(host.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH's `match_pattern`: `*` any run, `?` one character, case-insensitive.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| wildcard(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && wildcard(rest, &text[1..]),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| t.eq_ignore_ascii_case(c) && wildcard(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMp+3lPshsOFMvj6w9kSxNav/uyphc2XSYx9dml2MZpb";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINr440FbMghDgidPCRscMZwlrPOYfnKH9CxJ3r6LKywb";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).expect("test key")
    }

    /// `|1|salt|hash` for `host` with a fixed salt, as `ssh-keygen -H` writes it.
    fn hashed(host: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).expect("hmac");
        mac.update(host.as_bytes());
        format!(
            "|1|{}|{}",
            b64.encode(salt),
            b64.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn verdicts() {
        let (k1, k2) = (key(ED1), key(ED2));
        let cases: Vec<(String, &str, &PublicKey, Verdict)> = vec![
            (format!("10.0.0.1 {ED1}\n"), "10.0.0.1", &k1, Verdict::Known),
            (
                format!("10.0.0.1 {ED1}\n"),
                "10.0.0.2",
                &k1,
                Verdict::Unknown,
            ),
            (
                format!("10.0.0.1 {ED1}\n"),
                "10.0.0.1",
                &k2,
                Verdict::Changed(vec![1]),
            ),
            (
                format!("# c\n\n[h]:2222 {ED1} me@x\n"),
                "[h]:2222",
                &k1,
                Verdict::Known,
            ),
            (format!("[h]:2222 {ED1}\n"), "h", &k1, Verdict::Unknown),
            (format!("a,b,c {ED1}\n"), "b", &k1, Verdict::Known),
            (
                format!("*.example.com {ED1}\n"),
                "web.EXAMPLE.com",
                &k1,
                Verdict::Known,
            ),
            (format!("10.0.0.? {ED1}\n"), "10.0.0.7", &k1, Verdict::Known),
            (
                format!("10.0.0.? {ED1}\n"),
                "10.0.0.17",
                &k1,
                Verdict::Unknown,
            ),
            (format!("*,!bad {ED1}\n"), "bad", &k1, Verdict::Unknown),
            (
                format!("{} {ED1}\n", hashed("[h]:2222")),
                "[h]:2222",
                &k1,
                Verdict::Known,
            ),
            (
                format!("{} {ED1}\n", hashed("[h]:2222")),
                "[h]:2223",
                &k1,
                Verdict::Unknown,
            ),
            (
                format!("{} {ED1}\n", hashed("h")),
                "h",
                &k2,
                Verdict::Changed(vec![1]),
            ),
            (
                format!("x {ED2}\nh {ED2}\nh {ED1}\n"),
                "h",
                &k1,
                Verdict::Known,
            ),
            (
                format!("h {ED2}\nx {ED1}\nh {ED2}\n"),
                "h",
                &k1,
                Verdict::Changed(vec![1, 3]),
            ),
            (format!("@revoked h {ED1}\n"), "h", &k1, Verdict::Revoked(1)),
            (format!("@revoked h {ED2}\n"), "h", &k1, Verdict::Unknown),
            (
                format!("@cert-authority h {ED2}\n"),
                "h",
                &k1,
                Verdict::Unknown,
            ),
            (
                "garbage\nh\n|1|x|y ssh-ed25519 AAAA\n".to_string(),
                "h",
                &k1,
                Verdict::Unknown,
            ),
        ];
        for (text, host, key, want) in cases {
            assert_eq!(check(&text, host, key), want, "{host} in\n{text}");
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(host_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn appended_lines_are_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/known_hosts");
        let k1 = key(ED1);
        append(&path, "[h]:2222", &k1).expect("append");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).expect("read").trim_end(),
        )
        .expect("drop the newline");
        append(&path, "other", &key(ED2)).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(check(&text, "[h]:2222", &k1), Verdict::Known);
        assert_eq!(check(&text, "other", &k1), Verdict::Changed(vec![2]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn home_is_expanded() {
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                expand_home("~/.fleetctl/kh"),
                PathBuf::from(home).join(".fleetctl/kh")
            );
        }
        assert_eq!(expand_home("/etc/kh"), PathBuf::from("/etc/kh"));
    }
}
