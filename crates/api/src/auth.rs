//! What fleetd's API tokens are: a role each, and the form in which the tokens file stores
//! them (a SHA-256 digest, never the token). Shared by fleetd (which checks them) and fleetctl
//! (which makes them with `fleetctl token new`).
//!
//! ```
//! use api::auth::{token_hash, Role};
//! let line = format!("ci {} {}", Role::Write, token_hash("the-secret-token"));
//! assert!(line.starts_with("ci write sha256:"));
//! assert!(Role::Admin.allows(Role::Read));
//! ```

use std::fmt;
use std::str::FromStr;

/// What a token may do, weakest first: `read` may only GET, `write` may also create, change
/// and destroy units, `admin` may also change machine metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    /// Whether a token of this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: want read, write or admin")),
        }
    }
}

/// The prefix of a stored token digest.
pub const HASH_PREFIX: &str = "sha256:";

/// The raw SHA-256 digest of `token`.
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:HEX` of `token`, as the tokens file stores it.
///
/// A plain hash (no salt, no slow KDF) is enough because tokens are 256 random bits, not
/// passwords: there is no dictionary to try, and a fast hash keeps every request cheap.
pub fn token_hash(token: &str) -> String {
    let mut s = String::from(HASH_PREFIX);
    for b in token_digest(token) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new random token: 32 bytes from the system's generator, hex, with a `fleet_` prefix so
/// that secret scanners and people recognise it.
pub fn generate_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let mut s = String::from("fleet_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Write.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
        for r in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("read, write or admin"));
    }

    #[test]
    fn hash_is_sha256_hex() {
        // sha256("abc"), a published test vector.
        assert_eq!(
            token_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "fleet_".len() + 64);
    }
}
