//! The uploader against a scripted fake `AuditService` (plaintext gRPC on
//! 127.0.0.1): every answer the contract allows, and some it does not.

use super::*;
use crate::sync::testing::{fast, until};
use crate::sync::{SyncClient, SyncOptions};
use palisade_core::{DeviceRef, EventKind, UserRef};
use proto::audit_service_server::{AuditService, AuditServiceServer};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Clone)]
enum Step {
    Ack,
    /// Ack naming these ids instead of the batch's.
    AckIds(Vec<String>),
    RejectAll,
    SlowDown(u32),
    Error { retryable: bool },
    WrongBatchId,
    Fail(tonic::Code),
}

/// One received batch: its ids and the device ids inside its records.
type Seen = (Vec<String>, Vec<String>);

#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<VecDeque<Step>>>,
    /// Each received batch: (ids, device ids in the JSON).
    seen: Arc<Mutex<Vec<Seen>>>,
}

type Answers = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<proto::UploadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Fake {
    type UploadStream = Answers;

    async fn upload(&self, req: Request<Streaming<proto::EventBatch>>) -> Result<Response<Answers>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let ids: Vec<String> = batch.events.iter().map(|r| r.id.clone()).collect();
                let devices = batch
                    .events
                    .iter()
                    .map(|r| {
                        let v: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
                        v["device"]["id"].as_str().unwrap().to_string()
                    })
                    .collect();
                fake.seen.lock().unwrap().push((ids.clone(), devices));
                let step = fake.script.lock().unwrap().pop_front().unwrap_or(Step::Ack);
                let result = match step {
                    Step::Ack => Answer::Ack(proto::Ack { event_ids: ids, rejected: vec![] }),
                    Step::AckIds(other) => Answer::Ack(proto::Ack { event_ids: other, rejected: vec![] }),
                    Step::RejectAll => Answer::Ack(proto::Ack {
                        event_ids: vec![],
                        rejected: ids
                            .iter()
                            .map(|id| proto::Rejected { id: id.clone(), reason: "bad json".into() })
                            .collect(),
                    }),
                    Step::SlowDown(ms) => Answer::SlowDown(proto::SlowDown { retry_after_ms: ms }),
                    Step::Error { retryable } => Answer::Error(proto::BatchError {
                        retryable,
                        message: "nope".into(),
                        retry_after_ms: 10,
                    }),
                    Step::WrongBatchId => {
                        let _ = tx
                            .send(Ok(proto::UploadResponse {
                                batch_id: batch.batch_id + 1000,
                                result: Some(Answer::Ack(proto::Ack { event_ids: ids, rejected: vec![] })),
                            }))
                            .await;
                        continue;
                    }
                    Step::Fail(code) => {
                        let _ = tx.send(Err(Status::new(code, "device dev-1 was revoked"))).await;
                        return;
                    }
                };
                let answer = proto::UploadResponse { batch_id: batch.batch_id, result: Some(result) };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Rig {
    fake: Fake,
    client: SyncClient,
    link: Link,
    _dir: tempfile::TempDir,
}

async fn rig(script: Vec<Step>, opts: SyncOptions) -> Rig {
    let fake = Fake { script: Arc::new(Mutex::new(script.into())), ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = AuditServiceServer::new(fake.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let (client, link) = crate::sync::testing::client(addr, dir.path(), opts).await;
    Rig { fake, client, link, _dir: dir }
}

fn event() -> AuditEvent {
    AuditEvent::new(
        EventKind::Interaction,
        DeviceRef { id: "local-id".into(), hostname: "h".into(), os: "linux".into() },
        UserRef::default(),
    )
}

async fn fill(ctx: &Ctx, n: usize) -> Vec<String> {
    let evs: Vec<_> = (0..n).map(|_| event()).collect();
    ctx.spool.append_batch(&evs).await.unwrap();
    evs.iter().map(|e| e.id.to_string()).collect()
}

async fn drained(ctx: &Ctx) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ctx.spool.peek(1).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for an empty spool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run the uploader until `check` passes, then stop it.
async fn with_uploader<F: std::future::Future<Output = ()>>(r: &Rig, check: F) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = &r.client.ctx;
    let up = run(ctx, &r.link, stop_rx);
    tokio::pin!(up);
    tokio::select! {
        _ = &mut up => panic!("uploader returned before stop"),
        _ = check => {}
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), up).await.expect("uploader stops promptly");
}

fn seen(r: &Rig) -> Vec<Seen> {
    r.fake.seen.lock().unwrap().clone()
}

#[tokio::test]
async fn acked_batch_leaves_the_spool_stamped_with_the_enrolled_id() {
    let r = rig(vec![], fast(500)).await;
    let ids = fill(&r.client.ctx, 3).await;
    with_uploader(&r, drained(&r.client.ctx)).await;
    let s = seen(&r);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, ids, "oldest first, one batch");
    assert!(s[0].1.iter().all(|d| d == "enrolled-id"), "{:?}", s[0].1);
    assert_eq!(r.client.ctx.shared.status.borrow().uploaded_events, 3);
}

