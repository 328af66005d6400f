//! The typed client against the real server, over a unix socket and over TCP.

// The server's test fixture (a real router over a registry on the embedded store), shared
// rather than copied.
#[path = "../../server/tests/common/mod.rs"]
mod common;

use api::client::{Client, ClientError, ClientOptions, StateFilter};
use api::types::{MachineMetadataOp, Unit};
use api::TargetState;
use common::Env;
use server::listen::{bind, serve, Listen};
use std::time::Duration;
use tokio::sync::oneshot;

struct Served {
    env: Env,
    unix: String,
    tcp: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn served(token_limit: u16) -> Served {
    let env = Env::new(token_limit).await;
    let sock = env.dir.path().join("run/fleet.sock");
    let listeners = bind(&[
        Listen::Unix(sock.clone()),
        Listen::Tcp("127.0.0.1:0".into()),
    ])
    .await
    .expect("bind");
    let tcp = format!("http://{}", listeners[1].local_addr().expect("tcp addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(listeners, server::router(env.state.clone()), async {
        let _ = stopped.await;
    }));
    Served {
        unix: format!("unix://{}", sock.display()),
        tcp,
        env,
        stop: Some(stop),
        done,
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
    }
}

fn file(cmd: &str) -> unit::UnitFile {
    unit::UnitFile::from_options(vec![unit::UnitOption {
        section: "Service".into(),
        name: "ExecStart".into(),
        value: cmd.into(),
    }])
}

async fn round_trip(client: &Client, env: &Env) {
    // Create more units than one page holds: units() must follow the tokens.
    for i in 0..5 {
        let u = Unit::new(
            &format!("u{i}.service"),
            &file(&format!("/bin/echo {i}")),
            TargetState::Loaded,
        );
        client.create_or_update_unit(&u).await.expect("create");
    }
    let units = client.units().await.expect("units");
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "u0.service",
            "u1.service",
            "u2.service",
            "u3.service",
            "u4.service"
        ]
    );
    assert_eq!(units[0].desired(), Ok(Some(TargetState::Loaded)));
    assert_eq!(units[0].file(), file("/bin/echo 0"));

    client
        .set_unit_target_state("u1.service", TargetState::Launched)
        .await
        .expect("set state");
    let u1 = client
        .unit("u1.service")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(u1.desired(), Ok(Some(TargetState::Launched)));
    assert_eq!(client.unit("nope.service").await.expect("get"), None);

    // fleet's error message and status come back typed.
    let err = client
        .set_unit_target_state("nope.service", TargetState::Launched)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(
        err.to_string()
            .contains("unit does not exist and options field empty"),
        "{err}"
    );

    assert!(client.destroy_unit("u4.service").await.expect("destroy"));
    assert!(!client
        .destroy_unit("u4.service")
        .await
        .expect("destroy again"));

    let lease = env.machine("m1", "10.0.0.1", &[("region", "eu")]).await;
    env.machine("m2", "10.0.0.2", &[]).await;
    client
        .patch_machines(&[
            MachineMetadataOp::set("m2", "rack", "r2"),
            MachineMetadataOp::remove("m1", "region"),
        ])
        .await
        .expect("patch");
    let machines = client.machines().await.expect("machines");
    assert_eq!(machines.len(), 2);
    assert!(machines[0].metadata.is_empty(), "{machines:?}");
    assert_eq!(
        machines[1].metadata.get("rack").map(String::as_str),
        Some("r2")
    );
    let err = client
        .patch_machines(&[MachineMetadataOp {
            op: "move".into(),
            ..MachineMetadataOp::remove("m1", "x")
        }])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));

    for u in ["u0.service", "u1.service", "u2.service"] {
        env.publish("m1", &lease, u, "active").await;
    }
    let states = client
        .unit_states(&StateFilter::default())
        .await
        .expect("states");
    assert_eq!(states.len(), 3);
    let one = client
        .unit_states(&StateFilter {
            unit_name: Some("u1.service".into()),
            machine_id: Some("m1".into()),
        })
        .await
        .expect("filtered");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].systemd_active_state, "active");
    assert_eq!(
        client
            .unit_state("u2.service")
            .await
            .expect("state")
            .map(|s| s.machine_id),
        Some("m1".into())
    );
    assert_eq!(client.unit_state("u3.service").await.expect("state"), None);
    assert_eq!(
        client.discovery().await.expect("discovery")["id"],
        "fleet:v1"
    );
}

