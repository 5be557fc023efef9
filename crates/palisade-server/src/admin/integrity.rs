//! Signed checkpoints and verification of the interaction-record chain
//! (format in `store::chain`), for `palisade audit verify --events`.
//!
//! A checkpoint's HMAC covers `palisade-checkpoint/1\n<chain>\n<position>\n
//! <hash>\n<time ms>` with the audit key, so it cannot be moved to another
//! chain or position. Verification starts at position 1, or, when retention
//! deleted the start, at the checkpoint one before the first stored row; a
//! gap no checkpoint covers, a checkpoint whose HMAC fails or which disagrees
//! with the row at its position, and any edit, deletion, insertion or
//! reordering are reported with the position (and event id) where found.
//!
//! Trust boundary: event links are not signed one by one. Someone who can
//! write the database can rewrite the links after the newest signed
//! checkpoint consistently; retention signs the head on every run, so that
//! window is at most `retention.interval_minutes`.
//!
//! Must never print record contents or the key.

use super::audit::AuditKey;
use crate::store::chain::{
    digest_event, link_hash, ChainedEventRow, CheckpointRow, EventDigests, EVENTS_CHAIN, GENESIS,
};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use uuid::Uuid;

/// Domain separator of checkpoint HMACs.
pub const CHECKPOINT_FORMAT: &str = "palisade-checkpoint/1";
const PAGE: u32 = 1000;
/// How many recent links are remembered to tell an insertion from an edit.
const RECENT_LINKS: usize = 4096;

fn checkpoint_message(chain: &str, position: i64, hash: &str, time_ms: i64) -> String {
    format!("{CHECKPOINT_FORMAT}\n{chain}\n{position}\n{hash}\n{time_ms}")
}

/// A signed checkpoint of `chain` at `position`.
pub fn sign_checkpoint(
    key: &AuditKey,
    chain: &str,
    position: i64,
    hash: &str,
    time_ms: i64,
) -> CheckpointRow {
    CheckpointRow {
        chain: chain.to_string(),
        position,
        hash: hash.to_string(),
        time_ms,
        hmac: key.mac_hex(checkpoint_message(chain, position, hash, time_ms).as_bytes()),
    }
}

/// Constant-time check of a checkpoint's HMAC.
pub fn check_checkpoint(key: &AuditKey, cp: &CheckpointRow) -> bool {
    key.check_mac(
        checkpoint_message(&cp.chain, cp.position, &cp.hash, cp.time_ms).as_bytes(),
        &cp.hmac,
    )
}

/// A checkpoint as exports carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCheckpoint {
    pub chain: String,
    pub position: i64,
    pub hash: String,
    /// Unix milliseconds.
    pub time: i64,
    pub hmac: String,
}

impl From<&CheckpointRow> for ExportCheckpoint {
    fn from(c: &CheckpointRow) -> Self {
        Self {
            chain: c.chain.clone(),
            position: c.position,
            hash: c.hash.clone(),
            time: c.time_ms,
            hmac: c.hmac.clone(),
        }
    }
}

impl From<&ExportCheckpoint> for CheckpointRow {
    fn from(c: &ExportCheckpoint) -> Self {
        Self {
            chain: c.chain.clone(),
            position: c.position,
            hash: c.hash.clone(),
            time_ms: c.time,
            hmac: c.hmac.clone(),
        }
    }
}

// === Event chain verification ===

/// Where the event chain breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventChainError {
    #[error("position {position} (event {id}): {what} was edited")]
    Edited {
        position: i64,
        id: Uuid,
        what: &'static str,
    },
    #[error("position {position}: missing (the next stored is {next}): events were deleted")]
    Deleted { position: i64, next: i64 },
    #[error("positions {first}..={last}: deleted from the end (the recorded head is {last})")]
    DeletedAtEnd { first: i64, last: i64 },
    #[error("position {position} (event {id}): links to an earlier event, not its predecessor: an event was inserted before it")]
    Inserted { position: i64, id: Uuid },
    #[error(
        "event {id} (seq {seq}): has no chain link but was stored after chaining began: inserted"
    )]
    InsertedUnlinked { seq: i64, id: Uuid },
    #[error("position {position} (event {id}): beyond the recorded head {head}: inserted")]
    InsertedAfterHead { position: i64, id: Uuid, head: i64 },
    #[error("position {position} (event {id}): out of ingest order (its predecessor is stored later): events were reordered")]
    Reordered { position: i64, id: Uuid },
    #[error("position {position} (event {id}): does not link to its predecessor: an event was inserted, removed or edited")]
    BrokenLink { position: i64, id: Uuid },
    #[error("positions 1..={last}: missing and no signed checkpoint covers them (first stored is {first_stored})")]
    UncoveredGap { last: i64, first_stored: i64 },
    #[error("checkpoint at position {position}: HMAC does not match: forged or edited")]
    ForgedCheckpoint { position: i64 },
    #[error("checkpoint at position {position}: its hash differs from the chain there")]
    CheckpointMismatch { position: i64 },
    #[error("position {position}: the last link differs from the recorded head")]
    HeadMismatch { position: i64 },
}

/// A verified event chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventVerifyReport {
    /// Linked events checked.
    pub events: u64,
    pub first_position: Option<i64>,
    pub last_position: Option<i64>,
    pub head_hash: String,
    /// Checkpoint the walk started from (start deleted by retention).
    pub started_at_checkpoint: Option<i64>,
    /// Checked events whose content retention purged (stored digest used).
    pub content_purged: u64,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// Rows stored before chaining existed (not covered).
    pub unlinked_legacy: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyEventsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("interaction records are NOT intact: {0}")]
    Broken(#[from] EventChainError),
}

