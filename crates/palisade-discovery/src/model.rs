//! The discovered inventory: MCP servers, findings about configs we could not
//! use, and the diff between two scans.
//!
//! These types are reported to the control plane, so they must never be able
//! to carry a secret: env variables and HTTP headers are kept as NAMES only,
//! and URLs are stored with credentials and secret query values stripped.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// How a client talks to an MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A local process speaking MCP on stdin/stdout.
    Stdio,
    /// Remote, HTTP + Server-Sent Events (the 2024-11-05 transport).
    Sse,
    /// Remote, streamable HTTP (the 2025-03-26 transport).
    StreamableHttp,
    /// Remote, WebSocket.
    Ws,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Sse => "sse",
            Transport::StreamableHttp => "streamable-http",
            Transport::Ws => "ws",
        }
    }

    pub fn is_remote(&self) -> bool {
        !matches!(self, Transport::Stdio)
    }
}

/// Where a config applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One user's own config (applies to all of that user's projects).
    User,
    /// A project-level config (`.mcp.json`, `.cursor/mcp.json`, ...), or a
    /// per-project section of a user config (`~/.claude.json` `projects`).
    Project,
    /// Machine-wide admin config (`managed-mcp.json`).
    Managed,
}

/// One configured MCP server entry in one client config file.
///
/// Identity across clients and devices is `fingerprint` (see
/// [`crate::fingerprint`]); `name` is only what this config calls it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    /// Hex SHA-256 of the normalised command+args or URL.
    pub fingerprint: String,
    /// The name as configured (map key or `name` field).
    pub name: String,
    pub transport: Transport,
    /// stdio: the command as configured (not resolved against PATH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Names of the env variables the client sets. Never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// Remote: the URL with userinfo and secret query values removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Names of the HTTP headers the client sends. Never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_names: Vec<String>,
    /// Client id: `claude-desktop`, `claude-code`, `cursor`, `windsurf`,
    /// `vscode`, `gemini-cli`, `opencode`, `codex`, `zed`, `cline`,
    /// `continue`, `lmstudio`.
    pub client: String,
    pub config_path: PathBuf,
    pub scope: Scope,
    /// The project directory, for project-scoped entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<PathBuf>,
    /// The user home this config belongs to; `None` for managed configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    /// False when the config itself turns the entry off (`"disabled": true`,
    /// `"enabled": false`, `enabled = false`).
    pub enabled: bool,
    /// Keys from the document root to the map/list holding this entry, e.g.
    /// `["projects", "/home/a/app", "mcpServers"]`. Used to edit the entry.
    pub container: Vec<String>,
}

impl McpServer {
    /// Key identifying this entry within one scan: file, container and name.
    pub fn entry_key(&self) -> EntryKey {
        EntryKey {
            config_path: self.config_path.clone(),
            container: self.container.clone(),
            name: self.name.clone(),
        }
    }
}

/// Identifies one server entry in one config file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    pub config_path: PathBuf,
    pub container: Vec<String>,
    pub name: String,
}

/// What went wrong with a config or home. Scans never fail on bad input:
/// they report a finding and carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// Not valid JSON/JSONC/TOML/YAML, or the wrong shape.
    Malformed,
    /// Larger than the read cap; not parsed.
    TooLarge,
    /// Permission denied or another I/O error.
    Unreadable,
    /// A symlink cycle (ELOOP) on the way to the file.
    SymlinkLoop,
    /// The file kept changing while we read it.
    ChangedWhileReading,
    /// An entry that is neither a command nor a URL.
    InvalidServer,
    /// The same server name with different definitions.
    Conflict,
}

/// A problem with one file (or home); the scan continues past it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub kind: FindingKind,
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.client {
            Some(c) => write!(f, "{} ({c}): {}", self.path.display(), self.problem),
            None => write!(f, "{}: {}", self.path.display(), self.problem),
        }
    }
}

/// The result of one full scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub servers: Vec<McpServer>,
    pub findings: Vec<Finding>,
    /// Every config path the scan looked at, present or not (what to watch).
    #[serde(skip)]
    pub candidates: Vec<PathBuf>,
    /// Homes the scan covered.
    #[serde(skip)]
    pub homes: Vec<PathBuf>,
}

impl Inventory {
    /// Servers grouped by fingerprint: one catalog item per distinct server.
    pub fn by_fingerprint(&self) -> BTreeMap<&str, Vec<&McpServer>> {
        let mut m: BTreeMap<&str, Vec<&McpServer>> = BTreeMap::new();
        for s in &self.servers {
            m.entry(s.fingerprint.as_str()).or_default().push(s);
        }
        m
    }

    /// What changed from `self` (old) to `new`, keyed by [`EntryKey`].
    pub fn diff(&self, new: &Inventory) -> InventoryChange {
        let old: BTreeMap<EntryKey, &McpServer> = self.servers.iter().map(|s| (s.entry_key(), s)).collect();
        let newm: BTreeMap<EntryKey, &McpServer> = new.servers.iter().map(|s| (s.entry_key(), s)).collect();
        let mut change = InventoryChange::default();
        for (k, n) in &newm {
            match old.get(k) {
                None => change.added.push((*n).clone()),
                Some(o) if o != n => change.changed.push(((*o).clone(), (*n).clone())),
                Some(_) => {}
            }
        }
        for (k, o) in &old {
            if !newm.contains_key(k) {
                change.removed.push((*o).clone());
            }
        }
        let old_f: std::collections::HashSet<&Finding> = self.findings.iter().collect();
        change.new_findings = new.findings.iter().filter(|f| !old_f.contains(f)).cloned().collect();
        change
    }
}

/// The difference between two scans.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryChange {
    pub added: Vec<McpServer>,
    pub removed: Vec<McpServer>,
    /// `(before, after)` for entries whose definition changed.
    pub changed: Vec<(McpServer, McpServer)>,
    /// Findings not present in the previous scan.
    pub new_findings: Vec<Finding>,
}

impl InventoryChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.new_findings.is_empty()
    }
}
