//! Store side of the admin audit log (`admin_audit`, migration 0003) and of
//! token roles (`admin_tokens.role`).
//!
//! The chain never forks: an append reads the head and inserts `head + 1` in
//! ONE transaction while holding the chain lock. In one process that is the
//! SQLite writer mutex; across several servers on one PostgreSQL it is a
//! transaction-level advisory lock ([`AUDIT_CHAIN_LOCK`]), released at commit.
//! The primary key on `seq` is the backstop: a second entry for one seq fails.
//!
//! The hashing and signing happen in the caller's `seal` closure
//! (`admin::audit`), so this module knows SQL and nothing about the chain
//! format. An admin mutation (a policy, a token, a revocation, a decision)
//! appends its entry inside its own transaction through an [`AuditSeal`]:
//! the change and its entry commit together or not at all. It must never receive or store a raw token, and never update or
//! delete an audit row (retention with signed checkpoints is a later step).

use super::{PgBackend, SqliteBackend, Store, StoreError};
use sqlx::Row;
use uuid::Uuid;

/// `pg_advisory_xact_lock` key serialising audit appends across servers
/// (ASCII "palaudit").
pub const AUDIT_CHAIN_LOCK: i64 = 0x7061_6c61_7564_6974;

/// Seals an admin mutation's audit entry inside the mutation's own
/// transaction: given the chain head and the mutation's result, the
/// finished row, or `None` when that result gets no entry here (e.g. the
/// target does not exist; the caller audits the refusal itself). Called
/// again when the transaction is retried, so it must not count on running
/// once.
pub type AuditSeal<'a, T> = dyn Fn(Option<AuditHead>, &T) -> Option<AdminAuditRow> + Send + Sync + 'a;

/// One admin audit row exactly as stored (strings are the wire forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuditRow {
    pub seq: i64,
    /// Unix milliseconds.
    pub time_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub outcome: String,
    pub target_type: String,
    pub target_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// JSON text (canonical form).
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
    pub hmac: String,
}

/// The newest entry of the chain: what the next append links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// Who an admin bearer token belongs to (never the hash itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenIdentity {
    pub id: String,
    pub name: String,
    /// Wire form of the role (`admin`, `approver`, `auditor`, `viewer`).
    pub role: String,
}

/// An admin token as listed: never its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenInfo {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

const AUDIT_COLUMNS: &str = "seq, time, actor_kind, actor_id, action, outcome, target_type, \
     target_id, ip, user_agent, details, prev_hash, hash, hmac";

// === impl Store ===

impl Store {
    /// Append one entry: `seal` gets the current head (`None` for an empty
    /// chain) and returns the finished row (seq = head + 1, hashes set).
    /// Read-head and insert share one transaction under the chain lock.
    pub async fn append_admin_audit<F>(&self, seal: F) -> Result<AdminAuditRow, StoreError>
    where
        F: FnOnce(Option<AuditHead>) -> AdminAuditRow + Send,
    {
        match self {
            Store::Sqlite(b) => b.append_admin_audit(seal).await,
            Store::Postgres(b) => b.append_admin_audit(seal).await,
        }
    }

    /// Entries with `seq > after_seq`, oldest first, at most `limit`.
    pub async fn admin_audit_page(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AdminAuditRow>, StoreError> {
        match self {
            Store::Sqlite(b) => b.admin_audit_page(after_seq, limit).await,
            Store::Postgres(b) => b.admin_audit_page(after_seq, limit).await,
        }
    }

    pub async fn admin_audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        match self {
            Store::Sqlite(b) => b.admin_audit_head().await,
            Store::Postgres(b) => b.admin_audit_head().await,
        }
    }

    /// Create an admin API token with a role (hash only). Returns its id.
    /// With `seal`, its admin audit entry (given the id) commits with it.
    pub async fn create_admin_token_with_role(
        &self,
        token_hash: &str,
        name: &str,
        role: &str,
        seal: Option<&AuditSeal<'_, String>>,
    ) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(b) => b.create_admin_token_with_role(token_hash, name, role, seal).await,
            Store::Postgres(b) => b.create_admin_token_with_role(token_hash, name, role, seal).await,
        }
    }

    /// Every admin token (revoked ones too), oldest first. Never the hash.
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenInfo>, StoreError> {
        match self {
            Store::Sqlite(b) => b.list_admin_tokens().await,
            Store::Postgres(b) => b.list_admin_tokens().await,
        }
    }

    /// Revoke an admin token: every later call with it gets 401, and its
    /// console sessions end with it. `Ok(None)`: no such token; `Ok(Some(false))`:
    /// it was already revoked. With `seal`, its admin audit entry (given
    /// that result) commits with it.
    pub async fn revoke_admin_token(
        &self,
        id: &str,
        seal: Option<&AuditSeal<'_, Option<bool>>>,
    ) -> Result<Option<bool>, StoreError> {
        match self {
            Store::Sqlite(b) => b.revoke_admin_token(id, seal).await,
            Store::Postgres(b) => b.revoke_admin_token(id, seal).await,
        }
    }

    /// The live (unrevoked) admin token with this hash.
    pub async fn admin_token_identity(
        &self,
        token_hash: &str,
    ) -> Result<Option<AdminTokenIdentity>, StoreError> {
        match self {
            Store::Sqlite(b) => b.admin_token_identity(token_hash).await,
            Store::Postgres(b) => b.admin_token_identity(token_hash).await,
        }
    }
}

// === impl SqliteBackend ===

