//! `Secret`: owned secret bytes (private keys, tokens).
//!
//! It exists so that key material is zeroed when dropped and can never be
//! printed by accident: `Debug` shows `Secret(..)`, and there is no `Display`.

use std::fmt;
use zeroize::Zeroizing;

/// Secret bytes; `Debug` prints `Secret(..)`, never the bytes; zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// The secret bytes. Callers must not log or persist them elsewhere.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8 (PEM keys are text).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Self {
        Secret::new(bytes)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_bytes() {
        let s = Secret::from("hunter2-very-secret".to_string());
        let dbg = format!("{s:?} {s:#?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(s.expose(), b"hunter2-very-secret");
        assert_eq!(s.expose_str(), Some("hunter2-very-secret"));
    }
}