/// Check one row's digests: content recomputed while present, stored digest
/// when purged.
fn row_digests(row: &ChainedEventRow, position: i64) -> Result<EventDigests, EventChainError> {
    let (mut d, has_content) = digest_event(&row.meta(), &row.json);
    let stored = row.content_digest.clone().unwrap_or_default();
    if row.content_purged_at.is_some() {
        if has_content {
            return Err(EventChainError::Edited {
                position,
                id: row.id,
                what: "content (present although marked purged)",
            });
        }
        d.content = stored;
    } else if d.content != stored {
        return Err(EventChainError::Edited {
            position,
            id: row.id,
            what: "content",
        });
    }
    Ok(d)
}

/// Verify the whole interaction-record chain of a store.
pub async fn verify_events(
    store: &Store,
    key: &AuditKey,
) -> Result<EventVerifyReport, VerifyEventsError> {
    let checkpoints = store.checkpoints(EVENTS_CHAIN).await?;
    for cp in &checkpoints {
        if !check_checkpoint(key, cp) {
            return Err(EventChainError::ForgedCheckpoint {
                position: cp.position,
            }
            .into());
        }
    }
    let by_pos: HashMap<i64, &CheckpointRow> =
        checkpoints.iter().map(|c| (c.position, c)).collect();
    let head = store.event_chain_head().await?;
    let mut report = EventVerifyReport {
        events: 0,
        first_position: None,
        last_position: None,
        head_hash: GENESIS.to_string(),
        started_at_checkpoint: None,
        content_purged: 0,
        checkpoints: checkpoints.len() as u64,
        unlinked_legacy: store.legacy_unchained_events().await?,
    };
    let mut page = store.event_chain_page(0, PAGE).await?;
    // Where the walk starts.
    let first_stored = page
        .first()
        .and_then(|r| r.chain_pos)
        .unwrap_or(head.position + 1);
    let (mut expected, mut prev) = if first_stored == 1 {
        (1, GENESIS.to_string())
    } else {
        match by_pos.get(&(first_stored - 1)) {
            Some(cp) => {
                report.started_at_checkpoint = Some(cp.position);
                (first_stored, cp.hash.clone())
            }
            None => {
                return Err(EventChainError::UncoveredGap {
                    last: first_stored - 1,
                    first_stored,
                }
                .into())
            }
        }
    };
    let mut recent: VecDeque<String> = VecDeque::new();
    while !page.is_empty() {
        for (i, row) in page.iter().enumerate() {
            let position = row.chain_pos.unwrap_or_default();
            if position > head.position {
                return Err(EventChainError::InsertedAfterHead {
                    position,
                    id: row.id,
                    head: head.position,
                }
                .into());
            }
            if position != expected {
                return Err(EventChainError::Deleted {
                    position: expected,
                    next: position,
                }
                .into());
            }
            let d = row_digests(row, position)?;
            let stored_prev = row.chain_prev.as_deref().unwrap_or_default();
            if stored_prev != prev {
                let later = page[i + 1..]
                    .iter()
                    .any(|r| r.chain_hash.as_deref() == Some(stored_prev));
                return Err(if later {
                    EventChainError::Reordered {
                        position,
                        id: row.id,
                    }
                } else if recent.iter().any(|h| h == stored_prev) {
                    EventChainError::Inserted {
                        position,
                        id: row.id,
                    }
                } else {
                    EventChainError::BrokenLink {
                        position,
                        id: row.id,
                    }
                }
                .into());
            }
            let hash = link_hash(&prev, position, &d);
            if Some(hash.as_str()) != row.chain_hash.as_deref() {
                return Err(EventChainError::Edited {
                    position,
                    id: row.id,
                    what: "metadata",
                }
                .into());
            }
            if let Some(cp) = by_pos.get(&position) {
                if cp.hash != hash {
                    return Err(EventChainError::CheckpointMismatch { position }.into());
                }
            }
            if row.content_purged_at.is_some() {
                report.content_purged += 1;
            }
            report.events += 1;
            report.first_position.get_or_insert(position);
            report.last_position = Some(position);
            if recent.len() == RECENT_LINKS {
                recent.pop_front();
            }
            recent.push_back(prev);
            prev = hash;
            expected = position + 1;
        }
        let after = expected - 1;
        page = store.event_chain_page(after, PAGE).await?;
    }
    let last = expected - 1;
    if last < head.position {
        return Err(EventChainError::DeletedAtEnd {
            first: last + 1,
            last: head.position,
        }
        .into());
    }
    if head.position > 0 && prev != head.hash {
        return Err(EventChainError::HeadMismatch { position: last }.into());
    }
    // Checkpoints past everything stored must sit exactly on the head.
    if let Some(cp) = checkpoints.iter().find(|c| c.position > last) {
        return Err(EventChainError::CheckpointMismatch {
            position: cp.position,
        }
        .into());
    }
    if let Some(row) = store.unchained_events_after_chain_start(1).await?.first() {
        return Err(EventChainError::InsertedUnlinked {
            seq: row.seq,
            id: row.id,
        }
        .into());
    }
    report.head_hash = prev;
    Ok(report)
}
