//! The two backends. Connection setup differs (SQLite: WAL, synchronous=FULL,
//! busy timeout; PostgreSQL: optional schema, LISTEN/NOTIFY); every query is
//! shared and generated for both by `backend_impl!`, so the semantics cannot
//! drift. Must never build SQL from untrusted strings: values are always bound.

use super::chain::Link;
use super::{
    from_ms, migrate, now_ms, DeviceAuth, DeviceRecord, Enrolled, EventFilter, InventoryRecord,
    AuditSeal, NewEvent, StoreError, StoredEvent, StoredPolicy, TextQuery, TokenProblem, UsageGroup,
    UsageQuery, UsageRow, INSERT_CHUNK_ROWS, POLICY_CHANNEL, SQLITE_BUSY_TIMEOUT,
};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use tracing::info;
use uuid::Uuid;

/// One fresh, linked event on its way into `events`.
pub(super) struct EventRow<'a> {
    pub device_id: &'a str,
    pub received: i64,
    pub event: &'a NewEvent,
    pub link: Link,
    /// PostgreSQL: the precomputed `search_tsv` text (`Some(None)`: the event
    /// has no text); `None`: not precomputed, the INSERT tokenises.
    pub tsv: Option<Option<&'a str>>,
}

/// The columns every backend's event INSERT writes, in bind order.
const EVENT_COLUMNS: &str = "id, device_id, time, kind, provider, model, app, decision, json, received_at, \
     chain_pos, chain_prev, chain_hash, content_digest, \
     os_user, user_email, team, input_tokens, output_tokens, \
     cached_input_tokens, reasoning_tokens, cost_usd";

/// Rows per PostgreSQL event INSERT: its columns go as arrays (`unnest`),
/// so the statement has 24 parameters however many rows it carries.
const PG_INSERT_CHUNK_ROWS: usize = 4096;

#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pub(super) pool: SqlitePool,
    /// SQLite has one writer at a time. Queueing writers here (FIFO) instead
    /// of in SQLite's busy handler (which is not fair) keeps a burst of
    /// concurrent batches from timing out; the busy timeout then only covers
    /// writers outside this process.
    pub(super) write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set once the writer task runs; ingest goes through it (group commit).
    group: Option<super::group::GroupCommitter>,
}

/// A chunk of [`EventRow`]s as one array per column (PostgreSQL `unnest`).
#[derive(Default)]
struct PgEventColumns<'a> {
    id: Vec<Uuid>,
    device_id: Vec<&'a str>,
    time: Vec<i64>,
    kind: Vec<&'a str>,
    provider: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    app: Vec<Option<&'a str>>,
    decision: Vec<Option<&'a str>>,
    json: Vec<&'a str>,
    received: Vec<i64>,
    pos: Vec<i64>,
    prev: Vec<&'a str>,
    hash: Vec<&'a str>,
    content_digest: Vec<&'a str>,
    os_user: Vec<Option<&'a str>>,
    user_email: Vec<Option<&'a str>>,
    team: Vec<Option<&'a str>>,
    input_tokens: Vec<Option<i64>>,
    output_tokens: Vec<Option<i64>>,
    cached_input_tokens: Vec<Option<i64>>,
    reasoning_tokens: Vec<Option<i64>>,
    cost_usd: Vec<Option<f64>>,
    tsv: Vec<Option<&'a str>>,
    search_text: Vec<Option<&'a str>>,
}

impl<'a> PgEventColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        let mut c = Self::default();
        c.id.reserve(n);
        c.json.reserve(n);
        c
    }

    fn push(&mut self, r: &'a EventRow<'a>) {
        let e = r.event;
        self.id.push(e.id);
        self.device_id.push(r.device_id);
        self.time.push(e.time.timestamp_millis());
        self.kind.push(&e.kind);
        self.provider.push(e.provider.as_deref());
        self.model.push(e.model.as_deref());
        self.app.push(e.app.as_deref());
        self.decision.push(e.decision.as_deref());
        self.json.push(&e.json);
        self.received.push(r.received);
        self.pos.push(r.link.pos);
        self.prev.push(&r.link.prev);
        self.hash.push(&r.link.hash);
        self.content_digest.push(&r.link.content_digest);
        self.os_user.push(e.os_user.as_deref());
        self.user_email.push(e.user_email.as_deref());
        self.team.push(e.team.as_deref());
        self.input_tokens.push(e.usage.input_tokens);
        self.output_tokens.push(e.usage.output_tokens);
        self.cached_input_tokens.push(e.usage.cached_input_tokens);
        self.reasoning_tokens.push(e.usage.reasoning_tokens);
        self.cost_usd.push(e.usage.cost_usd);
        // Precomputed tsvector text, or the raw text for the INSERT to tokenise.
        let (tsv, text) = match r.tsv {
            Some(t) => (t, None),
            None => (None, e.search_text.as_deref()),
        };
        self.tsv.push(tsv);
        self.search_text.push(text);
    }
}

#[derive(Clone)]
pub struct PgBackend {
    pub(super) pool: PgPool,
    /// Holds the password: never Debug-printed.
    opts: PgConnectOptions,
    /// The group committer's own connection, so it never queues behind
    /// callers that hold pool connections (they tokenise on them).
    writer: PgPool,
    /// Set once the writer task runs; ingest goes through it (group commit).
    group: Option<super::group::GroupCommitter>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("host", &self.opts.get_host())
            .field("database", &self.opts.get_database())
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

// === impl SqliteBackend ===

impl SqliteBackend {
    pub(super) async fn open(
        path: &std::path::Path,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit (and so an ack) survives power loss, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(opts)
            .await?;
        migrate::migrator(migrate::SQLITE).await?.run(&pool).await?;
        info!(path = %path.display(), "Opened SQLite store");
        let mut backend = Self {
            pool,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            group: None,
        };
        backend.group = Some(super::group::GroupCommitter::start(backend.clone()));
        Ok(backend)
    }

    /// Insert through the group committer (one transaction per group of batches).
    pub(super) async fn insert_events_grouped(
        &self,
        device_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        match &self.group {
            Some(g) => g.insert(self, device_id, events).await,
            None => self.insert_events(device_id, &events).await,
        }
    }

    pub(super) async fn write_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    pub(super) async fn notify_policy(
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        _version: u64,
    ) -> Result<(), StoreError> {
        // One process per SQLite file; other watchers poll.
        Ok(())
    }

    /// SQLite keeps search text in the `events_fts` table, not in the row.
    const TEXT_IN_ROW: bool = false;

    /// SQLite has no statistics to pick the (time) index for a range under
    /// `ORDER BY seq DESC LIMIT n`; bounding seq by the range's span makes
    /// the seq walk short.
    const SEQ_SPAN_FOR_TIME: bool = true;

