//! Hash chain over interaction records (format `palisade-events/1`), signed
//! checkpoints for both chains, and the SQL behind them and behind retention.
//!
//! # Event chain
//! Every stored event gets, in ingest order, a contiguous `chain_pos`
//! (1, 2, ...), the previous link's hash (`chain_prev`) and its own link
//! (`chain_hash`):
//! * the record is split into a **content** part and a **metadata** part.
//!   Content is what [`CONTENT_FIELDS`] names: `request.prompt`,
//!   `request.messages`, `response.text`, `response.tool_calls` (the record
//!   of `palisade-core` carries the first and third today; the others are
//!   reserved so a richer agent's text is purged too). Everything else in the
//!   JSON is metadata, as are the indexed columns.
//! * `content_digest = hex(SHA-256("palisade-content/1" ‖ for each non-null
//!   content field, in [`CONTENT_FIELDS`] order: len:"<obj>.<field>" ‖
//!   len:<its JSON bytes as stored>))`;
//! * `meta_digest = hex(SHA-256("palisade-meta/1" ‖ len-prefixed id,
//!   device_id, kind, provider, model, app, decision, time, received_at ‖
//!   len:<the stored JSON with each content value replaced by null>))`
//!   (absent fields are "-"). Digests work on the stored bytes through
//!   borrowed parsing, with no value tree and no re-serialisation, because
//!   they sit on the ingest path;
//! * `chain_hash = hex(SHA-256("palisade-events/1" ‖ chain_prev ‖ ":" ‖ pos ‖
//!   ":" ‖ meta_digest ‖ ":" ‖ content_digest))`, `chain_prev` of position 1
//!   being 64 zeros.
//!
//! Content retention sets the content fields to `null` and stamps
//! `content_purged_at`; the verifier then recomputes the metadata digest from
//! what is stored and takes the stored `content_digest` on trust (it
//! recomputes and compares it while content is present).
//!
//! Appends are serialised: SQLite has one writer; on PostgreSQL the ingest
//! transaction takes `pg_advisory_xact_lock(EVENT_CHAIN_LOCK)`, links the
//! batch from `chain_heads` and moves the head, all before commit. A retried
//! batch gets no new link: when its INSERT stores fewer rows than were
//! linked, the writer starts the transaction over with `lookup` (which ids
//! are stored already) and links only the rest.
//!
//! # Checkpoints
//! `chain_checkpoints` holds (chain, position, hash, time, hmac); the HMAC is
//! made by the caller with the audit key (this module never sees it). A
//! checkpoint is written before retention deletes a chain up to a position,
//! and at the head on each retention run. Verification is in
//! [`crate::admin::integrity`].
//!
//! This module must never log record contents.

use super::{NewEvent, PgBackend, SqliteBackend, Store, StoreError};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::{QueryBuilder, Row};
use std::collections::HashSet;
use uuid::Uuid;

/// Chain names as stored in `chain_heads` / `chain_checkpoints`.
pub const EVENTS_CHAIN: &str = "events";
pub const ADMIN_AUDIT_CHAIN: &str = "admin_audit";
/// Name of the event chain format.
pub const EVENTS_FORMAT: &str = "palisade-events/1";
/// `chain_prev` of position 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// `pg_advisory_xact_lock` key serialising event-chain appends (ASCII "palevchn").
pub const EVENT_CHAIN_LOCK: i64 = 0x7061_6c65_7663_686e;
/// `pg_try_advisory_lock` key: one retention run at a time across servers
/// (ASCII "palreten").
pub const RETENTION_LOCK: i64 = 0x7061_6c72_6574_656e;
/// `(object, field)` pairs that are content (purged by content retention).
pub const CONTENT_FIELDS: &[(&str, &str)] = &[
    ("request", "prompt"),
    ("request", "messages"),
    ("response", "text"),
    ("response", "tool_calls"),
];
/// Rows per retention statement, so no delete holds a giant transaction.
pub const RETENTION_CHUNK: i64 = 1000;

// === Digests ===

/// The two digests of one event; the link adds position and predecessor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigests {
    pub meta: String,
    pub content: String,
}

/// The metadata the chain covers besides the JSON.
#[derive(Debug, Clone, Copy)]
pub struct EventMeta<'a> {
    pub id: Uuid,
    pub device_id: &'a str,
    pub time_ms: i64,
    pub kind: &'a str,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub app: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub received_at: i64,
}

