//! The agent's typed configuration: a TOML file, overlaid by an MDM-managed
//! file whose values win.
//!
//! Unknown keys are rejected (a typo in a security setting must not be
//! silently ignored). `validate` reports every problem at once. This module
//! never reads secrets' values into `Debug` output.

use palisade_core::Policy;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8877";
/// Captured copies of bodies are cut here; forwarding is never cut.
pub const DEFAULT_CAPTURE_MAX_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_LEAF_CACHE: usize = 1024;
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// How long a client may stay silent in the middle of a request body.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Longest accepted `team` name.
pub const MAX_TEAM_LEN: usize = 128;
/// Full MCP/app rescan interval: the backstop behind the file watchers.
pub const DEFAULT_DISCOVERY_RESCAN_SECS: u64 = 300;
/// Longest accepted rescan interval (one day).
pub const MAX_DISCOVERY_RESCAN_SECS: u64 = 86_400;

#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Loopback address of the proxy listener.
    pub listen: SocketAddr,
    /// Where the spool, CA certificate, cached policy and file-backed keys live.
    pub data_dir: PathBuf,
    /// A local policy document (JSON). Without it, the built-in default applies
    /// until the control plane pushes one.
    pub policy_file: Option<PathBuf>,
    /// Extra CA bundle (PEM) trusted for upstream connections, on top of the OS roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Host -> "ip:port" overrides for upstream connections (split DNS, tests).
    pub host_overrides: BTreeMap<String, String>,
    pub capture_max_bytes: usize,
    pub client_idle_timeout_ms: u64,
    pub leaf_cache_size: usize,
    pub spool_max_bytes: u64,
    /// A LiteLLM-format price table that overrides the built-in one per model.
    pub price_table_file: Option<PathBuf>,
    /// Extra guardrail rules in gitleaks' TOML format (`[[rules]]`).
    pub guard_rules_file: Option<PathBuf>,
    /// `auto` (OS keyring if one works, else 0600 files) or `file`.
    pub key_store: KeyStoreChoice,
    /// Owner of the device as named by MDM.
    pub owner_email: Option<String>,
    /// The device's team as named by MDM (per-team capture overrides).
    pub team: Option<String>,
    pub server: Option<ServerLink>,
    /// AI app and MCP server discovery, and MCP enforcement.
    pub discovery: DiscoveryConfig,
}

/// `[discovery]`: what the discovery task scans and whether it enforces.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub enabled: bool,
    /// File-system root to scan instead of `/` (tests point it at a temp dir).
    /// Managed files (`/etc/claude-code/...`) are looked up under it too.
    pub root: Option<PathBuf>,
    /// Exactly these homes, instead of listing the machine's users.
    pub homes: Option<Vec<PathBuf>>,
    /// Full rescan interval in seconds (watchers report changes sooner).
    pub rescan_interval_secs: u64,
    /// Disable denied MCP servers in client configs and block denied remote
    /// ones at the proxy. When false, discovery only reports.
    pub enforce: bool,
    /// An app catalog (JSON) replacing the built-in one.
    pub catalog_file: Option<PathBuf>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            root: None,
            homes: None,
            rescan_interval_secs: DEFAULT_DISCOVERY_RESCAN_SECS,
            enforce: true,
            catalog_file: None,
        }
    }
}

impl DiscoveryConfig {
    /// The root to scan: `root`, or `/`.
    pub fn scan_root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from("/"))
    }

    /// The app catalog: `catalog_file` if set, else the built-in one.
    pub fn load_catalog(&self) -> Result<palisade_discovery::Catalog, ConfigError> {
        match &self.catalog_file {
            None => Ok(palisade_discovery::Catalog::builtin()),
            Some(p) => palisade_discovery::Catalog::from_path(p).map_err(|e| {
                ConfigError::Invalid(vec![format!(
                    "discovery.catalog_file = {}: {e}",
                    p.display()
                )])
            }),
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if self.rescan_interval_secs == 0 || self.rescan_interval_secs > MAX_DISCOVERY_RESCAN_SECS {
            problems.push(format!(
                "discovery.rescan_interval_secs = {}: must be between 1 and {MAX_DISCOVERY_RESCAN_SECS}",
                self.rescan_interval_secs
            ));
        }
        if let Some(r) = &self.root {
            if !r.is_absolute() {
                problems.push(format!(
                    "discovery.root = {}: must be an absolute path",
                    r.display()
                ));
            } else if !r.is_dir() {
                problems.push(format!(
                    "discovery.root = {}: no such directory",
                    r.display()
                ));
            }
        }
        if let Some(homes) = &self.homes {
            for h in homes {
                if !h.is_absolute() {
                    problems.push(format!(
                        "discovery.homes: {} must be an absolute path",
                        h.display()
                    ));
                }
            }
        }
        if self.catalog_file.is_some() {
            if let Err(ConfigError::Invalid(p)) = self.load_catalog() {
                problems.extend(p);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyStoreChoice {
    #[default]
    Auto,
    File,
}

/// How to reach the control plane.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerLink {
    /// `https://host:port` of the gRPC endpoint.
    pub url: String,
    /// PEM file of the control plane's CA.
    pub ca_file: PathBuf,
    /// One-time or multi-use enrollment token (usually put here by MDM).
    #[serde(default)]
    pub enrollment_token: Option<String>,
}

impl std::fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLink")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "..."),
            )
            .finish()
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("policy_file", &self.policy_file)
            .field("upstream_ca_file", &self.upstream_ca_file)
            .field("host_overrides", &self.host_overrides)
            .field("capture_max_bytes", &self.capture_max_bytes)
            .field("key_store", &self.key_store)
            .field("owner_email", &self.owner_email)
            .field("team", &self.team)
            .field("server", &self.server)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            data_dir: default_data_dir(),
            policy_file: None,
            upstream_ca_file: None,
            host_overrides: BTreeMap::new(),
            capture_max_bytes: DEFAULT_CAPTURE_MAX_BYTES,
            client_idle_timeout_ms: DEFAULT_CLIENT_IDLE_TIMEOUT_MS,
            leaf_cache_size: DEFAULT_LEAF_CACHE,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            price_table_file: None,
            guard_rules_file: None,
            key_store: KeyStoreChoice::Auto,
            owner_email: None,
            team: None,
            server: None,
            discovery: DiscoveryConfig::default(),
        }
    }
}

