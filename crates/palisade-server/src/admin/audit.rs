//! The tamper-evident admin audit log: entry model, canonical encoding, hash
//! chain, HMAC signing, the server's audit key, offline verification, and the
//! `GET /api/v1/admin-audit[/export]` handlers.
//!
//! # Chain format (`palisade-admin-audit/1`)
//! For each entry, the **canonical encoding** is a JSON object with no
//! whitespace, keys sorted bytewise at every depth, holding every field
//! except `hash` and `hmac`:
//! `action, actor{id, kind}, details, ip, outcome, prev_hash, seq, target{id, type}, time, user_agent`
//! where `seq` and `time` (Unix milliseconds) are integers, `ip` and
//! `user_agent` are strings or `null`, and `details` is any JSON value
//! (its objects sorted too). Strings use serde_json's escaping.
//! * `hash = hex(SHA-256(ascii(prev_hash) ‖ canonical))`, lowercase hex;
//! * `hmac = hex(HMAC-SHA256(audit key, the 32 raw bytes of hash))`;
//! * the first entry has `seq = 1` and `prev_hash` = 64 zeros ([`GENESIS_HASH`]);
//!   every next entry has `seq + 1` and the previous entry's `hash`.
//!
//! The audit key (32 random bytes, hex in a 0600 file, [`AuditKey`]) is kept
//! OUT of the database: someone who can write the database can recompute
//! hashes but not HMACs. Appends are serialised (a mutex here, the chain lock
//! in the store) so the chain never forks.
//!
//! This module must never put a raw token, a token hash, a request body or a
//! secret into an entry: actors are token names, details are small summaries.
//! It must never Debug-print or log the key.

use crate::store::{AdminAuditRow, AuditHead, Store, StoreError};
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Name of the chain format, written into exports.
pub const FORMAT: &str = "palisade-admin-audit/1";
/// Default file name of the audit key under the server's data dir.
pub const AUDIT_KEY_FILE: &str = "audit.key";
/// Longest `ip`, `user_agent` or target id kept in an entry (longer is cut).
pub const MAX_FIELD_CHARS: usize = 256;

type HmacSha256 = Hmac<Sha256>;

// === Actor, Action, Outcome, Target ===

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Token,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::System => "system",
        }
    }
}

/// What was done. `Read` only appears on refused reads (allowed reads are
/// not audited; exports are `Export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
    Approve,
    Deny,
    Login,
    Export,
    Import,
    Retention,
    Revoke,
    Read,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Approve => "approve",
            Action::Deny => "deny",
            Action::Login => "login",
            Action::Export => "export",
            Action::Import => "import",
            Action::Retention => "retention",
            Action::Revoke => "revoke",
            Action::Read => "read",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// `{kind, id}` as stored (wire strings, so a tampered value still verifies
/// to a clear hash mismatch instead of a parse error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// What a caller records; the log adds seq, time and the chain fields.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    pub actor_kind: ActorKind,
    pub actor_id: String,
    pub action: Action,
    pub outcome: Outcome,
    pub target_type: String,
    pub target_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// A small summary; never a request body, token or secret.
    pub details: Value,
}

/// One entry of the chain, as the API returns and exports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: i64,
    pub time: DateTime<Utc>,
    pub actor: Actor,
    pub action: String,
    pub outcome: String,
    pub target: Target,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
    pub hmac: String,
}

// === impl AuditEntry ===

impl AuditEntry {
    /// From a stored row. Details that are not JSON (a tampered row) become a
    /// JSON string, so verification reports a hash mismatch at that seq.
    pub fn from_row(row: &AdminAuditRow) -> Self {
        Self {
            seq: row.seq,
            time: Utc
                .timestamp_millis_opt(row.time_ms)
                .single()
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            actor: Actor {
                kind: row.actor_kind.clone(),
                id: row.actor_id.clone(),
            },
            action: row.action.clone(),
            outcome: row.outcome.clone(),
            target: Target {
                kind: row.target_type.clone(),
                id: row.target_id.clone(),
            },
            ip: row.ip.clone(),
            user_agent: row.user_agent.clone(),
            details: serde_json::from_str(&row.details)
                .unwrap_or_else(|_| Value::String(row.details.clone())),
            prev_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            hmac: row.hmac.clone(),
        }
    }

