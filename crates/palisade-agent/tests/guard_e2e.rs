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

// === responses ===

/// A policy whose request rules only log, and whose response rules block
/// AWS keys.
fn response_block_policy() -> String {
    json!({
        "guardrails": {"default_action": "log", "response_actions": {"aws_access_key": "block"}}
    })
    .to_string()
}

fn chat_request(stream: bool) -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "stream": stream,
        "messages": [{"role": "user", "content": "what is my deploy key?"}]})
}

#[tokio::test]
async fn a_blocking_response_rule_answers_403_in_the_providers_format() {
    let mut h = Harness::with(Options {
        policy_json: Some(response_block_policy()),
        ..Default::default()
    })
    .await;
    let c = h.client(true);
    let r = c
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-text", format!("Your key is {AWS_KEY}."))
        .json(&chat_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(!body.contains(AWS_KEY), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Blocked by Palisade") && msg.contains("aws_access_key"), "{msg}");
    assert_eq!(h.fake.requests().len(), 1, "the request went out; upstream answered normally");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Block);
    assert_eq!(i.policy.rule.as_deref(), Some("aws_access_key"));
    assert_eq!(i.response.status, Some(403));
    assert_eq!(i.error.as_deref(), Some("response blocked by guardrail aws_access_key"));
    let f = i.findings.iter().find(|f| f.detector == "aws_access_key").expect("a finding");
    assert_eq!((f.action.as_str(), f.location), ("block", palisade_core::FindingLocation::Response));
    assert!(i.usage.output_tokens.is_some(), "what upstream spent is still recorded");
    assert!(!serde_json::to_string(&ev).unwrap().contains(AWS_KEY), "no secret in the record");

    // A clean response under the same policy is released byte for byte.
    let r = c
        .post("https://api.openai.com/v1/chat/completions")
        .json(&chat_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    let want = palisade_test_support::canned::response_body(
        &palisade_test_support::canned::Route::ChatCompletions,
        "gpt-4o-mini",
        palisade_test_support::canned::TEXT,
    )
    .to_string();
    assert_eq!(&got[..], want.as_bytes());
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).policy.decision, RecordDecision::Allow);
    h.stop().await;
}

/// Pieces of the streamed assistant text: the key is in the 3rd SSE chunk
/// (the 1st carries the role).
const PIECES: &[&str] = &["Here is the key: ", "AKIAZ3MSJV4WWNKWW5FG", " and more text."];

fn expected_chunks() -> Vec<Vec<u8>> {
    palisade_test_support::canned::stream_chunks_with(
        &palisade_test_support::canned::Route::ChatCompletions,
        "gpt-4o-mini",
        false,
        PIECES,
    )
}

#[tokio::test]
async fn a_blocked_stream_ends_with_an_error_event_before_the_secret() {
    assert_eq!(PIECES[1], AWS_KEY);
    let mut h = Harness::with(Options {
        policy_json: Some(response_block_policy()),
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-text", PIECES.join("|"))
        .header("x-fake-gate", "1")
        .json(&chat_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunks = expected_chunks();
    // The first chunk arrives while the fake still holds the second: frames
    // are forwarded as they come, not buffered.
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    while got.len() < chunks[0].len() {
        let b = futures_util::StreamExt::next(&mut s).await.expect("more").unwrap();
        got.extend_from_slice(&b);
    }
    assert_eq!(got, chunks[0]);
    h.fake.release_gate();
    while let Some(b) = futures_util::StreamExt::next(&mut s).await {
        got.extend_from_slice(&b.expect("the stream ends cleanly"));
    }
    let text = String::from_utf8(got).unwrap();
    assert!(!text.contains(AWS_KEY), "{text}");
    let head = [chunks[0].clone(), chunks[1].clone()].concat();
    let head = String::from_utf8(head).unwrap();
    assert!(text.starts_with(&head), "the first two chunks, untouched: {text}");
    let last = &text[head.len()..];
    assert!(last.starts_with("data: {\"error\"") && last.ends_with("\n\n"), "{last}");
    let v: serde_json::Value = serde_json::from_str(last.trim_start_matches("data: ").trim()).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("aws_access_key"), "{v}");

    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Block);
    assert_eq!(i.policy.rule.as_deref(), Some("aws_access_key"));
    assert!(i.error.as_deref().unwrap().contains("response blocked by guardrail aws_access_key"), "{:?}", i.error);
    assert!(i
        .findings
        .iter()
        .any(|f| f.detector == "aws_access_key" && f.action == "block" && f.location == palisade_core::FindingLocation::Response));
    assert_eq!(i.response.text.as_deref(), Some("Here is the key: "), "what the client got");
    assert!(!serde_json::to_string(&ev).unwrap().contains(AWS_KEY));

    // The same over HTTP/2.
    let r = h
        .client(false)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-text", PIECES.join("|"))
        .json(&chat_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let text = r.text().await.unwrap();
    assert!(text.starts_with(&head) && !text.contains(AWS_KEY), "{text}");
    assert!(text[head.len()..].starts_with("data: {\"error\""), "{text}");
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).policy.decision, RecordDecision::Block);
    h.stop().await;
}

