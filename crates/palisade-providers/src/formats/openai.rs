//! OpenAI wire format (and every OpenAI-compatible provider): chat
//! completions, responses and embeddings — requests, responses, SSE events
//! and usage.
//!
//! Usage semantics: OpenAI's `prompt_tokens`/`input_tokens` already include
//! cached tokens and `completion_tokens`/`output_tokens` already include
//! reasoning tokens, which is exactly the crate's normalised meaning, so
//! counts are copied as they are. Never add the subsets on top.

use super::{content_text, push_line, tool_call_marker};
use crate::json::{arr_at, copy_count, copy_scalars, error_message, str_at, u64_at, TextBuf};
use crate::request::ParsedRequest;
use crate::stream::Acc;
use palisade_core::Usage;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

const CHAT_PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "reasoning_effort",
    "tool_choice",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "service_tier",
    "store",
    "verbosity",
];

const RESPONSES_PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "max_output_tokens",
    "tool_choice",
    "parallel_tool_calls",
    "store",
    "truncation",
    "service_tier",
    "background",
    "previous_response_id",
];

// === requests ===

pub(crate) fn chat_request(v: &Value, out: &mut ParsedRequest) {
    let mut lines = Vec::new();
    let messages = arr_at(v, &["messages"]);
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("unknown");
        let mut text = m.get("content").map(content_text).unwrap_or_default();
        if let Some(r) = m.get("refusal").and_then(Value::as_str) {
            append(&mut text, &format!("[refusal] {r}"));
        }
        for call in m.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let name = str_at(call, &["function", "name"]).unwrap_or("");
            append(&mut text, &tool_call_marker(name, call.pointer("/function/arguments")));
        }
        push_line(&mut lines, role, &text);
    }
    out.prompt = Some(lines.join("\n"));
    let mut p = Map::new();
    copy_scalars(v, CHAT_PARAMS, &mut p);
    p.insert("messages".into(), Value::from(messages.len()));
    copy_count(v, "tools", "tools", &mut p);
    if let Some(t) = str_at(v, &["response_format", "type"]) {
        p.insert("response_format".into(), Value::from(t));
    }
    if let Some(stop) = v.get("stop") {
        let n = match stop {
            Value::String(_) => 1,
            Value::Array(a) => a.len(),
            _ => 0,
        };
        p.insert("stop_sequences".into(), Value::from(n));
    }
    if let Some(b) = v.pointer("/stream_options/include_usage").and_then(Value::as_bool) {
        p.insert("stream_include_usage".into(), Value::from(b));
    }
    out.params = Value::Object(p);
}

pub(crate) fn responses_request(v: &Value, out: &mut ParsedRequest) {
    let mut lines = Vec::new();
    if let Some(i) = v.get("instructions").and_then(Value::as_str) {
        push_line(&mut lines, "system", i);
    }
    let mut items = 0usize;
    match v.get("input") {
        Some(Value::String(s)) => {
            items = 1;
            push_line(&mut lines, "user", s);
        }
        Some(Value::Array(a)) => {
            items = a.len();
            for item in a {
                render_responses_item(item, &mut lines);
            }
        }
        _ => {}
    }
    out.prompt = Some(lines.join("\n"));
    let mut p = Map::new();
    copy_scalars(v, RESPONSES_PARAMS, &mut p);
    p.insert("input_items".into(), Value::from(items));
    copy_count(v, "tools", "tools", &mut p);
    if let Some(e) = str_at(v, &["reasoning", "effort"]) {
        p.insert("reasoning_effort".into(), Value::from(e));
    }
    if let Some(t) = str_at(v, &["text", "format", "type"]) {
        p.insert("text_format".into(), Value::from(t));
    }
    out.params = Value::Object(p);
}

fn render_responses_item(item: &Value, lines: &mut Vec<String>) {
    if let Value::String(s) = item {
        push_line(lines, "user", s);
        return;
    }
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
            push_line(lines, role, &item.get("content").map(content_text).unwrap_or_default());
        }
        "function_call" | "custom_tool_call" => {
            let name = item.get("name").and_then(Value::as_str).unwrap_or("");
            let args = item.get("arguments").or_else(|| item.get("input"));
            push_line(lines, "assistant", &tool_call_marker(name, args));
        }
        "function_call_output" | "custom_tool_call_output" => {
            let text = item.get("output").map(content_text).unwrap_or_default();
            push_line(lines, "tool", &text);
        }
        _ => {}
    }
}

