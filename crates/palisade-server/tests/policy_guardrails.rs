//! A policy whose guardrails agents could not compile is refused at the API,
//! naming each bad rule and why; nothing is published.

mod support;

use reqwest::Method;
use serde_json::json;
use support::*;

#[tokio::test]
async fn bad_custom_rules_are_refused_naming_each_rule() {
    let srv = TestServer::start().await;
    let (_, before) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    let policy = json!({
        "guardrails": {
            "custom": [
                {"id": "empty_matcher", "regex": "a*", "action": "block"},
                {"id": "broken", "regex": "(unclosed", "action": "log"},
                {"id": "fine", "regex": "ACME-[0-9]{6}", "action": "redact"}
            ]
        }
    });
    let (s, v) = srv.admin(Method::PUT, "/api/v1/policy", Some(policy)).await;
    assert_eq!(s, 422, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("empty_matcher") && msg.contains("broken"), "every bad rule named: {msg}");
    assert!(!msg.contains("fine"), "a good rule is not blamed: {msg}");
    let (_, after) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    assert_eq!(before["version"], after["version"], "nothing published");

    let good = json!({"guardrails": {"custom": [{"id": "fine", "regex": "ACME-[0-9]{6}", "action": "redact"}]}});
    let (s, v) = srv.admin(Method::PUT, "/api/v1/policy", Some(good)).await;
    assert_eq!(s, 200, "{v}");
    srv.stop().await;
}