#[tokio::test]
async fn round_trip_over_a_unix_socket() {
    let mut s = served(2).await;
    let client = Client::new(&s.unix, opts()).expect("client");
    round_trip(&client, &s.env).await;
    // Graceful shutdown ends serving and removes the socket file.
    let _ = s.stop.take().map(|tx| tx.send(()));
    s.done.await.expect("join").expect("serve");
    assert!(!s.env.dir.path().join("run/fleet.sock").exists());
}

#[tokio::test]
async fn round_trip_over_tcp() {
    let s = served(2).await;
    let client = Client::new(&s.tcp, opts()).expect("client");
    round_trip(&client, &s.env).await;
}

#[tokio::test]
async fn a_missing_server_names_the_endpoint_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("none.sock").display());
    let err = Client::new(&endpoint, opts())
        .unwrap()
        .units()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&endpoint) && msg.contains("is fleetd running? check --endpoint"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_request_timeout_applies_to_every_call() {
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let client = Client::new(
        &format!("http://{addr}"),
        ClientOptions {
            request_timeout: Duration::from_millis(200),
        },
    )
    .unwrap();
    let err = client.machines().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("--request-timeout"), "{err}");
    hold.abort();
}

#[tokio::test]
async fn unavailable_server_errors_are_typed_503() {
    let s = served(100).await;
    s.env.state.set_available(false);
    let err = Client::new(&s.tcp, opts())
        .unwrap()
        .units()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(
        err.to_string()
            .contains("fleet server unable to communicate with etcd"),
        "{err}"
    );
}

#[tokio::test]
async fn several_endpoints_are_tried_in_order_and_the_one_that_answers_is_kept() {
    let s = served(100).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    let client = Client::new(&format!("{missing}, {}", s.tcp), opts()).expect("client");
    assert_eq!(client.endpoint(), missing);
    assert!(client.units().await.expect("units").is_empty());
    assert_eq!(
        client.endpoint(),
        s.tcp,
        "the endpoint that answered is used from now on"
    );
    client
        .create_or_update_unit(&Unit::new(
            "a.service",
            &file("/bin/true"),
            TargetState::Inactive,
        ))
        .await
        .expect("create through the second endpoint");

    // None answers: one error naming each endpoint and why.
    let other = format!("unix://{}", dir.path().join("other.sock").display());
    let err = Client::new(&format!("{missing},{other}"), opts())
        .unwrap()
        .units()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{missing}: ")) && msg.contains(&format!("{other}: ")),
        "{msg}"
    );
    assert!(Client::new(" , ", opts()).is_err());
}

#[tokio::test]
async fn a_path_prefix_reaches_fleetd_behind_a_reverse_proxy() {
    // What a reverse proxy that serves fleet under /fleet-proxy does: strip the prefix.
    let env = Env::new(100).await;
    let listeners = bind(&[Listen::Tcp("127.0.0.1:0".into())])
        .await
        .expect("bind");
    let addr = listeners[0].local_addr().expect("tcp addr");
    let proxied =
        axum::Router::new().nest_service("/fleet-proxy", server::router(env.state.clone()));
    let served = tokio::spawn(serve(listeners, proxied, std::future::pending()));
    let client = Client::new(&format!("http://{addr}/fleet-proxy/"), opts()).expect("client");
    round_trip(&client, &env).await;
    // Without the prefix the proxy has nothing there.
    let err = Client::new(&format!("http://{addr}"), opts())
        .unwrap()
        .units()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    served.abort();
    for bad in ["http://h:1/p?q=1", "http://h:1/p#f", "http:///p"] {
        assert!(Client::new(bad, opts()).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_listing_of_many_pages_comes_whole_and_in_order_though_pages_are_read_ahead() {
    let s = served(3).await;
    let client = Client::new(&s.tcp, opts()).expect("client");
    let mut want = Vec::new();
    for i in (0..41).rev() {
        let name = format!("p{i:02}.service");
        let u = Unit::new(&name, &file(&format!("/bin/echo {i}")), TargetState::Loaded);
        client.create_or_update_unit(&u).await.expect("create");
        want.push(name);
    }
    want.sort();
    let units = client.units().await.expect("units");
    let names: Vec<String> = units.into_iter().map(|u| u.name).collect();
    assert_eq!(names, want);
    let states = client
        .unit_states(&StateFilter::default())
        .await
        .expect("states");
    assert!(states.is_empty(), "{states:?}");
}
