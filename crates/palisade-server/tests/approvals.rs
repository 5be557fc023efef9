//! End-to-end: devices report inventory over mTLS gRPC, admins decide over
//! `/api/v1/approvals`, and a connected agent's WatchPolicy stream receives
//! the policy version carrying each decision. The PostgreSQL case runs when
//! PALISADE_TEST_POSTGRES_URL is set.

mod support;

use palisade_core::{Decision, Policy};
use palisade_proto as proto;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use support::*;

const FP: &str = "sha256:4f2a9c";

fn mcp_item(name: &str, client: &str) -> proto::InventoryItem {
    proto::InventoryItem {
        kind: proto::INVENTORY_KIND_MCP_SERVER.into(),
        id: FP.into(),
        name: name.into(),
        details_json: json!({
            "transport": "stdio",
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-github"],
            "env_names": ["GITHUB_TOKEN"],
            "clients": [client],
        })
        .to_string()
        .into_bytes(),
    }
}

fn app_item(id: &str) -> proto::InventoryItem {
    proto::InventoryItem {
        kind: proto::INVENTORY_KIND_APP.into(),
        id: id.into(),
        name: id.into(),
        details_json: br#"{"known":true}"#.to_vec(),
    }
}

async fn report(c: &mut DeviceClients, items: Vec<proto::InventoryItem>) {
    c.inventory
        .report(proto::InventoryReport {
            items,
            full_snapshot: true,
            observed_at_unix_ms: 0,
        })
        .await
        .unwrap();
}

/// The next policy pushed to `watch`, waiting at most 10 s.
async fn next_policy(watch: &mut tonic::Streaming<proto::PolicyUpdate>) -> (u64, Policy) {
    let u = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("policy update within 10 s")
        .unwrap()
        .unwrap();
    let p: Policy = serde_json::from_slice(&u.document_json).unwrap();
    (u.version, p)
}