    /// How to answer a listing: decided from the filter alone.
    async fn listing_plan(&self, f: &EventFilter) -> Result<ListingPlan, StoreError> {
        Ok(ListingPlan { text: TextPlan::for_filter(f), time_first: false, seqs: None })
    }

    /// Only these seqs (SQLite's own plans never fetch a seq set first, but
    /// the condition is still the right one, not a panic).
    fn push_seq_set(qb: &mut QueryBuilder<'_, sqlx::Sqlite>, seqs: &[i64]) {
        if seqs.is_empty() {
            qb.push(" AND 0 = 1");
            return;
        }
        qb.push(" AND seq IN (");
        let mut list = qb.separated(", ");
        for seq in seqs {
            list.push_bind(*seq);
        }
        qb.push(")");
    }

    /// Free text alone (newest first): FTS5 reads its doclist newest first
    /// and stops after one page. With a selective filter (one user, device,
    /// detector) the rows are few: probe the index per row. Otherwise let
    /// FTS5 produce the matching seqs once and walk events against them.
    fn push_text_filter(qb: &mut QueryBuilder<'_, sqlx::Sqlite>, t: &TextQuery, plan: TextPlan) {
        if let TextPlan::Alone { before_seq, limit } = plan {
            qb.push(" AND seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ")
                .push_bind(t.fts5());
            if let Some(b) = before_seq {
                qb.push(" AND rowid < ").push_bind(b);
            }
            qb.push(" ORDER BY rowid DESC LIMIT ").push_bind(i64::from(limit)).push(")");
        } else if plan == TextPlan::Selective {
            qb.push(" AND EXISTS (SELECT 1 FROM events_fts WHERE events_fts MATCH ")
                .push_bind(t.fts5())
                .push(" AND events_fts.rowid = events.seq)");
        } else {
            qb.push(" AND seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ")
                .push_bind(t.fts5())
                .push(")");
        }
    }

