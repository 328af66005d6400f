//! `GET /fleet/v1/events` over a real registry: the recent events, filtered, then a followed
//! stream that delivers what happens after it was opened.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::Env;
use http_body_util::BodyExt;
use std::time::Duration;
use tower::ServiceExt;

/// The `data` of each message of a server-sent events text, decoded.
fn events(text: &str) -> Vec<api::types::Event> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event JSON"))
        .collect()
}

fn kinds(events: &[api::types::Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| (e.kind.clone(), e.unit.clone(), e.machine_id.clone()))
        .collect()
}

fn k(kind: &str, unit: &str, machine: &str) -> (String, String, String) {
    (kind.into(), unit.into(), machine.into())
}

/// Polls the recent events until `done` holds of them (the follower sees writes moments after
/// they are made), for at most 10 s.
async fn recent_until(
    env: &Env,
    query: &str,
    done: impl Fn(&[api::types::Event]) -> bool,
) -> Vec<api::types::Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = env
            .get(&format!("/fleet/v1/events?follow=false{query}"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
        let got = events(&String::from_utf8_lossy(&r.body));
        if done(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never reached the expected ones: {:?}",
            kinds(&got)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn recent_events_tell_machines_and_units_in_order() {
    let env = Env::new(100).await;
    // Once this answers, the server follows the registry: what is written next is told.
    recent_until(&env, "", |_| true).await;
    let lease = env.machine("m1", "10.0.0.1", &[]).await;
    env.create("a.service", "launched").await;
    env.create("b.service", "loaded").await;
    env.publish("m1", &lease, "a.service", "active").await;
    let want = vec![
        k("machine-joined", "", "m1"),
        k("submitted", "a.service", ""),
        k("submitted", "b.service", ""),
        k("started", "a.service", "m1"),
    ];
    let got = recent_until(&env, "", |e| e.len() >= want.len()).await;
    assert_eq!(kinds(&got), want);
    assert!(got.windows(2).all(|w| w[0].revision < w[1].revision));
    assert_eq!(got[0].detail, "public IP 10.0.0.1");
    assert!(got[0].time.ends_with('Z'), "{}", got[0].time);
    assert!(
        got.iter().all(|e| e.recent),
        "the recent past is marked so: {got:?}"
    );

    let a = recent_until(&env, "&unit=a.*", |e| e.len() >= 2).await;
    assert_eq!(
        kinds(&a),
        vec![
            k("submitted", "a.service", ""),
            k("started", "a.service", "m1")
        ]
    );
    let m1 = recent_until(&env, "&machine=m1", |e| e.len() >= 2).await;
    assert_eq!(
        kinds(&m1),
        vec![
            k("machine-joined", "", "m1"),
            k("started", "a.service", "m1")
        ]
    );

    let bad = env.get("/fleet/v1/events?follow=perhaps").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().1.contains("follow=false"));
}

#[tokio::test]
async fn a_followed_stream_delivers_what_happens_after_it_opened() {
    let env = Env::new(100).await;
    recent_until(&env, "", |_| true).await;
    env.create("a.service", "launched").await;
    recent_until(&env, "", |e| !e.is_empty()).await;
    let req = Request::builder()
        .uri("/fleet/v1/events?unit=b.service")
        .body(Body::empty())
        .unwrap();
    let resp = server::router(env.state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    env.create("b.service", "launched").await;
    let mut text = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = body.frame().await.expect("stream ended").expect("frame");
            if let Some(data) = frame.data_ref() {
                text.push_str(&String::from_utf8_lossy(data));
            }
            let got = events(&text);
            if !got.is_empty() {
                return got;
            }
        }
    })
    .await
    .expect("no event for b.service within 10 s");
    assert_eq!(kinds(&got), vec![k("submitted", "b.service", "")]);
    assert!(
        !got[0].recent,
        "an event after the request is not of the recent past"
    );
    assert!(text.contains("event: submitted\n"), "{text}");
    // Dropping the body is the client going away: the stream ends with it.
    drop(body);
}
