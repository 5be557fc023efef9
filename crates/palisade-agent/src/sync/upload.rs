//! Audit upload: drain the spool to the control plane over one `Upload`
//! stream, oldest first, in batches.
//!
//! The ack rule: a spooled record is deleted only after the server's `Ack`
//! for the batch that carried it names its id (or rejects it as malformed,
//! which the server does for records that can never be stored). Anything
//! else (SlowDown, BatchError, a broken stream, a missing answer, a crash)
//! leaves the record in the spool to be sent again; the server deduplicates
//! by event id, so a lost ack costs a re-send, never a duplicate. This
//! module must never delete an id it did not send in the acknowledged batch.
//!
//! Head-of-line safety: a record too large for one gRPC message would be
//! refused forever and block every record behind it, so such a record has
//! its captured texts cut (the `truncated` flags set, and
//! `details.upload_truncated.original_bytes` added) until it fits. A batch
//! the server refuses as too large is split in half, and the smaller size is
//! kept for the rest of the session (the server's limit is static config).

use super::backoff::{server_delay, Backoff};
use super::{Ctx, Link};
use palisade_core::AuditEvent;
use palisade_proto as proto;
use proto::audit_service_client::AuditServiceClient;
use proto::upload_response::Result as Answer;
use std::collections::HashSet;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

/// How one batch went.
enum Outcome {
    /// Acknowledged; the spool was trimmed.
    Acked,
    /// The server asked us to wait this long; the stream stays usable.
    Wait(std::time::Duration),
    /// The stream is no longer usable; reconnect after backoff.
    Broken,
    /// Shutdown was requested.
    Stop,
}