#[tokio::test]
async fn slow_down_and_retryable_errors_keep_the_events_and_resend_them() {
    let r = rig(vec![Step::SlowDown(20), Step::Error { retryable: true }], fast(500)).await;
    let ids = fill(&r.client.ctx, 4).await;
    with_uploader(&r, drained(&r.client.ctx)).await;
    let s = seen(&r);
    assert_eq!(s.len(), 3, "slow down, error, then ack");
    assert!(s.iter().all(|(b, _)| *b == ids), "the same batch each time");
    assert!(r.client.ctx.shared.status.borrow().last_error.as_deref().unwrap().contains("nope"));
}

#[tokio::test]
async fn a_refused_batch_is_split_until_it_fits() {
    let r = rig(vec![Step::Error { retryable: false }, Step::Error { retryable: false }], fast(8)).await;
    let ids = fill(&r.client.ctx, 8).await;
    with_uploader(&r, drained(&r.client.ctx)).await;
    let sizes: Vec<usize> = seen(&r).iter().map(|(b, _)| b.len()).collect();
    assert_eq!(sizes, vec![8, 4, 2, 2, 2, 2]);
    let sent: Vec<String> = seen(&r)[2..].iter().flat_map(|(b, _)| b.clone()).collect();
    assert_eq!(sent, ids, "every event sent, in order");
}

#[tokio::test]
async fn an_ack_for_ids_not_in_the_batch_deletes_nothing() {
    let r = rig(vec![], fast(3)).await;
    let ids = fill(&r.client.ctx, 6).await;
    // Batch 1 carries ids[0..3]; the server "acks" ids[3..6], which were not sent.
    r.fake.script.lock().unwrap().push_back(Step::AckIds(ids[3..].to_vec()));
    with_uploader(&r, drained(&r.client.ctx)).await;
    let s = seen(&r);
    assert_eq!(s[0].0, ids[..3].to_vec());
    assert_eq!(s[1].0, ids[..3].to_vec(), "batch 1 is re-sent: its events were kept");
    assert_eq!(s[2].0, ids[3..].to_vec(), "the falsely acked events were kept and sent");
    assert_eq!(s.len(), 3);
}

#[tokio::test]
async fn rejected_records_are_dropped_not_retried() {
    let r = rig(vec![Step::RejectAll], fast(500)).await;
    fill(&r.client.ctx, 2).await;
    with_uploader(&r, drained(&r.client.ctx)).await;
    assert_eq!(seen(&r).len(), 1);
}

#[tokio::test]
async fn an_answer_for_another_batch_means_resend() {
    let r = rig(vec![Step::WrongBatchId], fast(500)).await;
    let ids = fill(&r.client.ctx, 2).await;
    with_uploader(&r, drained(&r.client.ctx)).await;
    let s = seen(&r);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].0, ids);
}

#[tokio::test]
async fn a_refused_device_keeps_its_events_and_says_why() {
    let r = rig(vec![Step::Fail(tonic::Code::PermissionDenied); 3], fast(500)).await;
    let ids = fill(&r.client.ctx, 2).await;
    let ctx = &r.client.ctx;
    with_uploader(&r, until("three refusals", || seen(&r).len() >= 3)).await;
    let left: Vec<String> = ctx.spool.peek(10).await.unwrap().iter().map(|e| e.id.to_string()).collect();
    assert_eq!(left, ids, "nothing deleted");
    let err = ctx.shared.status.borrow().last_error.clone().unwrap();
    assert!(err.contains("PermissionDenied") && err.contains("revoked"), "{err}");
}

