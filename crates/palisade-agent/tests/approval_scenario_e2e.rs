//! The discovery issue's scenario end to end, across a real agent and a real
//! control plane: a config gains an MCP server; the server lists it as
//! pending; an admin denies it through the approvals API; the device disables
//! it and stops its process; the admin approves it and the original file
//! comes back byte for byte. Then the same for an app: once denied, its
//! proxied request is refused in the provider's error format.

mod common;

use common::*;
use palisade_agent::config::{DiscoveryConfig, ServerLink};
use palisade_agent::inventory::DiscoveryOptions;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

struct ControlPlane {
    admin: std::net::SocketAddr,
    token: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    async fn api(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Poll the approvals list until an item of `kind` named `name` shows up.
    async fn pending(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (s, v) = self
                .api(reqwest::Method::GET, &format!("/api/v1/approvals?kind={kind}&status=pending"))
                .await;
            assert_eq!(s, 200, "{v}");
            if let Some(item) = v["items"].as_array().unwrap().iter().find(|i| pred(i)) {
                return item.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "no pending {kind} item: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn pending_then_denied_then_approved_across_agent_and_control_plane() {
    // The control plane.
    let sdir = tempfile::tempdir().unwrap();
    let cfg = palisade_server::ServerConfig::for_data_dir(sdir.path());
    let ca_pem = palisade_server::ServerPki::load_or_create(&cfg).unwrap().ca_cert_pem().to_string();
    let ca_file = sdir.path().join("server-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let token = palisade_server::bootstrap_admin_token(&cfg, "scenario").await.unwrap().expose().to_string();
    let store = palisade_server::Store::open(&cfg).await.unwrap();
    let enroll = palisade_server::create_enrollment_token(&store, 1, chrono::Utc::now() + chrono::Duration::hours(1), None)
        .await
        .unwrap()
        .token
        .expose()
        .to_string();
    store.close().await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(palisade_server::run(cfg, grpc, admin, async move {
        let _ = stop_rx.await;
    }));
    let mut cp = ControlPlane {
        admin: admin_addr,
        token,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        stop: Some(stop_tx),
        _dir: sdir,
    };

    // A device with one home, discovery on.
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home/alice");
    let config = home.join(".claude.json");
    put(&config, b"{\n  \"mcpServers\": {}\n}\n");
    let h = Harness::with(Options {
        server: Some(ServerLink { url: format!("https://{grpc_addr}"), ca_file, enrollment_token: Some(enroll) }),
        sync_options: Some(palisade_agent::sync::SyncOptions {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            ..Default::default()
        }),
        discovery: Some(DiscoveryConfig {
            enabled: true,
            root: Some(root.path().to_path_buf()),
            homes: Some(vec![home.clone()]),
            rescan_interval_secs: 3600,
            enforce: true,
            catalog_file: None,
        }),
        discovery_options: Some(DiscoveryOptions { debounce: Duration::from_millis(100), stop_grace: Duration::from_secs(2) }),
        ..Options::default()
    })
    .await;
    tokio::time::timeout(WAIT, h.sync.as_ref().unwrap().wait_enrolled()).await.expect("enrolled");

    // 1. The config gains a server (and it is running).
    let arg = format!("{}.{}", 60_000 + std::process::id() % 10_000, std::process::id() % 89);
    let original = format!(
        "{{\n  \"mcpServers\": {{\n    \"sleeper\": {{\"command\": \"sleep\", \"args\": [\"{arg}\"], \"env\": {{\"TOKEN\": \"v4lue\"}}}}\n  }}\n}}\n"
    );
    put(&config, original.as_bytes());
    let mut child = std::process::Command::new("sleep").arg(&arg).spawn().unwrap();

    // 2. The control plane shows it as pending.
    let item = cp.pending("mcp", |i| i["name"] == "sleeper").await;
    let id = item["id"].as_str().unwrap().to_string();
    assert_eq!(item["device_count"], 1, "{item}");

    // 3. An admin denies it.
    let (s, v) = cp.api(reqwest::Method::POST, &format!("/api/v1/approvals/mcp/{id}/deny")).await;
    assert_eq!(s, 200, "{v}");

    // 4. The device disables it and stops its process.
    eventually("the entry removed from the config", || {
        !std::fs::read_to_string(&config).unwrap().contains("sleeper")
    })
    .await;
    let status = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("the server process is stopped")
        .unwrap()
        .unwrap();
    assert!(!status.success(), "stopped by a signal: {status:?}");

    // 5. The admin reverses the decision: the original file comes back.
    let (s, v) = cp.api(reqwest::Method::POST, &format!("/api/v1/approvals/mcp/{id}/approve")).await;
    assert_eq!(s, 200, "{v}");
    eventually("the original config restored byte for byte", || {
        std::fs::read(&config).unwrap() == original.as_bytes()
    })
    .await;

    // The device's enforcement events reached the control plane.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, v) = cp.api(reqwest::Method::GET, "/api/v1/events?kind=mcp.blocked&limit=100").await;
        assert_eq!(s, 200);
        let evs = v["events"].as_array().unwrap();
        let has = |a: &str| evs.iter().any(|e| e["details"]["action"] == a);
        if has("disabled") && has("processes-stopped") && has("restored") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "enforcement events: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each decision is an admin audit entry naming who decided.
    let (s, v) = cp.api(reqwest::Method::GET, "/api/v1/admin-audit?limit=100").await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().expect("entries").clone();
    for action in ["deny", "approve"] {
        assert!(
            entries.iter().any(|e| e["action"] == action && e["actor"]["id"] == "scenario" && e["outcome"] == "success"),
            "no {action} entry: {entries:?}"
        );
    }

    // The same for an app: this test binary, learnt from its traffic.
    let c = h.client(true);
    let ask = || {
        c.post("https://api.openai.com/v1/chat/completions")
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
    };
    assert_eq!(ask().send().await.unwrap().status(), 200);
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let me = format!("exe:{}", exe.file_name().unwrap().to_string_lossy().to_ascii_lowercase());
    let app = cp.pending("app", |i| i["id"] == me.as_str()).await;
    let (s, v) = cp.api(reqwest::Method::POST, &format!("/api/v1/approvals/app/{}/deny", app["id"].as_str().unwrap())).await;
    assert_eq!(s, 200, "{v}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = ask().send().await.unwrap();
        if r.status() == 403 {
            let body: Value = r.json().await.unwrap();
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(msg.contains("not approved"), "{msg}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the app was never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    h.stop().await;
    if let Some(tx) = cp.stop.take() {
        let _ = tx.send(());
    }
    let _ = server.await;
}
