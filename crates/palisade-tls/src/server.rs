//! rustls server configs for the client-facing side of an intercepted
//! connection.
//!
//! One `ServerConfig` serves every intercepted host (certificates come from
//! the [`LeafCache`] resolver), so session resumption works across hosts
//! and connections. This module must never build a config per host on the
//! hot path, and never ask local clients for certificates.

use crate::{crypto, LeafCache};
use rustls::server::{ClientHello, ResolvesServerCert, WantsServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ConfigBuilder, ServerConfig};
use std::fmt;
use std::sync::Arc;

/// ALPN offered to local clients: HTTP/2 preferred, HTTP/1.1 fallback.
pub fn default_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// ONE ServerConfig for all intercepted hosts (so session resumption
/// works): cert resolver = the LeafCache, ALPN `["h2", "http/1.1"]`.
pub fn mitm_server_config(leaves: Arc<LeafCache>) -> Arc<ServerConfig> {
    mitm_server_config_with_alpn(leaves, default_alpn())
}

/// Like [`mitm_server_config`] with another ALPN list (e.g. only
/// `http/1.1` when the upstream does not speak h2). Configs built from the
/// same cache share one session store, so resumption still works.
pub fn mitm_server_config_with_alpn(
    leaves: Arc<LeafCache>,
    alpn: Vec<Vec<u8>>,
) -> Arc<ServerConfig> {
    let sessions = leaves.sessions();
    let mut config = builder().with_cert_resolver(leaves);
    config.session_storage = sessions;
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// For a ClientHello without SNI the proxy knows the host from CONNECT; it
/// builds a one-off config holding that host's leaf.
pub fn single_cert_server_config(key: Arc<CertifiedKey>) -> Arc<ServerConfig> {
    let mut config = builder().with_cert_resolver(Arc::new(FixedCert(key)));
    config.alpn_protocols = default_alpn();
    Arc::new(config)
}

fn builder() -> ConfigBuilder<ServerConfig, WantsServerCert> {
    ServerConfig::builder_with_provider(crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_no_client_auth()
}

/// Always answers with the same certificate, SNI or not.
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl fmt::Debug for FixedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedCert(..)")
    }
}

#[cfg(test)]
mod tests;
