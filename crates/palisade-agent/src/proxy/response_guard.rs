//! Response guardrails on the forwarding path: a [`StreamGate`] watches a
//! streamed response (SSE, or a JSON array stream) frame by frame and stops
//! it at the first frame in which a blocking response rule matches, and the
//! helpers that pick a JSON-RPC (MCP) call out of a request body.
//!
//! How a stream is scanned:
//! - **SSE, AI providers**: each complete event's text deltas (OpenAI chat
//!   `delta.content` and tool arguments, Responses `*.delta`, Anthropic
//!   `content_block_delta`, Gemini `parts[].text`; every string for unknown
//!   formats) are appended to a [`LOOKBEHIND_BYTES`] window of recent text
//!   and the window is scanned, so a secret split across events is caught in
//!   the event that completes it. JSON escapes are decoded first.
//! - **SSE, MCP**: each complete event's `data:` payload is one JSON-RPC
//!   message, inspected with [`palisade_guard::Guard::inspect_mcp_response`].
//! - **Anything else** (Gemini's JSON array stream, an event larger than
//!   [`MAX_HELD_EVENT_BYTES`]): the decoded bytes themselves go through the
//!   window (escapes are not decoded there).
//!
//! When a rule can block (`hold`), only *complete* SSE events are forwarded,
//! so the event that completes a match is never sent; a client cannot act
//! on a partial event anyway. The stream then ends with one error event in
//! the provider's shape. A match longer than the window that spans events
//! is not caught on the way, only in the record at the end.
//!
//! This module must never put matched text into a finding, an error, a log
//! line or `Debug` output, and never keeps more than one held event plus the
//! window of a response.

use bytes::Bytes;
use palisade_core::{Finding, FindingLocation};
use palisade_guard::Guard;
use palisade_providers::{ApiFormat, BodyDecoder};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// Recent response text scanned together with each new delta.
pub const LOOKBEHIND_BYTES: usize = 4096;
/// Longest SSE event held back whole; past it the stream is scanned as raw bytes.
pub const MAX_HELD_EVENT_BYTES: usize = 1024 * 1024;
/// JSON-RPC error code for a call refused by policy (server-defined range).
pub const JSONRPC_POLICY_ERROR: i64 = -32001;

/// Who answers: an AI provider API or an MCP server.
#[derive(Clone, Debug, PartialEq)]
pub enum Speaker {
    Ai {
        format: ApiFormat,
        /// Endpoint name (`chat.completions`, `responses`, ...).
        endpoint: &'static str,
    },
    Mcp(McpCall),
}

/// A JSON-RPC 2.0 request seen on the way out (MCP over HTTP).
#[derive(Clone, Debug, PartialEq)]
pub struct McpCall {
    /// The request `id` (null for a batch or a notification), echoed in errors.
    pub id: Value,
    /// `tools/call`, `initialize`, ...; `None` when the body is not JSON-RPC.
    pub method: Option<String>,
}

impl McpCall {
    /// Read a JSON-RPC 2.0 request (or batch) from a plain body.
    pub fn parse(body: &[u8]) -> Option<McpCall> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let one = |m: &Value| {
            (m.get("jsonrpc").and_then(Value::as_str) == Some("2.0"))
                .then(|| m.get("method").and_then(Value::as_str).map(str::to_string))
                .flatten()
        };
        match &v {
            Value::Array(batch) => {
                let methods: Vec<String> = batch.iter().filter_map(one).collect();
                let method = methods
                    .iter()
                    .find(|m| *m == "tools/call")
                    .or(methods.first())
                    .cloned()?;
                Some(McpCall {
                    id: Value::Null,
                    method: Some(method),
                })
            }
            m => Some(McpCall {
                id: m.get("id").cloned().unwrap_or(Value::Null),
                method: Some(one(m)?),
            }),
        }
    }

    /// Whether a body sent to a host that is not an MCP host is an MCP tool
    /// call: JSON-RPC 2.0 with method `tools/call`. Cheap for other bodies.
    pub fn tool_call(body: &[u8]) -> Option<McpCall> {
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        if !has(b"tools/call") || !has(b"jsonrpc") {
            return None;
        }
        McpCall::parse(body).filter(|c| c.method.as_deref() == Some("tools/call"))
    }

    /// A JSON-RPC error answering this call.
    pub fn error_body(&self, message: &str) -> Value {
        serde_json::json!({
            "jsonrpc": "2.0",
            "error": {"code": JSONRPC_POLICY_ERROR, "message": message},
            "id": self.id,
        })
    }
}

