//! The agent's durable outbox of [`AuditEvent`] records: one SQLite file the
//! proxy appends to and the uploader drains to the control plane.
//!
//! It must never lose a record it has acknowledged to its caller, never drop
//! a record silently, and never hold SQL anywhere but this crate.
//!
//! # Design
//!
//! - **Storage.** One SQLite database in WAL mode. Each record is one row:
//!   the event's JSON (`body`) plus columns copied out of it for filtering
//!   (`time_us`, `kind`, `provider`, `model`, `app`, `decision`). Only `id`
//!   and `time_us` are indexed: every index is paid on each append and each
//!   ack, the proxy's hottest write, while `palisade events` filters are
//!   answered by a scan of a drained outbox (schema v2). Rows are ordered by `seq` (`AUTOINCREMENT`, never reused), which is the
//!   order the uploader sees them in.
//! - **What survives what.** [`Spool::append`] returns only after its
//!   transaction committed with `synchronous = FULL`, i.e. after the WAL was
//!   fsynced. A record whose append returned `Ok` therefore survives a
//!   `kill -9` of the agent *and* a power loss (given honest disks). A record
//!   whose append was in flight when the process died is either fully present
//!   or absent; SQLite never leaves half a row. `NORMAL` would survive
//!   `kill -9` but could lose the last commits on power loss, which an audit
//!   trail cannot accept; batches ([`Spool::append_batch`]) amortise the
//!   fsync.
//! - **One writer.** A writable [`Spool`] has exactly one writer connection;
//!   concurrent `append` calls queue for it and each commit is one
//!   `BEGIN IMMEDIATE` transaction. Readers (`peek`, `query`, `stats`) use a
//!   separate read-only pool and never block the writer (WAL). Other
//!   processes (the `palisade events` CLI) open with
//!   [`Spool::open_read_only`] and cannot write. (Two writable handles on one
//!   file stay correct, since SQLite serialises them and the counters live
//!   in the database, but the agent should own the only one.)
//! - **Idempotent on `id`.** `id` is `UNIQUE`; appending an id that is still
//!   in the spool is a no-op. (An id that was already acknowledged and
//!   deleted would be stored again; the server deduplicates on `id` too.)
//! - **The uploader deletes only acknowledged ids.** [`Spool::peek`] never
//!   removes anything; [`Spool::ack`] deletes exactly the ids the control
//!   plane acknowledged. A crash between upload and ack re-sends, never loses.
//! - **Size cap.** The payload held is bounded by [`SpoolOptions::max_bytes`]
//!   (sum of each row's JSON size plus [`ROW_OVERHEAD_BYTES`]). When an
//!   append would exceed it, the oldest rows are deleted, down to
//!   [`LOW_WATER_PERCENT`] of the cap so a full spool does not drop on every
//!   append. The number of audit records among them is added to the
//!   persistent `dropped_total` counter, and a `spool.dropped` record
//!   (`details: {dropped, reason, dropped_total, max_bytes}`, envelope taken
//!   from the record being appended) is written in the same transaction, so
//!   the loss itself is reported upstream. An older `spool.dropped` record
//!   may itself be dropped later; it is not counted, since the newer one's
//!   cumulative `dropped_total` supersedes it. The records being appended
//!   are never the ones dropped; a batch larger than the cap is refused with
//!   [`SpoolError::TooLarge`].
//! - **Rows that no longer decode** (an incompatible upgrade, a damaged
//!   page) never block the uploader: `peek` moves them verbatim to a
//!   `rejected` table, counts them (`rejected_total`) and appends a
//!   `spool.rejected` record naming the id, so this loss is reported too.
//! - **Disk.** `ack` gives free pages back (`auto_vacuum = INCREMENTAL`) once
//!   a drained backlog left a quarter of the file free, and the WAL is
//!   truncated to [`JOURNAL_SIZE_LIMIT`] after checkpoints, so the file does
//!   not stay at its high-water mark.
//! - **Schema.** Versioned with `PRAGMA user_version`; see [`schema`]. A file
//!   written by a newer agent is refused rather than guessed at.
//! - **Files.** The parent directory is created `0700`, the database `0600`
//!   (SQLite gives its `-wal`/`-shm` files the same mode). Records hold
//!   prompts and responses.

