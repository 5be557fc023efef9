//! `palisade approvals` against a real control plane: the server runs
//! in-process on 127.0.0.1:0 over a temp SQLite store holding two devices'
//! inventory; the built `palisade` binary lists, denies and approves. The
//! admin token must never appear in the binary's output, even on errors.

use palisade_server::store::{DeviceRecord, InventoryRecord};
use palisade_server::{ServerConfig, Store};
use std::net::SocketAddr;
use std::process::Output;

const FP: &str = "sha256:9be1";

struct Server {
    cfg: ServerConfig,
    admin: SocketAddr,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), palisade_server::ServerError>>,
    _dir: tempfile::TempDir,
}

async fn device(store: &Store, id: &str) {
    let hash = format!("enroll-{id}");
    store
        .create_enrollment_token(
            &hash,
            1,
            chrono::Utc::now() + chrono::Duration::hours(1),
            None,
        )
        .await
        .unwrap();
    let d = DeviceRecord {
        id: id.into(),
        cert_fingerprint: format!("cert-{id}"),
        cert_serial: "01".into(),
        hostname: format!("{id}.example"),
        os: "macos".into(),
        hardware_id: format!("hw-{id}"),
        agent_version: "0.1.0".into(),
        owner_email: None,
        enrolled_at: chrono::Utc::now(),
        last_seen: None,
        revoked_at: None,
        revoked_reason: None,
        applied_policy_version: None,
    };
    store.enroll_device(&hash, &d).await.unwrap();
}

fn item(kind: &str, id: &str, name: &str) -> InventoryRecord {
    InventoryRecord {
        kind: kind.into(),
        item_id: id.into(),
        name: name.into(),
        details: "{}".into(),
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::for_data_dir(dir.path());
    let store = Store::open(&cfg).await.unwrap();
    device(&store, "d1").await;
    device(&store, "d2").await;
    let mcp = item("mcp_server", FP, "filesystem");
    store
        .report_inventory("d1", &[mcp.clone(), item("app", "cursor", "Cursor")], true)
        .await
        .unwrap();
    store.report_inventory("d2", &[mcp], true).await.unwrap();
    store.close().await;
    let token = palisade_server::bootstrap_admin_token(&cfg, "cli-test")
        .await
        .unwrap()
        .expose()
        .to_string();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(palisade_server::run(cfg.clone(), grpc, admin, async move {
        let _ = rx.await;
    }));
    Server {
        cfg,
        admin: admin_addr,
        token,
        stop: Some(tx),
        handle,
        _dir: dir,
    }
}

impl Server {
    async fn palisade(&self, token: &str, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("approvals")
            .args(args)
            .env("PALISADE_SERVER", format!("http://{}", self.admin))
            .env("PALISADE_TOKEN", token)
            .env("RUST_LOG", "debug")
            .output()
            .await
            .unwrap()
    }

    /// Run with the right token; stdout on success, and the token never shows.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.palisade(&self.token, args).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            !stdout.contains(&self.token) && !stderr.contains(&self.token),
            "token printed"
        );
        stdout
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap().unwrap();
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn list_deny_approve_through_the_binary() {
    let srv = start().await;

    let table = srv
        .ok(&["list", "--kind", "mcp", "--status", "pending"])
        .await;
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].starts_with("KIND"), "{table}");
    assert!(rows[1].starts_with("mcp  pending        2 "), "{table}");
    assert!(
        rows[1].contains("filesystem") && rows[1].ends_with(FP),
        "{table}"
    );

    let out = srv
        .ok(&["deny", "mcp", FP, "--note", "writes anywhere"])
        .await;
    assert_eq!(
        out.trim(),
        format!("denied mcp {FP} (filesystem): policy version 1")
    );
    let out = srv.ok(&["deny", "mcp", FP]).await;
    assert!(
        out.contains("was already denied") && out.contains("version 1 (unchanged)"),
        "{out}"
    );

    let json = srv
        .ok(&["list", "--status", "denied", "--format", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["id"], FP);
    assert_eq!(v[0]["note"], "writes anywhere");
    assert_eq!(v[0]["decided_by"], "cli-test");

    let out = srv.ok(&["approve", "mcp", FP]).await;
    assert_eq!(
        out.trim(),
        format!("approved mcp {FP} (filesystem): policy version 2")
    );
    let store = Store::open(&srv.cfg).await.unwrap();
    let p =
        palisade_core::Policy::from_json(&store.latest_policy().await.unwrap().unwrap().document)
            .unwrap();
    assert_eq!(p.mcp.decision(FP), palisade_core::Decision::Allow);
    store.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn errors_are_clear_and_never_show_the_token() {
    let srv = start().await;
    let wrong = "pal_wrong_token_0123456789";
    let out = srv.palisade(wrong, &["list"]).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("(401)") && stderr.contains("invalid token"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(wrong) && !stderr.contains(wrong),
        "{stderr}"
    );

    let out = srv.palisade(&srv.token, &["deny", "app", "nope"]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("(404)") && stderr.contains("no app with id \"nope\""),
        "{stderr}"
    );
    assert!(!stderr.contains(&srv.token));

    let out = srv.palisade(&srv.token, &["deny", "plugin", "x"]).await;
    assert!(!out.status.success(), "clap refuses an unknown kind");
    assert!(
        text(&out).1.contains("invalid value 'plugin'"),
        "{}",
        text(&out).1
    );

    // Nothing listens here (a port just released).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "approvals",
            "list",
            "--server",
            &format!("http://{free}"),
            "--token",
            &srv.token,
        ])
        .env_remove("PALISADE_SERVER")
        .env_remove("PALISADE_TOKEN")
        .output()
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach the control plane"),
        "{stderr}"
    );
    assert!(!stderr.contains(&srv.token), "{stderr}");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["approvals", "list"])
        .env_remove("PALISADE_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no admin token"), "{}", text(&out).1);
    srv.stop().await;
}
