//! Typed server configuration, read from TOML.
//!
//! Every key has a default (`DEFAULT_*`), unknown keys are rejected
//! (`deny_unknown_fields`: a typo must not silently fall back to a default),
//! and [`ServerConfig::validate`] reports every problem at once. This module
//! must never read the environment or touch the network; the PostgreSQL URL
//! may hold a password, so `Debug` redacts it.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_GRPC_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/palisade-server";
pub const DEFAULT_SQLITE_FILE: &str = "palisade.db";
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1000;
pub const DEFAULT_MAX_CONCURRENT_BATCHES: usize = 32;
pub const DEFAULT_SLOW_DOWN_MS: u32 = 1000;
pub const DEFAULT_POLICY_POLL_MS: u64 = 1000;
pub const DEFAULT_DEVICE_CERT_DAYS: u32 = 365;
pub const DEFAULT_EVENTS_PAGE_LIMIT: u32 = 1000;
pub const DEFAULT_STREAM_RECHECK_MS: u64 = 30_000;
/// Failed authentications audited one by one per client address and minute.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 100;
pub const DEFAULT_FORWARD_POLL_MS: u64 = 500;
pub const DEFAULT_FORWARD_MAX_BACKOFF_MS: u64 = 30_000;
pub const DEFAULT_FORWARD_CONFIRM_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_FORWARD_MAX_MESSAGE_BYTES: usize = 65_536;
/// Retention defaults, in days (0 in a config means keep forever).
pub const DEFAULT_EVENTS_DAYS: u32 = 365;
pub const DEFAULT_CONTENT_DAYS: u32 = 90;
/// Six years: HIPAA's documentation period, longer than SOC 2 asks.
pub const DEFAULT_ADMIN_AUDIT_DAYS: u32 = 2190;
pub const DEFAULT_INVENTORY_DAYS: u32 = 90;
pub const DEFAULT_TOKENS_DAYS: u32 = 30;
pub const DEFAULT_RETENTION_INTERVAL_MINUTES: u32 = 60;
/// Longest retention accepted (100 years); use 0 for "forever".
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for agent gRPC (mTLS). Used by `main`; `run` takes a bound listener.
    pub grpc_listen: String,
    /// Address for the admin HTTP API. Used by `main`.
    pub admin_listen: String,
    /// Holds the SQLite database and generated TLS material unless overridden.
    pub data_dir: PathBuf,
    /// Names the server certificate is valid for, besides `localhost` and 127.0.0.1.
    pub hostnames: Vec<String>,
    pub store: StoreConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    /// Live SIEM forwarding targets (`[[forward]]`), each tailed by its own task.
    pub forward: Vec<ForwardConfig>,
    pub retention: RetentionConfig,
}

/// Transport to a syslog collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardTransport {
    /// Plain TCP with RFC 6587 octet counting.
    Tcp,
    /// TLS (RFC 5425), same framing.
    Tls,
}

/// Where a new target (no saved cursor) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardStart {
    /// Every stored event, oldest first.
    #[default]
    Oldest,
    /// Only events stored after the target first starts.
    Latest,
}

