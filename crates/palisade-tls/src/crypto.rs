//! The one crypto provider (`ring`) used by every config and signature here.
//!
//! It exists so nothing in this crate depends on a process-wide default
//! provider; it must never call `CryptoProvider::install_default`.

use crate::TlsError;
use rustls::crypto::CryptoProvider;
use std::sync::{Arc, OnceLock};

/// The `ring` provider, built once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A random, positive 128-bit certificate serial number.
///
/// Random (not derived from the key) so a certificate re-issued from the
/// same key never repeats an issuer+serial pair, which browsers reject.
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(rustls::Error::from)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the encoding is exactly 16 bytes
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}
