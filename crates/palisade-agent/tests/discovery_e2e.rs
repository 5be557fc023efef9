//! End to end: a real agent with discovery on, scanning a temp root. A
//! config gains an MCP server and it is announced; policy denies it and the
//! config is rewritten (backup kept) and its process stopped; allow brings
//! the file back byte for byte; a re-added server is disabled again; a
//! denied remote server is refused at the proxy; the inventory reaches a
//! real control plane.

mod common;

use common::*;
use palisade_agent::config::{DiscoveryConfig, ServerLink};
use palisade_agent::inventory::DiscoveryOptions;
use palisade_core::policy::{Decision, ItemPolicy, ItemRule};
use palisade_core::{AuditEvent, EventKind, Policy};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

/// A scan root with one home, `<root>/home/alice`.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home/alice")).unwrap();
        Root { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home/alice")
    }

    fn options(&self) -> Options {
        Options {
            discovery: Some(DiscoveryConfig {
                enabled: true,
                root: Some(self.dir.path().to_path_buf()),
                homes: Some(vec![self.home()]),
                rescan_interval_secs: 3600,
                enforce: true,
                catalog_file: None,
            }),
            discovery_options: Some(DiscoveryOptions {
                debounce: Duration::from_millis(100),
                stop_grace: Duration::from_secs(2),
            }),
            ..Options::default()
        }
    }
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Wait for the first spooled record matching `pred`.
async fn wait_for(h: &mut Harness, what: &str, pred: impl Fn(&AuditEvent) -> bool) -> AuditEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, h.events.recv()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(Ok(ev)) if pred(&ev) => return std::sync::Arc::unwrap_or_clone(ev),
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("recorder gone: {e}"),
        }
    }
}

fn blocked(ev: &AuditEvent, action: &str, name: &str) -> bool {
    ev.kind == EventKind::McpBlocked && ev.details["action"] == action && ev.details["name"] == name
}

fn discovered(ev: &AuditEvent, name: &str) -> bool {
    ev.kind == EventKind::McpDiscovered && ev.details["name"] == name
}

fn mcp_policy(rules: &[(&str, Decision)]) -> Policy {
    Policy {
        mcp: ItemPolicy {
            rules: rules
                .iter()
                .map(|(id, d)| ItemRule {
                    id: id.to_string(),
                    decision: *d,
                    note: None,
                })
                .collect(),
            ..Default::default()
        },
        ..Policy::default()
    }
}

/// Poll `f` until it returns `Some`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn server_names(config: &Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    v["mcpServers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// An argument no other process on the machine has, so the `sleep` child
/// is the only match for the server's command line.
fn unique_sleep_arg() -> String {
    format!(
        "{}.{}",
        50_000 + std::process::id() % 10_000,
        std::process::id() % 97
    )
}

