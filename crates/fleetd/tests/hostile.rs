//! Hostile input against the real `fleetd` binary (embedded registry): every request below is
//! refused with a 4xx whose message names the problem, the registry is the same afterwards
//! (units, states and machines listed before and after), and fleetd keeps serving.
//!
//! Requests are written as raw bytes on the API socket, so that bodies which are not JSON, not
//! UTF-8 or far too large reach the server exactly as a hostile client would send them.

mod common;

use common::{Fleetd, Node};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// One HTTP response: status, body.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `error.message` of fleet's error body.
    fn message(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", self.text()));
        assert_eq!(
            v["error"]["code"].as_u64(),
            Some(u64::from(self.status)),
            "{}",
            self.text()
        );
        v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.message: {}", self.text()))
            .to_string()
    }
}

/// A request's head (with `Connection: close`) and body. `Some(len)` sends that
/// `Content-Length`; `None` sends the body chunked.
fn request(method: &str, path: &str, body: &[u8], length: Option<usize>) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\
         Content-Type: application/json\r\n"
    )
    .into_bytes();
    match length {
        Some(n) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
            out.extend_from_slice(body);
        }
        None => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(64 * 1024) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out
}

/// Sends `raw` on a new connection and reads the whole response. The request is written from
/// another thread while the response is read: the server may answer (413) and close before
/// reading a large body, and then the rest of the write fails, which is expected.
fn send(fleetd: &Fleetd, raw: Vec<u8>) -> Reply {
    let stream = UnixStream::connect(&fleetd.socket).expect("connect to fleetd's socket");
    // A guard against a server that never answers, not a timed assertion.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone the socket");
    let written = std::thread::spawn(move || {
        let _ = writer.write_all(&raw);
    });
    let mut response = Vec::new();
    let mut reader = stream;
    if let Err(e) = reader.read_to_end(&mut response) {
        assert!(
            !response.is_empty(),
            "no response from fleetd ({e}); its log:\n{}",
            fleetd.log()
        );
    }
    let _ = written.join();
    parse(&response)
}

fn parse(response: &[u8]) -> Reply {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {}", String::from_utf8_lossy(response)));
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let rest = &response[end + 4..];
    let body = match length {
        Some(n) => rest[..n.min(rest.len())].to_vec(),
        None => rest.to_vec(),
    };
    Reply { status, body }
}

fn get(fleetd: &Fleetd, path: &str) -> Reply {
    send(fleetd, request("GET", path, b"", Some(0)))
}

/// What the registry holds, as the API lists it.
fn snapshot(fleetd: &Fleetd) -> Vec<String> {
    ["/fleet/v1/units", "/fleet/v1/state", "/fleet/v1/machines"]
        .iter()
        .map(|p| {
            let r = get(fleetd, p);
            assert_eq!(r.status, 200, "GET {p}: {}", r.text());
            r.text()
        })
        .collect()
}

/// A fleetd on the embedded registry holding one unit (inactive, so no state changes under
/// the test), and the registry's contents.
fn start(hint: &str) -> (Node, Fleetd, Vec<String>) {
    let node = Node::new(hint);
    let mut fleetd = node.start(&[]);
    let api = fleetd.wait_registered();
    api.submit(
        "seed.service",
        "[Service]\nExecStart=/bin/sleep 600\n",
        "inactive",
    );
    let before = snapshot(&fleetd);
    assert!(before[0].contains("seed.service"), "{}", before[0]);
    (node, fleetd, before)
}

/// Sends `raw` and checks: status `want`, a message containing `names`, the registry as
/// `before`, fleetd still running and answering.
fn refused(fleetd: &mut Fleetd, before: &[String], raw: Vec<u8>, want: u16, names: &str) {
    // The request line and the start of the body, for failure messages.
    let head_end = raw
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(raw.len());
    let body_at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let what = format!(
        "{} {}",
        String::from_utf8_lossy(&raw[..head_end]),
        String::from_utf8_lossy(&raw[body_at..raw.len().min(body_at + 80)])
    );
    let reply = send(fleetd, raw);
    assert_eq!(reply.status, want, "{what}: {}", reply.text());
    let message = reply.message();
    assert!(
        message.contains(names),
        "{what}: message {message:?} does not contain {names:?}"
    );
    assert!(fleetd.running(), "fleetd died; its log:\n{}", fleetd.log());
    assert_eq!(snapshot(fleetd), before, "{what}: the registry changed");
}

