//! Parsers for single option values. Each returns the reason as a plain sentence; the
//! caller adds the option, the value and where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::duration::parse_go_duration;

pub(crate) type Reason = String;

/// Go's `strconv.ParseBool`, which fleet's flag package used for boolean options.
pub(crate) fn parse_bool(s: &str) -> Result<bool, Reason> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(
            "expected a boolean: true or false (also 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
                .into(),
        ),
    }
}

/// A decimal integer. Go's flag package also took `0x10` and octal `010`; nobody writes
/// those in fleet.conf, and `010` meaning 8 would surprise, so only decimal is accepted.
pub(crate) fn parse_int<T: std::str::FromStr<Err = std::num::ParseIntError>>(
    s: &str,
) -> Result<T, Reason> {
    s.parse::<T>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            "number out of range".to_string()
        }
        _ => "expected a whole number".to_string(),
    })
}

/// Fleet's float-seconds options (`etcd_request_timeout=1.0`). Must be positive: a zero
/// reconcile interval would spin and a zero timeout would fail every request.
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, Reason> {
    let secs: f64 = s
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 1.5".to_string())?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("expected a number of seconds greater than zero, e.g. 1.5".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "number of seconds too large".to_string())
}

/// A Go duration string that must not be zero (`agent_ttl`).
pub(crate) fn parse_positive_duration(s: &str) -> Result<Duration, Reason> {
    let d = parse_go_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero, e.g. 30s".into());
    }
    Ok(d)
}

/// Fleet's `pkg.StringSlice`: comma-separated, each item stripped of surrounding spaces,
/// `[`, `]` and quotes, so both `a,b` and `["a", "b"]` work. Empty items are dropped.
pub(crate) fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|item| {
            item.trim_matches(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '"' | '\''))
        })
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reason given when `registry=etcd` and `etcd_servers` is empty (checked once both
/// options are known: with `registry=embedded` an empty list is fine).
pub(crate) const NO_ETCD_SERVERS: &str =
    "no etcd server given; list URLs like http://127.0.0.1:2379, or set registry=embedded";

/// `etcd_servers`: `http://` or `https://` URLs with a host.
pub(crate) fn parse_etcd_servers(s: &str) -> Result<Vec<String>, Reason> {
    let servers = parse_list(s);
    for server in &servers {
        let rest = server
            .strip_prefix("http://")
            .or_else(|| server.strip_prefix("https://"))
            .ok_or_else(|| {
                format!("{server:?} is not an http:// or https:// URL, e.g. http://10.0.0.1:2379")
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{server:?} has no host, e.g. http://10.0.0.1:2379"));
        }
    }
    Ok(servers)
}

/// Empty means "not set", as fleet's empty-string defaults did.
pub(crate) fn parse_optional_string(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub(crate) fn parse_optional_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Directories fleetd writes into: relative paths would depend on the working directory.
pub(crate) fn parse_absolute_path(s: &str) -> Result<PathBuf, Reason> {
    if !s.starts_with('/') {
        return Err("expected an absolute path (starting with /)".into());
    }
    Ok(PathBuf::from(s))
}

pub(crate) fn parse_public_ip(s: &str) -> Result<Option<IpAddr>, Reason> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        "expected an IPv4 or IPv6 address, e.g. 10.0.0.5 (or empty to detect it)".into()
    })
}

/// `k=v,k2=v2`, whitespace around keys and values trimmed, the last duplicate wins (as in
/// fleet). Unlike fleet, a pair without `=` or with an empty key is an error instead of
/// being dropped silently: a machine missing metadata gets units it should not.
/// Returns the map and the keys given more than once.
pub(crate) fn parse_metadata(s: &str) -> Result<(BTreeMap<String, String>, Vec<String>), Reason> {
    let mut map = BTreeMap::new();
    let mut duplicates = Vec::new();
    for pair in s.split(',') {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "pair {:?} has no \"=\"; write key=value pairs separated by commas, e.g. region=us-west,az=us-west-1",
                pair.trim()
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("pair {:?} has an empty key", pair.trim()));
        }
        if map
            .insert(key.to_string(), value.trim().to_string())
            .is_some()
            && !duplicates.iter().any(|d| d == key)
        {
            duplicates.push(key.to_string());
        }
    }
    Ok((map, duplicates))
}

/// The identity of this machine in the registry; it becomes part of registry keys.
pub fn validate_machine_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("machine ID is empty".into());
    }
    if id.contains('/') {
        return Err("machine ID must not contain \"/\"".into());
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("machine ID must not contain whitespace or control characters".into());
    }
    Ok(())
}

pub(crate) fn parse_machine_id(s: &str) -> Result<Option<String>, Reason> {
    if s.is_empty() {
        return Ok(None);
    }
    validate_machine_id(s)?;
    Ok(Some(s.to_string()))
}

/// Where the HTTP API listens (`api_listen`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// `unix:///var/run/fleet.sock`
    Unix(PathBuf),
    /// `tcp://HOST:PORT`; kept as `HOST:PORT` text (a name such as `localhost:54728` or
    /// `[::1]:54728`) so it can go straight to `tokio::net::TcpListener::bind`.
    Tcp(String),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix://{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket needs an absolute path, e.g. unix:///var/run/fleet.sock"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            let bad = || format!("{s:?}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:54728");
            let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
            port.parse::<u16>().map_err(|_| bad())?;
            let host_ok = if let Some(inner) = host.strip_prefix('[') {
                inner
                    .strip_suffix(']')
                    .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
            } else {
                !host.is_empty() && !host.contains(['/', '[', ']', ':'])
            };
            if !host_ok {
                return Err(bad());
            }
            return Ok(ListenAddr::Tcp(addr.to_string()));
        }
        Err(format!(
            "{s:?}: unknown scheme; use unix:///path/to/socket or tcp://HOST:PORT"
        ))
    }
}