mod filter;
pub mod paths;
pub mod schema;

#[cfg(test)]
mod tests;

pub use filter::EventFilter;
pub use paths::{
    data_dir_from, default_data_dir, default_spool_path, DATA_DIR_ENV, SPOOL_FILE_NAME,
    SYSTEM_DATA_DIR,
};

use palisade_core::{AuditEvent, DeviceRef, EventKind, UserRef};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};
use uuid::Uuid;

/// Default cap on the payload the spool holds: 512 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Smallest accepted cap; anything smaller cannot hold a few records.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;
/// Per-row bytes counted on top of the JSON body (indexed columns, b-tree cells).
pub const ROW_OVERHEAD_BYTES: u64 = 128;
/// When the cap is hit, oldest rows are dropped until this percentage of the cap is used.
pub const LOW_WATER_PERCENT: u64 = 95;
/// How long a statement waits on a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// `reason` in the details of a `spool.dropped` record written by the size cap.
pub const DROP_REASON_SIZE_CAP: &str = "size_cap";

/// Kind of the record reporting a quarantined, undecodable row.
pub const REJECTED_KIND: &str = "spool.rejected";
/// The WAL file is truncated back to this size after checkpoints.
pub const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;
/// `ack` gives free pages back to the OS once this many are free and they
/// are at least a quarter of the file.
const VACUUM_MIN_FREE_PAGES: i64 = 1024;

/// Largest number of bound parameters put in one `IN (...)` list.
const MAX_BINDS_PER_STATEMENT: usize = 500;
const READ_POOL_CONNECTIONS: u32 = 2;

/// Options for [`Spool::open`].
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Cap on stored payload bytes; see the module docs for what happens at it.
    pub max_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Counters describing the spool's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Records waiting in the spool.
    pub count: u64,
    /// Bytes counted against the cap (JSON size + per-row overhead).
    pub bytes: u64,
    /// Audit records ever dropped by the size cap (persistent; `spool.dropped`
    /// markers that were dropped in turn are not counted).
    pub dropped_total: u64,
    /// Rows ever quarantined because they no longer decode (persistent).
    pub rejected_total: u64,
    /// Size of the database file (pages in use and free), excluding the WAL.
    pub file_bytes: u64,
}

/// Everything that can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("invalid spool options: {0}")]
    InvalidOptions(String),
    #[error("spool file {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot access spool path {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {path} is not a palisade spool (no schema found)")]
    NotASpool { path: PathBuf },
    #[error("spool {path} has schema version {found}, newer than the {supported} this build understands")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "spool {path} has schema version {found}; open it writable once to migrate to {supported}"
    )]
    SchemaTooOld {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("spool was opened read-only")]
    ReadOnly,
    #[error("records of {bytes} bytes cannot fit in a spool capped at {max_bytes} bytes")]
    TooLarge { bytes: u64, max_bytes: u64 },
    #[error("cannot encode audit event {id}: {source}")]
    Encode {
        id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("spool database error during {op}: {source}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl SpoolError {
    /// Whether retrying the same call later can succeed (a busy or full disk,
    /// a lock held elsewhere). `TooLarge`, `Encode`, `ReadOnly` and schema
    /// errors never go away by retrying; a writer must not loop on them.
    pub fn is_retryable(&self) -> bool {
        match self {
            SpoolError::Sqlite { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // SQLITE_BUSY, LOCKED, IOERR, FULL, CANTOPEN (primary codes).
                sqlx::Error::Database(db) => db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)),
                _ => false,
            },
            SpoolError::Io { .. } => true,
            SpoolError::InvalidOptions(_)
            | SpoolError::NotFound { .. }
            | SpoolError::NotASpool { .. }
            | SpoolError::SchemaTooNew { .. }
            | SpoolError::SchemaTooOld { .. }
            | SpoolError::ReadOnly
            | SpoolError::TooLarge { .. }
            | SpoolError::Encode { .. } => false,
        }
    }
}

fn sql(op: &'static str) -> impl FnOnce(sqlx::Error) -> SpoolError {
    move |source| SpoolError::Sqlite { op, source }
}

/// Handle to an open spool. Cheap to clone; all clones share one writer.
#[derive(Clone, Debug)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// `None` when opened read-only.
    writer: Option<SqlitePool>,
    reader: SqlitePool,
    max_bytes: u64,
}

