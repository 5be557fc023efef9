//! Stable identity for MCP servers, and URL sanitising.
//!
//! The same server configured in three apps on 500 devices must get one
//! fingerprint, so the rule below is a contract with the control plane's
//! catalog: change it only with a migration. This module must never keep a
//! URL's userinfo or secret query values, not even in an error message.
//!
//! ## The fingerprint rule (v1)
//!
//! `fingerprint = hex(SHA-256(canonical))`, where `canonical` is:
//!
//! * **stdio**: `"stdio\n"` followed by the JSON array (serde_json compact
//!   form) of the normalised tokens `[command, arg1, arg2, ...]`:
//!   - every token is trimmed and internal runs of whitespace become one space;
//!     empty tokens are dropped;
//!   - `command`: if its basename (without `.exe`/`.cmd`/`.bat`, lower-cased)
//!     is a well-known launcher ([`LAUNCHERS`]: npx, uvx, uv, node, python,
//!     docker, ...), it is replaced by that basename, so `/usr/bin/npx` and
//!     `npx` agree; any other command is kept as configured;
//!   - for the package runners `npx`, `bunx`, `pnpx` the "assume yes / quiet"
//!     flags `-y`, `--yes`, `-q`, `--quiet` are dropped; nothing else is:
//!     version pins such as `pkg@1.2.3` are kept, so two versions differ.
//! * **remote**: `"remote\n"` + `scheme://host[:port]path`, all lower-cased,
//!   where the port appears only when it is not the scheme's default
//!   (80 for http/ws, 443 for https/wss), the path loses a trailing `/`
//!   (the root path becomes empty), and there is no userinfo, query or
//!   fragment. The transport is NOT part of the identity: one URL is one server.

use sha2::{Digest, Sha256};

/// Commands reduced to their basename before fingerprinting.
pub const LAUNCHERS: &[&str] = &[
    "npx", "npm", "pnpm", "pnpx", "yarn", "bunx", "bun", "node", "deno", "uvx", "uv", "pipx", "python", "python3",
    "docker", "podman",
];

const YES_FLAGS: &[&str] = &["-y", "--yes", "-q", "--quiet"];
const RUNNERS: &[&str] = &["npx", "bunx", "pnpx"];

fn norm_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The basename of a command, lower-cased, without a Windows extension.
pub fn command_basename(command: &str) -> String {
    let base = command.trim().rsplit(['/', '\\']).next().unwrap_or("").to_ascii_lowercase();
    for ext in [".exe", ".cmd", ".bat"] {
        if let Some(b) = base.strip_suffix(ext) {
            return b.to_string();
        }
    }
    base
}

/// The canonical stdio form (before hashing). Exposed for tests and docs.
pub fn stdio_canonical(command: &str, args: &[String]) -> String {
    let base = command_basename(command);
    let launcher = LAUNCHERS.contains(&base.as_str());
    let mut tokens = vec![if launcher { base.clone() } else { norm_ws(command) }];
    let runner = RUNNERS.contains(&base.as_str());
    for a in args {
        let a = norm_ws(a);
        if a.is_empty() || (runner && YES_FLAGS.contains(&a.as_str())) {
            continue;
        }
        tokens.push(a);
    }
    format!("stdio\n{}", serde_json::to_string(&tokens).expect("strings serialise"))
}

/// Fingerprint of a stdio server.
pub fn stdio_fingerprint(command: &str, args: &[String]) -> String {
    sha256_hex(stdio_canonical(command, args).as_bytes())
}

/// The canonical remote form (before hashing), `None` when `url` is not an
/// absolute URL.
pub fn remote_canonical(url: &str) -> Option<String> {
    let u = ParsedUrl::parse(url)?;
    let default_port = match u.scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    let port = match u.port {
        Some(p) if Some(p) != default_port => format!(":{p}"),
        _ => String::new(),
    };
    let path = u.path.trim_end_matches('/').to_ascii_lowercase();
    Some(format!("remote\n{}://{}{}{}", u.scheme, u.host.to_ascii_lowercase(), port, path))
}

/// Fingerprint of a remote server; `None` when `url` is not an absolute URL.
pub fn remote_fingerprint(url: &str) -> Option<String> {
    remote_canonical(url).map(|c| sha256_hex(c.as_bytes()))
}

pub(crate) fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Query parameter names whose values are treated as secrets.
fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["key", "token", "secret", "password", "passwd", "pwd", "auth", "sig", "signature", "credential", "session"]
        .iter()
        .any(|w| n.contains(w))
}

