//! What an etcd client error means: whether a request may be retried, and the error fleet
//! reports for it, naming the endpoints and the way out.

use super::EtcdOptions;
use crate::store::StoreError;
use etcd_client as ec;

/// What an etcd client error means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// The request certainly did not reach a member able to act on it: safe to retry anything.
    NotSent,
    /// etcd or the connection failed; a write may or may not have happened.
    Transient,
    Compacted,
    LeaseNotFound,
    /// Retrying will not help (bad request, permission, too many ops).
    Permanent,
}

pub(super) fn classify(e: &ec::Error) -> Class {
    if is_certificate_error(e) {
        return Class::Permanent;
    }
    match e {
        ec::Error::TransportError(_) | ec::Error::IoError(_) => {
            if is_connect_error(e) {
                Class::NotSent
            } else {
                Class::Transient
            }
        }
        ec::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                return Class::Compacted;
            }
            if msg.contains("requested lease not found") {
                return Class::LeaseNotFound;
            }
            // With require-leader set, etcd refuses before doing anything.
            if msg.contains("no leader") {
                return Class::NotSent;
            }
            // gRPC status codes (tonic::Code is a fieldless enum with the wire numbers).
            const CANCELLED: i32 = 1;
            const UNKNOWN: i32 = 2;
            const DEADLINE_EXCEEDED: i32 = 4;
            const ABORTED: i32 = 10;
            const INTERNAL: i32 = 13;
            const UNAVAILABLE: i32 = 14;
            match status.code() as i32 {
                UNAVAILABLE if is_connect_error(e) => Class::NotSent,
                UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN | ABORTED | INTERNAL => {
                    Class::Transient
                }
                _ => Class::Permanent,
            }
        }
        ec::Error::LeaseKeepAliveError(msg) if msg.contains("lease not found") => {
            Class::LeaseNotFound
        }
        ec::Error::WatchError(_) | ec::Error::LeaseKeepAliveError(_) => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Whether the error is a failure to open a connection (refused, unreachable), which means the
/// request was never sent.
fn is_connect_error(e: &ec::Error) -> bool {
    let inner: &(dyn std::error::Error + 'static) = match e {
        ec::Error::TransportError(t) => t,
        ec::Error::GRpcStatus(s) => s,
        ec::Error::IoError(io) => io,
        _ => return false,
    };
    let mut cur = Some(inner);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NotConnected
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    // Not every layer keeps the io::Error as a source; hyper and tonic do name the failure.
    let text = format!("{e:?}").to_ascii_lowercase();
    text.contains("connection refused") || text.contains("tcp connect error")
}

/// A TLS handshake that failed on the server's certificate: a configuration error that retrying
/// will not fix.
pub(super) fn is_certificate_error(e: &ec::Error) -> bool {
    format!("{e:?}").contains("invalid peer certificate")
}

/// An error etcd or the TLS layer gave that retrying will not fix, with the way out.
pub(super) fn refused(opts: &EtcdOptions, what: &str, e: &ec::Error) -> StoreError {
    let endpoints = opts.endpoints.join(",");
    if is_certificate_error(e) {
        return StoreError::Other(format!(
            "etcd at {endpoints}: the server's TLS certificate was refused during {what} ({e}); \
             check that etcd_cafile is the CA that signed it and that it names the endpoint's host"
        ));
    }
    StoreError::Other(format!("etcd at {endpoints} refused {what}: {e}"))
}

pub(super) fn unavailable(opts: &EtcdOptions, what: &str, last: Option<&ec::Error>) -> StoreError {
    StoreError::Unavailable(unavailable_message(opts, what, last))
}

pub(super) fn unavailable_message(
    opts: &EtcdOptions,
    what: &str,
    last: Option<&ec::Error>,
) -> String {
    let cause = match last {
        Some(e) => format!(" (last error: {e})"),
        None => String::new(),
    };
    // etcd with --client-cert-auth closes the connection of a client without a certificate it
    // trusts, which looks like an outage from here: name that possibility when TLS is used.
    let tls_hint = if opts.endpoints.iter().any(|e| e.starts_with("https://")) {
        if opts.cert_file.is_some() {
            "; over TLS, also that etcd trusts the CA of etcd_certfile"
        } else {
            "; over TLS, also whether etcd requires client certificates (--client-cert-auth): \
             then set etcd_certfile and etcd_keyfile"
        }
    } else {
        ""
    };
    format!(
        "etcd at {} did not answer {what} within {:?}{cause}; check that etcd is running and \
         that etcd_servers names it{tls_hint}",
        opts.endpoints.join(","),
        opts.request_timeout
    )
}
