//! The HTTP API over a real registry (embedded store): every status of fleet's table
//! (fleet-reference 3.9), page tokens, PATCH shapes, the PUT matrix, state filters.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::Env;
use registry::embedded::HistoryLimits;
use registry::{Campaign, ScheduleChange, ScheduleEntry, TargetState};
use serde_json::json;

const PREFIXES: [&str; 2] = ["/fleet/v1", "/v1-alpha"];

fn names(v: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u[field].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn routing_statuses_and_server_header() {
    let env = Env::new(100).await;
    let server = format!("fleetd/{}", server::VERSION);
    for p in PREFIXES {
        let cases: Vec<(&str, String, u16)> = vec![
            ("GET", format!("{p}/discovery"), 200),
            ("POST", format!("{p}/discovery"), 400),
            ("GET", format!("{p}/machines"), 200),
            ("DELETE", format!("{p}/machines"), 405),
            ("GET", format!("{p}/machines/x"), 404),
            ("GET", format!("{p}/units"), 200),
            ("POST", format!("{p}/units"), 405),
            ("PATCH", format!("{p}/units/a.service"), 405),
            ("GET", format!("{p}/units/"), 404),
            ("GET", format!("{p}/units/a.service/"), 404),
            ("GET", format!("{p}/units/a.service"), 404),
            ("GET", format!("{p}/state"), 200),
            ("PUT", format!("{p}/state"), 405),
            ("POST", format!("{p}/state/a.service"), 405),
            ("GET", format!("{p}/state/a.service"), 404),
            ("GET", p.to_string(), 405),
            ("GET", format!("{p}/unknown"), 404),
        ];
        for (method, uri, want) in cases {
            let r = env.send(method, &uri, None, "").await;
            assert_eq!(r.status.as_u16(), want, "{method} {uri}");
            assert_eq!(
                r.headers.get(header::SERVER).and_then(|v| v.to_str().ok()),
                Some(server.as_str()),
                "{method} {uri}"
            );
            if want >= 400 {
                r.error();
            }
        }
    }
    let r = env.get("/").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(env.get("/nothing/here").await.status, StatusCode::NOT_FOUND);
    let (_, msg) = env
        .send("POST", "/fleet/v1/discovery", None, "")
        .await
        .error();
    assert_eq!(msg, "only HTTP GET supported against this resource");
}

#[tokio::test]
async fn discovery_document_is_served_as_json() {
    let env = Env::new(100).await;
    let r = env.get("/fleet/v1/discovery").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let doc = r.json();
    assert_eq!(doc["basePath"], "/fleet/v1/");
    assert_eq!(doc["rootUrl"], "$ENDPOINT/");
    assert_eq!(
        doc["resources"]["Units"]["methods"]["Set"]["httpMethod"],
        "PUT"
    );
    assert_eq!(
        doc["resources"]["Machines"]["methods"]["Patch"]["httpMethod"],
        "PATCH"
    );
    assert_eq!(
        doc["schemas"]["Unit"]["properties"]["machineID"]["required"],
        true
    );
    assert_eq!(env.get("/v1-alpha/discovery").await.body, r.body);
}

#[tokio::test]
async fn unavailable_until_registered_except_metrics() {
    let env = Env::new(100).await;
    env.state.set_available(false);
    for uri in ["/fleet/v1/units", "/fleet/v1/discovery", "/", "/nope"] {
        let r = env.get(uri).await;
        let (code, msg) = r.error();
        assert_eq!(code, 503, "{uri}");
        assert!(
            msg.starts_with("fleet server unable to communicate with etcd"),
            "{msg}"
        );
        assert!(r.headers.contains_key(header::SERVER));
    }
    let m = env.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&m.body).contains("fleet_api_available 0\n"));
    env.state.set_available(true);
    assert_eq!(env.get("/fleet/v1/units").await.status, StatusCode::OK);
}

