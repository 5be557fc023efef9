//! The fleet catalog: one entry per distinct app or MCP server, whatever
//! the number of devices and client apps it appears on, with the admin's
//! decision (pending, approved, denied).
//!
//! An entry is keyed by `(kind, item_id)`: the inventory kind (`app`,
//! `mcp_server`) and the id the agent reports (app id, MCP fingerprint), so
//! the same MCP server in three apps on 500 devices is ONE entry. Which
//! devices hold an item is read from the `inventory` table, which full
//! snapshots keep current; snapshots never delete catalog entries, so a
//! decision outlives an item's presence on any device. Revoked devices do
//! not count.
//!
//! A decision and the policy version carrying it are written in ONE
//! transaction ([`Store::decide_catalog`]), so the catalog status and the
//! published policy cannot disagree after a decision. This module must never
//! interpret the policy document itself: the caller passes the edit.

use super::backend::{PgBackend, SqliteBackend};
use super::{from_ms, now_ms, AuditSeal, InventoryRecord, Store, StoreError, INSERT_CHUNK_ROWS};
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};
use std::collections::BTreeMap;

/// Names listed per entry in [`CatalogDetail::names`] (newest first).
pub const MAX_NAMES_PER_ITEM: i64 = 50;

/// Kinds of inventory item the catalog governs (other kinds are stored in
/// the inventory but have no decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CatalogKind {
    App,
    McpServer,
}

/// An admin's status for a catalog entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogStatus {
    Pending,
    Approved,
    Denied,
}

/// One catalog entry, with how many live devices currently report it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub kind: CatalogKind,
    pub item_id: String,
    /// The newest non-empty name reported.
    pub name: String,
    pub status: CatalogStatus,
    pub note: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub device_count: u64,
}

/// A device an entry is on, with what that device reported about it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogDevice {
    pub device_id: String,
    pub hostname: String,
    pub os: String,
    pub owner_email: Option<String>,
    /// The name this device reports.
    pub name: String,
    /// The inventory details JSON object (value-free by contract: for MCP
    /// servers, clients and config paths; never env or header values).
    pub details: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// An entry with its names and (up to a limit) its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogDetail {
    pub entry: CatalogEntry,
    /// Every name seen, newest first (at most [`MAX_NAMES_PER_ITEM`]).
    pub names: Vec<String>,
    pub devices: Vec<CatalogDevice>,
}

/// Filter for [`Store::list_catalog`]; `None` means any. Newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogFilter {
    pub kind: Option<CatalogKind>,
    pub status: Option<CatalogStatus>,
    pub limit: u32,
    pub offset: u64,
}

/// What [`Store::decide_catalog`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DecideOutcome {
    /// No such entry; nothing changed.
    NotFound,
    /// The entry already had this status and the newest policy already
    /// carries it: nothing written. `policy_version` is the newest version.
    Unchanged {
        entry: CatalogEntry,
        policy_version: u64,
    },
    /// The status was recorded. `published` says whether a new policy
    /// version (`policy_version`) was written; when false, the newest policy
    /// already carried the decision.
    Decided {
        entry: CatalogEntry,
        policy_version: u64,
        published: bool,
    },
}

/// What a decision did, as its admin audit entry (sealed into the
/// decision's transaction) tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionSummary {
    /// The entry's display name.
    pub name: String,
    /// The newest policy version after the decision.
    pub policy_version: u64,
    /// Whether the decision wrote that version.
    pub published: bool,
    /// Whether anything was written (false: status and policy already held it).
    pub changed: bool,
}

/// Rewrites the newest policy document (`None`: no policy stored yet) to
/// carry a decision. Returns `Ok(None)` when it already does, `Err` with a
/// reason when the stored document cannot be used. May be called more than
/// once (a concurrent publish makes the store retry on the newer document).
pub type PolicyEdit<'a> = dyn Fn(Option<&str>) -> Result<Option<String>, String> + Send + Sync + 'a;

// === impl CatalogKind ===

impl CatalogKind {
    pub const ALL: [CatalogKind; 2] = [CatalogKind::App, CatalogKind::McpServer];

