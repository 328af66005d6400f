//! Who may do what on the API: the tokens file (`api_tokens_file`), the peer a request came
//! from, and the role each route needs.
//!
//! Unix sockets are trusted by their file permissions (fleet's model: the local fleetctl and
//! tools). On TCP, with a tokens file every request needs `Authorization: Bearer TOKEN` and the
//! token's role must allow the route; without one, a listener is only served when TLS verifies
//! client certificates (they get `admin`), it is on loopback, or the operator said
//! `api_insecure_tcp` (see [`crate::listen::check_exposure`]).

use crate::error::ApiError;
use crate::routes::Route;
use api::auth::{token_digest, Role, HASH_PREFIX};
use axum::http::StatusCode;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// One line of the tokens file.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

impl std::fmt::Debug for Entry {
    // Hand-written so that digests stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.role)
    }
}

/// The parsed tokens file: `NAME ROLE sha256:HEX` per line, `#` comments and blank lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// A problem of the tokens file, naming the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct TokensError {
    pub line: usize,
    pub problem: String,
}

impl Tokens {
    /// Parses the text of a tokens file.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fail = |problem: String| TokensError { line, problem };
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(fail(format!(
                    "want `NAME ROLE sha256:HEX` (3 fields), found {}; make lines with `fleetctl token new`",
                    fields.len()
                )));
            };
            let role: Role = role.parse().map_err(fail)?;
            let hex = hash.strip_prefix(HASH_PREFIX).ok_or_else(|| {
                fail(format!(
                    "the third field must start with {HASH_PREFIX} (the file stores token hashes, never tokens)"
                ))
            })?;
            let digest = decode_hex32(hex)
                .ok_or_else(|| fail("the hash must be 64 hex digits after sha256:".to_string()))?;
            if let Some(other) = entries.iter().find(|e| e.name == name) {
                return Err(fail(format!(
                    "the name {name:?} is used twice (also for a {} token); names must be unique so logs and errors tell tokens apart",
                    other.role
                )));
            }
            if entries.iter().any(|e| e.digest == digest) {
                return Err(fail(format!(
                    "token {name:?} has the same hash as an earlier line: one token, one line"
                )));
            }
            entries.push(Entry {
                name: name.to_string(),
                role,
                digest,
            });
        }
        Ok(Tokens { entries })
    }

    /// Reads and parses `path`; the error names the file, the line and the problem.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("tokens file {} {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name and role of `token`, if the file lists it. Every entry is compared in
    /// constant time, so the time taken says nothing about how close a guess was.
    pub fn lookup(&self, token: &str) -> Option<(&str, Role)> {
        use subtle::ConstantTimeEq;
        let digest = token_digest(token);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some((e.name.as_str(), e.role));
            }
        }
        found
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Where a request came from, as the listener that accepted it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket: trusted by file permissions.
    Local,
    /// TCP; `client_verified` when TLS verified a client certificate against
    /// `api_tls_client_ca` (the handshake refuses connections without one then).
    Tcp { client_verified: bool },
}

/// The API's access settings; the tokens can be replaced while fleetd runs (SIGHUP).
#[derive(Debug, Default)]
pub struct Access {
    tokens: RwLock<Option<Arc<Tokens>>>,
}

impl Access {
    pub fn new(tokens: Option<Tokens>) -> Access {
        Access {
            tokens: RwLock::new(tokens.map(Arc::new)),
        }
    }

    /// Replaces the tokens (`None`: no tokens file).
    pub fn set_tokens(&self, tokens: Option<Tokens>) {
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokens.map(Arc::new);
    }

    pub fn has_tokens(&self) -> bool {
        self.tokens().is_some()
    }