    /// The connection pool ingest transactions begin on.
    fn writer_pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Detector rows of fresh events (`(detector, seq)`).
    async fn insert_detectors(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rows: &[(&str, i64)],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO event_detectors (detector, seq) ");
            qb.push_values(chunk, |mut b, (d, seq)| {
                b.push_bind(*d).push_bind(*seq);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Insert linked event rows (multi-row VALUES, in chunks): how many were
    /// new and, with `want_seqs`, each new row's `(id, seq)`.
    async fn insert_event_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rows: &[EventRow<'_>],
        want_seqs: bool,
    ) -> Result<(u64, Vec<(Uuid, i64)>), StoreError> {
        let mut stored = 0;
        let mut seqs = Vec::new();
        for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO events (");
            qb.push(EVENT_COLUMNS).push(") ");
            qb.push_values(chunk, |mut b, r| {
                let e = r.event;
                b.push_bind(e.id)
                    .push_bind(r.device_id)
                    .push_bind(e.time.timestamp_millis())
                    .push_bind(&e.kind)
                    .push_bind(&e.provider)
                    .push_bind(&e.model)
                    .push_bind(&e.app)
                    .push_bind(&e.decision)
                    .push_bind(&e.json)
                    .push_bind(r.received)
                    .push_bind(r.link.pos)
                    .push_bind(&r.link.prev)
                    .push_bind(&r.link.hash)
                    .push_bind(&r.link.content_digest)
                    .push_bind(&e.os_user)
                    .push_bind(&e.user_email)
                    .push_bind(&e.team)
                    .push_bind(e.usage.input_tokens)
                    .push_bind(e.usage.output_tokens)
                    .push_bind(e.usage.cached_input_tokens)
                    .push_bind(e.usage.reasoning_tokens)
                    .push_bind(e.usage.cost_usd);
            });
            if want_seqs {
                qb.push(" ON CONFLICT (id) DO NOTHING RETURNING seq, id");
                let got = qb.build().fetch_all(&mut **tx).await?;
                for row in &got {
                    seqs.push((row.try_get::<Uuid, _>("id")?, row.try_get::<i64, _>("seq")?));
                }
                stored += got.len() as u64;
            } else {
                qb.push(" ON CONFLICT (id) DO NOTHING");
                stored += qb.build().execute(&mut **tx).await?.rows_affected();
            }
        }
        Ok((stored, seqs))
    }

    /// Index the text of freshly inserted events (`(seq, text)`).
    async fn index_text(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rows: &[(i64, &str)],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO events_fts (rowid, body) ");
            qb.push_values(chunk, |mut b, (seq, text)| {
                b.push_bind(*seq).push_bind(*text);
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Forget the search text of these events (content retention).
    pub(super) async fn forget_text_of(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        seqs: &[i64],
    ) -> Result<(), StoreError> {
        for chunk in seqs.chunks(INSERT_CHUNK_ROWS) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM events_fts WHERE rowid IN (");
            let mut list = qb.separated(", ");
            for seq in chunk {
                list.push_bind(*seq);
            }
            qb.push(")");
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Forget the search text of events older than `cutoff_ms`.
    pub(super) async fn forget_event_text_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        cutoff_ms: i64,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM events_fts WHERE rowid IN (SELECT seq FROM events WHERE time < $1)",
        )
        .bind(cutoff_ms)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected())
    }
}

/// How often PostgreSQL's GIN pending list is merged in the background.
const GIN_CLEAN_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Merge the GIN index's pending list into the index on a pool connection
/// (another PostgreSQL backend, so another core), instead of inside the
/// ingest INSERT that overflows the list (measured: 23% of the single
/// writer's PostgreSQL CPU). Inserters skip their own cleanup while this
/// one holds the list. Ends when the pool is closed.
async fn gin_cleaner(pool: PgPool) {
    let mut warned = false;
    loop {
        tokio::time::sleep(GIN_CLEAN_EVERY).await;
        if pool.is_closed() {
            return;
        }
        match sqlx::query("SELECT gin_clean_pending_list(CAST('events_search_tsv' AS regclass))")
            .execute(&pool)
            .await
        {
            Ok(_) => warned = false,
            Err(_) if pool.is_closed() => return,
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "Merging the search index's pending list failed; will retry");
                    warned = true;
                }
            }
        }
    }
}

// === impl PgBackend ===

impl PgBackend {
    pub(super) async fn open(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let mut opts = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            if !crate::config::is_safe_identifier(schema) {
                return Err(StoreError::InvalidSchema(schema.to_string()));
            }
            // Identifier checked above: safe to interpolate.
            let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut conn)
                .await?;
            sqlx::Connection::close(conn).await?;
            opts = opts.options([("search_path", schema)]);
        }
        // Plan every statement with its real values: a generic plan cannot
        // tell a word in ten records from a word in every third one, and
        // under `ORDER BY seq DESC LIMIT n` it walks the whole table for the
        // rare one (measured: 7 s at 1M events instead of using the GIN index).
        opts = opts.options([("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(opts.clone())
            .await?;
        migrate::migrator(migrate::POSTGRES)
            .await?
            .run(&pool)
            .await?;
        tokio::spawn(gin_cleaner(pool.clone()));
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        info!(url = %crate::config::redact_url(url), schema, "Opened PostgreSQL store");
        let mut backend = Self {
            pool,
            writer,
            opts,
            group: None,
        };
        backend.group = Some(super::group::GroupCommitter::start(backend.clone()));
        Ok(backend)
    }

    /// Insert through the group committer (one transaction, one chain-lock
    /// hold, per group of batches).
    pub(super) async fn insert_events_grouped(
        &self,
        device_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        match &self.group {
            Some(g) => g.insert(self, device_id, events).await,
            None => self.insert_events(device_id, &events).await,
        }
    }

    /// Options for a connection outside the pool (e.g. one holding a session lock).
    pub(super) fn connect_options(&self) -> PgConnectOptions {
        self.opts.clone()
    }

    /// PostgreSQL handles concurrent writers itself.
    pub(super) async fn write_guard(&self) {}

    /// PostgreSQL keeps search text as the row's `search_tsv`.
    const TEXT_IN_ROW: bool = true;

    /// PostgreSQL plans time ranges from its statistics; a `MIN(seq)` over a
    /// range would walk the seq index from the start (measured: 1.2 s at 1M).
    const SEQ_SPAN_FOR_TIME: bool = false;

    /// How to answer a listing. PostgreSQL's planner costs `ORDER BY seq
    /// DESC LIMIT n` as if matches were spread evenly over seq, so for a
    /// rare word, or a time range far from the newest events, it walks the
    /// seq index through most of the table (measured at 1M events: 4.3 s
    /// for a word in ten records, 0.5 s for one day in the middle of 30;
    /// given the matches as a subquery it merge-joined them against the
    /// same backward walk). Its row *estimates* are good, though (tsvector
    /// element statistics, the time histogram), so they pick the plan here:
    /// * free text that may have at most [`PG_TEXT_FIRST_ROWS`] matches
    ///   (see [`try_text_first`]) and has, counted from the index alone
    ///   ([`Self::count_text_matches`]): fetch the matching seqs from the GIN
    ///   index first (no ORDER BY, so the planner has nothing to walk), then
    ///   list only those seqs; if there turn out to be more, fall back to
    ///   the walk;
    /// * a time range with no other filter, estimated at most
    ///   [`PG_TIME_FIRST_ROWS`] events: the page's seqs come from a top-n
    ///   over the `(time, seq)` index alone (index-only, no heap);
    /// * otherwise the seq walk, which finds a page at once when matches
    ///   are common.
    async fn listing_plan(&self, f: &EventFilter) -> Result<ListingPlan, StoreError> {
        let mut plan = ListingPlan { text: TextPlan::for_filter(f), time_first: false, seqs: None };
        if let Some(t) = &f.text {
            let rows = self
                .estimate_rows(
                    "EXPLAIN SELECT seq FROM events WHERE search_tsv @@ plainto_tsquery('simple', $1)",
                    &[t.plain()],
                )
                .await?;
            let table = self.estimate_rows("EXPLAIN SELECT seq FROM events", &[]).await?;
            if try_text_first(rows, table) {
                // The exact count from the GIN index (no heap) spares a
                // capped fetch that would overflow: 20,001 random heap rows
                // took 0.8 s at 10M events for a word in 79k records.
                let fits = match self.count_text_matches(t).await? {
                    Some(n) => n <= PG_TEXT_FIRST_ROWS,
                    None => true,
                };
                if fits {
                    plan.seqs = self.text_matches(t, f).await?;
                }
            }
        } else if f.after_seq.is_none() && (f.since.is_some() || f.until.is_some()) && no_column_filters(f) {
            let since = f.since.map_or(i64::MIN, |t| t.timestamp_millis()).to_string();
            let until = f.until.map_or(i64::MAX, |t| t.timestamp_millis()).to_string();
            let rows = self
                .estimate_rows(
                    "EXPLAIN SELECT seq FROM events WHERE time >= CAST($1 AS BIGINT) AND time < CAST($2 AS BIGINT)",
                    &[&since, &until],
                )
                .await?;
            plan.time_first = rows <= PG_TIME_FIRST_ROWS;
        }
        Ok(plan)
    }

    /// The seqs of every event whose text matches, within the page cursor;
    /// `None` when there are more than [`PG_TEXT_FIRST_ROWS`]. When nothing
    /// else filters, only the page's own seqs are kept.
    async fn text_matches(&self, t: &TextQuery, f: &EventFilter) -> Result<Option<Vec<i64>>, StoreError> {
        let mut qb = QueryBuilder::<sqlx::Postgres>::new(
            "SELECT seq FROM events WHERE search_tsv @@ plainto_tsquery('simple', ",
        );
        qb.push_bind(t.plain().to_string()).push(")");
        if let Some(v) = f.before_seq {
            qb.push(" AND seq < ").push_bind(v);
        }
        if let Some(v) = f.after_seq {
            qb.push(" AND seq > ").push_bind(v);
        }
        qb.push(" LIMIT ").push_bind(PG_TEXT_FIRST_ROWS as i64 + 1);
        let mut seqs: Vec<i64> = qb
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("seq"))
            .collect::<Result<_, _>>()?;
        if seqs.len() as u64 > PG_TEXT_FIRST_ROWS {
            return Ok(None);
        }
        let alone = no_column_filters(f) && f.since.is_none() && f.until.is_none();
        if alone {
            if f.after_seq.is_some() {
                seqs.sort_unstable();
            } else {
                seqs.sort_unstable_by(|a, b| b.cmp(a));
            }
            seqs.truncate(f.limit as usize);
        }
        Ok(Some(seqs))
    }

    /// How many events the GIN index holds for the text, counted without
    /// touching the table: the bitmap index scan of a `LIMIT 1` probe
    /// reports every match it found while the heap stops after one row
    /// (measured at 10M events: 3 ms for 10 matches, 45 ms for 79k). `None`
    /// when the planner would not use the index that way.
    async fn count_text_matches(&self, t: &TextQuery) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        for off in ["enable_seqscan", "enable_indexscan", "enable_indexonlyscan"] {
            sqlx::query(&format!("SET LOCAL {off} = off")).execute(&mut *tx).await?;
        }
        let lines: Vec<String> = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY OFF) SELECT 1 FROM events \
             WHERE search_tsv @@ plainto_tsquery('simple', $1) LIMIT 1",
        )
        .bind(t.plain())
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(bitmap_index_rows(&lines))
    }

    fn push_seq_set(qb: &mut QueryBuilder<'_, sqlx::Postgres>, seqs: &[i64]) {
        qb.push(" AND seq = ANY(").push_bind(seqs.to_vec()).push(")");
    }

