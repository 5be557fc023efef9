//! Store side of the web console: sign-in sessions (`console_sessions`,
//! migration 0007), policy history reads, and the counts the overview shows.
//!
//! Session ids never reach the store: callers pass the SHA-256 of the
//! cookie value, exactly like admin tokens. A session is live only while
//! unexpired, its idle window is open and its admin token is unrevoked; the
//! role is read from the token at every lookup, never copied.

use super::{from_ms, now_ms, AuditSeal, PgBackend, SqliteBackend, Store, StoreError, StoredPolicy};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// A live session as the auth middleware needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Names the session in the audit log (not a secret).
    pub public_id: String,
    pub token_id: String,
    pub token_name: String,
    /// Wire form of the token's role.
    pub role: String,
    /// Unix milliseconds.
    pub last_seen_ms: i64,
    pub expires_at_ms: i64,
}

/// One row of the policy history (no document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionMeta {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub author: String,
}

/// Counts for the console overview.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OverviewCounts {
    pub devices_total: u64,
    /// Live devices seen at or after the `online_since` cut-off.
    pub devices_online: u64,
    /// Live devices that have not applied `current_version` (or nothing yet).
    pub devices_old_policy: u64,
    pub pending_approvals: u64,
    /// (app, interactions) since the cut-off given, most first.
    pub top_apps: Vec<(String, u64)>,
    /// (UTC day as days since 1970-01-01, model or "", interactions) since
    /// the cut-off given, oldest day first.
    pub requests_by_day: Vec<(i64, String, u64)>,
}

// === impl Store ===

