//! End to end: the real control plane (`palisade_server::run`, SQLite in a
//! temp dir) and the real agent, over real mTLS gRPC on 127.0.0.1. Checks
//! enrollment, exactly-once upload through outages, lost acks, crashes and
//! revocation, and policy delivery with its on-disk cache.

mod common;

use common::*;
use palisade_agent::config::ServerLink;
use palisade_agent::sync::{InventoryItem, SyncHandle, SyncOptions};
use palisade_core::{AuditEvent, DeviceRef, EventKind, Policy, UserRef};
use palisade_server::{ServerConfig, ServerPki};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// Short retries so tests do not sit in a 60 s backoff window.
fn fast() -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        ack_timeout: Duration::from_secs(20),
        rpc_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(200),
        ..SyncOptions::default()
    }
}

/// Poll `f` until it returns `Some`, or fail after [`WAIT`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === Control plane under test ===

struct ControlPlane {
    cfg: ServerConfig,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_token: String,
    ca_file: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), palisade_server::ServerError>>>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::prepare(dir, "127.0.0.1:0".parse().unwrap()).await.serve().await
    }

    /// Config, PKI and admin token, without serving yet.
    async fn prepare(dir: tempfile::TempDir, grpc_addr: SocketAddr) -> Self {
        let cfg = ServerConfig::for_data_dir(dir.path());
        let ca_pem = ServerPki::load_or_create(&cfg).unwrap().ca_cert_pem().to_string();
        let ca_file = dir.path().join("server-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let admin_token = palisade_server::bootstrap_admin_token(&cfg, "test").await.unwrap();
        ControlPlane {
            cfg,
            grpc_addr,
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: admin_token.expose().to_string(),
            ca_file,
            stop: None,
            task: None,
            _dir: dir,
        }
    }

    /// Serve on `grpc_addr` (port 0: pick one; else the same port again).
    async fn serve(mut self) -> Self {
        let grpc = TcpListener::bind(self.grpc_addr).await.unwrap();
        let admin = TcpListener::bind(self.admin_addr).await.unwrap();
        self.grpc_addr = grpc.local_addr().unwrap();
        self.admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(palisade_server::run(self.cfg.clone(), grpc, admin, async move {
            let _ = rx.await;
        })));
        self.stop = Some(tx);
        self
    }

    async fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    async fn enrollment_token(&self) -> String {
        let store = palisade_server::Store::open(&self.cfg).await.unwrap();
        let t = palisade_server::create_enrollment_token(
            &store,
            5,
            chrono::Utc::now() + chrono::Duration::hours(1),
            Some("sync e2e"),
        )
        .await
        .unwrap();
        store.close().await;
        t.token.expose().to_string()
    }

    fn link_to(&self, addr: SocketAddr, token: String) -> ServerLink {
        ServerLink {
            url: format!("https://{addr}"),
            ca_file: self.ca_file.clone(),
            enrollment_token: Some(token),
        }
    }

    async fn link(&self) -> ServerLink {
        self.link_to(self.grpc_addr, self.enrollment_token().await)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.admin_addr))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Every stored event of `kind` (paging through the admin API).
    async fn events(&self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = None::<String>;
        loop {
            let mut q = format!("/api/v1/events?limit=1000&kind={kind}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (s, v) = self.admin(reqwest::Method::GET, &q, None).await;
            assert_eq!(s, 200, "{v}");
            out.extend(v["events"].as_array().unwrap().clone());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    async fn devices(&self) -> Vec<Value> {
        let (s, v) = self.admin(reqwest::Method::GET, "/api/v1/devices", None).await;
        assert_eq!(s, 200, "{v}");
        v["devices"].as_array().unwrap().clone()
    }
}

/// Stored ids, asserting none is stored twice.
fn unique_ids(events: &[Value]) -> HashSet<String> {
    let ids: HashSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), events.len(), "an event was stored twice");
    ids
}