/// One event encoded for storage.
struct EncodedRow {
    id: String,
    time_us: i64,
    kind: String,
    provider: Option<String>,
    model: Option<String>,
    app: Option<String>,
    decision: Option<String>,
    body: String,
}

impl EncodedRow {
    fn encode(ev: &AuditEvent) -> Result<Self, SpoolError> {
        let body =
            serde_json::to_string(ev).map_err(|source| SpoolError::Encode { id: ev.id, source })?;
        let ix = ev.interaction.as_ref();
        Ok(Self {
            id: ev.id.to_string(),
            time_us: ev.time.timestamp_micros(),
            kind: ev.kind.as_str().to_string(),
            provider: ix.map(|i| i.provider.clone()).filter(|p| !p.is_empty()),
            model: ix.and_then(|i| i.model.clone()),
            app: ev.app.as_ref().and_then(|a| a.name.clone()),
            decision: ix.map(|i| i.policy.decision.as_str().to_string()),
            body,
        })
    }

    fn size(&self) -> u64 {
        self.body.len() as u64 + ROW_OVERHEAD_BYTES
    }
}

// === impl Spool ===

impl Spool {
    /// Open (creating if needed) the spool at `path` for reading and writing.
    pub async fn open(path: &Path, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        if opts.max_bytes < MIN_MAX_BYTES {
            return Err(SpoolError::InvalidOptions(format!(
                "max_bytes {} is below the minimum of {MIN_MAX_BYTES}",
                opts.max_bytes
            )));
        }
        prepare_files(path)?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    // Only takes effect on a new file; lets `ack` give space back.
                    .auto_vacuum(SqliteAutoVacuum::Incremental)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string()),
            )
            .await
            .map_err(sql("open"))?;
        schema::migrate(&writer, path).await?;
        let reader = read_pool(base.read_only(true)).await?;
        debug!(path = %path.display(), max_bytes = opts.max_bytes, "Spool opened");
        Ok(Spool {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Some(writer),
                reader,
                max_bytes: opts.max_bytes,
            }),
        })
    }

    /// Open an existing spool without write access, e.g. for the CLI while
    /// the agent keeps writing to it.
    pub async fn open_read_only(path: &Path) -> Result<Spool, SpoolError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(SpoolError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("not a regular file"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(SpoolError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            .read_only(true);
        let reader = read_pool(opts).await?;
        schema::check_readable(&reader, path).await?;
        Ok(Spool {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: None,
                reader,
                max_bytes: DEFAULT_MAX_BYTES,
            }),
        })
    }

    /// The database file this spool lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The size cap in force (the default for read-only handles).
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Store one record. Durable once this returns `Ok`; a no-op if a record
    /// with the same id is already spooled.
    pub async fn append(&self, ev: &AuditEvent) -> Result<(), SpoolError> {
        self.append_batch(std::slice::from_ref(ev)).await
    }

    /// Store several records in one transaction: all or none.
    pub async fn append_batch(&self, evs: &[AuditEvent]) -> Result<(), SpoolError> {
        let writer = self.inner.writer.as_ref().ok_or(SpoolError::ReadOnly)?;
        let Some(first) = evs.first() else {
            return Ok(());
        };
        let rows = evs
            .iter()
            .map(EncodedRow::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let max_bytes = self.inner.max_bytes;
        let incoming: u64 = rows.iter().map(EncodedRow::size).sum();
        let marker_reserve =
            EncodedRow::encode(&drop_marker(first, u64::MAX, u64::MAX, max_bytes))?.size();
        if incoming + marker_reserve > max_bytes {
            return Err(SpoolError::TooLarge {
                bytes: incoming,
                max_bytes,
            });
        }

        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql("begin append"))?;
        // Rows are inserted many per statement: each statement is a round
        // trip to SQLite's worker thread, which dominated the proxy's cost.
        // `seq` is AUTOINCREMENT, so every new row's seq exceeds the old max.
        let old_max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("read max seq"))?;
        let mut inserted = 0;
        for chunk in rows.chunks(INSERT_ROWS_PER_STATEMENT) {
            inserted += insert_rows(&mut tx, chunk).await?.rows_affected();
        }
        let first_new_seq = (inserted > 0).then_some(old_max + 1);
        if let Some(first_new_seq) = first_new_seq {
            let bytes = meta_value(&mut tx, "bytes").await?;
            if bytes > max_bytes {
                make_room(
                    &mut tx,
                    first,
                    first_new_seq,
                    bytes,
                    max_bytes,
                    marker_reserve,
                )
                .await?;
            }
        }
        tx.commit().await.map_err(sql("commit append"))?;
        Ok(())
    }

    /// Up to `limit` records, oldest first. Nothing is removed.
    ///
    /// A row that no longer decodes (an incompatible upgrade, a damaged
    /// file) must not block the uploader forever: on a writable spool it is
    /// moved verbatim to the `rejected` table and a `spool.rejected` record
    /// reports it; a read-only handle skips it with a warning.
    pub async fn peek(&self, limit: usize) -> Result<Vec<AuditEvent>, SpoolError> {
        let rows = sqlx::query("SELECT seq, id, body FROM events ORDER BY seq LIMIT ?")
            .bind(clamp_limit(limit))
            .fetch_all(&self.inner.reader)
            .await
            .map_err(sql("peek"))?;
        let (events, bad) = decode_rows(&rows)?;
        if !bad.is_empty() {
            match &self.inner.writer {
                Some(writer) => quarantine(writer, &bad).await?,
                None => warn_skipped(&bad),
            }
        }
        Ok(events)
    }

    /// Delete the records the control plane acknowledged. Unknown ids are
    /// ignored. Returns how many records were deleted.
    pub async fn ack(&self, ids: &[Uuid]) -> Result<u64, SpoolError> {
        let writer = self.inner.writer.as_ref().ok_or(SpoolError::ReadOnly)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql("begin ack"))?;
        let mut deleted = 0;
        for chunk in ids.chunks(MAX_BINDS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM events WHERE id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id.to_string());
            }
            qb.push(")");
            deleted += qb
                .build()
                .execute(&mut *tx)
                .await
                .map_err(sql("ack"))?
                .rows_affected();
        }
        tx.commit().await.map_err(sql("commit ack"))?;
        if deleted > 0 {
            reclaim_space(writer).await?;
        }
        Ok(deleted)
    }

    /// Records matching `f`, oldest first. With a limit, the newest `limit`
    /// matches (still returned oldest first), like `tail`.
    /// Rows that no longer decode are skipped with a warning naming them.
    pub async fn query(&self, f: &EventFilter) -> Result<Vec<AuditEvent>, SpoolError> {
        let mut qb = filter::build_query(f);
        let rows = qb
            .build()
            .fetch_all(&self.inner.reader)
            .await
            .map_err(sql("query"))?;
        let (events, bad) = decode_rows(&rows)?;
        warn_skipped(&bad);
        Ok(events)
    }

    /// Record count, bytes held, the persistent counters and the file size.
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let rows = sqlx::query("SELECT key, value FROM meta")
            .fetch_all(&self.inner.reader)
            .await
            .map_err(sql("stats"))?;
        let mut stats = SpoolStats::default();
        for row in rows {
            let key: String = row.try_get(0).map_err(sql("stats"))?;
            let value: i64 = row.try_get(1).map_err(sql("stats"))?;
            let value = u64::try_from(value).unwrap_or(0);
            match key.as_str() {
                "count" => stats.count = value,
                "bytes" => stats.bytes = value,
                "dropped_total" => stats.dropped_total = value,
                "rejected_total" => stats.rejected_total = value,
                _ => {}
            }
        }
        let (pages, page_size) = page_stats(&self.inner.reader).await?;
        stats.file_bytes = u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0);
        Ok(stats)
    }

    /// Close the pools, checkpointing the WAL. Other clones become unusable.
    pub async fn close(&self) {
        if let Some(w) = &self.inner.writer {
            w.close().await;
        }
        self.inner.reader.close().await;
    }
}

