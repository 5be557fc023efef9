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
    /// When the batch arrived, and its chain digests (computed by the caller).
    received: i64,
    digests: Vec<EventDigests>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

#[derive(Debug, Clone)]
pub(super) struct GroupCommitter {
    tx: mpsc::Sender<Job>,
}

/// A backend that can commit several devices' batches in one transaction.
pub(super) trait GroupInsert: Clone + Send + Sync + 'static {
    fn insert_groups<'a>(
        &'a self,
        groups: &'a [(&'a str, &'a [NewEvent])],
        prepared: &'a [(i64, &'a [EventDigests])],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a;
}

impl GroupInsert for SqliteBackend {
    fn insert_groups<'a>(
        &'a self,
        groups: &'a [(&'a str, &'a [NewEvent])],
        prepared: &'a [(i64, &'a [EventDigests])],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'a {
        self.insert_event_groups_prepared(groups, prepared)
    }
}

impl GroupInsert for PgBackend {
    fn insert_groups<'a>(
        &'a self,
        groups: &'a [(&'a str, &'a [NewEvent])],
        prepared: &'a [(i64, &'a [EventDigests])],
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

    pub(super) async fn insert(
        &self,
        device_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        // Hash here, in the caller's task: callers run in parallel, the
        // writer is one task.
        let received = now_ms();
        let digests = digest_batch(device_id, &events, received);
        let job = Job {
            device_id: device_id.to_string(),
            events,
            received,
            digests,
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
        let prepared: Vec<(i64, &[EventDigests])> =
            jobs.iter().map(|j| (j.received, &j.digests[..])).collect();
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
