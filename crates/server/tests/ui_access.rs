//! The dashboard over loopback TCP with tokens, as a browser meets it: refused without a
//! token, `/ui?token=` turns the token into a cookie, and the cookie then stands for the token
//! on the page, the API and the event stream, with the token's role. And `api::Client::events`
//! reads the stream of a real listener.

mod common;

use api::auth::token_hash;
use server::access::{Access, Tokens};
use server::listen::{bind, serve_with, Listen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange on a new connection: the status and the whole answer.
async fn http(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

fn get(path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn a_token_cookie_opens_the_dashboard_with_the_tokens_role() {
    let env = common::Env::new(100).await;
    // Answered once the server follows the registry: the unit created next is an event.
    env.get("/fleet/v1/events?follow=false").await;
    env.create("a.service", "loaded").await;
    let tokens = Tokens::parse(&format!("viewer read {}", token_hash("t-read"))).unwrap();
    let state = env
        .state
        .clone()
        .with_access(std::sync::Arc::new(Access::new(Some(tokens))));
    let listeners = bind(&[Listen::Tcp("127.0.0.1:0".into())]).await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    tokio::spawn(serve_with(
        listeners,
        server::router(state),
        None,
        std::future::pending(),
    ));

    let (status, _) = http(addr, &get("/ui", None)).await;
    assert_eq!(status, 401);
    let (status, answer) = http(addr, &get("/ui?token=t-nope", None)).await;
    assert_eq!(status, 401, "an unknown token sets no cookie: {answer}");
    let (status, answer) = http(addr, &get("/ui?token=t-read", None)).await;
    assert_eq!(status, 303, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("set-cookie: fleet_token=t-read;") && lower.contains("location: /ui"),
        "{answer}"
    );

    let cookie = Some("fleet_token=t-read");
    let (status, answer) = http(addr, &get("/ui", cookie)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("/ui/app.js"), "{answer}");
    let (status, answer) = http(addr, &get("/fleet/v1/units", cookie)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("a.service"), "{answer}");
    let (status, answer) = http(addr, &get("/fleet/v1/events?follow=false", cookie)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("text/event-stream"), "{answer}");
    // The read role may not start a unit, cookie or not.
    let put = "PUT /fleet/v1/units/a.service HTTP/1.1\r\nHost: 127.0.0.1\r\n\
               Cookie: fleet_token=t-read\r\nContent-Type: application/json\r\n\
               Content-Length: 27\r\nConnection: close\r\n\r\n{\"desiredState\":\"launched\"}";
    let (status, answer) = http(addr, put).await;
    assert_eq!(status, 403, "{answer}");

    // fleetctl's client reads the same stream with its bearer token.
    let client = api::Client::with_security(
        &format!("http://{addr}"),
        api::ClientOptions::default(),
        api::Security {
            tls: None,
            token: Some("t-read".into()),
        },
    )
    .unwrap();
    let mut got = Vec::new();
    client
        .events(&Default::default(), false, |e| {
            got.push(e);
            true
        })
        .await
        .unwrap();
    assert!(
        got.iter()
            .any(|e| e.kind == "submitted" && e.unit == "a.service"),
        "{got:?}"
    );
}
