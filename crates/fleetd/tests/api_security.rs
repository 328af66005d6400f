//! The API's protection, end to end: a real fleetd (embedded registry, process supervisor)
//! serving TLS with client certificates or tokens, the real fleetctl against it, and the
//! start-up checks (a TCP listener off loopback without protection, the socket's group, a bad
//! tokens file). Certificates come from `testkit::pki`, made in the test.

mod common;

use api::auth::token_hash;
use api::types::MachineMetadataOp;
use common::{run_fleetctl, wait_for, Fleetd, Node, DEADLINE};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use testkit::pki::{Ca, CertFiles, Leaf};

/// The CA, fleetd's certificate (for 127.0.0.1 only) and a client certificate, in `dir`.
struct Pki {
    ca: PathBuf,
    server: CertFiles,
    client: CertFiles,
    /// Another CA and a client certificate it signed: unknown to fleetd and to clients.
    other_ca: PathBuf,
    other_client: CertFiles,
    ca_signer: Ca,
}

fn pki(dir: &Path) -> Pki {
    let ca = Ca::new("fleet-api-test-ca").unwrap();
    let other = Ca::new("someone-else").unwrap();
    Pki {
        ca: ca.write_cert(&dir.join("ca.pem")).unwrap(),
        server: ca
            .issue(&Leaf::server(&["127.0.0.1"]), dir, "server")
            .unwrap(),
        client: ca.issue(&Leaf::client("alice"), dir, "client").unwrap(),
        other_ca: other.write_cert(&dir.join("other-ca.pem")).unwrap(),
        other_client: other
            .issue(&Leaf::client("mallory"), dir, "other-client")
            .unwrap(),
        ca_signer: ca,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The TCP address fleetd logged it serves on (fleetd binds port 0, so no port is raced for).
fn tcp_addr(fleetd: &Fleetd) -> String {
    wait_for("fleetd's TCP listener in its log", DEADLINE, || {
        let log = fleetd.log();
        let at = log.find("listener=tcp://")? + "listener=tcp://".len();
        let addr: String = log[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        (!addr.is_empty()).then_some(addr)
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// fleetctl's failure: exit status not 0, and stderr holds every one of `needles`, on one line.
fn fails_with(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "fleetctl succeeded: {out:?}");
    let err = stderr(out);
    assert!(
        err.lines().any(|l| needles.iter().all(|n| l.contains(n))),
        "no line of stderr holds {needles:?}:\n{err}"
    );
}

const HELLO: &str = "[Service]\nExecStart=/bin/sleep 600\n";

#[test]
fn https_with_client_certificates() {
    let node = Node::new("mtls");
    let p = pki(node.dir());
    let mut fleetd = node.start(&[
        "--api-listen",
        &format!("unix://{},tcp://127.0.0.1:0", s(&node.socket())),
        "--api-tls-cert",
        &s(&p.server.cert),
        "--api-tls-key",
        &s(&p.server.key),
        "--api-tls-client-ca",
        &s(&p.ca),
    ]);
    fleetd.wait_registered();
    let addr = tcp_addr(&fleetd);
    let https = format!("https://{addr}");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("hello.service"), HELLO).unwrap();
    let with = |endpoint: &str, args: &[&str]| run_fleetctl(endpoint, Some(work.path()), args);
    let ca = s(&p.ca);
    let cert = s(&p.client.cert);
    let key = s(&p.client.key);
    let good = ["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];

    // The right CA and a client certificate: everything works, a certificate gets admin.
    let out = with(&https, &[&good[..], &["list-machines", "--full"]].concat());
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&node.machine_id), "{}", stdout(&out));
    let out = with(
        &https,
        &[&good[..], &["start", "--no-block", "hello.service"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    fleetd.api().wait_running("hello.service");

    // fleetd's certificate checked against another CA.
    let other_ca = s(&p.other_ca);
    let out = with(
        &https,
        &[
            "--ca-file",
            &other_ca,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "list-machines",
        ],
    );
    fails_with(&out, &["unknown CA", &other_ca]);

    // A name the certificate does not list.
    let port = addr.rsplit(':').next().unwrap();
    let out = with(
        &format!("https://localhost:{port}"),
        &[&good[..], &["list-machines"]].concat(),
    );
    fails_with(&out, &["wrong host name", "localhost"]);

    // No client certificate, or one from a CA fleetd does not trust.
    let out = with(&https, &["--ca-file", &ca, "list-machines"]);
    fails_with(&out, &["client certificate", "--cert-file"]);
    let out = with(
        &https,
        &[
            "--ca-file",
            &ca,
            "--cert-file",
            &s(&p.other_client.cert),
            "--key-file",
            &s(&p.other_client.key),
            "list-machines",
        ],
    );
    fails_with(&out, &["refused our client certificate"]);

    // No CA to check fleetd against: said before anything is sent.
    let out = with(&https, &["list-machines"]);
    fails_with(&out, &["--ca-file"]);

    // The unix socket keeps working without any of it.
    let out = with(&format!("unix://{}", s(&node.socket())), &["list-units"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("hello.service"), "{}", stdout(&out));
}

#[test]
fn an_expired_server_certificate_is_named() {
    let node = Node::new("expired");
    let p = pki(node.dir());
    let expired = p
        .ca_signer
        .issue(
            &Leaf::server(&["127.0.0.1"]).expired(),
            node.dir(),
            "expired",
        )
        .unwrap();
    let mut fleetd = node.start(&[
        "--api-listen",
        &format!("unix://{},tcp://127.0.0.1:0", s(&node.socket())),
        "--api-tls-cert",
        &s(&expired.cert),
        "--api-tls-key",
        &s(&expired.key),
        "--api-tls-client-ca",
        &s(&p.ca),
    ]);
    fleetd.wait_registered();
    let https = format!("https://{}", tcp_addr(&fleetd));
    let out = run_fleetctl(
        &https,
        None,
        &[
            "--ca-file",
            &s(&p.ca),
            "--cert-file",
            &s(&p.client.cert),
            "--key-file",
            &s(&p.client.key),
            "list-machines",
        ],
    );
    fails_with(&out, &["certificate has expired"]);
}

/// A client of the API at `endpoint` with `token` (TLS checked against `ca`).
struct Client {
    rt: tokio::runtime::Runtime,
    api: api::Client,
}

impl Client {
    fn new(endpoint: &str, ca: &Path, token: Option<&str>) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tls = api::client::TlsFiles {
            ca_file: Some(ca.to_path_buf()),
            ..Default::default()
        }
        .load()
        .unwrap();
        let api = api::Client::with_security(
            endpoint,
            api::ClientOptions::default(),
            api::Security {
                tls: Some(tls),
                token: token.map(str::to_string),
            },
        )
        .unwrap();
        Client { rt, api }
    }

    fn patch(&self, machine: &str) -> Result<(), api::ClientError> {
        self.rt.block_on(
            self.api
                .patch_machines(&[MachineMetadataOp::set(machine, "rack", "r1")]),
        )
    }
}

#[test]
fn tokens_and_roles() {
    let node = Node::new("tokens");
    let p = pki(node.dir());
    let tokens = node.dir().join("tokens");
    let (read, write, admin) = ("read-token-1", "write-token-2", "admin-token-3");
    std::fs::write(
        &tokens,
        format!(
            "# test tokens\nviewer read {}\nci write {}\nops admin {}\n",
            token_hash(read),
            token_hash(write),
            token_hash(admin)
        ),
    )
    .unwrap();
    let mut fleetd = node.start(&[
        "--api-listen",
        &format!("unix://{},tcp://127.0.0.1:0", s(&node.socket())),
        "--api-tls-cert",
        &s(&p.server.cert),
        "--api-tls-key",
        &s(&p.server.key),
        "--api-tokens-file",
        &s(&tokens),
    ]);
    fleetd.wait_registered();
    let https = format!("https://{}", tcp_addr(&fleetd));
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("hello.service"), HELLO).unwrap();
    let ca = s(&p.ca);
    let ctl = |token: Option<&str>, args: &[&str]| {
        let mut all = vec!["--ca-file", &ca];
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend(args);
        run_fleetctl(&https, Some(work.path()), &all)
    };

    fails_with(
        &ctl(None, &["list-machines"]),
        &["401", "needs a token", "--token"],
    );
    fails_with(
        &ctl(Some("guess"), &["list-machines"]),
        &["401", "unknown token"],
    );

    let out = ctl(Some(read), &["list-machines", "--full"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&node.machine_id));
    fails_with(
        &ctl(Some(read), &["start", "--no-block", "hello.service"]),
        &[
            "403",
            "\"viewer\"",
            "role read",
            "needs role write",
            "role too weak",
        ],
    );
    assert!(fleetd.api().unit("hello.service").is_none());

    let out = ctl(Some(write), &["start", "--no-block", "hello.service"]);
    assert!(out.status.success(), "{out:?}");
    fleetd.api().wait_running("hello.service");

    // Machine metadata needs admin.
    let err = Client::new(&https, &p.ca, Some(write))
        .patch(&node.machine_id)
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("needs role admin"), "{err}");
    Client::new(&https, &p.ca, Some(admin))
        .patch(&node.machine_id)
        .unwrap();

    // FLEETCTL_TOKEN works as --token does.
    let out = std::process::Command::new(common::fleetctl_binary())
        .args(["--ca-file", &ca, "list-units"])
        .env("FLEETCTL_ENDPOINT", &https)
        .env("FLEETCTL_TOKEN", read)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A token made by fleetctl, added to the file, is let in after SIGHUP.
    let made = run_fleetctl(
        &https,
        None,
        &["token", "new", "--name", "late", "--role", "read"],
    );
    assert!(made.status.success(), "{made:?}");
    let made = stdout(&made);
    let mut lines = made.lines();
    let (new_token, line) = (lines.next().unwrap(), lines.next().unwrap());
    fails_with(&ctl(Some(new_token), &["list-units"]), &["unknown token"]);
    let mut text = std::fs::read_to_string(&tokens).unwrap();
    text.push_str(&format!("{line}\n"));
    std::fs::write(&tokens, text).unwrap();
    fleetd.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the new token to be accepted", DEADLINE, || {
        ctl(Some(new_token), &["list-units"])
            .status
            .success()
            .then_some(())
    });

    // The unix socket needs no token.
    let out = run_fleetctl(
        &format!("unix://{}", s(&node.socket())),
        None,
        &["list-units"],
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_token_is_not_sent_in_the_clear_off_this_machine() {
    let out = run_fleetctl(
        "http://192.0.2.1:49153",
        None,
        &["--token", "x", "list-units"],
    );
    fails_with(&out, &["only sent over https://"]);
}

#[test]
fn tcp_off_loopback_needs_protection_or_an_explicit_override() {
    let node = Node::new("exposed");
    let p = pki(node.dir());
    let listen = format!("unix://{},tcp://0.0.0.0:0", s(&node.socket()));

    // Plain TCP on every interface: refused at start, naming the options.
    let mut fleetd = node.start(&["--api-listen", &listen]);
    let status = fleetd.wait_exit();
    assert!(!status.success());
    let log = fleetd.log();
    assert!(
        log.lines().any(
            |l| l.contains("refusing to serve the API on tcp://0.0.0.0:")
                && l.contains("api_tls_cert")
                && l.contains("api_insecure_tcp")
        ),
        "{log}"
    );

    // TLS without any client authentication: refused too.
    let mut fleetd = node.start(&[
        "--api-listen",
        &listen,
        "--api-tls-cert",
        &s(&p.server.cert),
        "--api-tls-key",
        &s(&p.server.key),
    ]);
    assert!(!fleetd.wait_exit().success());
    assert!(fleetd.log().contains("TLS alone"), "{}", fleetd.log());

    // The operator's explicit override: served, with a warning in the log.
    let mut fleetd = node.start(&["--api-listen", &listen, "--api-insecure-tcp"]);
    fleetd.wait_registered();
    fleetd.wait_log("api_insecure_tcp = true");
    let log = fleetd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("off loopback unprotected")),
        "{log}"
    );
    let port = tcp_addr(&fleetd).rsplit(':').next().unwrap().to_string();
    let out = run_fleetctl(
        &format!("http://127.0.0.1:{port}"),
        None,
        &["list-machines"],
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn unix_socket_is_0660_and_given_the_configured_group() {
    let node = Node::new("group");
    // A group this process is in, so fleetd (running as us) may give the socket to it.
    let gid = nix::unistd::getgroups()
        .ok()
        .and_then(|g| g.last().copied())
        .unwrap_or_else(nix::unistd::getegid);
    let group = nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.as_raw().to_string());
    let mut fleetd = node.start(&["--api-socket-group", &group]);
    fleetd.wait_registered();
    let meta = std::fs::metadata(node.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid.as_raw(), "group {group}");

    // An unknown group stops fleetd, naming the option.
    let other = Node::new("nogroup");
    let mut fleetd = other.start(&["--api-socket-group", "no-such-group-fleet-test"]);
    assert!(!fleetd.wait_exit().success());
    assert!(
        fleetd.log().contains("api_socket_group"),
        "{}",
        fleetd.log()
    );
}

#[test]
fn a_bad_tokens_file_stops_fleetd_naming_file_and_line() {
    let node = Node::new("badtokens");
    let tokens = node.dir().join("tokens");
    std::fs::write(
        &tokens,
        format!("ok read {}\nbroken admin\n", token_hash("t")),
    )
    .unwrap();
    let mut fleetd = node.start(&["--api-tokens-file", &s(&tokens)]);
    assert!(!fleetd.wait_exit().success());
    let log = fleetd.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&s(&tokens)) && l.contains("line 2") && l.contains("3 fields")),
        "{log}"
    );
}

