//! End-to-end: the real server in-process, real mTLS gRPC on 127.0.0.1:0,
//! real admin HTTP. PostgreSQL cases run when PALISADE_TEST_POSTGRES_URL is set.

mod support;

use palisade_proto as proto;
use proto::upload_response::Result as Answer;
use reqwest::Method;
use std::time::Duration;
use support::*;
use tonic::Code;

#[tokio::test]
async fn enroll_upload_ack_and_retry_stores_nothing_twice() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;

    let b1: Vec<_> = (0..50).map(|_| record(&dev.id, "openai")).collect();
    let b2: Vec<_> = (0..30).map(|_| record(&dev.id, "anthropic")).collect();
    let answers = upload(
        &mut c.audit,
        vec![batch(1, b1.clone()), batch(2, b2.clone())],
    )
    .await
    .unwrap();
    assert_eq!(
        answers.iter().map(|a| a.batch_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        acked_ids(&answers[0]),
        b1.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(acked_ids(&answers[1]).len(), 30);

    // The ack for batch 1 was "lost": the agent sends it again on a new stream.
    let again = upload(&mut c.audit, vec![batch(3, b1.clone())])
        .await
        .unwrap();
    assert_eq!(
        acked_ids(&again[0]).len(),
        50,
        "a re-sent event is acknowledged again"
    );

    let stored = srv.events("limit=1000").await;
    assert_eq!(stored.len(), 80, "nothing stored twice");
    assert_eq!(srv.events("provider=anthropic").await.len(), 30);
    assert_eq!(srv.events(&format!("device={}", dev.id)).await.len(), 80);
    srv.stop().await;
}

#[tokio::test]
async fn device_id_in_payload_is_ignored() {
    let srv = TestServer::start().await;
    let victim = srv.enroll_new("hw-victim").await;
    let attacker = srv.enroll_new("hw-attacker").await;
    let mut c = srv.clients(&attacker).await;
    let spoofed = record(&victim.id, "openai");
    let answers = upload(&mut c.audit, vec![batch(1, vec![spoofed.clone()])])
        .await
        .unwrap();
    assert_eq!(acked_ids(&answers[0]), vec![spoofed.id.clone()]);

    assert!(srv
        .events(&format!("device={}", victim.id))
        .await
        .is_empty());
    let mine = srv.events(&format!("device={}", attacker.id)).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(
        mine[0]["device"]["id"],
        attacker.id.as_str(),
        "stored record carries the certificate's id"
    );
    srv.stop().await;
}

#[tokio::test]
async fn malformed_events_are_rejected_not_stored_and_the_rest_acked() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let good = record(&dev.id, "openai");
    let bad_json = proto::AuditRecord {
        id: uuid::Uuid::now_v7().to_string(),
        json: b"{oops".to_vec(),
    };
    let bad_id = proto::AuditRecord {
        id: "42".into(),
        json: good.json.clone(),
    };
    let answers = upload(
        &mut c.audit,
        vec![batch(
            9,
            vec![good.clone(), bad_json.clone(), bad_id, good.clone()],
        )],
    )
    .await
    .unwrap();
    let Some(Answer::Ack(ack)) = &answers[0].result else {
        panic!("{answers:?}")
    };
    assert_eq!(
        ack.event_ids,
        vec![good.id.clone()],
        "duplicate within a batch is acked once"
    );
    assert_eq!(ack.rejected.len(), 2);
    assert_eq!(ack.rejected[0].id, bad_json.id);
    assert!(
        ack.rejected[0].reason.contains("json"),
        "{:?}",
        ack.rejected
    );
    assert!(
        ack.rejected[1].reason.contains("not a UUID"),
        "{:?}",
        ack.rejected
    );
    assert_eq!(srv.events("").await.len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn too_many_events_in_a_batch_is_a_clear_non_retryable_error() {
    let srv = TestServer::start_with(|c| c.limits.max_batch_events = 5).await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let events: Vec<_> = (0..6).map(|_| record(&dev.id, "openai")).collect();
    let answers = upload(&mut c.audit, vec![batch(1, events)]).await.unwrap();
    let Some(Answer::Error(e)) = &answers[0].result else {
        panic!("{answers:?}")
    };
    assert!(!e.retryable);
    assert!(e.message.contains("at most 5"), "{}", e.message);
    assert!(srv.events("").await.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn revoked_device_is_refused_on_its_next_call() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    c.policy
        .report_applied(proto::ReportAppliedRequest { version: 0 })
        .await
        .unwrap();

    let (s, v) = srv
        .admin(
            Method::POST,
            &format!("/api/v1/devices/{}/revoke", dev.id),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked"], true);

    let e = c
        .policy
        .report_applied(proto::ReportAppliedRequest { version: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("revoked"), "{e}");
    let e = upload(
        &mut c.audit,
        vec![batch(1, vec![record(&dev.id, "openai")])],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = c
        .policy
        .watch_policy(proto::WatchPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    let (_, list) = srv.admin(Method::GET, "/api/v1/devices", None).await;
    assert_eq!(list["devices"][0]["revoked"], true, "{list}");
    let (s, _) = srv
        .admin(Method::POST, "/api/v1/devices/nope/revoke", None)
        .await;
    assert_eq!(s, 404);
    srv.stop().await;
}

#[tokio::test]
async fn revocation_stops_an_open_upload_stream_at_the_next_batch() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = c
        .audit
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(batch(1, vec![record(&dev.id, "openai")]))
        .await
        .unwrap();
    assert_eq!(
        acked_ids(&answers.message().await.unwrap().unwrap()).len(),
        1
    );
    srv.admin(
        Method::POST,
        &format!("/api/v1/devices/{}/revoke", dev.id),
        None,
    )
    .await;
    tx.send(batch(2, vec![record(&dev.id, "openai")]))
        .await
        .unwrap();
    let e = answers.message().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert_eq!(srv.events("").await.len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn revocation_ends_an_open_policy_stream() {
    let srv = TestServer::start_with(|c| c.limits.stream_recheck_ms = 100).await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let mut watch = c
        .policy
        .watch_policy(proto::WatchPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().version, 0);
    srv.admin(
        Method::POST,
        &format!("/api/v1/devices/{}/revoke", dev.id),
        None,
    )
    .await;
    let e = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    srv.stop().await;
}

#[tokio::test]
async fn tokens_expire_and_run_out() {
    let srv = TestServer::start().await;
    let single = srv.new_token(1, 3600).await;
    srv.enroll(&single, "hw-1").await.unwrap();
    let e = srv.enroll(&single, "hw-2").await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("no uses left"), "{e}");

    let multi = srv.new_token(2, 3600).await;
    srv.enroll(&multi, "hw-3").await.unwrap();
    srv.enroll(&multi, "hw-4").await.unwrap();
    assert!(srv.enroll(&multi, "hw-5").await.is_err());

    let store = palisade_server::Store::open(&srv.cfg).await.unwrap();
    let expired = palisade_server::create_enrollment_token(
        &store,
        5,
        chrono::Utc::now() - chrono::Duration::seconds(1),
        None,
    )
    .await
    .unwrap();
    let e = srv
        .enroll(expired.token.expose(), "hw-6")
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{e}");

    let e = srv
        .enroll("pal_enroll_made_up", "hw-7")
        .await
        .err()
        .unwrap();
    assert!(e.message().contains("unknown token"), "{e}");
    let e = srv.enroll("", "hw-7").await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    srv.stop().await;
}

#[tokio::test]
async fn bad_enrollment_input_is_invalid_argument() {
    let srv = TestServer::start().await;
    let token = srv.new_token(10, 3600).await;
    let mut client = proto::enrollment_client::EnrollmentClient::new(srv.anonymous_channel().await);
    let e = client
        .enroll(proto::EnrollRequest {
            token: token.clone(),
            csr_pem: "garbage".into(),
            facts: Some(facts("hw")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("csr_pem"), "{e}");
    let e = client
        .enroll(proto::EnrollRequest {
            token: token.clone(),
            csr_pem: "x".into(),
            facts: None,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("facts"), "{e}");
    let e = client
        .enroll(proto::EnrollRequest {
            token,
            csr_pem: "x".into(),
            facts: Some(proto::DeviceFacts {
                hardware_id: "".into(),
                ..facts("hw")
            }),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("facts.hardware_id"), "{e}");
    // None of these used the token up.
    srv.stop().await;
}

#[tokio::test]
async fn reenrolling_the_same_hardware_revokes_the_old_identity() {
    let srv = TestServer::start().await;
    let old = srv.enroll_new("serial-XYZ").await;
    let new = srv.enroll_new("serial-XYZ").await;
    assert_ne!(old.id, new.id);
    let mut old_c = srv.clients(&old).await;
    let e = old_c
        .policy
        .report_applied(proto::ReportAppliedRequest { version: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let mut new_c = srv.clients(&new).await;
    new_c
        .policy
        .report_applied(proto::ReportAppliedRequest { version: 0 })
        .await
        .unwrap();

    let (_, v) = srv.admin(Method::GET, "/api/v1/devices", None).await;
    let live: Vec<_> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["revoked"] == false)
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], new.id.as_str());
    srv.stop().await;
}

#[tokio::test]
async fn calls_without_a_client_certificate_are_unauthenticated() {
    let srv = TestServer::start().await;
    let ch = srv.anonymous_channel().await;
    let mut policy = proto::policy_service_client::PolicyServiceClient::new(ch.clone());
    let e = policy
        .report_applied(proto::ReportAppliedRequest { version: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("client certificate"), "{e}");
    let mut inv = proto::inventory_service_client::InventoryServiceClient::new(ch);
    let e = inv
        .report(proto::InventoryReport::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    srv.stop().await;
}

#[tokio::test]
async fn oversize_message_gets_a_clean_error() {
    let srv = TestServer::start_with(|c| c.limits.max_message_bytes = 64 * 1024).await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let big = proto::AuditRecord {
        id: uuid::Uuid::now_v7().to_string(),
        json: vec![b' '; 100 * 1024],
    };
    let e = upload(&mut c.audit, vec![batch(1, vec![big])])
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e}"
    );
    assert!(srv.events("").await.is_empty());
    // The server is fine afterwards.
    let ok = upload(
        &mut c.audit,
        vec![batch(2, vec![record(&dev.id, "openai")])],
    )
    .await
    .unwrap();
    assert_eq!(acked_ids(&ok[0]).len(), 1);
    srv.stop().await;
}

/// Sends raw bytes as a gRPC message body.
#[derive(Debug, Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test]
async fn garbage_protobuf_gets_a_clean_grpc_error() {
    let srv = TestServer::start().await;
    let mut grpc = tonic::client::Grpc::new(srv.anonymous_channel().await);
    for garbage in [
        vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01],
        vec![0xff; 32],
        vec![0x1a, 0x05, 0x0a],
    ] {
        grpc.ready().await.unwrap();
        let e = grpc
            .unary::<Vec<u8>, Vec<u8>, _>(
                tonic::Request::new(garbage),
                http::uri::PathAndQuery::from_static("/palisade.v1.Enrollment/Enroll"),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e}");
        assert!(e.message().to_lowercase().contains("decode"), "{e}");
    }
    // And the server still answers well-formed calls.
    let e = srv.enroll("pal_enroll_unknown", "hw").await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    srv.stop().await;
}

#[tokio::test]
async fn policy_update_reaches_a_watcher_and_applied_version_is_recorded() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let mut watch = c
        .policy
        .watch_policy(proto::WatchPolicyRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.version, 0, "current (default) policy on connect");
    let doc: palisade_core::Policy = serde_json::from_slice(&first.document_json).unwrap();
    assert_eq!(doc, palisade_core::Policy::default());

    let p = palisade_core::Policy {
        capture: palisade_core::CaptureMode::Metadata,
        ..Default::default()
    };
    let (s, v) = srv
        .admin(
            Method::PUT,
            "/api/v1/policy",
            Some(serde_json::to_value(&p).unwrap()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], 1);

    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.version, 1);
    let doc: palisade_core::Policy = serde_json::from_slice(&next.document_json).unwrap();
    assert_eq!(doc.capture, palisade_core::CaptureMode::Metadata);
    assert_eq!(doc.version, 1);

    c.policy
        .report_applied(proto::ReportAppliedRequest { version: 1 })
        .await
        .unwrap();
    let e = c
        .policy
        .report_applied(proto::ReportAppliedRequest { version: 99 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let (_, v) = srv.admin(Method::GET, "/api/v1/devices", None).await;
    assert_eq!(v["devices"][0]["applied_policy_version"], 1);

    // A reconnecting agent gets the newest version first.
    let mut again = c
        .policy
        .watch_policy(proto::WatchPolicyRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.message().await.unwrap().unwrap().version, 1);
    let (_, v) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    assert_eq!(v["version"], 1);
    assert_eq!(v["author"], "test-admin");
    srv.stop().await;
}

#[tokio::test]
async fn store_error_yields_an_error_and_no_ack() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;

    // Make every insert into events fail, as a full disk would, from outside the server.
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(srv.cfg.sqlite_path()))
        .await
        .unwrap();
    sqlx::query("CREATE TRIGGER fail_insert BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        .execute(&db)
        .await
        .unwrap();

    let events: Vec<_> = (0..10).map(|_| record(&dev.id, "openai")).collect();
    let answers = upload(&mut c.audit, vec![batch(1, events.clone())])
        .await
        .unwrap();
    let Some(Answer::Error(e)) = &answers[0].result else {
        panic!("expected an error, got {answers:?}")
    };
    assert!(e.retryable);
    assert!(e.retry_after_ms > 0);
    assert!(
        !e.message.contains("disk is full"),
        "store internals are not leaked: {}",
        e.message
    );

    sqlx::query("DROP TRIGGER fail_insert")
        .execute(&db)
        .await
        .unwrap();
    let answers = upload(&mut c.audit, vec![batch(2, events)]).await.unwrap();
    assert_eq!(acked_ids(&answers[0]).len(), 10);
    assert_eq!(srv.events("").await.len(), 10);
    srv.stop().await;
}

#[tokio::test]
async fn saturated_ingest_answers_slow_down() {
    let srv = TestServer::start_with(|c| c.limits.max_concurrent_batches = 1).await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c1 = srv.clients(&dev).await;
    let mut c2 = srv.clients(&dev).await;
    // Open both streams (authentication writes last_seen) before locking the database.
    let (tx1, rx1) = tokio::sync::mpsc::channel(1);
    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
    let mut s1 = c1
        .audit
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx1))
        .await
        .unwrap()
        .into_inner();
    let mut s2 = c2
        .audit
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();

    // Hold SQLite's write lock from outside: whichever batch takes the only
    // ingest permit waits on it, so the other must be told to slow down.
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(srv.cfg.sqlite_path()))
        .await
        .unwrap();
    let mut lock = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO admin_tokens (id, token_hash, name, created_at) VALUES ('x', 'x', 'x', 0)",
    )
    .execute(&mut *lock)
    .await
    .unwrap();

    tx1.send(batch(1, vec![record(&dev.id, "openai")]))
        .await
        .unwrap();
    tx2.send(batch(2, vec![record(&dev.id, "openai")]))
        .await
        .unwrap();
    let (first, waiting) = tokio::select! {
        r = s1.message() => (r.unwrap().unwrap(), &mut s2),
        r = s2.message() => (r.unwrap().unwrap(), &mut s1),
    };
    let Some(Answer::SlowDown(slow)) = &first.result else {
        panic!("expected SlowDown, got {first:?}")
    };
    assert!(slow.retry_after_ms >= 1000, "{slow:?}");
    lock.rollback().await.unwrap();
    let acked = waiting.message().await.unwrap().unwrap();
    assert_eq!(
        acked_ids(&acked).len(),
        1,
        "the waiting batch commits once the lock is gone"
    );
    assert_eq!(
        srv.events("").await.len(),
        1,
        "the slowed-down batch stored nothing"
    );
    srv.stop().await;
}

#[tokio::test]
async fn inventory_report_stored_and_bad_items_named() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&dev).await;
    let item = proto::InventoryItem {
        kind: "mcp_server".into(),
        id: "fp-1".into(),
        name: "github".into(),
        details_json: br#"{"command":"npx"}"#.to_vec(),
    };
    let r = c
        .inventory
        .report(proto::InventoryReport {
            items: vec![item.clone()],
            full_snapshot: true,
            observed_at_unix_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    let bad = proto::InventoryItem {
        details_json: b"[]".to_vec(),
        ..item.clone()
    };
    let e = c
        .inventory
        .report(proto::InventoryReport {
            items: vec![item, bad],
            full_snapshot: true,
            observed_at_unix_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("items[1].details_json"), "{e}");
    let store = palisade_server::Store::open(&srv.cfg).await.unwrap();
    assert_eq!(store.list_inventory(&dev.id).await.unwrap().len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn admin_api_denies_by_default_and_validates_input() {
    let srv = TestServer::start().await;
    let http = srv.http();
    for path in [
        "/api/v1/devices",
        "/api/v1/policy",
        "/api/v1/events",
        "/api/v1/nothing",
    ] {
        let r = http.get(srv.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http
            .get(srv.url(path))
            .bearer_auth("pal_admin_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // Not in the permission matrix: refused for every role (deny by default).
    let (s, _) = srv.admin(Method::GET, "/api/v1/nothing", None).await;
    assert_eq!(s, 403);
    let (s, v) = srv
        .admin(
            Method::PUT,
            "/api/v1/policy",
            Some(serde_json::json!({"ai_hostz": []})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("ai_hostz"), "{v}");
    let (s, v) = srv
        .admin(Method::GET, "/api/v1/events?since=yesterday&limit=0", None)
        .await;
    assert_eq!(s, 400);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("since") && msg.contains("limit"),
        "every problem at once: {msg}"
    );
    let (s, v) = srv
        .admin(Method::GET, "/api/v1/events?colour=red", None)
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = srv
        .admin(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(serde_json::json!({"max_uses": 0, "ttl_seconds": -5})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("max_uses"), "{v}");
    srv.stop().await;
}

#[tokio::test]
async fn postgres_end_to_end_and_policy_across_two_instances() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: PALISADE_TEST_POSTGRES_URL not set");
        return;
    };
    let schema = fresh_schema();
    let shared = tempfile::tempdir().unwrap();
    let cfg_for = |dir: &std::path::Path| {
        let mut cfg = palisade_server::ServerConfig::for_data_dir(dir);
        cfg.store.postgres_url = Some(url.clone());
        cfg.store.postgres_schema = Some(schema.clone());
        // Both processes share one CA and server identity, as a real deployment would.
        cfg.tls.ca_cert = Some(shared.path().join("ca.pem"));
        cfg.tls.ca_key = Some(shared.path().join("ca.key"));
        cfg.tls.server_cert = Some(shared.path().join("server.pem"));
        cfg.tls.server_key = Some(shared.path().join("server.key"));
        // Long poll: the update must arrive by NOTIFY, not by polling.
        cfg.limits.policy_poll_ms = 60_000;
        cfg
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start_cfg(cfg_for(da.path()), Some(da)).await;
    let b = TestServer::start_cfg(cfg_for(db.path()), Some(db)).await;

    // Enrolled through A, connected to B.
    let dev = a.enroll_new("hw-pg").await;
    let mut cb = b.clients(&dev).await;
    let mut watch = cb
        .policy
        .watch_policy(proto::WatchPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().version, 0);

    let (s, v) = a
        .admin(
            Method::PUT,
            "/api/v1/policy",
            Some(serde_json::to_value(palisade_core::Policy::default()).unwrap()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next.version, 1,
        "a change made through A reaches a watcher on B"
    );

    // Upload through B, retry, read through A.
    let events: Vec<_> = (0..20).map(|_| record("spoof", "openai")).collect();
    upload(&mut cb.audit, vec![batch(1, events.clone())])
        .await
        .unwrap();
    upload(&mut cb.audit, vec![batch(2, events)]).await.unwrap();
    let stored = a.events("").await;
    assert_eq!(stored.len(), 20);
    assert!(stored.iter().all(|e| e["device"]["id"] == dev.id.as_str()));

    // Revoked through B, refused through A.
    b.admin(
        Method::POST,
        &format!("/api/v1/devices/{}/revoke", dev.id),
        None,
    )
    .await;
    let mut ca = a.clients(&dev).await;
    let e = ca
        .policy
        .report_applied(proto::ReportAppliedRequest { version: 1 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    a.stop().await;
    b.stop().await;
}

/// A client certificate for `device_id`, signed by `issuer`, valid in `[from, to]`.
fn forged_cert(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    device_id: &str,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> Device {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, device_id);
    p.subject_alt_names = vec![rcgen::SanType::URI(
        format!("urn:palisade:device:{device_id}")
            .try_into()
            .unwrap(),
    )];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = from.into();
    p.not_after = to.into();
    let cert = p.signed_by(&key, issuer).unwrap();
    Device {
        id: device_id.into(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn expired_and_foreign_certificates_are_refused() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-1").await;
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);

    // Signed by the real CA, right device id, but expired.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(srv.cfg.ca_key_path()).unwrap()).unwrap();
    let real_ca = rcgen::Issuer::from_ca_cert_pem(&srv.ca_pem, ca_key).unwrap();
    let expired = forged_cert(&real_ca, &dev.id, now - 10 * day, now - day);

    // Right device id, valid dates, but from a CA the server never trusted.
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut foreign_params = rcgen::CertificateParams::default();
    foreign_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    foreign_params.self_signed(&foreign_key).unwrap();
    let foreign_ca = rcgen::Issuer::new(foreign_params, foreign_key);
    let foreign = forged_cert(&foreign_ca, &dev.id, now - day, now + day);

    // Signed by the real CA for the right id, valid, but not the certificate on record.
    let other = forged_cert(&real_ca, &dev.id, now - day, now + day);

    for (what, cert) in [
        ("expired", &expired),
        ("foreign CA", &foreign),
        ("not on record", &other),
    ] {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&srv.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &cert.cert_pem,
                &cert.key_pem,
            ))
            .domain_name("localhost");
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("https://{}", srv.grpc_addr))
                .unwrap()
                .tls_config(tls)
                .unwrap();
        // TLS 1.3 reports a rejected client certificate on first use, not at connect.
        let result = match endpoint.connect().await {
            Err(e) => Err(e.to_string()),
            Ok(ch) => proto::policy_service_client::PolicyServiceClient::new(ch)
                .report_applied(proto::ReportAppliedRequest { version: 0 })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
        };
        let err = result.expect_err(what);
        if what == "not on record" {
            assert!(err.contains("not the current one"), "{what}: {err}");
        }
    }
    // The genuine certificate still works.
    let mut c = srv.clients(&dev).await;
    c.policy
        .report_applied(proto::ReportAppliedRequest { version: 0 })
        .await
        .unwrap();
    srv.stop().await;
}