    /// The canonical encoding (see the module docs).
    pub fn canonical(&self) -> String {
        let v = serde_json::json!({
            "action": self.action,
            "actor": { "id": self.actor.id, "kind": self.actor.kind },
            "details": self.details,
            "ip": self.ip,
            "outcome": self.outcome,
            "prev_hash": self.prev_hash,
            "seq": self.seq,
            "target": { "id": self.target.id, "type": self.target.kind },
            "time": self.time.timestamp_millis(),
            "user_agent": self.user_agent,
        });
        canonical_json(&v)
    }

    /// `hex(SHA-256(prev_hash ‖ canonical))`.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(self.canonical().as_bytes());
        hex::encode(h.finalize())
    }
}

/// JSON with object keys sorted bytewise at every depth and no whitespace,
/// independent of serde_json's map ordering feature.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_FIELD_CHARS).collect()
}

// === impl AuditKey ===

/// The server's 32-byte HMAC key. Lives in a 0600 file, never in the
/// database; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditKey([u8; 32]);

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("audit key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit key {path}: {reason}")]
    Malformed { path: String, reason: String },
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(...)")
    }
}

impl AuditKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// Where the server keeps its key: `<data_dir>/audit.key`.
    pub fn default_path(cfg: &crate::ServerConfig) -> PathBuf {
        cfg.data_dir.join(AUDIT_KEY_FILE)
    }

    /// Parse the file format: 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &str, path: &Path) -> Result<Self, AuditKeyError> {
        let malformed = |reason: String| AuditKeyError::Malformed {
            path: path.display().to_string(),
            reason,
        };
        let t = text.trim();
        if t.len() != 64 {
            return Err(malformed(format!(
                "expected 64 hex characters (32 bytes), found {}",
                t.len()
            )));
        }
        let bytes = hex::decode(t).map_err(|e| malformed(format!("not hex: {e}")))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(Self(key))
    }

    /// Read an existing key file.
    pub fn load(path: &Path) -> Result<Self, AuditKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuditKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_hex(&text, path)
    }

    /// Read the key, or create it (0600, written once with `create_new` so two
    /// servers starting together cannot each write a different key).
    pub fn load_or_create(path: &Path) -> Result<Self, AuditKeyError> {
        use std::io::Write;
        let io = |source| AuditKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            return Self::load(path);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let key = Self::generate();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                f.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())
                    .map_err(io)?;
                f.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "Created admin audit key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(e)),
        }
    }

    /// `hex(HMAC-SHA256(key, raw hash bytes))`; `None` when `hash` is not hex.
    pub fn sign(&self, hash_hex: &str) -> Option<String> {
        let raw = hex::decode(hash_hex).ok()?;
        let mut mac = HmacSha256::new_from_slice(&self.0).ok()?;
        mac.update(&raw);
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// `hex(HMAC-SHA256(key, message))`, for checkpoints.
    pub fn mac_hex(&self, message: &[u8]) -> String {
        // HMAC takes keys of any length: a 32-byte key never fails.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(message);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of [`AuditKey::mac_hex`].
    pub fn check_mac(&self, message: &[u8], tag_hex: &str) -> bool {
        let Ok(tag) = hex::decode(tag_hex) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
            return false;
        };
        mac.update(message);
        mac.verify_slice(&tag).is_ok()
    }

    /// Constant-time check of an entry's HMAC.
    pub fn check(&self, hash_hex: &str, hmac_hex: &str) -> bool {
        let (Ok(raw), Ok(tag)) = (hex::decode(hash_hex), hex::decode(hmac_hex)) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
            return false;
        };
        mac.update(&raw);
        mac.verify_slice(&tag).is_ok()
    }
}

// === Verification ===

/// Where the chain first breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("seq {expected}: missing (the next entry is seq {found}): an entry was deleted or the log starts late")]
    SeqGap { expected: i64, found: i64 },
    #[error("seq {expected}: found seq {found} instead: entries were reordered or duplicated")]
    OutOfOrder { expected: i64, found: i64 },
    #[error("seq {seq}: prev_hash does not match the hash of the entry before: an entry was inserted, removed or reordered")]
    BrokenLink { seq: i64 },
    #[error("seq {seq}: contents do not match the stored hash: the entry was edited")]
    HashMismatch { seq: i64 },
    #[error("seq {seq}: HMAC does not match: the entry was forged or signed with another key")]
    HmacMismatch { seq: i64 },
    #[error("the chain ends at seq {found} but its head says seq {expected}: entries were removed from the end")]
    Truncated { expected: i64, found: i64 },
    #[error("seq {seq}: the last entry's hash differs from the recorded chain head")]
    HeadMismatch { seq: i64 },
    #[error("checkpoint at seq {seq}: HMAC does not match or it is not where the log starts: forged or edited")]
    BadCheckpoint { seq: i64 },
}

