//! Host name patterns (`api.openai.com`, `*.openai.azure.com`).
//!
//! Matching is case-insensitive, ignores a trailing dot, and a `*.` wildcard
//! matches one or more labels but never the bare apex.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A host pattern: either an exact name or `*.suffix`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    /// Lower-cased, without trailing dot. For wildcards, the suffix after `*.`.
    name: String,
    wildcard: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid host pattern {pattern:?}: {reason}")]
pub struct HostPatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, HostPatternError> {
        let err = |reason| HostPatternError {
            pattern: s.to_string(),
            reason,
        };
        let t = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, t),
        };
        if name.is_empty() {
            return Err(err("empty host"));
        }
        if name.contains('*') {
            return Err(err("'*' is only allowed as a leading '*.' label"));
        }
        if name.len() > 253 {
            return Err(err("longer than 253 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' || c == ':')
        {
            return Err(err("contains characters not allowed in a host name"));
        }
        if name.split('.').any(|l| l.is_empty()) {
            return Err(err("contains an empty label"));
        }
        Ok(Self { name, wildcard })
    }

    /// Does `host` (as seen in SNI, CONNECT or Host header) match this pattern?
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host[host.len() - self.name.len()..].eq_ignore_ascii_case(&self.name)
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host.eq_ignore_ascii_case(&self.name)
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({self})")
    }
}

impl TryFrom<String> for HostPattern {
    type Error = HostPatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HostPattern> for String {
    fn from(p: HostPattern) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let p = HostPattern::parse("API.OpenAI.com.").unwrap();
        assert!(p.matches("api.openai.com"));
        assert!(p.matches("api.openai.com."));
        assert!(!p.matches("xapi.openai.com"));
        let w = HostPattern::parse("*.openai.azure.com").unwrap();
        assert!(w.matches("acme.openai.azure.com"));
        assert!(w.matches("a.b.openai.azure.com"));
        assert!(!w.matches("openai.azure.com"));
        assert!(!w.matches("evilopenai.azure.com"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["", "*", "a.*.com", "a..b", "foo bar", "*.", "a/b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