#[tokio::test]
async fn put_content_type_and_decoding() {
    let env = Env::new(100).await;
    let uri = "/fleet/v1/units/a.service";
    let body = r#"{"desiredState":"inactive","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    assert_eq!(env.send("PUT", uri, None, body).await.error().0, 415);
    assert_eq!(
        env.send("PUT", uri, Some("text/plain"), body)
            .await
            .error()
            .0,
        415
    );
    let two = Request::builder()
        .method("PUT")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(env.send_req(two).await.error().0, 415);

    let (code, msg) = env.put(uri, "{not json").await.error();
    assert_eq!(code, 400);
    assert!(msg.starts_with("unable to decode body: "), "{msg}");
    let (code, msg) = env
        .put(uri, r#"{"name":"b.service","desiredState":"loaded"}"#)
        .await
        .error();
    assert_eq!(code, 400);
    assert_eq!(
        msg,
        r#"name in URL "a.service" differs from unit name in request body "b.service""#
    );
    let (code, msg) = env.put("/fleet/v1/units/nodot", body).await.error();
    assert_eq!(code, 400);
    assert!(msg.contains("nodot"), "{msg}");

    let r = env
        .send("PUT", uri, Some("Application/JSON; charset=utf-8"), body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn put_create_replace_update_matrix() {
    let env = Env::new(100).await;
    let uri = "/fleet/v1/units/web.service";
    let opts = |cmd: &str| json!([{"section":"Service","name":"ExecStart","value":cmd}]);

    // Create without options: 409.
    let (code, msg) = env
        .put(uri, &json!({"desiredState":"launched"}).to_string())
        .await
        .error();
    assert_eq!(
        (code, msg.as_str()),
        (409, "unit does not exist and options field empty")
    );
    // A bad desiredState is named, on create...
    let (code, msg) = env
        .put(
            uri,
            &json!({"desiredState":"started","options":opts("/bin/a")}).to_string(),
        )
        .await
        .error();
    assert_eq!(code, 400);
    assert!(msg.contains("\"started\""), "{msg}");
    // ... invalid options are refused (fleet's ValidateOptions) ...
    let bad = json!([
        {"section":"Service","name":"ExecStart","value":"/bin/a"},
        {"section":"X-Fleet","name":"Global","value":"true"},
        {"section":"X-Fleet","name":"MachineOf","value":"other.service"},
    ]);
    let (code, _) = env
        .put(uri, &json!({"options":bad}).to_string())
        .await
        .error();
    assert_eq!(code, 400);
    // ... and a good create is 201 with desiredState defaulting to inactive.
    let r = env
        .put(uri, &json!({"options":opts("/bin/a")}).to_string())
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let u = env.get(uri).await.json();
    assert_eq!(u["name"], "web.service");
    assert_eq!(u["desiredState"], "inactive");
    assert_eq!(u["currentState"], "inactive");
    assert_eq!(u["options"], opts("/bin/a"));
    assert!(
        u.get("machineID").is_none() && u.get("reason").is_none(),
        "{u}"
    );

    // Existing, no options, no desiredState: 409.
    let (code, msg) = env.put(uri, "{}").await.error();
    assert_eq!(
        (code, msg.as_str()),
        (409, "must provide DesiredState to update existing unit")
    );
    // Existing, bogus desiredState: 400 (fleet stored it and the unit vanished).
    let (code, msg) = env
        .put(uri, &json!({"desiredState":"bogus"}).to_string())
        .await
        .error();
    assert_eq!(code, 400);
    assert!(msg.contains("bogus"), "{msg}");
    assert_eq!(env.get(uri).await.json()["desiredState"], "inactive");
    // Target-state change: 204, with or without the same options.
    let r = env
        .put(uri, &json!({"desiredState":"launched"}).to_string())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(env.get(uri).await.json()["desiredState"], "launched");
    let r = env
        .put(
            uri,
            &json!({"desiredState":"loaded","options":opts("/bin/a")}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(env.get(uri).await.json()["desiredState"], "loaded");

    // Different options replace (201); desiredState is the body's, or inactive.
    let r = env
        .put(uri, &json!({"options":opts("/bin/b")}).to_string())
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let u = env.get(uri).await.json();
    assert_eq!(
        (u["options"].clone(), u["desiredState"].clone()),
        (opts("/bin/b"), json!("inactive"))
    );
    let r = env
        .put(
            uri,
            &json!({"desiredState":"launched","options":opts("/bin/c")}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(env.get(uri).await.json()["desiredState"], "launched");
    // Replace validates options too (fleet skipped it).
    let (code, _) = env
        .put(
            uri,
            &json!({"desiredState":"launched","options":bad}).to_string(),
        )
        .await
        .error();
    assert_eq!(code, 400);
    assert_eq!(env.get(uri).await.json()["options"], opts("/bin/c"));

    // DELETE: 204, then 404.
    assert_eq!(
        env.send("DELETE", uri, None, "").await.status,
        StatusCode::NO_CONTENT
    );
    let (code, msg) = env.send("DELETE", uri, None, "").await.error();
    assert_eq!((code, msg.as_str()), (404, "unit does not exist"));
    let (code, msg) = env.get(uri).await.error();
    assert_eq!((code, msg.as_str()), (404, "unit does not exist"));
}

#[tokio::test]
async fn templates_are_never_activated() {
    let env = Env::new(100).await;
    let uri = "/fleet/v1/units/app@.service";
    let opts = json!([{"section":"Service","name":"ExecStart","value":"/bin/app %i"}]);
    let (code, msg) = env
        .put(
            uri,
            &json!({"desiredState":"launched","options":opts}).to_string(),
        )
        .await
        .error();
    assert_eq!((code, msg.as_str()), (400, "cannot activate template"));
    let r = env
        .put(
            uri,
            &json!({"desiredState":"inactive","options":opts}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (code, msg) = env
        .put(uri, &json!({"desiredState":"loaded"}).to_string())
        .await
        .error();
    assert_eq!((code, msg.as_str()), (400, "cannot activate template"));
    // Instances are ordinary units; names are percent-decoded.
    let r = env
        .put(
            "/fleet/v1/units/app%401.service",
            &json!({"desiredState":"launched","options":opts}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        env.get("/fleet/v1/units/app@1.service").await.json()["desiredState"],
        "launched"
    );
}

#[tokio::test]
async fn unit_listing_shows_placement_state_and_reason() {
    let env = Env::new(100).await;
    for n in ["c.service", "a.service", "b.service"] {
        env.create(n, "launched").await;
    }
    let lease = env.machine("m1", "10.0.0.1", &[]).await;
    let Campaign::Won(leader) = env
        .reg
        .campaign("m1", std::time::Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("the test's engine did not win the leadership");
    };
    let hash = env.reg.unit("a.service").await.unwrap().unwrap().job.hash;
    let changes = vec![
        ScheduleChange::Place {
            unit: "a.service".into(),
            machine: "m1".into(),
            entry: ScheduleEntry {
                hash,
                desired: TargetState::Launched,
                raw: None,
            },
        },
        ScheduleChange::Reason {
            unit: "b.service".into(),
            reason: Some("no machine matches MachineMetadata".into()),
        },
    ];
    assert!(leader.apply_schedule(&changes).await.unwrap());
    env.publish("m1", &lease, "a.service", "active").await;

    let page = env.get("/fleet/v1/units").await.json();
    assert_eq!(
        names(&page, "units", "name"),
        ["a.service", "b.service", "c.service"]
    );
    assert!(page.get("nextPageToken").is_none());
    let a = &page["units"][0];
    assert_eq!(
        (a["machineID"].as_str(), a["currentState"].as_str()),
        (Some("m1"), Some("launched"))
    );
    let b = &page["units"][1];
    assert_eq!(b["reason"], "no machine matches MachineMetadata");
    assert_eq!(b["currentState"], "inactive");
    assert_eq!(
        env.get("/fleet/v1/units/b.service").await.json()["reason"],
        "no machine matches MachineMetadata"
    );
}

#[tokio::test]
async fn page_tokens() {
    let env = Env::new(100).await;
    env.create("a.service", "inactive").await;
    // fleet's vectors: limit 100 page 2 is well formed, but past the end of one unit: out of
    // range (fleet answered an empty page).
    let (code, msg) = env
        .get("/fleet/v1/units?nextPageToken=ZAACAA==")
        .await
        .error();
    assert_eq!(code, 400);
    assert!(msg.contains("page token out of range: page 2"), "{msg}");
    let (code, msg) = env
        .get("/fleet/v1/machines?nextPageToken=EwBMLg==")
        .await
        .error();
    assert_eq!((code, msg.as_str()), (400, "token limit must be 100"));
    let (code, msg) = env
        .get("/fleet/v1/units?nextPageToken=ZAAAAA==")
        .await
        .error();
    assert_eq!(
        (code, msg.as_str()),
        (400, "token page must be greater than zero")
    );
    let (code, msg) = env
        .get("/fleet/v1/state?nextPageToken=ZAACAA==&nextPageToken=ZAACAA==")
        .await
        .error();
    assert_eq!(
        (code, msg.as_str()),
        (400, "too many values for page token")
    );
    let (code, msg) = env
        .get("/fleet/v1/units?nextPageToken=garbage!")
        .await
        .error();
    assert_eq!(code, 400);
    assert!(msg.contains("garbage!"), "{msg}");
}

#[tokio::test]
async fn pages_end_without_an_empty_page_and_stay_at_one_revision() {
    let env = Env::new(2).await;
    for n in ["b.service", "c.service", "d.service", "e.service"] {
        env.create(n, "inactive").await;
    }
    let p1 = env.get("/fleet/v1/units").await.json();
    assert_eq!(names(&p1, "units", "name"), ["b.service", "c.service"]);
    let token = p1["nextPageToken"].as_str().expect("a token").to_string();
    // A unit created between pages does not shift the listing being read.
    env.create("a.service", "inactive").await;
    let p2 = env
        .get(&format!("/fleet/v1/units?nextPageToken={token}"))
        .await
        .json();
    assert_eq!(names(&p2, "units", "name"), ["d.service", "e.service"]);
    assert!(p2.get("nextPageToken").is_none(), "{p2}");
    // A fresh listing sees it.
    let p1 = env.get("/fleet/v1/units").await.json();
    assert_eq!(names(&p1, "units", "name"), ["a.service", "b.service"]);
    // fleet's 4-byte tokens still work (read the latest revision).
    let fleet_token = server::token::PageToken {
        limit: 2,
        page: 3,
        revision: None,
    }
    .encode();
    let p3 = env
        .get(&format!("/fleet/v1/units?nextPageToken={fleet_token}"))
        .await
        .json();
    assert_eq!(names(&p3, "units", "name"), ["e.service"]);
}

#[tokio::test]
async fn a_compacted_page_revision_falls_back_to_the_latest() {
    let env = Env::with_history(
        2,
        HistoryLimits {
            revisions: 1,
            events: 1,
        },
    )
    .await;
    for n in ["b.service", "c.service", "d.service"] {
        env.create(n, "inactive").await;
    }
    let p1 = env.get("/fleet/v1/units").await.json();
    let token = p1["nextPageToken"].as_str().expect("a token").to_string();
    env.create("a.service", "inactive").await;
    env.create("z.service", "inactive").await;
    // Another listing replaces the one the server kept for the token's revision.
    env.get("/fleet/v1/units").await;
    let r = env
        .get(&format!("/fleet/v1/units?nextPageToken={token}"))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        names(&r.json(), "units", "name"),
        ["c.service", "d.service"]
    );
}

#[tokio::test]
async fn machines_list_and_patch() {
    let env = Env::new(100).await;
    env.machine("m2", "10.0.0.2", &[]).await;
    env.machine("m1", "10.0.0.1", &[("region", "eu"), ("disk", "ssd")])
        .await;
    let page = env.get("/fleet/v1/machines").await.json();
    assert_eq!(names(&page, "machines", "id"), ["m1", "m2"]);
    assert_eq!(page["machines"][0]["primaryIP"], "10.0.0.1");
    assert_eq!(
        page["machines"][0]["metadata"],
        json!({"region":"eu","disk":"ssd"})
    );
    assert!(page["machines"][1].get("metadata").is_none());

    // Nested value (fleet's wire shape) and plain value (fleet's docs) both work.
    let r = env
        .patch(r#"[{"op":"add","path":"/m1/metadata/rack","value":{"value":"r1"}},{"op":"replace","path":"/m2/metadata/rack","value":"r2"},{"op":"remove","path":"/m1/metadata/disk"}]"#)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let page = env.get("/fleet/v1/machines").await.json();
    assert_eq!(
        page["machines"][0]["metadata"],
        json!({"region":"eu","rack":"r1"})
    );
    assert_eq!(page["machines"][1]["metadata"], json!({"rack":"r2"}));

    // Every op is validated before any is applied.
    let bad = [
        (
            r#"[{"op":"add","path":"/m1/metadata/x","value":"1"},{"op":"move","path":"/m1/metadata/y","value":"1"}]"#,
            "move",
        ),
        (
            r#"[{"op":"add","path":"/m1/metadata/x","value":"1"},{"op":"add","path":"/m1/meta/y","value":"1"}]"#,
            "path",
        ),
        (
            r#"[{"op":"add","path":"/m1/metadata/x","value":"1"},{"op":"add","path":"/m1/metadata/y","value":""}]"#,
            "value",
        ),
        (
            r#"[{"op":"add","path":"/m1/metadata/x","value":"1"},{"op":"replace","path":"/m1/metadata/y","value":{"value":""}}]"#,
            "value",
        ),
        (
            r#"[{"op":"add","path":"/m1/metadata/x","value":"1"},{"op":"add","path":"/m1/metadata/y"}]"#,
            "value",
        ),
        (
            r#"[{"op":"add","path":"/m1/metadata/bad key","value":"1"}]"#,
            "path",
        ),
        (r#"{"op":"add"}"#, "decode"),
        (
            r#"[{"op":"add","path":"/m1/metadata/x","value":7}]"#,
            "decode",
        ),
    ];
    for (body, word) in bad {
        let (code, msg) = env.patch(body).await.error();
        assert_eq!(code, 400, "{body}");
        assert!(msg.contains(word), "{body}: {msg}");
    }
    let page = env.get("/fleet/v1/machines").await.json();
    assert_eq!(
        page["machines"][0]["metadata"],
        json!({"region":"eu","rack":"r1"})
    );
    // A machine need not exist; an empty list is fine.
    assert_eq!(
        env.patch(r#"[{"op":"add","path":"/m9/metadata/k","value":"v"}]"#)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(env.patch("[]").await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn state_list_filters_and_get() {
    let env = Env::new(2).await;
    env.create("a.service", "launched").await;
    env.create("b.service", "launched").await;
    let l1 = env.machine("m1", "10.0.0.1", &[]).await;
    let l2 = env.machine("m2", "10.0.0.2", &[]).await;
    env.publish("m2", &l2, "a.service", "active").await;
    env.publish("m1", &l1, "a.service", "failed").await;
    env.publish("m1", &l1, "b.service", "active").await;

    let p1 = env.get("/fleet/v1/state").await.json();
    let pairs = |v: &serde_json::Value| -> Vec<(String, String)> {
        names(v, "states", "name")
            .into_iter()
            .zip(names(v, "states", "machineID"))
            .collect()
    };
    assert_eq!(
        pairs(&p1),
        [
            ("a.service".into(), "m1".into()),
            ("a.service".into(), "m2".into())
        ]
    );
    let s = &p1["states"][0];
    assert_eq!(
        (
            s["systemdLoadState"].as_str(),
            s["systemdActiveState"].as_str(),
            s["systemdSubState"].as_str()
        ),
        (Some("loaded"), Some("failed"), Some("dead"))
    );
    assert_eq!(s["hash"].as_str().map(str::len), Some(40));
    let token = p1["nextPageToken"].as_str().expect("token");
    let p2 = env
        .get(&format!("/fleet/v1/state?nextPageToken={token}"))
        .await
        .json();
    assert_eq!(pairs(&p2), [("b.service".to_string(), "m1".to_string())]);
    assert!(p2.get("nextPageToken").is_none());

    let by_machine = env.get("/fleet/v1/state?machineID=m1").await.json();
    assert_eq!(
        pairs(&by_machine),
        [
            ("a.service".into(), "m1".into()),
            ("b.service".into(), "m1".into())
        ]
    );
    assert!(by_machine.get("nextPageToken").is_none());
    let by_unit = env.get("/fleet/v1/state?unitName=a.service").await.json();
    assert_eq!(
        pairs(&by_unit),
        [
            ("a.service".into(), "m1".into()),
            ("a.service".into(), "m2".into())
        ]
    );
    let both = env
        .get("/fleet/v1/state?unitName=a.service&machineID=m2")
        .await
        .json();
    assert_eq!(pairs(&both), [("a.service".to_string(), "m2".to_string())]);
    assert_eq!(
        env.get("/fleet/v1/state?machineID=m3").await.json(),
        json!({})
    );

    let one = env.get("/fleet/v1/state/b.service").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["machineID"], "m1");
    let (code, msg) = env.get("/fleet/v1/state/c.service").await.error();
    assert_eq!((code, msg.as_str()), (404, "unit state does not exist"));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let env = Env::new(100).await;
    let huge = format!(
        r#"{{"options":[{{"section":"Service","name":"ExecStart","value":"{}"}}]}}"#,
        "x".repeat(server::DEFAULT_MAX_BODY_BYTES)
    );
    let (code, msg) = env.put("/fleet/v1/units/a.service", &huge).await.error();
    assert_eq!(code, 413);
    assert!(msg.contains("larger than"), "{msg}");

    // Without a Content-Length the limit still holds while streaming.
    let small = Env {
        state: env.state.clone().with_max_body_bytes(64),
        ..env
    };
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok("[".into()), Ok(" ".repeat(100)), Ok("]".into())];
    let req = Request::builder()
        .method("PATCH")
        .uri("/fleet/v1/machines")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_eq!(small.send_req(req).await.error().0, 413);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_code() {
    let env = Env::new(100).await;
    env.get("/fleet/v1/units").await;
    env.get("/fleet/v1/units/x.service").await;
    env.get("/fleet/v1/units/y.service").await;
    let m = env.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m
        .headers
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&m.body).to_string();
    assert!(
        text.contains("fleet_api_requests_total{route=\"units\",method=\"GET\",code=\"200\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "fleet_api_requests_total{route=\"units/{unitName}\",method=\"GET\",code=\"404\"} 2\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "fleet_api_registry_operations_total{operation=\"get_unit\",result=\"success\"} 2\n"
        ),
        "{text}"
    );
    assert!(text.contains("fleet_api_available 1\n"), "{text}");
    assert!(
        text.contains(
            "fleet_api_request_duration_seconds_count{route=\"units\",method=\"GET\"} 1\n"
        ),
        "{text}"
    );
}