    /// The planner's row estimate for `explain` (the first plan line's `rows=`).
    async fn estimate_rows(&self, explain: &str, binds: &[&str]) -> Result<u64, StoreError> {
        let mut q = sqlx::query(explain);
        for b in binds {
            q = q.bind(*b);
        }
        let row = q.fetch_one(&self.pool).await?;
        let line: String = row.try_get(0)?;
        parse_plan_rows(&line)
            .ok_or_else(|| StoreError::Corrupt(format!("unexpected EXPLAIN output: {line}")))
    }

    fn push_text_filter(qb: &mut QueryBuilder<'_, sqlx::Postgres>, t: &TextQuery, _plan: TextPlan) {
        qb.push(" AND search_tsv @@ plainto_tsquery('simple', ")
            .push_bind(t.plain().to_string())
            .push(")");
    }

    /// The group committer's own connection (see [`PgBackend::writer`]).
    fn writer_pool(&self) -> &PgPool {
        &self.writer
    }

    /// Detector rows of fresh events (`(detector, seq)`), as two arrays.
    async fn insert_detectors(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        rows: &[(&str, i64)],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(PG_INSERT_CHUNK_ROWS) {
            let (detector, seq): (Vec<&str>, Vec<i64>) = chunk.iter().copied().unzip();
            sqlx::query(
                "INSERT INTO event_detectors (detector, seq) \
                 SELECT * FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS BIGINT[])) ON CONFLICT DO NOTHING",
            )
            .bind(detector)
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Insert linked event rows, each column bound as one array and
    /// unnested: a statement of 24 parameters per chunk, planned once, where
    /// a multi-row VALUES list of thousands of parameters was planned (and
    /// its tsvector casts folded) on every execution. How many rows were
    /// new and, with `want_seqs`, each new row's `(id, seq)`.
    async fn insert_event_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        rows: &[EventRow<'_>],
        want_seqs: bool,
    ) -> Result<(u64, Vec<(Uuid, i64)>), StoreError> {
        let mut stored = 0;
        let mut seqs = Vec::new();
        let sql = format!(
            "INSERT INTO events ({EVENT_COLUMNS}, search_tsv) \
             SELECT {EVENT_COLUMNS}, COALESCE(CAST(tsv AS tsvector), to_tsvector('simple', search_text)) \
             FROM unnest(CAST($1 AS UUID[]), CAST($2 AS TEXT[]), CAST($3 AS BIGINT[]), CAST($4 AS TEXT[]), \
                         CAST($5 AS TEXT[]), CAST($6 AS TEXT[]), CAST($7 AS TEXT[]), CAST($8 AS TEXT[]), \
                         CAST($9 AS TEXT[]), CAST($10 AS BIGINT[]), CAST($11 AS BIGINT[]), CAST($12 AS TEXT[]), \
                         CAST($13 AS TEXT[]), CAST($14 AS TEXT[]), CAST($15 AS TEXT[]), CAST($16 AS TEXT[]), \
                         CAST($17 AS TEXT[]), CAST($18 AS BIGINT[]), CAST($19 AS BIGINT[]), CAST($20 AS BIGINT[]), \
                         CAST($21 AS BIGINT[]), CAST($22 AS DOUBLE PRECISION[]), CAST($23 AS TEXT[]), \
                         CAST($24 AS TEXT[])) WITH ORDINALITY \
                  AS u({EVENT_COLUMNS}, tsv, search_text, ord) \
             ORDER BY ord \
             ON CONFLICT (id) DO NOTHING{}",
            if want_seqs { " RETURNING seq, id" } else { "" }
        );
        for chunk in rows.chunks(PG_INSERT_CHUNK_ROWS) {
            let n = chunk.len();
            let mut c = PgEventColumns::with_capacity(n);
            for r in chunk {
                c.push(r);
            }
            let q = sqlx::query(&sql)
                .bind(c.id)
                .bind(c.device_id)
                .bind(c.time)
                .bind(c.kind)
                .bind(c.provider)
                .bind(c.model)
                .bind(c.app)
                .bind(c.decision)
                .bind(c.json)
                .bind(c.received)
                .bind(c.pos)
                .bind(c.prev)
                .bind(c.hash)
                .bind(c.content_digest)
                .bind(c.os_user)
                .bind(c.user_email)
                .bind(c.team)
                .bind(c.input_tokens)
                .bind(c.output_tokens)
                .bind(c.cached_input_tokens)
                .bind(c.reasoning_tokens)
                .bind(c.cost_usd)
                .bind(c.tsv)
                .bind(c.search_text);
            if want_seqs {
                let got = q.fetch_all(&mut **tx).await?;
                for row in &got {
                    seqs.push((row.try_get::<Uuid, _>("id")?, row.try_get::<i64, _>("seq")?));
                }
                stored += got.len() as u64;
            } else {
                stored += q.execute(&mut **tx).await?.rows_affected();
            }
        }
        Ok((stored, seqs))
    }

    async fn index_text(
        _tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        _rows: &[(i64, &str)],
    ) -> Result<(), StoreError> {
        // Written with the row (`search_tsv`).
        Ok(())
    }

    /// Forget the search text of these events (content retention).
    pub(super) async fn forget_text_of(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        seqs: &[i64],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE events SET search_tsv = NULL WHERE seq = ANY($1)")
            .bind(seqs)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Forget the search text of events older than `cutoff_ms`.
    pub(super) async fn forget_event_text_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        cutoff_ms: i64,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE events SET search_tsv = NULL WHERE time < $1 AND search_tsv IS NOT NULL",
        )
        .bind(cutoff_ms)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected())
    }

