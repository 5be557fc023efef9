//! The retention job: every `retention.interval_minutes` it applies
//! `[retention]` to every table that grows, and records what it did in the
//! admin audit log (action `retention`, counts per table).
//!
//! | table | rule |
//! |---|---|
//! | `events` content (prompt, response text) | nulled after `content_days` |
//! | `events` | deleted after `events_days`, as a prefix of the chain |
//! | `admin_audit` | deleted after `admin_audit_days`, newest entry kept |
//! | `inventory` | rows not reported for `inventory_days` |
//! | `enrollment_tokens` / `admin_tokens` | `tokens_days` past expiry / revocation (with their console sessions) |
//! | `console_sessions` | expired or idle, every pass |
//! | `chain_checkpoints` | those below the oldest kept boundary |
//! | `policies`, `catalog_*`, `devices` | kept: policy history and decisions are evidence, and small |
//!
//! Chains stay verifiable: before deleting a chain up to position P, a
//! checkpoint at P signed with the audit key is stored; each run also signs
//! the event chain's head. Deletes run in chunks of
//! [`crate::store::chain::RETENTION_CHUNK`] rows, one short transaction
//! each. On PostgreSQL only one server runs a pass at a time (advisory lock).
//!
//! Must never log record contents.

use crate::admin::audit::{Action, ActorKind, AuditKey, AuditLog, NewAuditEntry, Outcome};
use crate::admin::integrity::sign_checkpoint;
use crate::config::RetentionConfig;
use crate::store::chain::{RetentionCounts, ADMIN_AUDIT_CHAIN, EVENTS_CHAIN};
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info};

const DAY_MS: i64 = 86_400_000;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub counts: RetentionCounts,
    /// Checkpoint written before deleting events up to this position.
    pub events_boundary: Option<i64>,
    pub admin_audit_boundary: Option<i64>,
}

fn cutoff(now: DateTime<Utc>, days: u32) -> Option<i64> {
    (days > 0).then(|| now.timestamp_millis() - i64::from(days) * DAY_MS)
}

/// One retention pass as of `now` (tests pass a time in the future instead
/// of waiting). Writes the admin audit entry, also when the pass fails.
pub async fn run_once(
    store: &Store,
    audit: &AuditLog,
    key: &AuditKey,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<RetentionReport, StoreError> {
    let result = apply(store, key, cfg, now).await;
    let (outcome, details) = match &result {
        Ok(r) => (
            Outcome::Success,
            json!({
                "counts": r.counts,
                "events_checkpoint": r.events_boundary,
                "admin_audit_checkpoint": r.admin_audit_boundary,
                "days": {
                    "events": cfg.events_days,
                    "content": cfg.content_days,
                    "admin_audit": cfg.admin_audit_days,
                    "inventory": cfg.inventory_days,
                    "tokens": cfg.tokens_days,
                },
            }),
        ),
        Err(e) => (Outcome::Failure, json!({ "error": e.to_string() })),
    };
    audit
        .append(NewAuditEntry {
            actor_kind: ActorKind::System,
            actor_id: "retention".into(),
            action: Action::Retention,
            outcome,
            target_type: "store".into(),
            target_id: store.backend_name().into(),
            ip: None,
            user_agent: None,
            details,
        })
        .await?;
    result
}

async fn apply(
    store: &Store,
    key: &AuditKey,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<RetentionReport, StoreError> {
    let now_ms = now.timestamp_millis();
    let mut r = RetentionReport::default();
    if let Some(c) = cutoff(now, cfg.content_days) {
        r.counts.events_content_purged = store.purge_event_content(c).await?;
    }
    if let Some(c) = cutoff(now, cfg.events_days) {
        let mut upto = 0;
        if let Some(b) = store.event_retention_boundary(c).await? {
            // Signed before anything is deleted: a crash in between leaves a
            // checkpoint that still matches its row.
            store
                .put_checkpoint(&sign_checkpoint(
                    key,
                    EVENTS_CHAIN,
                    b.position,
                    &b.hash,
                    now_ms,
                ))
                .await?;
            upto = b.position;
            r.events_boundary = Some(b.position);
        }
        r.counts.events_deleted = store.delete_events_upto(upto, c).await?;
        if upto > 0 {
            r.counts.checkpoints_deleted +=
                store.delete_checkpoints_below(EVENTS_CHAIN, upto).await?;
        }
    }
    if let Some(c) = cutoff(now, cfg.admin_audit_days) {
        if let Some(b) = store.admin_audit_retention_boundary(c).await? {
            store
                .put_checkpoint(&sign_checkpoint(
                    key,
                    ADMIN_AUDIT_CHAIN,
                    b.position,
                    &b.hash,
                    now_ms,
                ))
                .await?;
            r.admin_audit_boundary = Some(b.position);
            r.counts.admin_audit_deleted = store.delete_admin_audit_upto(b.position).await?;
            r.counts.checkpoints_deleted += store
                .delete_checkpoints_below(ADMIN_AUDIT_CHAIN, b.position)
                .await?;
        }
    }
    if let Some(c) = cutoff(now, cfg.inventory_days) {
        r.counts.inventory_deleted = store.delete_stale_inventory(c).await?;
    }
    if let Some(c) = cutoff(now, cfg.tokens_days) {
        let (enrollment, admin) = store.delete_dead_tokens(c).await?;
        r.counts.enrollment_tokens_deleted = enrollment;
        r.counts.admin_tokens_deleted = admin;
    }
    // Console sessions past expiry or idle time (sign-in also purges them;
    // this covers a console nobody signs in to).
    r.counts.console_sessions_deleted = store
        .purge_sessions(
            now_ms,
            now_ms - crate::admin::session::SESSION_IDLE_SECS * 1000,
        )
        .await?;
    // Sign the event chain's head, bounding how much of it a database-level
    // attacker could rewrite unnoticed.
    let head = store.event_chain_head().await?;
    if head.position > 0 {
        store
            .put_checkpoint(&sign_checkpoint(
                key,
                EVENTS_CHAIN,
                head.position,
                &head.hash,
                now_ms,
            ))
            .await?;
    }
    Ok(r)
}

/// The background job: a pass every `interval_minutes` until shutdown.
pub async fn run_loop(
    store: Store,
    audit: AuditLog,
    key: AuditKey,
    cfg: RetentionConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(u64::from(cfg.interval_minutes) * 60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let pass = store.with_retention_lock(run_once(&store, &audit, &key, &cfg, Utc::now()));
        let result = tokio::select! {
            r = pass => r,
            // Every chunk is its own transaction: stopping between them is safe.
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match result {
            Ok(Some(Ok(r))) => info!(
                events_deleted = r.counts.events_deleted,
                content_purged = r.counts.events_content_purged,
                admin_audit_deleted = r.counts.admin_audit_deleted,
                inventory_deleted = r.counts.inventory_deleted,
                "Retention pass done"
            ),
            Ok(Some(Err(error))) | Err(error) => error!(%error, "Retention pass failed"),
            Ok(None) => info!("Retention pass skipped: another server holds the retention lock"),
        }
    }
}
