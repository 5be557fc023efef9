//! Group commit for ingest: batches that arrive while a commit is in
//! progress are committed together in the next transaction, so many agents
//! sending small batches cost one fsync per group instead of one per batch.
//! SQLite has one writer anyway; on PostgreSQL the event chain serialises
//! ingest transactions (one chain lock), so grouping is what keeps its
//! throughput: one lock hold and one commit per group, not per batch.
//!
//! Each caller still gets its own answer only after the transaction that
//! holds its rows committed; if that transaction fails, every batch in it
//! gets the error (and no caller acks). Must never answer before commit.

use super::chain::{digest_batch, EventDigests};
use super::{now_ms, NewEvent, PgBackend, SqliteBackend, StoreError};
use sqlx::Row;
use std::future::Future;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

/// Most events gathered into one transaction.
pub(super) const MAX_GROUP_EVENTS: usize = 8192;
/// Batches waiting for the writer before callers queue on send.
const QUEUE_DEPTH: usize = 256;

struct Job {
    device_id: String,
    events: Vec<NewEvent>,
    prepared: Prepared,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// What a batch's caller computes before it queues for the writer, in
/// parallel with other callers, so the single writer only links and writes.
#[derive(Debug, Clone, Default)]
pub(super) struct Prepared {
    /// When the batch arrived.
    pub received: i64,
    /// Chain digests, one per event.
    pub digests: Vec<EventDigests>,
    /// PostgreSQL: each event's `search_tsv` as tsvector text, computed by
    /// `to_tsvector` on a pool connection (so by another PostgreSQL backend,
    /// in parallel); the writer casts it back, which is exact. Empty: the
    /// writer's INSERT computes it.
    pub search_tsv: Vec<Option<String>>,
}

#[derive(Debug, Clone)]
pub(super) struct GroupCommitter {
    tx: mpsc::Sender<Job>,
}

/// A backend that can commit several devices' batches in one transaction.
pub(super) trait GroupInsert: Clone + Send + Sync + 'static {
    /// The caller's share of the work (see [`Prepared`]).
    fn prepare<'a>(
        &'a self,
        device_id: &'a str,
        events: &'a [NewEvent],
    ) -> impl Future<Output = Result<Prepared, StoreError>> + Send + 'a;

    fn insert_groups<'a>(
        &'a self,
        groups: &'a [(&'a str, &'a [NewEvent])],
        prepared: &'a [&'a Prepared],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a;
}

/// Receive time and chain digests: what every backend's caller computes.
pub(super) fn prepare_digests(device_id: &str, events: &[NewEvent]) -> Prepared {
    let received = now_ms();
    Prepared {
        received,
        digests: digest_batch(device_id, events, received),
        search_tsv: Vec::new(),
    }
}

impl GroupInsert for SqliteBackend {
    async fn prepare(&self, device_id: &str, events: &[NewEvent]) -> Result<Prepared, StoreError> {
        Ok(prepare_digests(device_id, events))
    }

    fn insert_groups<'a>(
        &'a self,
        groups: &'a [(&'a str, &'a [NewEvent])],
        prepared: &'a [&'a Prepared],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a {
        self.insert_event_groups_prepared(groups, prepared)
    }
}

impl GroupInsert for PgBackend {
    async fn prepare(&self, device_id: &str, events: &[NewEvent]) -> Result<Prepared, StoreError> {
        let mut prepared = prepare_digests(device_id, events);
        let texts: Vec<Option<&str>> = events.iter().map(|e| e.search_text.as_deref()).collect();
        if texts.iter().any(Option::is_some) {
            // Measured: to_tsvector was a third of the single writer's
            // PostgreSQL CPU when it ran inside the ingest INSERT.
            let rows = sqlx::query(
                "SELECT CAST(to_tsvector('simple', t) AS TEXT) AS tsv \
                 FROM unnest(CAST($1 AS TEXT[])) WITH ORDINALITY AS u(t, i) ORDER BY i",
            )
            .bind(&texts)
            .fetch_all(&self.pool)
            .await?;
            if rows.len() != events.len() {
                return Err(StoreError::Corrupt(format!(
                    "to_tsvector returned {} rows for {} texts",
                    rows.len(),
                    events.len()
                )));
            }
            prepared.search_tsv = rows
                .iter()
                .map(|r| r.try_get::<Option<String>, _>("tsv"))
                .collect::<Result<_, _>>()?;
        }
        Ok(prepared)
    }

    fn insert_groups<'a>(
        &'a self,
        groups: &'a [(&'a str, &'a [NewEvent])],
        prepared: &'a [&'a Prepared],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a {
        self.insert_event_groups_prepared(groups, prepared)
    }
}

impl GroupCommitter {
    /// Start the writer task. It ends when every handle is dropped.
    pub(super) fn start<B: GroupInsert>(backend: B) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(writer(backend, rx));
        Self { tx }
    }

    pub(super) async fn insert<B: GroupInsert>(
        &self,
        backend: &B,
        device_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        // Hash (and on PostgreSQL, tokenise) here, in the caller's task:
        // callers run in parallel, the writer is one task.
        let prepared = backend.prepare(device_id, &events).await?;
        let job = Job {
            device_id: device_id.to_string(),
            events,
            prepared,
            reply,
        };
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn writer<B: GroupInsert>(backend: B, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut total = first.events.len();
        let mut jobs = vec![first];
        while total < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    total += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let groups: Vec<(&str, &[NewEvent])> = jobs
            .iter()
            .map(|j| (j.device_id.as_str(), &j.events[..]))
            .collect();
        let prepared: Vec<&Prepared> = jobs.iter().map(|j| &j.prepared).collect();
        match backend.insert_groups(&groups, &prepared).await {
            Ok(counts) => {
                for (job, count) in jobs.into_iter().zip(counts) {
                    let _ = job.reply.send(Ok(count));
                }
            }
            Err(e) => {
                error!(error = %e, batches = jobs.len(), events = total, "Group commit failed; nothing in it is stored");
                let message = e.to_string();
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(StoreError::GroupCommit(message.clone())));
                }
            }
        }
    }
}