    pub(super) async fn notify_policy(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        version: u64,
    ) -> Result<(), StoreError> {
        // Delivered to listeners when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(POLICY_CHANNEL)
            .bind(version.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(super) async fn policy_listener(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(self.opts.clone());
        let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
        l.listen(POLICY_CHANNEL).await?;
        Ok(l)
    }
}

/// Most free-text matches (estimated, then counted) for which PostgreSQL
/// reads the matches from the GIN index first (a few ms for this many).
const PG_TEXT_FIRST_ROWS: u64 = 20_000;
/// Whether a free-text query's matches are fetched from the GIN index
/// first (capped at [`PG_TEXT_FIRST_ROWS`] + 1), given the planner's
/// estimate of its matches and of the table's rows. PostgreSQL estimates a
/// word it keeps no statistics for (one outside the most common elements)
/// at a floor of up to 0.5% of the table, however rare the word really is:
/// 50,010 rows at 10M events for a word in ten records, which once sent it
/// to the seq walk through the whole table (more than 5 minutes). So any
/// estimate up to twice that floor (1% of the table: the two estimates are
/// taken apart and drift) is tried under the cap, and only words the
/// statistics know to be common (whose page the walk finds at once) skip
/// the trial. A trial that hits the cap costs one capped bitmap scan.
fn try_text_first(estimated: u64, table_rows: u64) -> bool {
    estimated <= PG_TEXT_FIRST_ROWS.max(table_rows / 100)
}

/// The actual rows of the (only) bitmap index scan in `EXPLAIN ANALYZE`
/// text output.
fn bitmap_index_rows(lines: &[String]) -> Option<u64> {
    let mut found = lines.iter().filter(|l| l.contains("Bitmap Index Scan"));
    let line = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let rest = &line[line.find("(actual rows=")? + "(actual rows=".len()..];
    rest[..rest.find(' ')?].parse().ok()
}

/// Most estimated events in a time range for which PostgreSQL takes a
/// page's seqs from an index-only top-n over `(time, seq)` (about 30 ms
/// per 300k index entries here); larger ranges are dense enough that the
/// seq walk finds a page quickly.
const PG_TIME_FIRST_ROWS: u64 = 2_000_000;

/// How a listing is answered (see each backend's `listing_plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListingPlan {
    text: TextPlan,
    /// Take the page's seqs from a top-n over the time range alone.
    time_first: bool,
    /// The text matched exactly these seqs (fetched first): list only
    /// them, instead of testing the text per row.
    seqs: Option<Vec<i64>>,
}

/// `rows=N` of the first line of a text-format EXPLAIN.
fn parse_plan_rows(line: &str) -> Option<u64> {
    let at = line.find(" rows=")? + " rows=".len();
    let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether a filter has no column filter (equality or detector) in it:
/// only text, a time range and paging, if anything.
fn no_column_filters(f: &EventFilter) -> bool {
    let EventFilter {
        device_id,
        kind,
        provider,
        model,
        app,
        decision,
        os_user,
        user_email,
        detector,
        text: _,
        since: _,
        until: _,
        before_seq: _,
        after_seq: _,
        limit: _,
    } = f;
    [device_id, kind, provider, model, app, decision, os_user, user_email, detector]
        .iter()
        .all(|v| v.is_none())
}

/// How a free-text condition is best joined to the rest of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextPlan {
    /// Nothing else filters, newest first: the text index alone yields the page.
    Alone { before_seq: Option<i64>, limit: u32 },
    /// Another filter keeps few rows: check the text per row.
    Selective,
    Other,
}

impl TextPlan {
    fn for_filter(f: &EventFilter) -> Self {
        let EventFilter {
            device_id,
            kind,
            provider,
            model,
            app,
            decision,
            os_user,
            user_email,
            detector,
            text: _,
            since,
            until,
            before_seq,
            after_seq,
            limit,
        } = f;
        if os_user.is_some() || user_email.is_some() || device_id.is_some() || detector.is_some() {
            return TextPlan::Selective;
        }
        let others = [kind, provider, model, app, decision].iter().any(|v| v.is_some())
            || since.is_some()
            || until.is_some()
            || after_seq.is_some();
        if others {
            TextPlan::Other
        } else {
            TextPlan::Alone { before_seq: *before_seq, limit: *limit }
        }
    }
}

fn opt_ms(v: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    v.map(from_ms).transpose()
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

/// `YYYY-MM-DD` of a day number since the Unix epoch (as text).
fn day_label(days: &str) -> Result<String, StoreError> {
    let n: i64 = days
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("day number {days:?}")))?;
    Ok(from_ms(n.saturating_mul(86_400_000))?
        .format("%Y-%m-%d")
        .to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const DEVICE_COLUMNS: &str =
    "id, cert_fingerprint, cert_serial, hostname, os, hardware_id, agent_version, \
     owner_email, enrolled_at, last_seen, revoked_at, revoked_reason, applied_policy_version";

/// `$lock_policies`: run first in a policy publish's transaction so that
/// publishers (several servers on one PostgreSQL) queue instead of racing for
/// the next version; empty on SQLite, whose single writer already serialises.
macro_rules! backend_impl {
    ($backend:ty, $db:ty, $lock_policies:literal) => {
        impl $backend {
            pub(super) async fn close(&self) {
                self.pool.close().await;
                // PostgreSQL: the group committer's own connection.
                self.writer_pool().close().await
            }

            fn device_from_row(row: &<$db as sqlx::Database>::Row) -> Result<DeviceRecord, StoreError> {
                Ok(DeviceRecord {
                    id: row.try_get("id")?,
                    cert_fingerprint: row.try_get("cert_fingerprint")?,
                    cert_serial: row.try_get("cert_serial")?,
                    hostname: row.try_get("hostname")?,
                    os: row.try_get("os")?,
                    hardware_id: row.try_get("hardware_id")?,
                    agent_version: row.try_get("agent_version")?,
                    owner_email: row.try_get("owner_email")?,
                    enrolled_at: from_ms(row.try_get("enrolled_at")?)?,
                    last_seen: opt_ms(row.try_get("last_seen")?)?,
                    revoked_at: opt_ms(row.try_get("revoked_at")?)?,
                    revoked_reason: row.try_get("revoked_reason")?,
                    applied_policy_version: row
                        .try_get::<Option<i64>, _>("applied_policy_version")?
                        .map(|v| to_u64(v, "applied_policy_version"))
                        .transpose()?,
                })
            }

            pub(super) async fn create_enrollment_token(
                &self,
                token_hash: &str,
                max_uses: u32,
                expires_at: DateTime<Utc>,
                note: Option<&str>,
                seal: Option<&AuditSeal<'_, String>>,
            ) -> Result<String, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let id = Uuid::now_v7().to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO enrollment_tokens (id, token_hash, max_uses, uses, expires_at, created_at, note) \
                     VALUES ($1, $2, $3, 0, $4, $5, $6)",
                )
                .bind(&id)
                .bind(token_hash)
                .bind(i64::from(max_uses))
                .bind(expires_at.timestamp_millis())
                .bind(now_ms())
                .bind(note)
                .execute(&mut *tx)
                .await?;
                Self::seal_audit_in(&mut tx, seal, &id).await?;
                tx.commit().await?;
                Ok(id)
            }

            pub(super) async fn create_admin_token(&self, token_hash: &str, name: &str) -> Result<String, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let id = Uuid::now_v7().to_string();
                sqlx::query("INSERT INTO admin_tokens (id, token_hash, name, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&id)
                    .bind(token_hash)
                    .bind(name)
                    .bind(now_ms())
                    .execute(&self.pool)
                    .await?;
                Ok(id)
            }

            pub(super) async fn admin_token_name(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
                let row = sqlx::query("SELECT name FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("name")).transpose()?)
            }

            pub(super) async fn enroll_device(
                &self,
                token_hash: &str,
                d: &DeviceRecord,
            ) -> Result<Enrolled, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                // Write first, so SQLite takes the write lock at once (no upgrade deadlock).
                let used = sqlx::query(
                    "UPDATE enrollment_tokens SET uses = uses + 1 \
                     WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 RETURNING id",
                )
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if used.is_none() {
                    let row = sqlx::query("SELECT uses, max_uses, expires_at FROM enrollment_tokens WHERE token_hash = $1")
                        .bind(token_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let problem = match row {
                        None => TokenProblem::Unknown,
                        Some(r) if r.try_get::<i64, _>("expires_at")? <= now => TokenProblem::Expired,
                        Some(_) => TokenProblem::UsedUp,
                    };
                    return Err(StoreError::Token(problem));
                }
                let superseded_rows = sqlx::query(
                    "UPDATE devices SET revoked_at = $1, revoked_reason = $2 \
                     WHERE hardware_id = $3 AND revoked_at IS NULL RETURNING id",
                )
                .bind(now)
                .bind(format!("superseded by re-enrollment as {}", d.id))
                .bind(&d.hardware_id)
                .fetch_all(&mut *tx)
                .await?;
                let superseded = superseded_rows
                    .iter()
                    .map(|r| r.try_get::<String, _>("id"))
                    .collect::<Result<Vec<_>, _>>()?;
                sqlx::query(&format!(
                    "INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, NULL, NULL)"
                ))
                .bind(&d.id)
                .bind(&d.cert_fingerprint)
                .bind(&d.cert_serial)
                .bind(&d.hostname)
                .bind(&d.os)
                .bind(&d.hardware_id)
                .bind(&d.agent_version)
                .bind(&d.owner_email)
                .bind(d.enrolled_at.timestamp_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Enrolled { superseded })
            }

            pub(super) async fn touch_device(&self, id: &str) -> Result<Option<DeviceAuth>, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let row = sqlx::query(
                    "UPDATE devices SET last_seen = $1 WHERE id = $2 RETURNING cert_fingerprint, revoked_at",
                )
                .bind(now_ms())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(DeviceAuth {
                        cert_fingerprint: r.try_get("cert_fingerprint")?,
                        revoked_at: opt_ms(r.try_get("revoked_at")?)?,
                    })
                })
                .transpose()
            }