#[tokio::test]
async fn stdio_server_is_discovered_denied_stopped_restored_and_disabled_again_when_re_added() {
    let root = Root::new();
    let config = root.home().join(".claude.json");
    put(
        &config,
        b"{\n  \"numStartups\": 3,\n  \"mcpServers\": {}\n}\n",
    );
    let mut h = Harness::with(root.options()).await;

    // 1. The config gains a stdio server while the agent runs.
    let arg = unique_sleep_arg();
    let with_server = format!(
        "{{\n  // added by hand\n  \"numStartups\": 3,\n  \"mcpServers\": {{\n    \"keep\": {{\"command\": \"keep-mcp\"}},\n    \"sleeper\": {{\"command\": \"sleep\", \"args\": [\"{arg}\"], \"env\": {{\"SLEEP_TOKEN\": \"s3cret-value\"}}}},\n  }}\n}}\n"
    );
    put(&config, with_server.as_bytes());
    let ev = wait_for(&mut h, "mcp.discovered for sleeper", |e| {
        discovered(e, "sleeper")
    })
    .await;
    let fp = ev.details["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(ev.details["client"], "claude-code");
    assert_eq!(ev.details["env_names"], json!(["SLEEP_TOKEN"]));
    assert!(
        !serde_json::to_string(&ev).unwrap().contains("s3cret-value"),
        "env values never travel"
    );
    assert_eq!(ev.user.os_user.as_deref(), Some("alice"));
    assert_eq!(ev.device.id, h.state.device.id);

    // A running instance of it.
    let mut child = std::process::Command::new("sleep")
        .arg(&arg)
        .spawn()
        .unwrap();
    let pid = child.id();

    // 2. Policy denies it: the entry is disabled, the process stopped.
    h.state
        .policy
        .set(mcp_policy(&[(&fp, Decision::Deny)]))
        .unwrap();
    let ev = wait_for(&mut h, "disabled", |e| blocked(e, "disabled", "sleeper")).await;
    assert_eq!(ev.details["fingerprint"], fp.as_str());
    assert_eq!(ev.details["method"], "removed");
    let ev = wait_for(&mut h, "processes stopped", |e| {
        blocked(e, "processes-stopped", "sleeper")
    })
    .await;
    assert!(
        ev.details["pids"].as_array().unwrap().contains(&json!(pid)),
        "{}",
        ev.details
    );
    let status = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("the child exits")
        .unwrap()
        .unwrap();
    assert!(!status.success(), "stopped by a signal: {status:?}");

    assert_eq!(
        server_names_jsonc(&config),
        vec!["keep".to_string()],
        "only the denied entry is gone"
    );
    let data = h.dir.path().join("agent/discovery");
    let backups: Vec<Vec<u8>> = std::fs::read_dir(data.join("backups"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        backups.contains(&with_server.as_bytes().to_vec()),
        "the original is kept"
    );
    let receipts: Value =
        serde_json::from_slice(&std::fs::read(data.join("receipts.json")).unwrap()).unwrap();
    assert_eq!(
        receipts[0]["fingerprint"],
        fp.as_str(),
        "receipts survive a restart"
    );
    let managed = root
        .dir
        .path()
        .join("etc/claude-code/managed-settings.json");
    let m: Value = eventually("managed settings", || {
        std::fs::read(&managed)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    })
    .await;
    assert_eq!(
        m["deniedMcpServers"],
        json!([{"serverCommand": ["sleep", arg]}])
    );

    // 3. Allow: the original comes back byte for byte, managed file removed.
    h.state
        .policy
        .set(mcp_policy(&[(&fp, Decision::Allow)]))
        .unwrap();
    let ev = wait_for(&mut h, "restored", |e| blocked(e, "restored", "sleeper")).await;
    assert_eq!(ev.details["outcome"], "identical");
    assert_eq!(std::fs::read(&config).unwrap(), with_server.as_bytes());
    eventually("managed settings removed", || {
        (!managed.exists()).then_some(())
    })
    .await;

    // 4. Deny again, then the user re-adds the server: disabled again.
    h.state
        .policy
        .set(mcp_policy(&[(&fp, Decision::Deny)]))
        .unwrap();
    wait_for(&mut h, "disabled again", |e| {
        blocked(e, "disabled", "sleeper")
    })
    .await;
    assert_eq!(server_names_jsonc(&config), vec!["keep".to_string()]);
    put(&config, with_server.as_bytes());
    wait_for(&mut h, "re-added server disabled", |e| {
        blocked(e, "disabled", "sleeper")
    })
    .await;
    assert_eq!(server_names_jsonc(&config), vec!["keep".to_string()]);
    h.stop().await;
}

/// Server names from a JSONC file (comments, trailing commas).
fn server_names_jsonc(config: &Path) -> Vec<String> {
    let text = String::from_utf8(std::fs::read(config).unwrap()).unwrap();
    let stripped = palisade_discovery::jsonc::strip(&text);
    let v: Value = serde_json::from_str(&stripped).unwrap();
    let mut names: Vec<String> = v["mcpServers"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn denied_remote_servers_are_refused_at_the_proxy() {
    let root = Root::new();
    let cursor = root.home().join(".cursor/mcp.json");
    put(
        &cursor,
        br#"{"mcpServers": {
            "evil": {"url": "https://mcp.evil.example/mcp", "headers": {"Authorization": "Bearer abc"}},
            "openai-mcp": {"url": "https://api.openai.com/mcp"}
        }}"#,
    );
    let mut h = Harness::with(root.options()).await;
    let evil = wait_for(&mut h, "evil discovered", |e| discovered(e, "evil")).await;
    let oai = wait_for(&mut h, "openai-mcp discovered", |e| {
        discovered(e, "openai-mcp")
    })
    .await;
    let (evil_fp, oai_fp) = (
        evil.details["fingerprint"].as_str().unwrap(),
        oai.details["fingerprint"].as_str().unwrap(),
    );
    assert_eq!(evil.details["header_names"], json!(["Authorization"]));
    // Before any decision (pending means allow) nothing is refused.
    assert!(h
        .state
        .blocked_remote
        .for_connect("mcp.evil.example", 443)
        .is_none());

    h.state
        .policy
        .set(mcp_policy(&[
            (evil_fp, Decision::Deny),
            (oai_fp, Decision::Deny),
        ]))
        .unwrap();
    eventually("blocks published", || {
        h.state.blocked_remote.for_connect("mcp.evil.example", 443)
    })
    .await;

    // A host only the denied server uses: CONNECT refused with 403.
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"CONNECT mcp.evil.example:443 HTTP/1.1\r\nHost: mcp.evil.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let ev = wait_for(&mut h, "blocked-connect", |e| {
        blocked(e, "blocked-connect", "evil")
    })
    .await;
    assert_eq!(ev.details["host"], "mcp.evil.example");
    assert_eq!(ev.details["fingerprint"], evil_fp);
    assert!(ev.app.is_some(), "attributed to a process");
    // Other destinations still tunnel.
    drop(raw_connect(h.addr, &format!("127.0.0.1:{}", h.fake.addr.port())).await);

    // On an intercepted AI host, only the server's path is refused, with a
    // JSON-RPC error, before a byte leaves; the AI API keeps working.
    let c = h.client(true);
    let r = c
        .post("https://api.openai.com/mcp")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"jsonrpc": "2.0", "error": {"code": -32001, "message": "Blocked by Palisade: MCP server 'openai-mcp' is denied by policy"}, "id": null})
    );
    assert!(h.fake.requests().is_empty(), "not a byte left");
    let ev = wait_for(&mut h, "blocked-request", |e| {
        blocked(e, "blocked-request", "openai-mcp")
    })
    .await;
    assert_eq!(ev.details["path"], "/mcp");
    let r = c
        .post("https://api.openai.com/v1/chat/completions")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;

    // Allow again: the blocks are lifted.
    h.state
        .policy
        .set(mcp_policy(&[(evil_fp, Decision::Allow)]))
        .unwrap();
    eventually("blocks lifted", || {
        h.state.blocked_remote.current().is_empty().then_some(())
    })
    .await;
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn receipts_let_a_restarted_agent_restore_the_file() {
    let root = Root::new();
    let config = root.home().join(".cursor/mcp.json");
    let original =
        b"{\"mcpServers\": {\"x\": {\"command\": \"x-mcp-server\", \"args\": [\"--flag\"]}}}\n";
    put(&config, original);
    let data_dir = root.dir.path().join("agent-data");
    let opts = || Options {
        data_dir: Some(data_dir.clone()),
        ..root.options()
    };
    let mut h = Harness::with(opts()).await;
    let ev = wait_for(&mut h, "x discovered", |e| discovered(e, "x")).await;
    let fp = ev.details["fingerprint"].as_str().unwrap().to_string();
    h.state
        .policy
        .set(mcp_policy(&[(&fp, Decision::Deny)]))
        .unwrap();
    wait_for(&mut h, "x disabled", |e| blocked(e, "disabled", "x")).await;
    assert!(server_names(&config).is_empty());
    h.stop().await;

    // A new agent process (same data dir) learns the allow and restores.
    let mut h = Harness::with(opts()).await;
    h.state
        .policy
        .set(mcp_policy(&[(&fp, Decision::Allow)]))
        .unwrap();
    let ev = wait_for(&mut h, "x restored", |e| blocked(e, "restored", "x")).await;
    assert_eq!(ev.details["outcome"], "identical");
    assert_eq!(std::fs::read(&config).unwrap(), original);
    h.stop().await;
}

