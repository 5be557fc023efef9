//! The store: devices, enrollment and admin tokens, policy versions, audit
//! events and inventory, on SQLite (default, embedded, WAL) or PostgreSQL.
//!
//! **Only this module knows SQL.** Both backends share one set of queries
//! (written in the common subset: `$n` placeholders, `ON CONFLICT`,
//! `RETURNING`), generated for each backend by [`backend_impl!`], and each has
//! its own migrations under `migrations/<backend>/`. Times are stored as Unix
//! milliseconds so both backends compare them the same way.
//!
//! Guarantees the rest of the server relies on:
//! * `insert_events` commits a whole batch in ONE transaction or nothing;
//!   event ids are unique, so re-inserting is a no-op (`ON CONFLICT DO NOTHING`).
//! * Raw tokens never reach the store: callers pass SHA-256 hashes.
//! * At most one live (unrevoked) device per hardware id (a partial unique index).
//!
//! This module must never log event contents or token hashes.

mod audit;
mod backend;
mod catalog;
pub mod chain;
mod console;
mod forward;
mod group;
mod migrate;

use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;
use uuid::Uuid;

pub use audit::{
    AdminAuditRow, AdminTokenIdentity, AdminTokenInfo, AuditHead, AuditSeal, AUDIT_CHAIN_LOCK,
};
pub use backend::{PgBackend, SqliteBackend};
pub use console::{OverviewCounts, PolicyVersionMeta, SessionRecord};
pub use forward::{forward_lock_key, ForwardCursor, ForwardLease};
pub use catalog::{
    CatalogDetail, CatalogDevice, CatalogEntry, CatalogFilter, CatalogKind, CatalogStatus,
    DecideOutcome, DecisionSummary, PolicyEdit,
};

/// PostgreSQL NOTIFY channel carrying new policy versions.
pub const POLICY_CHANNEL: &str = "palisade_policy";

/// Rows per multi-row INSERT statement (well under both backends' bind limits).
const INSERT_CHUNK_ROWS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("enrollment token rejected: {0}")]
    Token(TokenProblem),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("batch not stored: the transaction it was grouped into failed: {0}")]
    GroupCommit(String),
    #[error("invalid PostgreSQL schema name {0:?}: use [a-z_][a-z0-9_]*")]
    InvalidSchema(String),
    #[error("store is shutting down")]
    Closed,
    #[error("could not create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("unknown token")]
    Unknown,
    #[error("token has expired")]
    Expired,
    #[error("token has no uses left")]
    UsedUp,
}

/// A device record as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    pub cert_fingerprint: String,
    pub cert_serial: String,
    pub hostname: String,
    pub os: String,
    pub hardware_id: String,
    pub agent_version: String,
    pub owner_email: Option<String>,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    pub applied_policy_version: Option<u64>,
}

/// What an authenticated call needs to know about its device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAuth {
    pub cert_fingerprint: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Result of a successful enrollment.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolled {
    /// Older live device ids for the same hardware id, now revoked.
    pub superseded: Vec<String>,
}

/// A new enrollment token (hash only).
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentTokenRecord {
    pub id: String,
    pub max_uses: u32,
    pub uses: u32,
    pub expires_at: DateTime<Utc>,
}

/// A stored policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub version: u64,
    /// JSON of `palisade_core::Policy` (its own `version` field may be stale:
    /// `version` here is authoritative).
    pub document: String,
    pub created_at: DateTime<Utc>,
    pub author: String,
}

/// One event to ingest: the indexed columns plus the full JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub kind: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub app: Option<String>,
    pub decision: Option<String>,
    pub json: String,
    pub os_user: Option<String>,
    pub user_email: Option<String>,
    pub team: Option<String>,
    pub usage: EventUsage,
    /// Detector names with findings in this event, each once.
    pub detectors: Vec<String>,
    /// Prompt and response text for free-text search; `None` when there is none.
    pub search_text: Option<String>,
}

/// Token counts and cost of one interaction, as the record reported them
/// (`None` = unknown, never 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventUsage {
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cached_input_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: Uuid,
    pub device_id: String,
    pub time: DateTime<Utc>,
    pub kind: String,
    pub json: String,
}

/// Filter for listing events; `None` means any. Newest first (by ingest
/// `seq`), so a page never shifts when new events arrive: they all sort
/// before the first page. With `after_seq`, oldest first instead (tailing:
/// exports and forwarders).
///
/// Build it from HTTP parameters with `admin::events::EventQuery::into_filter`
/// (the one place that validates them); values here are always bound, never
/// spliced into SQL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub device_id: Option<String>,
    pub kind: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub app: Option<String>,
    pub decision: Option<String>,
    /// Matches `user.os_user`.
    pub os_user: Option<String>,
    /// Matches `user.email`.
    pub user_email: Option<String>,
    pub detector: Option<String>,
    /// Every word must occur in the prompt or response text.
    pub text: Option<TextQuery>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only events with `seq < before_seq` (the cursor of the previous page).
    pub before_seq: Option<i64>,
    /// Only events with `seq > after_seq`, and the page is OLDEST first.
    pub after_seq: Option<i64>,
    pub limit: u32,
}