    /// The inventory kind string (`palisade_proto::INVENTORY_KIND_*`).
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogKind::App => palisade_proto::INVENTORY_KIND_APP,
            CatalogKind::McpServer => palisade_proto::INVENTORY_KIND_MCP_SERVER,
        }
    }

    /// The catalog kind of an inventory kind; `None` for kinds not governed.
    pub fn from_inventory_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

// === impl CatalogStatus ===

impl CatalogStatus {
    pub const ALL: [CatalogStatus; 3] = [
        CatalogStatus::Pending,
        CatalogStatus::Approved,
        CatalogStatus::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CatalogStatus::Pending => "pending",
            CatalogStatus::Approved => "approved",
            CatalogStatus::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn from_db(s: &str) -> Result<Self, StoreError> {
        Self::parse(s).ok_or_else(|| StoreError::Corrupt(format!("catalog status {s:?}")))
    }
}

fn kind_from_db(s: &str) -> Result<CatalogKind, StoreError> {
    CatalogKind::from_inventory_kind(s)
        .ok_or_else(|| StoreError::Corrupt(format!("catalog kind {s:?}")))
}

fn count(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}")))
}

/// The governed items of a report, one per key (the last one wins), and
/// their non-empty names.
#[allow(clippy::type_complexity)]
fn catalog_rows(
    items: &[InventoryRecord],
) -> (
    Vec<(&'static str, &str, &str)>,
    Vec<(&'static str, &str, &str)>,
) {
    let mut entries: BTreeMap<(&'static str, &str), &str> = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    for i in items {
        let Some(kind) = CatalogKind::from_inventory_kind(&i.kind) else {
            continue;
        };
        entries.insert((kind.as_str(), i.item_id.as_str()), i.name.as_str());
        if !i.name.is_empty() {
            names.insert((kind.as_str(), i.item_id.as_str(), i.name.as_str()));
        }
    }
    (
        entries.into_iter().map(|((k, id), n)| (k, id, n)).collect(),
        names.into_iter().collect(),
    )
}

// === impl Store ===

impl Store {
    /// Store a device's inventory report and fold it into the catalog: new
    /// items start pending, known items get their name and last seen time
    /// updated. With `full_snapshot`, items not in `items` are no longer on
    /// the device (their catalog entries and decisions stay).
    pub async fn report_inventory(
        &self,
        device_id: &str,
        items: &[InventoryRecord],
        full_snapshot: bool,
    ) -> Result<u32, StoreError> {
        // Catalog first: a device row never points at a missing entry. Both
        // steps are idempotent, so a retried report repairs a partial one.
        self.record_catalog(items).await?;
        self.put_inventory(device_id, items, full_snapshot).await
    }

    /// Upsert the catalog entries for the governed items in `items`;
    /// returns how many distinct entries the report touched.
    pub async fn record_catalog(&self, items: &[InventoryRecord]) -> Result<u32, StoreError> {
        match self {
            Store::Sqlite(b) => b.record_catalog(items).await,
            Store::Postgres(b) => b.record_catalog(items).await,
        }
    }

    pub async fn list_catalog(
        &self,
        filter: &CatalogFilter,
    ) -> Result<Vec<CatalogEntry>, StoreError> {
        match self {
            Store::Sqlite(b) => b.list_catalog(filter).await,
            Store::Postgres(b) => b.list_catalog(filter).await,
        }
    }

    /// One entry with its names and up to `device_limit` devices; `None`
    /// when unknown.
    pub async fn catalog_detail(
        &self,
        kind: CatalogKind,
        item_id: &str,
        device_limit: u32,
    ) -> Result<Option<CatalogDetail>, StoreError> {
        match self {
            Store::Sqlite(b) => b.catalog_detail(kind, item_id, device_limit).await,
            Store::Postgres(b) => b.catalog_detail(kind, item_id, device_limit).await,
        }
    }

    /// Set an entry's status and, in the same transaction, publish a new
    /// policy version made by `edit` from the newest one (when `edit` says
    /// it changes anything). Setting the status an entry already has while
    /// the policy already carries it writes nothing ([`DecideOutcome::Unchanged`]).
    /// Like [`Store::insert_policy`], the new version is announced to other
    /// processes; the caller refreshes its own policy bus.
    pub async fn decide_catalog(
        &self,
        kind: CatalogKind,
        item_id: &str,
        status: CatalogStatus,
        note: Option<&str>,
        actor: &str,
        edit: &PolicyEdit<'_>,
    ) -> Result<DecideOutcome, StoreError> {
        match self {
            Store::Sqlite(b) => {
                b.decide_catalog(kind, item_id, status, note, actor, edit, None)
                    .await
            }
            Store::Postgres(b) => {
                b.decide_catalog(kind, item_id, status, note, actor, edit, None)
                    .await
            }
        }
    }

    /// [`Store::decide_catalog`] with its admin audit entry sealed into the
    /// decision's transaction (an unchanged decision is audited too; an
    /// unknown entry is not: nothing happened to it).
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_catalog_audited(
        &self,
        kind: CatalogKind,
        item_id: &str,
        status: CatalogStatus,
        note: Option<&str>,
        actor: &str,
        edit: &PolicyEdit<'_>,
        seal: &AuditSeal<'_, DecisionSummary>,
    ) -> Result<DecideOutcome, StoreError> {
        match self {
            Store::Sqlite(b) => {
                b.decide_catalog(kind, item_id, status, note, actor, edit, Some(seal))
                    .await
            }
            Store::Postgres(b) => {
                b.decide_catalog(kind, item_id, status, note, actor, edit, Some(seal))
                    .await
            }
        }
    }
}

const ENTRY_SELECT: &str = "SELECT c.kind, c.item_id, c.name, c.status, c.note, c.decided_by, \
     c.decided_at, c.first_seen, c.last_seen, \
     (SELECT COUNT(*) FROM inventory i JOIN devices d ON d.id = i.device_id \
      WHERE i.kind = c.kind AND i.item_id = c.item_id AND d.revoked_at IS NULL) AS device_count \
     FROM catalog_items c";

/// `$lock_policies`: a statement run first in a decision's transaction so
/// that no other publish can take the next version before it commits (PostgreSQL:
/// a table lock that also makes plain `insert_policy` wait; SQLite: none, its
/// single in-process writer already serialises). `$for_update`: the row-lock
/// suffix for reading the entry being decided (PostgreSQL only).
macro_rules! catalog_impl {
    ($backend:ty, $db:ty, $lock_policies:literal, $for_update:literal) => {
        impl $backend {
            fn catalog_entry_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<CatalogEntry, StoreError> {
                Ok(CatalogEntry {
                    kind: kind_from_db(row.try_get("kind")?)?,
                    item_id: row.try_get("item_id")?,
                    name: row.try_get("name")?,
                    status: CatalogStatus::from_db(row.try_get("status")?)?,
                    note: row.try_get("note")?,
                    decided_by: row.try_get("decided_by")?,
                    decided_at: row
                        .try_get::<Option<i64>, _>("decided_at")?
                        .map(from_ms)
                        .transpose()?,
                    first_seen: from_ms(row.try_get("first_seen")?)?,
                    last_seen: from_ms(row.try_get("last_seen")?)?,
                    device_count: count(row.try_get("device_count")?)?,
                })
            }

            pub(super) async fn record_catalog(
                &self,
                items: &[InventoryRecord],
            ) -> Result<u32, StoreError> {
                let (entries, names) = catalog_rows(items);
                if entries.is_empty() {
                    return Ok(0);
                }
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                for chunk in entries.chunks(INSERT_CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO catalog_items (kind, item_id, name, first_seen, last_seen) ",
                    );
                    qb.push_values(chunk, |mut b, (kind, id, name)| {
                        b.push_bind(*kind)
                            .push_bind(*id)
                            .push_bind(*name)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.push(
                        " ON CONFLICT (kind, item_id) DO UPDATE SET \
                         name = CASE WHEN excluded.name <> '' THEN excluded.name ELSE catalog_items.name END, \
                         last_seen = excluded.last_seen",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                for chunk in names.chunks(INSERT_CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO catalog_names (kind, item_id, name, first_seen, last_seen) ",
                    );
                    qb.push_values(chunk, |mut b, (kind, id, name)| {
                        b.push_bind(*kind)
                            .push_bind(*id)
                            .push_bind(*name)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.push(
                        " ON CONFLICT (kind, item_id, name) DO UPDATE SET last_seen = excluded.last_seen",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(u32::try_from(entries.len()).unwrap_or(u32::MAX))
            }

            pub(super) async fn list_catalog(
                &self,
                f: &CatalogFilter,
            ) -> Result<Vec<CatalogEntry>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(ENTRY_SELECT);
                qb.push(" WHERE 1 = 1");
                if let Some(k) = f.kind {
                    qb.push(" AND c.kind = ").push_bind(k.as_str());
                }
                if let Some(s) = f.status {
                    qb.push(" AND c.status = ").push_bind(s.as_str());
                }
                qb.push(" ORDER BY c.last_seen DESC, c.kind, c.item_id LIMIT ")
                    .push_bind(i64::from(f.limit))
                    .push(" OFFSET ")
                    .push_bind(i64::try_from(f.offset).unwrap_or(i64::MAX));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(Self::catalog_entry_from_row).collect()
            }

            async fn catalog_entry(
                &self,
                kind: CatalogKind,
                item_id: &str,
            ) -> Result<Option<CatalogEntry>, StoreError> {
                let row = sqlx::query(&format!(
                    "{ENTRY_SELECT} WHERE c.kind = $1 AND c.item_id = $2"
                ))
                .bind(kind.as_str())
                .bind(item_id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(Self::catalog_entry_from_row).transpose()
            }

            pub(super) async fn catalog_detail(
                &self,
                kind: CatalogKind,
                item_id: &str,
                device_limit: u32,
            ) -> Result<Option<CatalogDetail>, StoreError> {
                let Some(entry) = self.catalog_entry(kind, item_id).await? else {
                    return Ok(None);
                };
                let names = sqlx::query(
                    "SELECT name FROM catalog_names WHERE kind = $1 AND item_id = $2 \
                     ORDER BY last_seen DESC, name LIMIT $3",
                )
                .bind(kind.as_str())
                .bind(item_id)
                .bind(MAX_NAMES_PER_ITEM)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("name"))
                .collect::<Result<Vec<_>, _>>()?;
                let rows = sqlx::query(
                    "SELECT i.device_id, d.hostname, d.os, d.owner_email, i.name, i.details, \
                     i.first_seen, i.last_seen \
                     FROM inventory i JOIN devices d ON d.id = i.device_id \
                     WHERE i.kind = $1 AND i.item_id = $2 AND d.revoked_at IS NULL \
                     ORDER BY i.device_id LIMIT $3",
                )
                .bind(kind.as_str())
                .bind(item_id)
                .bind(i64::from(device_limit))
                .fetch_all(&self.pool)
                .await?;
                let devices = rows
                    .iter()
                    .map(|r| {
                        Ok(CatalogDevice {
                            device_id: r.try_get("device_id")?,
                            hostname: r.try_get("hostname")?,
                            os: r.try_get("os")?,
                            owner_email: r.try_get("owner_email")?,
                            name: r.try_get("name")?,
                            details: r.try_get("details")?,
                            first_seen: from_ms(r.try_get("first_seen")?)?,
                            last_seen: from_ms(r.try_get("last_seen")?)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(Some(CatalogDetail {
                    entry,
                    names,
                    devices,
                }))
            }

            #[allow(clippy::too_many_arguments)]
            pub(super) async fn decide_catalog(
                &self,
                kind: CatalogKind,
                item_id: &str,
                status: CatalogStatus,
                note: Option<&str>,
                actor: &str,
                edit: &PolicyEdit<'_>,
                seal: Option<&AuditSeal<'_, DecisionSummary>>,
            ) -> Result<DecideOutcome, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                // A publish that slipped in anyway (e.g. another process's
                // `insert_policy` on SQLite) takes the same next version; the
                // loser re-reads the newer document and retries.
                let mut attempt = 0;
                let outcome = loop {
                    attempt += 1;
                    match self
                        .try_decide_catalog(kind, item_id, status, note, actor, edit, seal)
                        .await
                    {
                        Err(StoreError::Database(sqlx::Error::Database(e)))
                            if e.is_unique_violation() && attempt < 5 =>
                        {
                            continue
                        }
                        other => break other?,
                    }
                };
                let Some((policy_version, published, changed)) = outcome else {
                    return Ok(DecideOutcome::NotFound);
                };
                let entry = self
                    .catalog_entry(kind, item_id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("catalog entry vanished".into()))?;
                Ok(if changed {
                    DecideOutcome::Decided {
                        entry,
                        policy_version,
                        published,
                    }
                } else {
                    DecideOutcome::Unchanged {
                        entry,
                        policy_version,
                    }
                })
            }

            /// `None`: no such entry. Otherwise (newest policy version,
            /// whether this call published it, whether anything changed).
            #[allow(clippy::too_many_arguments)]
            async fn try_decide_catalog(
                &self,
                kind: CatalogKind,
                item_id: &str,
                status: CatalogStatus,
                note: Option<&str>,
                actor: &str,
                edit: &PolicyEdit<'_>,
                seal: Option<&AuditSeal<'_, DecisionSummary>>,
            ) -> Result<Option<(u64, bool, bool)>, StoreError> {
                let mut tx = self.pool.begin().await?;
                if !$lock_policies.is_empty() {
                    sqlx::query($lock_policies).execute(&mut *tx).await?;
                }
                let row = sqlx::query(concat!(
                    "SELECT status, name FROM catalog_items WHERE kind = $1 AND item_id = $2",
                    $for_update
                ))
                .bind(kind.as_str())
                .bind(item_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let current = CatalogStatus::from_db(row.try_get("status")?)?;
                let name: String = row.try_get("name")?;
                let latest = sqlx::query(
                    "SELECT version, document FROM policies ORDER BY version DESC LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let (version, document) = match latest {
                    Some(r) => (
                        count(r.try_get("version")?)?,
                        Some(r.try_get::<String, _>("document")?),
                    ),
                    None => (0, None),
                };
                let new_document = edit(document.as_deref()).map_err(|e| {
                    StoreError::Corrupt(format!("policy version {version}: {e}"))
                })?;
                if current == status && new_document.is_none() {
                    let summary = DecisionSummary { name, policy_version: version, published: false, changed: false };
                    Self::seal_audit_in(&mut tx, seal, &summary).await?;
                    tx.commit().await?;
                    return Ok(Some((version, false, false)));
                }
                let mut policy_version = version;
                let published = new_document.is_some();
                if let Some(doc) = new_document {
                    policy_version = version + 1;
                    sqlx::query(
                        "INSERT INTO policies (version, document, created_at, author) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(i64::try_from(policy_version).unwrap_or(i64::MAX))
                    .bind(doc)
                    .bind(now_ms())
                    .bind(actor)
                    .execute(&mut *tx)
                    .await?;
                    Self::notify_policy(&mut tx, policy_version).await?;
                }
                sqlx::query(
                    "UPDATE catalog_items SET status = $1, note = $2, decided_by = $3, decided_at = $4 \
                     WHERE kind = $5 AND item_id = $6",
                )
                .bind(status.as_str())
                .bind(note)
                .bind(actor)
                .bind(now_ms())
                .bind(kind.as_str())
                .bind(item_id)
                .execute(&mut *tx)
                .await?;
                let summary = DecisionSummary { name, policy_version, published, changed: true };
                Self::seal_audit_in(&mut tx, seal, &summary).await?;
                tx.commit().await?;
                Ok(Some((policy_version, published, true)))
            }
        }
    };
}

catalog_impl!(SqliteBackend, sqlx::Sqlite, "", "");
catalog_impl!(
    PgBackend,
    sqlx::Postgres,
    "LOCK TABLE policies IN SHARE ROW EXCLUSIVE MODE",
    " FOR UPDATE"
);

#[cfg(test)]
mod tests;