/// One live forwarding target (`[[forward]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Unique; keys the saved cursor, so renaming a target starts it afresh.
    pub name: String,
    /// Collector `host:port`.
    pub address: String,
    pub transport: ForwardTransport,
    /// TLS only: trust only the CA certificates in this PEM file (default: the OS roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS only: name to verify (default: the host part of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Only `syslog` (RFC 5424 in octet-counted frames).
    #[serde(default = "default_forward_format")]
    pub format: String,
    #[serde(default)]
    pub start: ForwardStart,
    /// Optional filters, as in `GET /api/v1/events`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
    /// `allow`, `block` or `redact` (e.g. send only blocks to the SIEM).
    #[serde(default)]
    pub decision: Option<String>,
    /// How often an idle forwarder looks for new events.
    #[serde(default = "default_forward_poll_ms")]
    pub poll_ms: u64,
    /// Longest wait between reconnect attempts (exponential backoff with jitter).
    #[serde(default = "default_forward_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long a written batch may wait for the collector's TCP acknowledgement.
    #[serde(default = "default_forward_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Largest syslog message sent; longer records lose their prompt and
    /// response text first (see `export::syslog_message_capped`).
    #[serde(default = "default_forward_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_forward_format() -> String {
    "syslog".into()
}
fn default_forward_poll_ms() -> u64 {
    DEFAULT_FORWARD_POLL_MS
}
fn default_forward_max_backoff_ms() -> u64 {
    DEFAULT_FORWARD_MAX_BACKOFF_MS
}
fn default_forward_confirm_timeout_ms() -> u64 {
    DEFAULT_FORWARD_CONFIRM_TIMEOUT_MS
}
fn default_forward_max_message_bytes() -> usize {
    DEFAULT_FORWARD_MAX_MESSAGE_BYTES
}

impl ForwardConfig {
    /// A target with defaults for everything optional.
    pub fn new(name: &str, address: &str, transport: ForwardTransport) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            transport,
            ca_file: None,
            server_name: None,
            format: default_forward_format(),
            start: ForwardStart::Oldest,
            kind: None,
            provider: None,
            model: None,
            device: None,
            app: None,
            decision: None,
            poll_ms: DEFAULT_FORWARD_POLL_MS,
            max_backoff_ms: DEFAULT_FORWARD_MAX_BACKOFF_MS,
            confirm_timeout_ms: DEFAULT_FORWARD_CONFIRM_TIMEOUT_MS,
            max_message_bytes: DEFAULT_FORWARD_MAX_MESSAGE_BYTES,
        }
    }

    /// `(host, port)` of `address`, if it is one.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        (!host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
    }

    fn validate(&self, i: usize, p: &mut Vec<String>) {
        let at = format!("forward[{i}]");
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            p.push(format!("{at}.name: {:?} must be 1..=64 of [A-Za-z0-9._-]", self.name));
        }
        if self.host_port().is_none() {
            p.push(format!("{at}.address: {:?} is not host:port", self.address));
        }
        if self.format != "syslog" {
            p.push(format!("{at}.format: {:?} is not supported (only syslog)", self.format));
        }
        if self.transport == ForwardTransport::Tcp {
            if self.ca_file.is_some() {
                p.push(format!("{at}.ca_file: only for transport = \"tls\""));
            }
            if self.server_name.is_some() {
                p.push(format!("{at}.server_name: only for transport = \"tls\""));
            }
        }
        if !(2048..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            p.push(format!("{at}.max_message_bytes: must be 2048..=16777216"));
        }
        if let Some(d) = &self.decision {
            if !["allow", "block", "redact"].contains(&d.as_str()) {
                p.push(format!("{at}.decision: {d:?} is not one of allow, block, redact"));
            }
        }
        if let Some(n) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
                p.push(format!("{at}.server_name: {n:?} is not a DNS name or IP address"));
            }
        }
        for (key, v) in [
            ("poll_ms", self.poll_ms),
            ("max_backoff_ms", self.max_backoff_ms),
            ("confirm_timeout_ms", self.confirm_timeout_ms),
        ] {
            if !(10..=3_600_000).contains(&v) {
                p.push(format!("{at}.{key}: must be 10..=3600000"));
            }
        }
    }
}

/// How long each table keeps rows, in days; `0` keeps them forever. Applied
/// by a background job every `interval_minutes` (first run one interval
/// after start). Ages count from when the server received the row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Interaction records and other events (metadata).
    pub events_days: u32,
    /// Prompt and response text inside events; at most `events_days`.
    pub content_days: u32,
    /// Admin audit log entries (the newest entry is always kept).
    pub admin_audit_days: u32,
    /// Inventory items a device has not reported for this long.
    pub inventory_days: u32,
    /// Enrollment tokens this long past expiry, admin tokens this long after revocation.
    pub tokens_days: u32,
    pub interval_minutes: u32,
}