impl VerifyError {
    /// The first seq where the chain is broken.
    pub fn seq(&self) -> i64 {
        match self {
            VerifyError::SeqGap { expected, .. }
            | VerifyError::OutOfOrder { expected, .. }
            | VerifyError::Truncated {
                found: expected, ..
            } => *expected,
            VerifyError::BrokenLink { seq }
            | VerifyError::BadCheckpoint { seq }
            | VerifyError::HashMismatch { seq }
            | VerifyError::HmacMismatch { seq }
            | VerifyError::HeadMismatch { seq } => *seq,
        }
    }
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    /// `None` for an empty log.
    pub head_seq: Option<i64>,
    pub head_hash: String,
}

/// Verifies entries one by one (for streams of any length); [`verify`] wraps it.
#[derive(Debug)]
pub struct Verifier<'k> {
    key: &'k AuditKey,
    next_seq: i64,
    prev_hash: String,
    entries: u64,
}

impl<'k> Verifier<'k> {
    pub fn new(key: &'k AuditKey) -> Self {
        Self {
            key,
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            entries: 0,
        }
    }

    /// Start after a signed checkpoint (retention deleted the entries up to
    /// it): the first entry must be `checkpoint.position + 1` and link to
    /// its hash. A checkpoint that fails its HMAC is refused.
    pub fn from_checkpoint(
        key: &'k AuditKey,
        cp: &crate::store::chain::CheckpointRow,
    ) -> Result<Self, VerifyError> {
        if cp.chain != crate::store::chain::ADMIN_AUDIT_CHAIN
            || !super::integrity::check_checkpoint(key, cp)
        {
            return Err(VerifyError::BadCheckpoint { seq: cp.position });
        }
        Ok(Self {
            key,
            next_seq: cp.position + 1,
            prev_hash: cp.hash.clone(),
            entries: 0,
        })
    }

    /// Check the next entry. Order of checks: seq, link, hash, HMAC.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), VerifyError> {
        let expected = self.next_seq;
        if e.seq > expected {
            return Err(VerifyError::SeqGap {
                expected,
                found: e.seq,
            });
        }
        if e.seq < expected {
            return Err(VerifyError::OutOfOrder {
                expected,
                found: e.seq,
            });
        }
        if e.prev_hash != self.prev_hash {
            return Err(VerifyError::BrokenLink { seq: e.seq });
        }
        if e.compute_hash() != e.hash {
            return Err(VerifyError::HashMismatch { seq: e.seq });
        }
        if !self.key.check(&e.hash, &e.hmac) {
            return Err(VerifyError::HmacMismatch { seq: e.seq });
        }
        self.next_seq += 1;
        self.prev_hash = e.hash.clone();
        self.entries += 1;
        Ok(())
    }

    /// Finish, optionally checking against a head recorded elsewhere (an
    /// export's trailer, or a head an auditor noted earlier).
    pub fn finish(self, head: Option<&AuditHead>) -> Result<VerifyReport, VerifyError> {
        let last = self.next_seq - 1;
        if let Some(h) = head {
            if h.seq != last {
                return Err(if h.seq > last {
                    VerifyError::Truncated {
                        expected: h.seq,
                        found: last,
                    }
                } else {
                    VerifyError::HeadMismatch { seq: h.seq }
                });
            }
            if h.hash != self.prev_hash {
                return Err(VerifyError::HeadMismatch { seq: last });
            }
        }
        Ok(VerifyReport {
            entries: self.entries,
            head_seq: (last > 0 && self.entries > 0).then_some(last),
            head_hash: self.prev_hash,
        })
    }
}

/// Verify a whole log from seq 1: detects any edit, deletion, insertion or
/// reordering and names the first seq where it happened. Deleting entries
/// from the END is only detectable against a recorded head: see [`Verifier::finish`].
pub fn verify(entries: &[AuditEntry], key: &AuditKey) -> Result<VerifyReport, VerifyError> {
    let mut v = Verifier::new(key);
    for e in entries {
        v.push(e)?;
    }
    v.finish(None)
}

// === impl AuditLog ===

