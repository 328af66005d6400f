//! `fleetctl import-v2`: brings the units of a Go fleet over to this cluster.
//!
//! A Go fleet keeps its units in etcd's v2 keyspace, which ours cannot share:
//! `P/job/<unit>/object` (`{"Name":…,"UnitHash":[20 numbers]}`), `P/job/<unit>/target-state`
//! and the bodies under `P/unit/<sha1 hex>` (`{"Raw":"<unit file>"}`). The import reads both
//! trees through etcd's v2 HTTP API (two recursive GETs; plain JSON, so no etcd v2 client
//! library) and creates each unit here with the same name, body (so the same hash) and desired
//! state. The units keep running under systemd while the Go fleetds are stopped and ours start,
//! and our agents adopt them.
//!
//! [`read_tree`] and [`decide`] are pure; [`run`] does the I/O.

use crate::client::Fleet;
use api::types::Unit;
use api::TargetState;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::BTreeMap;
use unit::{UnitFile, UnitHash};

/// One unit as the Go fleet stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct V2Unit {
    pub name: String,
    pub hash: UnitHash,
    pub desired: TargetState,
    pub file: UnitFile,
}

/// What the v2 keyspace holds: the units that can come over, and why others cannot.
#[derive(Debug, Default, PartialEq)]
pub struct Tree {
    pub units: Vec<V2Unit>,
    pub problems: Vec<String>,
}

