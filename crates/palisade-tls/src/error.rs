//! The one error type of palisade-tls.
//!
//! Every variant names the thing that failed (a path, a key name, a host) so
//! the message is actionable on its own. It must never carry secret bytes:
//! keyring errors are flattened to their message because some keyring error
//! variants hold the raw secret.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file or directory operation failed.
    #[error("{op} {path}: {source}", path = .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A key file is readable by group or others; we refuse to use it.
    #[error(
        "refusing to read key file {path}: mode {mode:04o} allows group/world access (expected 0600; fix with `chmod 600 {path}`)",
        path = .path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },

    /// The key directory cannot be made private (shared, sticky or not ours).
    #[error("key directory {path} cannot be used: {reason}", path = .path.display())]
    InsecureKeyDir { path: PathBuf, reason: String },

    /// A key path exists but is not a regular file (symlink, directory, ...).
    #[error("key path {path} is not a regular file", path = .path.display())]
    NotARegularFile { path: PathBuf },

    /// A key name that cannot be used as an entry / file name.
    #[error("invalid key name {name:?}: {reason}")]
    InvalidKeyName { name: String, reason: &'static str },

    /// The OS keyring failed (message only; see module docs).
    #[error("keyring {op} of {name:?} failed: {message}")]
    Keyring {
        op: &'static str,
        name: String,
        message: String,
    },

    /// A CA common name (device label) that cannot be used.
    #[error("invalid device CA name {name:?}: {reason}")]
    InvalidCommonName { name: String, reason: &'static str },

    /// A host that cannot be put in a certificate.
    #[error("invalid host {host:?} for a leaf certificate: {reason}")]
    InvalidHost { host: String, reason: &'static str },

    /// Stored key material could not be parsed.
    #[error("invalid {what}: {reason}")]
    InvalidKey { what: &'static str, reason: String },

    /// Certificate or CSR generation / signing failed.
    #[error("certificate generation failed ({what}): {source}")]
    CertGen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// A PEM file held no certificate.
    #[error("no certificates found in {path} (expected PEM `-----BEGIN CERTIFICATE-----` blocks)", path = .path.display())]
    NoCertificates { path: PathBuf },

    /// A PEM file held something that is not a usable certificate.
    #[error("bad certificate in {path}: {reason}", path = .path.display())]
    BadCertificate { path: PathBuf, reason: String },

    /// The OS trust store yielded no certificates at all.
    #[error("no OS root certificates could be loaded: {reason}")]
    NoOsRoots { reason: String },

    /// A certificate signing request was rejected.
    #[error("certificate signing request rejected: {reason}")]
    Csr { reason: String },

    /// rustls refused a key or configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        TlsError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn cert_gen(what: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| TlsError::CertGen { what, source }
    }
}