/// Where events, devices and policy live.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file; default `<data_dir>/palisade.db`. Ignored when `postgres_url` is set.
    pub sqlite_path: Option<PathBuf>,
    /// `postgres://...`; when set, PostgreSQL is used instead of SQLite.
    pub postgres_url: Option<String>,
    /// PostgreSQL schema to use (created if missing); default: the URL's search_path.
    pub postgres_schema: Option<String>,
    pub max_connections: u32,
}

/// TLS material. Paths left empty default to files under `<data_dir>/tls/`,
/// created on first start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    /// Lifetime of issued device client certificates.
    pub device_cert_days: u32,
}

/// Protective limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Most events in one upload batch.
    pub max_batch_events: usize,
    /// Batches committed at once across all streams; beyond that agents get SlowDown.
    pub max_concurrent_batches: usize,
    /// Base `retry_after_ms` in SlowDown and retryable errors (jitter is added).
    pub slow_down_ms: u32,
    /// How often each process re-reads the newest policy version (backstop to NOTIFY).
    pub policy_poll_ms: u64,
    /// Default and maximum page size for `GET /api/v1/events`.
    pub events_page_limit: u32,
    /// How often an open policy stream re-checks that its device is still
    /// enrolled and unrevoked (upload streams check on every batch).
    pub stream_recheck_ms: u64,
    /// Failed authentications (bad or missing bearer token, refused console
    /// sign-in) per client address and minute that are audited one by one;
    /// beyond it they get 429 and are counted (see `admin/throttle.rs`).
    /// 0 audits every one.
    pub auth_failures_per_minute: u32,
}

// === impl ServerConfig ===

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: DEFAULT_GRPC_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            hostnames: Vec::new(),
            store: StoreConfig::default(),
            tls: TlsConfig::default(),
            limits: Limits::default(),
            forward: Vec::new(),
            retention: RetentionConfig::default(),
        }
    }
}

