//! The per-device CA that signs the leaf certificates the proxy presents to
//! local apps for intercepted AI hosts.
//!
//! The private key lives only in the [`KeyStore`] (entry `device-ca-key`,
//! PKCS#8 PEM); the certificate is public and lives in
//! `cert_dir/palisade-ca.pem` for export to trust stores and MDM. A missing
//! or mismatched certificate is re-issued from the same key, so installed
//! trust stays valid. This module must never write the key anywhere but the
//! key store, and never print it.

use crate::{crypto, KeyStore, Secret, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Key store entry holding the CA private key (PKCS#8 PEM).
pub const CA_KEY_NAME: &str = "device-ca-key";
/// File name of the CA certificate inside `cert_dir`.
pub const CA_CERT_FILE: &str = "palisade-ca.pem";
/// Prefix of the CA's common name.
pub const CA_CN_PREFIX: &str = "Palisade Device CA";
/// CA certificate lifetime (about ten years).
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Re-issue the CA certificate (same key) when it expires sooner than this.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Longest CA common name (RFC 5280 ub-common-name); longer labels are cut.
pub const MAX_CN_CHARS: usize = 64;
/// Certificates start this far in the past to tolerate clock skew.
pub const BACKDATE: Duration = Duration::from_secs(86_400);

/// The per-device CA (ECDSA P-256, CA:true, pathlen 0, KeyUsage
/// keyCertSign + cRLSign, ~10 year validity, CN "Palisade Device CA <label>").
pub struct DeviceCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    cert_path: PathBuf,
    common_name: String,
    not_after: SystemTime,
}

// === impl DeviceCa ===

impl DeviceCa {
    /// Load the CA key from `store` and the certificate from
    /// `cert_dir/palisade-ca.pem`; create both on first start. If the key
    /// exists but the certificate is missing, unreadable, for another key,
    /// not a CA or close to expiry, re-issue it from the same key.
    ///
    /// `common_name` is the device label (hostname or device id); the CN
    /// becomes `Palisade Device CA <label>`. A label that already starts with
    /// that prefix is used as the whole CN; a CN over 64 characters is cut
    /// to 64. The CN of an existing, valid
    /// certificate is kept even if the label changed, so trust stays valid.
    pub fn load_or_create(
        store: &KeyStore,
        cert_dir: &Path,
        common_name: &str,
    ) -> Result<DeviceCa, TlsError> {
        let cn = ca_common_name(common_name)?;
        let cert_path = cert_dir.join(CA_CERT_FILE);
        let (key, created) = match store.get(CA_KEY_NAME)? {
            Some(secret) => (parse_key(&secret)?, false),
            None => {
                if cert_path.exists() {
                    warn!(
                        cert = %cert_path.display(),
                        backend = %store.backend(),
                        "Device CA certificate exists but its key is missing; creating a new CA, trust stores must import the new certificate"
                    );
                }
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(TlsError::cert_gen("device CA key"))?;
                let pem = Secret::from(key.serialize_pem());
                store.set(CA_KEY_NAME, pem.expose())?;
                (key, true)
            }
        };

        let existing = if created {
            Err("new key".to_string())
        } else {
            read_matching_cert(&cert_path, &key)?
        };
        let (cert_der, cert_pem) = match existing {
            Ok(found) => {
                info!(cert = %cert_path.display(), backend = %store.backend(), "Loaded device CA");
                found
            }
            Err(why) => {
                let cert = issue_ca_cert(&key, &cn)?;
                write_public_file(&cert_path, cert.pem().as_bytes())?;
                if created {
                    info!(cert = %cert_path.display(), backend = %store.backend(), cn = %cn, "Created device CA");
                } else {
                    info!(cert = %cert_path.display(), reason = %why, "Re-issued device CA certificate from the existing key");
                }
                (cert.der().clone(), cert.pem())
            }
        };

        let parsed = parse_cert(&cert_der).map_err(|reason| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason,
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(TlsError::cert_gen("device CA issuer"))?;
        Ok(DeviceCa {
            issuer,
            cert_der,
            cert_pem,
            cert_path,
            common_name: parsed.common_name,
            not_after: parsed.not_after,
        })
    }

    /// The CA certificate as PEM, for export to trust stores / MDM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The certificate's common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

impl fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCa")
            .field("common_name", &self.common_name)
            .field("cert_path", &self.cert_path)
            .field("key", &"..")
            .finish()
    }
}

fn ca_common_name(label: &str) -> Result<String, TlsError> {
    let label = label.trim();
    let err = |reason| {
        Err(TlsError::InvalidCommonName {
            name: label.to_string(),
            reason,
        })
    };
    if label.is_empty() {
        return err("empty");
    }
    if label.chars().any(char::is_control) {
        return err("contains control characters");
    }
    let cn = if label.starts_with(CA_CN_PREFIX) {
        label.to_string()
    } else {
        format!("{CA_CN_PREFIX} {label}")
    };
    // X.509 upper bound for a common name (RFC 5280 ub-common-name): a long
    // hostname is cut, not fatal, so the agent still starts.
    Ok(cn.chars().take(MAX_CN_CHARS).collect())
}

fn parse_key(secret: &Secret) -> Result<KeyPair, TlsError> {
    let what = "device CA key (key store entry device-ca-key)";
    let pem = secret.expose_str().ok_or_else(|| TlsError::InvalidKey {
        what,
        reason: "not UTF-8 PEM".to_string(),
    })?;
    KeyPair::from_pem(pem).map_err(|e| TlsError::InvalidKey {
        what,
        reason: e.to_string(),
    })
}

fn issue_ca_cert(key: &KeyPair, cn: &str) -> Result<rcgen::Certificate, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Palisade");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    params.serial_number = Some(crypto::random_serial()?);
    params
        .self_signed(key)
        .map_err(TlsError::cert_gen("device CA certificate"))
}

