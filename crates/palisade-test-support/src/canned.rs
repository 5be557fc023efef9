//! Canned provider bodies for the fake upstream, shaped like the real APIs
//! (ids, model, usage with cached and reasoning tokens), and the numbers in
//! them so tests can check records field by field.
//!
//! Every format reports the same usage once normalised the way
//! `palisade-providers` does it (input includes cached; output includes
//! reasoning): [`INPUT_TOKENS`], [`CACHED_INPUT_TOKENS`], [`OUTPUT_TOKENS`]
//! and [`REASONING_TOKENS`] (Anthropic does not break reasoning out).
//! Test-only: never used by product code.

use serde_json::{json, Value};

/// The assistant text every fake response carries, streamed in these pieces.
pub const TEXT_PIECES: &[&str] = &["Hello", " from", " the", " fake", " provider."];
pub const TEXT: &str = "Hello from the fake provider.";
pub const INPUT_TOKENS: u64 = 42;
pub const CACHED_INPUT_TOKENS: u64 = 10;
pub const OUTPUT_TOKENS: u64 = 12;
pub const REASONING_TOKENS: u64 = 4;

/// Which API a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ChatCompletions,
    Responses,
    Embeddings,
    Messages,
    /// `/v1beta/models/{model}:generateContent` or `:streamGenerateContent`.
    Gemini { model: String, stream: bool, sse: bool },
}

impl Route {
    /// Route a POST by path (query included); `None` for anything else.
    pub fn from_path(path_and_query: &str) -> Option<Route> {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let path = path.trim_end_matches('/');
        if let Some((before, action)) = path.rsplit_once(':') {
            let model = before.rsplit('/').next().unwrap_or("").to_string();
            let sse = query.split('&').any(|kv| kv == "alt=sse");
            return match action {
                "generateContent" => Some(Route::Gemini { model, stream: false, sse }),
                "streamGenerateContent" => Some(Route::Gemini { model, stream: true, sse }),
                _ => None,
            };
        }
        if path.ends_with("/chat/completions") {
            Some(Route::ChatCompletions)
        } else if path.ends_with("/responses") {
            Some(Route::Responses)
        } else if path.ends_with("/embeddings") {
            Some(Route::Embeddings)
        } else if path.ends_with("/v1/messages") {
            Some(Route::Messages)
        } else {
            None
        }
    }

    pub fn default_model(&self) -> String {
        match self {
            Route::ChatCompletions => "gpt-4o-mini-2024-07-18".into(),
            Route::Responses => "gpt-4.1-2025-04-14".into(),
            Route::Embeddings => "text-embedding-3-small".into(),
            Route::Messages => "claude-sonnet-4-5-20250929".into(),
            Route::Gemini { model, .. } => model.clone(),
        }
    }
}

fn openai_chat_usage() -> Value {
    json!({
        "prompt_tokens": INPUT_TOKENS,
        "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_INPUT_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn responses_usage() -> Value {
    json!({
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": CACHED_INPUT_TOKENS},
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS
    })
}

fn gemini_usage() -> Value {
    json!({
        "promptTokenCount": INPUT_TOKENS,
        "candidatesTokenCount": OUTPUT_TOKENS - REASONING_TOKENS,
        "thoughtsTokenCount": REASONING_TOKENS,
        "cachedContentTokenCount": CACHED_INPUT_TOKENS,
        "totalTokenCount": INPUT_TOKENS + OUTPUT_TOKENS
    })
}

fn responses_object(model: &str, text: &str, status: &str, usage: Value) -> Value {
    json!({
        "id": "resp_fake_0001",
        "object": "response",
        "created_at": 1_750_000_000,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": model,
        "output": if text.is_empty() && status == "in_progress" { json!([]) } else { json!([{
            "type": "message", "id": "msg_fake_0001", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]
        }]) },
        "usage": usage
    })
}

/// A complete non-streaming response carrying `text`.
pub fn response_body(route: &Route, model: &str, text: &str) -> Value {
    match route {
        Route::ChatCompletions => json!({
            "id": "chatcmpl-fake0001",
            "object": "chat.completion",
            "created": 1_750_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": openai_chat_usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_fake"
        }),
        Route::Responses => responses_object(model, text, "completed", responses_usage()),
        Route::Embeddings => json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292, 0.015797347]}],
            "model": model,
            "usage": {"prompt_tokens": INPUT_TOKENS, "total_tokens": INPUT_TOKENS}
        }),
        Route::Messages => json!({
            "id": "msg_fake_0001",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": INPUT_TOKENS - CACHED_INPUT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": CACHED_INPUT_TOKENS,
                "output_tokens": OUTPUT_TOKENS
            }
        }),
        Route::Gemini { .. } => json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": gemini_usage(),
            "modelVersion": model,
            "responseId": "fake-response-0001"
        }),
    }
}

fn sse(event: Option<&str>, data: &Value) -> Vec<u8> {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n").into_bytes(),
        None => format!("data: {data}\n\n").into_bytes(),
    }
}

/// The chunks of a streamed response, each one write on the wire: SSE
/// events, or for Gemini without `alt=sse` the pieces of a JSON array.
/// `include_usage` mirrors OpenAI's `stream_options.include_usage`.
pub fn stream_chunks(route: &Route, model: &str, include_usage: bool) -> Vec<Vec<u8>> {
    stream_chunks_with(route, model, include_usage, TEXT_PIECES)
}

