//! Guardrails end to end: a prompt carrying an AWS key and a card number goes
//! through the proxy under log, redact and block policies.

mod common;

use common::*;
use palisade_core::RecordDecision;
use serde_json::json;

const AWS_KEY: &str = "AKIAZ3MSJV4WWNKWW5FG";
const CARD: &str = "4111 1111 1111 1111";

fn policy(action: &str, capture: &str) -> String {
    json!({
        "capture": capture,
        "guardrails": {"enabled": true, "default_action": action, "scan_responses": true}
    })
    .to_string()
}

fn prompt() -> serde_json::Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": format!("deploy with key {AWS_KEY} and bill card {CARD} please")}]
    })
}

fn detectors(ev: &palisade_core::AuditEvent) -> Vec<String> {
    let mut d: Vec<String> = interaction(ev).findings.iter().map(|f| f.detector.clone()).collect();
    d.sort();
    d
}

#[tokio::test]
async fn redact_sends_placeholders_upstream_and_records_findings() {
    let mut h = Harness::with(Options {
        policy_json: Some(policy("redact", "full")),
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .json(&prompt())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    let sent = h.fake.requests()[0].json().expect("upstream got valid JSON");
    let content = sent["messages"][0]["content"].as_str().unwrap();
    assert!(!content.contains(AWS_KEY) && !content.contains(CARD), "{content}");
    assert!(content.contains("[AWS_ACCESS_KEY_1]") || content.contains("[AWS"), "{content}");
    assert_eq!(
        h.fake.requests()[0].header("content-length").unwrap(),
        h.fake.requests()[0].body.len().to_string()
    );
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Redact);
    let d = detectors(&ev);
    assert!(d.iter().any(|x| x.contains("aws")), "{d:?}");
    assert!(d.iter().any(|x| x.contains("card")), "{d:?}");
    let whole = serde_json::to_string(&ev).unwrap();
    assert!(!whole.contains(AWS_KEY) && !whole.contains(CARD), "no secret in the record");
    h.stop().await;
}

#[tokio::test]
async fn block_sends_nothing_and_the_app_gets_a_readable_provider_error() {
    let mut h = Harness::with(Options {
        policy_json: Some(policy("block", "full")),
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.anthropic.com/v1/messages")
        .json(&json!({
            "model": "claude-sonnet-4-5", "max_tokens": 10,
            "messages": [{"role": "user", "content": format!("my key is {AWS_KEY}")}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Blocked by Palisade") && msg.contains("aws"), "{msg}");
    assert!(!msg.contains(AWS_KEY));
    assert!(h.fake.requests().is_empty(), "nothing left the device");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Block);
    assert!(i.policy.rule.as_deref().unwrap().contains("aws"));
    assert_eq!(i.response.status, Some(403));
    assert!(!serde_json::to_string(&ev).unwrap().contains(AWS_KEY));
    h.stop().await;
}

#[tokio::test]
async fn log_forwards_untouched_but_never_records_the_value() {
    let mut h = Harness::with(Options {
        policy_json: Some(policy("log", "full")),
        ..Default::default()
    })
    .await;
    let body = prompt().to_string();
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    assert!(h.fake.requests()[0].body.as_ref() == body.as_bytes(), "forwarded byte for byte");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Allow);
    assert_eq!(detectors(&ev).len(), 2, "{:?}", detectors(&ev));
    let p = i.request.prompt.as_deref().unwrap();
    assert!(p.contains("deploy with key [") && !p.contains(AWS_KEY), "{p}");
    h.stop().await;
}

#[tokio::test]
async fn metadata_capture_keeps_no_text_and_binary_bodies_are_skipped() {
    let mut h = Harness::with(Options {
        policy_json: Some(policy("redact", "metadata")),
        ..Default::default()
    })
    .await;
    let c = h.client(true);
    let r = c
        .post("https://api.openai.com/v1/chat/completions")
        .json(&prompt())
        .send()
        .await
        .unwrap();
    let _ = r.bytes().await.unwrap();
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert!(i.request.prompt.is_none() && i.response.text.is_none());
    assert!(!i.findings.is_empty());
    assert!(i.usage.input_tokens.is_some());

    let r = c
        .post("https://api.openai.com/v1/audio/transcriptions")
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 159, 146, 150, 255, 0, 1, 2])
        .send()
        .await
        .unwrap();
    let _ = r.bytes().await;
    let ev = h.next_event().await;
    assert!(interaction(&ev).guard_skipped.is_some(), "{:?}", interaction(&ev));
    h.stop().await;
}
