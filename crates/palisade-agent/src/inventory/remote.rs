//! Remote MCP servers that policy refuses, as the proxy sees them: a
//! host:port (and a path prefix) to refuse.
//!
//! The discovery task computes the list from the servers it has seen and
//! the MCP item policy, and swaps it into [`BlockedRemotes`]; the proxy only
//! reads it. This module must never widen decryption: a host that is not an
//! intercepted AI host can only be refused whole (at CONNECT), and only when
//! no allowed server shares it; its paths are never looked at.

use palisade_core::policy::ItemPolicy;
use palisade_discovery::McpServer;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// One denied remote MCP server, reduced to what the proxy matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedRemote {
    /// Lower-cased host as in a CONNECT authority (`[::1]` for IPv6).
    pub host: String,
    pub port: u16,
    /// The URL's path without a trailing `/` (empty: the whole host).
    pub path_prefix: String,
    pub fingerprint: String,
    pub name: String,
    /// True when no allowed server uses this host:port, so the whole
    /// destination may be refused at CONNECT.
    pub whole_host: bool,
}

impl BlockedRemote {
    fn same_destination(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host.eq_ignore_ascii_case(host.trim_end_matches('.'))
    }

    /// Whether `path` (a request's path, query allowed) is under this prefix:
    /// `/mcp` matches `/mcp`, `/mcp/x` and `/mcp?y`, never `/mcpx`.
    pub fn covers_path(&self, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or("");
        if self.path_prefix.is_empty() {
            return true;
        }
        match path.get(..self.path_prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(&self.path_prefix) => {
                matches!(
                    path.as_bytes().get(self.path_prefix.len()),
                    None | Some(b'/')
                )
            }
            _ => false,
        }
    }
}

/// The current list, swapped whole; cheap to read on every connection.
#[derive(Debug, Default)]
pub struct BlockedRemotes {
    current: RwLock<Arc<Vec<BlockedRemote>>>,
}

impl BlockedRemotes {
    pub fn current(&self) -> Arc<Vec<BlockedRemote>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set(&self, list: Vec<BlockedRemote>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }

    /// The server a CONNECT (or plain forward) to `host:port` must be
    /// refused for: one that owns the whole destination.
    pub fn for_connect(&self, host: &str, port: u16) -> Option<BlockedRemote> {
        self.current()
            .iter()
            .find(|b| b.whole_host && b.same_destination(host, port))
            .cloned()
    }

    /// The server a request to `host:port` + `path` must be refused for,
    /// on connections where the path is visible (intercepted or plain HTTP).
    pub fn for_request(&self, host: &str, port: u16, path: &str) -> Option<BlockedRemote> {
        let list = self.current();
        // The longest prefix names the most specific server.
        list.iter()
            .filter(|b| b.same_destination(host, port) && b.covers_path(path))
            .max_by_key(|b| b.path_prefix.len())
            .cloned()
    }
}

/// Host, port and path of a remote server's URL; `None` for anything that
/// is not an absolute `http(s)://` or `ws(s)://` URL.
pub fn destination(url: &str) -> Option<(String, u16, String)> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let default_port = match uri.scheme_str()?.to_ascii_lowercase().as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let port = uri.port_u16().unwrap_or(default_port);
    let path = uri.path().trim_end_matches('/').to_string();
    Some((host, port, path))
}

/// The denied remote servers among `servers` under `policy` (a deny rule,
/// or pending while pending means block). A destination is refused whole
/// only when every server seen on it is refused.
pub fn compute<'a>(
    servers: impl IntoIterator<Item = &'a McpServer>,
    policy: &ItemPolicy,
) -> Vec<BlockedRemote> {
    // (host, port) -> any allowed server there
    let mut allowed_on: BTreeMap<(String, u16), bool> = BTreeMap::new();
    let mut denied: BTreeMap<(String, u16, String), BlockedRemote> = BTreeMap::new();
    for s in servers {
        if !s.transport.is_remote() {
            continue;
        }
        let Some((host, port, path)) = s.url.as_deref().and_then(destination) else {
            continue;
        };
        let allowed = policy.allows(&s.fingerprint);
        *allowed_on.entry((host.clone(), port)).or_default() |= allowed;
        if !allowed {
            denied
                .entry((host.clone(), port, path.clone()))
                .or_insert(BlockedRemote {
                    host,
                    port,
                    path_prefix: path,
                    fingerprint: s.fingerprint.clone(),
                    name: s.name.clone(),
                    whole_host: false,
                });
        }
    }
    denied
        .into_values()
        .map(|mut b| {
            b.whole_host = !allowed_on
                .get(&(b.host.clone(), b.port))
                .copied()
                .unwrap_or(false);
            b
        })
        .collect()
}

/// The JSON-RPC error an MCP client shows when its server is refused.
pub fn jsonrpc_block_body(name: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "error": {
            "code": -32001,
            "message": format!("Blocked by Palisade: MCP server '{name}' is denied by policy"),
        },
        "id": null,
    })
    .to_string()
}

/// Where the proxy refused a remote MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStage {
    /// The CONNECT (or plain forward) to a destination only refused servers use.
    Connect,
    /// One request, by path, on an intercepted AI host or plain HTTP.
    Request,
}

impl BlockStage {
    pub fn as_str(&self) -> &'static str {
        match self {
            BlockStage::Connect => "blocked-connect",
            BlockStage::Request => "blocked-request",
        }
    }
}

/// Record an `mcp.blocked` event for a refusal at the proxy, attributed to
/// the process behind the connection. `path` is the request path without
/// its query (queries can carry tokens).
pub async fn record_block(
    state: &crate::proxy::ProxyState,
    conn: &crate::proxy::ClientConn,
    b: &BlockedRemote,
    stage: BlockStage,
    path: Option<&str>,
) {
    let (app, os_user) = conn.app.get().await;
    let mut ev = palisade_core::AuditEvent::new(
        palisade_core::EventKind::McpBlocked,
        state.device.clone(),
        palisade_core::UserRef {
            os_user: os_user.or_else(crate::attribution::current_os_user),
            email: state.owner_email.clone(),
            team: state.team.clone(),
        },
    );
    ev.app = Some(app);
    ev.details = serde_json::json!({
        "action": stage.as_str(),
        "fingerprint": b.fingerprint,
        "name": b.name,
        "host": b.host,
        "port": b.port,
        "path": path.map(|p| p.split(['?', '#']).next().unwrap_or("")),
    });
    tracing::info!(server = %b.name, host = %b.host, port = b.port, stage = stage.as_str(), "Refused a denied remote MCP server");
    state.recorder.record(ev);
}

/// The response for a refused MCP request: HTTP 403 with a JSON-RPC error.
pub fn block_response(name: &str) -> http::Response<crate::proxy::upstream::ProxyBody> {
    http::Response::builder()
        .status(http::StatusCode::FORBIDDEN)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-palisade-error", "1")
        .body(crate::proxy::full(jsonrpc_block_body(name)))
        .expect("valid response")
}