/// Drain the spool until `stop`.
pub(crate) async fn run(ctx: &Ctx, link: &Link, mut stop: watch::Receiver<bool>) {
    let mut wake = ctx.recorder.subscribe();
    let mut backoff = Backoff::new(ctx.opts.backoff_base, ctx.opts.backoff_cap);
    let mut client = AuditServiceClient::new(link.channel.clone())
        .max_decoding_message_size(ctx.opts.max_message_bytes)
        .max_encoding_message_size(ctx.opts.max_message_bytes);
    let mut batch_limit = ctx.opts.batch_max_events.max(1);
    let mut next_batch_id = 1u64;
    'connect: loop {
        // Open a stream only when there is something to send.
        match ctx.spool.peek(1).await {
            Ok(v) if v.is_empty() => {
                if wait_for_work(ctx, &mut wake, &mut stop).await {
                    return;
                }
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                error!(%error, "Cannot read the spool");
                if super::sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
                continue;
            }
        }
        let (tx, rx) = mpsc::channel::<proto::EventBatch>(1);
        let call = client.upload(ReceiverStream::new(rx));
        let opened = tokio::select! {
            _ = super::stopped(&mut stop) => return,
            r = tokio::time::timeout(ctx.opts.rpc_timeout, call) => r,
        };
        let mut answers = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => {
                ctx.note_status("upload", &status);
                if super::sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                warn!("Opening the upload stream timed out");
                if super::sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        debug!("Upload stream open");
        loop {
            let events = match ctx.spool.peek(batch_limit).await {
                Ok(v) => v,
                Err(error) => {
                    error!(%error, "Cannot read the spool");
                    if super::sleep_or_stop(backoff.next_delay(), &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            if events.is_empty() {
                if wait_for_work(ctx, &mut wake, &mut stop).await {
                    return;
                }
                continue;
            }
            let (batch, sent) = build_batch(ctx, link, next_batch_id, events);
            next_batch_id += 1;
            let outcome = send_batch(ctx, &tx, &mut answers, batch, &sent, &mut batch_limit, &mut stop).await;
            match outcome {
                Outcome::Acked => backoff.reset(),
                Outcome::Wait(delay) => {
                    if super::sleep_or_stop(delay, &mut stop).await {
                        return;
                    }
                }
                Outcome::Broken => {
                    let delay = backoff.next_delay();
                    debug!(delay_ms = delay.as_millis() as u64, "Upload retry scheduled");
                    if super::sleep_or_stop(delay, &mut stop).await {
                        return;
                    }
                    continue 'connect;
                }
                Outcome::Stop => return,
            }
        }
    }
}

/// Up to `opts.batch_max_bytes` of `events` (at least one) as a batch, with
/// the enrolled device id in each record (records spooled before enrollment
/// carry the local id; the certificate proves the enrolled one anyway).
fn build_batch(ctx: &Ctx, link: &Link, batch_id: u64, events: Vec<AuditEvent>) -> (proto::EventBatch, HashSet<Uuid>) {
    let mut records = Vec::with_capacity(events.len());
    let mut sent = HashSet::with_capacity(events.len());
    let mut bytes = 0usize;
    let record_limit = ctx.opts.max_message_bytes / 4 * 3;
    for mut ev in events {
        ev.device.id.clone_from(&link.device_id);
        let json = match encode_fitting(&mut ev, record_limit) {
            Ok(j) => j,
            Err(error) => {
                // Cannot happen for a record that came out of the spool's JSON.
                error!(%error, id = %ev.id, "Cannot encode a spooled record; skipping it this round");
                continue;
            }
        };
        if !records.is_empty() && bytes + json.len() > ctx.opts.batch_max_bytes {
            break;
        }
        bytes += json.len();
        sent.insert(ev.id);
        records.push(proto::AuditRecord {
            id: ev.id.to_string(),
            json,
        });
    }
    (proto::EventBatch { batch_id, events: records }, sent)
}

/// The record's JSON, cut down to at most `limit` bytes if needed: first
/// the captured prompt and response text, then request params, then (last
/// resort) everything but the envelope. The cut is marked in the record.
fn encode_fitting(ev: &mut AuditEvent, limit: usize) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(&*ev)?;
    let original = json.len();
    if original <= limit {
        return Ok(json);
    }
    let mark = |ev: &mut AuditEvent| {
        let note = serde_json::json!({ "original_bytes": original });
        match &mut ev.details {
            serde_json::Value::Object(m) => {
                m.insert("upload_truncated".into(), note);
            }
            other => *other = serde_json::json!({ "upload_truncated": note }),
        }
    };
    if let Some(i) = ev.interaction.as_mut() {
        let budget = limit / 4;
        i.request.truncated |= cut(&mut i.request.prompt, budget);
        i.response.truncated |= cut(&mut i.response.text, budget);
    }
    mark(ev);
    let mut json = serde_json::to_vec(&*ev)?;
    if json.len() > limit {
        if let Some(i) = ev.interaction.as_mut() {
            i.request.params = serde_json::Value::Null;
        }
        json = serde_json::to_vec(&*ev)?;
    }
    if json.len() > limit {
        ev.interaction = None;
        ev.details = serde_json::Value::Null;
        mark(ev);
        json = serde_json::to_vec(&*ev)?;
    }
    warn!(id = %ev.id, original_bytes = original, sent_bytes = json.len(), "Record too large for one message; uploading it cut down");
    Ok(json)
}

/// Cut `text` to at most `max` bytes on a char boundary; `true` if cut.
fn cut(text: &mut Option<String>, max: usize) -> bool {
    let Some(t) = text else { return false };
    if t.len() <= max {
        return false;
    }
    let mut end = max;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t.truncate(end);
    true
}

/// Send one batch and act on its answer.
async fn send_batch(
    ctx: &Ctx,
    tx: &mpsc::Sender<proto::EventBatch>,
    answers: &mut tonic::Streaming<proto::UploadResponse>,
    batch: proto::EventBatch,
    sent: &HashSet<Uuid>,
    batch_limit: &mut usize,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let batch_id = batch.batch_id;
    let count = batch.events.len();
    if tx.send(batch).await.is_err() {
        debug!(batch_id, "Upload stream closed before the batch was sent");
        return Outcome::Broken;
    }
    let answer = tokio::select! {
        _ = super::stopped(stop) => return Outcome::Stop,
        a = tokio::time::timeout(ctx.opts.ack_timeout, answers.message()) => a,
    };
    let resp = match answer {
        Err(_) => {
            warn!(batch_id, events = count, "No answer to a batch in time; it will be sent again");
            return Outcome::Broken;
        }
        Ok(Err(status)) => {
            ctx.note_status("upload", &status);
            return Outcome::Broken;
        }
        Ok(Ok(None)) => {
            info!(batch_id, "Upload stream closed by the server; the batch will be sent again");
            return Outcome::Broken;
        }
        Ok(Ok(Some(r))) => r,
    };
    if resp.batch_id != batch_id {
        warn!(expected = batch_id, got = resp.batch_id, "Answer for another batch; reconnecting");
        return Outcome::Broken;
    }
    match resp.result {
        Some(Answer::Ack(proto::Ack { event_ids, rejected })) => {
            let rejected_count = rejected.len();
            for r in &rejected {
                warn!(id = %r.id, reason = %r.reason, "Server rejected a record as malformed; dropping it");
            }
            let ids: Vec<Uuid> = event_ids
                .iter()
                .chain(rejected.iter().map(|r| &r.id))
                .filter_map(|s| Uuid::parse_str(s).ok())
                .filter(|id| sent.contains(id))
                .collect();
            if ids.is_empty() {
                warn!(batch_id, events = count, "Ack named none of the batch's records; retrying later");
                return Outcome::Broken;
            }
            match ctx.spool.ack(&ids).await {
                Ok(deleted) => {
                    ctx.shared.status.send_modify(|s| s.uploaded_events += ids.len() as u64);
                    debug!(batch_id, acked = ids.len(), deleted, rejected = rejected_count, "Batch acknowledged");
                    Outcome::Acked
                }
                Err(error) => {
                    // The server has them; re-sending is harmless (dedup by id).
                    error!(%error, batch_id, "Acknowledged records could not be removed from the spool");
                    Outcome::Broken
                }
            }
        }
        Some(Answer::SlowDown(proto::SlowDown { retry_after_ms })) => {
            debug!(batch_id, retry_after_ms, "Server asked to slow down");
            Outcome::Wait(server_delay(retry_after_ms, ctx.opts.backoff_base))
        }
        Some(Answer::Error(proto::BatchError {
            retryable,
            message,
            retry_after_ms,
        })) => {
            if retryable {
                warn!(batch_id, %message, retry_after_ms, "Batch not stored; retrying later");
                ctx.set_error(format!("upload: {message}"));
                return Outcome::Wait(server_delay(retry_after_ms, ctx.opts.backoff_base));
            }
            if *batch_limit > 1 {
                *batch_limit = (*batch_limit / 2).max(1);
                warn!(batch_id, %message, batch_limit = *batch_limit, "Batch refused; sending smaller batches");
                return Outcome::Wait(std::time::Duration::ZERO);
            }
            error!(batch_id, %message, "Server refuses even a single record; keeping it and retrying later");
            ctx.set_error(format!("upload: {message}"));
            Outcome::Broken
        }
        None => {
            warn!(batch_id, "Answer without a result; reconnecting");
            Outcome::Broken
        }
    }
}

/// Wait until a record is spooled (or the poll interval passes). `true`: stop.
async fn wait_for_work(ctx: &Ctx, wake: &mut broadcast::Receiver<std::sync::Arc<AuditEvent>>, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = super::stopped(stop) => return true,
        r = wake.recv() => {
            if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                // Recorder gone: fall back to polling.
                return super::sleep_or_stop(ctx.opts.poll_interval, stop).await;
            }
        }
        _ = tokio::time::sleep(ctx.opts.poll_interval) => {}
    }
    // Everything already queued is covered by the next peek.
    while wake.try_recv().is_ok() {}
    false
}

#[cfg(test)]
mod tests;