pub(crate) fn embeddings_request(v: &Value, out: &mut ParsedRequest) {
    let mut p = Map::new();
    let (text, n) = match v.get("input") {
        Some(Value::String(s)) => (s.clone(), 1),
        Some(Value::Array(a)) => {
            let parts: Vec<String> = a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Array(_) => "[tokens]".to_string(),
                    _ => String::new(),
                })
                .filter(|s| !s.is_empty())
                .collect();
            // An array of integers is one pre-tokenised input.
            if a.iter().all(Value::is_number) && !a.is_empty() {
                ("[tokens]".to_string(), 1)
            } else {
                (parts.join("\n"), a.len())
            }
        }
        _ => (String::new(), 0),
    };
    out.prompt = Some(text);
    p.insert("inputs".into(), Value::from(n));
    copy_scalars(v, &["encoding_format", "dimensions"], &mut p);
    out.params = Value::Object(p);
}

fn append(text: &mut String, more: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(more);
}

// === usage ===

pub(crate) fn chat_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: u64_at(u, &["prompt_tokens"]),
        output_tokens: u64_at(u, &["completion_tokens"]),
        cached_input_tokens: u64_at(u, &["prompt_tokens_details", "cached_tokens"])
            // DeepSeek reports cache hits at the top level.
            .or_else(|| u64_at(u, &["prompt_cache_hit_tokens"])),
        reasoning_tokens: u64_at(u, &["completion_tokens_details", "reasoning_tokens"]),
    }
}

pub(crate) fn responses_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: u64_at(u, &["input_tokens"]),
        output_tokens: u64_at(u, &["output_tokens"]),
        cached_input_tokens: u64_at(u, &["input_tokens_details", "cached_tokens"]),
        reasoning_tokens: u64_at(u, &["output_tokens_details", "reasoning_tokens"]),
    }
}

// === non-streaming responses ===

pub(crate) fn chat_response(v: &Value, acc: &mut Acc) {
    set_model(v, acc);
    let mut texts = Vec::new();
    for choice in arr_at(v, &["choices"]) {
        let mut text = String::new();
        if let Some(m) = choice.get("message") {
            text = m.get("content").map(content_text).unwrap_or_default();
            if let Some(r) = m.get("refusal").and_then(Value::as_str) {
                append(&mut text, &format!("[refusal] {r}"));
            }
            for call in m.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
                let name = str_at(call, &["function", "name"]).unwrap_or("");
                append(&mut text, &tool_call_marker(name, call.pointer("/function/arguments")));
            }
        } else if let Some(t) = choice.get("text").and_then(Value::as_str) {
            text = t.to_string();
        }
        texts.push(text);
        if acc.stop_reason.is_none() {
            acc.stop_reason = choice.get("finish_reason").and_then(Value::as_str).map(str::to_string);
        }
    }
    if !texts.is_empty() {
        acc.text.push(&texts.join("\n"));
    }
    if let Some(u) = v.get("usage") {
        acc.usage = chat_usage(u);
    }
}

pub(crate) fn responses_response(v: &Value, acc: &mut Acc) {
    set_model(v, acc);
    let text = responses_output_text(v);
    if !text.is_empty() || acc.text.is_empty() {
        acc.text.push(&text);
    }
    acc.stop_reason = responses_stop(v).or(acc.stop_reason.take());
    if let Some(u) = v.get("usage") {
        acc.usage = responses_usage(u);
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        acc.error = error_message(&serde_json::json!({ "error": e }));
    }
}

fn responses_output_text(v: &Value) -> String {
    let mut parts = Vec::new();
    for item in arr_at(v, &["output"]) {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let t = item.get("content").map(content_text).unwrap_or_default();
                if !t.is_empty() {
                    parts.push(t);
                }
            }
            Some("function_call") | Some("custom_tool_call") => {
                let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                parts.push(tool_call_marker(name, item.get("arguments").or_else(|| item.get("input"))));
            }
            _ => {}
        }
    }
    parts.join("\n")
}

/// `incomplete_details.reason` when incomplete (e.g. `max_output_tokens`), else `status`.
fn responses_stop(v: &Value) -> Option<String> {
    str_at(v, &["incomplete_details", "reason"])
        .or_else(|| str_at(v, &["status"]))
        .map(str::to_string)
}

pub(crate) fn embeddings_response(v: &Value, acc: &mut Acc) {
    set_model(v, acc);
    if let Some(u) = v.get("usage") {
        acc.usage.input_tokens = u64_at(u, &["prompt_tokens"]).or_else(|| u64_at(u, &["total_tokens"]));
    }
}

fn set_model(v: &Value, acc: &mut Acc) {
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        acc.model = Some(m.to_string());
    }
}

// === streams ===

/// Chat completions SSE: `data: {chunk}` with `choices[].delta`, a final
/// usage chunk with empty `choices`, then `data: [DONE]`.
#[derive(Default)]
pub(crate) struct ChatStream {
    /// Choices with index > 0 (n > 1), capped in number.
    others: BTreeMap<u64, TextBuf>,
    /// Open tool-call marker per choice: the tool call index being streamed.
    open_tool: BTreeMap<u64, u64>,
}

