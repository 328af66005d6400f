//! TLS on TCP listeners: handshakes do not wait for one another, client certificates are
//! required when a client CA is set, and the start-up check of unprotected listeners.

mod common;

use server::listen::{bind, check_exposure, serve_with, Exposure, Listen};
use server::tls::{ServerTls, TlsFiles};
use std::time::Duration;
use testkit::pki::{Ca, Leaf};
use tokio::io::AsyncWriteExt;

struct Served {
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
    client: testkit::pki::CertFiles,
    _dir: tempfile::TempDir,
    _env: common::Env,
}

async fn served(client_ca: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server-test-ca").unwrap();
    let ca_path = ca.write_cert(&dir.path().join("ca.pem")).unwrap();
    let cert = ca
        .issue(&Leaf::server(&["127.0.0.1"]), dir.path(), "server")
        .unwrap();
    let client = ca.issue(&Leaf::client("c"), dir.path(), "client").unwrap();
    let tls = ServerTls::load(&TlsFiles {
        cert: cert.cert,
        key: cert.key,
        client_ca: client_ca.then(|| ca_path.clone()),
    })
    .unwrap();
    let env = common::Env::new(100).await;
    env.state.set_available(true);
    let listeners = bind(&[Listen::Tcp("127.0.0.1:0".into())]).await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    tokio::spawn(serve_with(
        listeners,
        server::router(env.state.clone()),
        Some(tls),
        std::future::pending(),
    ));
    Served {
        addr,
        ca: ca_path,
        client,
        _dir: dir,
        _env: env,
    }
}

fn client(s: &Served, with_cert: bool) -> api::Client {
    let files = api::client::TlsFiles {
        ca_file: Some(s.ca.clone()),
        cert_file: with_cert.then(|| s.client.cert.clone()),
        key_file: with_cert.then(|| s.client.key.clone()),
    };
    api::Client::with_security(
        &format!("https://{}", s.addr),
        api::ClientOptions {
            // Far longer than a handshake takes, far shorter than HANDSHAKE_TIMEOUT: a request
            // that waited for the silent client's handshake to time out would fail.
            request_timeout: Duration::from_secs(5),
        },
        api::Security {
            tls: Some(files.load().unwrap()),
            token: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_the_handshakes_of_others() {
    assert!(server::tls::HANDSHAKE_TIMEOUT > Duration::from_secs(5));
    let s = served(false).await;
    // Connected, never says a word (a half-sent ClientHello, a port scanner).
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    silent.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let c = client(&s, false);
    for _ in 0..3 {
        let doc = c.discovery().await.expect("discovery over TLS");
        assert_eq!(doc["id"], "fleet:v1");
    }
    drop(silent);
}

#[tokio::test]
async fn a_client_ca_requires_a_client_certificate() {
    let s = served(true).await;
    let err = client(&s, false).discovery().await.unwrap_err();
    assert!(
        matches!(err, api::ClientError::Tls { .. })
            && err.to_string().contains("client certificate"),
        "{err}"
    );
    let doc = client(&s, true)
        .discovery()
        .await
        .expect("with a certificate");
    assert_eq!(doc["id"], "fleet:v1");
    // Plain HTTP to the TLS port gets nowhere.
    let plain =
        api::Client::new(&format!("http://{}", s.addr), api::ClientOptions::default()).unwrap();
    assert!(plain.discovery().await.is_err());
}

#[tokio::test]
async fn unprotected_tcp_off_loopback_is_refused_unless_overridden() {
    let local = bind(&[Listen::Tcp("127.0.0.1:0".into())]).await.unwrap();
    let any = bind(&[Listen::Tcp("0.0.0.0:0".into())]).await.unwrap();
    let none = Exposure::default();
    // Loopback is fine as it is (tunnels, fleet's habit).
    assert_eq!(check_exposure(&local, none), Ok(vec![]));
    let err = check_exposure(&any, none).unwrap_err();
    assert!(
        err.contains("api_tls_cert") && err.contains("api_insecure_tcp"),
        "{err}"
    );
    let tls_only = Exposure { tls: true, ..none };
    assert!(check_exposure(&any, tls_only)
        .unwrap_err()
        .contains("TLS alone"));
    for ok in [
        Exposure {
            client_certs: true,
            ..tls_only
        },
        Exposure {
            tokens: true,
            ..tls_only
        },
    ] {
        assert_eq!(check_exposure(&any, ok), Ok(vec![]));
    }
    let warned = check_exposure(
        &any,
        Exposure {
            insecure_tcp: true,
            ..none
        },
    )
    .unwrap();
    assert_eq!(warned.len(), 1);
    assert!(warned[0].contains("api_insecure_tcp = true"), "{warned:?}");
}

#[tokio::test]
async fn loopback_tcp_without_tls_follows_the_token_rules() {
    use api::auth::token_hash;
    use server::access::{Access, Tokens};
    let env = common::Env::new(100).await;
    env.state.set_available(true);
    let tokens = Tokens::parse(&format!("viewer read {}", token_hash("t-read"))).unwrap();
    let state = env
        .state
        .clone()
        .with_access(std::sync::Arc::new(Access::new(Some(tokens))));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let listeners = bind(&[
        Listen::Tcp("127.0.0.1:0".into()),
        Listen::Unix(sock.clone()),
    ])
    .await
    .unwrap();
    let addr = listeners[0].local_addr().unwrap();
    tokio::spawn(serve_with(
        listeners,
        server::router(state),
        None,
        std::future::pending(),
    ));
    let with = |endpoint: &str, token: Option<&str>| {
        api::Client::with_security(
            endpoint,
            api::ClientOptions::default(),
            api::Security {
                tls: None,
                token: token.map(str::to_string),
            },
        )
        .unwrap()
    };
    let http = format!("http://{addr}");
    let err = with(&http, None).machines().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    with(&http, Some("t-read")).machines().await.unwrap();
    let err = with(&http, Some("t-read"))
        .destroy_unit("a.service")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    // The unix socket of the same server is trusted by its permissions.
    with(&format!("unix://{}", sock.display()), None)
        .machines()
        .await
        .unwrap();
}
