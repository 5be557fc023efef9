//! Ingest throughput over real mTLS gRPC: N devices, each one Upload stream
//! with batches in flight, ~2 KB records. Ignored by default (it measures, it
//! does not check); run it in release:
//!
//!   cargo test --release -p palisade-server --test ingest_throughput -- --ignored --nocapture
//!
//! Knobs (environment): INGEST_DEVICES (default 16), INGEST_EVENTS (total,
//! default 200000), INGEST_BATCH (default 500), INGEST_INFLIGHT (batches in
//! flight per stream, default 2). With PALISADE_TEST_POSTGRES_URL set it
//! measures PostgreSQL too.

mod support;

use palisade_proto as proto;
use std::time::Instant;
use support::*;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A ~2 KB interaction record.
fn big_record(device: &str) -> proto::AuditRecord {
    let mut r = record(device, "openai");
    let mut v: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
    v["request"]["prompt"] = serde_json::Value::String("x".repeat(1700));
    r.json = serde_json::to_vec(&v).unwrap();
    r
}

async fn measure(srv: &TestServer, label: &str) {
    let devices = knob("INGEST_DEVICES", 16);
    let total = knob("INGEST_EVENTS", 200_000);
    let batch_size = knob("INGEST_BATCH", 500);
    let inflight = knob("INGEST_INFLIGHT", 2);
    let per_device = total / devices;
    let mut clients = Vec::new();
    for i in 0..devices {
        let d = srv.enroll_new(&format!("bench-hw-{i}")).await;
        let c = srv.clients(&d).await;
        // Pre-build the records so the generator measures the server, not serde.
        let batches: Vec<_> = (0..per_device.div_ceil(batch_size))
            .map(|b| {
                let n = batch_size.min(per_device - b * batch_size);
                batch(b as u64, (0..n).map(|_| big_record(&d.id)).collect())
            })
            .collect();
        clients.push((c, batches));
    }
    let sent: usize = clients
        .iter()
        .map(|(_, b)| b.iter().map(|x| x.events.len()).sum::<usize>())
        .sum();
    let bytes: usize = clients
        .iter()
        .flat_map(|(_, b)| b.iter())
        .flat_map(|b| b.events.iter())
        .map(|e| e.json.len())
        .sum();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut c, batches) in clients {
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(inflight);
            let mut answers = c
                .audit
                .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let n = batches.len();
            let sender = tokio::spawn(async move {
                for b in batches {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                tx
            });
            let (mut acked, mut slowed) = (0usize, 0usize);
            for _ in 0..n {
                match answers.message().await.unwrap().unwrap().result {
                    Some(proto::upload_response::Result::Ack(a)) => acked += a.event_ids.len(),
                    Some(proto::upload_response::Result::SlowDown(_)) => slowed += 1,
                    other => panic!("{other:?}"),
                }
            }
            drop(sender.await);
            (acked, slowed)
        }));
    }
    let (mut acked, mut slowed) = (0, 0);
    for t in tasks {
        let (a, s) = t.await.unwrap();
        acked += a;
        slowed += s;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label}: {acked}/{sent} events acked in {secs:.2}s = {:.0} events/s ({:.1} MB/s JSON), \
         {devices} streams, batch {batch_size}, {inflight} in flight, {slowed} batches slowed down",
        acked as f64 / secs,
        bytes as f64 / secs / 1e6,
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly in release"]
async fn ingest_throughput_sqlite() {
    let srv = TestServer::start_with(|c| c.limits.max_concurrent_batches = 64).await;
    measure(&srv, "sqlite").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly in release"]
async fn ingest_throughput_postgres() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: PALISADE_TEST_POSTGRES_URL not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = palisade_server::ServerConfig::for_data_dir(dir.path());
    cfg.store.postgres_url = Some(url);
    cfg.store.postgres_schema = Some(fresh_schema());
    cfg.limits.max_concurrent_batches = 64;
    let srv = TestServer::start_cfg(cfg, Some(dir)).await;
    measure(&srv, "postgres").await;
    srv.stop().await;
}

/// The store alone, no gRPC/TLS/JSON: the ceiling the server can reach.
async fn measure_store(store: &palisade_server::Store, label: &str) {
    use palisade_server::store::NewEvent;
    let total = knob("INGEST_EVENTS", 200_000);
    let batch_size = knob("INGEST_BATCH", 500);
    let json = String::from_utf8(big_record("d").json).unwrap();
    let batches: Vec<Vec<NewEvent>> = (0..total / batch_size)
        .map(|_| {
            (0..batch_size)
                .map(|_| NewEvent {
                    id: uuid::Uuid::now_v7(),
                    time: chrono::Utc::now(),
                    kind: "interaction".into(),
                    provider: Some("openai".into()),
                    model: Some("gpt-4o".into()),
                    app: Some("cursor".into()),
                    decision: Some("allow".into()),
                    json: json.clone(),
                    ..NewEvent::default()
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, chunk) in batches.chunks(batches.len().div_ceil(4)).enumerate() {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for b in chunk {
                store.insert_events(&format!("d{i}"), &b).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label} (store only, 4 writers): {total} events in {secs:.2}s = {:.0} events/s",
        total as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly in release"]
async fn store_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let s = palisade_server::Store::open_sqlite(&dir.path().join("x.db"), 8)
        .await
        .unwrap();
    measure_store(&s, "sqlite").await;
    if let Some(url) = postgres_url() {
        let s = palisade_server::Store::open_postgres(&url, Some(&fresh_schema()), 8)
            .await
            .unwrap();
        measure_store(&s, "postgres").await;
    }
}
