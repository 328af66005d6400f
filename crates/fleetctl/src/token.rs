//! `fleetctl token new`: a random API token and the line of fleetd's `api_tokens_file` that
//! lets it in. The hashing and the roles are `api::auth`'s, which fleetd checks with.

use api::auth::{generate_token, token_hash, Role};

/// The token and its tokens-file line, or why none could be made.
pub fn new_token(name: &str, role: &str) -> Result<(String, String), String> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '#') {
        return Err(format!(
            "--name {name:?}: want a non-empty name without spaces or '#' (it names the token in fleetd's logs and errors)"
        ));
    }
    let role: Role = role.parse().map_err(|e| format!("--role: {e}"))?;
    let token = generate_token()?;
    let line = format!("{name} {role} {}", token_hash(&token));
    Ok((token, line))
}

/// Runs `fleetctl token new`: the two lines on stdout, what to do with them on stderr.
pub fn run_new(name: &str, role: &str) -> i32 {
    match new_token(name, role) {
        Ok((token, line)) => {
            println!("{token}\n{line}");
            eprintln!("fleetctl: line 1 is the token (shown only now: keep it secret, give it to the client as --token or FLEETCTL_TOKEN); add line 2 to fleetd's api_tokens_file and reload fleetd (SIGHUP)");
            0
        }
        Err(e) => {
            eprintln!("fleetctl: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_holds_name_role_and_hash_of_the_token() {
        let (token, line) = new_token("ci", "write").unwrap();
        assert_eq!(line, format!("ci write {}", token_hash(&token)));
        assert!(new_token("two words", "read").is_err());
        assert!(new_token("", "read").is_err());
        assert!(new_token("x", "root")
            .unwrap_err()
            .contains("read, write or admin"));
    }
}
