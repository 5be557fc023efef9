//! The server's own PKI: a CA (created on first start, key in a 0600 file),
//! the server certificate for its host names (plus `localhost` and
//! 127.0.0.1), and device client certificates signed from enrollment CSRs.
//!
//! A device certificate carries the device id as subject CN and as the URI
//! SAN `urn:palisade:device:<id>`; [`device_id_from_cert`] is the only place
//! a device identity is read. The server decides every field of a device
//! certificate: nothing from the CSR but its public key is kept. This module
//! must never log or `Debug`-print a private key.

use crate::config::ServerConfig;
use palisade_proto::DEVICE_URI_SAN_PREFIX;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(397 * 86_400);
const SERVER_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Certificates are valid from a little before issue, for clock skew.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not hold a usable {what}: {source}")]
    BadMaterial {
        path: String,
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
    #[error("could not issue certificate: {0}")]
    Issue(rcgen::Error),
    #[error("certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate carries no device id (no {DEVICE_URI_SAN_PREFIX}<id> URI SAN)")]
    NoDeviceId,
}

/// A device certificate just issued.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCert {
    pub pem: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_after: SystemTime,
}

/// The CA and the server's TLS identity.
pub struct ServerPki {
    ca_cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    server_cert_pem: String,
    server_key_pem: String,
    device_cert_validity: Duration,
}

// === impl ServerPki ===

impl ServerPki {
    /// Load the CA and server certificate from the configured paths, creating
    /// whatever is missing.
    pub fn load_or_create(cfg: &ServerConfig) -> Result<Self, PkiError> {
        let (ca_cert_path, ca_key_path) = (cfg.ca_cert_path(), cfg.ca_key_path());
        let (ca_cert_pem, ca_key) = if ca_cert_path.exists() || ca_key_path.exists() {
            let cert = read(&ca_cert_path)?;
            let key = KeyPair::from_pem(&read(&ca_key_path)?)
                .map_err(|source| bad(&ca_key_path, "CA private key", source))?;
            (cert, key)
        } else {
            let key = KeyPair::generate().map_err(PkiError::Issue)?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(PkiError::Issue)?
                .pem();
            write_secret(&ca_key_path, &key.serialize_pem())?;
            write_public(&ca_cert_path, &cert)?;
            info!(path = %ca_cert_path.display(), "Created server CA");
            (cert, key)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)
            .map_err(|source| bad(&ca_cert_path, "CA certificate", source))?;

        let (srv_cert_path, srv_key_path) = (cfg.server_cert_path(), cfg.server_key_path());
        let operator_provided = cfg.tls.server_cert.is_some();
        let existing = if srv_cert_path.exists() || srv_key_path.exists() {
            let key_pem = read(&srv_key_path)?;
            KeyPair::from_pem(&key_pem)
                .map_err(|source| bad(&srv_key_path, "server private key", source))?;
            let cert_pem = read(&srv_cert_path)?;
            match server_cert_problem(&cert_pem, &cfg.hostnames) {
                None => Some((cert_pem, key_pem)),
                Some(problem) if operator_provided => {
                    warn!(path = %srv_cert_path.display(), problem, "Configured server certificate needs attention");
                    Some((cert_pem, key_pem))
                }
                Some(problem) => {
                    info!(path = %srv_cert_path.display(), problem, "Reissuing server certificate");
                    None
                }
            }
        } else {
            None
        };
        let (server_cert_pem, server_key_pem) = match existing {
            Some(pair) => pair,
            None => {
                let key = KeyPair::generate().map_err(PkiError::Issue)?;
                let cert = server_params(&cfg.hostnames)?
                    .signed_by(&key, &issuer)
                    .map_err(PkiError::Issue)?
                    .pem();
                write_secret(&srv_key_path, &key.serialize_pem())?;
                write_public(&srv_cert_path, &cert)?;
                info!(path = %srv_cert_path.display(), hostnames = ?cfg.hostnames, "Created server certificate");
                (cert, key.serialize_pem())
            }
        };
        Ok(Self {
            ca_cert_pem,
            issuer,
            server_cert_pem,
            server_key_pem,
            device_cert_validity: Duration::from_secs(u64::from(cfg.tls.device_cert_days) * 86_400),
        })
    }

    /// The CA certificate agents trust for the server (and which signs them).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub(crate) fn server_identity_pem(&self) -> (&str, &str) {
        (&self.server_cert_pem, &self.server_key_pem)
    }

    /// Sign a device certificate for `device_id` with the CSR's public key.
    /// Subject, SANs, usages and validity are the server's, never the CSR's.
    pub fn sign_device_csr(&self, csr_pem: &str, device_id: &str) -> Result<IssuedCert, PkiError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let now = SystemTime::now();
        let not_after = now + self.device_cert_validity;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        dn.push(DnType::CommonName, device_id);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            format!("{DEVICE_URI_SAN_PREFIX}{device_id}")
                .try_into()
                .map_err(PkiError::Issue)?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = (now - BACKDATE).into();
        p.not_after = not_after.into();
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        csr.params = p;
        let cert = csr.signed_by(&self.issuer).map_err(PkiError::Issue)?;
        let der = cert.der();
        let serial = parse_serial(der)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            fingerprint: fingerprint(der),
            serial,
            not_after,
        })
    }
}

