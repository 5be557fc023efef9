//! The spool's schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Migrations only ever append to [`MIGRATIONS`]; an applied step is never
//! edited. This module must never open a file written by a newer schema.

use crate::{sql, SpoolError};
use sqlx::SqlitePool;
use std::path::Path;

/// Ordered migration steps; step `i` moves the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1: events with indexed filter columns, counters kept by triggers so
    // the size cap never needs a full-table SUM, and the rejected-row table.
    r#"
    CREATE TABLE events (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        id       TEXT    NOT NULL UNIQUE,
        time_us  INTEGER NOT NULL,
        kind     TEXT    NOT NULL,
        provider TEXT,
        model    TEXT,
        app      TEXT,
        decision TEXT,
        size     INTEGER NOT NULL,
        body     TEXT    NOT NULL
    );
    CREATE INDEX events_time     ON events (time_us);
    CREATE INDEX events_kind     ON events (kind, time_us);
    CREATE INDEX events_provider ON events (provider COLLATE NOCASE, time_us);
    CREATE INDEX events_model    ON events (model COLLATE NOCASE, time_us);
    CREATE INDEX events_app      ON events (app COLLATE NOCASE, time_us);
    CREATE INDEX events_decision ON events (decision, time_us);
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('count', 0), ('bytes', 0), ('dropped_total', 0), ('rejected_total', 0);
    -- Rows whose JSON no longer decodes (e.g. after an incompatible upgrade),
    -- moved aside verbatim so they neither block the uploader nor vanish.
    CREATE TABLE rejected (
        seq            INTEGER PRIMARY KEY,
        id             TEXT    NOT NULL,
        rejected_at_us INTEGER NOT NULL,
        error          TEXT    NOT NULL,
        body           TEXT    NOT NULL
    );
    CREATE TRIGGER events_counted_insert AFTER INSERT ON events BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'count';
        UPDATE meta SET value = value + NEW.size WHERE key = 'bytes';
    END;
    CREATE TRIGGER events_counted_delete AFTER DELETE ON events BEGIN
        UPDATE meta SET value = value - 1 WHERE key = 'count';
        UPDATE meta SET value = value - OLD.size WHERE key = 'bytes';
    END;
    "#,
    // v2: only `time_us` keeps an index. The per-column filter indexes were
    // maintained on every append and every ack (the proxy's hottest write)
    // for `palisade events` filters, which a scan answers: the spool is a
    // drained outbox (measured: a filter matching nothing scanned 250k
    // rows, 1 GB, in 1.1 s with the file cached; a common value answers a
    // page at once).
    r#"
    DROP INDEX events_kind;
    DROP INDEX events_provider;
    DROP INDEX events_model;
    DROP INDEX events_app;
    DROP INDEX events_decision;
    "#,
];

/// The schema version this build writes and reads.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

async fn user_version(conn: &mut sqlx::SqliteConnection) -> Result<i64, SpoolError> {
    sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql("read schema version"))
}

/// Bring the database up to [`CURRENT_VERSION`], one transaction per step.
pub(crate) async fn migrate(writer: &SqlitePool, path: &Path) -> Result<(), SpoolError> {
    loop {
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql("begin migration"))?;
        let found = user_version(&mut tx).await?;
        if found > CURRENT_VERSION {
            return Err(SpoolError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                supported: CURRENT_VERSION,
            });
        }
        let Some(step) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
            return Ok(());
        };
        sqlx::raw_sql(step)
            .execute(&mut *tx)
            .await
            .map_err(sql("migrate"))?;
        // user_version takes no bound parameters; the value is our own integer.
        sqlx::raw_sql(&format!("PRAGMA user_version = {}", found + 1))
            .execute(&mut *tx)
            .await
            .map_err(sql("migrate"))?;
        tx.commit().await.map_err(sql("commit migration"))?;
        tracing::info!(path = %path.display(), version = found + 1, "Spool schema migrated");
    }
}

/// Check that a spool opened read-only has exactly the schema this build reads.
pub(crate) async fn check_readable(reader: &SqlitePool, path: &Path) -> Result<(), SpoolError> {
    let mut conn = reader.acquire().await.map_err(sql("open reader"))?;
    let found = user_version(&mut conn).await?;
    let path = path.to_path_buf();
    match found {
        0 => Err(SpoolError::NotASpool { path }),
        v if v > CURRENT_VERSION => Err(SpoolError::SchemaTooNew {
            path,
            found,
            supported: CURRENT_VERSION,
        }),
        v if v < CURRENT_VERSION => Err(SpoolError::SchemaTooOld {
            path,
            found,
            supported: CURRENT_VERSION,
        }),
        _ => Ok(()),
    }
}