async fn scenario(srv: TestServer) {
    let d1 = srv.enroll_new("hw-1").await;
    let d2 = srv.enroll_new("hw-2").await;
    let mut c1 = srv.clients(&d1).await;
    let mut c2 = srv.clients(&d2).await;
    report(
        &mut c1,
        vec![mcp_item("github", "cursor"), app_item("cursor")],
    )
    .await;
    report(&mut c2, vec![mcp_item("gh", "claude-code")]).await;

    // One entry for the server on two devices in two apps, pending.
    let (s, v) = srv
        .admin(
            Method::GET,
            "/api/v1/approvals?kind=mcp&status=pending",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["id"], FP);
    assert_eq!(items[0]["kind"], "mcp");
    assert_eq!(items[0]["status"], "pending");
    assert_eq!(items[0]["device_count"], 2);
    assert!(items[0]["first_seen"].is_string() && items[0]["last_seen"].is_string());
    let (_, v) = srv.admin(Method::GET, "/api/v1/approvals", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "the app too: {v}");

    let path = format!("/api/v1/approvals/mcp/{FP}");

    // A connected agent.
    let mut watch = c1
        .policy
        .watch_policy(proto::WatchPolicyRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_policy(&mut watch).await.0, 0);

    // Deny: a new version whose mcp.rules deny the fingerprint reaches it.
    let (s, v) = srv
        .admin(
            Method::POST,
            &format!("{path}/deny"),
            Some(json!({"note": "reads every repo"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "denied");
    assert_eq!(v["changed"], true);
    assert_eq!(v["policy_version"], 1);
    assert_eq!(v["decided_by"], "test-admin");
    let (version, p) = next_policy(&mut watch).await;
    assert_eq!(version, 1);
    assert_eq!(p.mcp.decision(FP), Decision::Deny);
    assert_eq!(p.mcp.rules[0].note.as_deref(), Some("reads every repo"));
    assert_eq!(p.ai_hosts, Policy::default().ai_hosts, "the rest is kept");

    // Idempotent: no new version.
    let (s, v) = srv.admin(Method::POST, &format!("{path}/deny"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changed"], false);
    assert_eq!(v["policy_version"], 1);
    let (_, v) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    assert_eq!(v["version"], 1);

    // Reversal publishes again, replacing the rule.
    let (s, v) = srv
        .admin(Method::POST, &format!("{path}/approve"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["policy_version"], 2);
    let (version, p) = next_policy(&mut watch).await;
    assert_eq!(version, 2);
    assert_eq!(p.mcp.decision(FP), Decision::Allow);
    assert_eq!(p.mcp.rules.len(), 1);

    // Apps go to apps.rules.
    let (s, v) = srv
        .admin(Method::POST, "/api/v1/approvals/app/cursor/deny", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (version, p) = next_policy(&mut watch).await;
    assert_eq!(version, 3);
    assert_eq!(p.apps.decision("cursor"), Decision::Deny);
    assert_eq!(p.mcp.decision(FP), Decision::Allow);

    // Each decision is an admin audit entry naming who decided what.
    let (s, v) = srv.admin(Method::GET, "/api/v1/admin-audit", None).await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let decisions: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "deny" || e["action"] == "approve")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"]["type"].as_str().unwrap(),
                e["target"]["id"].as_str().unwrap(),
                e["actor"]["id"].as_str().unwrap(),
                e["details"]["changed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("deny", "mcp", FP, "test-admin", true),
            ("deny", "mcp", FP, "test-admin", false),
            ("approve", "mcp", FP, "test-admin", true),
            ("deny", "app", "cursor", "test-admin", true),
        ],
        "{v}"
    );

    // The server leaves device 2: still one entry, decision kept.
    report(&mut c2, vec![]).await;
    let (_, v) = srv
        .admin(Method::GET, "/api/v1/approvals?status=approved", None)
        .await;
    assert_eq!(v["items"][0]["id"], FP, "{v}");
    assert_eq!(v["items"][0]["device_count"], 1);
    srv.stop().await;
}

#[tokio::test]
async fn detail_lists_devices_and_clients() {
    let srv = TestServer::start().await;
    let d1 = srv.enroll_new("hw-1").await;
    let d2 = srv.enroll_new("hw-2").await;
    report(
        &mut srv.clients(&d1).await,
        vec![mcp_item("github", "cursor")],
    )
    .await;
    report(
        &mut srv.clients(&d2).await,
        vec![mcp_item("gh", "claude-code")],
    )
    .await;
    let path = format!("/api/v1/approvals/mcp/{FP}");
    let (s, v) = srv.admin(Method::GET, &path, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["device_count"], 2);
    assert_eq!(v["clients"], json!(["claude-code", "cursor"]));
    let mut ids: Vec<_> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want = vec![d1.id.clone(), d2.id.clone()];
    want.sort();
    assert_eq!(ids, want);

    assert_eq!(v["devices_truncated"], false);
    let mut names: Vec<_> = v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["gh", "github"]);
    let (s, v) = srv
        .admin(Method::GET, "/api/v1/approvals/mcp/unknown", None)
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no MCP server with id"),
        "{v}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn inventory_to_decision_to_agent_sqlite() {
    scenario(TestServer::start().await).await;
}

#[tokio::test]
async fn inventory_to_decision_to_agent_postgres() {
    let Some(url) = postgres_url() else {
        eprintln!("PALISADE_TEST_POSTGRES_URL not set; skipping");
        return;
    };
    let schema = fresh_schema();
    let srv = TestServer::start_with(|cfg| {
        cfg.store.postgres_url = Some(url);
        cfg.store.postgres_schema = Some(schema);
    })
    .await;
    scenario(srv).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let srv = TestServer::start().await;
    let d = srv.enroll_new("hw-1").await;
    let mut c = srv.clients(&d).await;
    report(&mut c, vec![app_item("zed")]).await;

    let (s, v) = srv
        .admin(Method::POST, "/api/v1/approvals/app/nope/deny", None)
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no app with id \"nope\""),
        "{v}"
    );
    let (s, v) = srv
        .admin(Method::POST, "/api/v1/approvals/mcp/zed/approve", None)
        .await;
    assert_eq!(s, 404, "an app id is not an MCP server: {v}");
    let (s, v) = srv
        .admin(Method::POST, "/api/v1/approvals/browser/zed/approve", None)
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unknown kind"), "{v}");
    let (s, v) = srv
        .admin(
            Method::GET,
            "/api/v1/approvals?kind=plugin&status=maybe&limit=0",
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("kind") && e.contains("status") && e.contains("limit"),
        "{e}"
    );
    let (s, v) = srv
        .admin(Method::GET, "/api/v1/approvals?colour=red", None)
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = srv
        .admin(
            Method::POST,
            "/api/v1/approvals/app/zed/deny",
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("unknown field"),
        "{v}"
    );
    // Nothing above changed the policy or the entry.
    let (_, v) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    assert_eq!(v["version"], 0);
    let (_, v) = srv.admin(Method::GET, "/api/v1/approvals", None).await;
    assert_eq!(v["items"][0]["status"], "pending");

    // No token, no catalog.
    let r = srv
        .http()
        .get(srv.url("/api/v1/approvals"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    srv.stop().await;
}