/// Split a stored record into (metadata, content). Content fields are removed
/// from the metadata whatever their value; only non-null ones count as
/// content. JSON that does not parse is all metadata (as a string).
pub fn split_record(json: &str) -> (Value, Map<String, Value>) {
    let mut content = Map::new();
    let Ok(mut v) = serde_json::from_str::<Value>(json) else {
        return (Value::String(json.to_string()), content);
    };
    if let Value::Object(top) = &mut v {
        for (obj, field) in CONTENT_FIELDS {
            if let Some(Value::Object(inner)) = top.get_mut(*obj) {
                if let Some(val) = inner.remove(*field) {
                    if !val.is_null() {
                        content.insert(format!("{obj}.{field}"), val);
                    }
                }
            }
        }
    }
    (v, content)
}

/// One content value inside a record's JSON: which field, and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    field: usize,
    start: usize,
    end: usize,
}

/// The byte ranges of the content values in `json` (null ones included), in
/// order of position. JSON that does not parse, or is not an object, has no
/// content; with a key repeated, the last one counts (as in a map).
///
/// This sits on the ingest path (every record is digested), so valid JSON
/// is first checked without building anything ([`IgnoredAny`]) and then
/// scanned once by [`scan_content_spans`]; only keys written with escapes
/// take the slower map parse ([`content_spans_by_map`]), which defines the
/// result (a test holds the two equal).
///
/// [`IgnoredAny`]: serde::de::IgnoredAny
fn content_spans(json: &str) -> Vec<Span> {
    if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
        return Vec::new();
    }
    scan_content_spans(json).unwrap_or_else(|| content_spans_by_map(json))
}

/// [`content_spans`] by parsing maps of raw values: the reference.
fn content_spans_by_map(json: &str) -> Vec<Span> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    let base = json.as_ptr() as usize;
    let mut spans = Vec::new();
    let Ok(top) = serde_json::from_str::<BTreeMap<String, &RawValue>>(json) else {
        return spans;
    };
    for (i, (obj, field)) in CONTENT_FIELDS.iter().enumerate() {
        let Some(inner) = top.get(*obj) else { continue };
        let Ok(inner) = serde_json::from_str::<BTreeMap<String, &RawValue>>(inner.get()) else {
            continue;
        };
        if let Some(v) = inner.get(*field) {
            let start = v.get().as_ptr() as usize - base;
            spans.push(Span { field: i, start, end: start + v.get().len() });
        }
    }
    spans.sort_by_key(|s| s.start);
    spans
}

/// One pass over JSON already known to be valid: the top-level members, and
/// the members of the objects [`CONTENT_FIELDS`] name. `None` when a key is
/// written with an escape (its text is not its name), for the map parse.
fn scan_content_spans(json: &str) -> Option<Vec<Span>> {
    let b = json.as_bytes();
    let mut spans = Vec::new();
    let at = skip_ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return Some(spans);
    }
    // Per content object, the span of its (last) value.
    let mut objects: [Option<(usize, usize)>; 2] = [None, None];
    let names = ["request", "response"];
    debug_assert!(CONTENT_FIELDS.iter().all(|(o, _)| names.contains(o)));
    scan_members(b, at, &mut |key, start, end| {
        if let Some(k) = names.iter().position(|n| n.as_bytes() == key) {
            objects[k] = Some((start, end));
        }
    })?;
    for (k, name) in names.iter().enumerate() {
        let Some((start, _)) = objects[k] else { continue };
        if b[start] != b'{' {
            continue;
        }
        let mut found: Vec<(usize, Span)> = Vec::new();
        scan_members(b, start, &mut |key, vstart, vend| {
            for (i, (obj, field)) in CONTENT_FIELDS.iter().enumerate() {
                if obj == name && field.as_bytes() == key {
                    found.retain(|(f, _)| *f != i);
                    found.push((i, Span { field: i, start: vstart, end: vend }));
                }
            }
        })?;
        spans.extend(found.into_iter().map(|(_, s)| s));
    }
    spans.sort_by_key(|s| s.start);
    Some(spans)
}

