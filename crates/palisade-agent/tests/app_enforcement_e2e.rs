//! A denied app's AI traffic is refused at the proxy before a byte leaves,
//! with an error in the provider's own format; pending follows the policy's
//! pending mode. The "app" here is this test process, attributed through
//! /proc like any other.

mod common;

use common::*;
use palisade_core::RecordDecision;
use serde_json::json;

/// The id the agent gives this (uncatalogued) test binary.
fn my_app_id() -> String {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let name = exe.file_name().unwrap().to_string_lossy().to_ascii_lowercase();
    format!("exe:{name}")
}

async fn ask(h: &Harness, c: &reqwest::Client) -> reqwest::Response {
    c.post("https://api.openai.com/v1/chat/completions")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request through {} failed: {e}", h.addr))
}

#[tokio::test]
async fn denied_app_is_refused_in_provider_format_and_recorded() {
    let policy = json!({"apps": {"rules": [{"id": my_app_id(), "decision": "deny"}]}}).to_string();
    let mut h = Harness::with(Options { policy_json: Some(policy), ..Default::default() }).await;
    let c = h.client(true);
    let r = ask(&h, &c).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().expect("OpenAI error shape");
    assert!(msg.contains("not approved") && msg.contains("deny"), "{msg}");
    assert!(h.fake.requests().is_empty(), "not a byte left");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Block);
    assert_eq!(i.policy.rule.as_deref(), Some(format!("app:{}", my_app_id()).as_str()));
    assert_eq!(ev.app.as_ref().unwrap().id.as_deref(), Some(my_app_id().as_str()));
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn pending_follows_the_pending_mode() {
    // Pending means block: an app nobody decided on is refused...
    let policy = json!({"apps": {"pending_mode": "block"}}).to_string();
    let mut h = Harness::with(Options { policy_json: Some(policy), ..Default::default() }).await;
    let c = h.client(true);
    assert_eq!(ask(&h, &c).await.status(), 403);
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).policy.decision, RecordDecision::Block);
    drop(c);
    h.stop().await;

    // ...and an approved one passes; pending means allow lets others through.
    for policy in [
        json!({"apps": {"pending_mode": "block", "rules": [{"id": my_app_id(), "decision": "allow"}]}}),
        json!({"apps": {"pending_mode": "allow"}}),
    ] {
        let mut h = Harness::with(Options { policy_json: Some(policy.to_string()), ..Default::default() }).await;
        let c = h.client(true);
        let r = ask(&h, &c).await;
        assert_eq!(r.status(), 200, "{policy}");
        let _ = r.bytes().await;
        let ev = h.next_event().await;
        assert_eq!(interaction(&ev).policy.decision, RecordDecision::Allow);
        assert_eq!(ev.app.as_ref().unwrap().id.as_deref(), Some(my_app_id().as_str()));
        drop(c);
        h.stop().await;
    }
}