/// The finished row for `new` on top of `head`: seq, time, hashes, HMAC.
fn seal_row(key: &AuditKey, new: &NewAuditEntry, time: DateTime<Utc>, head: Option<AuditHead>) -> AdminAuditRow {
    let new = new.clone();
    let details = canonical_json(&new.details);
        let (seq, prev_hash) = match head {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, GENESIS_HASH.to_string()),
        };
        let mut entry = AuditEntry {
            seq,
            time: Utc
                .timestamp_millis_opt(time.timestamp_millis())
                .single()
                .unwrap_or(time),
            actor: Actor {
                kind: new.actor_kind.as_str().into(),
                id: truncate(&new.actor_id),
            },
            action: new.action.as_str().into(),
            outcome: new.outcome.as_str().into(),
            target: Target {
                kind: truncate(&new.target_type),
                id: truncate(&new.target_id),
            },
            ip: new.ip.as_deref().map(truncate),
            user_agent: new.user_agent.as_deref().map(truncate),
            details: new.details,
            prev_hash,
            hash: String::new(),
            hmac: String::new(),
        };
        entry.hash = entry.compute_hash();
        // The hash is always 64 hex chars, so signing cannot fail.
        entry.hmac = key.sign(&entry.hash).unwrap_or_default();
        AdminAuditRow {
            seq: entry.seq,
            time_ms: entry.time.timestamp_millis(),
            actor_kind: entry.actor.kind,
            actor_id: entry.actor.id,
            action: entry.action,
            outcome: entry.outcome,
            target_type: entry.target.kind,
            target_id: entry.target.id,
            ip: entry.ip,
            user_agent: entry.user_agent,
            details,
            prev_hash: entry.prev_hash,
            hash: entry.hash,
            hmac: entry.hmac,
        }
}

/// The server's single writer of the admin audit log.
#[derive(Debug)]
pub struct AuditLog {
    store: Store,
    key: Arc<AuditKey>,
    /// One append at a time in this process (the store's chain lock covers
    /// other processes on PostgreSQL).
    writer: tokio::sync::Mutex<()>,
}

