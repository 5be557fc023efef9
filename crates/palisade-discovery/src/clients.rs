//! Parsers for each MCP client's config format, from an in-memory snapshot
//! to [`McpServer`] records.
//!
//! Env variables and HTTP headers are deserialised as maps whose values are
//! skipped ([`serde::de::IgnoredAny`]): their values never exist in any
//! struct. Parse errors are turned into findings with quoted text removed, so
//! a finding can never echo a secret from the file. This module must never
//! touch the file system.

use crate::fingerprint::{remote_fingerprint, sanitize_url, stdio_fingerprint};
use crate::jsonc;
use crate::model::{Finding, FindingKind, McpServer, Scope, Transport};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The file format, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON, accepting comments and trailing commas.
    Jsonc,
    Toml,
    Yaml,
}

impl Format {
    pub fn for_path(p: &Path) -> Format {
        match p.extension().and_then(|e| e.to_str()) {
            Some("toml") => Format::Toml,
            Some("yaml") | Some("yml") => Format::Yaml,
            _ => Format::Jsonc,
        }
    }
}

/// Where a client keeps its servers inside the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"mcpServers": {NAME: {...}}}`: Claude Desktop, `.mcp.json`,
    /// `managed-mcp.json`, Cursor, Windsurf, Gemini CLI, Cline, LM Studio.
    McpServers,
    /// `~/.claude.json`: top-level `mcpServers` plus `projects[PATH].mcpServers`.
    ClaudeCodeUser,
    /// VS Code `mcp.json`: `{"servers": {...}}`.
    VsCodeMcp,
    /// VS Code `settings.json`: `{"mcp": {"servers": {...}}}`.
    VsCodeSettings,
    /// OpenCode `opencode.json[c]`: `{"mcp": {NAME: {"type": "local"|"remote", ...}}}`.
    OpenCode,
    /// Codex `config.toml`: `[mcp_servers.NAME]`.
    Codex,
    /// Zed `settings.json`: `{"context_servers": {...}}`.
    Zed,
    /// Continue YAML: `mcpServers: [{name: ..., ...}]` (a list).
    Continue,
}

impl Shape {
    /// The container keys for top-level servers.
    pub fn container(&self) -> Vec<String> {
        let keys: &[&str] = match self {
            Shape::McpServers | Shape::ClaudeCodeUser | Shape::Continue => &["mcpServers"],
            Shape::VsCodeMcp => &["servers"],
            Shape::VsCodeSettings => &["mcp", "servers"],
            Shape::OpenCode => &["mcp"],
            Shape::Codex => &["mcp_servers"],
            Shape::Zed => &["context_servers"],
        };
        keys.iter().map(|s| s.to_string()).collect()
    }
}

/// One config file to parse and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub client: &'static str,
    pub scope: Scope,
    pub shape: Shape,
    pub project: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

/// What one file yielded.
#[derive(Debug, Default)]
pub struct Parsed {
    pub servers: Vec<McpServer>,
    pub findings: Vec<Finding>,
    /// Project directories named by the file (`~/.claude.json` `projects`).
    pub projects: Vec<PathBuf>,
}

// === raw, value-free deserialisation ===

/// A string, number or bool, kept as its string form (for `args`).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or bool")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys of a map; values are skipped unread. `null` is no keys.
fn keys_only<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V)
}

/// `command` as a string, an array (OpenCode), or `{path, args, env}` (Zed).
#[derive(Default)]
struct CommandField {
    command: Option<String>,
    args: Vec<String>,
    env_names: Vec<String>,
}

