//! How to reach etcd, and the TLS set-up those options ask for.

use crate::store::{Result, StoreError};
use etcd_client as ec;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach etcd: fleet's `etcd_servers`, `etcd_request_timeout`, `etcd_cafile`,
/// `etcd_certfile`, `etcd_keyfile`, `etcd_username` and `etcd_password`. The key prefix
/// (`etcd_key_prefix`) is applied by [`crate::Registry`], not here.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://host:port`, or `https://` with `ca_file`).
    pub endpoints: Vec<String>,
    /// Upper bound on every request, retries included.
    pub request_timeout: Duration,
    /// CA that signs the servers' certificates; required for `https://` endpoints. Servers are
    /// always verified against it.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`; both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user and password (etcd's own authentication).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for EtcdOptions {
    /// fleet's defaults: `http://127.0.0.1:2379`, one second per request, no TLS, no auth.
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            request_timeout: Duration::from_secs(1),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    // Hand-written so that the password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub(super) fn tls_options(opts: &EtcdOptions) -> Result<Option<ec::TlsOptions>> {
    let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    let any_tls = opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
    if !https && !any_tls {
        return Ok(None);
    }
    if opts.endpoints.iter().any(|e| !e.starts_with("https://")) {
        return Err(StoreError::Other(format!(
            "TLS options need every etcd endpoint to be https:// (got {})",
            opts.endpoints.join(",")
        )));
    }
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p)
            .map_err(|e| StoreError::Other(format!("reading {what} {}: {e}", p.display())))
    };
    let Some(ca) = &opts.ca_file else {
        return Err(StoreError::Other(
            "https etcd endpoints need etcd_cafile: the servers are always verified".into(),
        ));
    };
    let mut tls =
        ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(read(ca, "etcd_cafile")?));
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(ec::Identity::from_pem(
                read(cert, "etcd_certfile")?,
                read(key, "etcd_keyfile")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Other(
                "etcd_certfile and etcd_keyfile must be given together".into(),
            ))
        }
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let o = EtcdOptions {
            password: Some("hunter2".into()),
            ..EtcdOptions::default()
        };
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn https_without_ca_is_refused() {
        let o = EtcdOptions {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ..EtcdOptions::default()
        };
        let err = tls_options(&o).unwrap_err().to_string();
        assert!(err.contains("etcd_cafile"), "{err}");
        let o = EtcdOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EtcdOptions::default()
        };
        assert!(tls_options(&o)
            .unwrap_err()
            .to_string()
            .contains("https://"));
    }
}
