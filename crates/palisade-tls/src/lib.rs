//! palisade-tls: device identity and TLS plumbing for the intercepting proxy.
//!
//! It owns the secret store (OS keyring or 0600 files), the per-device CA,
//! on-demand leaf certificates, the rustls configs for both sides of an
//! intercepted connection, and the CSR/signing helpers for device mTLS.
//! It must never log or `Debug`-print key material, and never install a
//! process-wide rustls crypto provider (every config names `ring` itself).

mod error;
mod keystore;
mod secret;

pub use error::TlsError;
pub use keystore::{KeyBackend, KeyStore, KEYRING_OP_TIMEOUT, KEYRING_PROBE_TIMEOUT, MAX_KEY_NAME_LEN};
pub use secret::Secret;