async fn read_pool(opts: SqliteConnectOptions) -> Result<SqlitePool, SpoolError> {
    SqlitePoolOptions::new()
        .max_connections(READ_POOL_CONNECTIONS)
        .connect_with(opts)
        .await
        .map_err(sql("open reader"))
}

/// Create the parent directory (0700) and the database file (0600); tighten
/// an existing file that other users could read.
fn prepare_files(path: &Path) -> Result<(), SpoolError> {
    let io = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(parent).map_err(io)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format_args!("{:o}", mode & 0o777), "Spool file was readable by others; setting 0600");
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
    }
    drop(file);
    Ok(())
}

fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A stored row that failed to decode.
struct BadRow {
    seq: i64,
    id: String,
    error: String,
}

/// Decode `seq, id, body` rows, separating the ones that no longer decode.
fn decode_rows(
    rows: &[sqlx::sqlite::SqliteRow],
) -> Result<(Vec<AuditEvent>, Vec<BadRow>), SpoolError> {
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let seq: i64 = row.try_get("seq").map_err(sql("read row"))?;
        let id: String = row.try_get("id").map_err(sql("read row"))?;
        let body: String = row.try_get("body").map_err(sql("read row"))?;
        match serde_json::from_str(&body) {
            Ok(ev) => events.push(ev),
            Err(e) => bad.push(BadRow {
                seq,
                id,
                error: e.to_string(),
            }),
        }
    }
    Ok((events, bad))
}