impl AuditLog {
    pub fn new(store: Store, key: AuditKey) -> Self {
        Self {
            store,
            key: Arc::new(key),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// Seal and append one entry; returns it as stored.
    pub async fn append(&self, new: NewAuditEntry) -> Result<AuditEntry, StoreError> {
        let _one_writer = self.writer.lock().await;
        let key = self.key.clone();
        let time = Utc::now();
        let row = self
            .store
            .append_admin_audit(move |head| seal_row(&key, &new, time, head))
            .await?;
        Ok(AuditEntry::from_row(&row))
    }

    /// A seal for an admin mutation's own store transaction
    /// ([`crate::store::AuditSeal`]): `entry` turns the mutation's result
    /// into its entry (`None`: no entry), which is sealed onto the head the
    /// transaction reads under the chain lock.
    pub fn sealer<'a, T>(
        &self,
        entry: impl Fn(&T) -> Option<NewAuditEntry> + Send + Sync + 'a,
    ) -> impl Fn(Option<AuditHead>, &T) -> Option<AdminAuditRow> + Send + Sync + 'a {
        let key = self.key.clone();
        move |head, result| entry(result).map(|new| seal_row(&key, &new, Utc::now(), head))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signing key, for verification (never printed).
    pub fn key(&self) -> &AuditKey {
        &self.key
    }
}

/// Read every entry of a store's log, page by page, and verify it.
/// When retention deleted the start of the log, verification starts at the
/// signed checkpoint one before the first stored entry; without one, the
/// first missing seq is reported.
pub async fn verify_store(store: &Store, key: &AuditKey) -> Result<VerifyReport, VerifyStoreError> {
    let mut page = store.admin_audit_page(0, 1000).await?;
    let mut v = match page.first() {
        Some(first) if first.seq > 1 => {
            let cps = store
                .checkpoints(crate::store::chain::ADMIN_AUDIT_CHAIN)
                .await?;
            match start_checkpoint(&cps, first.seq) {
                Some(cp) => Verifier::from_checkpoint(key, cp)?,
                None => Verifier::new(key),
            }
        }
        _ => Verifier::new(key),
    };
    while let Some(last) = page.last() {
        let after = last.seq;
        for row in &page {
            v.push(&AuditEntry::from_row(row))?;
        }
        page = store.admin_audit_page(after, 1000).await?;
    }
    Ok(v.finish(None)?)
}

/// The checkpoint a log whose first entry is `first_seq` starts from.
pub fn start_checkpoint(
    cps: &[crate::store::chain::CheckpointRow],
    first_seq: i64,
) -> Option<&crate::store::chain::CheckpointRow> {
    cps.iter().find(|c| c.position == first_seq - 1)
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broken(#[from] VerifyError),
}

/// The last line of an export: what an auditor needs besides the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportTrailer {
    pub format: String,
    /// The signed checkpoint the log starts from when retention deleted its
    /// oldest entries (absent when it starts at seq 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<super::integrity::ExportCheckpoint>,
    pub chain_head: Option<ExportHead>,
    pub entries: u64,
    pub canonical: String,
    pub instructions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHead {
    pub seq: i64,
    pub hash: String,
}

/// How the chain is built, repeated in every export.
pub const CANONICAL_DESCRIPTION: &str = "hash = hex(SHA-256(prev_hash || canonical)), canonical = JSON \
    without whitespace, keys sorted bytewise at every depth, of {action, actor{id,kind}, details, ip, \
    outcome, prev_hash, seq, target{id,type}, time (unix ms), user_agent}; hmac = hex(HMAC-SHA256(key, \
    raw hash bytes)); seq starts at 1 with prev_hash = 64 zeros";

pub const EXPORT_INSTRUCTIONS: &str = "Verify offline with: palisade audit verify --file <this file> \
    --key-file <audit key, obtained out of band from the server operator>. Compare chain_head with a \
    head recorded independently to detect removal of the newest entries.";

// === HTTP handlers ===

pub(crate) mod http {
    //! `GET /api/v1/admin-audit` and `/export`. Read-only; the matrix in
    //! `rbac` decides who may call them.

    use super::*;
    use crate::admin::{AdminState, ApiError};
    use axum::body::Body;
    use axum::extract::{Query, State};
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::Json;

    pub const DEFAULT_PAGE: u32 = 100;
    pub const MAX_PAGE: u32 = 1000;
    const EXPORT_PAGE: u32 = 500;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::admin) struct PageQuery {
        after_seq: Option<i64>,
        limit: Option<u32>,
    }

    pub(in crate::admin) async fn list(
        State(s): State<Arc<AdminState>>,
        q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Json<Value>, ApiError> {
        let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let mut problems = Vec::new();
        let after = q.after_seq.unwrap_or(0);
        if after < 0 {
            problems.push("after_seq: must be 0 or more".to_string());
        }
        let limit = q.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            problems.push(format!("limit: must be 1..={MAX_PAGE}"));
        }
        if !problems.is_empty() {
            return Err(ApiError::bad_request(problems.join("; ")));
        }
        let rows = s.audit.store().admin_audit_page(after, limit).await?;
        let head = s.audit.store().admin_audit_head().await?;
        let entries: Vec<AuditEntry> = rows.iter().map(AuditEntry::from_row).collect();
        Ok(Json(serde_json::json!({
            "entries": entries,
            "next_after_seq": entries.last().map(|e| e.seq),
            "head": head.map(|h| serde_json::json!({"seq": h.seq, "hash": h.hash})),
        })))
    }

    /// JSONL: one entry per line, then an [`ExportTrailer`] line. Streamed a
    /// page at a time, so memory stays bounded whatever the log's size.
    pub(in crate::admin) async fn export(State(s): State<Arc<AdminState>>) -> Response {
        let store = s.audit.store().clone();
        struct Cursor {
            store: Store,
            after: i64,
            count: u64,
            last: Option<ExportHead>,
            checkpoint: Option<super::super::integrity::ExportCheckpoint>,
            done: bool,
        }
        let start = Cursor {
            store,
            after: 0,
            count: 0,
            last: None,
            checkpoint: None,
            done: false,
        };
        let stream = futures_util::stream::unfold(start, |mut c| async move {
            if c.done {
                return None;
            }
            match c.store.admin_audit_page(c.after, EXPORT_PAGE).await {
                Ok(rows) if !rows.is_empty() => {
                    if c.count == 0 && rows[0].seq > 1 {
                        // The head of the log was retained away: carry the
                        // checkpoint it starts from, for offline verification.
                        match c
                            .store
                            .checkpoints(crate::store::chain::ADMIN_AUDIT_CHAIN)
                            .await
                        {
                            Ok(cps) => {
                                c.checkpoint = start_checkpoint(&cps, rows[0].seq).map(Into::into);
                            }
                            Err(error) => {
                                tracing::error!(%error, "Admin audit export failed reading checkpoints");
                                c.done = true;
                                return Some((Err(std::io::Error::other("store unavailable")), c));
                            }
                        }
                    }
                    let mut chunk = String::new();
                    for row in &rows {
                        let e = AuditEntry::from_row(row);
                        chunk.push_str(&serde_json::to_string(&e).unwrap_or_default());
                        chunk.push('\n');
                        c.last = Some(ExportHead {
                            seq: e.seq,
                            hash: e.hash,
                        });
                        c.count += 1;
                    }
                    c.after = rows.last().map_or(c.after, |r| r.seq);
                    Some((Ok::<_, std::io::Error>(chunk), c))
                }
                Ok(_) => {
                    let trailer = ExportTrailer {
                        format: FORMAT.into(),
                        checkpoint: c.checkpoint.clone(),
                        chain_head: c.last.clone(),
                        entries: c.count,
                        canonical: CANONICAL_DESCRIPTION.into(),
                        instructions: EXPORT_INSTRUCTIONS.into(),
                    };
                    c.done = true;
                    let line = format!("{}\n", serde_json::to_string(&trailer).unwrap_or_default());
                    Some((Ok(line), c))
                }
                Err(error) => {
                    tracing::error!(%error, "Admin audit export failed mid-stream");
                    c.done = true;
                    // Ending without a trailer tells the reader the export is incomplete.
                    Some((Err(std::io::Error::other("store unavailable")), c))
                }
            }
        });
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(stream),
        )
            .into_response()
    }
}

