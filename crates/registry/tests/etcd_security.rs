//! TLS (server verification against `etcd_cafile`, client certificates) and etcd user
//! authentication, against real etcd processes started by each test.

use registry::etcd::{EtcdOptions, EtcdStore};
use registry::{Op, Store, StoreError};
use std::time::Duration;
use testkit::etcd::{make_test_pki, EtcdCluster};

fn opts(cluster: &EtcdCluster) -> EtcdOptions {
    EtcdOptions {
        endpoints: cluster.endpoints(),
        request_timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    }
}

async fn works(store: &EtcdStore) -> Result<(), StoreError> {
    store
        .txn(vec![], vec![Op::put("/sec/k", "v")], vec![])
        .await?;
    let kv = store.get("/sec/k").await?;
    assert_eq!(kv.map(|kv| kv.value), Some(b"v".to_vec()));
    Ok(())
}

/// Makes user `root` (password `s3cret`) with the root role, and turns etcd's authentication on.
async fn enable_auth(admin: &EtcdStore) {
    let mut client = admin.client();
    client.user_add("root", "s3cret", None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.auth_enable().await.unwrap();
}

/// Connects as `root` with `password`, otherwise as `base` says.
async fn connect_as(base: &EtcdOptions, password: &str) -> Result<EtcdStore, StoreError> {
    EtcdStore::connect(EtcdOptions {
        username: Some("root".into()),
        password: Some(password.into()),
        ..base.clone()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_server_against_the_given_ca_only() {
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start_tls(1, false)).unwrap();
    let pki = cluster.tls().unwrap().clone();
    assert!(cluster.endpoints()[0].starts_with("https://"));

    let good = EtcdStore::connect(EtcdOptions {
        ca_file: Some(pki.ca.clone()),
        ..opts(&cluster)
    })
    .await
    .unwrap();
    works(&good).await.unwrap();

    // A CA that did not sign the server's certificate: nothing gets through.
    let other = tempfile::tempdir().unwrap();
    let other_pki = make_test_pki(other.path()).unwrap();
    let wrong = EtcdStore::connect(EtcdOptions {
        ca_file: Some(other_pki.ca),
        ..opts(&cluster)
    })
    .await
    .unwrap();
    let err = works(&wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    assert!(err.to_string().contains("etcd_cafile"), "{err}");

    // https without a CA is refused up front rather than verified against nothing.
    let err = EtcdStore::connect(opts(&cluster)).await.unwrap_err();
    assert!(err.to_string().contains("etcd_cafile"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented_when_etcd_requires_them() {
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start_tls(1, true)).unwrap();
    let pki = cluster.tls().unwrap().clone();

    let anonymous = EtcdStore::connect(EtcdOptions {
        ca_file: Some(pki.ca.clone()),
        ..opts(&cluster)
    })
    .await
    .unwrap();
    assert!(
        works(&anonymous).await.is_err(),
        "etcd accepted a client without a certificate"
    );

    let with_cert = EtcdStore::connect(EtcdOptions {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        ..opts(&cluster)
    })
    .await
    .unwrap();
    works(&with_cert).await.unwrap();

    // A client certificate from a CA etcd does not trust is refused like none at all.
    let other = tempfile::tempdir().unwrap();
    let other_pki = make_test_pki(other.path()).unwrap();
    let stranger = EtcdStore::connect(EtcdOptions {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(other_pki.client_cert),
        key_file: Some(other_pki.client_key),
        ..opts(&cluster)
    })
    .await
    .unwrap();
    assert!(
        works(&stranger).await.is_err(),
        "etcd accepted a client certificate of another CA"
    );

    let half = EtcdStore::connect(EtcdOptions {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        ..opts(&cluster)
    })
    .await
    .unwrap_err();
    assert!(half.to_string().contains("together"), "{half}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_authenticate() {
    let cluster = tokio::task::block_in_place(EtcdCluster::single).unwrap();
    let admin = EtcdStore::connect(opts(&cluster)).await.unwrap();
    enable_auth(&admin).await;

    let authed = connect_as(&opts(&cluster), "s3cret").await.unwrap();
    works(&authed).await.unwrap();

    let wrong = connect_as(&opts(&cluster), "nope").await.unwrap_err();
    assert!(matches!(wrong, StoreError::Other(_)), "{wrong:?}");
    assert!(
        wrong.to_string().contains("authentication failed"),
        "{wrong}"
    );

    // Without credentials etcd refuses, and the refusal is not mistaken for an outage.
    let err = works(&admin).await.unwrap_err();
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_is_never_ignored() {
    // etcd_cafile with a plain http:// endpoint would mean no verification at all: refused,
    // naming the endpoint, instead of silently talking in the clear.
    let cluster = tokio::task::block_in_place(EtcdCluster::single).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_test_pki(dir.path()).unwrap();
    let err = EtcdStore::connect(EtcdOptions {
        ca_file: Some(pki.ca),
        ..opts(&cluster)
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_client_certificate_together_over_tls() {
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start_tls(1, true)).unwrap();
    let pki = cluster.tls().unwrap().clone();
    let tls = || EtcdOptions {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        ..opts(&cluster)
    };
    let admin = EtcdStore::connect(tls()).await.unwrap();
    enable_auth(&admin).await;

    let authed = connect_as(&tls(), "s3cret").await.unwrap();
    works(&authed).await.unwrap();
    let wrong = connect_as(&tls(), "nope").await.unwrap_err();
    assert!(
        wrong.to_string().contains("authentication failed"),
        "{wrong}"
    );
}