/// Walk the members of the object opening at `b[at]` (valid JSON), calling
/// `member(key, value_start, value_end)` for each; the index after the
/// closing brace, or `None` for a key holding an escape.
fn scan_members(b: &[u8], at: usize, member: &mut dyn FnMut(&[u8], usize, usize)) -> Option<usize> {
    let mut at = skip_ws(b, at + 1);
    if b.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        // At a key's opening quote.
        let key_end = string_end(b, at)?;
        let key = &b[at + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        at = skip_ws(b, key_end);
        at = skip_ws(b, at + 1); // the colon
        let start = at;
        let end = value_end(b, start)?;
        member(key, start, end);
        at = skip_ws(b, end);
        match b.get(at) {
            Some(b',') => at = skip_ws(b, at + 1),
            Some(b'}') => return Some(at + 1),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The index after the string opening at `b[at]`.
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The index after the value starting at `b[at]` (valid JSON).
fn value_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string_end(b, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while !matches!(b.get(i), None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                i += 1;
            }
            Some(i)
        }
    }
}

/// `json` with every content value replaced by `null`: the metadata part,
/// byte for byte what the record holds once its content is purged.
fn without_content(json: &str, spans: &[Span]) -> String {
    let mut out = String::with_capacity(json.len());
    for part in without_content_parts(json, spans) {
        out.push_str(part);
    }
    out
}

/// The pieces of [`without_content`], in order, without copying.
fn without_content_parts<'a>(json: &'a str, spans: &'a [Span]) -> impl Iterator<Item = &'a str> + 'a {
    let mut at = 0;
    spans
        .iter()
        .flat_map(move |s| {
            let kept = &json[at..s.start];
            at = s.end;
            [kept, "null"]
        })
        .chain(std::iter::once_with(move || &json[spans.last().map_or(0, |s| s.end)..]))
}

/// Feed one optional field into a digest, length-prefixed so no two
/// different field lists hash alike.
fn put(h: &mut Sha256, v: Option<&str>) {
    match v {
        None => h.update(b"-"),
        Some(v) => put_parts(h, v.len(), [v]),
    }
}

/// [`put`] of a value given in pieces whose lengths add up to `len`.
fn put_parts<'a>(h: &mut Sha256, len: usize, parts: impl IntoIterator<Item = &'a str>) {
    // "<len>:" in decimal, written backwards into a stack buffer.
    let mut prefix = [0u8; 21];
    let mut i = prefix.len() - 1;
    prefix[i] = b':';
    let mut n = len;
    loop {
        i -= 1;
        prefix[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    h.update(&prefix[i..]);
    for p in parts {
        h.update(p.as_bytes());
    }
}

/// Digests of one record (see the module docs), and whether it holds content.
pub fn digest_event(meta: &EventMeta<'_>, json: &str) -> (EventDigests, bool) {
    let spans = content_spans(json);
    let mut c = Sha256::new();
    c.update(b"palisade-content/1");
    let mut has_content = false;
    let mut by_field = spans.clone();
    by_field.sort_by_key(|s| s.field);
    for s in &by_field {
        let value = &json[s.start..s.end];
        if value == "null" {
            continue;
        }
        has_content = true;
        let (obj, field) = CONTENT_FIELDS[s.field];
        put_parts(&mut c, obj.len() + 1 + field.len(), [obj, ".", field]);
        put(&mut c, Some(value));
    }
    let mut m = Sha256::new();
    m.update(b"palisade-meta/1");
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = meta.id.hyphenated().encode_lower(&mut id);
    for v in [
        Some(&*id),
        Some(meta.device_id),
        Some(meta.kind),
        meta.provider,
        meta.model,
        meta.app,
        meta.decision,
    ] {
        put(&mut m, v);
    }
    put(&mut m, Some(&meta.time_ms.to_string()));
    put(&mut m, Some(&meta.received_at.to_string()));
    let kept: usize = json.len() - spans.iter().map(|s| s.end - s.start).sum::<usize>() + 4 * spans.len();
    put_parts(&mut m, kept, without_content_parts(json, &spans));
    (
        EventDigests {
            meta: hex::encode(m.finalize()),
            content: hex::encode(c.finalize()),
        },
        has_content,
    )
}

/// The link hash at `pos` after `prev`.
pub fn link_hash(prev: &str, pos: i64, d: &EventDigests) -> String {
    let mut h = Sha256::new();
    h.update(EVENTS_FORMAT.as_bytes());
    h.update(prev.as_bytes());
    h.update(format!(":{pos}:").as_bytes());
    h.update(d.meta.as_bytes());
    h.update(b":");
    h.update(d.content.as_bytes());
    hex::encode(h.finalize())
}

/// The record with its content values replaced by `null` (nothing else
/// changes, byte for byte); `None` when it holds no content.
pub fn purge_content(json: &str) -> Option<String> {
    let spans: Vec<Span> = content_spans(json)
        .into_iter()
        .filter(|s| &json[s.start..s.end] != "null")
        .collect();
    (!spans.is_empty()).then(|| without_content(json, &spans))
}

/// Digests of a device's batch, computed before (and outside) the chain lock.
pub(super) fn digest_batch(
    device_id: &str,
    events: &[NewEvent],
    received_at: i64,
) -> Vec<EventDigests> {
    events
        .iter()
        .map(|e| {
            let meta = EventMeta {
                id: e.id,
                device_id,
                time_ms: e.time.timestamp_millis(),
                kind: &e.kind,
                provider: e.provider.as_deref(),
                model: e.model.as_deref(),
                app: e.app.as_deref(),
                decision: e.decision.as_deref(),
                received_at,
            };
            digest_event(&meta, &e.json).0
        })
        .collect()
}

// === impl ChainAppender ===

/// The head of the event chain inside one ingest transaction.
#[derive(Debug)]
pub(super) struct ChainAppender {
    start: i64,
    pos: i64,
    hash: String,
    /// Ids already stored, or already linked in this transaction.
    seen: HashSet<Uuid>,
}

/// The chain columns of one new row.
#[derive(Debug)]
pub(super) struct Link {
    pub pos: i64,
    pub prev: String,
    pub hash: String,
    pub content_digest: String,
}

impl ChainAppender {
    /// The events of a batch that get a link: not stored yet and not repeated.
    pub(super) fn fresh<'a>(
        &mut self,
        events: &'a [NewEvent],
        digests: &'a [EventDigests],
    ) -> Vec<(&'a NewEvent, &'a EventDigests)> {
        events
            .iter()
            .zip(digests)
            .filter(|(e, _)| self.seen.insert(e.id))
            .collect()
    }

    pub(super) fn link(&mut self, d: &EventDigests) -> Link {
        let pos = self.pos + 1;
        let hash = link_hash(&self.hash, pos, d);
        let prev = std::mem::replace(&mut self.hash, hash.clone());
        self.pos = pos;
        Link {
            pos,
            prev,
            hash,
            content_digest: d.content.clone(),
        }
    }

    fn moved(&self) -> bool {
        self.pos != self.start
    }
}

// === Rows ===

/// An event row with its chain columns, as the verifier reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainedEventRow {
    pub seq: i64,
    pub chain_pos: Option<i64>,
    pub id: Uuid,
    pub device_id: String,
    pub time_ms: i64,
    pub kind: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub app: Option<String>,
    pub decision: Option<String>,
    pub json: String,
    pub received_at: i64,
    pub chain_prev: Option<String>,
    pub chain_hash: Option<String>,
    pub content_digest: Option<String>,
    pub content_purged_at: Option<i64>,
}

