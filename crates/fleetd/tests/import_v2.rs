//! `fleetctl import-v2` against a real etcd holding a Go fleet's keyspace, laid out as fleet
//! v1.0 wrote it (etcd v2 API: job objects with the hash as 20 numbers, target-state, target,
//! job-state, bodies under unit/<sha1>, machine objects, unit states, the engine lease), and a
//! real fleetd (embedded registry, process supervisor) that runs what comes over.

mod common;

use common::{wait_for, Node, DEADLINE};
use std::io::{Read, Write};
use std::process::Output;

const PREFIX: &str = "/_coreos.com/fleet/";
/// fleet's own hash test vector (`unit/unit_test.go:TestUnitHash`): this body is what fleet
/// stored under `unit/1c6fb6f…`, so the import must keep exactly that hash.
const SLEEPER: &str = "[Service]\nExecStart=/bin/sleep 100\n";
const SLEEPER_HASH: &str = "1c6fb6f3684bafb0c173d8b8b957ceff031180c1";

/// Writes one key through etcd's v2 HTTP API, as fleet's etcd client did (a form-encoded PUT).
/// One request per connection, so std's TcpStream is all it takes.
fn v2_put(authority: &str, key: &str, value: &str) {
    let body = format!(
        "value={}",
        form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
    );
    let request = format!(
        "PUT /v2/keys{key} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(authority).expect("connect to etcd");
    stream.write_all(request.as_bytes()).expect("PUT to etcd");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("etcd's answer");
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.1 201"),
        "PUT {key}: {response}"
    );
}

/// The hash as Go's encoding/json writes a `[20]byte`: an array of numbers.
fn go_hash(hex: &str) -> String {
    let bytes: Vec<u8> = (0..20)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    format!("{bytes:?}").replace(' ', "")
}

