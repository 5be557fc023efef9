//! Policy cache and the policy stream against a scripted fake
//! `PolicyService` (plaintext gRPC on 127.0.0.1).

use super::*;
use crate::sync::testing::{client, fast, until};
use proto::policy_service_server::{PolicyService, PolicyServiceServer};
use std::sync::{Arc, Mutex};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

#[test]
fn cache_round_trips_and_garbage_is_ignored() {
    let d = tempfile::tempdir().unwrap();
    assert!(load_cached(d.path()).is_none());
    let p = Policy { version: 7, ..Default::default() };
    store_cached(d.path(), &p).unwrap();
    assert_eq!(load_cached(d.path()), Some(p));
    std::fs::write(d.path().join(POLICY_CACHE_FILE), r#"{"version": "seven"}"#).unwrap();
    assert!(load_cached(d.path()).is_none(), "an invalid cache is not used");
    std::fs::write(d.path().join(POLICY_CACHE_FILE), "\u{0}\u{1}").unwrap();
    assert!(load_cached(d.path()).is_none());
}

#[test]
fn cache_write_leaves_no_temp_files() {
    let d = tempfile::tempdir().unwrap();
    for v in 1..5 {
        store_cached(d.path(), &Policy { version: v, ..Default::default() }).unwrap();
    }
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![POLICY_CACHE_FILE.to_string()]);
    assert_eq!(load_cached(d.path()).unwrap().version, 4);
}

/// Sends `updates` on every connection, then ends the stream.
#[derive(Clone, Default)]
struct Fake {
    updates: Arc<Mutex<Vec<proto::PolicyUpdate>>>,
    connects: Arc<Mutex<Vec<u64>>>,
    reported: Arc<Mutex<Vec<u64>>>,
}

type Updates = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<proto::PolicyUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for Fake {
    type WatchPolicyStream = Updates;

    async fn watch_policy(&self, req: Request<proto::WatchPolicyRequest>) -> Result<Response<Updates>, Status> {
        self.connects.lock().unwrap().push(req.into_inner().known_version);
        let updates = self.updates.lock().unwrap().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(updates.len().max(1));
        for u in updates {
            tx.send(Ok(u)).await.unwrap();
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_applied(
        &self,
        req: Request<proto::ReportAppliedRequest>,
    ) -> Result<Response<proto::ReportAppliedResponse>, Status> {
        self.reported.lock().unwrap().push(req.into_inner().version);
        Ok(Response::new(proto::ReportAppliedResponse {}))
    }
}

fn update(version: u64, doc: &[u8]) -> proto::PolicyUpdate {
    proto::PolicyUpdate { version, document_json: doc.to_vec(), created_at_unix_ms: 0 }
}

fn doc(p: &Policy) -> Vec<u8> {
    serde_json::to_vec(p).unwrap()
}

/// Run the policy loop against `fake` until `done`, then stop it.
async fn follow(fake: &Fake, dir: &Path, done: impl Fn(&Ctx) -> bool) -> crate::sync::SyncClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let (client, link) = client(addr, dir, fast(500)).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let ctx = &client.ctx;
        let task = run(ctx, &link, stop_rx);
        tokio::pin!(task);
        tokio::select! {
            _ = &mut task => panic!("policy loop returned before stop"),
            _ = until("the expected policy state", || done(ctx)) => {}
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("stops promptly");
    }
    client
}

#[tokio::test]
async fn a_new_version_is_applied_cached_recorded_and_reported_once() {
    let d = tempfile::tempdir().unwrap();
    let v3 = Policy { version: 99, capture: palisade_core::CaptureMode::Metadata, ..Default::default() };
    let fake = Fake::default();
    fake.updates.lock().unwrap().push(update(3, &doc(&v3)));
    // Wait for two connections: the same version again must not re-record.
    let f = fake.clone();
    let client = follow(&fake, d.path(), move |_| f.reported.lock().unwrap().len() >= 2).await;
    let ctx = &client.ctx;
    let active = ctx.policy.current();
    assert_eq!(active.version, 3, "the stream's version wins over the document's");
    assert_eq!(active.capture, palisade_core::CaptureMode::Metadata);
    assert_eq!(load_cached(d.path()).unwrap().version, 3);
    assert_eq!(fake.reported.lock().unwrap()[..2], [3, 3]);
    let connects = fake.connects.lock().unwrap().clone();
    assert_eq!(connects[..2], [0, 3], "a reconnect names the version it holds");
    assert_eq!(ctx.shared.status.borrow().applied_policy_version, Some(3));

    ctx.recorder.flush().await;
    let applied: Vec<_> = ctx
        .spool
        .peek(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::PolicyApplied)
        .collect();
    assert_eq!(applied.len(), 1, "one policy.applied record per change");
    assert_eq!(applied[0].details["version"], 3);
    assert_eq!(applied[0].details["previous_version"], 0);
    assert_eq!(applied[0].device.id, "enrolled-id");
    assert_eq!(applied[0].user.email.as_deref(), Some("ann@example.com"));
}

#[tokio::test]
async fn invalid_versions_are_refused_and_the_old_one_stays() {
    let d = tempfile::tempdir().unwrap();
    let good = Policy { version: 1, ..Default::default() };
    let mut bad_regex = Policy::default();
    bad_regex.guardrails.custom.push(palisade_core::policy::CustomRule {
        id: "broken".into(),
        regex: Some("(unclosed".into()),
        keywords: vec![],
        action: Default::default(),
    });
    let fake = Fake::default();
    fake.updates.lock().unwrap().extend([
        update(0, &doc(&Policy::default())),
        update(1, &doc(&good)),
        update(2, &doc(&bad_regex)),
        update(3, b"{not json"),
        update(4, &[0xff, 0xfe]),
        update(5, br#"{"unknown_key": 1}"#),
    ]);
    let f = fake.clone();
    let client = follow(&fake, d.path(), move |_| f.connects.lock().unwrap().len() >= 2).await;
    let ctx = &client.ctx;
    assert_eq!(ctx.policy.current().version, 1, "only the valid version is in force");
    assert!(fake.reported.lock().unwrap().iter().all(|v| *v == 1), "refused versions are not reported");
    assert_eq!(load_cached(d.path()).unwrap().version, 1);
    let err = ctx.shared.status.borrow().last_error.clone().unwrap();
    assert!(err.starts_with("policy version"), "{err}");
}