/// An etcd v2 node (`GET /v2/keys/...?recursive=true`).
#[derive(Debug, Deserialize)]
struct Node {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Response {
    node: Node,
}

/// fleet's `jobModel`: Go encodes its `[20]byte` hash as an array of 20 numbers.
#[derive(Debug, Deserialize)]
struct JobObject {
    #[serde(rename = "UnitHash")]
    unit_hash: Vec<u8>,
}

/// fleet's `unitModel`.
#[derive(Debug, Deserialize)]
struct UnitBody {
    #[serde(rename = "Raw")]
    raw: String,
}

fn basename(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Reads the responses of `GET P/job` and `GET P/unit` (recursive; `None` where etcd said the
/// directory does not exist) into the units to bring over, in name order.
pub fn read_tree(jobs: Option<&[u8]>, bodies: Option<&[u8]>) -> Result<Tree, String> {
    let decode = |what: &str, bytes: &[u8]| {
        serde_json::from_slice::<Response>(bytes)
            .map_err(|e| format!("etcd's answer for {what} is not a v2 key listing: {e}"))
    };
    let mut raw_by_hash: BTreeMap<String, Result<String, String>> = BTreeMap::new();
    if let Some(bytes) = bodies {
        for node in decode("unit/", bytes)?.node.nodes {
            let body = node
                .value
                .as_deref()
                .ok_or_else(|| "it is a directory".to_string())
                .and_then(|v| {
                    serde_json::from_str::<UnitBody>(v)
                        .map(|b| b.raw)
                        .map_err(|e| e.to_string())
                });
            raw_by_hash.insert(basename(&node.key).to_string(), body);
        }
    }
    let mut tree = Tree::default();
    let Some(bytes) = jobs else {
        return Ok(tree);
    };
    let mut dirs = decode("job/", bytes)?.node.nodes;
    dirs.sort_by(|a, b| a.key.cmp(&b.key));
    for dir in dirs {
        let name = basename(&dir.key).to_string();
        match read_job(&name, &dir, &raw_by_hash) {
            Ok(Some(u)) => tree.units.push(u),
            Ok(None) => {}
            Err(why) => tree.problems.push(format!("{name}: {why}")),
        }
    }
    Ok(tree)
}

fn read_job(
    name: &str,
    dir: &Node,
    raw_by_hash: &BTreeMap<String, Result<String, String>>,
) -> Result<Option<V2Unit>, String> {
    let value = |leaf: &str| {
        dir.nodes
            .iter()
            .find(|n| basename(&n.key) == leaf)
            .and_then(|n| n.value.as_deref())
    };
    // fleet skipped a job directory without an object the same way: a unit half created or
    // half destroyed, with nothing to run.
    let Some(object) = value("object") else {
        return Ok(None);
    };
    let object: JobObject =
        serde_json::from_str(object).map_err(|e| format!("its job object is unreadable: {e}"))?;
    let bytes: [u8; 20] = object.unit_hash.try_into().map_err(|v: Vec<u8>| {
        format!("its job object holds a hash of {} bytes, not 20", v.len())
    })?;
    let hash = UnitHash(bytes);
    let desired = match value("target-state") {
        None => TargetState::Inactive,
        Some(s) => s
            .parse()
            .map_err(|_| format!("its target-state {s:?} is not inactive, loaded or launched"))?,
    };
    let raw = match raw_by_hash.get(&hash.to_string()) {
        None => return Err(format!("no body under unit/{hash}")),
        Some(Err(why)) => return Err(format!("its body unit/{hash} is unreadable: {why}")),
        Some(Ok(raw)) => raw,
    };
    let file = UnitFile::parse(raw).map_err(|e| format!("its body unit/{hash}: {e}"))?;
    if file.hash() != hash {
        return Err(format!(
            "its body hashes to {} here, not {hash} as fleet recorded; not imported, so that \
             nothing runs under a changed hash (please report this)",
            file.hash()
        ));
    }
    Ok(Some(V2Unit {
        name: name.to_string(),
        hash,
        desired,
        file,
    }))
}

/// What to do with one unit, given the hash of the unit of that name here (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Create,
    /// Here already with the same body: left as it is, desired state included.
    Same,
    /// Here with another body, and no `--replace`: reported and left alone.
    Differs,
    /// Here with another body, replaced (`--replace`).
    Replace,
}

pub fn decide(here: Option<UnitHash>, v2: UnitHash, replace: bool) -> Outcome {
    match here {
        None => Outcome::Create,
        Some(h) if h == v2 => Outcome::Same,
        Some(_) if replace => Outcome::Replace,
        Some(_) => Outcome::Differs,
    }
}

/// The line printed for one unit.
pub fn describe(u: &V2Unit, outcome: Outcome, dry_run: bool) -> String {
    let (short, desired) = (u.hash.short(), u.desired);
    match (outcome, dry_run) {
        (Outcome::Create, false) => format!("Imported {} ({short}, {desired})", u.name),
        (Outcome::Create, true) => format!("Would import {} ({short}, {desired})", u.name),
        (Outcome::Replace, false) => format!("Replaced {} ({short}, {desired})", u.name),
        (Outcome::Replace, true) => format!("Would replace {} ({short}, {desired})", u.name),
        (Outcome::Same, _) => format!("Skipped {}: already here with hash {short}", u.name),
        (Outcome::Differs, _) => format!(
            "Unit {} differs: here with another body than fleet's {short}; left alone (add \
             --replace to take fleet's)",
            u.name
        ),
    }
}

/// `ETCD_URL` (`http://host:port`) and the key prefix as one base for `/v2/keys` paths.
fn keys_base(etcd_url: &str, prefix: &str) -> Result<(String, String), String> {
    let rest = etcd_url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "{etcd_url}: give etcd's client URL as http://HOST:PORT (https is not supported by \
             import-v2; reach etcd on a plain listener or through an SSH port forward)"
        )
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("{etcd_url}: expected http://HOST:PORT"));
    }
    let prefix = format!("/{}/", prefix.trim_matches('/'));
    let prefix = if prefix == "//" {
        "/".to_string()
    } else {
        prefix
    };
    Ok((authority.to_string(), prefix))
}

