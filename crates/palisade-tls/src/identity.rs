//! Device mTLS identities: the agent makes a key and a CSR at enrollment,
//! the control plane's [`IdentityCa`] signs it into a client certificate.
//!
//! The server never trusts what a CSR claims: the subject, SAN, key usage
//! and validity of the issued certificate come from the enrollment (the
//! device id the token was issued for), only the public key and the CSR's
//! proof of possession come from the request. This module must never return
//! a CA or server-auth certificate from `sign_device_csr`, and never print
//! private keys.

use crate::ca::BACKDATE;
use crate::{crypto, Secret, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::time::{Duration, SystemTime};

/// URI SAN prefix naming a device: `spiffe://palisade/device/<device id>`.
pub const DEVICE_URI_PREFIX: &str = "spiffe://palisade/device/";
/// Longest accepted device id.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Lifetime of the control plane's identity CA.
pub const IDENTITY_CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);

/// A fresh ECDSA P-256 key pair: (PKCS#8 PEM private key, SubjectPublicKeyInfo PEM).
pub fn generate_key_pair() -> Result<(Secret, String), TlsError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::cert_gen("device key"))?;
    Ok((Secret::from(key.serialize_pem()), key.public_key_pem()))
}

/// A PEM CSR for `device_id`, signed with `key_pem` (PKCS#8 PEM, e.g. from
/// [`generate_key_pair`]): CN = device id, SAN = `spiffe://palisade/device/<id>`.
pub fn device_csr(key_pem: &Secret, device_id: &str) -> Result<String, TlsError> {
    validate_device_id(device_id)?;
    let key = parse_key(key_pem, "device key")?;
    let params = device_params(device_id)?;
    let csr = params
        .serialize_request(&key)
        .map_err(TlsError::cert_gen("device CSR"))?;
    csr.pem().map_err(TlsError::cert_gen("device CSR PEM"))
}

/// The device id named by a device certificate's URI SAN (what the server
/// reads from a verified mTLS peer certificate).
pub fn device_id_from_cert(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let bad = |reason: &str| TlsError::Csr {
        reason: reason.to_string(),
    };
    let (_, cert) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| bad("peer certificate is not X.509"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("peer certificate has a malformed SAN"))?
        .ok_or_else(|| bad("peer certificate has no SAN"))?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(DEVICE_URI_PREFIX),
        _ => None,
    });
    let id = ids
        .next()
        .ok_or_else(|| bad("peer certificate names no device"))?;
    if ids.next().is_some() {
        return Err(bad("peer certificate names more than one device"));
    }
    validate_device_id(id)?;
    Ok(id.to_string())
}

/// The control plane's CA for device (client) and server identities.
pub struct IdentityCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

// === impl IdentityCa ===

