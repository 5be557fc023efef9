use super::*;
use crate::classify;
use palisade_core::Usage;

fn ep(provider: &str, path: &str) -> Endpoint {
    classify(provider, "POST", path)
}

#[test]
fn openai_chat_response() {
    let r = parse_response(
        &ep("openai", "/v1/chat/completions"),
        200,
        include_bytes!("../../tests/fixtures/openai_chat.json"),
    );
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(r.text.as_deref(), Some("Hello! How can I assist you today?"));
    assert_eq!(r.stop_reason.as_deref(), Some("stop"));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(2006),
            output_tokens: Some(300),
            cached_input_tokens: Some(1920),
            reasoning_tokens: Some(192),
        }
    );
}

#[test]
fn openai_responses_response() {
    let r = parse_response(
        &ep("openai", "/v1/responses"),
        200,
        include_bytes!("../../tests/fixtures/openai_responses.json"),
    );
    assert_eq!(r.model.as_deref(), Some("o3-2025-04-16"));
    assert_eq!(r.text.as_deref(), Some("The capital of France is Paris."));
    assert_eq!(r.stop_reason.as_deref(), Some("completed"));
    assert_eq!(r.usage.input_tokens, Some(328));
    assert_eq!(r.usage.cached_input_tokens, Some(128));
    assert_eq!(r.usage.output_tokens, Some(1052));
    assert_eq!(r.usage.reasoning_tokens, Some(1024));
}

#[test]
fn openai_embeddings_response() {
    let r = parse_response(
        &ep("openai", "/v1/embeddings"),
        200,
        include_bytes!("../../tests/fixtures/openai_embeddings.json"),
    );
    assert_eq!(r.model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(r.text, None);
    assert_eq!(r.usage.input_tokens, Some(8));
    assert_eq!(r.usage.output_tokens, None);
}

#[test]
fn anthropic_response_normalises_cache_usage() {
    let r = parse_response(
        &ep("anthropic", "/v1/messages"),
        200,
        include_bytes!("../../tests/fixtures/anthropic_messages.json"),
    );
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(
        r.text.as_deref(),
        Some("I'll check the weather.\n[tool_call get_weather: {\"location\":\"San Francisco, CA\"}]")
    );
    assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
    // 50 uncached + 2000 cache reads + 1000 cache writes.
    assert_eq!(r.usage.input_tokens, Some(3050));
    assert_eq!(r.usage.cached_input_tokens, Some(2000));
    assert_eq!(r.cache_creation_input_tokens, Some(1000));
    assert_eq!(r.usage.output_tokens, Some(120));
}

#[test]
fn gemini_response_skips_thoughts_and_counts_them_as_output() {
    let r = parse_response(
        &ep("gemini", "/v1beta/models/gemini-2.5-flash:generateContent"),
        200,
        include_bytes!("../../tests/fixtures/gemini_generate.json"),
    );
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(r.text.as_deref(), Some("AI learns patterns from data."));
    assert_eq!(r.stop_reason.as_deref(), Some("STOP"));
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: Some(1500),
            output_tokens: Some(240),
            cached_input_tokens: Some(1024),
            reasoning_tokens: Some(200),
        }
    );
}

#[test]
fn gemini_blocked_prompt() {
    let body = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#;
    let r = parse_response(&ep("gemini", "/v1beta/models/gemini-2.5-pro:generateContent"), 200, body);
    assert_eq!(r.stop_reason.as_deref(), Some("blocked: SAFETY"));
    assert_eq!(r.usage.input_tokens, Some(7));
    assert_eq!(r.text, None);
}

#[test]
fn provider_error_bodies() {
    let cases: [(&str, &str, u16, &[u8], &str); 4] = [
        (
            "openai",
            "/v1/chat/completions",
            429,
            br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            "requests: Rate limit reached",
        ),
        (
            "anthropic",
            "/v1/messages",
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
            "overloaded_error: Overloaded",
        ),
        (
            "gemini",
            "/v1beta/models/x:generateContent",
            400,
            br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#,
            "INVALID_ARGUMENT: API key not valid.",
        ),
        (
            "openai",
            "/v1/responses",
            502,
            b"<html>Bad Gateway</html>",
            "upstream returned HTTP 502: <html>Bad Gateway</html>",
        ),
    ];
    for (provider, path, status, body, want) in cases {
        let r = parse_response(&ep(provider, path), status, body);
        assert_eq!(r.error.as_deref(), Some(want), "{provider} {path}");
    }
    let r = parse_response(&ep("openai", "/v1/chat/completions"), 500, b"");
    assert_eq!(r.error.as_deref(), Some("upstream returned HTTP 500"));
    let r = parse_response(&ep("openai", "/v1/chat/completions"), 503, b"{}");
    assert_eq!(r.error.as_deref(), Some("upstream returned HTTP 503"));
}

#[test]
fn malformed_response_bodies() {
    let chat = ep("openai", "/v1/chat/completions");
    let e = parse_response(&chat, 200, b"{\"choices\": [").error.unwrap();
    assert!(e.starts_with("response body is not valid JSON: "), "{e}");
    assert_eq!(
        parse_response(&chat, 200, b"[]").error.as_deref(),
        Some("response body is not a JSON object (found an array)")
    );
    assert_eq!(
        parse_response(&chat, 200, b"\"x\"").error.as_deref(),
        Some("response body is not a JSON object (found a string)")
    );
    assert_eq!(parse_response(&chat, 200, b" ").error.as_deref(), Some("response body is empty"));
    // Shape drift is not an error: fields just stay empty.
    let r = parse_response(&chat, 200, br#"{"choices": "nope", "usage": {"prompt_tokens": -3}}"#);
    assert_eq!(r.error, None);
    assert_eq!(r.text, None);
    assert_eq!(r.usage.input_tokens, None);
}

#[test]
fn gemini_array_body_via_parse_response() {
    let r = parse_response(
        &ep("gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
        200,
        include_bytes!("../../tests/fixtures/gemini_stream_array.json"),
    );
    assert_eq!(r.text.as_deref(), Some("The \"sky\" {is} [blue]."));
    assert_eq!(r.usage.output_tokens, Some(55));
}

#[test]
fn unknown_endpoint_response_is_empty() {
    let r = parse_response(&classify("openai", "GET", "/v1/models"), 500, b"garbage");
    assert_eq!(r.error, None);
    assert_eq!(r.text, None);
    assert_eq!(r.model, None);
}

#[test]
fn deepseek_cache_hits_count_as_cached() {
    let body = br#"{"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#;
    let r = parse_response(&ep("deepseek", "/chat/completions"), 200, body);
    assert_eq!(r.usage.cached_input_tokens, Some(64));
}
