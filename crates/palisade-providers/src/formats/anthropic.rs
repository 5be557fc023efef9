//! Anthropic Messages format: requests, responses, SSE events and usage.
//!
//! Usage semantics: Anthropic's `input_tokens` EXCLUDES cache reads and cache
//! writes, which are reported separately. We normalise to the crate's
//! meaning: `input_tokens = input + cache_read + cache_creation`,
//! `cached_input_tokens = cache_read`, and cache writes are carried in
//! `ParsedResponse::cache_creation_input_tokens` for pricing. Never report
//! Anthropic's raw `input_tokens` as the total.

use super::{content_text, push_line};
use crate::json::{arr_at, copy_count, copy_scalars, error_message, str_at, u64_at};
use crate::request::ParsedRequest;
use crate::stream::Acc;
use palisade_core::Usage;
use serde_json::{Map, Value};

const PARAMS: &[&str] = &["max_tokens", "temperature", "top_p", "top_k", "service_tier"];

pub(crate) fn request(v: &Value, out: &mut ParsedRequest) {
    let mut lines = Vec::new();
    if let Some(s) = v.get("system") {
        push_line(&mut lines, "system", &content_text(s));
    }
    let messages = arr_at(v, &["messages"]);
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("unknown");
        push_line(&mut lines, role, &m.get("content").map(content_text).unwrap_or_default());
    }
    out.prompt = Some(lines.join("\n"));
    let mut p = Map::new();
    copy_scalars(v, PARAMS, &mut p);
    p.insert("messages".into(), Value::from(messages.len()));
    copy_count(v, "tools", "tools", &mut p);
    copy_count(v, "stop_sequences", "stop_sequences", &mut p);
    if let Some(t) = str_at(v, &["tool_choice", "type"]) {
        p.insert("tool_choice".into(), Value::from(t));
    }
    if let Some(t) = str_at(v, &["thinking", "type"]) {
        p.insert("thinking".into(), Value::from(t));
    }
    if let Some(b) = u64_at(v, &["thinking", "budget_tokens"]) {
        p.insert("thinking_budget_tokens".into(), Value::from(b));
    }
    out.params = Value::Object(p);
}

/// Raw Anthropic counts; later stream events overwrite the fields they carry.
#[derive(Default, Clone, Copy)]
pub(crate) struct RawUsage {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    output: Option<u64>,
}

impl RawUsage {
    pub(crate) fn merge(&mut self, u: &Value) {
        if let Some(n) = u64_at(u, &["input_tokens"]) {
            self.input = Some(n);
        }
        if let Some(n) = u64_at(u, &["cache_read_input_tokens"]) {
            self.cache_read = Some(n);
        }
        if let Some(n) = u64_at(u, &["cache_creation_input_tokens"]) {
            self.cache_creation = Some(n);
        }
        if let Some(n) = u64_at(u, &["output_tokens"]) {
            self.output = Some(n);
        }
    }

    pub(crate) fn apply(&self, acc: &mut Acc) {
        let any_input = self.input.is_some() || self.cache_read.is_some() || self.cache_creation.is_some();
        acc.usage = Usage {
            input_tokens: any_input.then(|| {
                self.input
                    .unwrap_or(0)
                    .saturating_add(self.cache_read.unwrap_or(0))
                    .saturating_add(self.cache_creation.unwrap_or(0))
            }),
            output_tokens: self.output,
            cached_input_tokens: self.cache_read,
            // Anthropic bills thinking as output and does not break it out.
            reasoning_tokens: None,
        };
        acc.cache_creation = self.cache_creation;
    }
}

pub(crate) fn response(v: &Value, acc: &mut Acc) {
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        acc.model = Some(m.to_string());
    }
    if let Some(c) = v.get("content") {
        let t = content_text(c);
        if !t.is_empty() {
            acc.text.push(&t);
        }
    }
    acc.stop_reason = str_at(v, &["stop_reason"]).map(str::to_string);
    if let Some(u) = v.get("usage") {
        let mut raw = RawUsage::default();
        raw.merge(u);
        raw.apply(acc);
    }
}

/// Messages SSE: `message_start`, `content_block_start`,
/// `content_block_delta` (text/input_json/thinking), `content_block_stop`,
/// `message_delta` (stop reason, cumulative usage), `message_stop`, `ping`,
/// `error`.
#[derive(Default)]
pub(crate) struct MessagesStream {
    usage: RawUsage,
    in_tool: bool,
}

impl MessagesStream {
    pub(crate) fn on_data(&mut self, event: Option<&str>, v: &Value, acc: &mut Acc) {
        let kind = v.get("type").and_then(Value::as_str).or(event).unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(m) = str_at(v, &["message", "model"]) {
                    acc.model = Some(m.to_string());
                }
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage.merge(u);
                    self.usage.apply(acc);
                }
            }
            "content_block_start" => {
                let block = v.get("content_block");
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("tool_use") | Some("server_tool_use") => {
                        let name = block.and_then(|b| b.get("name")).and_then(Value::as_str).unwrap_or("");
                        if !acc.text.is_empty() {
                            acc.text.push("\n");
                        }
                        acc.text.push(&format!("[tool_call {name}: "));
                        self.in_tool = true;
                    }
                    Some("text") => {
                        if !acc.text.is_empty() {
                            acc.text.push("\n");
                        }
                        if let Some(t) = block.and_then(|b| b.get("text")).and_then(Value::as_str) {
                            acc.text.push(t);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => match str_at(v, &["delta", "type"]) {
                Some("text_delta") => {
                    if let Some(t) = str_at(v, &["delta", "text"]) {
                        acc.text.push(t);
                    }
                }
                Some("input_json_delta") if self.in_tool => {
                    if let Some(t) = str_at(v, &["delta", "partial_json"]) {
                        acc.text.push(t);
                    }
                }
                _ => {}
            },
            "content_block_stop" => self.close_tool(acc),
            "message_delta" => {
                if let Some(r) = str_at(v, &["delta", "stop_reason"]) {
                    acc.stop_reason = Some(r.to_string());
                }
                if let Some(u) = v.get("usage") {
                    self.usage.merge(u);
                    self.usage.apply(acc);
                }
            }
            "message_stop" => {
                self.close_tool(acc);
                acc.complete = true;
            }
            "error" => {
                acc.error = Some(error_message(v).unwrap_or_else(|| "stream error event".into()));
            }
            _ => {}
        }
    }

    fn close_tool(&mut self, acc: &mut Acc) {
        if self.in_tool {
            acc.text.push("]");
            self.in_tool = false;
        }
    }

    pub(crate) fn finish(mut self, acc: &mut Acc) {
        self.close_tool(acc);
    }
}
