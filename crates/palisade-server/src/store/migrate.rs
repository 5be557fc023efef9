//! Embedded migrations for each backend, fed to sqlx's `Migrator` (which
//! records applied versions and, on PostgreSQL, takes an advisory lock so two
//! servers starting together do not migrate twice).
//!
//! Migrations are append-only: never edit a released file, add a new one.

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;

/// `(version, description, sql)`.
type Embedded = &'static [(i64, &'static str, &'static str)];

pub(super) const SQLITE: Embedded = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "catalog",
        include_str!("../../migrations/sqlite/0002_catalog.sql"),
    ),
    (
        3,
        "admin_audit",
        include_str!("../../migrations/sqlite/0003_admin_audit.sql"),
    ),
    (
        4,
        "search",
        include_str!("../../migrations/sqlite/0004_search.sql"),
    ),
    (
        5,
        "chain_retention",
        include_str!("../../migrations/sqlite/0005_chain_retention.sql"),
    ),
    (
        6,
        "forward_cursors",
        include_str!("../../migrations/sqlite/0006_forward_cursors.sql"),
    ),
    (
        7,
        "sessions",
        include_str!("../../migrations/sqlite/0007_sessions.sql"),
    ),
];
pub(super) const POSTGRES: Embedded = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "catalog",
        include_str!("../../migrations/postgres/0002_catalog.sql"),
    ),
    (
        3,
        "admin_audit",
        include_str!("../../migrations/postgres/0003_admin_audit.sql"),
    ),
    (
        4,
        "search",
        include_str!("../../migrations/postgres/0004_search.sql"),
    ),
    (
        5,
        "chain_retention",
        include_str!("../../migrations/postgres/0005_chain_retention.sql"),
    ),
    (
        6,
        "forward_cursors",
        include_str!("../../migrations/postgres/0006_forward_cursors.sql"),
    ),
    (
        7,
        "sessions",
        include_str!("../../migrations/postgres/0007_sessions.sql"),
    ),
    (
        8,
        "time_seq_ingest",
        include_str!("../../migrations/postgres/0008_time_seq_ingest.sql"),
    ),
];

#[derive(Debug)]
struct Source(Embedded);

impl MigrationSource<'static> for Source {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(super) async fn migrator(m: Embedded) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(m)).await
}