fn put_unit(name: &str, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string().into_bytes();
    let n = body.len();
    request("PUT", &format!("/fleet/v1/units/{name}"), &body, Some(n))
}

fn put_raw(name: &str, body: &[u8]) -> Vec<u8> {
    request(
        "PUT",
        &format!("/fleet/v1/units/{name}"),
        body,
        Some(body.len()),
    )
}

fn patch(body: &[u8]) -> Vec<u8> {
    request("PATCH", "/fleet/v1/machines", body, Some(body.len()))
}

fn options(list: &[(&str, &str, &str)]) -> serde_json::Value {
    list.iter()
        .map(|(s, n, v)| serde_json::json!({"section": s, "name": n, "value": v}))
        .collect()
}

#[test]
fn unit_files_with_nul_bytes_are_refused() {
    let (_node, mut fleetd, before) = start("nul");
    for opts in [
        options(&[("Service", "ExecStart", "/bin/true\0; rm -rf /")]),
        options(&[("Service", "Exec\0Start", "/bin/true")]),
        options(&[("Serv\0ice", "ExecStart", "/bin/true")]),
    ] {
        let body = serde_json::json!({"desiredState": "launched", "options": opts});
        refused(
            &mut fleetd,
            &before,
            put_unit("nul.service", &body),
            400,
            "NUL byte",
        );
    }
    // A NUL in the name (percent-encoded in the URL).
    refused(
        &mut fleetd,
        &before,
        put_unit("nul%00.service", &serde_json::json!({"options": []})),
        400,
        "invalid character '\\0'",
    );
}

#[test]
fn ten_megabyte_bodies_are_refused_whole_or_chunked() {
    let (_node, mut fleetd, before) = start("big");
    let big = vec![b' '; 10 << 20];
    // Declared up front: refused before reading.
    refused(
        &mut fleetd,
        &before,
        put_raw("big.service", &big),
        413,
        "request body larger than 1048576 bytes",
    );
    // Chunked, so the size shows only while reading.
    refused(
        &mut fleetd,
        &before,
        request("PUT", "/fleet/v1/units/big.service", &big, None),
        413,
        "request body larger than 1048576 bytes",
    );
    // A Content-Length that promises 10 MB and sends a little.
    refused(
        &mut fleetd,
        &before,
        request("PATCH", "/fleet/v1/machines", b"[]", Some(10 << 20)),
        413,
        "request body larger than",
    );
}

#[test]
fn a_hundred_thousand_options_are_refused() {
    let (_node, mut fleetd, before) = start("options");
    let many = |n: usize| {
        let list: Vec<serde_json::Value> = (0..n)
            .map(
                |i| serde_json::json!({"section": "Service", "name": format!("E{i}"), "value": ""}),
            )
            .collect();
        serde_json::json!({"desiredState": "inactive", "options": list})
    };
    // 100,000 options do not fit in the body limit.
    refused(
        &mut fleetd,
        &before,
        put_unit("many.service", &many(100_000)),
        413,
        "request body larger than",
    );
    // Those that fit are still more than a unit may have.
    refused(
        &mut fleetd,
        &before,
        put_unit("many.service", &many(unit::MAX_OPTIONS + 1)),
        400,
        "too many options: 10001 (at most 10000 per unit)",
    );
}