fn warn_skipped(bad: &[BadRow]) {
    for b in bad {
        warn!(id = %b.id, error = %b.error, "Skipping spool record that cannot be decoded");
    }
}

/// Move undecodable rows to `rejected` and report each with a
/// `spool.rejected` record, in one transaction.
async fn quarantine(writer: &SqlitePool, bad: &[BadRow]) -> Result<(), SpoolError> {
    /// The envelope of a row whose full record no longer decodes, if that much does.
    #[derive(serde::Deserialize, Default)]
    struct Envelope {
        #[serde(default)]
        device: DeviceRef,
        #[serde(default)]
        user: UserRef,
    }
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin quarantine"))?;
    let now_us = chrono::Utc::now().timestamp_micros();
    for b in bad {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM events WHERE seq = ?")
            .bind(b.seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql("quarantine"))?;
        let Some(body) = body else { continue }; // acknowledged meanwhile
        sqlx::query(
            "INSERT INTO rejected (seq, id, rejected_at_us, error, body) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(b.seq)
        .bind(&b.id)
        .bind(now_us)
        .bind(&b.error)
        .bind(&body)
        .execute(&mut *tx)
        .await
        .map_err(sql("quarantine"))?;
        sqlx::query("DELETE FROM events WHERE seq = ?")
            .bind(b.seq)
            .execute(&mut *tx)
            .await
            .map_err(sql("quarantine"))?;
        sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'rejected_total'")
            .execute(&mut *tx)
            .await
            .map_err(sql("quarantine"))?;
        let env: Envelope = serde_json::from_str(&body).unwrap_or_default();
        let mut marker = AuditEvent::new(
            EventKind::from(REJECTED_KIND.to_string()),
            env.device,
            env.user,
        );
        marker.details =
            serde_json::json!({ "id": b.id, "error": b.error, "reason": "undecodable" });
        insert_rows(&mut tx, std::slice::from_ref(&EncodedRow::encode(&marker)?)).await?;
        warn!(id = %b.id, error = %b.error, "Quarantined spool record that cannot be decoded");
    }
    tx.commit().await.map_err(sql("commit quarantine"))
}

async fn page_stats(pool: &SqlitePool) -> Result<(i64, i64), SpoolError> {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await
        .map_err(sql("page count"))?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await
        .map_err(sql("page size"))?;
    Ok((pages, size))
}

/// Give free pages back to the OS once enough of the file is free (after
/// the uploader drained a backlog). Needs `auto_vacuum = INCREMENTAL`, which
/// only files created by this crate have; elsewhere it is a no-op.
async fn reclaim_space(writer: &SqlitePool) -> Result<(), SpoolError> {
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(writer)
        .await
        .map_err(sql("freelist"))?;
    let (pages, _) = page_stats(writer).await?;
    if free >= VACUUM_MIN_FREE_PAGES && free.saturating_mul(4) >= pages {
        sqlx::raw_sql("PRAGMA incremental_vacuum")
            .execute(writer)
            .await
            .map_err(sql("incremental vacuum"))?;
        debug!(freed_pages = free, "Spool gave free pages back");
    }
    Ok(())
}

/// Rows per multi-row INSERT (9 bound values each, far below SQLite's limit).
const INSERT_ROWS_PER_STATEMENT: usize = 64;

async fn insert_rows(
    tx: &mut sqlx::SqliteConnection,
    rows: &[EncodedRow],
) -> Result<sqlx::sqlite::SqliteQueryResult, SpoolError> {
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO events (id, time_us, kind, provider, model, app, decision, size, body) ",
    );
    q.push_values(rows, |mut b, row| {
        b.push_bind(&row.id)
            .push_bind(row.time_us)
            .push_bind(&row.kind)
            .push_bind(&row.provider)
            .push_bind(&row.model)
            .push_bind(&row.app)
            .push_bind(&row.decision)
            .push_bind(i64::try_from(row.size()).unwrap_or(i64::MAX))
            .push_bind(&row.body);
    });
    q.push(" ON CONFLICT(id) DO NOTHING");
    q.build().execute(&mut *tx).await.map_err(sql("insert"))
}

