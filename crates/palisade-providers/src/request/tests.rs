use super::*;
use crate::classify;
use serde_json::json;

fn parse(provider: &str, path: &str, body: serde_json::Value) -> ParsedRequest {
    let ep = classify(provider, "POST", path);
    parse_request(&ep, body.to_string().as_bytes())
}

#[test]
fn openai_chat_request() {
    let r = parse(
        "openai",
        "/v1/chat/completions",
        json!({
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2,
            "max_completion_tokens": 512,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "describe", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
            ],
            "tools": [{"type": "function", "function": {"name": "describe"}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "secret-schema"}}
        }),
    );
    assert_eq!(r.error, None);
    assert_eq!(r.model.as_deref(), Some("gpt-4o"));
    assert!(r.stream);
    assert_eq!(
        r.prompt.as_deref(),
        Some(
            "system: You are terse.\nuser: What is in this image?\n[image]\nassistant: [tool_call describe: {\"x\":1}]\ntool: a cat"
        )
    );
    assert_eq!(r.params["temperature"], json!(0.2));
    assert_eq!(r.params["max_completion_tokens"], json!(512));
    assert_eq!(r.params["messages"], json!(4));
    assert_eq!(r.params["tools"], json!(1));
    assert_eq!(r.params["response_format"], json!("json_schema"));
    assert_eq!(r.params["stream_include_usage"], json!(true));
    // No content in params.
    assert!(!r.params.to_string().contains("terse"));
}

#[test]
fn openai_responses_request() {
    let r = parse(
        "openai",
        "/v1/responses",
        json!({
            "model": "o3",
            "instructions": "Be brief.",
            "reasoning": {"effort": "high"},
            "max_output_tokens": 100,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "data:x"}]},
                {"type": "function_call", "name": "ls", "arguments": "{}", "call_id": "c1"},
                {"type": "function_call_output", "call_id": "c1", "output": "README.md"},
                {"type": "reasoning", "summary": []}
            ]
        }),
    );
    assert_eq!(
        r.prompt.as_deref(),
        Some("system: Be brief.\nuser: hi\n[image]\nassistant: [tool_call ls: {}]\ntool: README.md")
    );
    assert!(!r.stream);
    assert_eq!(r.params["reasoning_effort"], json!("high"));
    assert_eq!(r.params["input_items"], json!(4));

    let r = parse("openai", "/v1/responses", json!({"model": "gpt-5", "input": "hello", "stream": true}));
    assert_eq!(r.prompt.as_deref(), Some("user: hello"));
    assert!(r.stream);
}

#[test]
fn openai_embeddings_request() {
    let r = parse("openai", "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": ["a", "b"]}));
    assert_eq!(r.prompt.as_deref(), Some("a\nb"));
    assert_eq!(r.params["inputs"], json!(2));
    let r = parse("openai", "/v1/embeddings", json!({"model": "m", "input": [1, 2, 3]}));
    assert_eq!(r.prompt.as_deref(), Some("[tokens]"));
    let r = parse("openai", "/v1/embeddings", json!({"model": "m", "input": "x"}));
    assert_eq!(r.prompt.as_deref(), Some("x"));
}

#[test]
fn anthropic_request() {
    let r = parse(
        "anthropic",
        "/v1/messages",
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [
                {"role": "user", "content": "List files"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm"},
                    {"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"}]}
            ],
            "tools": [{"name": "bash"}, {"name": "edit"}]
        }),
    );
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
    assert!(r.stream);
    assert_eq!(
        r.prompt.as_deref(),
        Some("system: You are Claude Code.\nuser: List files\nassistant: [tool_call bash: {\"cmd\":\"ls\"}]\nuser: [tool_result] a.txt")
    );
    assert_eq!(r.params["max_tokens"], json!(1024));
    assert_eq!(r.params["tools"], json!(2));
    assert_eq!(r.params["thinking_budget_tokens"], json!(2048));
}

#[test]
fn gemini_request_model_and_stream_from_path() {
    let r = parse(
        "gemini",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json!({
            "systemInstruction": {"parts": [{"text": "Answer in French."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
                {"role": "model", "parts": [{"text": "thinking...", "thought": true}, {"text": "Bonjour"}]},
                {"parts": [{"functionResponse": {"name": "f", "response": {"ok": true}}}]}
            ],
            "generationConfig": {"temperature": 0.5, "maxOutputTokens": 200, "thinkingConfig": {"thinkingBudget": 0}}
        }),
    );
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
    assert!(r.stream);
    assert_eq!(
        r.prompt.as_deref(),
        Some("system: Answer in French.\nuser: Hello\n[inline_data]\nmodel: Bonjour\nuser: [tool_result f] {\"ok\":true}")
    );
    assert_eq!(r.params["temperature"], json!(0.5));
    assert_eq!(r.params["maxOutputTokens"], json!(200));
    assert_eq!(r.params["thinkingBudget"], json!(0));
    assert_eq!(r.params["contents"], json!(3));
}

#[test]
fn malformed_bodies_give_clear_errors_and_keep_path_facts() {
    let ep = classify("gemini", "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent");
    let r = parse_request(&ep, b"{\"contents\": [");
    let e = r.error.unwrap();
    assert!(e.starts_with("request body is not valid JSON: "), "{e}");
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-pro"));
    assert!(r.stream);

    let chat = classify("openai", "POST", "/v1/chat/completions");
    assert_eq!(parse_request(&chat, b"").error.as_deref(), Some("request body is empty"));
    assert_eq!(
        parse_request(&chat, b"[1,2]").error.as_deref(),
        Some("request body is not a JSON object (found an array)")
    );
    assert!(parse_request(&chat, &[0xff, 0xfe, 0x00]).error.unwrap().starts_with("request body is not valid JSON"));
    // Wrong types inside are ignored, not fatal.
    let r = parse_request(&chat, br#"{"model": 5, "stream": "yes", "messages": {"role": "user"}}"#);
    assert_eq!(r.error, None);
    assert_eq!(r.model, None);
    assert!(!r.stream);
    assert_eq!(r.prompt.as_deref(), Some(""));
}

#[test]
fn unknown_endpoint_is_empty_without_error() {
    let ep = classify("openai", "POST", "/v1/audio/transcriptions");
    let r = parse_request(&ep, b"not json at all");
    assert_eq!(r.error, None);
    assert_eq!(r.prompt, None);
    assert_eq!(r.model, None);
    assert!(r.params.is_null());
}

#[test]
fn debug_hides_prompt() {
    let r = parse("openai", "/v1/embeddings", json!({"model": "m", "input": "sk-live-123"}));
    let d = format!("{r:?}");
    assert!(!d.contains("sk-live-123"), "{d}");
    assert!(d.contains("prompt_bytes"));
}