#[test]
fn invalid_utf8_is_refused_in_bodies_and_paths() {
    let (_node, mut fleetd, before) = start("utf8");
    let mut body = br#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/"#.to_vec();
    body.extend_from_slice(b"\xff\xfe");
    body.extend_from_slice(br#""}]}"#);
    refused(
        &mut fleetd,
        &before,
        put_raw("utf8.service", &body),
        400,
        "not valid UTF-8 at byte",
    );
    refused(
        &mut fleetd,
        &before,
        put_raw("utf8%ff.service", b"{}"),
        400,
        "URL path is not valid UTF-8",
    );
    refused(
        &mut fleetd,
        &before,
        patch(b"[\"\xc3\x28\"]"),
        400,
        "not valid UTF-8 at byte 2",
    );
}

#[test]
fn deeply_repeated_sections_are_bounded_and_cannot_smuggle_lines() {
    let (_node, mut fleetd, before) = start("sections");
    // Alternating sections, as many as fit in a body: over the option limit.
    let list: Vec<serde_json::Value> = (0..20_000)
        .map(|i| {
            let section = if i % 2 == 0 { "Unit" } else { "Service" };
            serde_json::json!({"section": section, "name": "A", "value": "b"})
        })
        .collect();
    refused(
        &mut fleetd,
        &before,
        put_unit(
            "sections.service",
            &serde_json::json!({"desiredState": "inactive", "options": list}),
        ),
        400,
        "too many options: 20000",
    );
    // A section name that would close itself and open another when written out.
    refused(
        &mut fleetd,
        &before,
        put_unit(
            "sections.service",
            &serde_json::json!({"options": options(&[(
                "Unit]\nExecStartPre=/bin/evil\n[Service",
                "ExecStart",
                "/bin/true",
            )])}),
        ),
        400,
        "contains \"]\"",
    );
    // So can a value with a line break not continued by a backslash.
    refused(
        &mut fleetd,
        &before,
        put_unit(
            "sections.service",
            &serde_json::json!({"options": options(&[(
                "Service",
                "ExecStart",
                "/bin/true\n[Service]\nExecStartPre=/bin/evil",
            )])}),
        ),
        400,
        "line break not preceded by",
    );
}

#[test]
fn names_with_slashes_dots_shell_characters_or_over_256_bytes_are_refused() {
    let (_node, mut fleetd, before) = start("names");
    let body = serde_json::json!({"desiredState": "inactive", "options": options(&[("Service", "ExecStart", "/bin/true")])});
    let long = format!("{}.service", "a".repeat(250));
    let cases: Vec<(String, u16, &str)> = vec![
        ("a%2Fb.service".into(), 404, "one path segment"),
        (
            "..%2F..%2Fetc%2Fpasswd.service".into(),
            404,
            "one path segment",
        ),
        ("..".into(), 400, "cannot end in \".\""),
        ("..%2F".into(), 404, "one path segment"),
        (
            "a%3Brm%20-rf%20%2A.service".into(),
            400,
            "invalid character ';'",
        ),
        (
            "%24%28reboot%29.service".into(),
            400,
            "invalid character '$'",
        ),
        ("a%60id%60.service".into(), 400, "invalid character '`'"),
        ("a%7Cb%26c.service".into(), 400, "invalid character '|'"),
        (long.clone(), 400, "258 bytes long, the maximum is 256"),
    ];
    for (name, want, names) in &cases {
        refused(&mut fleetd, &before, put_unit(name, &body), *want, names);
        for method in ["GET", "DELETE"] {
            refused(
                &mut fleetd,
                &before,
                request(method, &format!("/fleet/v1/units/{name}"), b"", Some(0)),
                *want,
                names,
            );
        }
        refused(
            &mut fleetd,
            &before,
            request("GET", &format!("/fleet/v1/state/{name}"), b"", Some(0)),
            *want,
            names,
        );
    }
    // The name in the body must be the URL's: it cannot reach elsewhere through the body.
    let mut escape = body.clone();
    escape["name"] = "../../etc/x.service".into();
    refused(
        &mut fleetd,
        &before,
        put_unit("x.service", &escape),
        400,
        "differs from unit name in request body",
    );
}

#[test]
fn json_bombs_and_wrong_types_are_refused() {
    let (_node, mut fleetd, before) = start("json");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (put_raw("j.service", deep.as_bytes()), "want a JSON object"),
        (
            put_raw(
                "j.service",
                format!("{{\"name\":{deep}}}").as_bytes(),
            ),
            "invalid type: sequence",
        ),
        (patch(deep.as_bytes()), "invalid type: sequence"),
        (
            patch(format!("[{{\"op\":\"add\",\"path\":\"/m/metadata/k\",\"value\":{deep}}}]").as_bytes()),
            "recursion limit exceeded",
        ),
        (
            put_raw(
                "j.service",
                // Nested 50,000 deep in a field serde skips (it skips without recursing),
                // then a desiredState no unit can have.
                format!(
                    "{{\"options\":[{{\"a\":{}1{}}}],\"desiredState\":\"x\"}}",
                    "{\"a\":".repeat(50_000),
                    "}".repeat(50_000)
                )
                .as_bytes(),
            ),
            "invalid desiredState \"x\"",
        ),
        (put_raw("j.service", br#"{"options":"[Service]"}"#), "invalid type: string"),
        (put_raw("j.service", br#"{"desiredState":1,"options":[]}"#), "invalid type: integer"),
        (put_raw("j.service", br#"{"options":[{"section":[],"name":"a","value":"b"}]}"#), "invalid type: sequence"),
        (put_raw("j.service", br#" []"#), "want a JSON object (a unit), got an array"),
        (put_raw("j.service", br#"{"desiredState":"launched","options":[{"section":"Service","name":"A","value":1e999999}]}"#), "number out of range"),
        (put_raw("j.service", br#"{"name":"j.service","name":"k.service"}"#), "duplicate field"),
        (put_raw("j.service", br#"{"options":["#), "EOF while parsing"),
        (put_raw("j.service", b""), "EOF while parsing"),
        (put_raw("j.service", br#"{"desiredState":"exploded","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#), "invalid desiredState \"exploded\""),
        (
            patch(br#"{"op":"add"}"#),
            "invalid type: map",
        ),
        (
            patch(br#"[{"op":"add","path":7,"value":"x"}]"#),
            "invalid type: integer",
        ),
    ];
    for (raw, names) in cases {
        refused(&mut fleetd, &before, raw, 400, names);
    }
}

#[test]
fn page_tokens_out_of_range_are_refused() {
    let (_node, mut fleetd, before) = start("tokens");
    let token = |limit: u16, page: u16, revision: Option<i64>| {
        server::token::PageToken {
            limit,
            page,
            revision,
        }
        .encode()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            token(100, u16::MAX, Some(1)),
            "page token out of range: page 65535",
        ),
        (token(100, 2, None), "page token out of range: page 2"),
        (
            token(100, 1, Some(i64::MAX)),
            "page token out of range: it names registry revision",
        ),
        (token(100, 0, None), "token page must be greater than zero"),
        (token(u16::MAX, 1, None), "token limit must be 100"),
        (token(100, 2, Some(-5)), "revision must be positive"),
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(), "want 4 or 12"),
        ("%FF%FE".into(), "invalid page token"),
    ];
    for (t, names) in &cases {
        for list in ["units", "state", "machines"] {
            refused(
                &mut fleetd,
                &before,
                request(
                    "GET",
                    &format!("/fleet/v1/{list}?nextPageToken={t}"),
                    b"",
                    Some(0),
                ),
                400,
                names,
            );
        }
    }
}

#[test]
fn patch_paths_that_try_to_escape_are_refused() {
    let (_node, mut fleetd, before) = start("patch");
    for path in [
        "/../metadata/region",
        "/./metadata/region",
        "/../../etc/metadata/passwd",
        "/m/metadata/../region",
        "/m/metadata/..",
        "/m/../metadata/region",
        "//metadata/region",
        "/m\u{0}/metadata/region",
        "/m/metadata/region/../../x",
        "../m/metadata/region",
    ] {
        let body = serde_json::json!([{"op": "add", "path": path, "value": "x"}]).to_string();
        refused(
            &mut fleetd,
            &before,
            patch(body.as_bytes()),
            400,
            "machine metadata path invalid",
        );
    }
    // The URL itself, dot segments and all, is not a route either.
    refused(
        &mut fleetd,
        &before,
        request("PATCH", "/fleet/v1/machines/../machines", b"[]", Some(2)),
        404,
        "not found",
    );
}

#[test]
fn specifiers_cannot_expand_recursively_or_without_bound() {
    let (_node, mut fleetd, before) = start("specifiers");
    // A specifier in the name itself would be expanded again where the name is substituted.
    for name in ["a@%25n.service", "%25i%25n.service", "a@%25%25n.service"] {
        refused(
            &mut fleetd,
            &before,
            put_unit(
                name,
                &serde_json::json!({"options": options(&[("Service", "ExecStart", "/bin/true")])}),
            ),
            400,
            "invalid character '%'",
        );
    }
    // A thousand %n on a long name: hundreds of KB from one option.
    let name = format!("{}@{}.service", "p".repeat(100), "i".repeat(140));
    let bomb = "%n".repeat(1_000);
    refused(
        &mut fleetd,
        &before,
        put_unit(
            &name,
            &serde_json::json!({"options": options(&[("X-Fleet", "MachineOf", &bomb)])}),
        ),
        400,
        "MachineOf= expands to",
    );
    // Quoted values multiply: each counts.
    let many = vec!["\"%n\""; 600].join(" ");
    refused(
        &mut fleetd,
        &before,
        put_unit(
            &name,
            &serde_json::json!({"options": options(&[("X-Fleet", "Conflicts", &many), ("X-Fleet", "MachineOf", &many)])}),
        ),
        400,
        "too many [X-Fleet] values: 1001",
    );
}