async fn meta_value(tx: &mut sqlx::SqliteConnection, key: &'static str) -> Result<u64, SpoolError> {
    let v: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("read meta"))?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// The `spool.dropped` record reporting `dropped` records lost to the cap.
fn drop_marker(like: &AuditEvent, dropped: u64, dropped_total: u64, max_bytes: u64) -> AuditEvent {
    let mut ev = AuditEvent::new(
        EventKind::SpoolDropped,
        like.device.clone(),
        like.user.clone(),
    );
    ev.details = serde_json::json!({
        "dropped": dropped,
        "reason": DROP_REASON_SIZE_CAP,
        "dropped_total": dropped_total,
        "max_bytes": max_bytes,
    });
    ev
}

/// Delete the oldest rows older than `first_new_seq` until the spool is at
/// its low-water mark (leaving room for the marker), count them, and append
/// the `spool.dropped` marker. Runs inside the append transaction.
async fn make_room(
    tx: &mut sqlx::SqliteConnection,
    like: &AuditEvent,
    first_new_seq: i64,
    bytes: u64,
    max_bytes: u64,
    marker_reserve: u64,
) -> Result<(), SpoolError> {
    let target = (max_bytes / 100 * LOW_WATER_PERCENT).saturating_sub(marker_reserve);
    let need = bytes.saturating_sub(target);
    let mut freed = 0u64;
    let mut cutoff = None;
    let mut after = i64::MIN;
    'scan: while freed < need {
        let page = sqlx::query(
            "SELECT seq, size FROM events WHERE seq > ? AND seq < ? ORDER BY seq LIMIT 256",
        )
        .bind(after)
        .bind(first_new_seq)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("scan oldest"))?;
        if page.is_empty() {
            break;
        }
        for row in page {
            let seq: i64 = row.try_get(0).map_err(sql("scan oldest"))?;
            let size: i64 = row.try_get(1).map_err(sql("scan oldest"))?;
            freed += u64::try_from(size).unwrap_or(0);
            cutoff = Some(seq);
            after = seq;
            if freed >= need {
                break 'scan;
            }
        }
    }
    let Some(cutoff) = cutoff else { return Ok(()) };
    // Older markers dropped in turn are not audit records lost: the new
    // marker's cumulative `dropped_total` supersedes them.
    let markers: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE seq <= ? AND kind = ?")
            .bind(cutoff)
            .bind(EventKind::SpoolDropped.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("count old markers"))?;
    let deleted = sqlx::query("DELETE FROM events WHERE seq <= ?")
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(sql("drop oldest"))?
        .rows_affected();
    let dropped = deleted.saturating_sub(u64::try_from(markers).unwrap_or(0));
    sqlx::query("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'")
        .bind(i64::try_from(dropped).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(sql("count dropped"))?;
    let dropped_total = meta_value(tx, "dropped_total").await?;
    let marker = drop_marker(like, dropped, dropped_total, max_bytes);
    insert_rows(tx, std::slice::from_ref(&EncodedRow::encode(&marker)?)).await?;
    warn!(
        dropped,
        dropped_total, max_bytes, "Spool full: dropped oldest records"
    );
    Ok(())
}
