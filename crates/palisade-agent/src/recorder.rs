//! Hands finished records to the durable spool without making the proxy wait.
//!
//! One writer task drains an in-memory queue into the spool in batches. The
//! queue only holds records for the milliseconds before their batch commits;
//! a record is durable once the spool append returns. Subscribers (tests,
//! the sync client's wake-up, discovery) are told after the commit, never
//! before, and share one `Arc` of each record: a per-subscriber deep copy
//! of every record cost the proxy ~5k instructions per request.

use palisade_core::AuditEvent;
use palisade_spool::Spool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, Notify};
use tracing::error;

const BATCH: usize = 256;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<AuditEvent>,
    spooled: broadcast::Sender<Arc<AuditEvent>>,
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    idle: Notify,
}

/// Append records one at a time after a batch was refused: retryable errors
/// are retried, a record refused for good is counted and logged by id.
async fn append_each(spool: &Spool, batch: &[AuditEvent], counters: &Counters) {
    for ev in batch {
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match spool.append(ev).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, id = %ev.id, kind = ev.kind.as_str(), "Record refused by the spool");
                    break;
                }
            }
        }
    }
}

impl Recorder {
    /// Start the writer task on the current runtime.
    pub fn start(spool: Spool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditEvent>();
        let (spooled, _) = broadcast::channel(4096);
        let inner = Arc::new(Counters::default());
        let (notify, counters) = (spooled.clone(), inner.clone());
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                // Retry a failing spool (disk full, locked) rather than drop;
                // a permanent error (a record too large or unencodable) is
                // isolated to its record so it cannot stall the rest.
                let mut delay = std::time::Duration::from_millis(50);
                loop {
                    match spool.append_batch(&batch).await {
                        Ok(()) => break,
                        Err(e) if e.is_retryable() => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            error!(error = %e, events = batch.len(), "Spool write failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(std::time::Duration::from_secs(5));
                        }
                        Err(e) => {
                            error!(error = %e, events = batch.len(), "Spool refused a batch; writing records one by one");
                            append_each(&spool, &batch, &counters).await;
                            break;
                        }
                    }
                }
                counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if notify.receiver_count() == 0 {
                    batch.clear();
                }
                for ev in batch.drain(..) {
                    let _ = notify.send(Arc::new(ev));
                }
                counters.idle.notify_waiters();
            }
        });
        Self { tx, spooled, inner }
    }

    /// Records the spool refused for good (too large, unencodable).
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Queue a record for the spool. Never blocks.
    pub fn record(&self, ev: AuditEvent) {
        self.inner.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(ev).is_err() {
            error!("Recorder stopped; record lost");
        }
    }

    /// Records that reached the spool, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditEvent>> {
        self.spooled.subscribe()
    }

    /// Wait until everything queued so far is in the spool.
    pub async fn flush(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.written.load(Ordering::Relaxed) >= self.inner.queued.load(Ordering::Relaxed) {
                return;
            }
            idle.await;
        }
    }

    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }
}