/// A free-text query, kept as words; each backend turns it into its own
/// full-text syntax with the words quoted or bound, so no user input is ever
/// read as query syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    raw: String,
    words: Vec<String>,
}

impl TextQuery {
    /// `None` when `raw` has no searchable word (letters or digits).
    pub fn new(raw: &str) -> Option<Self> {
        let words: Vec<String> = raw
            .split_whitespace()
            .filter(|w| w.chars().any(char::is_alphanumeric))
            .map(str::to_string)
            .collect();
        (!words.is_empty()).then(|| Self {
            raw: words.join(" "),
            words,
        })
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// SQLite FTS5: each word a quoted phrase (FTS5's own tokenizer splits
    /// `alice@example.com` into a phrase of three tokens), ANDed.
    pub(crate) fn fts5(&self) -> String {
        self.words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// PostgreSQL: the words for `plainto_tsquery` (which never reads syntax).
    pub(crate) fn plain(&self) -> &str {
        &self.raw
    }
}

/// What a usage report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    /// `user.email`, else `user.os_user`.
    User,
    Team,
    App,
    Model,
    /// UTC day of the event's time.
    Day,
}

/// Usage over interactions in `[since, until)`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    pub group_by: UsageGroup,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One group of a usage report. Token sums are `None` when no request in
/// the group reported them; `cost_usd` sums only priced requests, and
/// `unpriced_requests` counts the rest (never folded in as 0).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// The group's key; `None` when the records did not say (unknown user, ...).
    /// For [`UsageGroup::Day`], the day as `YYYY-MM-DD`.
    pub key: Option<String>,
    pub requests: i64,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cached_input_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    pub priced_requests: i64,
    pub unpriced_requests: i64,
}

/// One inventory item as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryRecord {
    pub kind: String,
    pub item_id: String,
    pub name: String,
    /// JSON object.
    pub details: String,
}

/// The store: one of the two backends, same semantics. Cheap to clone (pools are shared).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteBackend),
    Postgres(Box<PgBackend>),
}

macro_rules! dispatch {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match $self {
            Store::Sqlite(b) => b.$m($($a),*).await,
            Store::Postgres(b) => b.$m($($a),*).await,
        }
    };
}

// === impl Store ===

impl Store {
    /// Open (and migrate) the store the config names.
    pub async fn open(cfg: &crate::ServerConfig) -> Result<Self, StoreError> {
        match &cfg.store.postgres_url {
            Some(url) => {
                Self::open_postgres(
                    url,
                    cfg.store.postgres_schema.as_deref(),
                    cfg.store.max_connections,
                )
                .await
            }
            None => Self::open_sqlite(&cfg.sqlite_path(), cfg.store.max_connections).await,
        }
    }

    pub async fn open_sqlite(
        path: &std::path::Path,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Ok(Store::Sqlite(
            SqliteBackend::open(path, max_connections).await?,
        ))
    }

    /// `schema`, when given, is created if missing and used as search_path.
    pub async fn open_postgres(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Ok(Store::Postgres(Box::new(
            PgBackend::open(url, schema, max_connections).await?,
        )))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        dispatch!(self.close())
    }

    // --- tokens ---

    pub async fn create_enrollment_token(
        &self,
        token_hash: &str,
        max_uses: u32,
        expires_at: DateTime<Utc>,
        note: Option<&str>,
    ) -> Result<String, StoreError> {
        dispatch!(self.create_enrollment_token(token_hash, max_uses, expires_at, note, None))
    }

    /// [`Store::create_enrollment_token`] with its admin audit entry (given
    /// the new id) sealed into the same transaction.
    pub async fn create_enrollment_token_audited(
        &self,
        token_hash: &str,
        max_uses: u32,
        expires_at: DateTime<Utc>,
        note: Option<&str>,
        seal: &AuditSeal<'_, String>,
    ) -> Result<String, StoreError> {
        dispatch!(self.create_enrollment_token(token_hash, max_uses, expires_at, note, Some(seal)))
    }

    pub async fn create_admin_token(
        &self,
        token_hash: &str,
        name: &str,
    ) -> Result<String, StoreError> {
        dispatch!(self.create_admin_token(token_hash, name))
    }

