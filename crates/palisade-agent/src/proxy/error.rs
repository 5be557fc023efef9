//! Proxy errors that remember whose fault they were (client, upstream,
//! policy, internal), so records, responses and retries can tell them apart.
//!
//! Messages here end up in audit records and in error bodies shown to users:
//! they must never contain request content or secrets.

use std::error::Error as StdError;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Client,
    Upstream,
    Policy,
    Internal,
}

impl ErrorSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Policy => "policy",
            ErrorSource::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyError {
    pub source: ErrorSource,
    pub message: String,
}

impl ProxyError {
    pub fn new(source: ErrorSource, message: impl Into<String>) -> Self {
        Self {
            source,
            message: message.into(),
        }
    }

    /// A failed TLS handshake with an upstream, with the reason spelled out.
    pub fn upstream_tls(host: &str, e: &(dyn StdError + 'static)) -> Self {
        Self::new(
            ErrorSource::Upstream,
            format!("TLS handshake with upstream {host} failed: {}", chain(e)),
        )
    }

    /// Classify an error from hyper's pooled client.
    pub fn from_client_error(host: &str, e: &hyper_util::client::legacy::Error) -> Self {
        let detail = chain(e);
        if has_rustls_error(e) || detail.contains("certificate") || detail.contains("TLS") {
            return Self::new(
                ErrorSource::Upstream,
                format!("TLS handshake with upstream {host} failed: {detail}"),
            );
        }
        if let Some(pe) = find::<ProxyError>(e) {
            return pe.clone();
        }
        Self::new(
            ErrorSource::Upstream,
            format!("upstream {host} failed: {detail}"),
        )
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.source.as_str(), self.message)
    }
}

impl StdError for ProxyError {}

/// The error and its sources joined with ": ", skipping repeats.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = inner.downcast_ref::<T>() {
                    return Some(t);
                }
            }
        }
        cur = err.source();
    }
    None
}

fn has_rustls_error(e: &(dyn StdError + 'static)) -> bool {
    find::<rustls::Error>(e).is_some()
}