            pub(super) async fn device_auth(&self, id: &str) -> Result<Option<DeviceAuth>, StoreError> {
                let row = sqlx::query("SELECT cert_fingerprint, revoked_at FROM devices WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| {
                    Ok(DeviceAuth {
                        cert_fingerprint: r.try_get("cert_fingerprint")?,
                        revoked_at: opt_ms(r.try_get("revoked_at")?)?,
                    })
                })
                .transpose()
            }

            /// `None`: no such device; `Some(false)`: already revoked.
            pub(super) async fn revoke_device(
                &self,
                id: &str,
                reason: &str,
                seal: Option<&AuditSeal<'_, Option<bool>>>,
            ) -> Result<Option<bool>, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let mut tx = self.pool.begin().await?;
                let r = sqlx::query(
                    "UPDATE devices SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
                )
                .bind(now_ms())
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let result = if r.rows_affected() == 1 {
                    Some(true)
                } else {
                    sqlx::query("SELECT 1 AS one FROM devices WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|_| false)
                };
                Self::seal_audit_in(&mut tx, seal, &result).await?;
                tx.commit().await?;
                Ok(result)
            }

            pub(super) async fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
                let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::device_from_row).transpose()
            }

            pub(super) async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
                let rows = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY enrolled_at, id"))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::device_from_row).collect()
            }

            pub(super) async fn record_applied(&self, device_id: &str, version: u64) -> Result<(), StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                sqlx::query("UPDATE devices SET applied_policy_version = $1, applied_at = $2 WHERE id = $3")
                    .bind(to_i64(version))
                    .bind(now_ms())
                    .bind(device_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub(super) async fn insert_policy(
                &self,
                document: &str,
                author: &str,
                seal: Option<&AuditSeal<'_, u64>>,
            ) -> Result<u64, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                // Publishers queue on the table lock (PostgreSQL) or the single
                // writer (SQLite); the retry is a backstop for a unique clash.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match self.try_insert_policy(document, author, seal).await {
                        Err(StoreError::Database(sqlx::Error::Database(e)))
                            if e.is_unique_violation() && attempt < 5 => continue,
                        other => return other,
                    }
                }
            }

            async fn try_insert_policy(
                &self,
                document: &str,
                author: &str,
                seal: Option<&AuditSeal<'_, u64>>,
            ) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await?;
                if !$lock_policies.is_empty() {
                    sqlx::query($lock_policies).execute(&mut *tx).await?;
                }
                let row = sqlx::query(
                    "INSERT INTO policies (version, document, created_at, author) \
                     SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3 FROM policies RETURNING version",
                )
                .bind(document)
                .bind(now_ms())
                .bind(author)
                .fetch_one(&mut *tx)
                .await?;
                let version = to_u64(row.try_get("version")?, "policy version")?;
                Self::seal_audit_in(&mut tx, seal, &version).await?;
                Self::notify_policy(&mut tx, version).await?;
                tx.commit().await?;
                Ok(version)
            }

            pub(super) async fn latest_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
                let row = sqlx::query(
                    "SELECT version, document, created_at, author FROM policies ORDER BY version DESC LIMIT 1",
                )
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

            pub(super) async fn latest_policy_version(&self) -> Result<u64, StoreError> {
                let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM policies")
                    .fetch_one(&self.pool)
                    .await?;
                to_u64(row.try_get("v")?, "policy version")
            }

            pub(super) async fn insert_events(&self, device_id: &str, events: &[NewEvent]) -> Result<u64, StoreError> {
                Ok(self.insert_event_groups(&[(device_id, events)]).await?.iter().sum())
            }

            /// Insert several devices' batches in ONE transaction; per group,
            /// how many rows were new.
            pub(super) async fn insert_event_groups(
                &self,
                groups: &[(&str, &[NewEvent])],
            ) -> Result<Vec<u64>, StoreError> {
                let prepared: Vec<_> = groups
                    .iter()
                    .map(|(device_id, events)| super::group::prepare_digests(device_id, events))
                    .collect();
                let prepared: Vec<_> = prepared.iter().collect();
                self.insert_event_groups_prepared(groups, &prepared).await
            }

            /// [`Self::insert_event_groups`] with each group's receive time and
            /// chain digests computed by the caller (the group committer's
            /// callers, in parallel), so the single writer only links.
            pub(super) async fn insert_event_groups_prepared(
                &self,
                groups: &[(&str, &[NewEvent])],
                prepared: &[&super::group::Prepared],
            ) -> Result<Vec<u64>, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let mut counts = vec![0; groups.len()];
                if groups.iter().all(|(_, e)| e.is_empty()) {
                    return Ok(counts);
                }
                // Optimistic: link every event not repeated in the group and
                // insert. A batch retried after a lost ack holds rows stored
                // already; then the INSERT stores fewer rows than were linked,
                // and the transaction starts over, this time looking up (under
                // the chain lock) which ids are stored so they get no link.
                // Looking up every time cost more than the insert itself on
                // PostgreSQL (measured: 0.5-1.7 s of a 2 s group of 8,500).
                let mut lookup = false;
                let (mut tx, chain, rows, want_seqs, seqs) = loop {
                    let mut tx = self.writer_pool().begin().await?;
                    let mut chain = Self::event_chain_begin(&mut tx, groups, lookup).await?;
                    // Link every fresh event first (in memory, in ingest order),
                    // then write them all in a few big statements.
                    let mut rows: Vec<EventRow<'_>> = Vec::new();
                    for ((count, (device_id, events)), prep) in counts.iter_mut().zip(groups).zip(prepared) {
                        // Each fresh event with its precomputed tsvector, if any.
                        let tsv: HashMap<Uuid, Option<&str>> = if prep.search_tsv.len() == events.len() {
                            events.iter().zip(&prep.search_tsv).map(|(e, t)| (e.id, t.as_deref())).collect()
                        } else {
                            HashMap::new()
                        };
                        let fresh = chain.fresh(events, &prep.digests);
                        *count = fresh.len() as u64;
                        for (e, d) in fresh {
                            rows.push(EventRow {
                                device_id,
                                received: prep.received,
                                event: e,
                                link: chain.link(d),
                                tsv: tsv.get(&e.id).copied(),
                            });
                        }
                    }
                    // The seqs of new rows key their search text and detector
                    // rows; only ask for them when needed.
                    let want_seqs = rows.iter().any(|r| {
                        (!Self::TEXT_IN_ROW && r.event.search_text.is_some()) || !r.event.detectors.is_empty()
                    });
                    let (stored, seqs) = Self::insert_event_rows(&mut tx, &rows, want_seqs).await?;
                    if stored == rows.len() as u64 {
                        break (tx, chain, rows, want_seqs, seqs);
                    }
                    tx.rollback().await?;
                    if lookup {
                        // Cannot happen under the chain lock; never commit a chain with holes.
                        return Err(StoreError::Corrupt("event chain: a linked row was not stored".into()));
                    }
                    lookup = true;
                };
                let mut texts: Vec<(i64, &str)> = Vec::new();
                let mut detectors: Vec<(&str, i64)> = Vec::new();
                if want_seqs {
                    let seqs: HashMap<Uuid, i64> = seqs.into_iter().collect();
                    for r in &rows {
                        let Some(&seq) = seqs.get(&r.event.id) else {
                            return Err(StoreError::Corrupt("event chain: a stored row has no seq".into()));
                        };
                        if !Self::TEXT_IN_ROW {
                            if let Some(t) = &r.event.search_text {
                                texts.push((seq, t.as_str()));
                            }
                        }
                        for d in &r.event.detectors {
                            detectors.push((d.as_str(), seq));
                        }
                    }
                }
                Self::event_chain_commit(&mut tx, &chain).await?;
                Self::index_text(&mut tx, &texts).await?;
                Self::insert_detectors(&mut tx, &detectors).await?;
                tx.commit().await?;
                Ok(counts)
            }

            pub(super) async fn query_events(&self, f: &EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT seq, id, device_id, time, kind, json FROM events WHERE 1 = 1",
                );
                for (column, value) in [
                    ("device_id", &f.device_id),
                    ("kind", &f.kind),
                    ("provider", &f.provider),
                    ("model", &f.model),
                    ("app", &f.app),
                    ("decision", &f.decision),
                    ("os_user", &f.os_user),
                    ("user_email", &f.user_email),
                ] {
                    if let Some(v) = value {
                        // `column` is one of the literals above, never input.
                        qb.push(format_args!(" AND {column} = ")).push_bind(v.clone());
                    }
                }
                if let Some(v) = &f.detector {
                    qb.push(" AND seq IN (SELECT seq FROM event_detectors WHERE detector = ")
                        .push_bind(v.clone())
                        .push(")");
                }
                let plan = self.listing_plan(f).await?;
                match (&f.text, &plan.seqs) {
                    (Some(_), Some(seqs)) => Self::push_seq_set(&mut qb, seqs),
                    (Some(t), None) => Self::push_text_filter(&mut qb, t, plan.text),
                    (None, _) => {}
                }
                let (since, until) = (f.since.map(|t| t.timestamp_millis()), f.until.map(|t| t.timestamp_millis()));
                if let Some(v) = since {
                    qb.push(" AND time >= ").push_bind(v);
                }
                if let Some(v) = until {
                    qb.push(" AND time < ").push_bind(v);
                }
                if plan.time_first {
                    // The page's seqs from the time range alone: `seq + 0`
                    // keeps the seq index out of the ordering, so this is a
                    // top-n over an index-only scan of `(time, seq)`.
                    qb.push(" AND seq IN (SELECT seq FROM events WHERE 1 = 1");
                    if let Some(v) = since {
                        qb.push(" AND time >= ").push_bind(v);
                    }
                    if let Some(v) = until {
                        qb.push(" AND time < ").push_bind(v);
                    }
                    if let Some(v) = f.before_seq {
                        qb.push(" AND seq < ").push_bind(v);
                    }
                    qb.push(" ORDER BY seq + 0 DESC LIMIT ").push_bind(i64::from(f.limit)).push(")");
                }
                if Self::SEQ_SPAN_FOR_TIME && (since.is_some() || until.is_some()) {
                    // Redundant but decisive: the seq span of the time range,
                    // read from the (time) index alone. Events arrive roughly
                    // in time order, so walking seq backwards from the span's
                    // top finds a page at once instead of sorting the range.
                    for (agg, op) in [("MIN", ">="), ("MAX", "<=")] {
                        qb.push(format_args!(" AND seq {op} (SELECT {agg}(seq) FROM events WHERE 1 = 1"));
                        if let Some(v) = since {
                            qb.push(" AND time >= ").push_bind(v);
                        }
                        if let Some(v) = until {
                            qb.push(" AND time < ").push_bind(v);
                        }
                        qb.push(")");
                    }
                }
                if let Some(v) = f.before_seq {
                    qb.push(" AND seq < ").push_bind(v);
                }
                if let Some(v) = f.after_seq {
                    qb.push(" AND seq > ").push_bind(v).push(" ORDER BY seq LIMIT ");
                } else {
                    qb.push(" ORDER BY seq DESC LIMIT ");
                }
                qb.push_bind(i64::from(f.limit));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(Self::event_from_row).collect()
            }

            fn event_from_row(r: &<$db as sqlx::Database>::Row) -> Result<StoredEvent, StoreError> {
                Ok(StoredEvent {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    device_id: r.try_get("device_id")?,
                    time: from_ms(r.try_get("time")?)?,
                    kind: r.try_get("kind")?,
                    json: r.try_get("json")?,
                })
            }

            pub(super) async fn get_event(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
                let row = sqlx::query("SELECT seq, id, device_id, time, kind, json FROM events WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::event_from_row).transpose()
            }

            pub(super) async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
                let key = match q.group_by {
                    UsageGroup::User => "COALESCE(user_email, os_user)",
                    UsageGroup::Team => "team",
                    UsageGroup::App => "app",
                    UsageGroup::Model => "model",
                    UsageGroup::Day => "CAST(time / 86400000 AS TEXT)",
                };
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {key} AS k, COUNT(*) AS requests, \
                     CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
                     CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
                     CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens, \
                     CAST(SUM(reasoning_tokens) AS BIGINT) AS reasoning_tokens, \
                     SUM(cost_usd) AS cost_usd, COUNT(cost_usd) AS priced \
                     FROM events WHERE kind = 'interaction'"
                ));
                if let Some(v) = q.since {
                    qb.push(" AND time >= ").push_bind(v.timestamp_millis());
                }
                if let Some(v) = q.until {
                    qb.push(" AND time < ").push_bind(v.timestamp_millis());
                }
                qb.push(format_args!(" GROUP BY {key} ORDER BY {key}"));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        let requests: i64 = r.try_get("requests")?;
                        let priced: i64 = r.try_get("priced")?;
                        let mut k: Option<String> = r.try_get("k")?;
                        if q.group_by == UsageGroup::Day {
                            k = k.map(|d| day_label(&d)).transpose()?;
                        }
                        Ok(UsageRow {
                            key: k,
                            requests,
                            input_tokens: r.try_get("input_tokens")?,
                            output_tokens: r.try_get("output_tokens")?,
                            cached_input_tokens: r.try_get("cached_input_tokens")?,
                            reasoning_tokens: r.try_get("reasoning_tokens")?,
                            cost_usd: r.try_get("cost_usd")?,
                            priced_requests: priced,
                            unpriced_requests: requests - priced,
                        })
                    })
                    .collect()
            }

            pub(super) async fn forget_event_text_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let mut tx = self.pool.begin().await?;
                let n = Self::forget_event_text_in(&mut tx, cutoff.timestamp_millis()).await?;
                tx.commit().await?;
                Ok(n)
            }

            pub(super) async fn count_events(&self) -> Result<u64, StoreError> {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM events").fetch_one(&self.pool).await?;
                to_u64(row.try_get("n")?, "event count")
            }

            pub(super) async fn put_inventory(
                &self,
                device_id: &str,
                items: &[InventoryRecord],
                full_snapshot: bool,
            ) -> Result<u32, StoreError> {
                #[allow(clippy::let_unit_value)]
                let _write = self.write_guard().await;
                let now = now_ms();
                let mut tx = self.pool.begin().await?;
                for chunk in items.chunks(INSERT_CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO inventory (device_id, kind, item_id, name, details, first_seen, last_seen) ",
                    );
                    qb.push_values(chunk, |mut b, i| {
                        b.push_bind(device_id)
                            .push_bind(&i.kind)
                            .push_bind(&i.item_id)
                            .push_bind(&i.name)
                            .push_bind(&i.details)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    qb.push(
                        " ON CONFLICT (device_id, kind, item_id) DO UPDATE SET \
                         name = excluded.name, details = excluded.details, last_seen = excluded.last_seen",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                if full_snapshot {
                    // Everything in this report now has last_seen = now; older rows are gone
                    // from the device. (A report in the same millisecond counts as this one.)
                    sqlx::query("DELETE FROM inventory WHERE device_id = $1 AND last_seen < $2")
                        .bind(device_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(u32::try_from(items.len()).unwrap_or(u32::MAX))
            }

            pub(super) async fn list_inventory(&self, device_id: &str) -> Result<Vec<InventoryRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT kind, item_id, name, details FROM inventory WHERE device_id = $1 ORDER BY kind, item_id",
                )
                .bind(device_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(InventoryRecord {
                            kind: r.try_get("kind")?,
                            item_id: r.try_get("item_id")?,
                            name: r.try_get("name")?,
                            details: r.try_get("details")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

backend_impl!(SqliteBackend, sqlx::Sqlite, "");
backend_impl!(PgBackend, sqlx::Postgres, "LOCK TABLE policies IN SHARE ROW EXCLUSIVE MODE");

#[cfg(test)]
mod plan_tests {
    use super::{bitmap_index_rows, parse_plan_rows, try_text_first};

    #[test]
    fn bitmap_index_rows_come_from_the_single_index_scan() {
        let plan: Vec<String> = [
            "Limit  (cost=739.45..742.76 rows=1 width=4) (actual rows=1 loops=1)",
            "  ->  Bitmap Heap Scan on events  (cost=739.45..166506.54 rows=49993 width=4) (actual rows=1 loops=1)",
            "        Recheck Cond: (search_tsv @@ '''kavelsha'''::tsquery)",
            "        ->  Bitmap Index Scan on events_search_tsv  (cost=0.00..726.95 rows=49993 width=0) (actual rows=79290 loops=1)",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(bitmap_index_rows(&plan), Some(79290));
        assert_eq!(bitmap_index_rows(&plan[..2]), None);
        let mut two = plan.clone();
        two.push(plan[3].clone());
        assert_eq!(bitmap_index_rows(&two), None);
    }

    #[test]
    fn words_at_the_planners_floor_estimate_are_tried_from_the_index_first() {
        // 10M events: a word without statistics is estimated at 0.5%
        // (of a row count estimated separately).
        assert!(try_text_first(50_010, 10_000_000));
        assert!(try_text_first(50_010, 9_800_000));
        // A word the statistics know to be in 20% of records: walk.
        assert!(!try_text_first(2_000_000, 10_000_000));
        // Small tables: the absolute cap decides.
        assert!(try_text_first(20_000, 1_000));
        assert!(!try_text_first(20_001, 1_000_000));
    }

    #[test]
    fn reads_the_row_estimate_of_an_explain_line() {
        let line = "Bitmap Heap Scan on events  (cost=12.08..345.67 rows=1234 width=8)";
        assert_eq!(parse_plan_rows(line), Some(1234));
        assert_eq!(parse_plan_rows("Seq Scan on events  (cost=0.00..1.00 rows=0 width=8)"), Some(0));
        assert_eq!(parse_plan_rows("Result  (cost=0.00..0.01 width=4)"), None);
        assert_eq!(parse_plan_rows("garbage rows=x"), None);
    }
}
