//! A throwaway PKI for tests, made in-process with `rcgen`: a CA, server and client
//! certificates it signs, and the odd ones tests need (expired, for another host name).
//!
//! ```no_run
//! let dir = tempfile::tempdir()?;
//! let ca = testkit::pki::Ca::new("fleet-test-ca")?;
//! let ca_pem = ca.write_cert(&dir.path().join("ca.pem"))?;
//! let server = ca.issue(&testkit::pki::Leaf::server(&["127.0.0.1", "localhost"]), dir.path(), "server")?;
//! let client = ca.issue(&testkit::pki::Leaf::client("alice"), dir.path(), "client")?;
//! println!("{} {} {}", ca_pem.display(), server.cert.display(), client.key.display());
//! # anyhow::Ok(())
//! ```
//!
//! Keys are ECDSA P-256. Each [`Ca`] is unrelated to every other, so one CA's certificates are
//! "unknown CA" to a verifier trusting another.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A certificate authority that signs [`Leaf`] certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, written as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a leaf certificate says: names, purpose and validity.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub common_name: String,
    /// DNS names or IP addresses (an entry that parses as an IP is an IP SAN).
    pub names: Vec<String>,
    pub server: bool,
    pub client: bool,
    /// Validity window; the default starts an hour ago and lasts a day.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    /// A server certificate for `names` (host names or IPs).
    pub fn server(names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            common_name: names.first().copied().unwrap_or("server").to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
            server: true,
            client: false,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(86_400),
        }
    }

    /// A client certificate whose common name is `name`.
    pub fn client(name: &str) -> Leaf {
        Leaf {
            common_name: name.to_string(),
            names: Vec::new(),
            server: false,
            client: true,
            ..Leaf::server(&[])
        }
    }

    /// The same certificate, expired since yesterday.
    pub fn expired(self) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            not_before: now - Duration::from_secs(3 * 86_400),
            not_after: now - Duration::from_secs(86_400),
            ..self
        }
    }
}

impl Ca {
    /// A fresh self-signed CA named `name`, valid from an hour ago for a day.
    pub fn new(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(7 * 86_400)).into();
        params.not_after = (now + Duration::from_secs(7 * 86_400)).into();
        let key = KeyPair::generate().context("generating the CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("signing the CA")?;
        Ok(Ca { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path` (PEM) and returns the path.
    pub fn write_cert(&self, path: &Path) -> Result<PathBuf> {
        write(path, &self.cert_pem())?;
        Ok(path.to_path_buf())
    }

    /// Signs `leaf` and writes `dir/NAME.pem` and `dir/NAME.key`.
    pub fn issue(&self, leaf: &Leaf, dir: &Path, name: &str) -> Result<CertFiles> {
        let (cert, key) = self.issue_pem(leaf)?;
        let files = CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        write(&files.cert, &cert)?;
        write(&files.key, &key)?;
        Ok(files)
    }

    /// Signs `leaf`: (certificate PEM, private key PEM).
    pub fn issue_pem(&self, leaf: &Leaf) -> Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("leaf parameters")?;
        params.distinguished_name = dn(&leaf.common_name);
        for n in &leaf.names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        n.clone()
                            .try_into()
                            .with_context(|| format!("{n:?} is not a DNS name"))?,
                    ),
                });
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// PEM files of a test PKI: a CA, a server certificate for `127.0.0.1`/`localhost`, and a
/// client certificate, both signed by the CA.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Creates a fresh CA and its server and client certificates in `dir` (`ca.pem`,
/// `server.pem`/`.key`, `client.pem`/`.key`).
pub fn make_test_pki(dir: &Path) -> Result<TlsFiles> {
    let ca = Ca::new("fleet-test-ca")?;
    let ca_path = ca.write_cert(&dir.join("ca.pem"))?;
    let server = ca.issue(&Leaf::server(&["127.0.0.1", "localhost"]), dir, "server")?;
    let client = ca.issue(&Leaf::client("fleet-test-client"), dir, "client")?;
    Ok(TlsFiles {
        ca: ca_path,
        server_cert: server.cert,
        server_key: server.key,
        client_cert: client.cert,
        client_key: client.key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = make_test_pki(dir.path()).unwrap();
        for p in [&files.ca, &files.server_cert, &files.client_cert] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        }
        let key = std::fs::read_to_string(&files.server_key).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{key}");
    }
}
