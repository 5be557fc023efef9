//! palisade-tls: device identity and TLS plumbing for the intercepting proxy.
//!
//! It owns the secret store (OS keyring or 0600 files), the per-device CA,
//! on-demand leaf certificates, the rustls configs for both sides of an
//! intercepted connection, and the CSR/signing helpers for device mTLS.
//! It must never log or `Debug`-print key material, and never install a
//! process-wide rustls crypto provider (every config names `ring` itself).

mod ca;
mod crypto;
mod error;
mod identity;
mod keystore;
mod leaf;
mod secret;
mod server;
mod trust;

#[cfg(test)]
mod test_util;

pub use ca::{
    DeviceCa, BACKDATE, CA_CERT_FILE, CA_CN_PREFIX, CA_KEY_NAME, CA_RENEW_BEFORE, CA_VALIDITY,
    MAX_CN_CHARS,
};
pub use crypto::provider;
pub use error::TlsError;
pub use identity::{
    device_csr, device_id_from_cert, generate_key_pair, IdentityCa, DEVICE_URI_PREFIX,
    IDENTITY_CA_VALIDITY, MAX_DEVICE_ID_LEN,
};
pub use keystore::{
    KeyBackend, KeyStore, KEYRING_OP_TIMEOUT, KEYRING_PROBE_TIMEOUT, MAX_KEY_NAME_LEN,
};
pub use leaf::{
    LeafCache, DEFAULT_LEAF_CACHE_CAPACITY, LEAF_MAX_VALIDITY, LEAF_RENEW_BEFORE, LEAF_VALIDITY,
    SESSION_CACHE_SIZE,
};
pub use secret::Secret;
pub use server::{
    default_alpn, mitm_server_config, mitm_server_config_with_alpn, single_cert_server_config,
};
pub use trust::{
    cert_der_to_pem, combined_bundle_pem, load_pem_certs, os_roots, upstream_client_config,
    upstream_client_config_with_roots,
};