/// What the client receives for a response held back by `rule`.
pub fn block_message(rule: &str) -> String {
    format!(
        "Blocked by Palisade: the response contained data that the policy rule '{rule}' does not allow to reach this device."
    )
}

/// The record's `error` for a response held back by `rule`.
pub fn block_error(rule: &str) -> String {
    format!("response blocked by guardrail {rule}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Only whitespace seen yet.
    Undecided,
    Sse,
    Raw,
}

/// What to send the client for one upstream frame.
#[derive(Default)]
pub struct GateStep {
    /// Plain bytes to forward now (possibly empty).
    pub forward: Bytes,
    /// A blocking rule matched: send [`StreamGate::error_event`] and end.
    pub block: Option<String>,
}

/// Watches one streamed response. See the module docs.
pub struct StreamGate {
    guard: Arc<Guard>,
    speaker: Speaker,
    /// Hold each SSE event until it is complete and clean.
    hold: bool,
    /// Undoes a `Content-Encoding`; the client then gets plain bytes.
    decoder: Option<BodyDecoder>,
    mode: Mode,
    /// SSE bytes of events not complete yet (held back when `hold`).
    buf: Vec<u8>,
    /// Where the line scan resumes in `buf` (always at a line start).
    line_pos: usize,
    /// Recent text (deltas, or raw bytes in raw mode).
    window: String,
    /// Raw mode: the incomplete UTF-8 sequence at the end of the last frame.
    utf8_carry: Vec<u8>,
    /// MCP findings, merged per (detector, path).
    findings: Vec<Finding>,
    blocked: Option<String>,
    /// Why part of the stream was scanned less well than usual.
    note: Option<String>,
}

impl StreamGate {
    /// `hold`: a response rule can block. `encoding`: the response's
    /// `Content-Encoding` (undone here, so forwarded bytes are plain).
    pub fn new(
        guard: Arc<Guard>,
        speaker: Speaker,
        hold: bool,
        encoding: Option<&str>,
    ) -> Result<StreamGate, String> {
        let decoder = match encoding {
            None => None,
            Some(enc) => {
                let d = BodyDecoder::new_with_limit(Some(enc), usize::MAX)
                    .map_err(|e| format!("cannot decode {enc} response: {e}"))?;
                (!d.is_identity()).then_some(d)
            }
        };
        Ok(StreamGate {
            guard,
            speaker,
            hold,
            decoder,
            mode: Mode::Undecided,
            buf: Vec::new(),
            line_pos: 0,
            window: String::new(),
            utf8_carry: Vec::new(),
            findings: Vec::new(),
            blocked: None,
            note: None,
        })
    }

    /// Whether forwarded bytes are decoded (drop `Content-Encoding`).
    pub fn decodes(&self) -> bool {
        self.decoder.is_some()
    }

    /// The next upstream frame. An error means the stream cannot go on.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<GateStep, String> {
        if self.blocked.is_some() {
            return Ok(GateStep::default());
        }
        let plain = match self.decoder.as_mut() {
            None => chunk.to_vec(),
            Some(d) => d
                .feed(chunk)
                .map_err(|e| format!("cannot decode the response stream: {e}"))?,
        };
        Ok(self.take(plain))
    }

    /// Upstream ended: flush the decoder and judge a final unterminated event.
    pub fn finish(&mut self) -> Result<GateStep, String> {
        if self.blocked.is_some() {
            return Ok(GateStep::default());
        }
        let mut step = match self.decoder.as_mut() {
            None => GateStep::default(),
            Some(d) => {
                let rest = d
                    .finish()
                    .map_err(|e| format!("cannot decode the response stream: {e}"))?;
                self.take(rest)
            }
        };
        if step.block.is_some() || self.mode != Mode::Sse || self.buf.is_empty() {
            return Ok(step);
        }
        let last = std::mem::take(&mut self.buf);
        self.line_pos = 0;
        if let Some(rule) = self.check_event(&last) {
            step.block = Some(rule);
        } else if self.hold {
            let mut fwd = step.forward.to_vec();
            fwd.extend_from_slice(&last);
            step.forward = fwd.into();
        }
        Ok(step)
    }

    /// The last frame for a stream blocked by `rule`, in the speaker's own
    /// error shape; `None` when the stream is not SSE (the body then ends
    /// with an error instead).
    pub fn error_event(&self, rule: &str) -> Option<Bytes> {
        if self.mode == Mode::Raw {
            return None;
        }
        let msg = block_message(rule);
        let (event, data) = match &self.speaker {
            Speaker::Mcp(call) => (Some("message"), call.error_body(&msg)),
            Speaker::Ai { format, endpoint } => match format {
                ApiFormat::Anthropic => (
                    Some("error"),
                    serde_json::json!({"type": "error", "error": {"type": "palisade_error", "message": msg}}),
                ),
                ApiFormat::Gemini => (
                    None,
                    serde_json::json!({"error": {"code": 403, "message": msg, "status": "PERMISSION_DENIED"}}),
                ),
                ApiFormat::OpenAi if *endpoint == "responses" => (
                    Some("error"),
                    // The Responses event shape, plus `error` for SDKs that read it.
                    serde_json::json!({"type": "error", "code": "palisade_blocked", "message": msg, "param": null,
                        "error": {"message": msg, "type": "palisade_error", "code": 403}}),
                ),
                ApiFormat::OpenAi => (
                    None,
                    serde_json::json!({"error": {"message": msg, "type": "palisade_error", "code": 403}}),
                ),
                ApiFormat::Unknown => (
                    Some("error"),
                    serde_json::json!({"error": {"message": msg, "type": "palisade_error", "code": 403}}),
                ),
            },
        };
        Some(match event {
            Some(e) => format!("event: {e}\ndata: {data}\n\n").into(),
            None => format!("data: {data}\n\n").into(),
        })
    }

    /// MCP findings (`None` for AI speakers: their text is scanned whole at
    /// the end instead) and a note on anything scanned less well than usual.
    pub fn outcome(&mut self) -> (Option<Vec<Finding>>, Option<String>) {
        let findings =
            matches!(self.speaker, Speaker::Mcp(_)).then(|| std::mem::take(&mut self.findings));
        (findings, self.note.take())
    }

    fn take(&mut self, plain: Vec<u8>) -> GateStep {
        if self.mode == Mode::Undecided {
            match plain.iter().find(|b| !b.is_ascii_whitespace()) {
                None => {
                    // Leading whitespace: harmless, and nothing to judge yet.
                    if !self.hold {
                        return GateStep {
                            forward: plain.into(),
                            block: None,
                        };
                    }
                    self.buf.extend_from_slice(&plain);
                    return GateStep::default();
                }
                Some(b'[') | Some(b'{') => {
                    self.mode = Mode::Raw;
                    let held = std::mem::take(&mut self.buf);
                    let mut all = held;
                    all.extend_from_slice(&plain);
                    return self.take_raw(all, true);
                }
                Some(_) => self.mode = Mode::Sse,
            }
        }
        match self.mode {
            Mode::Raw => self.take_raw(plain, true),
            _ => self.take_sse(plain),
        }
    }

    fn take_sse(&mut self, plain: Vec<u8>) -> GateStep {
        let pass_through = (!self.hold).then(|| Bytes::from(plain.clone()));
        self.buf.extend_from_slice(&plain);
        let mut released = 0;
        let mut block = None;
        while let Some(end) = next_event_end(&self.buf, &mut self.line_pos) {
            let event = self.buf[released..end].to_vec();
            if let Some(rule) = self.check_event(&event) {
                block = Some(rule);
                break;
            }
            released = end;
        }
        let forward = match pass_through {
            Some(all) => all,
            None => Bytes::copy_from_slice(&self.buf[..released]),
        };
        if block.is_some() {
            self.buf.clear();
            self.line_pos = 0;
            self.blocked = block.clone();
            return GateStep { forward, block };
        }
        self.buf.drain(..released);
        self.line_pos -= released;
        if self.buf.len() > MAX_HELD_EVENT_BYTES {
            // One enormous event: stop holding, scan the bytes as they come.
            self.note = Some(format!(
                "a response event over {MAX_HELD_EVENT_BYTES} bytes was scanned as raw bytes"
            ));
            tracing::warn!(
                bytes = self.buf.len(),
                "Response event too large to hold; scanning raw"
            );
            self.mode = Mode::Raw;
            let held = std::mem::take(&mut self.buf);
            self.line_pos = 0;
            let mut step = self.take_raw(held, self.hold);
            let mut fwd = forward.to_vec();
            fwd.extend_from_slice(&step.forward);
            step.forward = fwd.into();
            return step;
        }
        GateStep {
            forward,
            block: None,
        }
    }

    /// Raw mode: scan the bytes through the window; forward them unless
    /// they complete a blocking match (`send`: whether they are not yet sent).
    fn take_raw(&mut self, plain: Vec<u8>, send: bool) -> GateStep {
        let mut bytes = std::mem::take(&mut self.utf8_carry);
        bytes.extend_from_slice(&plain);
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes.len(),
        };
        self.utf8_carry = bytes[valid..].to_vec();
        let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
        let block = match &self.speaker {
            // MCP over a non-SSE stream is not something we can read.
            Speaker::Mcp(_) => None,
            Speaker::Ai { .. } => self.scan_window(&text),
        };
        if block.is_some() {
            self.blocked = block.clone();
            return GateStep {
                forward: Bytes::new(),
                block,
            };
        }
        GateStep {
            forward: if send { plain.into() } else { Bytes::new() },
            block: None,
        }
    }

    /// Judge one complete SSE event; the blocking rule if it must not pass.
    fn check_event(&mut self, event: &[u8]) -> Option<String> {
        let (name, data) = sse_fields(event);
        if data.is_empty() {
            return None;
        }
        match &self.speaker {
            Speaker::Mcp(_) => {
                let (found, block) = self.guard.inspect_mcp_response(data.as_bytes());
                merge(&mut self.findings, found);
                block
            }
            Speaker::Ai { format, endpoint } => {
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    return None;
                };
                let mut text = String::new();
                deltas(*format, endpoint, name.as_deref(), &v, &mut text);
                if text.is_empty() {
                    return None;
                }
                self.scan_window(&text)
            }
        }
    }

    /// Append `text` to the window, scan it, keep the tail.
    fn scan_window(&mut self, text: &str) -> Option<String> {
        if text.is_empty() {
            return None;
        }
        self.window.push_str(text);
        let (_, block) = self.guard.inspect_response_text(&self.window);
        if self.window.len() > LOOKBEHIND_BYTES {
            let mut cut = self.window.len() - LOOKBEHIND_BYTES;
            while !self.window.is_char_boundary(cut) {
                cut += 1;
            }
            self.window.drain(..cut);
        }
        if let Some(rule) = &block {
            tracing::info!(rule = %rule, "Guardrail blocks streamed response");
        }
        block
    }
}