// === Export parsing (for `palisade audit verify --file`) ===

#[derive(Debug, thiserror::Error)]
pub enum ExportParseError {
    #[error("line {line}: not an audit entry or trailer: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("line {line}: data after the trailer line")]
    AfterTrailer { line: usize },
    #[error("unsupported export format {0:?} (expected {FORMAT})")]
    Format(String),
}

/// Entries and (when present) the trailer of a JSONL export.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedExport {
    pub entries: Vec<AuditEntry>,
    pub trailer: Option<ExportTrailer>,
}

/// Parse a JSONL export (blank lines ignored).
pub fn parse_export(text: &str) -> Result<ParsedExport, ExportParseError> {
    let mut entries = Vec::new();
    let mut trailer: Option<ExportTrailer> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if trailer.is_some() {
            return Err(ExportParseError::AfterTrailer { line: line_no });
        }
        let v: Value = serde_json::from_str(line).map_err(|e| ExportParseError::BadLine {
            line: line_no,
            reason: e.to_string(),
        })?;
        if v.get("format").is_some() {
            let t: ExportTrailer =
                serde_json::from_value(v).map_err(|e| ExportParseError::BadLine {
                    line: line_no,
                    reason: e.to_string(),
                })?;
            if t.format != FORMAT {
                return Err(ExportParseError::Format(t.format));
            }
            trailer = Some(t);
        } else {
            entries.push(
                serde_json::from_value(v).map_err(|e| ExportParseError::BadLine {
                    line: line_no,
                    reason: e.to_string(),
                })?,
            );
        }
    }
    Ok(ParsedExport { entries, trailer })
}

/// Verify a parsed export, checking the trailer's head when there is one.
pub fn verify_export(p: &ParsedExport, key: &AuditKey) -> Result<VerifyReport, VerifyError> {
    let cp = p
        .trailer
        .as_ref()
        .and_then(|t| t.checkpoint.as_ref())
        .map(crate::store::chain::CheckpointRow::from);
    let mut v = match (&cp, p.entries.first()) {
        (Some(cp), Some(first)) if first.seq > 1 => {
            if cp.position != first.seq - 1 {
                return Err(VerifyError::BadCheckpoint { seq: cp.position });
            }
            Verifier::from_checkpoint(key, cp)?
        }
        _ => Verifier::new(key),
    };
    for e in &p.entries {
        v.push(e)?;
    }
    let head = p
        .trailer
        .as_ref()
        .and_then(|t| t.chain_head.as_ref())
        .map(|h| AuditHead {
            seq: h.seq,
            hash: h.hash.clone(),
        });
    v.finish(head.as_ref())
}

#[cfg(test)]
mod tests;