/// Every problem found in a config, reported at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid TOML: {0}")]
    Parse(String),
    #[error("invalid config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl ServerConfig {
    /// Parse TOML and validate.
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        let cfg: ServerConfig = toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A config for tests and `palisade up`: everything under `data_dir`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        for (key, v) in [
            ("grpc_listen", &self.grpc_listen),
            ("admin_listen", &self.admin_listen),
        ] {
            if v.parse::<SocketAddr>().is_err() {
                p.push(format!(
                    "{key}: {v:?} is not an address like 127.0.0.1:7443"
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".into());
        }
        for (i, h) in self.hostnames.iter().enumerate() {
            if h.trim().is_empty() || h.contains(char::is_whitespace) {
                p.push(format!("hostnames[{i}]: {h:?} is not a host name"));
            }
        }
        if let Some(url) = &self.store.postgres_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                p.push("store.postgres_url: must start with postgres:// or postgresql://".into());
            }
        }
        if let Some(schema) = &self.store.postgres_schema {
            if !is_identifier(schema) {
                p.push(format!(
                    "store.postgres_schema: {schema:?} must be [a-z_][a-z0-9_]* (max 63)"
                ));
            }
            if self.store.postgres_url.is_none() {
                p.push("store.postgres_schema: set without store.postgres_url".into());
            }
        }
        if self.store.max_connections == 0 {
            p.push("store.max_connections: must be at least 1".into());
        }
        let t = &self.tls;
        if t.ca_cert.is_some() != t.ca_key.is_some() {
            p.push("tls.ca_cert and tls.ca_key: set both or neither".into());
        }
        if t.server_cert.is_some() != t.server_key.is_some() {
            p.push("tls.server_cert and tls.server_key: set both or neither".into());
        }
        if t.device_cert_days == 0 || t.device_cert_days > 3650 {
            p.push("tls.device_cert_days: must be 1..=3650".into());
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            p.push("limits.max_message_bytes: must be at least 1024".into());
        }
        if l.max_batch_events == 0 || l.max_batch_events > 10_000 {
            p.push("limits.max_batch_events: must be 1..=10000".into());
        }
        if l.max_concurrent_batches == 0 {
            p.push("limits.max_concurrent_batches: must be at least 1".into());
        }
        if l.policy_poll_ms < 50 {
            p.push("limits.policy_poll_ms: must be at least 50".into());
        }
        if l.stream_recheck_ms < 50 {
            p.push("limits.stream_recheck_ms: must be at least 50".into());
        }
        if l.events_page_limit == 0 {
            p.push("limits.events_page_limit: must be at least 1".into());
        }
        for (i, f) in self.forward.iter().enumerate() {
            f.validate(i, &mut p);
            if self.forward[..i].iter().any(|g| g.name == f.name) {
                p.push(format!("forward[{i}].name: {:?} is used twice", f.name));
            }
        }
        self.retention.validate(&mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    /// The SQLite file this config uses (when not on PostgreSQL).
    pub fn sqlite_path(&self) -> PathBuf {
        self.store
            .sqlite_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join(DEFAULT_SQLITE_FILE))
    }

    /// Directory for generated TLS material.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    fn tls_path(&self, set: &Option<PathBuf>, file: &str) -> PathBuf {
        set.clone().unwrap_or_else(|| self.tls_dir().join(file))
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.tls_path(&self.tls.ca_cert, "ca.pem")
    }
    pub fn ca_key_path(&self) -> PathBuf {
        self.tls_path(&self.tls.ca_key, "ca.key")
    }
    pub fn server_cert_path(&self) -> PathBuf {
        self.tls_path(&self.tls.server_cert, "server.pem")
    }
    pub fn server_key_path(&self) -> PathBuf {
        self.tls_path(&self.tls.server_key, "server.key")
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// True when `s` is a safe unquoted PostgreSQL identifier.
pub(crate) fn is_safe_identifier(s: &str) -> bool {
    is_identifier(s)
}

// === impl StoreConfig ===

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("sqlite_path", &self.sqlite_path)
            .field(
                "postgres_url",
                &self.postgres_url.as_ref().map(|u| redact_url(u)),
            )
            .field("postgres_schema", &self.postgres_schema)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:...@host/db`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "...".into();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:...@{host}")
        }
        None => url.to_string(),
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sqlite_path: None,
            postgres_url: None,
            postgres_schema: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

// === impl TlsConfig ===

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_cert: None,
            ca_key: None,
            server_cert: None,
            server_key: None,
            device_cert_days: DEFAULT_DEVICE_CERT_DAYS,
        }
    }
}

// === impl RetentionConfig ===

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events_days: DEFAULT_EVENTS_DAYS,
            content_days: DEFAULT_CONTENT_DAYS,
            admin_audit_days: DEFAULT_ADMIN_AUDIT_DAYS,
            inventory_days: DEFAULT_INVENTORY_DAYS,
            tokens_days: DEFAULT_TOKENS_DAYS,
            interval_minutes: DEFAULT_RETENTION_INTERVAL_MINUTES,
        }
    }
}

impl RetentionConfig {
    fn validate(&self, p: &mut Vec<String>) {
        for (key, v) in [
            ("events_days", self.events_days),
            ("content_days", self.content_days),
            ("admin_audit_days", self.admin_audit_days),
            ("inventory_days", self.inventory_days),
            ("tokens_days", self.tokens_days),
        ] {
            if v > MAX_RETENTION_DAYS {
                p.push(format!(
                    "retention.{key}: {v} is more than {MAX_RETENTION_DAYS}; use 0 to keep forever"
                ));
            }
        }
        if self.events_days > 0 {
            if self.content_days == 0 {
                p.push(format!(
                    "retention.content_days: 0 keeps content forever, but events_days = {} deletes the records holding it; set 1..={}",
                    self.events_days, self.events_days
                ));
            } else if self.content_days > self.events_days {
                p.push(format!(
                    "retention.content_days: {} is more than events_days = {}: content cannot outlive its record",
                    self.content_days, self.events_days
                ));
            }
        }
        if self.interval_minutes == 0 || self.interval_minutes > 10_080 {
            p.push("retention.interval_minutes: must be 1..=10080 (a week)".into());
        }
    }
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            max_concurrent_batches: DEFAULT_MAX_CONCURRENT_BATCHES,
            slow_down_ms: DEFAULT_SLOW_DOWN_MS,
            policy_poll_ms: DEFAULT_POLICY_POLL_MS,
            events_page_limit: DEFAULT_EVENTS_PAGE_LIMIT,
            stream_recheck_ms: DEFAULT_STREAM_RECHECK_MS,
            auth_failures_per_minute: DEFAULT_AUTH_FAILURES_PER_MINUTE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_defaults() {
        let cfg = ServerConfig::from_toml("").unwrap();
        assert_eq!(cfg, ServerConfig::default());
        assert_eq!(cfg.store.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            cfg.sqlite_path(),
            PathBuf::from(DEFAULT_DATA_DIR).join(DEFAULT_SQLITE_FILE)
        );
    }

    #[test]
    fn full_toml_parses() {
        let cfg = ServerConfig::from_toml(
            r#"
            grpc_listen = "127.0.0.1:9000"
            data_dir = "/tmp/x"
            hostnames = ["palisade.example.com"]
            [store]
            postgres_url = "postgres://u:pw@db/palisade"
            postgres_schema = "fleet"
            [tls]
            device_cert_days = 30
            [limits]
            max_batch_events = 500
            "#,
        )
        .unwrap();
        assert_eq!(cfg.limits.max_batch_events, 500);
        assert_eq!(cfg.tls.device_cert_days, 30);
        assert_eq!(cfg.store.postgres_schema.as_deref(), Some("fleet"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = ServerConfig::from_toml("grpc_lisen = \"x\"").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse(m) if m.contains("grpc_lisen")),
            "{e}"
        );
        let e = ServerConfig::from_toml("[limits]\nmax_batch = 3").unwrap_err();
        assert!(e.to_string().contains("max_batch"), "{e}");
    }

    #[test]
    fn wrong_type_is_a_parse_error() {
        let e = ServerConfig::from_toml("[limits]\nmax_batch_events = \"many\"").unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)), "{e}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut cfg = ServerConfig {
            grpc_listen: "nope".into(),
            ..Default::default()
        };
        cfg.store.postgres_url = Some("mysql://x".into());
        cfg.store.postgres_schema = Some("Bad-Name".into());
        cfg.tls.ca_cert = Some("/ca.pem".into());
        cfg.limits.max_batch_events = 0;
        cfg.limits.max_message_bytes = 10;
        let ConfigError::Invalid(p) = cfg.validate().unwrap_err() else {
            panic!("expected Invalid")
        };
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("grpc_listen")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("tls.ca_cert")), "{p:?}");
    }

    #[test]
    fn forward_targets_parse_with_defaults() {
        let cfg = ServerConfig::from_toml(
            r#"
            [[forward]]
            name = "siem"
            address = "siem.example.com:6514"
            transport = "tls"
            ca_file = "/etc/siem-ca.pem"
            provider = "openai"
            [[forward]]
            name = "lab"
            address = "[::1]:601"
            transport = "tcp"
            start = "latest"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.forward.len(), 2);
        let f = &cfg.forward[0];
        assert_eq!(f.transport, ForwardTransport::Tls);
        assert_eq!(f.format, "syslog");
        assert_eq!(f.poll_ms, DEFAULT_FORWARD_POLL_MS);
        assert_eq!(f.host_port(), Some(("siem.example.com", 6514)));
        assert_eq!(cfg.forward[1].host_port(), Some(("::1", 601)));
        assert_eq!(cfg.forward[1].start, ForwardStart::Latest);
    }

    #[test]
    fn bad_forward_targets_report_every_problem() {
        let e = ServerConfig::from_toml(
            r#"
            [[forward]]
            name = "a b"
            address = "nohost"
            transport = "tcp"
            ca_file = "/x.pem"
            format = "cef"
            poll_ms = 0
            decision = "maybe"
            max_message_bytes = 100
            [[forward]]
            name = "dup"
            address = "h:1"
            transport = "tls"
            server_name = "bad name!"
            [[forward]]
            name = "dup"
            address = "h:0"
            transport = "tcp"
            "#,
        )
        .unwrap_err();
        let ConfigError::Invalid(p) = e else { panic!("{e}") };
        for want in [
            "forward[0].name",
            "forward[0].address",
            "forward[0].ca_file",
            "forward[0].format",
            "forward[0].poll_ms",
            "forward[0].decision",
            "forward[0].max_message_bytes",
            "forward[1].server_name",
            "forward[2].address",
            "forward[2].name: \"dup\" is used twice",
        ] {
            assert!(p.iter().any(|m| m.starts_with(want)), "{want} missing from {p:?}");
        }
        assert_eq!(p.len(), 10, "{p:?}");
        let e = ServerConfig::from_toml("[[forward]]\nname = \"x\"\naddress = \"h:1\"\ntransport = \"udp\"").unwrap_err();
        assert!(matches!(&e, ConfigError::Parse(m) if m.contains("udp")), "{e}");
        let e = ServerConfig::from_toml("[[forward]]\nname = \"x\"\naddress = \"h:1\"\ntransport = \"tcp\"\nfilter = 1").unwrap_err();
        assert!(e.to_string().contains("filter"), "{e}");
    }

    #[test]
    fn retention_parses_and_defaults() {
        let cfg = ServerConfig::from_toml(
            "[retention]\nevents_days = 30\ncontent_days = 7\nadmin_audit_days = 0\ninterval_minutes = 5",
        )
        .unwrap();
        assert_eq!(cfg.retention.events_days, 30);
        assert_eq!(cfg.retention.content_days, 7);
        assert_eq!(cfg.retention.admin_audit_days, 0);
        assert_eq!(cfg.retention.inventory_days, DEFAULT_INVENTORY_DAYS);
        let e = ServerConfig::from_toml("[retention]\nevent_days = 3").unwrap_err();
        assert!(e.to_string().contains("event_days"), "{e}");
        // Forever everywhere is explicit and valid.
        ServerConfig::from_toml(
            "[retention]\nevents_days = 0\ncontent_days = 0\nadmin_audit_days = 0\ninventory_days = 0\ntokens_days = 0",
        )
        .unwrap();
    }

    #[test]
    fn retention_validation_reports_every_problem() {
        let mut cfg = ServerConfig::default();
        cfg.retention.events_days = 30;
        cfg.retention.content_days = 31;
        cfg.retention.inventory_days = MAX_RETENTION_DAYS + 1;
        cfg.retention.interval_minutes = 0;
        let ConfigError::Invalid(p) = cfg.validate().unwrap_err() else {
            panic!("expected Invalid")
        };
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("retention.content_days: 31 is more than events_days = 30")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with("retention.inventory_days")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("retention.interval_minutes")),
            "{p:?}"
        );

        cfg.retention = RetentionConfig {
            content_days: 0,
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("retention.content_days: 0 keeps content forever"),
            "{e}"
        );
    }

    #[test]
    fn debug_redacts_postgres_password() {
        let mut cfg = ServerConfig::default();
        cfg.store.postgres_url = Some("postgres://admin:hunter2@db:5432/p".into());
        let s = format!("{cfg:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("admin:...@db:5432/p"), "{s}");
    }
}