/// GETs `path` from etcd; `None` for "Key not found" (a keyspace without units).
async fn get_keys(authority: &str, path: &str) -> Result<Option<Vec<u8>>, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot reach etcd at {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("etcd at {authority}: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request for {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("etcd at {authority}, GET {path}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("etcd at {authority}, GET {path}: {e}"))?
        .to_bytes()
        .to_vec();
    match status.as_u16() {
        200 => Ok(Some(body)),
        404 => {
            // etcd's "Key not found" is errorCode 100; any other 404 (a proxy, an etcd without
            // the v2 API) is not an empty keyspace.
            if String::from_utf8_lossy(&body).contains("\"errorCode\":100") {
                Ok(None)
            } else {
                Err(format!(
                    "etcd at {authority} has no v2 API (GET {path}: 404); start etcd with \
                     --enable-v2=true, as the Go fleet needed"
                ))
            }
        }
        _ => Err(format!(
            "etcd at {authority}, GET {path}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    }
}

/// Runs the import; returns the exit code: 1 when any unit did not come over as it is in the
/// Go fleet (a problem, a unit that differs, a failed create), 0 otherwise.
pub async fn run(fleet: &Fleet, etcd_url: &str, prefix: &str, dry_run: bool, replace: bool) -> i32 {
    let tree = match read_v2(etcd_url, prefix).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Error reading fleet's units from etcd: {e}");
            return 1;
        }
    };
    let here: BTreeMap<String, UnitHash> = match fleet.units().await {
        Ok(units) => units
            .iter()
            .map(|u| (u.name.clone(), u.file().hash()))
            .collect(),
        Err(e) => {
            eprintln!("Error retrieving list of units from repository: {e}");
            return 1;
        }
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for problem in &tree.problems {
        eprintln!("Cannot import {problem}");
    }
    for u in &tree.units {
        let outcome = decide(here.get(&u.name).copied(), u.hash, replace);
        if matches!(outcome, Outcome::Create | Outcome::Replace) && !dry_run {
            if let Err(e) = fleet
                .create_unit(&Unit::new(&u.name, &u.file, u.desired))
                .await
            {
                eprintln!("Error importing {}: {e}", u.name);
                *counts.entry("failed").or_default() += 1;
                continue;
            }
        }
        println!("{}", describe(u, outcome, dry_run));
        let key = match (outcome, dry_run) {
            (Outcome::Create, false) => "imported",
            (Outcome::Create, true) => "to import",
            (Outcome::Replace, false) => "replaced",
            (Outcome::Replace, true) => "to replace",
            (Outcome::Same, _) => "skipped",
            (Outcome::Differs, _) => "differing",
        };
        *counts.entry(key).or_default() += 1;
    }
    if !tree.problems.is_empty() {
        counts.insert("unreadable", tree.problems.len());
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "{} units in fleet's keyspace: {}",
        tree.units.len() + tree.problems.len(),
        if summary.is_empty() {
            "nothing to do".to_string()
        } else {
            summary.join(", ")
        }
    );
    let bad = ["failed", "differing", "unreadable"];
    i32::from(bad.iter().any(|k| counts.contains_key(k)))
}

async fn read_v2(etcd_url: &str, prefix: &str) -> Result<Tree, String> {
    let (authority, prefix) = keys_base(etcd_url, prefix)?;
    let jobs = get_keys(
        &authority,
        &format!("/v2/keys{prefix}job?recursive=true&sorted=true"),
    )
    .await?;
    let bodies = get_keys(&authority, &format!("/v2/keys{prefix}unit?recursive=true")).await?;
    read_tree(jobs.as_deref(), bodies.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "[Service]\nExecStart=/bin/sleep 100\n";
    /// fleet's own test vector for HELLO (`unit/unit_test.go:TestUnitHash`).
    const HELLO_HASH: &str = "1c6fb6f3684bafb0c173d8b8b957ceff031180c1";

    fn hash_array(hex: &str) -> String {
        let h: UnitHash = hex.parse().unwrap();
        format!("{:?}", h.0.to_vec()).replace(' ', "")
    }

    fn jobs(entries: &[(&str, Option<String>, Option<&str>)]) -> Vec<u8> {
        let dirs: Vec<serde_json::Value> = entries
            .iter()
            .map(|(name, object, target)| {
                let mut nodes = Vec::new();
                if let Some(o) = object {
                    nodes.push(serde_json::json!({"key": format!("/_coreos.com/fleet/job/{name}/object"), "value": o}));
                }
                if let Some(t) = target {
                    nodes.push(serde_json::json!({"key": format!("/_coreos.com/fleet/job/{name}/target-state"), "value": t}));
                }
                serde_json::json!({"key": format!("/_coreos.com/fleet/job/{name}"), "dir": true, "nodes": nodes})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"action": "get", "node": {"key": "/_coreos.com/fleet/job", "dir": true, "nodes": dirs}})).unwrap()
    }

    fn bodies(entries: &[(&str, &str)]) -> Vec<u8> {
        let nodes: Vec<serde_json::Value> = entries
            .iter()
            .map(|(hash, raw)| serde_json::json!({"key": format!("/_coreos.com/fleet/unit/{hash}"), "value": serde_json::json!({"Raw": raw}).to_string()}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"action": "get", "node": {"key": "/_coreos.com/fleet/unit", "dir": true, "nodes": nodes}})).unwrap()
    }

    fn object(name: &str, hex: &str) -> Option<String> {
        Some(format!(
            r#"{{"Name":"{name}","UnitHash":{}}}"#,
            hash_array(hex)
        ))
    }

    #[test]
    fn fleets_keyspace_reads_as_units_and_problems() {
        let other = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
        let other_hash = other.hash().to_string();
        let missing = "00".repeat(20);
        let jobs = jobs(&[
            (
                "b.service",
                object("b.service", HELLO_HASH),
                Some("launched"),
            ),
            ("a.service", object("a.service", &other_hash), None),
            ("half.service", None, Some("launched")),
            (
                "lost.service",
                object("lost.service", &missing),
                Some("loaded"),
            ),
            (
                "odd.service",
                object("odd.service", HELLO_HASH),
                Some("running"),
            ),
            (
                "short.service",
                Some(r#"{"Name":"x","UnitHash":[1,2]}"#.into()),
                None,
            ),
            (
                "liar.service",
                object("liar.service", &"11".repeat(20)),
                None,
            ),
        ]);
        let liar = "11".repeat(20);
        let bodies = bodies(&[
            (HELLO_HASH, HELLO),
            (&other_hash, "[Service]\nExecStart=/bin/true\n"),
            (&liar, HELLO),
        ]);
        let tree = read_tree(Some(&jobs), Some(&bodies)).unwrap();
        let got: Vec<(&str, String, TargetState)> = tree
            .units
            .iter()
            .map(|u| (u.name.as_str(), u.hash.to_string(), u.desired))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.service", other_hash.clone(), TargetState::Inactive),
                ("b.service", HELLO_HASH.to_string(), TargetState::Launched),
            ]
        );
        let problems = tree.problems.join("\n");
        for (unit, why) in [
            ("lost.service", "no body under unit/0000"),
            (
                "odd.service",
                "\"running\" is not inactive, loaded or launched",
            ),
            ("short.service", "hash of 2 bytes"),
            ("liar.service", "hashes to 1c6fb6f"),
        ] {
            assert!(
                tree.problems
                    .iter()
                    .any(|p| p.starts_with(unit) && p.contains(why)),
                "{unit}: {why} not in\n{problems}"
            );
        }
        assert_eq!(tree.problems.len(), 4, "{problems}");
    }

    #[test]
    fn an_empty_keyspace_is_no_units_and_garbage_is_an_error() {
        assert_eq!(read_tree(None, None).unwrap(), Tree::default());
        let e = read_tree(Some(b"<html>"), None).unwrap_err();
        assert!(e.contains("not a v2 key listing"), "{e}");
    }

    #[test]
    fn units_here_are_created_skipped_reported_or_replaced() {
        let a: UnitHash = HELLO_HASH.parse().unwrap();
        let b = UnitHash([7; 20]);
        for (here, replace, want) in [
            (None, false, Outcome::Create),
            (None, true, Outcome::Create),
            (Some(a), false, Outcome::Same),
            (Some(a), true, Outcome::Same),
            (Some(b), false, Outcome::Differs),
            (Some(b), true, Outcome::Replace),
        ] {
            assert_eq!(decide(here, a, replace), want, "{here:?} {replace}");
        }
    }

    #[test]
    fn etcd_urls_and_prefixes() {
        assert_eq!(
            keys_base("http://127.0.0.1:2379", "/_coreos.com/fleet/"),
            Ok(("127.0.0.1:2379".into(), "/_coreos.com/fleet/".into()))
        );
        assert_eq!(
            keys_base("http://h:1/", "custom"),
            Ok(("h:1".into(), "/custom/".into()))
        );
        assert_eq!(keys_base("http://h:1", "/"), Ok(("h:1".into(), "/".into())));
        assert!(keys_base("https://h:1", "/").unwrap_err().contains("https"));
        assert!(keys_base("h:1", "/").is_err());
        assert!(keys_base("http://h:1/v2", "/").is_err());
    }
}