/// Wait until the server holds exactly `want` interactions (never more).
async fn arrive_exactly(cp: &ControlPlane, want: &HashSet<String>) -> Vec<Value> {
    eventually("events at the server", || async {
        let got = cp.events("interaction").await;
        let ids = unique_ids(&got);
        assert!(ids.is_subset(want), "unexpected events at the server");
        (ids == *want).then_some(got)
    })
    .await
}

async fn spool_drained(h: &Harness) {
    eventually("an empty spool", || async { h.spool.peek(10).await.unwrap().is_empty().then_some(()) }).await;
}

async fn enrolled(sync: &Option<SyncHandle>) -> String {
    tokio::time::timeout(WAIT, sync.as_ref().unwrap().wait_enrolled()).await.expect("enrolled in time")
}

async fn agent(link: ServerLink, data_dir: Option<PathBuf>) -> Harness {
    Harness::with(Options {
        server: Some(link),
        data_dir,
        sync_options: Some(fast()),
        ..Options::default()
    })
    .await
}

/// Send `n` chat requests through the proxy; return the recorded ids.
async fn traffic(h: &mut Harness, n: usize) -> HashSet<String> {
    let client = h.client(true);
    for i in 0..n {
        let resp = client
            .post("https://api.openai.com/v1/chat/completions")
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("hello {i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
    }
    let mut ids = HashSet::new();
    while ids.len() < n {
        let ev = h.next_event().await;
        if ev.kind == EventKind::Interaction {
            ids.insert(ev.id.to_string());
        }
    }
    ids
}

// === Tests ===

#[tokio::test]
async fn enrolls_then_every_event_arrives_once_and_leaves_the_spool() {
    let cp = ControlPlane::start().await;
    let state = tempfile::tempdir().unwrap();
    let data_dir = state.path().join("agent");
    let mut h = agent(cp.link().await, Some(data_dir.clone())).await;
    let device_id = enrolled(&h.sync).await;

    let devices = cp.devices().await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["id"], device_id.as_str());
    assert_eq!(devices[0]["owner_email"], "jane@example.com");
    assert_eq!(devices[0]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(data_dir.join("identity.json").is_file());
    assert!(data_dir.join("device-cert.pem").is_file());
    assert!(data_dir.join("server-ca.pem").is_file());
    assert!(data_dir.join("keys").read_dir().unwrap().next().is_some(), "the device key is in the key store");

    let ids = traffic(&mut h, 5).await;
    let stored = arrive_exactly(&cp, &ids).await;
    for ev in &stored {
        assert_eq!(ev["device"]["id"], device_id.as_str(), "records carry the enrolled id");
        assert_eq!(ev["provider"], "openai");
    }
    spool_drained(&h).await;
    assert!(h.sync.as_ref().unwrap().status().uploaded_events >= 5);

    // Inventory travels over the same channel.
    let sync = h.sync.clone().unwrap();
    let accepted = sync
        .report_inventory(
            vec![
                InventoryItem { kind: "app".into(), id: "cursor".into(), name: "Cursor".into(), details: Value::Null },
                InventoryItem {
                    kind: "mcp_server".into(),
                    id: "fp-1".into(),
                    name: "github".into(),
                    details: json!({"transport": "stdio"}),
                },
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(accepted, 2);
    let e = sync
        .report_inventory(vec![InventoryItem { kind: "".into(), id: "".into(), name: "".into(), details: Value::Null }], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("items[0]"), "{e}");
    h.stop().await;

    // A restart reuses the identity: no second device.
    let h2 = agent(cp.link().await, Some(data_dir)).await;
    assert_eq!(h2.state.device.id, device_id, "new records carry the enrolled id from the start");
    assert_eq!(enrolled(&h2.sync).await, device_id);
    assert_eq!(cp.devices().await.len(), 1);
    h2.stop().await;
}

#[tokio::test]
async fn agent_started_before_the_server_records_then_enrolls_and_uploads() {
    // Reserve a port, then leave it closed: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let cp = ControlPlane::prepare(tempfile::tempdir().unwrap(), port).await;
    let link = cp.link_to(port, cp.enrollment_token().await);
    let mut h = agent(link, None).await;

    let ids = traffic(&mut h, 3).await;
    assert!(h.sync.as_ref().unwrap().status().device_id.is_none(), "cannot be enrolled yet");
    assert!(h.sync.as_ref().unwrap().status().last_error.is_some());
    assert_eq!(h.spool.peek(100).await.unwrap().len(), 3, "the proxy kept recording");

    let cp = cp.serve().await;
    let device_id = enrolled(&h.sync).await;
    let stored = arrive_exactly(&cp, &ids).await;
    assert!(stored.iter().all(|e| e["device"]["id"] == device_id.as_str()));
    spool_drained(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn a_refused_or_missing_token_is_reported_and_the_proxy_keeps_recording() {
    let cp = ControlPlane::start().await;
    for (token, want) in [(Some("pal_enroll_made_up"), "enrollment token refused"), (None, "no enrollment token")] {
        let link = ServerLink { enrollment_token: token.map(str::to_string), ..cp.link().await };
        let mut h = agent(link, None).await;
        let mut status = h.sync.as_ref().unwrap().watch();
        let err = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
            .await
            .expect("the failure is reported")
            .unwrap()
            .last_error
            .clone()
            .unwrap();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("pal_enroll_made_up"), "the token is never echoed: {err}");
        traffic(&mut h, 1).await;
        assert_eq!(h.spool.peek(10).await.unwrap().len(), 1, "recorded locally");
        assert!(h.sync.as_ref().unwrap().status().device_id.is_none());
        h.stop().await;
    }
    assert!(cp.devices().await.is_empty());
}

#[tokio::test]
async fn server_down_for_a_while_then_every_event_arrives_once() {
    let mut cp = ControlPlane::start().await;
    let mut h = agent(cp.link().await, None).await;
    enrolled(&h.sync).await;
    let first = traffic(&mut h, 2).await;
    arrive_exactly(&cp, &first).await;

    cp.shutdown().await;
    let during = traffic(&mut h, 4).await;
    let spooled: HashSet<String> = h.spool.peek(100).await.unwrap().iter().map(|e| e.id.to_string()).collect();
    assert!(during.is_subset(&spooled), "events wait in the spool while the server is down");

    let cp = cp.serve().await; // same port, same store
    let all: HashSet<String> = first.union(&during).cloned().collect();
    arrive_exactly(&cp, &all).await;
    spool_drained(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn lost_ack_means_a_resend_and_no_duplicate() {
    let cp = ControlPlane::start().await;
    let relay = Relay::start(cp.grpc_addr).await;
    let mut h = agent(cp.link_to(relay.addr, cp.enrollment_token().await), None).await;
    enrolled(&h.sync).await;
    // One event first, so the upload stream is open when the relay freezes.
    let mut ids = traffic(&mut h, 1).await;
    arrive_exactly(&cp, &ids).await;
    spool_drained(&h).await;

    // Answers from the server are held back, then the connection dies: the
    // server committed the batch but the agent never sees the ack.
    relay.freeze_answers(true);
    let held = traffic(&mut h, 3).await;
    ids.extend(held.iter().cloned());
    // The first batch after the freeze is committed; its ack never arrives.
    let committed = eventually("a committed batch", || async {
        let stored = unique_ids(&cp.events("interaction").await);
        let c: HashSet<String> = stored.intersection(&held).cloned().collect();
        (!c.is_empty()).then_some(c)
    })
    .await;
    let spooled: HashSet<String> = h.spool.peek(100).await.unwrap().iter().map(|e| e.id.to_string()).collect();
    assert!(committed.is_subset(&spooled), "no ack reached the agent, so nothing left the spool");
    relay.cut();
    relay.freeze_answers(false);

    arrive_exactly(&cp, &ids).await;
    spool_drained(&h).await;
    let stored = cp.events("interaction").await;
    assert_eq!(unique_ids(&stored), ids, "re-sent batch stored nothing twice");
    h.stop().await;
}

#[tokio::test]
async fn policy_change_reaches_the_agent_is_reported_and_cached_for_offline_starts() {
    let mut cp = ControlPlane::start().await;
    let state = tempfile::tempdir().unwrap();
    let data_dir = state.path().join("agent");
    let h = agent(cp.link().await, Some(data_dir.clone())).await;
    let device_id = enrolled(&h.sync).await;
    assert_eq!(h.state.policy.current().version, 0, "version 0 (nothing published) keeps the local policy");

    let mut doc = serde_json::to_value(Policy::default()).unwrap();
    doc["never_intercept"] = json!(["internal.example.org"]);
    doc["capture"] = json!("metadata");
    let (s, v) = cp.admin(reqwest::Method::PUT, "/api/v1/policy", Some(doc)).await;
    assert_eq!(s, 200, "{v}");
    let version = v["version"].as_u64().unwrap();
    assert!(version >= 1);

    eventually("the policy in the agent", || async { (h.state.policy.current().version == version).then_some(()) }).await;
    let active = h.state.policy.current();
    assert_eq!(active.capture, palisade_core::CaptureMode::Metadata);
    assert_eq!(active.never_intercept.len(), 1);
    eventually("the applied version at the server", || async {
        let d = cp.devices().await;
        (d[0]["applied_policy_version"].as_u64() == Some(version)).then_some(())
    })
    .await;
    let applied = eventually("a policy.applied record", || async {
        let ev = cp.events("policy.applied").await;
        (!ev.is_empty()).then_some(ev)
    })
    .await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0]["details"]["version"], version);
    assert_eq!(applied[0]["device"]["id"], device_id.as_str());
    assert_eq!(h.sync.as_ref().unwrap().status().applied_policy_version, Some(version));

    let link = cp.link().await;
    h.stop().await;
    cp.shutdown().await;

    // Server down: the restarted agent enforces the cached version at once.
    let h2 = agent(link, Some(data_dir.clone())).await;
    let active = h2.state.policy.current();
    assert_eq!(active.version, version);
    assert_eq!(active.capture, palisade_core::CaptureMode::Metadata);
    h2.stop().await;

    // A damaged cache is ignored: the local policy applies until the server answers.
    std::fs::write(data_dir.join("policy-cache.json"), "{broken").unwrap();
    let h3 = agent(cp.link_to(cp.grpc_addr, "unused".into()), Some(data_dir)).await;
    assert_eq!(h3.state.policy.current().version, 0);
    h3.stop().await;
}

#[tokio::test]
async fn revoked_device_is_refused_and_keeps_its_events() {
    let cp = ControlPlane::start().await;
    let mut h = agent(cp.link().await, None).await;
    let device_id = enrolled(&h.sync).await;
    let first = traffic(&mut h, 1).await;
    arrive_exactly(&cp, &first).await;
    assert!(h.sync.as_ref().unwrap().status().last_error.is_none());

    let (s, v) = cp.admin(reqwest::Method::POST, &format!("/api/v1/devices/{device_id}/revoke"), None).await;
    assert_eq!(s, 200, "{v}");
    let later = traffic(&mut h, 2).await;
    let mut status = h.sync.as_ref().unwrap().watch();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.as_deref().is_some_and(|e| e.contains("revoked"))))
        .await
        .expect("the refusal is reported")
        .unwrap();
    let spooled: HashSet<String> = h.spool.peek(100).await.unwrap().iter().map(|e| e.id.to_string()).collect();
    assert!(later.is_subset(&spooled), "refused events stay in the spool");
    assert_eq!(unique_ids(&cp.events("interaction").await), first, "nothing from a revoked device is stored");
    let spool = h.spool.clone();
    h.stop().await;
    // Still there after shutdown: they were never acknowledged.
    let left: HashSet<String> = spool.peek(100).await.unwrap().iter().map(|e| e.id.to_string()).collect();
    assert!(later.is_subset(&left));
}

#[tokio::test]
async fn kill_9_of_the_agent_binary_mid_upload_loses_and_duplicates_nothing() {
    const N: usize = 6000;
    let cp = ControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("agent");

    // Fill the spool the agent will drain.
    let spool = palisade_spool::Spool::open(&data_dir.join("spool.db"), Default::default()).await.unwrap();
    let mut want = HashSet::new();
    let mut batch = Vec::new();
    for i in 0..N {
        let mut ev = AuditEvent::new(
            EventKind::Interaction,
            DeviceRef { id: "local".into(), hostname: "h".into(), os: "linux".into() },
            UserRef::default(),
        );
        ev.interaction = Some(palisade_core::Interaction {
            provider: "openai".into(),
            model: Some(format!("gpt-{}", i % 7)),
            ..Default::default()
        });
        ev.details = json!({"pad": "x".repeat(200)});
        want.insert(ev.id.to_string());
        batch.push(ev);
        if batch.len() == 500 {
            spool.append_batch(&batch).await.unwrap();
            batch.clear();
        }
    }
    spool.close().await;

    let link = cp.link().await;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nkey_store = \"file\"\n[server]\nurl = {:?}\nca_file = {:?}\nenrollment_token = {:?}\n",
            data_dir.display().to_string(),
            link.url,
            link.ca_file.display().to_string(),
            link.enrollment_token.unwrap(),
        ),
    )
    .unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_palisade-agent"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap()
    };

    let mut child = spawn();
    let at_kill = eventually("the upload to start", || async {
        let n = cp.events("interaction").await.len();
        (n > 0).then_some(n)
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!("killed the agent with {at_kill} of {N} events stored");

    let mut child = spawn();
    let stored = arrive_exactly(&cp, &want).await;
    assert_eq!(stored.len(), N);
    assert_eq!(cp.devices().await.len(), 1, "the restart reused the identity");
    child.kill().unwrap();
    child.wait().unwrap();
    let spool = palisade_spool::Spool::open_read_only(&data_dir.join("spool.db")).await.unwrap();
    assert_eq!(spool.stats().await.unwrap().count, 0, "acknowledged events left the spool");
}

// === Relay: a TCP hop the test can freeze and cut ===

struct Relay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    generation: watch::Sender<u64>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let (generation, _) = watch::channel(0u64);
        let (f, g) = (frozen.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let (frozen, mut cut) = (f.subscribe(), g.subscribe());
                cut.borrow_and_update();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = pipe(client, server, frozen) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { addr, frozen, generation }
    }

    /// Hold (true) or release (false) bytes from the server to the agent.
    fn freeze_answers(&self, on: bool) {
        self.frozen.send_replace(on);
    }

    /// Drop every open connection, with whatever bytes they still hold.
    fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, mut frozen: watch::Receiver<bool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(up, down);
}