impl SqliteBackend {
    /// One writer per SQLite file: the process-wide writer mutex.
    pub(super) async fn audit_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.write_lock.lock().await)
    }

    async fn audit_chain_lock(
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

// === impl PgBackend ===

impl PgBackend {
    pub(super) async fn audit_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    /// Serialise appends across every server sharing this database; the
    /// lock is released when the transaction ends.
    async fn audit_chain_lock(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_CHAIN_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

macro_rules! audit_impl {
    ($backend:ty, $db:ty) => {
        impl $backend {
            fn audit_row(r: &<$db as sqlx::Database>::Row) -> Result<AdminAuditRow, StoreError> {
                Ok(AdminAuditRow {
                    seq: r.try_get("seq")?,
                    time_ms: r.try_get("time")?,
                    actor_kind: r.try_get("actor_kind")?,
                    actor_id: r.try_get("actor_id")?,
                    action: r.try_get("action")?,
                    outcome: r.try_get("outcome")?,
                    target_type: r.try_get("target_type")?,
                    target_id: r.try_get("target_id")?,
                    ip: r.try_get("ip")?,
                    user_agent: r.try_get("user_agent")?,
                    details: r.try_get("details")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                    hmac: r.try_get("hmac")?,
                })
            }

            pub(super) async fn append_admin_audit<F>(&self, seal: F) -> Result<AdminAuditRow, StoreError>
            where
                F: FnOnce(Option<AuditHead>) -> AdminAuditRow + Send,
            {
                let _guard = self.audit_guard().await;
                let mut tx = self.pool.begin().await?;
                Self::audit_chain_lock(&mut tx).await?;
                let head = Self::audit_head_in(&mut tx).await?;
                let row = seal(head);
                Self::insert_audit_row(&mut tx, &row).await?;
                tx.commit().await?;
                Ok(row)
            }

            /// Append `seal`'s entry for a mutation's `result` inside the
            /// mutation's transaction `tx`, under the chain lock. The caller
            /// already holds what [`Self::audit_guard`] would take (SQLite's
            /// writer mutex) or needs nothing (PostgreSQL).
            pub(super) async fn seal_audit_in<T: Sync>(
                tx: &mut sqlx::Transaction<'_, $db>,
                seal: Option<&AuditSeal<'_, T>>,
                result: &T,
            ) -> Result<(), StoreError> {
                let Some(seal) = seal else {
                    return Ok(());
                };
                Self::audit_chain_lock(tx).await?;
                let head = Self::audit_head_in(tx).await?;
                if let Some(row) = seal(head, result) {
                    Self::insert_audit_row(tx, &row).await?;
                }
                Ok(())
            }

            async fn audit_head_in(tx: &mut sqlx::Transaction<'_, $db>) -> Result<Option<AuditHead>, StoreError> {
                sqlx::query("SELECT seq, hash FROM admin_audit ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| -> Result<AuditHead, StoreError> {
                        Ok(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")? })
                    })
                    .transpose()
            }

            async fn insert_audit_row(tx: &mut sqlx::Transaction<'_, $db>, row: &AdminAuditRow) -> Result<(), StoreError> {
                sqlx::query(&format!(
                    "INSERT INTO admin_audit ({AUDIT_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                ))
                .bind(row.seq)
                .bind(row.time_ms)
                .bind(&row.actor_kind)
                .bind(&row.actor_id)
                .bind(&row.action)
                .bind(&row.outcome)
                .bind(&row.target_type)
                .bind(&row.target_id)
                .bind(&row.ip)
                .bind(&row.user_agent)
                .bind(&row.details)
                .bind(&row.prev_hash)
                .bind(&row.hash)
                .bind(&row.hmac)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            pub(super) async fn admin_audit_page(
                &self,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<AdminAuditRow>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM admin_audit WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::audit_row).collect()
            }

            pub(super) async fn admin_audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
                let row = sqlx::query("SELECT seq, hash FROM admin_audit ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| Ok(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")? }))
                    .transpose()
            }

            pub(super) async fn create_admin_token_with_role(
                &self,
                token_hash: &str,
                name: &str,
                role: &str,
                seal: Option<&AuditSeal<'_, String>>,
            ) -> Result<String, StoreError> {
                let _guard = self.audit_guard().await;
                let id = Uuid::now_v7().to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO admin_tokens (id, token_hash, name, created_at, role) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&id)
                .bind(token_hash)
                .bind(name)
                .bind(super::now_ms())
                .bind(role)
                .execute(&mut *tx)
                .await?;
                Self::seal_audit_in(&mut tx, seal, &id).await?;
                tx.commit().await?;
                Ok(id)
            }

            pub(super) async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenInfo>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, name, role, created_at, revoked_at FROM admin_tokens ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AdminTokenInfo {
                            id: r.try_get("id")?,
                            name: r.try_get("name")?,
                            role: r.try_get("role")?,
                            created_at: super::from_ms(r.try_get("created_at")?)?,
                            revoked_at: r
                                .try_get::<Option<i64>, _>("revoked_at")?
                                .map(super::from_ms)
                                .transpose()?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn revoke_admin_token(
                &self,
                id: &str,
                seal: Option<&AuditSeal<'_, Option<bool>>>,
            ) -> Result<Option<bool>, StoreError> {
                let _guard = self.audit_guard().await;
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(
                    "UPDATE admin_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(super::now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let result = if done > 0 {
                    Some(true)
                } else {
                    sqlx::query("SELECT 1 AS one FROM admin_tokens WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|_| false)
                };
                Self::seal_audit_in(&mut tx, seal, &result).await?;
                tx.commit().await?;
                Ok(result)
            }

            pub(super) async fn admin_token_identity(
                &self,
                token_hash: &str,
            ) -> Result<Option<AdminTokenIdentity>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, name, role FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(AdminTokenIdentity {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        role: r.try_get("role")?,
                    })
                })
                .transpose()
            }
        }
    };
}

audit_impl!(SqliteBackend, sqlx::Sqlite);
audit_impl!(PgBackend, sqlx::Postgres);