/// The URL with userinfo removed and the values of secret-looking query
/// parameters replaced by `REDACTED`. `None` when `url` is not an absolute URL.
pub fn sanitize_url(url: &str) -> Option<String> {
    let u = ParsedUrl::parse(url)?;
    let mut out = format!("{}://{}", u.scheme, u.host);
    if let Some(p) = u.port {
        out.push_str(&format!(":{p}"));
    }
    out.push_str(&u.path);
    if let Some(q) = u.query {
        let parts: Vec<String> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}=REDACTED"),
                Some((k, v)) => format!("{k}={v}"),
                None => p.to_string(),
            })
            .collect();
        if !parts.is_empty() {
            out.push('?');
            out.push_str(&parts.join("&"));
        }
    }
    Some(out)
}

/// The pieces of an absolute URL we need. Deliberately small: we only ever
/// need scheme, host, port, path and query, and must drop userinfo.
struct ParsedUrl {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
    query: Option<String>,
}

impl ParsedUrl {
    fn parse(url: &str) -> Option<Self> {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://")?;
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
            return None;
        }
        let rest = rest.split('#').next().unwrap_or("");
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            (format!("[{h}]"), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) if !p.is_empty() => (h.to_string(), Some(p.parse().ok()?)),
                Some((h, _)) => (h.to_string(), None),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (tail.to_string(), None),
        };
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            host,
            port,
            path,
            query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn launcher_path_and_yes_flag_do_not_change_identity() {
        let a = stdio_fingerprint("npx", &v(&["-y", "@modelcontextprotocol/server-github"]));
        let b = stdio_fingerprint("/usr/local/bin/npx", &v(&["@modelcontextprotocol/server-github"]));
        let c = stdio_fingerprint("C:\\Program Files\\nodejs\\npx.cmd", &v(&["--yes", " @modelcontextprotocol/server-github "]));
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn version_pins_and_other_args_are_kept() {
        let a = stdio_fingerprint("npx", &v(&["pkg@1.0.0"]));
        let b = stdio_fingerprint("npx", &v(&["pkg@1.0.1"]));
        assert_ne!(a, b);
        // -y only dropped for runners.
        assert_ne!(stdio_fingerprint("python", &v(&["-y", "x"])), stdio_fingerprint("python", &v(&["x"])));
        // Non-launcher commands keep their path.
        assert_ne!(stdio_fingerprint("/opt/a/server", &[]), stdio_fingerprint("/opt/b/server", &[]));
    }

    #[test]
    fn canonical_form_is_documented_shape() {
        assert_eq!(
            stdio_canonical("/usr/bin/uvx", &v(&["mcp-server-git", "--repository", "a  b"])),
            "stdio\n[\"uvx\",\"mcp-server-git\",\"--repository\",\"a b\"]"
        );
        assert_eq!(
            remote_canonical("HTTPS://user:pw@Mcp.Example.com:443/SSE/?token=abc#x").unwrap(),
            "remote\nhttps://mcp.example.com/sse"
        );
        assert_eq!(remote_canonical("http://localhost:8080/").unwrap(), "remote\nhttp://localhost:8080");
    }

    #[test]
    fn remote_identity_ignores_query_and_credentials() {
        assert_eq!(
            remote_fingerprint("https://mcp.example.com/mcp?api_key=1"),
            remote_fingerprint("https://u:p@MCP.example.com/mcp/")
        );
        assert_ne!(remote_fingerprint("https://a.example.com/mcp"), remote_fingerprint("https://b.example.com/mcp"));
    }

    #[test]
    fn sanitize_strips_userinfo_and_secret_values() {
        let s = sanitize_url("https://alice:hunter2@mcp.example.com:8443/v1/sse?api_key=sk-123&region=eu&accessToken=t").unwrap();
        assert_eq!(s, "https://mcp.example.com:8443/v1/sse?api_key=REDACTED&region=eu&accessToken=REDACTED");
        assert!(!s.contains("hunter2") && !s.contains("sk-123"));
        assert_eq!(sanitize_url("http://[::1]:3000/mcp").unwrap(), "http://[::1]:3000/mcp");
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(sanitize_url("not a url").is_none());
        assert!(sanitize_url("https://").is_none());
        assert!(sanitize_url("https://host:notaport/").is_none());
        assert!(remote_fingerprint("/relative/path").is_none());
    }
}
