//! The PAC file served at `/proxy.pac`: only AI hosts go to the proxy,
//! everything else is DIRECT. It must never route hosts that policy says
//! are never intercepted.

use palisade_core::Policy;
use std::net::SocketAddr;

pub const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// Render the PAC script for `policy`, pointing at the proxy on `proxy`.
pub fn render(policy: &Policy, proxy: SocketAddr) -> String {
    let mut out = String::from("function FindProxyForURL(url, host) {\n");
    out.push_str("  host = host.toLowerCase();\n");
    for p in &policy.never_intercept {
        out.push_str(&format!("  if ({}) return \"DIRECT\";\n", condition(&p.to_string())));
    }
    let conds: Vec<String> = policy
        .ai_hosts
        .iter()
        .map(|h| condition(&h.host.to_string()))
        .collect();
    if !conds.is_empty() {
        out.push_str(&format!(
            "  if ({}) return \"PROXY {proxy}\";\n",
            conds.join(" ||\n      ")
        ));
    }
    out.push_str("  return \"DIRECT\";\n}\n");
    out
}

fn condition(pattern: &str) -> String {
    // Patterns are validated host names (letters, digits, '-', '.', '_', ':'),
    // so they need no escaping inside a JS string literal.
    match pattern.strip_prefix("*.") {
        Some(suffix) => format!("dnsDomainIs(host, \".{suffix}\")"),
        None => format!("host == \"{pattern}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::HostPattern;

    #[test]
    fn routes_only_ai_hosts() {
        let mut p = Policy::default();
        p.never_intercept.push(HostPattern::parse("api.groq.com").unwrap());
        let pac = render(&p, "127.0.0.1:8877".parse().unwrap());
        assert!(pac.contains("host == \"api.openai.com\""));
        assert!(pac.contains("dnsDomainIs(host, \".openai.azure.com\")"));
        assert!(pac.contains("PROXY 127.0.0.1:8877"));
        assert!(pac.contains("if (host == \"api.groq.com\") return \"DIRECT\""));
        assert!(pac.trim_end().ends_with("return \"DIRECT\";\n}"));
    }
}