impl<'de> Deserialize<'de> for CommandField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command string, array, or {path, args, env}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandField, E> {
                Ok(CommandField {
                    command: Some(v.to_string()),
                    ..Default::default()
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<CommandField, A::Error> {
                let mut items = Vec::new();
                while let Some(Scalar(x)) = s.next_element()? {
                    items.push(x);
                }
                let mut it = items.into_iter();
                Ok(CommandField {
                    command: it.next(),
                    args: it.collect(),
                    env_names: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<CommandField, A::Error> {
                #[derive(Deserialize)]
                struct Env(#[serde(deserialize_with = "keys_only")] Vec<String>);
                let mut c = CommandField::default();
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "path" | "command" => c.command = Some(m.next_value::<String>()?),
                        "args" => c.args = m.next_value::<Vec<Scalar>>()?.into_iter().map(|s| s.0).collect(),
                        "env" => c.env_names = m.next_value::<Env>()?.0,
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_any(V)
    }
}

/// The union of every client's server fields. Unknown fields are skipped.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawServer {
    name: Option<String>,
    #[serde(rename = "type", alias = "transport")]
    kind: Option<String>,
    source: Option<String>,
    command: Option<CommandField>,
    args: Option<Vec<Scalar>>,
    #[serde(deserialize_with = "keys_only")]
    env: Vec<String>,
    /// OpenCode's name for `env`.
    #[serde(deserialize_with = "keys_only")]
    environment: Vec<String>,
    /// Codex: names of variables passed through from the parent env.
    env_vars: Option<Vec<String>>,
    url: Option<String>,
    #[serde(rename = "serverUrl")]
    server_url: Option<String>,
    #[serde(rename = "httpUrl")]
    http_url: Option<String>,
    #[serde(deserialize_with = "keys_only")]
    headers: Vec<String>,
    #[serde(deserialize_with = "keys_only")]
    http_headers: Vec<String>,
    #[serde(deserialize_with = "keys_only")]
    env_http_headers: Vec<String>,
    bearer_token_env_var: Option<IgnoredAny>,
    disabled: Option<bool>,
    enabled: Option<bool>,
}

type ServerMap = BTreeMap<String, RawServer>;

#[derive(Default, Deserialize)]
#[serde(default)]
struct McpServersDoc {
    #[serde(rename = "mcpServers")]
    mcp_servers: Option<ServerMap>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ClaudeProject {
    #[serde(rename = "mcpServers")]
    mcp_servers: Option<ServerMap>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ClaudeCodeDoc {
    #[serde(rename = "mcpServers")]
    mcp_servers: Option<ServerMap>,
    projects: Option<BTreeMap<String, ClaudeProject>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ServersDoc {
    servers: Option<ServerMap>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct VsCodeSettingsDoc {
    mcp: Option<ServersDoc>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct OpenCodeDoc {
    mcp: Option<ServerMap>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct CodexDoc {
    mcp_servers: Option<ServerMap>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ZedDoc {
    context_servers: Option<ServerMap>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ContinueDoc {
    #[serde(rename = "mcpServers")]
    mcp_servers: Option<Vec<RawServer>>,
}

/// Replace the contents of quoted runs ("..." and `...`) so an error message
/// cannot echo a value from the file.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_q: Option<char> = None;
    for c in msg.chars() {
        match in_q {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                in_q = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                in_q = Some(c);
            }
            None => out.push(c),
        }
    }
    if in_q.is_some() {
        out.push('…');
    }
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Deserialize the snapshot as `T` in the file's format. The error string
/// never contains file content.
fn decode<T: for<'de> Deserialize<'de>>(format: Format, text: &str) -> Result<T, String> {
    match format {
        Format::Jsonc => {
            let clean = jsonc::strip(text);
            serde_json::from_str(&clean).map_err(|e| redact_quoted(&e.to_string()))
        }
        Format::Toml => toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start));
            match at {
                Some((l, c)) => format!("{} at line {l} column {c}", redact_quoted(e.message().trim())),
                None => redact_quoted(e.message().trim()),
            }
        }),
        Format::Yaml => {
            if text.trim().is_empty() {
                return serde_yaml::from_str("{}").map_err(|e| redact_quoted(&e.to_string()));
            }
            serde_yaml::from_str(text).map_err(|e| redact_quoted(&e.to_string()))
        }
    }
}

/// Parse one snapshot of `src`. Never fails: problems become findings.
pub fn parse(src: &ConfigSource, bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let finding = |kind, problem: String| Finding {
        path: src.path.clone(),
        client: Some(src.client.to_string()),
        kind,
        problem,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
        Err(e) => {
            out.findings.push(finding(FindingKind::Malformed, format!("not UTF-8 text (byte {})", e.valid_up_to())));
            return out;
        }
    };
    let format = Format::for_path(&src.path);
    // A whitespace-only JSON/TOML file is an empty config, not an error.
    if text.trim().is_empty() {
        return out;
    }
    let base = src.shape.container();
    let mut entries: Vec<(Vec<String>, Option<PathBuf>, String, RawServer)> = Vec::new();
    let mut push_map = |container: Vec<String>, project: Option<PathBuf>, map: Option<ServerMap>| {
        for (name, raw) in map.unwrap_or_default() {
            entries.push((container.clone(), project.clone(), name, raw));
        }
    };
    let res: Result<(), String> = match src.shape {
        Shape::McpServers => decode::<McpServersDoc>(format, text).map(|d| push_map(base, None, d.mcp_servers)),
        Shape::ClaudeCodeUser => decode::<ClaudeCodeDoc>(format, text).map(|d| {
            push_map(base, None, d.mcp_servers);
            for (path, p) in d.projects.unwrap_or_default() {
                out.projects.push(PathBuf::from(&path));
                let container = vec!["projects".to_string(), path.clone(), "mcpServers".to_string()];
                push_map(container, Some(PathBuf::from(path)), p.mcp_servers);
            }
        }),
        Shape::VsCodeMcp => decode::<ServersDoc>(format, text).map(|d| push_map(base, None, d.servers)),
        Shape::VsCodeSettings => {
            decode::<VsCodeSettingsDoc>(format, text).map(|d| push_map(base, None, d.mcp.and_then(|m| m.servers)))
        }
        Shape::OpenCode => decode::<OpenCodeDoc>(format, text).map(|d| push_map(base, None, d.mcp)),
        Shape::Codex => decode::<CodexDoc>(format, text).map(|d| push_map(base, None, d.mcp_servers)),
        Shape::Zed => decode::<ZedDoc>(format, text).map(|d| push_map(base, None, d.context_servers)),
        Shape::Continue => decode::<ContinueDoc>(format, text).map(|d| {
            for (i, raw) in d.mcp_servers.unwrap_or_default().into_iter().enumerate() {
                let name = raw.name.clone().unwrap_or_else(|| format!("#{i}"));
                entries.push((base.clone(), None, name, raw));
            }
        }),
    };
    if let Err(problem) = res {
        out.findings.push(finding(FindingKind::Malformed, format!("cannot parse: {problem}")));
        return out;
    }
    for (container, project, name, raw) in entries {
        if raw.source.as_deref() == Some("extension") && raw.command.is_none() && raw.url.is_none() {
            // Zed: the extension supplies the command; nothing to identify here.
            continue;
        }
        let scope = if project.is_some() { Scope::Project } else { src.scope };
        match build(src, &name, raw) {
            Ok(mut s) => {
                s.container = container;
                s.scope = scope;
                if project.is_some() {
                    s.project = project;
                }
                out.servers.push(s);
            }
            Err(problem) => out.findings.push(finding(FindingKind::InvalidServer, format!("server {name:?}: {problem}"))),
        }
    }
    out
}

fn infer_remote(client: &str, kind: Option<&str>, url: &str, from_http_url: bool) -> Result<Transport, String> {
    let lower = url.to_ascii_lowercase();
    if from_http_url {
        return Ok(Transport::StreamableHttp);
    }
    match kind.map(|k| k.to_ascii_lowercase()).as_deref() {
        Some("sse") => return Ok(Transport::Sse),
        Some("ws") | Some("websocket") => return Ok(Transport::Ws),
        Some("http") | Some("streamable-http") | Some("streamablehttp") | Some("streamable_http") => {
            return Ok(Transport::StreamableHttp)
        }
        Some("stdio") | Some("local") => return Err("is a stdio server without a command".into()),
        // OpenCode's `remote` and unknown types: infer from the URL.
        _ => {}
    }
    if lower.starts_with("ws://") || lower.starts_with("wss://") {
        return Ok(Transport::Ws);
    }
    let path = lower.split(['?', '#']).next().unwrap_or("");
    if path.trim_end_matches('/').ends_with("/sse") {
        return Ok(Transport::Sse);
    }
    if kind.is_none() && client == "gemini-cli" {
        // Gemini CLI: `url` is SSE, `httpUrl` is streamable HTTP.
        return Ok(Transport::Sse);
    }
    Ok(Transport::StreamableHttp)
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn build(src: &ConfigSource, name: &str, raw: RawServer) -> Result<McpServer, String> {
    let enabled = raw.disabled != Some(true) && raw.enabled != Some(false);
    let cmd = raw.command.unwrap_or_default();
    let mut server = McpServer {
        fingerprint: String::new(),
        name: name.to_string(),
        transport: Transport::Stdio,
        command: None,
        args: Vec::new(),
        env_names: Vec::new(),
        url: None,
        header_names: Vec::new(),
        client: src.client.to_string(),
        config_path: src.path.clone(),
        scope: src.scope,
        project: src.project.clone(),
        home: src.home.clone(),
        enabled,
        container: Vec::new(),
    };
    if let Some(command) = cmd.command.filter(|c| !c.trim().is_empty()) {
        let mut args = cmd.args;
        args.extend(raw.args.unwrap_or_default().into_iter().map(|s| s.0));
        let mut env = raw.env;
        env.extend(raw.environment);
        env.extend(cmd.env_names);
        env.extend(raw.env_vars.unwrap_or_default());
        server.fingerprint = stdio_fingerprint(&command, &args);
        server.command = Some(command);
        server.args = args;
        server.env_names = sorted_unique(env);
        return Ok(server);
    }
    let (url, from_http_url) = match (raw.url, raw.server_url, raw.http_url) {
        (_, _, Some(u)) => (u, true),
        (Some(u), _, _) | (None, Some(u), _) => (u, false),
        (None, None, None) => return Err("has neither a command nor a url".into()),
    };
    let transport = infer_remote(src.client, raw.kind.as_deref(), &url, from_http_url)?;
    let clean = sanitize_url(&url).ok_or_else(|| "url is not an absolute URL".to_string())?;
    server.fingerprint = remote_fingerprint(&url).ok_or_else(|| "url is not an absolute URL".to_string())?;
    server.transport = transport;
    server.url = Some(clean);
    let mut headers = raw.headers;
    headers.extend(raw.http_headers);
    headers.extend(raw.env_http_headers);
    if raw.bearer_token_env_var.is_some() {
        headers.push("Authorization".into());
    }
    server.header_names = sorted_unique(headers);
    server.env_names = sorted_unique(raw.env);
    Ok(server)
}

#[cfg(test)]
mod tests;
