//! `palisade-bench export`: event export and live-forwarding throughput.
//!
//! Seeds N interaction records (about 1 KB of JSON each) straight into a
//! fresh store, then runs the control plane in this process and measures
//! (a) `GET /api/v1/export` for JSONL and syslog over HTTP, read as a stream,
//! and (b) forwarding the same records to a local TCP sink that parses the
//! RFC 6587 octet-counted frames. Prints records/s; asserts only that every
//! record arrived.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use palisade_core::{AuditEvent, DeviceRef, EventKind, Interaction, UserRef};
use palisade_server::config::{ForwardConfig, ForwardTransport};
use palisade_server::{ServerConfig, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: palisade-bench export [--events N] [--store sqlite|postgres] [--pg-url URL]";

pub async fn main(mut argv: impl Iterator<Item = String>) -> Result<()> {
    let mut events: usize = 200_000;
    let mut stores = Vec::new();
    let mut pg_url = std::env::var("PALISADE_TEST_POSTGRES_URL").ok().filter(|s| !s.is_empty());
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--events" => events = argv.next().context(USAGE)?.parse().context("--events: a number")?,
            "--store" => stores.push(argv.next().context(USAGE)?),
            "--pg-url" => pg_url = Some(argv.next().context(USAGE)?),
            _ => bail!("{USAGE}"),
        }
    }
    if events == 0 || !events.is_multiple_of(1000) {
        bail!("--events: a positive multiple of 1000");
    }
    if stores.is_empty() {
        stores.push("sqlite".into());
        if pg_url.is_some() {
            stores.push("postgres".into());
        }
    }
    for store in stores {
        let dir = tempfile::tempdir()?;
        let mut cfg = ServerConfig::for_data_dir(dir.path());
        match store.as_str() {
            "sqlite" => {}
            "postgres" => {
                cfg.store.postgres_url = Some(pg_url.clone().context("--store postgres needs --pg-url or PALISADE_TEST_POSTGRES_URL")?);
                cfg.store.postgres_schema = Some(format!("bench_export_{}", uuid::Uuid::now_v7().simple()));
            }
            other => bail!("--store {other:?}: sqlite or postgres"),
        }
        run_store(&store, cfg, events).await?;
    }
    Ok(())
}

/// Built field by field so new optional fields in core do not break the bench.
#[allow(clippy::field_reassign_with_default)]
fn record(i: usize) -> Result<palisade_server::store::NewEvent> {
    let mut device = DeviceRef::default();
    device.id = "bench-device".into();
    device.hostname = "bench-laptop".into();
    device.os = "linux".into();
    let mut user = UserRef::default();
    user.os_user = Some("ann".into());
    user.email = Some("ann@example.com".into());
    let mut ev = AuditEvent::new(EventKind::Interaction, device, user);
    let mut it = Interaction {
        provider: "openai".into(),
        host: "api.openai.com".into(),
        endpoint: "chat.completions".into(),
        model: Some("gpt-4o".into()),
        ..Default::default()
    };
    it.request.prompt = Some(format!("request {i}: {}", "summarise the quarterly report ".repeat(16)));
    it.response.text = Some("The report shows steady growth. ".repeat(10));
    ev.interaction = Some(it);
    let rec = palisade_proto::AuditRecord { id: ev.id.to_string(), json: serde_json::to_vec(&ev)? };
    let incoming = palisade_server::convert::IncomingEvent::try_from(rec).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(incoming.into_new_event("bench-device").0)
}