/// A unit as fleet v1.0 wrote it: body, job object, target state, and (when scheduled) the
/// engine's target and the agent's heartbeat and state.
fn write_fleet_unit(etcd: &str, name: &str, body: &str, hash: &str, target: &str, machine: &str) {
    v2_put(
        etcd,
        &format!("{PREFIX}unit/{hash}"),
        &serde_json::json!({ "Raw": body }).to_string(),
    );
    v2_put(
        etcd,
        &format!("{PREFIX}job/{name}/object"),
        &format!(r#"{{"Name":"{name}","UnitHash":{}}}"#, go_hash(hash)),
    );
    v2_put(etcd, &format!("{PREFIX}job/{name}/target-state"), target);
    if target != "inactive" {
        v2_put(etcd, &format!("{PREFIX}job/{name}/target"), machine);
        v2_put(
            etcd,
            &format!("{PREFIX}states/{name}/{machine}"),
            &format!(
                r#"{{"loadState":"loaded","activeState":"active","subState":"running","machineState":{{"ID":"{machine}","PublicIP":"","Metadata":null,"Capabilities":null,"Version":""}},"unitHash":"{hash}"}}"#
            ),
        );
    }
    if target == "launched" {
        v2_put(etcd, &format!("{PREFIX}job/{name}/job-state"), machine);
    }
}

fn fleetctl(endpoint: &str, args: &[&str]) -> Output {
    common::run_fleetctl(endpoint, None, args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_go_fleets_units_come_over_with_their_hashes_and_run() {
    let Some(etcd) = common::etcd_with_args(&["--enable-v2=true".to_string()]) else {
        return;
    };
    let url = etcd.endpoints()[0].clone();
    let authority = url.trim_start_matches("http://").to_string();

    // The Go fleet's keyspace: one launched unit (fleet's hash test vector), one loaded, one
    // inactive, one global, a half-destroyed job directory and the other keys fleet kept.
    let go_machine = "b2c4e8f0a1d3c5e7f9a1b3c5d7e9f1a3";
    write_fleet_unit(
        &authority,
        "sleeper.service",
        SLEEPER,
        SLEEPER_HASH,
        "launched",
        go_machine,
    );
    // A unit as the Go fleet stored it, keyed by the hash we compute: returns that hash.
    let write_parsed = |name: &str, text: &str, target: &str| {
        let file = unit::UnitFile::parse(text).unwrap();
        let hash = file.hash().to_string();
        write_fleet_unit(
            &authority,
            name,
            &file.serialize(),
            &hash,
            target,
            go_machine,
        );
        hash
    };
    let loaded_hash = write_parsed(
        "loaded.service",
        "[Service]\nExecStart=/bin/sleep 200\n",
        "loaded",
    );
    let idle_hash = write_parsed(
        "idle.service",
        "[Unit]\nDescription=idle\n\n[Service]\nExecStart=/bin/sleep 300\n",
        "inactive",
    );
    let global_hash = write_parsed(
        "everywhere.service",
        "[Service]\nExecStart=/bin/sleep 400\n\n[X-Fleet]\nGlobal=true\n",
        "launched",
    );
    v2_put(
        &authority,
        &format!("{PREFIX}job/half.service/target-state"),
        "launched",
    );
    v2_put(
        &authority,
        &format!("{PREFIX}machines/{go_machine}/object"),
        &format!(
            r#"{{"ID":"{go_machine}","PublicIP":"10.0.0.1","Metadata":{{}},"Version":"1.0.0"}}"#
        ),
    );
    v2_put(
        &authority,
        &format!("{PREFIX}lease/engine-leader"),
        &format!(r#"{{"MachineID":"{go_machine}","Version":1}}"#),
    );
    v2_put(&authority, &format!("{PREFIX}engine/version"), "1");

    let node = Node::new("import-v2");
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    let endpoint = format!("unix://{}", node.socket().display());

    // A dry run says what it would do and changes nothing.
    let dry = fleetctl(&endpoint, &["import-v2", "--dry-run", &url]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry.stderr));
    let dry_out = text(&dry.stdout);
    assert!(
        dry_out.contains("Would import sleeper.service (1c6fb6f, launched)"),
        "{dry_out}"
    );
    assert!(
        dry_out.contains("4 units in fleet's keyspace: 4 to import"),
        "{dry_out}"
    );
    assert!(api.units().expect("list units").is_empty());

    // The import: every unit with fleet's name, hash and desired state.
    let done = fleetctl(&endpoint, &["import-v2", &url]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    let done_out = text(&done.stdout);
    assert!(
        done_out.contains("4 units in fleet's keyspace: 4 imported"),
        "{done_out}"
    );
    let mut here: Vec<(String, String, String)> = api
        .units()
        .expect("list units")
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                u.file().hash().to_string(),
                u.desired_state.clone(),
            )
        })
        .collect();
    here.sort();
    assert_eq!(
        here,
        vec![
            (
                "everywhere.service".into(),
                global_hash.clone(),
                "launched".into()
            ),
            ("idle.service".into(), idle_hash.clone(), "inactive".into()),
            (
                "loaded.service".into(),
                loaded_hash.clone(),
                "loaded".into()
            ),
            (
                "sleeper.service".into(),
                SLEEPER_HASH.into(),
                "launched".into()
            ),
        ]
    );
    // What was launched in fleet runs here.
    for name in ["sleeper.service", "everywhere.service"] {
        wait_for(&format!("{name} active"), DEADLINE, || {
            api.state(name)
                .filter(|s| s.systemd_active_state == "active")
        });
    }

    // Again: everything is here with the same hash, so nothing changes.
    let again = fleetctl(&endpoint, &["import-v2", &url]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("4 skipped"),
        "{}",
        text(&again.stdout)
    );

    // A unit whose body differs here is reported and left alone (exit 1), unless --replace.
    let newer = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 500\n").unwrap();
    let newer_hash = newer.hash().to_string();
    write_fleet_unit(
        &authority,
        "idle.service",
        &newer.serialize(),
        &newer_hash,
        "inactive",
        go_machine,
    );
    let differs = fleetctl(&endpoint, &["import-v2", &url]);
    assert_eq!(differs.status.code(), Some(1));
    assert!(
        text(&differs.stdout).contains("Unit idle.service differs"),
        "{}",
        text(&differs.stdout)
    );
    assert_eq!(
        api.unit("idle.service")
            .expect("idle")
            .file()
            .hash()
            .to_string(),
        idle_hash
    );
    let replaced = fleetctl(&endpoint, &["import-v2", "--replace", &url]);
    assert_eq!(
        replaced.status.code(),
        Some(0),
        "{}",
        text(&replaced.stderr)
    );
    assert!(
        text(&replaced.stdout).contains("Replaced idle.service"),
        "{}",
        text(&replaced.stdout)
    );
    assert_eq!(
        api.unit("idle.service")
            .expect("idle")
            .file()
            .hash()
            .to_string(),
        newer_hash
    );

    // Errors name the cause: an etcd without the v2 API, and nobody listening.
    let v3_only = common::etcd_with_args(&[]).expect("a second etcd");
    let no_v2 = fleetctl(&endpoint, &["import-v2", &v3_only.endpoints()[0]]);
    assert_eq!(no_v2.status.code(), Some(1));
    assert!(
        text(&no_v2.stderr).contains("--enable-v2=true"),
        "{}",
        text(&no_v2.stderr)
    );
    drop(v3_only);
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let unreachable = fleetctl(&endpoint, &["import-v2", &format!("http://{gone}")]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        text(&unreachable.stderr).contains("cannot reach etcd"),
        "{}",
        text(&unreachable.stderr)
    );
}