/// `Ok(Ok(..))`: a usable certificate for `key`. `Ok(Err(why))`: re-issue.
/// `Err`: an I/O error other than "not found" (do not paper over it).
#[allow(clippy::type_complexity)]
fn read_matching_cert(
    path: &Path,
    key: &KeyPair,
) -> Result<Result<(CertificateDer<'static>, String), String>, TlsError> {
    let pem = match fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Err("certificate file missing".into()))
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(Err("certificate file is not text".into()))
        }
        Err(e) => return Err(TlsError::io("reading CA certificate", path, e)),
    };
    let der = match crate::trust::pem_certs(pem.as_bytes()) {
        Ok(mut certs) if !certs.is_empty() => certs.swap_remove(0),
        Ok(_) => return Ok(Err("certificate file holds no certificate".into())),
        Err(e) => return Ok(Err(format!("certificate file is not valid PEM: {e}"))),
    };
    let parsed = match parse_cert(&der) {
        Ok(p) => p,
        Err(reason) => return Ok(Err(format!("certificate unparseable: {reason}"))),
    };
    if parsed.public_key != key.public_key_raw() {
        return Ok(Err("certificate is for a different key".into()));
    }
    if !parsed.is_ca {
        return Ok(Err("certificate is not a CA".into()));
    }
    match parsed.not_after.duration_since(SystemTime::now()) {
        Ok(left) if left > CA_RENEW_BEFORE => {}
        _ => return Ok(Err("certificate expired or expires within 30 days".into())),
    }
    Ok(Ok((der, pem)))
}

struct ParsedCert {
    public_key: Vec<u8>,
    is_ca: bool,
    not_after: SystemTime,
    common_name: String,
}

fn parse_cert(der: &CertificateDer<'_>) -> Result<ParsedCert, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    let ts = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0));
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(ParsedCert {
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        is_ca,
        not_after,
        common_name,
    })
}

/// Atomically write a public (0644) file, creating its directory.
fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| TlsError::io("creating certificate directory", dir, e))?;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{CA_CERT_FILE}.tmp.{}.{n}", std::process::id()));
    let result = (|| {
        fs::write(&tmp, contents).map_err(|e| TlsError::io("writing", &tmp, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
                .map_err(|e| TlsError::io("setting mode 0644 on", &tmp, e))?;
        }
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| TlsError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| TlsError::io("renaming certificate onto", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
