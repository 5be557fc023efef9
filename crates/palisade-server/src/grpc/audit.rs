//! `AuditService.Upload`: the agent streams batches of events; each batch
//! gets exactly one answer, in order: Ack (after commit), SlowDown or
//! BatchError (nothing stored).
//!
//! **Architecture Invariant:** an Ack is sent only after `Store::insert_events`
//! returned `Ok`, i.e. after the transaction committed. Any store error
//! yields a retryable BatchError and no ack, so the agent keeps the events.
//! Events are bound to the certificate's device id; a `device.id` in the
//! payload is overwritten.

use super::auth::{authenticate, recheck, DeviceIdentity};
use super::{wait_shutdown, GrpcState};
use crate::convert::IncomingEvent;
use futures_util::Stream;
use palisade_proto as proto;
use proto::upload_response::Result as Answer;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, warn};

#[derive(Debug)]
pub(crate) struct AuditService {
    pub state: Arc<GrpcState>,
}

type UploadStream = Pin<Box<dyn Stream<Item = Result<proto::UploadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::audit_service_server::AuditService for AuditService {
    type UploadStream = UploadStream;

    async fn upload(
        &self,
        req: Request<Streaming<proto::EventBatch>>,
    ) -> Result<Response<UploadStream>, Status> {
        let device = authenticate(&self.state.store, &req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let shutdown = wait_shutdown(state.shutdown.clone());
            tokio::pin!(shutdown);
            loop {
                // Shutdown is only observed between batches: a batch being
                // committed finishes and is answered.
                let msg = tokio::select! {
                    _ = &mut shutdown => break,
                    m = inbound.message() => m,
                };
                let answer = match msg {
                    Ok(Some(batch)) => handle_batch(&state, &device, batch).await,
                    Ok(None) => break,
                    Err(status) => {
                        warn!(device_id = %device.id, code = ?status.code(), message = status.message(), "Upload stream error");
                        Err(status)
                    }
                };
                let fatal = answer.is_err();
                if tx.send(answer).await.is_err() || fatal {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn answer(batch_id: u64, result: Answer) -> proto::UploadResponse {
    proto::UploadResponse {
        batch_id,
        result: Some(result),
    }
}

/// Answer one batch. `Err` ends the stream (the device may no longer upload).
async fn handle_batch(
    state: &GrpcState,
    device: &DeviceIdentity,
    batch: proto::EventBatch,
) -> Result<proto::UploadResponse, Status> {
    let proto::EventBatch { batch_id, events } = batch;
    recheck(&state.store, device).await?;
    let max = state.limits.max_batch_events;
    if events.len() > max {
        return Ok(answer(
            batch_id,
            Answer::Error(proto::BatchError {
                retryable: false,
                message: format!(
                    "batch has {} events; at most {max} are accepted, split it",
                    events.len()
                ),
                retry_after_ms: 0,
            }),
        ));
    }
    let Ok(_permit) = state.ingest_permits.clone().try_acquire_owned() else {
        debug!(device_id = %device.id, batch_id, "Ingest saturated, asking agent to slow down");
        return Ok(answer(
            batch_id,
            Answer::SlowDown(proto::SlowDown {
                retry_after_ms: state.jittered_retry_ms(),
            }),
        ));
    };

    let mut rows = Vec::with_capacity(events.len());
    let mut rejected = Vec::new();
    let mut seen = HashSet::with_capacity(events.len());
    let mut spoofed = 0usize;
    for record in events {
        let raw_id = record.id.clone();
        match IncomingEvent::try_from(record) {
            Ok(ev) => {
                if !seen.insert(ev.id) {
                    continue; // same id twice in one batch: store once, ack once
                }
                let (row, was_spoofed) = ev.into_new_event(&device.id);
                spoofed += usize::from(was_spoofed);
                rows.push(row);
            }
            Err(problem) => rejected.push(proto::Rejected {
                id: raw_id,
                reason: problem.to_string(),
            }),
        }
    }
    if spoofed > 0 {
        warn!(device_id = %device.id, batch_id, spoofed, "Events claimed another device id; replaced with the certificate's");
    }
    if !rejected.is_empty() {
        warn!(device_id = %device.id, batch_id, rejected = rejected.len(), "Rejected malformed events");
    }
    match state.store.insert_events(&device.id, &rows).await {
        Ok(inserted) => {
            debug!(device_id = %device.id, batch_id, received = rows.len(), inserted, "Batch committed");
            let event_ids = rows.iter().map(|r| r.id.to_string()).collect();
            Ok(answer(
                batch_id,
                Answer::Ack(proto::Ack {
                    event_ids,
                    rejected,
                }),
            ))
        }
        Err(e) => {
            error!(error = %e, device_id = %device.id, batch_id, "Batch not stored; not acknowledged");
            Ok(answer(
                batch_id,
                Answer::Error(proto::BatchError {
                    retryable: true,
                    message: "store error: batch not stored, retry later".into(),
                    retry_after_ms: state.jittered_retry_ms(),
                }),
            ))
        }
    }
}