    fn tokens(&self) -> Option<Arc<Tokens>> {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a request for `route` (`what` names it: `PUT /fleet/v1/units/x`) from `peer`
    /// with `authorization` (the header) may go on; else the 401 or 403 to answer.
    pub fn check(
        &self,
        peer: Peer,
        route: &Route,
        what: &str,
        authorization: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        let Peer::Tcp { .. } = peer else {
            return Ok(());
        };
        // Listeners without tokens were vetted at start (TLS client certificates, loopback, or
        // api_insecure_tcp), so what reaches here may do everything.
        let Some(tokens) = self.tokens() else {
            return Ok(());
        };
        let token = match authorization {
            None => return Err(unauthorized(
                "this API needs a token: send `Authorization: Bearer TOKEN` (fleetctl --token or FLEETCTL_TOKEN); an operator makes one with `fleetctl token new`",
            )),
            Some(h) => match std::str::from_utf8(h).ok().and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            }) {
                Some(t) if !t.trim().is_empty() => t.trim(),
                _ => return Err(unauthorized(
                    "the Authorization header is not `Bearer TOKEN`; send the token as a bearer token (fleetctl --token)",
                )),
            },
        };
        let Some((name, role)) = tokens.lookup(token) else {
            return Err(unauthorized(
                "unknown token: fleetd's api_tokens_file does not list it (mistyped, revoked, or for another cluster); ask the operator for a valid one",
            ));
        };
        let needed = needed_role(route);
        if role.allows(needed) {
            tracing::debug!(token = name, %role, request = what, "authorized");
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {name:?} has role {role}, but {what} needs role {needed} (role too weak); ask the operator for a {needed} token"),
            ))
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The weakest role that may make a request of `route`.
pub fn needed_role(route: &Route) -> Role {
    match route {
        // A rollout decides which content of a unit runs where: as strong as replacing it.
        Route::UnitPut(_)
        | Route::UnitDelete(_)
        | Route::RolloutPut(_)
        | Route::RolloutDelete(_) => Role::Write,
        // Draining moves every unit of a machine: as strong as changing its metadata.
        Route::MachinesPatch | Route::DrainPut(_) | Route::DrainDelete(_) => Role::Admin,
        // Reads, plans (a POST that only asks where units would go), and the answers that
        // refuse a request without changing anything.
        Route::PlanGet
        | Route::PlanPost
        | Route::Why(_)
        | Route::Output(_)
        | Route::DrainList
        | Route::DrainGet(_)
        | Route::RolloutGet(_)
        | Route::Events
        | Route::Leases
        | Route::Ui(_)
        | Route::Discovery
        | Route::DiscoveryNotGet
        | Route::MachinesList
        | Route::UnitsList
        | Route::UnitGet(_)
        | Route::StatesList
        | Route::StateGet(_)
        | Route::Metrics
        | Route::MethodNotAllowed(_)
        | Route::NotFound
        | Route::InvalidPath => Role::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::auth::token_hash;

    fn file() -> String {
        format!(
            "# fleet API tokens\n\nreader read {}\nci write {}  # the CI job\nops admin {}\n",
            token_hash("r-token"),
            token_hash("w-token"),
            token_hash("a-token")
        )
    }

    #[test]
    fn parses_names_roles_and_hashes() {
        let t = Tokens::parse(&file()).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup("r-token"), Some(("reader", Role::Read)));
        assert_eq!(t.lookup("w-token"), Some(("ci", Role::Write)));
        assert_eq!(t.lookup(" a-token\n"), Some(("ops", Role::Admin)));
        assert_eq!(t.lookup("nope"), None);
        assert!(Tokens::parse("# only comments\n\n").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_the_line_and_problem() {
        let h = token_hash("x");
        for (text, line, needle) in [
            ("a read".to_string(), 1, "3 fields"),
            (format!("\na root {h}"), 2, "unknown role"),
            ("a read x".into(), 1, "sha256:"),
            ("a read sha256:abcd".into(), 1, "64 hex digits"),
            (
                format!("a read sha256:{}", "g".repeat(64)),
                1,
                "64 hex digits",
            ),
            (
                format!("a read {h}\na write {}", token_hash("y")),
                2,
                "used twice",
            ),
            (format!("a read {h}\nb write {h}"), 2, "same hash"),
        ] {
            let err = Tokens::parse(&text).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.problem.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "x y").unwrap();
        let err = Tokens::load(&p).unwrap_err();
        assert!(
            err.contains(&p.display().to_string()) && err.contains("line 1"),
            "{err}"
        );
        let err = Tokens::load(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn roles_gate_routes() {
        let access = Access::new(Some(Tokens::parse(&file()).unwrap()));
        let tcp = Peer::Tcp {
            client_verified: false,
        };
        let put = Route::UnitPut("a.service".into());
        let bearer = |t: &str| format!("Bearer {t}");
        let status = |peer, r: &Route, h: Option<String>| {
            access
                .check(peer, r, "REQ", h.as_deref().map(str::as_bytes))
                .err()
                .map(|e| e.status.as_u16())
        };
        assert_eq!(status(tcp, &Route::UnitsList, None), Some(401));
        assert_eq!(
            status(tcp, &Route::UnitsList, Some(bearer("bad"))),
            Some(401)
        );
        assert_eq!(
            status(tcp, &Route::UnitsList, Some("Basic x".into())),
            Some(401)
        );
        assert_eq!(
            status(tcp, &Route::UnitsList, Some(bearer("r-token"))),
            None
        );
        assert_eq!(status(tcp, &put, Some(bearer("r-token"))), Some(403));
        // A plan changes nothing, so a read token may ask for one, even by POST; events are reads.
        for r in [
            Route::PlanPost,
            Route::PlanGet,
            Route::Why("a.service".into()),
            Route::Output("a.service".into()),
            Route::Events,
            Route::Leases,
            Route::Ui(String::new()),
        ] {
            assert!(r.changes_nothing());
            assert_eq!(status(tcp, &r, Some(bearer("r-token"))), None, "{r:?}");
        }
        assert_eq!(status(tcp, &put, Some(bearer("w-token"))), None);
        assert_eq!(
            status(tcp, &Route::MachinesPatch, Some(bearer("w-token"))),
            Some(403)
        );
        assert_eq!(
            status(tcp, &Route::MachinesPatch, Some(bearer("a-token"))),
            None
        );
        // Draining a machine moves its units: admin only; reading drains is a read.
        for r in [
            Route::DrainPut("m1".into()),
            Route::DrainDelete("m1".into()),
        ] {
            assert_eq!(status(tcp, &r, Some(bearer("w-token"))), Some(403), "{r:?}");
            assert_eq!(status(tcp, &r, Some(bearer("a-token"))), None, "{r:?}");
        }
        for r in [Route::DrainList, Route::DrainGet("m1".into())] {
            assert_eq!(status(tcp, &r, Some(bearer("r-token"))), None, "{r:?}");
        }
        // A rollout decides which content of a unit runs where: write, as a replace is.
        for r in [
            Route::RolloutPut("g.service".into()),
            Route::RolloutDelete("g.service".into()),
        ] {
            assert_eq!(status(tcp, &r, Some(bearer("r-token"))), Some(403), "{r:?}");
            assert_eq!(status(tcp, &r, Some(bearer("w-token"))), None, "{r:?}");
        }
        let get = Route::RolloutGet("g.service".into());
        assert_eq!(status(tcp, &get, Some(bearer("r-token"))), None);
        // Unix sockets are trusted by permissions.
        assert_eq!(status(Peer::Local, &Route::MachinesPatch, None), None);
        let err = access
            .check(
                tcp,
                &put,
                "PUT /fleet/v1/units/a.service",
                Some(bearer("r-token").as_bytes()),
            )
            .unwrap_err();
        assert!(
            err.message.contains("\"reader\"")
                && err.message.contains("role read")
                && err.message.contains("needs role write"),
            "{}",
            err.message
        );
        // Without a tokens file, TCP listeners were vetted at start.
        assert_eq!(Access::default().check(tcp, &put, "x", None), Ok(()));
        access.set_tokens(None);
        assert_eq!(status(tcp, &put, None), None);
    }
}
