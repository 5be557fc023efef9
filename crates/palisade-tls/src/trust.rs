//! Upstream trust: which CAs the proxy accepts when it opens TLS to the real
//! AI provider, plus PEM helpers and the combined bundle for tools that take
//! a single CA file.
//!
//! Trust is the OS store (never only bundled roots: companies behind a
//! TLS-inspecting proxy depend on it) plus an optional extra bundle. Bad OS
//! certificates are logged and skipped; a bad *configured* bundle is an
//! error naming the file. This module must never disable verification.

use crate::{crypto, DeviceCa, TlsError};
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use tracing::{info, warn};

/// Upstream trust: the OS roots plus an optional extra CA bundle (PEM file).
/// ALPN is given by the caller (e.g. `[b"h2", b"http/1.1"]`).
pub fn upstream_client_config(
    extra_ca_pem: Option<&Path>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = os_roots();
    if let Some(path) = extra_ca_pem {
        let certs = load_pem_certs(path)?;
        let count = certs.len();
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_path_buf(),
                reason: format!("not usable as a trust anchor: {e}"),
            })?;
        }
        info!(path = %path.display(), certs = count, "Loaded extra upstream CA bundle");
    }
    if roots.is_empty() {
        warn!("No trusted roots for upstream TLS; every upstream handshake will fail");
    }
    Ok(upstream_client_config_with_roots(roots, alpn))
}

/// A client config trusting exactly `roots`.
pub fn upstream_client_config_with_roots(
    roots: RootCertStore,
    alpn: Vec<Vec<u8>>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// The OS trust store. Unreadable or unparsable certificates are logged and
/// skipped, never fatal.
pub fn os_roots() -> RootCertStore {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        warn!(%error, "Could not load some OS root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    info!(
        added,
        ignored,
        errors = loaded.errors.len(),
        "Loaded OS root certificates"
    );
    roots
}

/// Every certificate in a PEM file. Errors name the file: unreadable, not
/// PEM, or no `CERTIFICATE` block at all.
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(|e| TlsError::io("reading CA bundle", path, e))?;
    let certs = pem_certs(&bytes).map_err(|reason| TlsError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: format!("certificate #{} is not valid X.509: {e}", i + 1),
        })?;
    }
    Ok(certs)
}

/// The `CERTIFICATE` blocks of a PEM document (other blocks are skipped).
pub(crate) fn pem_certs(mut pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))
}

/// Encode one DER certificate as PEM (64-column base64).
pub fn cert_der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A combined bundle (OS roots + device CA) as PEM, for tools that take a
/// single bundle (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`). The device CA comes
/// first and appears once even if the OS store already holds it. Fails when
/// the OS store yields nothing: a bundle with only the device CA would
/// break every non-AI host for those tools.
pub fn combined_bundle_pem(ca: &DeviceCa) -> Result<String, TlsError> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        warn!(%error, "Could not load some OS root certificates for the combined bundle");
    }
    if loaded.certs.is_empty() {
        let reason = match loaded.errors.first() {
            Some(e) => e.to_string(),
            None => "the OS trust store is empty".to_string(),
        };
        return Err(TlsError::NoOsRoots { reason });
    }
    let ca_der = ca.cert_der();
    let mut out = ca.cert_pem();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let mut seen = std::collections::HashSet::new();
    seen.insert(ca_der.as_ref().to_vec());
    for cert in loaded.certs {
        if seen.insert(cert.as_ref().to_vec()) {
            out.push_str(&cert_der_to_pem(&cert));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