#[tokio::test]
async fn without_a_blocking_response_rule_a_stream_is_untouched() {
    let mut h = Harness::with(Options {
        policy_json: Some(policy("block", "full")),
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-text", PIECES.join("|"))
        .json(&chat_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(&got[..], &expected_chunks().concat()[..], "byte for byte");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Allow);
    let f = i.findings.iter().find(|f| f.detector == "aws_access_key").expect("recorded");
    assert_eq!((f.action.as_str(), f.location), ("log", palisade_core::FindingLocation::Response));
    assert!(!serde_json::to_string(&ev).unwrap().contains(AWS_KEY));
    h.stop().await;
}

// === MCP ===

const MCP_HOST: &str = "mcp.example.com";

fn mcp_policy(guardrails: serde_json::Value) -> String {
    json!({
        "ai_hosts": [{"host": MCP_HOST, "provider": "mcp"}, {"host": "api.openai.com", "provider": "openai"}],
        "guardrails": guardrails,
    })
    .to_string()
}

fn tool_call(id: u64) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "deploy", "arguments": {"cmd": format!("deploy --key {AWS_KEY}"), "dry_run": true}}})
}

async fn mcp_harness(guardrails: serde_json::Value) -> Harness {
    Harness::with(Options {
        policy_json: Some(mcp_policy(guardrails)),
        extra_hosts: vec![MCP_HOST],
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn mcp_tool_call_arguments_are_redacted() {
    let mut h = mcp_harness(json!({"default_action": "redact"})).await;
    let r = h
        .client(true)
        .post(format!("https://{MCP_HOST}/mcp"))
        .json(&tool_call(7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["id"], 7);
    let sent = h.fake.requests()[0].json().expect("valid JSON-RPC upstream");
    let cmd = sent["params"]["arguments"]["cmd"].as_str().unwrap();
    assert!(!cmd.contains(AWS_KEY) && cmd.contains("[AWS"), "{cmd}");
    assert_eq!(sent["params"]["arguments"]["dry_run"], true, "the rest is untouched");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!((i.provider.as_str(), i.endpoint.as_str()), ("mcp", "mcp"));
    assert_eq!(i.policy.decision, RecordDecision::Redact);
    let f = i.findings.iter().find(|f| f.detector == "aws_access_key").expect("a finding");
    assert_eq!(f.path.as_deref(), Some("params.arguments.cmd"));
    assert!(i.request.prompt.as_deref().unwrap().contains("deploy"), "{:?}", i.request.prompt);
    assert!(!serde_json::to_string(&ev).unwrap().contains(AWS_KEY));
    h.stop().await;
}

#[tokio::test]
async fn mcp_tool_call_blocked_gets_a_json_rpc_error() {
    let mut h = mcp_harness(json!({"default_action": "block"})).await;
    let r = h
        .client(true)
        .post(format!("https://{MCP_HOST}/mcp"))
        .json(&tool_call(9))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 9);
    assert_eq!(v["error"]["code"], -32001);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("aws_access_key") && !msg.contains(AWS_KEY), "{msg}");
    assert!(h.fake.requests().is_empty(), "nothing left the device");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.endpoint, "mcp");
    assert_eq!(i.policy.decision, RecordDecision::Block);

    // The same call to an AI host is recognised by its body.
    let r = h
        .client(true)
        .post("https://api.openai.com/mcp")
        .json(&tool_call(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["id"], 10);
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).endpoint, "mcp");
    assert!(h.fake.requests().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn mcp_tool_results_are_scanned_and_blocked_by_response_rules() {
    let mut h = mcp_harness(json!({"default_action": "log", "response_actions": {"aws_access_key": "block"}})).await;
    let c = h.client(true);
    // JSON answer: held, judged, refused.
    let r = c.post(format!("https://{MCP_HOST}/mcp")).json(&tool_call(1)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(!body.contains(AWS_KEY), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["id"].clone(), v["error"]["code"].clone()), (json!(1), json!(-32001)));
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Block);
    let paths: Vec<_> = i.findings.iter().map(|f| (f.location, f.action.as_str(), f.path.as_deref())).collect();
    assert!(paths.contains(&(palisade_core::FindingLocation::Request, "log", Some("params.arguments.cmd"))), "{paths:?}");
    assert!(paths.contains(&(palisade_core::FindingLocation::Response, "block", Some("result.content[0].text"))), "{paths:?}");
    assert!(!serde_json::to_string(&ev).unwrap().contains(AWS_KEY));

    // Event-stream answer: the message never passes; a JSON-RPC error does.
    let r = c
        .post(format!("https://{MCP_HOST}/mcp"))
        .header("x-fake-mcp-sse", "1")
        .json(&tool_call(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(AWS_KEY), "{text}");
    assert!(text.starts_with("event: message\ndata: "), "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim_start_matches("event: message\ndata: ").trim()).unwrap();
    assert_eq!((v["id"].clone(), v["error"]["code"].clone()), (json!(2), json!(-32001)));
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).policy.decision, RecordDecision::Block);

    // A clean result passes, and its findings are still recorded.
    let r = c
        .post(format!("https://{MCP_HOST}/mcp"))
        .header("x-fake-mcp-sse", "1")
        .header("x-fake-text", "mail ops@acme.io")
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("ops@acme.io"), "{text}");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Allow);
    assert!(i.findings.iter().any(|f| f.detector == "email" && f.location == palisade_core::FindingLocation::Response));
    h.stop().await;
}