async fn run_store(name: &str, cfg: ServerConfig, n: usize) -> Result<()> {
    println!("== export on {name}: {n} records");
    let t = Instant::now();
    let store = Store::open(&cfg).await?;
    let mut bytes = 0usize;
    for chunk in 0..n / 1000 {
        let rows = (0..1000).map(|i| record(chunk * 1000 + i)).collect::<Result<Vec<_>>>()?;
        bytes += rows.iter().map(|r| r.json.len()).sum::<usize>();
        store.insert_events("bench-device", &rows).await?;
    }
    store.close().await;
    println!("seeded in {:.1}s ({} bytes of record JSON, {:.0} B/record)", t.elapsed().as_secs_f64(), bytes, bytes as f64 / n as f64);

    // (a) HTTP export, no forwarding running.
    let server = Running::start(cfg.clone()).await?;
    for format in ["jsonl", "syslog"] {
        let t = Instant::now();
        let r = reqwest::Client::new()
            .get(format!("http://{}/api/v1/export?format={format}", server.admin_addr))
            .bearer_auth(&server.token)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("export {format}: HTTP {}", r.status());
        }
        let mut body = r.bytes_stream();
        let (mut lines, mut size) = (0usize, 0usize);
        while let Some(c) = body.next().await {
            let c = c?;
            size += c.len();
            lines += c.iter().filter(|&&b| b == b'\n').count();
        }
        let secs = t.elapsed().as_secs_f64();
        if lines != n {
            bail!("export {format}: {lines} records, expected {n}");
        }
        println!(
            "export {format:<6} over HTTP: {:>9.0} records/s  ({:.1} MB/s, {:.2}s, {} bytes)",
            n as f64 / secs,
            size as f64 / secs / 1e6,
            secs,
            size
        );
    }
    server.stop().await?;

    // (b) live forwarding to a local TCP sink, from the oldest record.
    let sink = CountingSink::start().await?;
    let mut fcfg = cfg.clone();
    let mut target = ForwardConfig::new("bench", &sink.addr.to_string(), ForwardTransport::Tcp);
    target.poll_ms = 10;
    fcfg.forward = vec![target];
    let t = Instant::now();
    let server = Running::start(fcfg).await?;
    while sink.frames.load(Ordering::Acquire) < n as u64 {
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("forwarding: only {} of {n} frames after 30 min", sink.frames.load(Ordering::Acquire));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "forward syslog over TCP (octet-counted, cursor saved per acked page): {:>9.0} records/s  ({:.2}s incl. server start, {} bytes)",
        n as f64 / secs,
        secs,
        sink.bytes.load(Ordering::Acquire)
    );
    server.stop().await?;
    if let (Some(url), Some(schema)) = (&cfg.store.postgres_url, &cfg.store.postgres_schema) {
        use sqlx::{ConnectOptions, Connection};
        let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
        let mut c = opts.connect().await?;
        // Our own generated name: safe to interpolate.
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut c).await?;
        c.close().await?;
    }
    Ok(())
}

struct Running {
    admin_addr: std::net::SocketAddr,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), palisade_server::ServerError>>,
}

impl Running {
    async fn start(cfg: ServerConfig) -> Result<Self> {
        let token = palisade_server::bootstrap_admin_token(&cfg, "bench").await?.expose().to_string();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin_addr = admin.local_addr()?;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(palisade_server::run(cfg, grpc, admin, async move {
            let _ = rx.await;
        }));
        Ok(Self { admin_addr, token, stop, task })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Reads octet-counted frames and counts them (no storage).
struct CountingSink {
    addr: std::net::SocketAddr,
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl CountingSink {
    async fn start() -> Result<Self> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (f, b) = (frames.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (f, b) = (f.clone(), b.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 256 * 1024];
                    while let Ok(n) = s.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        buf.extend_from_slice(&chunk[..n]);
                        let mut at = 0;
                        while let Some(sp) = buf[at..].iter().position(|&c| c == b' ') {
                            let Some(len) = std::str::from_utf8(&buf[at..at + sp]).ok().and_then(|s| s.parse::<usize>().ok()) else {
                                return;
                            };
                            if buf.len() < at + sp + 1 + len {
                                break;
                            }
                            at += sp + 1 + len;
                            f.fetch_add(1, Ordering::Release);
                        }
                        buf.drain(..at);
                    }
                });
            }
        });
        Ok(Self { addr, frames, bytes })
    }
}