impl ChainedEventRow {
    pub fn meta(&self) -> EventMeta<'_> {
        EventMeta {
            id: self.id,
            device_id: &self.device_id,
            time_ms: self.time_ms,
            kind: &self.kind,
            provider: self.provider.as_deref(),
            model: self.model.as_deref(),
            app: self.app.as_deref(),
            decision: self.decision.as_deref(),
            received_at: self.received_at,
        }
    }
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub chain: String,
    pub position: i64,
    pub hash: String,
    pub time_ms: i64,
    pub hmac: String,
}

/// The newest link of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub position: i64,
    pub hash: String,
}

/// What one retention pass removed or rewrote, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionCounts {
    pub events_deleted: u64,
    pub events_content_purged: u64,
    pub admin_audit_deleted: u64,
    pub inventory_deleted: u64,
    pub enrollment_tokens_deleted: u64,
    pub admin_tokens_deleted: u64,
    pub console_sessions_deleted: u64,
    pub checkpoints_deleted: u64,
}

const CHAINED_COLUMNS: &str = "seq, chain_pos, id, device_id, time, kind, provider, model, app, \
     decision, json, received_at, chain_prev, chain_hash, content_digest, content_purged_at";

// === impl Store ===

impl Store {
    /// Chained events with `chain_pos > after`, in chain order.
    pub async fn event_chain_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChainedEventRow>, StoreError> {
        match self {
            Store::Sqlite(b) => b.event_chain_page(after, limit).await,
            Store::Postgres(b) => b.event_chain_page(after, limit).await,
        }
    }

    /// Events without a chain link stored after the first linked one
    /// (insertions past the chain), at most `limit`.
    pub async fn unchained_events_after_chain_start(
        &self,
        limit: u32,
    ) -> Result<Vec<ChainedEventRow>, StoreError> {
        match self {
            Store::Sqlite(b) => b.unchained_after_start(limit).await,
            Store::Postgres(b) => b.unchained_after_start(limit).await,
        }
    }

