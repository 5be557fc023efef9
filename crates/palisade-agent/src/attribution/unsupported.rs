//! The attributor for platforms without an implementation yet: every lookup
//! fails with a clear "not implemented on <os>" error. It must never guess.

use super::{AttributionError, Attributor, ProcessInfo};
use std::net::SocketAddr;

/// Says "unknown" clearly on every lookup.
#[derive(Debug, Clone)]
pub struct UnsupportedAttributor {
    os: &'static str,
}

impl UnsupportedAttributor {
    pub fn new(os: &'static str) -> Self {
        Self { os }
    }
}

impl Attributor for UnsupportedAttributor {
    fn lookup(
        &self,
        _peer: SocketAddr,
        _local: SocketAddr,
    ) -> Result<ProcessInfo, AttributionError> {
        Err(AttributionError::Unsupported { os: self.os })
    }
}