impl fmt::Debug for StreamGate {
    // Hand-written: the window and held bytes are response content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamGate")
            .field("speaker", &self.speaker)
            .field("hold", &self.hold)
            .field("mode", &self.mode)
            .field("held_bytes", &self.buf.len())
            .field("window_bytes", &self.window.len())
            .field("blocked", &self.blocked)
            .finish()
    }
}

/// Add `more` to `into`, summing counts per (detector, location, path).
pub fn merge(into: &mut Vec<Finding>, more: Vec<Finding>) {
    for f in more {
        match into
            .iter_mut()
            .find(|g| g.detector == f.detector && g.location == f.location && g.path == f.path)
        {
            Some(g) => g.count = g.count.saturating_add(f.count),
            None => into.push(f),
        }
    }
}

/// A finding for the rule that held a response back, unless one is there.
pub fn ensure_block_finding(findings: &mut Vec<Finding>, rule: &str) {
    let present = findings.iter().any(|f| {
        f.detector == rule && f.location == FindingLocation::Response && f.action == "block"
    });
    if !present {
        findings.push(Finding {
            detector: rule.to_string(),
            action: "block".into(),
            location: FindingLocation::Response,
            path: None,
            count: 1,
        });
    }
}

/// End (exclusive) of the first complete SSE event in `buf` at or after the
/// line starting at `*pos`; `*pos` moves past every complete line seen.
fn next_event_end(buf: &[u8], pos: &mut usize) -> Option<usize> {
    loop {
        let start = *pos;
        let rel = buf[start..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')?;
        let i = start + rel;
        let term = if buf[i] == b'\r' {
            match buf.get(i + 1) {
                // A CR at the very end may be the first half of CRLF.
                None => return None,
                Some(b'\n') => 2,
                Some(_) => 1,
            }
        } else {
            1
        };
        *pos = i + term;
        if i == start {
            return Some(*pos);
        }
    }
}

/// The `event:` name and the joined `data:` lines of one SSE event.
fn sse_fields(event: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(event);
    let mut name = None;
    let mut data = String::new();
    let mut first = true;
    for line in text.split(['\n', '\r']) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value.to_string()),
            "data" => {
                if !first {
                    data.push('\n');
                }
                data.push_str(value);
                first = false;
            }
            _ => {}
        }
    }
    (name, data)
}

