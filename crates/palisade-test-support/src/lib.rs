//! Fakes that stand OUTSIDE the product, for end-to-end tests: a throwaway
//! test CA, a fake AI provider upstream over real TLS (HTTP/1.1 and HTTP/2),
//! and plain TCP echo / sink servers for blind-tunnel tests and benches.
//!
//! Nothing here may be used by product code, listen anywhere but loopback,
//! or reach the network. Setup failures panic (this is test code) with a
//! message that says what failed.

mod ca;
pub mod canned;
mod compress;
mod fake;
pub mod syslog;
mod tcp;

pub use ca::TestCa;
pub use fake::{FakeProvider, RecordedRequest};
pub use syslog::{parse_rfc5424, SyslogCollector, SyslogMessage};
pub use tcp::{start_echo_tcp, start_sink_tcp, SinkServer};

/// The ring crypto provider, chosen explicitly so tests never depend on a
/// process-wide default provider being installed.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config that trusts only `ca` and offers `alpn`
/// (e.g. `&[b"h2", b"http/1.1"]`).
pub fn client_config(ca: &TestCa, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(ca.root_store())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}