/// Measurement, not a check: how fast one agent drains a backlog of ~2 KB
/// records into the in-process server (SQLite). Run with
/// `cargo test -p palisade-agent --test sync_e2e -- --ignored --nocapture drain_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn drain_rate() {
    const N: usize = 20_000;
    let cp = ControlPlane::start().await;
    let state = tempfile::tempdir().unwrap();
    let data_dir = state.path().join("agent");
    let spool = palisade_spool::Spool::open(&data_dir.join("spool.db"), Default::default()).await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..N {
        let mut ev = AuditEvent::new(
            EventKind::Interaction,
            DeviceRef { id: "local".into(), hostname: "h".into(), os: "linux".into() },
            UserRef::default(),
        );
        ev.details = json!({"pad": "x".repeat(1800)});
        batch.push(ev);
        if batch.len() == 1000 {
            spool.append_batch(&batch).await.unwrap();
            batch.clear();
        }
    }
    spool.close().await;
    let h = agent(cp.link().await, Some(data_dir)).await;
    enrolled(&h.sync).await;
    let started = std::time::Instant::now();
    let mut status = h.sync.as_ref().unwrap().watch();
    tokio::time::timeout(Duration::from_secs(600), status.wait_for(|s| s.uploaded_events >= N as u64))
        .await
        .unwrap()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("drained {N} records of ~2 KB in {secs:.2} s: {:.0} events/s", N as f64 / secs);
    h.stop().await;
}