// === capture per team ===

async fn captured_prompt(team: Option<&str>, overrides: serde_json::Value) -> Option<String> {
    let mut h = Harness::with(Options {
        policy_json: Some(json!({"capture": "full", "capture_overrides": overrides}).to_string()),
        team: team.map(str::to_string),
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
    let _ = r.bytes().await.unwrap();
    let ev = h.next_event().await;
    let i = interaction(&ev).clone();
    assert!(!i.findings.is_empty(), "findings are kept in every mode");
    h.stop().await;
    assert_eq!(i.request.prompt.is_some(), i.response.text.is_some());
    i.request.prompt
}

#[tokio::test]
async fn capture_follows_the_devices_team_unless_the_user_has_an_override() {
    let team_only = json!([{"scope": "team:legal", "capture": "metadata"}]);
    assert_eq!(captured_prompt(Some("legal"), team_only.clone()).await, None, "legal keeps metadata only");
    assert!(captured_prompt(Some("sales"), team_only.clone()).await.is_some(), "other teams: policy default");
    assert!(captured_prompt(None, team_only).await.is_some(), "no team: policy default");
    // The harness's owner is jane@example.com: a user override beats the team.
    let both = json!([
        {"scope": "team:legal", "capture": "metadata"},
        {"scope": "user:jane@example.com", "capture": "redacted"}
    ]);
    let p = captured_prompt(Some("legal"), both).await.expect("the user's override wins");
    assert!(!p.contains(AWS_KEY), "{p}");
}

#[tokio::test]
async fn a_compressed_anthropic_stream_is_cut_with_an_error_event() {
    let mut h = Harness::with(Options {
        policy_json: Some(response_block_policy()),
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.anthropic.com/v1/messages")
        .header("x-fake-text", PIECES.join("|"))
        .header("x-fake-encoding", "gzip")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true,
            "messages": [{"role": "user", "content": "key?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none(), "forwarded decoded: an error event can follow");
    let text = r.text().await.unwrap();
    assert!(!text.contains(AWS_KEY), "{text}");
    assert!(text.contains("Here is the key: "), "earlier events passed: {text}");
    let last = text.rsplit("\n\n").nth(1).unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    let v: serde_json::Value = serde_json::from_str(last.trim_start_matches("event: error\ndata: ")).unwrap();
    assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("palisade_error")));
    let ev = h.next_event().await;
    assert_eq!(interaction(&ev).policy.decision, RecordDecision::Block);
    h.stop().await;
}

#[tokio::test]
async fn a_response_over_the_capture_cap_is_released_uninspected_and_says_so() {
    let mut h = Harness::with(Options {
        policy_json: Some(response_block_policy()),
        capture_max_bytes: 4096,
        ..Default::default()
    })
    .await;
    let r = h
        .client(true)
        .post("https://api.openai.com/v1/chat/completions")
        .header("x-fake-body-bytes", "100000")
        .json(&chat_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000, "every byte released");
    let ev = h.next_event().await;
    let i = interaction(&ev);
    assert_eq!(i.policy.decision, RecordDecision::Allow);
    let skipped = i.guard_skipped.as_deref().unwrap();
    assert!(skipped.contains("response larger than the capture cap"), "{skipped}");
    h.stop().await;
}