/// One etcd member serving clients over TLS and requiring client certificates; `None` (the
/// test skips, or fails under `CI=true`) when there is no etcd binary.
fn etcd_tls() -> Option<testkit::etcd::EtcdCluster> {
    testkit::etcd::started_or_skip(testkit::etcd::EtcdCluster::start_tls(1, true))
}

#[test]
fn fleetd_reaches_etcd_over_tls_with_its_client_certificate() {
    let Some(etcd) = etcd_tls() else { return };
    let pki = etcd.tls().unwrap().clone();
    let node = Node::new("etcdtls");
    let etcd_args = |with_cert: bool| {
        let mut args = node.embedded_args();
        let at = args.iter().position(|a| a == "embedded").unwrap();
        args[at] = "etcd".into();
        args.extend([
            "--etcd-servers".into(),
            etcd.endpoints().join(","),
            "--etcd-cafile".into(),
            s(&pki.ca),
            "--etcd-request-timeout".into(),
            "3".into(),
        ]);
        if with_cert {
            args.extend([
                "--etcd-certfile".into(),
                s(&pki.client_cert),
                "--etcd-keyfile".into(),
                s(&pki.client_key),
            ]);
        }
        args
    };
    let mut fleetd = node.start_raw(&etcd_args(true));
    let api = fleetd.wait_registered();
    assert_eq!(api.machines().unwrap()[0].id, node.machine_id);
    drop(fleetd);

    // Without the client certificate etcd refuses: fleetd never registers and says why.
    let mut fleetd = node.start_raw(&etcd_args(false));
    fleetd.wait_log("registering this machine failed");
    assert!(
        fleetd
            .log()
            .lines()
            .any(|l| l.contains("registering this machine failed")
                && l.contains("etcd_certfile and etcd_keyfile")),
        "{}",
        fleetd.log()
    );
    assert!(fleetd.running(), "{}", fleetd.log());
    assert!(fleetd.api().machines().is_err());
}