/// As [`stream_chunks`], streaming `pieces` as the assistant text (one
/// text event per piece).
pub fn stream_chunks_with(route: &Route, model: &str, include_usage: bool, pieces: &[&str]) -> Vec<Vec<u8>> {
    let text: String = pieces.concat();
    let text = text.as_str();
    let mut out = Vec::new();
    match route {
        Route::ChatCompletions => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-fake0001", "object": "chat.completion.chunk", "created": 1_750_000_000,
                    "model": model, "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            };
            out.push(sse(None, &chunk(json!({"role": "assistant", "content": ""}), Value::Null)));
            for p in pieces {
                out.push(sse(None, &chunk(json!({"content": p}), Value::Null)));
            }
            out.push(sse(None, &chunk(json!({}), json!("stop"))));
            if include_usage {
                out.push(sse(
                    None,
                    &json!({"id": "chatcmpl-fake0001", "object": "chat.completion.chunk", "created": 1_750_000_000,
                        "model": model, "choices": [], "usage": openai_chat_usage()}),
                ));
            }
            out.push(b"data: [DONE]\n\n".to_vec());
        }
        Route::Responses => {
            let mut seq = 0u64;
            let mut ev = |name: &str, mut data: Value| {
                data["type"] = json!(name);
                data["sequence_number"] = json!(seq);
                seq += 1;
                sse(Some(name), &data)
            };
            out.push(ev("response.created", json!({"response": responses_object(model, "", "in_progress", Value::Null)})));
            out.push(ev("response.in_progress", json!({"response": responses_object(model, "", "in_progress", Value::Null)})));
            out.push(ev("response.output_item.added", json!({"output_index": 0, "item": {"id": "msg_fake_0001",
                "type": "message", "status": "in_progress", "role": "assistant", "content": []}})));
            out.push(ev("response.content_part.added", json!({"item_id": "msg_fake_0001", "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
            for p in pieces {
                out.push(ev("response.output_text.delta", json!({"item_id": "msg_fake_0001", "output_index": 0,
                    "content_index": 0, "delta": p})));
            }
            out.push(ev("response.output_text.done", json!({"item_id": "msg_fake_0001", "output_index": 0,
                "content_index": 0, "text": text})));
            out.push(ev("response.completed", json!({"response": responses_object(model, text, "completed", responses_usage())})));
        }
        Route::Embeddings => out.push(response_body(route, model, "").to_string().into_bytes()),
        Route::Messages => {
            out.push(sse(Some("message_start"), &json!({"type": "message_start", "message": {
                "id": "msg_fake_0001", "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": INPUT_TOKENS - CACHED_INPUT_TOKENS, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": CACHED_INPUT_TOKENS, "output_tokens": 1}}})));
            out.push(sse(Some("content_block_start"), &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}})));
            out.push(sse(Some("ping"), &json!({"type": "ping"})));
            for p in pieces {
                out.push(sse(Some("content_block_delta"), &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p}})));
            }
            out.push(sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})));
            out.push(sse(Some("message_delta"), &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": OUTPUT_TOKENS}})));
            out.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
        }
        Route::Gemini { sse: alt_sse, .. } => {
            let n = pieces.len();
            let chunks: Vec<Value> = pieces
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let last = i + 1 == n;
                    let mut cand = json!({"content": {"parts": [{"text": p}], "role": "model"}, "index": 0});
                    let usage = if last {
                        cand["finishReason"] = json!("STOP");
                        gemini_usage()
                    } else {
                        json!({"promptTokenCount": INPUT_TOKENS, "totalTokenCount": INPUT_TOKENS})
                    };
                    json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": model,
                        "responseId": "fake-response-0001"})
                })
                .collect();
            for (i, c) in chunks.iter().enumerate() {
                if *alt_sse {
                    out.push(format!("data: {c}\r\n\r\n").into_bytes());
                } else {
                    let lead = if i == 0 { "[" } else { ",\r\n" };
                    out.push(format!("{lead}{c}").into_bytes());
                }
            }
            if !*alt_sse {
                out.push(b"]".to_vec());
            }
        }
    }
    out
}

/// An error body in the provider's own format for `status`.
pub fn error_body(route: Option<&Route>, status: u16, message: &str) -> Value {
    match route {
        Some(Route::Messages) => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake_0001"})
        }
        Some(Route::Gemini { .. }) => {
            let status_name = match status {
                400 => "INVALID_ARGUMENT",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            json!({"error": {"code": status, "message": message, "status": status_name}})
        }
        _ => {
            let kind = match status {
                400..=499 => "invalid_request_error",
                _ => "server_error",
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    }
}

/// The fake MCP server's answer to one JSON-RPC request: `tools/call`
/// echoes the tool's arguments (as JSON text) in a text content item, or
/// `result_text` when given; `initialize` and `tools/list` get minimal
/// results; anything else is "method not found". `None` for a notification.
pub fn mcp_response(request: &Value, result_text: Option<&str>) -> Option<Value> {
    let id = request.get("id")?.clone();
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let result = match method {
        "initialize" => json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake-mcp", "version": "1.0.0"}}),
        "tools/list" => json!({"tools": [{"name": "echo", "description": "Echo the arguments",
            "inputSchema": {"type": "object"}}]}),
        "tools/call" => {
            let text = match result_text {
                Some(t) => t.to_string(),
                None => request.pointer("/params/arguments").cloned().unwrap_or(Value::Null).to_string(),
            };
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        _ => {
            return Some(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("Method not found: {method}")}}))
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}