    /// Rows stored before chaining began (chain_pos NULL, below the first link).
    pub async fn legacy_unchained_events(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.legacy_unchained().await,
            Store::Postgres(b) => b.legacy_unchained().await,
        }
    }

    /// The event chain's recorded head (position 0 when empty).
    pub async fn event_chain_head(&self) -> Result<ChainHead, StoreError> {
        match self {
            Store::Sqlite(b) => b.event_chain_head().await,
            Store::Postgres(b) => b.event_chain_head().await,
        }
    }

    pub async fn checkpoints(&self, chain: &str) -> Result<Vec<CheckpointRow>, StoreError> {
        match self {
            Store::Sqlite(b) => b.checkpoints(chain).await,
            Store::Postgres(b) => b.checkpoints(chain).await,
        }
    }

    /// Store a checkpoint; an existing one at the same position is kept.
    pub async fn put_checkpoint(&self, cp: &CheckpointRow) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(b) => b.put_checkpoint(cp).await,
            Store::Postgres(b) => b.put_checkpoint(cp).await,
        }
    }

    /// The event-chain prefix retention may delete: the highest position P
    /// such that every linked row up to P was received before `cutoff_ms`,
    /// with P's hash. `None` when nothing is that old.
    pub async fn event_retention_boundary(
        &self,
        cutoff_ms: i64,
    ) -> Result<Option<ChainHead>, StoreError> {
        match self {
            Store::Sqlite(b) => b.event_retention_boundary(cutoff_ms).await,
            Store::Postgres(b) => b.event_retention_boundary(cutoff_ms).await,
        }
    }

    /// The admin-audit prefix retention may delete: the highest seq before
    /// `cutoff_ms`, never the newest entry (the next append links to it).
    pub async fn admin_audit_retention_boundary(
        &self,
        cutoff_ms: i64,
    ) -> Result<Option<ChainHead>, StoreError> {
        match self {
            Store::Sqlite(b) => b.admin_audit_retention_boundary(cutoff_ms).await,
            Store::Postgres(b) => b.admin_audit_retention_boundary(cutoff_ms).await,
        }
    }

    /// Delete linked events with `chain_pos <= upto`, and unlinked legacy rows
    /// received before `cutoff_ms`, in chunks. Returns rows deleted.
    pub async fn delete_events_upto(&self, upto: i64, cutoff_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.delete_events_upto(upto, cutoff_ms).await,
            Store::Postgres(b) => b.delete_events_upto(upto, cutoff_ms).await,
        }
    }

    /// Null the content of events received before `cutoff_ms`, in chunks.
    pub async fn purge_event_content(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.purge_event_content(cutoff_ms).await,
            Store::Postgres(b) => b.purge_event_content(cutoff_ms).await,
        }
    }

    pub async fn delete_admin_audit_upto(&self, upto: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.delete_admin_audit_upto(upto).await,
            Store::Postgres(b) => b.delete_admin_audit_upto(upto).await,
        }
    }

    /// Inventory rows not reported since `cutoff_ms`.
    pub async fn delete_stale_inventory(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.delete_stale_inventory(cutoff_ms).await,
            Store::Postgres(b) => b.delete_stale_inventory(cutoff_ms).await,
        }
    }

    /// Enrollment tokens expired before `cutoff_ms` and admin tokens revoked
    /// before it: `(enrollment, admin)`.
    pub async fn delete_dead_tokens(&self, cutoff_ms: i64) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Sqlite(b) => b.delete_dead_tokens(cutoff_ms).await,
            Store::Postgres(b) => b.delete_dead_tokens(cutoff_ms).await,
        }
    }

    /// Drop checkpoints of `chain` below `position` (older boundaries that
    /// no longer start anything).
    pub async fn delete_checkpoints_below(
        &self,
        chain: &str,
        position: i64,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.delete_checkpoints_below(chain, position).await,
            Store::Postgres(b) => b.delete_checkpoints_below(chain, position).await,
        }
    }

    /// Run `f` only if no other server is running retention on this store
    /// (PostgreSQL: a session advisory lock; SQLite: one process per file).
    /// `None` when another holds it.
    pub async fn with_retention_lock<F, T>(&self, f: F) -> Result<Option<T>, StoreError>
    where
        F: std::future::Future<Output = T> + Send,
    {
        match self {
            Store::Sqlite(_) => Ok(Some(f.await)),
            Store::Postgres(b) => {
                let mut conn = b.pool.acquire().await?;
                let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                    .bind(RETENTION_LOCK)
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get("got")?;
                if !got {
                    return Ok(None);
                }
                let out = f.await;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(RETENTION_LOCK)
                    .execute(&mut *conn)
                    .await?;
                Ok(Some(out))
            }
        }
    }
}

// === impl SqliteBackend ===