impl std::fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPki")
            .field("ca_cert_pem_len", &self.ca_cert_pem.len())
            .field("ca_key", &"...")
            .field("server_key", &"...")
            .field("device_cert_validity", &self.device_cert_validity)
            .finish()
    }
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The device id a client certificate was issued for.
pub fn device_id_from_cert(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?
        .ok_or(PkiError::NoDeviceId)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(DEVICE_URI_SAN_PREFIX),
            _ => None,
        })
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or(PkiError::NoDeviceId)
}

fn parse_serial(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(hex::encode(cert.raw_serial()))
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    dn.push(DnType::CommonName, "Palisade Control Plane CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + CA_VALIDITY).into();
    p.serial_number = Some(random_serial());
    p
}

fn server_params(hostnames: &[String]) -> Result<CertificateParams, PkiError> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(hostnames.iter().cloned());
    let mut p = CertificateParams::new(names).map_err(PkiError::Issue)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    dn.push(
        DnType::CommonName,
        hostnames.first().map(String::as_str).unwrap_or("localhost"),
    );
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + SERVER_CERT_VALIDITY).into();
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Why a server certificate we issued must be reissued: it expires within
/// [`SERVER_CERT_RENEW_BEFORE`], or does not cover a configured host name.
fn server_cert_problem(cert_pem: &str, hostnames: &[String]) -> Option<String> {
    let der = match rustls_pemfile::certs(&mut cert_pem.as_bytes()).next() {
        Some(Ok(der)) => der,
        _ => return Some("not a PEM certificate".into()),
    };
    let (_, cert) = match x509_parser::parse_x509_certificate(&der) {
        Ok(c) => c,
        Err(e) => return Some(format!("unparseable: {e}")),
    };
    let renew_at = SystemTime::now() + SERVER_CERT_RENEW_BEFORE;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    if SystemTime::UNIX_EPOCH + Duration::from_secs(not_after) < renew_at {
        return Some("expires soon".into());
    }
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    hostnames
        .iter()
        .filter(|h| h.parse::<std::net::IpAddr>().is_err())
        .find(|h| !names.contains(&h.to_ascii_lowercase()))
        .map(|h| format!("does not cover host name {h}"))
}

fn bad(path: &Path, what: &'static str, source: rcgen::Error) -> PkiError {
    PkiError::BadMaterial {
        path: path.display().to_string(),
        what,
        source,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_file(path, contents, 0o644)
}

fn write_secret(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_file(path, contents, 0o600)
}

/// Write via a temporary file and rename, so a crash never leaves half a key.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(dir: &Path) -> ServerPki {
        ServerPki::load_or_create(&ServerConfig::for_data_dir(dir)).unwrap()
    }

    fn csr() -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn creates_once_then_reloads_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = pki(dir.path());
        let b = pki(dir.path());
        assert_eq!(a.ca_cert_pem(), b.ca_cert_pem());
        assert_eq!(a.server_identity_pem(), b.server_identity_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.key", "server.key"] {
                let mode = std::fs::metadata(dir.path().join("tls").join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn device_cert_carries_server_chosen_id_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path());
        let issued = p.sign_device_csr(&csr(), "dev-123").unwrap();
        let der = rustls_pemfile::certs(&mut issued.pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(device_id_from_cert(&der).unwrap(), "dev-123");
        assert_eq!(issued.fingerprint, fingerprint(&der));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let subject = cert.subject().to_string();
        assert!(
            subject.contains("dev-123") && !subject.contains("someone-else"),
            "{subject}"
        );
        let san = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(!san.contains("evil.example.com"), "{san}");
    }

    #[test]
    fn garbage_csr_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path());
        for bad in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(
                matches!(p.sign_device_csr(bad, "d"), Err(PkiError::BadCsr(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn server_cert_is_not_a_device_cert() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path());
        let der = rustls_pemfile::certs(&mut p.server_identity_pem().0.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert!(matches!(
            device_id_from_cert(&der),
            Err(PkiError::NoDeviceId)
        ));
        assert!(matches!(
            device_id_from_cert(b"junk"),
            Err(PkiError::BadCertificate(_))
        ));
    }

    #[test]
    fn server_cert_is_reissued_for_new_host_names_with_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = pki(dir.path());
        let mut cfg = ServerConfig::for_data_dir(dir.path());
        cfg.hostnames = vec!["palisade.example.com".into()];
        let b = ServerPki::load_or_create(&cfg).unwrap();
        assert_eq!(a.ca_cert_pem(), b.ca_cert_pem());
        assert_ne!(a.server_identity_pem().0, b.server_identity_pem().0);
        assert_eq!(
            server_cert_problem(b.server_identity_pem().0, &cfg.hostnames),
            None
        );
        assert!(
            server_cert_problem(a.server_identity_pem().0, &cfg.hostnames)
                .unwrap()
                .contains("palisade.example.com")
        );
        // Stable once it covers them.
        let c = ServerPki::load_or_create(&cfg).unwrap();
        assert_eq!(b.server_identity_pem(), c.server_identity_pem());
        assert!(server_cert_problem("junk", &[]).is_some());
    }

    #[test]
    fn corrupt_ca_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path());
        std::fs::write(dir.path().join("tls/ca.key"), "garbage").unwrap();
        let e = ServerPki::load_or_create(&ServerConfig::for_data_dir(dir.path())).unwrap_err();
        assert!(
            matches!(
                e,
                PkiError::BadMaterial {
                    what: "CA private key",
                    ..
                }
            ),
            "{e}"
        );
    }
}