impl Store {
    pub async fn create_session(
        &self,
        id_hash: &str,
        public_id: &str,
        token_id: &str,
        expires_at_ms: i64,
        seal: Option<&AuditSeal<'_, ()>>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(b) => {
                b.create_session(id_hash, public_id, token_id, expires_at_ms, seal)
                    .await
            }
            Store::Postgres(b) => {
                b.create_session(id_hash, public_id, token_id, expires_at_ms, seal)
                    .await
            }
        }
    }

    /// The session with this id hash if it is unexpired at `now_ms`, was
    /// used at or after `idle_cutoff_ms`, and its token is unrevoked.
    pub async fn live_session(
        &self,
        id_hash: &str,
        now_ms: i64,
        idle_cutoff_ms: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        match self {
            Store::Sqlite(b) => b.live_session(id_hash, now_ms, idle_cutoff_ms).await,
            Store::Postgres(b) => b.live_session(id_hash, now_ms, idle_cutoff_ms).await,
        }
    }

    /// Record use of a session (extends its idle window).
    pub async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(b) => b.touch_session(id_hash, now_ms).await,
            Store::Postgres(b) => b.touch_session(id_hash, now_ms).await,
        }
    }

    /// End a session; returns its public id when it existed. With `seal`,
    /// the sign-out's admin audit entry commits with it.
    pub async fn delete_session(
        &self,
        id_hash: &str,
        seal: Option<&AuditSeal<'_, Option<String>>>,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(b) => b.delete_session(id_hash, seal).await,
            Store::Postgres(b) => b.delete_session(id_hash, seal).await,
        }
    }

    /// Drop sessions that expired or idled out; returns how many.
    pub async fn purge_sessions(
        &self,
        now_ms: i64,
        idle_cutoff_ms: i64,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(b) => b.purge_sessions(now_ms, idle_cutoff_ms).await,
            Store::Postgres(b) => b.purge_sessions(now_ms, idle_cutoff_ms).await,
        }
    }

    /// Policy versions, newest first, with `version < before` when given.
    pub async fn list_policy_versions(
        &self,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<PolicyVersionMeta>, StoreError> {
        match self {
            Store::Sqlite(b) => b.list_policy_versions(before, limit).await,
            Store::Postgres(b) => b.list_policy_versions(before, limit).await,
        }
    }

    pub async fn policy_version(&self, version: u64) -> Result<Option<StoredPolicy>, StoreError> {
        match self {
            Store::Sqlite(b) => b.policy_version(version).await,
            Store::Postgres(b) => b.policy_version(version).await,
        }
    }

    pub async fn overview_counts(
        &self,
        current_version: u64,
        online_since_ms: i64,
        apps_since_ms: i64,
        top_n: u32,
    ) -> Result<OverviewCounts, StoreError> {
        match self {
            Store::Sqlite(b) => {
                b.overview_counts(current_version, online_since_ms, apps_since_ms, top_n)
                    .await
            }
            Store::Postgres(b) => {
                b.overview_counts(current_version, online_since_ms, apps_since_ms, top_n)
                    .await
            }
        }
    }
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is negative")))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

macro_rules! console_impl {
    ($backend:ty) => {
        impl $backend {
            pub(super) async fn create_session(
                &self,
                id_hash: &str,
                public_id: &str,
                token_id: &str,
                expires_at_ms: i64,
                seal: Option<&AuditSeal<'_, ()>>,
            ) -> Result<(), StoreError> {
                let _guard = match seal {
                    Some(_) => self.audit_guard().await,
                    None => None,
                };
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO console_sessions (id_hash, public_id, token_id, created_at, last_seen, expires_at) \
                     VALUES ($1, $2, $3, $4, $4, $5)",
                )
                .bind(id_hash)
                .bind(public_id)
                .bind(token_id)
                .bind(now)
                .bind(expires_at_ms)
                .execute(&mut *tx)
                .await?;
                Self::seal_audit_in(&mut tx, seal, &()).await?;
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn live_session(
                &self,
                id_hash: &str,
                now_ms: i64,
                idle_cutoff_ms: i64,
            ) -> Result<Option<SessionRecord>, StoreError> {
                let row = sqlx::query(
                    "SELECT s.public_id, s.token_id, s.last_seen, s.expires_at, t.name, t.role \
                     FROM console_sessions s JOIN admin_tokens t ON t.id = s.token_id \
                     WHERE s.id_hash = $1 AND s.expires_at > $2 AND s.last_seen >= $3 \
                     AND t.revoked_at IS NULL",
                )
                .bind(id_hash)
                .bind(now_ms)
                .bind(idle_cutoff_ms)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(SessionRecord {
                        public_id: r.try_get("public_id")?,
                        token_id: r.try_get("token_id")?,
                        token_name: r.try_get("name")?,
                        role: r.try_get("role")?,
                        last_seen_ms: r.try_get("last_seen")?,
                        expires_at_ms: r.try_get("expires_at")?,
                    })
                })
                .transpose()
            }

            pub(super) async fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
                sqlx::query("UPDATE console_sessions SET last_seen = $1 WHERE id_hash = $2 AND last_seen < $1")
                    .bind(now_ms)
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub(super) async fn delete_session(
                &self,
                id_hash: &str,
                seal: Option<&AuditSeal<'_, Option<String>>>,
            ) -> Result<Option<String>, StoreError> {
                let _guard = match seal {
                    Some(_) => self.audit_guard().await,
                    None => None,
                };
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1 RETURNING public_id")
                    .bind(id_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                let public_id = row.map(|r| r.try_get("public_id").map_err(StoreError::from)).transpose()?;
                Self::seal_audit_in(&mut tx, seal, &public_id).await?;
                tx.commit().await?;
                Ok(public_id)
            }

            pub(super) async fn purge_sessions(&self, now_ms: i64, idle_cutoff_ms: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen < $2")
                    .bind(now_ms)
                    .bind(idle_cutoff_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            pub(super) async fn list_policy_versions(
                &self,
                before: Option<u64>,
                limit: u32,
            ) -> Result<Vec<PolicyVersionMeta>, StoreError> {
                let rows = sqlx::query(
                    "SELECT version, created_at, author FROM policies WHERE version < $1 \
                     ORDER BY version DESC LIMIT $2",
                )
                .bind(before.map_or(i64::MAX, to_i64))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(PolicyVersionMeta {
                            version: to_u64(r.try_get("version")?, "policy version")?,
                            created_at: from_ms(r.try_get("created_at")?)?,
                            author: r.try_get("author")?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn policy_version(&self, version: u64) -> Result<Option<StoredPolicy>, StoreError> {
                let row = sqlx::query(
                    "SELECT version, document, created_at, author FROM policies WHERE version = $1",
                )
                .bind(to_i64(version))
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(StoredPolicy {
                        version: to_u64(r.try_get("version")?, "policy version")?,
                        document: r.try_get("document")?,
                        created_at: from_ms(r.try_get("created_at")?)?,
                        author: r.try_get("author")?,
                    })
                })
                .transpose()
            }

            pub(super) async fn overview_counts(
                &self,
                current_version: u64,
                online_since_ms: i64,
                apps_since_ms: i64,
                top_n: u32,
            ) -> Result<OverviewCounts, StoreError> {
                let r = sqlx::query(
                    "SELECT \
                       COUNT(*) AS total, \
                       COALESCE(SUM(CASE WHEN last_seen >= $1 THEN 1 ELSE 0 END), 0) AS online, \
                       COALESCE(SUM(CASE WHEN applied_policy_version IS NULL OR applied_policy_version < $2 \
                                    THEN 1 ELSE 0 END), 0) AS old_policy \
                     FROM devices WHERE revoked_at IS NULL",
                )
                .bind(online_since_ms)
                .bind(to_i64(current_version))
                .fetch_one(&self.pool)
                .await?;
                let pending = sqlx::query("SELECT COUNT(*) AS n FROM catalog_items WHERE status = 'pending'")
                    .fetch_one(&self.pool)
                    .await?;
                let apps = sqlx::query(
                    "SELECT app, COUNT(*) AS n FROM events \
                     WHERE kind = 'interaction' AND app IS NOT NULL AND time >= $1 \
                     GROUP BY app ORDER BY n DESC, app LIMIT $2",
                )
                .bind(apps_since_ms)
                .bind(i64::from(top_n))
                .fetch_all(&self.pool)
                .await?;
                let days = sqlx::query(
                    "SELECT time / 86400000 AS day, COALESCE(model, '') AS m, COUNT(*) AS n FROM events \
                     WHERE kind = 'interaction' AND time >= $1 \
                     GROUP BY time / 86400000, COALESCE(model, '') ORDER BY day, n DESC",
                )
                .bind(apps_since_ms)
                .fetch_all(&self.pool)
                .await?;
                Ok(OverviewCounts {
                    requests_by_day: days
                        .iter()
                        .map(|d| {
                            Ok((
                                d.try_get("day")?,
                                d.try_get("m")?,
                                to_u64(d.try_get("n")?, "day count")?,
                            ))
                        })
                        .collect::<Result<_, StoreError>>()?,
                    devices_total: to_u64(r.try_get("total")?, "device count")?,
                    devices_online: to_u64(r.try_get("online")?, "device count")?,
                    devices_old_policy: to_u64(r.try_get("old_policy")?, "device count")?,
                    pending_approvals: to_u64(pending.try_get("n")?, "pending count")?,
                    top_apps: apps
                        .iter()
                        .map(|a| Ok((a.try_get("app")?, to_u64(a.try_get("n")?, "app count")?)))
                        .collect::<Result<_, StoreError>>()?,
                })
            }
        }
    };
}

console_impl!(SqliteBackend);
console_impl!(PgBackend);