const MAX_CHOICES: u64 = 16;

impl ChatStream {
    pub(crate) fn on_data(&mut self, v: &Value, acc: &mut Acc) {
        if let Some(e) = error_message(v) {
            acc.error = Some(e);
            return;
        }
        set_model(v, acc);
        for choice in arr_at(v, &["choices"]) {
            let idx = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            if idx >= MAX_CHOICES {
                continue;
            }
            if let Some(delta) = choice.get("delta") {
                if let Some(t) = delta.get("content").and_then(Value::as_str) {
                    self.close_tool(idx, acc);
                    self.buf(idx, acc).push(t);
                }
                if let Some(t) = delta.get("refusal").and_then(Value::as_str) {
                    self.buf(idx, acc).push(t);
                }
                for call in delta.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
                    let call_idx = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(name) = str_at(call, &["function", "name"]) {
                        self.close_tool(idx, acc);
                        let buf = self.buf(idx, acc);
                        if !buf.is_empty() {
                            buf.push("\n");
                        }
                        buf.push(&format!("[tool_call {name}: "));
                        self.open_tool.insert(idx, call_idx);
                    }
                    if let Some(args) = str_at(call, &["function", "arguments"]) {
                        if self.open_tool.contains_key(&idx) {
                            self.buf(idx, acc).push(args);
                        }
                    }
                }
            }
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                self.close_tool(idx, acc);
                if idx == 0 || acc.stop_reason.is_none() {
                    acc.stop_reason = Some(r.to_string());
                }
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            acc.usage = chat_usage(u);
        }
    }

    fn buf<'a>(&'a mut self, idx: u64, acc: &'a mut Acc) -> &'a mut TextBuf {
        if idx == 0 {
            &mut acc.text
        } else {
            let limit = acc.text_limit;
            self.others.entry(idx).or_insert_with(|| TextBuf::new(limit))
        }
    }

    fn close_tool(&mut self, idx: u64, acc: &mut Acc) {
        if self.open_tool.remove(&idx).is_some() {
            self.buf(idx, acc).push("]");
        }
    }

    pub(crate) fn finish(mut self, acc: &mut Acc) {
        let open: Vec<u64> = self.open_tool.keys().copied().collect();
        for idx in open {
            self.close_tool(idx, acc);
        }
        for (_, buf) in std::mem::take(&mut self.others) {
            if buf.truncated() {
                acc.text_truncated = true;
            }
            if let Some(t) = buf.into_option() {
                acc.text.push("\n");
                acc.text.push(&t);
            }
        }
    }
}

/// Responses API SSE: typed events (`response.output_text.delta`,
/// `response.completed` carrying the whole response, `response.incomplete`,
/// `response.failed`, `error`).
#[derive(Default)]
pub(crate) struct ResponsesStream;

impl ResponsesStream {
    pub(crate) fn on_data(&mut self, event: Option<&str>, v: &Value, acc: &mut Acc) {
        let kind = v.get("type").and_then(Value::as_str).or(event).unwrap_or("");
        match kind {
            "response.created" | "response.in_progress" => {
                if let Some(r) = v.get("response") {
                    set_model(r, acc);
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(d) = v.get("delta").and_then(Value::as_str) {
                    acc.text.push(d);
                }
            }
            "response.output_item.added" => {
                if let Some(item) = v.get("item") {
                    if item.get("type").and_then(Value::as_str) == Some("function_call") {
                        let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                        if !acc.text.is_empty() {
                            acc.text.push("\n");
                        }
                        acc.text.push(&tool_call_marker(name, None));
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(r) = v.get("response") {
                    set_model(r, acc);
                    if acc.text.is_empty() {
                        let t = responses_output_text(r);
                        if !t.is_empty() {
                            acc.text.push(&t);
                        }
                    }
                    acc.stop_reason = responses_stop(r).or(acc.stop_reason.take());
                    if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
                        acc.usage = responses_usage(u);
                    }
                    if let Some(e) = r.get("error").filter(|e| !e.is_null()) {
                        acc.error = error_message(&serde_json::json!({ "error": e }));
                    }
                }
                acc.complete = true;
            }
            "error" => {
                acc.error = Some(error_message(v).unwrap_or_else(|| {
                    match (str_at(v, &["code"]), str_at(v, &["message"])) {
                        (Some(c), Some(m)) => format!("{c}: {m}"),
                        (None, Some(m)) => m.to_string(),
                        _ => "stream error event".to_string(),
                    }
                }));
            }
            _ => {}
        }
    }
}