/// Every problem found in a configuration, reported at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for the agent: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid agent config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The platform's data directory for the agent; `$PALISADE_DATA_DIR` wins.
/// One rule shared with `palisade events` (see `palisade_spool::default_data_dir`).
pub fn default_data_dir() -> PathBuf {
    palisade_spool::default_data_dir()
}

impl AgentConfig {
    /// Load `file` (if given) and overlay the MDM-managed file (if given): a
    /// key present in the managed file replaces the same key from `file`.
    pub fn load(file: Option<&Path>, managed: Option<&Path>) -> Result<Self, ConfigError> {
        let mut merged = toml::Table::new();
        for path in [file, managed].into_iter().flatten() {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            overlay(&mut merged, table);
        }
        let path = managed.or(file).map(Path::to_path_buf).unwrap_or_default();
        let cfg: AgentConfig =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path,
                    message: e.to_string(),
                })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check everything; report all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !self.listen.ip().is_loopback() {
            problems.push(format!(
                "listen = {}: the proxy only listens on loopback",
                self.listen
            ));
        }
        if self.capture_max_bytes == 0 {
            problems.push("capture_max_bytes must be > 0".into());
        }
        if self.client_idle_timeout_ms == 0 {
            problems.push("client_idle_timeout_ms must be > 0".into());
        }
        if self.leaf_cache_size == 0 {
            problems.push("leaf_cache_size must be > 0".into());
        }
        if self.spool_max_bytes < 1024 * 1024 {
            problems.push("spool_max_bytes must be at least 1 MiB".into());
        }
        if let Some(t) = &self.team {
            if t.trim().is_empty() || t.len() > MAX_TEAM_LEN || t.chars().any(char::is_control) {
                problems.push(format!(
                    "team = {t:?}: must be 1 to {MAX_TEAM_LEN} bytes with no control characters"
                ));
            }
        }
        for (host, addr) in &self.host_overrides {
            if palisade_core::HostPattern::parse(host).is_err() {
                problems.push(format!("host_overrides: {host:?} is not a host name"));
            }
            if addr.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "host_overrides.{host} = {addr:?}: expected ip:port"
                ));
            }
        }
        for (key, path) in [
            ("policy_file", &self.policy_file),
            ("upstream_ca_file", &self.upstream_ca_file),
            ("price_table_file", &self.price_table_file),
            ("guard_rules_file", &self.guard_rules_file),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    problems.push(format!("{key} = {}: no such file", p.display()));
                }
            }
        }
        if let Some(s) = &self.server {
            if !(s.url.starts_with("https://")) {
                problems.push(format!("server.url = {:?}: must be https://", s.url));
            }
            if !s.ca_file.is_file() {
                problems.push(format!(
                    "server.ca_file = {}: no such file",
                    s.ca_file.display()
                ));
            }
        }
        self.discovery.problems(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The override address for `host`, if any.
    pub fn override_for(&self, host: &str) -> Option<SocketAddr> {
        self.host_overrides
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .and_then(|(_, a)| a.parse().ok())
    }

    /// Load the local policy file, or the built-in default.
    pub fn initial_policy(&self) -> Result<Policy, ConfigError> {
        match &self.policy_file {
            None => Ok(Policy::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Policy::from_json(&text).map_err(|e| ConfigError::Invalid(e.problems))
            }
        }
    }
}

fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => overlay(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn managed_values_win_over_file() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "agent.toml",
            "listen = \"127.0.0.1:9000\"\nowner_email = \"a@x.com\"\n[host_overrides]\n\"api.openai.com\" = \"127.0.0.1:1\"\n",
        );
        let m = write(
            d.path(),
            "managed.toml",
            "owner_email = \"b@x.com\"\n[host_overrides]\n\"api.anthropic.com\" = \"127.0.0.1:2\"\n",
        );
        let c = AgentConfig::load(Some(&f), Some(&m)).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.owner_email.as_deref(), Some("b@x.com"));
        assert_eq!(c.host_overrides.len(), 2);
        assert_eq!(c.override_for("API.OPENAI.COM").unwrap().port(), 1);
    }

    #[test]
    fn team_comes_from_the_managed_file_and_is_validated() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "agent.toml", "team = \"sales\"\n");
        let m = write(d.path(), "managed.toml", "team = \"legal\"\n");
        let c = AgentConfig::load(Some(&f), Some(&m)).unwrap();
        assert_eq!(c.team.as_deref(), Some("legal"), "the MDM value wins");
        for bad in ["team = \"  \"\n", "team = \"a\\nb\"\n"] {
            let e = AgentConfig::load(Some(&write(d.path(), "bad.toml", bad)), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("team = ") && e.contains("control characters"), "{e}");
        }
        let long = format!("team = \"{}\"\n", "t".repeat(MAX_TEAM_LEN + 1));
        let e = AgentConfig::load(Some(&write(d.path(), "long.toml", &long)), None).unwrap_err();
        assert!(e.to_string().contains("team = "), "{e}");
    }

    #[test]
    fn every_problem_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "agent.toml",
            "listen = \"0.0.0.0:9000\"\ncapture_max_bytes = 0\npolicy_file = \"/nope\"\n[host_overrides]\n\"api.openai.com\" = \"nowhere\"\n",
        );
        let e = AgentConfig::load(Some(&f), None).unwrap_err();
        match e {
            ConfigError::Invalid(p) => assert_eq!(p.len(), 4, "{p:?}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_key_named() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "agent.toml", "lisen = \"127.0.0.1:1\"\n");
        let e = AgentConfig::load(Some(&f), None).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn discovery_defaults_and_section() {
        let d = tempfile::tempdir().unwrap();
        let c = AgentConfig::load(Some(&write(d.path(), "a.toml", "")), None).unwrap();
        assert!(c.discovery.enabled && c.discovery.enforce);
        assert_eq!(
            c.discovery.rescan_interval_secs,
            DEFAULT_DISCOVERY_RESCAN_SECS
        );
        assert_eq!(c.discovery.scan_root(), PathBuf::from("/"));
        let text = format!(
            "[discovery]\nroot = {:?}\nhomes = [\"/home/a\"]\nrescan_interval_secs = 30\nenforce = false\n",
            d.path().display().to_string()
        );
        let c = AgentConfig::load(Some(&write(d.path(), "b.toml", &text)), None).unwrap();
        assert_eq!(c.discovery.root.as_deref(), Some(d.path()));
        assert_eq!(c.discovery.homes, Some(vec![PathBuf::from("/home/a")]));
        assert_eq!(c.discovery.rescan_interval_secs, 30);
        assert!(!c.discovery.enforce && c.discovery.enabled);
    }

    #[test]
    fn discovery_problems_are_all_reported() {
        let d = tempfile::tempdir().unwrap();
        let bad_catalog = write(
            d.path(),
            "catalog.json",
            "{\"version\": 1, \"apps\": [{\"id\": \"\"}]}",
        );
        let text = format!(
            "[discovery]\nroot = \"relative/dir\"\nhomes = [\"home/a\"]\nrescan_interval_secs = 0\ncatalog_file = {:?}\n",
            bad_catalog.display().to_string()
        );
        match AgentConfig::load(Some(&write(d.path(), "a.toml", &text)), None).unwrap_err() {
            ConfigError::Invalid(p) => {
                assert_eq!(p.len(), 4, "{p:?}");
                assert!(
                    p.iter().any(|m| m.contains("rescan_interval_secs")),
                    "{p:?}"
                );
                assert!(p.iter().any(|m| m.contains("discovery.root")), "{p:?}");
                assert!(p.iter().any(|m| m.contains("discovery.homes")), "{p:?}");
                assert!(p.iter().any(|m| m.contains("catalog_file")), "{p:?}");
            }
            other => panic!("{other}"),
        }
        let missing = format!(
            "[discovery]\nroot = {:?}\n",
            d.path().join("nope").display().to_string()
        );
        let e = AgentConfig::load(Some(&write(d.path(), "b.toml", &missing)), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such directory"), "{e}");
        let e = AgentConfig::load(
            Some(&write(d.path(), "c.toml", "[discovery]\nenforse = true\n")),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("enforse"), "{e}");
    }

    #[test]
    fn token_never_in_debug() {
        let c = AgentConfig {
            server: Some(ServerLink {
                url: "https://x".into(),
                ca_file: "/x".into(),
                enrollment_token: Some("tok-SECRET".into()),
            }),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
