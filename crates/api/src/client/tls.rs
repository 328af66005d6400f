//! TLS to fleetd (`https://` endpoints): the client configuration fleetctl's `--ca-file`,
//! `--cert-file` and `--key-file` describe, a [`Transport`] that wraps another in TLS, and the
//! one-line sentences that name why a handshake failed.

use super::transport::{BoxStream, ConnectFuture, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files of fleetctl's TLS flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) fleetd's certificate must chain to (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for fleetd's `api_tls_client_ca` (`--cert-file`,
    /// `--key-file`); both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A TLS client configuration, ready to use (cheap to clone).
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// For error messages: the CA file the server was checked against.
    pub(crate) ca_file: PathBuf,
}

impl TlsFiles {
    /// Reads the files. A static binary has no system CA store to fall back on, so the CA file
    /// is required: there is no way to verify fleetd without it.
    pub fn load(&self) -> Result<TlsConfig, String> {
        let Some(ca_file) = &self.ca_file else {
            return Err("https:// endpoints need --ca-file (or FLEETCTL_CA_FILE): the CA that signed fleetd's api_tls_cert; fleetctl has no system CA store to fall back on".into());
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = read_certs(ca_file, "--ca-file")?;
        for c in certs {
            roots.add(c).map_err(|e| {
                format!(
                    "--ca-file {}: not a usable CA certificate: {e}",
                    ca_file.display()
                )
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--cert-file")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!(
                        "--key-file {}: no PEM private key could be read: {e}",
                        key.display()
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!("--cert-file and --key-file do not make a usable pair: {e}")
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--cert-file and --key-file go together: give both or neither".into()),
        };
        Ok(TlsConfig {
            config: Arc::new(config),
            ca_file: ca_file.clone(),
        })
    }
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Why TLS with fleetd failed, in one sentence that names the cause.
#[derive(Debug)]
pub(crate) struct TlsFailure(pub(crate) String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

/// `inner` (TCP, an SSH tunnel) with TLS on top, checking the certificate against `host`.
pub(crate) struct TlsTransport {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) tls: TlsConfig,
    pub(crate) host: String,
}

impl Transport for TlsTransport {
    fn connect(&self) -> ConnectFuture {
        let inner = self.inner.connect();
        let connector = tokio_rustls::TlsConnector::from(self.tls.config.clone());
        let host = self.host.clone();
        let ca_file = self.tls.ca_file.clone();
        Box::pin(async move {
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    TlsFailure(format!("{host:?} is not a host name TLS can check: {e}")),
                )
            })?;
            let stream = inner.await?;
            match connector.connect(name, stream).await {
                Ok(s) => Ok(Box::new(s) as BoxStream),
                Err(e) => {
                    let sentence = e
                        .get_ref()
                        .and_then(|r| r.downcast_ref::<rustls::Error>())
                        .map(|r| describe(r, &host, &ca_file))
                        .unwrap_or_else(|| format!("TLS handshake with fleetd failed: {e}"));
                    Err(io::Error::new(e.kind(), TlsFailure(sentence)))
                }
            }
        })
    }
}

/// The sentence for a TLS error seen by the client.
pub(crate) fn describe(e: &rustls::Error, host: &str, ca_file: &Path) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "fleetd's certificate has expired: renew fleetd's api_tls_cert".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "fleetd's certificate is not valid yet: check the clocks of both machines".into()
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "fleetd's certificate is signed by an unknown CA: it does not chain to --ca-file {}",
                ca_file.display()
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("fleetd's certificate is not valid for the host name {host} (wrong host name): use a name the certificate lists in --endpoint, or reissue it")
            }
            other => format!("fleetd's certificate was refused: {other:?}"),
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "fleetd requires a client certificate: give --cert-file and --key-file".into()
        }
        E::AlertReceived(AlertDescription::UnknownCA) => {
            "fleetd refused our client certificate: it is signed by an unknown CA (not fleetd's api_tls_client_ca)".into()
        }
        E::AlertReceived(AlertDescription::CertificateExpired) => {
            "fleetd refused our client certificate: it has expired".into()
        }
        E::AlertReceived(AlertDescription::BadCertificate)
        | E::AlertReceived(AlertDescription::UnsupportedCertificate) => {
            "fleetd refused our client certificate (check --cert-file against fleetd's api_tls_client_ca)".into()
        }
        E::AlertReceived(AlertDescription::HandshakeFailure) => {
            "fleetd refused the TLS handshake (does it require a client certificate? give --cert-file and --key-file)".into()
        }
        E::InvalidMessage(_) => {
            "the server does not speak TLS: is the endpoint http:// rather than https://?".into()
        }
        other => format!("TLS with fleetd failed: {other}"),
    }
}

/// The TLS sentence inside an error chain from hyper, if TLS is what failed (a handshake, or
/// an alert read after it: TLS 1.3 servers refuse a missing client certificate then).
pub(crate) fn tls_cause(
    e: &(dyn std::error::Error + 'static),
    host: &str,
    ca_file: Option<&Path>,
) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<TlsFailure>() {
            return Some(f.0.clone());
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(r, host, ca_file.unwrap_or(Path::new("?"))));
        }
        // io::Error hides its payload from `source()`: look inside.
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(f) = inner.downcast_ref::<TlsFailure>() {
                return Some(f.0.clone());
            }
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(describe(r, host, ca_file.unwrap_or(Path::new("?"))));
            }
        }
        cur = err.source();
    }
    None
}
