//! Store side of live SIEM forwarding: saved cursors, the committed-seq
//! watermark a tailer may safely read up to, and the per-target lease that
//! lets only one server forward a target.
//!
//! * **Watermark.** On SQLite one writer commits at a time, so seqs become
//!   visible in order and the highest visible seq is safe. On PostgreSQL an
//!   identity value is taken when a row is inserted, not when it commits: a
//!   slow transaction can commit seq 7 after seq 8 is visible, and a tailer
//!   that had moved past 8 would skip 7 for ever. [`Store::event_watermark`]
//!   therefore takes `LOCK TABLE events IN SHARE MODE` for the length of one
//!   `MAX(seq)`: the lock waits for every transaction that has inserted into
//!   `events` to end, so every seq at or below the answer is committed or
//!   rolled back. Ingest queues behind it for that instant only.
//! * **Lease.** PostgreSQL: a session advisory lock on a connection of its
//!   own (not the pool's, so the lock can never be returned to the pool);
//!   dropping the lease closes the connection and releases the lock. SQLite
//!   has one server per file, so the lease is always granted.
//!
//! This module must never log event contents.

use super::{now_ms, PgBackend, SqliteBackend, Store, StoreError};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

/// How long the watermark waits for in-flight ingest before giving up.
const WATERMARK_LOCK_TIMEOUT: &str = "5s";

/// A saved forwarding cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardCursor {
    pub name: String,
    /// Highest seq confirmed delivered (0: nothing yet).
    pub last_seq: i64,
    /// Unix milliseconds of the last save.
    pub updated_at_ms: i64,
}

/// The right to forward one target (see the module docs).
#[derive(Debug)]
pub struct ForwardLease {
    /// PostgreSQL: the connection holding the advisory lock. `None` on SQLite.
    conn: Option<sqlx::PgConnection>,
}

/// Advisory-lock key of a target: the first 8 bytes of
/// SHA-256("palisade-forward:" + name), so names never collide in practice
/// with each other or with [`super::AUDIT_CHAIN_LOCK`].
pub fn forward_lock_key(name: &str) -> i64 {
    let d = Sha256::digest(format!("palisade-forward:{name}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

// === impl ForwardLease ===

impl ForwardLease {
    /// True while the lease still holds (PostgreSQL: its connection is alive).
    pub async fn is_held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => c.ping().await.is_ok(),
        }
    }
}

// === impl Store ===

impl Store {
    /// The saved cursor of `name`, if any.
    pub async fn forward_cursor(&self, name: &str) -> Result<Option<ForwardCursor>, StoreError> {
        match self {
            Store::Sqlite(b) => b.forward_cursor(name).await,
            Store::Postgres(b) => b.forward_cursor(name).await,
        }
    }

    /// Every saved cursor, by name.
    pub async fn forward_cursors(&self) -> Result<Vec<ForwardCursor>, StoreError> {
        match self {
            Store::Sqlite(b) => b.forward_cursors().await,
            Store::Postgres(b) => b.forward_cursors().await,
        }
    }

    /// Save `last_seq` for `name` (never moves a cursor backwards).
    pub async fn save_forward_cursor(&self, name: &str, last_seq: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(b) => b.save_forward_cursor(name, last_seq).await,
            Store::Postgres(b) => b.save_forward_cursor(name, last_seq).await,
        }
    }

    /// The highest seq such that every event with a seq at or below it is
    /// committed (see the module docs); 0 when there are no events.
    pub async fn event_watermark(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(b) => {
                let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS m FROM events")
                    .fetch_one(&b.pool)
                    .await?;
                Ok(row.try_get("m")?)
            }
            Store::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                sqlx::query(&format!("SET LOCAL lock_timeout = '{WATERMARK_LOCK_TIMEOUT}'"))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("LOCK TABLE events IN SHARE MODE")
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS m FROM events")
                    .fetch_one(&mut *tx)
                    .await?;
                let m: i64 = row.try_get("m")?;
                tx.commit().await?;
                Ok(m)
            }
        }
    }

    /// The highest visible seq (no waiting; for lag figures only).
    pub async fn max_event_seq(&self) -> Result<i64, StoreError> {
        let q = "SELECT COALESCE(MAX(seq), 0) AS m FROM events";
        let row = match self {
            Store::Sqlite(b) => sqlx::query(q).fetch_one(&b.pool).await?.try_get("m")?,
            Store::Postgres(b) => sqlx::query(q).fetch_one(&b.pool).await?.try_get("m")?,
        };
        Ok(row)
    }

    /// Try to become the one server forwarding `name`; `None` while another
    /// server holds it.
    pub async fn try_forward_lease(&self, name: &str) -> Result<Option<ForwardLease>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Some(ForwardLease { conn: None })),
            Store::Postgres(b) => b.try_forward_lease(name).await,
        }
    }
}

impl PgBackend {
    async fn try_forward_lease(&self, name: &str) -> Result<Option<ForwardLease>, StoreError> {
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options()).await?;
        let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS ok")
            .bind(forward_lock_key(name))
            .fetch_one(&mut conn)
            .await?;
        if row.try_get::<bool, _>("ok")? {
            Ok(Some(ForwardLease { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}

macro_rules! forward_impl {
    ($backend:ty, $db:ty) => {
        impl $backend {
            async fn forward_cursor(&self, name: &str) -> Result<Option<ForwardCursor>, StoreError> {
                let row = sqlx::query("SELECT name, last_seq, updated_at FROM forward_cursors WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| Self::cursor_row(&r)).transpose()
            }

            async fn forward_cursors(&self) -> Result<Vec<ForwardCursor>, StoreError> {
                let rows = sqlx::query("SELECT name, last_seq, updated_at FROM forward_cursors ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::cursor_row).collect()
            }

            fn cursor_row(r: &<$db as sqlx::Database>::Row) -> Result<ForwardCursor, StoreError> {
                Ok(ForwardCursor {
                    name: r.try_get("name")?,
                    last_seq: r.try_get("last_seq")?,
                    updated_at_ms: r.try_get("updated_at")?,
                })
            }

            async fn save_forward_cursor(&self, name: &str, last_seq: i64) -> Result<(), StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                sqlx::query(
                    "INSERT INTO forward_cursors (name, last_seq, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at \
                     WHERE forward_cursors.last_seq <= excluded.last_seq",
                )
                .bind(name)
                .bind(last_seq)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    };
}

forward_impl!(SqliteBackend, sqlx::Sqlite);
forward_impl!(PgBackend, sqlx::Postgres);