impl SqliteBackend {
    /// The single writer serialises appends in this process. Writing first
    /// takes SQLite's write lock up front (waiting out the busy timeout if
    /// another process holds it); reading first would make the later
    /// upgrade fail at once with SQLITE_BUSY.
    pub(super) async fn event_chain_lock(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE chain_heads SET position = position WHERE chain = $1")
            .bind(EVENTS_CHAIN)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn retention_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.write_lock.lock().await)
    }

    /// Which of `ids` are stored already.
    async fn stored_ids(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        let mut seen = HashSet::new();
        for chunk in ids.chunks(super::INSERT_CHUNK_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new("SELECT id FROM events WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut **tx).await? {
                seen.insert(r.try_get::<Uuid, _>("id")?);
            }
        }
        Ok(seen)
    }
}

// === impl PgBackend ===

impl PgBackend {
    pub(super) async fn event_chain_lock(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_CHAIN_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn retention_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    /// Which of `ids` are stored already: one array parameter, one plan.
    async fn stored_ids(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError> {
        let mut seen = HashSet::new();
        if ids.is_empty() {
            return Ok(seen);
        }
        for r in sqlx::query("SELECT id FROM events WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?
        {
            seen.insert(r.try_get::<Uuid, _>("id")?);
        }
        Ok(seen)
    }
}

macro_rules! chain_impl {
    ($backend:ty, $db:ty) => {
        impl $backend {
            /// Lock the chain, read its head and, with `lookup`, which of the
            /// batch's ids are already stored. Call inside the ingest
            /// transaction.
            pub(super) async fn event_chain_begin(
                tx: &mut sqlx::Transaction<'_, $db>,
                groups: &[(&str, &[NewEvent])],
                lookup: bool,
            ) -> Result<ChainAppender, StoreError> {
                Self::event_chain_lock(tx).await?;
                let head = sqlx::query("SELECT position, hash FROM chain_heads WHERE chain = $1")
                    .bind(EVENTS_CHAIN)
                    .fetch_optional(&mut **tx)
                    .await?;
                let (pos, hash) = match head {
                    Some(r) => (r.try_get::<i64, _>("position")?, r.try_get::<String, _>("hash")?),
                    None => (0, GENESIS.to_string()),
                };
                let seen = if lookup {
                    let ids: Vec<Uuid> = groups.iter().flat_map(|(_, e)| e.iter().map(|e| e.id)).collect();
                    Self::stored_ids(tx, &ids).await?
                } else {
                    HashSet::new()
                };
                Ok(ChainAppender { start: pos, pos, hash, seen })
            }

            /// Move the recorded head (same transaction as the rows).
            pub(super) async fn event_chain_commit(
                tx: &mut sqlx::Transaction<'_, $db>,
                chain: &ChainAppender,
            ) -> Result<(), StoreError> {
                if chain.moved() {
                    sqlx::query(
                        "INSERT INTO chain_heads (chain, position, hash) VALUES ($1, $2, $3) \
                         ON CONFLICT (chain) DO UPDATE SET position = excluded.position, hash = excluded.hash",
                    )
                    .bind(EVENTS_CHAIN)
                    .bind(chain.pos)
                    .bind(&chain.hash)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            fn chained_row(r: &<$db as sqlx::Database>::Row) -> Result<ChainedEventRow, StoreError> {
                Ok(ChainedEventRow {
                    seq: r.try_get("seq")?,
                    chain_pos: r.try_get("chain_pos")?,
                    id: r.try_get("id")?,
                    device_id: r.try_get("device_id")?,
                    time_ms: r.try_get("time")?,
                    kind: r.try_get("kind")?,
                    provider: r.try_get("provider")?,
                    model: r.try_get("model")?,
                    app: r.try_get("app")?,
                    decision: r.try_get("decision")?,
                    json: r.try_get("json")?,
                    received_at: r.try_get("received_at")?,
                    chain_prev: r.try_get("chain_prev")?,
                    chain_hash: r.try_get("chain_hash")?,
                    content_digest: r.try_get("content_digest")?,
                    content_purged_at: r.try_get("content_purged_at")?,
                })
            }

            async fn event_chain_page(&self, after: i64, limit: u32) -> Result<Vec<ChainedEventRow>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {CHAINED_COLUMNS} FROM events WHERE chain_pos > $1 ORDER BY chain_pos LIMIT $2"
                ))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::chained_row).collect()
            }

            async fn unchained_after_start(&self, limit: u32) -> Result<Vec<ChainedEventRow>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {CHAINED_COLUMNS} FROM events WHERE chain_pos IS NULL AND seq > \
                     (SELECT MIN(seq) FROM events WHERE chain_pos IS NOT NULL) ORDER BY seq LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::chained_row).collect()
            }

            async fn legacy_unchained(&self) -> Result<u64, StoreError> {
                let r = sqlx::query(
                    "SELECT COUNT(*) AS n FROM events WHERE chain_pos IS NULL AND seq < \
                     COALESCE((SELECT MIN(seq) FROM events WHERE chain_pos IS NOT NULL), 9223372036854775807)",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0))
            }