// === with a real control plane ===

#[tokio::test]
async fn inventory_reaches_the_control_plane() {
    let sdir = tempfile::tempdir().unwrap();
    let cfg = palisade_server::ServerConfig::for_data_dir(sdir.path());
    let ca_pem = palisade_server::ServerPki::load_or_create(&cfg)
        .unwrap()
        .ca_cert_pem()
        .to_string();
    let ca_file = sdir.path().join("server-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    palisade_server::bootstrap_admin_token(&cfg, "test")
        .await
        .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let store = palisade_server::Store::open(&cfg).await.unwrap();
    let token = palisade_server::create_enrollment_token(
        &store,
        1,
        chrono::Utc::now() + chrono::Duration::hours(1),
        None,
    )
    .await
    .unwrap()
    .token
    .expose()
    .to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(palisade_server::run(cfg.clone(), grpc, admin, async move {
        let _ = stop_rx.await;
    }));

    let root = Root::new();
    put(
        &root.home().join(".cursor/mcp.json"),
        br#"{"mcpServers": {"gh": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"], "env": {"GITHUB_TOKEN": "ghp_secretvalue"}}}}"#,
    );
    // An installed catalog CLI.
    let bin = root.home().join(".local/bin/claude");
    put(&bin, b"#!/bin/sh\n");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let mut h = Harness::with(Options {
        server: Some(ServerLink {
            url: format!("https://{grpc_addr}"),
            ca_file,
            enrollment_token: Some(token),
        }),
        sync_options: Some(palisade_agent::sync::SyncOptions {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            ..Default::default()
        }),
        ..root.options()
    })
    .await;
    let device_id = tokio::time::timeout(WAIT, h.sync.as_ref().unwrap().wait_enrolled())
        .await
        .unwrap();

    // Unknown apps are learnt from traffic: this test binary talks to OpenAI.
    let c = h.client(true);
    let r = c
        .post("https://api.openai.com/v1/chat/completions")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let my_id = format!(
        "exe:{}",
        exe.file_name()
            .unwrap()
            .to_string_lossy()
            .to_ascii_lowercase()
    );
    let ev = wait_for(&mut h, "app.discovered from traffic", |e| {
        e.kind == EventKind::AppDiscovered && e.details["app_id"] == my_id.as_str()
    })
    .await;
    assert_eq!(ev.details["known"], false);

    let fp = palisade_discovery::fingerprint::stdio_fingerprint(
        "npx",
        &[
            "-y".to_string(),
            "@modelcontextprotocol/server-github".to_string(),
        ],
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let items = loop {
        let items = store.list_inventory(&device_id).await.unwrap();
        let has = |kind: &str, id: &str| items.iter().any(|i| i.kind == kind && i.item_id == id);
        if has("mcp_server", &fp) && has("app", "claude-code") && has("app", &my_id) {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inventory at the server: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gh = items.iter().find(|i| i.item_id == fp).unwrap();
    assert_eq!(gh.name, "gh");
    let details: Value = serde_json::from_str(&gh.details).unwrap();
    assert_eq!(details["env_names"], json!(["GITHUB_TOKEN"]));
    assert_eq!(details["clients"], json!(["cursor"]));
    assert!(
        !gh.details.contains("ghp_secretvalue"),
        "env values never reach the server"
    );

    drop(c);
    h.stop().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    store.close().await;
}

// === measurement ===

/// CPU used by this process (agent + test harness) over ~10 s of idle with
/// watchers on 20 homes. Run: `cargo test -p palisade-agent --test
/// discovery_e2e idle_cpu -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_cpu_with_watchers_on() {
    let root = Root::new();
    let mut homes = Vec::new();
    for i in 0..20 {
        let home = root.dir.path().join(format!("home/u{i}"));
        put(
            &home.join(".cursor/mcp.json"),
            format!(r#"{{"mcpServers": {{"s{i}": {{"command": "s{i}"}}}}}}"#).as_bytes(),
        );
        put(&home.join(".claude.json"), b"{\"mcpServers\": {}}");
        homes.push(home);
    }
    let mut opts = root.options();
    opts.discovery.as_mut().unwrap().homes = Some(homes);
    let mut h = Harness::with(opts).await;
    for i in 0..20 {
        let name = format!("s{i}");
        wait_for(&mut h, "initial scan", |e| discovered(e, &name)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    // USER_HZ: /proc reports CPU time in 1/100 s on Linux.
    let hz = 100.0;
    let (t0, c0) = (std::time::Instant::now(), ticks());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (secs, used) = (t0.elapsed().as_secs_f64(), (ticks() - c0) as f64 / hz);
    println!(
        "idle CPU with watchers on 20 homes: {used:.3} s CPU over {secs:.1} s = {:.3}% of one core",
        100.0 * used / secs
    );
    h.stop().await;
}