/// Comma list of listen addresses. Empty means no listener of our own (only sockets
/// passed by systemd, if any).
pub(crate) fn parse_listen_list(s: &str) -> Result<Vec<ListenAddr>, Reason> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_are_go_parse_bool() {
        for s in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(s), Ok(true), "{s}");
        }
        for s in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(s), Ok(false), "{s}");
        }
        for s in ["", "yes", "no", "tRUE", "on", " true", "2"] {
            assert!(parse_bool(s).is_err(), "{s}");
        }
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int::<i32>("-3"), Ok(-3));
        assert_eq!(parse_int::<u16>("65535"), Ok(65535));
        assert_eq!(parse_int::<u16>("65536"), Err("number out of range".into()));
        assert_eq!(
            parse_int::<i32>("0x10"),
            Err("expected a whole number".into())
        );
        assert_eq!(
            parse_int::<i32>("1.0"),
            Err("expected a whole number".into())
        );
    }

    #[test]
    fn seconds() {
        let ok: &[(&str, Duration)] = &[
            ("1.0", Duration::from_secs(1)),
            ("2", Duration::from_secs(2)),
            (".25", Duration::from_millis(250)),
            ("1e1", Duration::from_secs(10)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_seconds(s), Ok(*want), "{s}");
        }
        for s in ["0", "-1", "", "1s", "NaN", "inf", "1e300"] {
            assert!(parse_seconds(s).is_err(), "{s}");
        }
    }

    #[test]
    fn lists_trim_like_fleet() {
        let table: &[(&str, &[&str])] = &[
            (
                "http://a:2379,http://b:2379",
                &["http://a:2379", "http://b:2379"],
            ),
            (
                r#"["http://a:2379", "http://b:2379"]"#,
                &["http://a:2379", "http://b:2379"],
            ),
            (
                " http://a:2379 , 'http://b:2379' ",
                &["http://a:2379", "http://b:2379"],
            ),
            ("http://a:2379,,", &["http://a:2379"]),
            ("", &[]),
            ("[]", &[]),
        ];
        for (s, want) in table {
            assert_eq!(parse_list(s), *want, "{s}");
        }
    }

    #[test]
    fn etcd_servers_must_be_urls() {
        assert!(parse_etcd_servers("https://a:2379").is_ok());
        assert_eq!(parse_etcd_servers("[]"), Ok(vec![]));
        for s in ["a:2379", "unix:///x", "http://", "http:///x"] {
            assert!(parse_etcd_servers(s).is_err(), "{s}");
        }
    }

    #[test]
    fn metadata_pairs() {
        let (map, dups) =
            parse_metadata(" region = us-west , az=us-west-1,empty=,eq=a=b,").unwrap();
        let want: BTreeMap<String, String> = [
            ("region", "us-west"),
            ("az", "us-west-1"),
            ("empty", ""),
            ("eq", "a=b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(map, want);
        assert!(dups.is_empty());

        let (map, dups) = parse_metadata("a=1,a=2").unwrap();
        assert_eq!(map.get("a").map(String::as_str), Some("2"));
        assert_eq!(dups, vec!["a".to_string()]);

        assert_eq!(parse_metadata("").unwrap().0.len(), 0);
        let err = parse_metadata("region=us,bogus").unwrap_err();
        assert!(err.contains("\"bogus\""), "{err}");
        assert!(parse_metadata("=v").is_err());
    }

    #[test]
    fn listen_addresses() {
        let ok: &[(&str, ListenAddr)] = &[
            (
                "unix:///var/run/fleet.sock",
                ListenAddr::Unix("/var/run/fleet.sock".into()),
            ),
            (
                "tcp://127.0.0.1:54728",
                ListenAddr::Tcp("127.0.0.1:54728".into()),
            ),
            ("tcp://localhost:0", ListenAddr::Tcp("localhost:0".into())),
            ("tcp://[::1]:54728", ListenAddr::Tcp("[::1]:54728".into())),
        ];
        for (s, want) in ok {
            let got: ListenAddr = s.parse().unwrap();
            assert_eq!(&got, want, "{s}");
            assert_eq!(got.to_string(), *s, "display round-trips");
        }
        for s in [
            "http://x:1",
            "/var/run/fleet.sock",
            "unix://relative.sock",
            "tcp://host",
            "tcp://:80",
            "tcp://host:99999",
            "tcp://::1:80",
            "tcp://[::1:80",
        ] {
            assert!(s.parse::<ListenAddr>().is_err(), "{s}");
        }
        assert_eq!(parse_listen_list("").unwrap(), vec![]);
        assert_eq!(
            parse_listen_list("unix:///a, tcp://h:1").unwrap(),
            vec![ListenAddr::Unix("/a".into()), ListenAddr::Tcp("h:1".into())]
        );
    }

    #[test]
    fn machine_ids() {
        assert!(validate_machine_id("0123456789abcdef0123456789abcdef").is_ok());
        assert!(validate_machine_id("test-machine-1").is_ok());
        for s in ["", "a/b", "a b", "a\tb", "a\n"] {
            assert!(validate_machine_id(s).is_err(), "{s:?}");
        }
    }
}