    /// The name of the live admin token with this hash.
    pub async fn admin_token_name(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self.admin_token_name(token_hash))
    }

    // --- devices ---

    /// Consume one use of the token and insert the device, revoking any live
    /// device with the same hardware id, all in one transaction.
    pub async fn enroll_device(
        &self,
        token_hash: &str,
        device: &DeviceRecord,
    ) -> Result<Enrolled, StoreError> {
        dispatch!(self.enroll_device(token_hash, device))
    }

    /// Mark the device seen now and return what authentication needs; `None`
    /// when the id is unknown.
    pub async fn touch_device(&self, id: &str) -> Result<Option<DeviceAuth>, StoreError> {
        dispatch!(self.touch_device(id))
    }

    /// Read-only variant of [`Store::touch_device`] for per-batch re-checks
    /// (never waits on SQLite's write lock).
    pub async fn device_auth(&self, id: &str) -> Result<Option<DeviceAuth>, StoreError> {
        dispatch!(self.device_auth(id))
    }

    /// Revoke a device; false when it is unknown or already revoked.
    pub async fn revoke_device(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        Ok(dispatch!(self.revoke_device(id, reason, None))? == Some(true))
    }

    /// Revoke a device with its admin audit entry sealed into the same
    /// transaction. `None`: no such device; `Some(false)`: already revoked.
    pub async fn revoke_device_audited(
        &self,
        id: &str,
        reason: &str,
        seal: &AuditSeal<'_, Option<bool>>,
    ) -> Result<Option<bool>, StoreError> {
        dispatch!(self.revoke_device(id, reason, Some(seal)))
    }

    pub async fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        dispatch!(self.get_device(id))
    }

    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        dispatch!(self.list_devices())
    }

    pub async fn record_applied(&self, device_id: &str, version: u64) -> Result<(), StoreError> {
        dispatch!(self.record_applied(device_id, version))
    }

    // --- policy ---

    /// Store a new policy version (previous max + 1) and announce it to other
    /// processes (PostgreSQL NOTIFY on [`POLICY_CHANNEL`]). Returns the version.
    pub async fn insert_policy(&self, document: &str, author: &str) -> Result<u64, StoreError> {
        dispatch!(self.insert_policy(document, author, None))
    }

    /// [`Store::insert_policy`] with its admin audit entry (given the new
    /// version) sealed into the same transaction.
    pub async fn insert_policy_audited(
        &self,
        document: &str,
        author: &str,
        seal: &AuditSeal<'_, u64>,
    ) -> Result<u64, StoreError> {
        dispatch!(self.insert_policy(document, author, Some(seal)))
    }

    pub async fn latest_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        dispatch!(self.latest_policy())
    }

    pub async fn latest_policy_version(&self) -> Result<u64, StoreError> {
        dispatch!(self.latest_policy_version())
    }

    // --- events ---

    /// Insert a batch for `device_id` in one transaction; ids already stored
    /// are skipped. Returns how many rows were new. Committed on `Ok`.
    pub async fn insert_events(
        &self,
        device_id: &str,
        events: &[NewEvent],
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.insert_events_grouped(device_id, events.to_vec()).await,
            Store::Postgres(b) => b.insert_events_grouped(device_id, events.to_vec()).await,
        }
    }

    pub async fn query_events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
        dispatch!(self.query_events(filter))
    }

    pub async fn count_events(&self) -> Result<u64, StoreError> {
        dispatch!(self.count_events())
    }

    /// One event by id.
    pub async fn get_event(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        dispatch!(self.get_event(id))
    }

    /// Token and cost sums over interactions, one row per group.
    pub async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        dispatch!(self.usage(q))
    }

    /// Drop the free-text index entries of events older than `cutoff`
    /// (SQLite: their `events_fts` rows; PostgreSQL: `search_tsv` set to
    /// NULL). Content retention must call this (or
    /// `forget_event_text_in` inside its own transaction) whenever it purges
    /// prompt/response text, or the words stay searchable. Returns how many
    /// events were affected.
    pub async fn forget_event_text_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        dispatch!(self.forget_event_text_before(cutoff))
    }

    // --- inventory ---

    /// Upsert items; with `full_snapshot`, items not in `items` are removed.
    pub async fn put_inventory(
        &self,
        device_id: &str,
        items: &[InventoryRecord],
        full_snapshot: bool,
    ) -> Result<u32, StoreError> {
        dispatch!(self.put_inventory(device_id, items, full_snapshot))
    }

    pub async fn list_inventory(
        &self,
        device_id: &str,
    ) -> Result<Vec<InventoryRecord>, StoreError> {
        dispatch!(self.list_inventory(device_id))
    }

    /// A connection that receives policy NOTIFYs (PostgreSQL only).
    pub async fn policy_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(b) => b.policy_listener().await.map(Some),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

/// How long SQLite waits for a lock before failing a write.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