            async fn event_chain_head(&self) -> Result<ChainHead, StoreError> {
                let r = sqlx::query("SELECT position, hash FROM chain_heads WHERE chain = $1")
                    .bind(EVENTS_CHAIN)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match r {
                    Some(r) => ChainHead { position: r.try_get("position")?, hash: r.try_get("hash")? },
                    None => ChainHead { position: 0, hash: GENESIS.to_string() },
                })
            }

            async fn checkpoints(&self, chain: &str) -> Result<Vec<CheckpointRow>, StoreError> {
                let rows = sqlx::query(
                    "SELECT chain, position, hash, time, hmac FROM chain_checkpoints \
                     WHERE chain = $1 ORDER BY position",
                )
                .bind(chain)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(CheckpointRow {
                            chain: r.try_get("chain")?,
                            position: r.try_get("position")?,
                            hash: r.try_get("hash")?,
                            time_ms: r.try_get("time")?,
                            hmac: r.try_get("hmac")?,
                        })
                    })
                    .collect()
            }

            async fn put_checkpoint(&self, cp: &CheckpointRow) -> Result<(), StoreError> {
                let _guard = self.retention_guard().await;
                sqlx::query(
                    "INSERT INTO chain_checkpoints (chain, position, hash, time, hmac) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (chain, position) DO NOTHING",
                )
                .bind(&cp.chain)
                .bind(cp.position)
                .bind(&cp.hash)
                .bind(cp.time_ms)
                .bind(&cp.hmac)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn event_retention_boundary(&self, cutoff_ms: i64) -> Result<Option<ChainHead>, StoreError> {
                // Walk the chain from its start in chunks (the unique index on
                // chain_pos): the prefix ends at the first row received at or
                // after the cutoff.
                let mut after = 0i64;
                let mut last: Option<ChainHead> = None;
                loop {
                    let rows = sqlx::query(
                        "SELECT chain_pos, chain_hash, received_at FROM events \
                         WHERE chain_pos > $1 ORDER BY chain_pos LIMIT $2",
                    )
                    .bind(after)
                    .bind(RETENTION_CHUNK)
                    .fetch_all(&self.pool)
                    .await?;
                    if rows.is_empty() {
                        return Ok(last);
                    }
                    for r in &rows {
                        if r.try_get::<i64, _>("received_at")? >= cutoff_ms {
                            return Ok(last);
                        }
                        let position: i64 = r.try_get("chain_pos")?;
                        let hash: Option<String> = r.try_get("chain_hash")?;
                        last = Some(ChainHead { position, hash: hash.unwrap_or_default() });
                        after = position;
                    }
                }
            }

            async fn admin_audit_retention_boundary(&self, cutoff_ms: i64) -> Result<Option<ChainHead>, StoreError> {
                let r = sqlx::query(
                    "SELECT seq, hash FROM admin_audit WHERE time < $1 \
                     AND seq < (SELECT MAX(seq) FROM admin_audit) ORDER BY seq DESC LIMIT 1",
                )
                .bind(cutoff_ms)
                .fetch_optional(&self.pool)
                .await?;
                r.map(|r| Ok(ChainHead { position: r.try_get("seq")?, hash: r.try_get("hash")? }))
                    .transpose()
            }

            async fn delete_events_upto(&self, upto: i64, cutoff_ms: i64) -> Result<u64, StoreError> {
                let mut total = 0;
                loop {
                    let _guard = self.retention_guard().await;
                    let lo: Option<i64> = sqlx::query("SELECT MIN(chain_pos) AS lo FROM events WHERE chain_pos <= $1")
                        .bind(upto)
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("lo")?;
                    let Some(lo) = lo else { break };
                    let hi = upto.min(lo + RETENTION_CHUNK - 1);
                    total += sqlx::query("DELETE FROM events WHERE chain_pos >= $1 AND chain_pos <= $2")
                        .bind(lo)
                        .bind(hi)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                }
                // Rows stored before chaining began all sit below the first
                // link's seq: a range on the seq key, not a table scan.
                let first: Option<i64> = sqlx::query(
                    "SELECT seq FROM events WHERE chain_pos = (SELECT MIN(chain_pos) FROM events)",
                )
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("seq"))
                .transpose()?;
                let below = first.unwrap_or(i64::MAX);
                total += self.delete_chunked(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events \
                         WHERE seq < $1 AND chain_pos IS NULL AND received_at < $2 ORDER BY seq LIMIT $3)",
                    &[below, cutoff_ms],
                )
                .await?;
                Ok(total)
            }

            async fn purge_event_content(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
                let mut total = 0;
                loop {
                    let _guard = self.retention_guard().await;
                    let rows = sqlx::query(
                        "SELECT seq, json FROM events WHERE content_purged_at IS NULL \
                         AND received_at < $1 ORDER BY received_at LIMIT $2",
                    )
                    .bind(cutoff_ms)
                    .bind(RETENTION_CHUNK)
                    .fetch_all(&self.pool)
                    .await?;
                    if rows.is_empty() {
                        break;
                    }
                    let now = super::now_ms();
                    let mut tx = self.pool.begin().await?;
                    let mut seqs = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let seq: i64 = r.try_get("seq")?;
                        seqs.push(seq);
                        let json: String = r.try_get("json")?;
                        match purge_content(&json) {
                            Some(purged) => {
                                sqlx::query("UPDATE events SET json = $1, content_purged_at = $2 WHERE seq = $3")
                                    .bind(purged)
                                    .bind(now)
                                    .bind(seq)
                                    .execute(&mut *tx)
                                    .await?;
                                total += 1;
                            }
                            None => {
                                sqlx::query("UPDATE events SET content_purged_at = $1 WHERE seq = $2")
                                    .bind(now)
                                    .bind(seq)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                        }
                    }
                    // Purged words must stop matching free-text search.
                    Self::forget_text_of(&mut tx, &seqs).await?;
                    tx.commit().await?;
                }
                Ok(total)
            }

            /// Run `sql`, a DELETE whose last parameter is its chunk `LIMIT`,
            /// until it deletes nothing: one chunk per statement (and per
            /// retention guard), so no delete holds a giant transaction.
            async fn delete_chunked(&self, sql: &str, binds: &[i64]) -> Result<u64, StoreError> {
                let mut total = 0;
                loop {
                    let _guard = self.retention_guard().await;
                    let mut q = sqlx::query(sql);
                    for b in binds {
                        q = q.bind(*b);
                    }
                    let n = q.bind(RETENTION_CHUNK).execute(&self.pool).await?.rows_affected();
                    total += n;
                    if n == 0 {
                        return Ok(total);
                    }
                }
            }

            async fn delete_admin_audit_upto(&self, upto: i64) -> Result<u64, StoreError> {
                self.delete_chunked(
                    "DELETE FROM admin_audit WHERE seq IN (SELECT seq FROM admin_audit \
                         WHERE seq <= $1 ORDER BY seq LIMIT $2)",
                    &[upto],
                )
                .await
            }

            async fn delete_stale_inventory(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
                self.delete_chunked(
                    "DELETE FROM inventory WHERE (device_id, kind, item_id) IN \
                         (SELECT device_id, kind, item_id FROM inventory WHERE last_seen < $1 LIMIT $2)",
                    &[cutoff_ms],
                )
                .await
            }

            async fn delete_dead_tokens(&self, cutoff_ms: i64) -> Result<(u64, u64), StoreError> {
                let _guard = self.retention_guard().await;
                let enrollment = sqlx::query("DELETE FROM enrollment_tokens WHERE expires_at < $1")
                    .bind(cutoff_ms)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                // Their console sessions go first (foreign key); they are dead anyway.
                sqlx::query(
                    "DELETE FROM console_sessions WHERE token_id IN (SELECT id FROM admin_tokens \
                     WHERE revoked_at IS NOT NULL AND revoked_at < $1)",
                )
                .bind(cutoff_ms)
                .execute(&self.pool)
                .await?;
                let admin = sqlx::query("DELETE FROM admin_tokens WHERE revoked_at IS NOT NULL AND revoked_at < $1")
                    .bind(cutoff_ms)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok((enrollment, admin))
            }

            async fn delete_checkpoints_below(&self, chain: &str, position: i64) -> Result<u64, StoreError> {
                let _guard = self.retention_guard().await;
                Ok(sqlx::query("DELETE FROM chain_checkpoints WHERE chain = $1 AND position < $2")
                    .bind(chain)
                    .bind(position)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }
        }
    };
}

chain_impl!(SqliteBackend, sqlx::Sqlite);
chain_impl!(PgBackend, sqlx::Postgres);

#[cfg(test)]
mod tests;