/// Append the text deltas an event carries to `out`.
fn deltas(format: ApiFormat, endpoint: &str, event: Option<&str>, v: &Value, out: &mut String) {
    fn put(out: &mut String, s: Option<&Value>) {
        if let Some(s) = s.and_then(Value::as_str) {
            out.push_str(s);
        }
    }
    match format {
        ApiFormat::OpenAi if endpoint == "responses" => {
            let ty = v
                .get("type")
                .and_then(Value::as_str)
                .or(event)
                .unwrap_or("");
            if ty.ends_with(".delta") {
                put(out, v.get("delta"));
            }
        }
        ApiFormat::OpenAi => {
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                put(out, c.get("text"));
                let Some(d) = c.get("delta") else { continue };
                put(out, d.get("content"));
                put(out, d.get("refusal"));
                put(out, d.get("reasoning_content"));
                for t in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    put(out, t.pointer("/function/arguments"));
                }
            }
        }
        ApiFormat::Anthropic => {
            if v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
                if let Some(d) = v.get("delta") {
                    put(out, d.get("text"));
                    put(out, d.get("partial_json"));
                    put(out, d.get("thinking"));
                }
            }
        }
        ApiFormat::Gemini => {
            for c in v
                .get("candidates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for p in c
                    .pointer("/content/parts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    put(out, p.get("text"));
                    if let Some(args) = p.pointer("/functionCall/args") {
                        strings(args, out);
                    }
                }
            }
        }
        ApiFormat::Unknown => strings(v, out),
    }
}

/// Every string value under `v`, space-separated.
fn strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