#[tokio::test]
async fn a_new_record_wakes_the_idle_uploader_without_polling() {
    let opts = SyncOptions { poll_interval: Duration::from_secs(3600), ..fast(500) };
    let r = rig(vec![], opts).await;
    let ctx = &r.client.ctx;
    let ev = event();
    let id = ev.id.to_string();
    let check = async {
        // Let the uploader find the spool empty and go idle first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ctx.recorder.record(ev);
        until("the new record at the server", || seen(&r).iter().any(|(b, _)| b.contains(&id))).await;
    };
    with_uploader(&r, check).await;
}

#[tokio::test]
async fn a_batch_is_cut_at_the_byte_limit_but_never_empty() {
    let r = rig(vec![], SyncOptions { batch_max_bytes: 1, ..fast(500) }).await;
    fill(&r.client.ctx, 3).await;
    with_uploader(&r, drained(&r.client.ctx)).await;
    let sizes: Vec<usize> = seen(&r).iter().map(|(b, _)| b.len()).collect();
    assert_eq!(sizes, vec![1, 1, 1]);
}

fn big_interaction(prompt: usize, params: usize) -> AuditEvent {
    let mut ev = event();
    ev.interaction = Some(palisade_core::Interaction {
        provider: "openai".into(),
        request: palisade_core::RequestCapture {
            prompt: Some("é".repeat(prompt / 2)),
            params: serde_json::json!({"blob": "p".repeat(params)}),
            ..Default::default()
        },
        response: palisade_core::ResponseCapture { text: Some("r".repeat(prompt)), ..Default::default() },
        ..Default::default()
    });
    ev
}

#[test]
fn small_records_are_sent_unchanged() {
    let mut ev = event();
    let before = serde_json::to_vec(&ev).unwrap();
    assert_eq!(encode_fitting(&mut ev, 1 << 20).unwrap(), before);
}

#[test]
fn oversized_captures_are_cut_and_marked() {
    let mut ev = big_interaction(100_000, 10);
    let json = encode_fitting(&mut ev, 20_000).unwrap();
    assert!(json.len() <= 20_000, "{}", json.len());
    let back: AuditEvent = serde_json::from_slice(&json).unwrap();
    let i = back.interaction.unwrap();
    assert!(i.request.truncated && i.response.truncated);
    assert_eq!(i.provider, "openai");
    assert!(back.details["upload_truncated"]["original_bytes"].as_u64().unwrap() > 200_000);
    assert!(i.request.prompt.unwrap().chars().all(|c| c == 'é'), "cut on a char boundary");
}

#[test]
fn oversized_params_go_next_and_the_envelope_always_fits() {
    let mut ev = big_interaction(10, 100_000);
    let json = encode_fitting(&mut ev, 20_000).unwrap();
    assert!(json.len() <= 20_000);
    assert!(ev.interaction.as_ref().unwrap().request.params.is_null());

    let mut ev = event();
    ev.details = serde_json::json!(["x".repeat(50_000)]);
    let id = ev.id;
    let json = encode_fitting(&mut ev, 2_000).unwrap();
    assert!(json.len() <= 2_000);
    let back: AuditEvent = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.id, id);
    assert!(back.details["upload_truncated"].is_object());
}

#[tokio::test]
async fn a_record_larger_than_a_message_does_not_block_the_ones_behind_it() {
    let r = rig(vec![], SyncOptions { max_message_bytes: 64 * 1024, ..fast(500) }).await;
    let ctx = &r.client.ctx;
    let big = big_interaction(1_000_000, 10);
    let small = event();
    ctx.spool.append_batch(&[big.clone(), small.clone()]).await.unwrap();
    with_uploader(&r, drained(ctx)).await;
    let sent: Vec<String> = seen(&r).iter().flat_map(|(b, _)| b.clone()).collect();
    assert_eq!(sent, vec![big.id.to_string(), small.id.to_string()]);
}
