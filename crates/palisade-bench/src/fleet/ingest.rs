//! Phase (a): sustained ingest. Many devices, each with its own mTLS
//! connection and one Upload stream, keep `inflight` batches outstanding and
//! send a new batch whenever one is acknowledged, until the time is up; the
//! figure counts only acknowledged (committed) events. SlowDown and
//! retryable errors resend the same batch after the server's delay, as the
//! agent does. Must never count an unacknowledged event, nor reuse an id.

use super::agent::{device_channel, Enrolled};
use super::records::RecordFactory;
use super::{FleetError, Target};
use palisade_proto as proto;
use proto::audit_service_client::AuditServiceClient;
use proto::upload_response::Result as Answer;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Longest wait for the answer to an outstanding batch.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub batch: usize,
    /// Batches outstanding per stream.
    pub inflight: usize,
    /// Stop sending new batches after this long.
    pub duration: Duration,
    /// Stop each device after this many batches (tests use it for exact counts).
    pub max_batches_per_device: Option<u64>,
}

/// What one run of the phase achieved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestReport {
    pub devices: usize,
    pub acked_events: u64,
    /// JSON payload bytes of the acknowledged events.
    pub acked_bytes: u64,
    pub acked_batches: u64,
    pub slowed_batches: u64,
    pub retried_errors: u64,
    pub rejected_events: u64,
    pub elapsed: Duration,
}

impl IngestReport {
    pub fn events_per_sec(&self) -> f64 {
        self.acked_events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.acked_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn add(&mut self, o: &IngestReport) {
        self.acked_events += o.acked_events;
        self.acked_bytes += o.acked_bytes;
        self.acked_batches += o.acked_batches;
        self.slowed_batches += o.slowed_batches;
        self.retried_errors += o.retried_errors;
        self.rejected_events += o.rejected_events;
    }
}

/// Run the phase with one stream per device in `devices`.
pub async fn run(target: &Target, devices: &[Enrolled], cfg: &IngestConfig) -> Result<IngestReport, FleetError> {
    if cfg.batch == 0 || cfg.inflight == 0 {
        return Err(FleetError::Args("ingest batch and inflight must be at least 1".into()));
    }
    // Connect everyone first so the clock measures ingest, not handshakes.
    let mut clients = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let channel = device_channel(target, d).await?;
        clients.push((AuditServiceClient::new(channel), RecordFactory::new(&d.id, i * 31)));
    }
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (client, factory) in clients {
        let cfg = cfg.clone();
        tasks.spawn(stream_device(client, factory, cfg, deadline));
    }
    let mut total = IngestReport { devices: devices.len(), ..Default::default() };
    let mut first_error = None;
    while let Some(res) = tasks.join_next().await {
        match res.map_err(FleetError::Join).and_then(|r| r) {
            Ok(r) => total.add(&r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    total.elapsed = start.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

async fn stream_device(
    mut client: AuditServiceClient<tonic::transport::Channel>,
    mut factory: RecordFactory,
    cfg: IngestConfig,
    deadline: Instant,
) -> Result<IngestReport, FleetError> {
    let (tx, rx) = mpsc::channel::<proto::EventBatch>(cfg.inflight);
    let mut answers = client
        .upload(ReceiverStream::new(rx))
        .await
        .map_err(|status| FleetError::Rpc { what: "Upload", status })?
        .into_inner();
    let mut report = IngestReport::default();
    let mut outstanding: HashMap<u64, proto::EventBatch> = HashMap::new();
    let mut next_id = 0u64;
    let mut fresh = 0u64;
    loop {
        while outstanding.len() < cfg.inflight
            && Instant::now() < deadline
            && cfg.max_batches_per_device.is_none_or(|max| fresh < max)
        {
            let batch = factory.batch(next_id, cfg.batch);
            next_id += 1;
            fresh += 1;
            outstanding.insert(batch.batch_id, batch.clone());
            if tx.send(batch).await.is_err() {
                return Err(FleetError::StreamClosed("Upload request stream"));
            }
        }
        if outstanding.is_empty() {
            return Ok(report);
        }
        let msg = tokio::time::timeout(ANSWER_TIMEOUT, answers.message())
            .await
            .map_err(|_| FleetError::Timeout(format!("no answer to an upload batch in {ANSWER_TIMEOUT:?}")))?
            .map_err(|status| FleetError::Rpc { what: "Upload", status })?
            .ok_or(FleetError::StreamClosed("Upload answers"))?;
        let batch_id = msg.batch_id;
        let retry_after = match msg.result {
            Some(Answer::Ack(ack)) => {
                let sent = outstanding.remove(&batch_id).ok_or(FleetError::UnexpectedAnswer(batch_id))?;
                let bytes: usize = sent.events.iter().map(|e| e.json.len()).sum();
                report.acked_events += ack.event_ids.len() as u64;
                report.acked_bytes += bytes as u64;
                report.acked_batches += 1;
                report.rejected_events += ack.rejected.len() as u64;
                None
            }
            Some(Answer::SlowDown(s)) => {
                report.slowed_batches += 1;
                Some(s.retry_after_ms)
            }
            Some(Answer::Error(e)) if e.retryable => {
                report.retried_errors += 1;
                Some(e.retry_after_ms)
            }
            Some(Answer::Error(e)) => return Err(FleetError::BatchRefused(e.message)),
            None => return Err(FleetError::UnexpectedAnswer(batch_id)),
        };
        if let Some(ms) = retry_after {
            // Batch ids are unique per stream: the retry gets a new one.
            let mut batch = outstanding.remove(&batch_id).ok_or(FleetError::UnexpectedAnswer(batch_id))?;
            batch.batch_id = next_id;
            next_id += 1;
            outstanding.insert(batch.batch_id, batch.clone());
            tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            if tx.send(batch).await.is_err() {
                return Err(FleetError::StreamClosed("Upload request stream"));
            }
        }
    }
}