impl IdentityCa {
    /// A new CA; returns it and its PKCS#8 PEM key, which the caller stores.
    pub fn generate(common_name: &str) -> Result<(IdentityCa, Secret), TlsError> {
        if common_name.trim().is_empty() || common_name.chars().count() > 64 {
            return Err(TlsError::InvalidCommonName {
                name: common_name.to_string(),
                reason: "must be 1 to 64 characters",
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(TlsError::cert_gen("identity CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Palisade");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + IDENTITY_CA_VALIDITY).into();
        params.serial_number = Some(crypto::random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(TlsError::cert_gen("identity CA certificate"))?;
        let key_pem = Secret::from(key.serialize_pem());
        let ca = IdentityCa::from_parts(cert.der().clone(), cert.pem(), key)?;
        Ok((ca, key_pem))
    }

    /// Load a CA from its certificate PEM and PKCS#8 PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<IdentityCa, TlsError> {
        let key = parse_key(key_pem, "identity CA key")?;
        let der = crate::trust::pem_certs(cert_pem.as_bytes())
            .map_err(|reason| TlsError::InvalidKey {
                what: "identity CA certificate",
                reason,
            })?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::InvalidKey {
                what: "identity CA certificate",
                reason: "no CERTIFICATE block".to_string(),
            })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::InvalidKey {
                what: "identity CA certificate",
                reason: e.to_string(),
            })?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TlsError::InvalidKey {
                what: "identity CA key",
                reason: "does not match the CA certificate".to_string(),
            });
        }
        IdentityCa::from_parts(der, cert_pem.to_string(), key)
    }

    fn from_parts(
        der: CertificateDer<'static>,
        pem: String,
        key: KeyPair,
    ) -> Result<IdentityCa, TlsError> {
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(TlsError::cert_gen("identity CA issuer"))?;
        Ok(IdentityCa {
            issuer,
            cert_der: der,
            cert_pem: pem,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// Sign an enrolling device's CSR into a client certificate (PEM).
    ///
    /// The CSR's signature must verify, its key must be ECDSA P-256/P-384 or
    /// Ed25519, and the device it names (CN and any device URI SAN) must be
    /// `device_id`. Everything else in the CSR is ignored: the certificate
    /// gets CN + URI SAN for `device_id`, EKU clientAuth only, CA:false.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        device_id: &str,
        validity: Duration,
    ) -> Result<String, TlsError> {
        validate_device_id(device_id)?;
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| TlsError::Csr {
                reason: match e {
                    rcgen::Error::InvalidCertificationRequestSignature => {
                        "signature does not verify".to_string()
                    }
                    rcgen::Error::CouldNotParseCertificationRequest => {
                        "not a PEM certificate request".to_string()
                    }
                    other => other.to_string(),
                },
            })?;
        let alg = csr.public_key.algorithm();
        if ![
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ECDSA_P384_SHA384,
            &PKCS_ED25519,
        ]
        .contains(&alg)
        {
            return Err(TlsError::Csr {
                reason: format!("key algorithm {alg:?} is not accepted"),
            });
        }
        let claimed_cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_value_string);
        if claimed_cn.as_deref() != Some(device_id) {
            return Err(TlsError::Csr {
                reason: format!(
                    "CSR names device {:?}, enrollment is for {device_id:?}",
                    claimed_cn.unwrap_or_default()
                ),
            });
        }
        for san in &csr.params.subject_alt_names {
            if let SanType::URI(uri) = san {
                if let Some(id) = uri.as_str().strip_prefix(DEVICE_URI_PREFIX) {
                    if id != device_id {
                        return Err(TlsError::Csr {
                            reason: format!(
                                "CSR SAN names device {id:?}, enrollment is for {device_id:?}"
                            ),
                        });
                    }
                }
            }
        }
        let mut params = device_params(device_id)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.finish(params, validity, &csr.public_key)
    }

    /// A server certificate (and its fresh key) for the control plane's
    /// gRPC/HTTPS listener: SANs = `hosts` (DNS names or IP literals).
    pub fn issue_server_cert(
        &self,
        hosts: &[String],
        validity: Duration,
    ) -> Result<(String, Secret), TlsError> {
        if hosts.is_empty() {
            return Err(TlsError::InvalidHost {
                host: String::new(),
                reason: "no host names given",
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, hosts[0].as_str());
        params.distinguished_name = dn;
        for host in hosts {
            params
                .subject_alt_names
                .push(match crate::leaf::LeafName::parse(host)? {
                    crate::leaf::LeafName::Dns(name) => {
                        SanType::DnsName(name.try_into().map_err(|_| TlsError::InvalidHost {
                            host: host.clone(),
                            reason: "not IA5",
                        })?)
                    }
                    crate::leaf::LeafName::Ip(ip) => SanType::IpAddress(ip),
                });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(TlsError::cert_gen("server key"))?;
        let cert = self.finish(params, validity, &key)?;
        Ok((cert, Secret::from(key.serialize_pem())))
    }

    fn finish(
        &self,
        mut params: CertificateParams,
        validity: Duration,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, TlsError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + validity).into();
        params.serial_number = Some(crypto::random_serial()?);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(TlsError::cert_gen("identity certificate"))?;
        Ok(cert.pem())
    }
}

impl fmt::Debug for IdentityCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityCa")
            .field("key", &"..")
            .finish_non_exhaustive()
    }
}

fn device_params(device_id: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device_id);
    params.distinguished_name = dn;
    let uri = format!("{DEVICE_URI_PREFIX}{device_id}");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(|_| TlsError::Csr {
        reason: "device id is not IA5".to_string(),
    })?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn validate_device_id(id: &str) -> Result<(), TlsError> {
    let err = |reason: &str| {
        Err(TlsError::Csr {
            reason: format!("invalid device id {id:?}: {reason}"),
        })
    };
    if id.is_empty() {
        return err("empty");
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return err("longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return err("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn parse_key(key_pem: &Secret, what: &'static str) -> Result<KeyPair, TlsError> {
    let pem = key_pem.expose_str().ok_or_else(|| TlsError::InvalidKey {
        what,
        reason: "not UTF-8 PEM".into(),
    })?;
    KeyPair::from_pem(pem).map_err(|e| TlsError::InvalidKey {
        what,
        reason: e.to_string(),
    })
}

fn dn_value_string(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        rcgen::DnValue::BmpString(_) | rcgen::DnValue::UniversalString(_) => String::new(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
