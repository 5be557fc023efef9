//! Incremental parser for streamed responses: Server-Sent Events (OpenAI,
//! Anthropic, Gemini `?alt=sse`) and Gemini's streamed JSON array.
//!
//! The proxy forwards every chunk first and then hands a copy here, so this
//! parser must never block, never panic, and keep memory bounded whatever
//! the stream contains: lines and pending JSON objects are capped
//! ([`DEFAULT_MAX_LINE`]) and so is accumulated text ([`DEFAULT_MAX_TEXT`]).
//! Garbage is counted and skipped, never fatal. `finish()` may be called at
//! any point (interrupted stream) and reports what was seen so far.

use crate::endpoint::{names, ApiFormat, Endpoint};
use crate::formats::{anthropic, gemini, openai};
use crate::json::TextBuf;
use crate::response::{apply_full, ParsedResponse};
use serde_json::Value;

/// Longest SSE line / pending JSON object kept before it is dropped as garbage.
pub const DEFAULT_MAX_LINE: usize = 4 * 1024 * 1024;
/// Most response text kept; the rest is dropped and `text_truncated` set.
pub const DEFAULT_MAX_TEXT: usize = 8 * 1024 * 1024;

/// What the format adapters accumulate, streaming or not.
pub(crate) struct Acc {
    pub(crate) model: Option<String>,
    pub(crate) text: TextBuf,
    pub(crate) text_limit: usize,
    pub(crate) text_truncated: bool,
    pub(crate) stop_reason: Option<String>,
    pub(crate) usage: palisade_core::Usage,
    pub(crate) cache_creation: Option<u64>,
    pub(crate) error: Option<String>,
    /// A terminal marker was seen (`[DONE]`, `message_stop`, `response.completed`, a finish reason).
    pub(crate) complete: bool,
}

// === impl Acc ===

impl Acc {
    pub(crate) fn new(text_limit: usize) -> Self {
        Self {
            model: None,
            text: TextBuf::new(text_limit),
            text_limit,
            text_truncated: false,
            stop_reason: None,
            usage: Default::default(),
            cache_creation: None,
            error: None,
            complete: false,
        }
    }

    pub(crate) fn into_response(self) -> ParsedResponse {
        let text_truncated = self.text_truncated || self.text.truncated();
        ParsedResponse {
            model: self.model,
            text: self.text.into_option(),
            stop_reason: self.stop_reason,
            usage: self.usage,
            error: self.error,
            cache_creation_input_tokens: self.cache_creation,
            text_truncated,
        }
    }
}

enum Format {
    Chat(openai::ChatStream),
    Responses(openai::ResponsesStream),
    Messages(anthropic::MessagesStream),
    Gemini,
    /// Embeddings and unknown endpoints do not stream anything we read.
    Ignore,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Nothing but whitespace seen yet.
    Undecided,
    Sse,
    /// A JSON array of objects or concatenated objects (Gemini without
    /// `alt=sse`, or a plain JSON error body on a streaming request).
    Json,
}

/// Incremental SSE / JSON-array parser. See the module docs.
pub struct StreamParser {
    ep: Endpoint,
    format: Format,
    acc: Acc,
    mode: Mode,
    max_line: usize,
    garbage: u64,
    // SSE state
    line: Vec<u8>,
    skipping_line: bool,
    event: Option<String>,
    data: String,
    // JSON state
    obj: Vec<u8>,
    depth: u32,
    in_str: bool,
    escaped: bool,
    in_garbage_run: bool,
    skipping_obj: bool,
}

// === impl StreamParser ===

impl StreamParser {
    pub fn new(ep: &Endpoint) -> Self {
        Self::with_limits(ep, DEFAULT_MAX_LINE, DEFAULT_MAX_TEXT)
    }

    /// `max_line` bounds one SSE line or one pending JSON object;
    /// `max_text` bounds accumulated response text.
    pub fn with_limits(ep: &Endpoint, max_line: usize, max_text: usize) -> Self {
        let format = match (ep.format, ep.name) {
            (ApiFormat::OpenAi, names::CHAT_COMPLETIONS) => Format::Chat(Default::default()),
            (ApiFormat::OpenAi, names::RESPONSES) => Format::Responses(Default::default()),
            (ApiFormat::Anthropic, names::MESSAGES) => Format::Messages(Default::default()),
            (ApiFormat::Gemini, names::GENERATE_CONTENT | names::STREAM_GENERATE_CONTENT) => Format::Gemini,
            _ => Format::Ignore,
        };
        Self {
            ep: ep.clone(),
            format,
            acc: Acc::new(max_text),
            mode: Mode::Undecided,
            max_line: max_line.max(1),
            garbage: 0,
            line: Vec::new(),
            skipping_line: false,
            event: None,
            data: String::new(),
            obj: Vec::new(),
            depth: 0,
            in_str: false,
            escaped: false,
            in_garbage_run: false,
            skipping_obj: false,
        }
    }

    /// Feed the next chunk of (decoded) body bytes, split anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if self.mode == Mode::Undecided {
            let Some(first) = rest.iter().position(|b| !b.is_ascii_whitespace()) else {
                return;
            };
            rest = &rest[first..];
            self.mode = match rest[0] {
                b'[' | b'{' => Mode::Json,
                _ => Mode::Sse,
            };
        }
        match self.mode {
            Mode::Sse => self.feed_sse(rest),
            Mode::Json => self.feed_json(rest),
            Mode::Undecided => {}
        }
    }

    /// Lines or payloads that could not be understood, so far.
    pub fn garbage_lines(&self) -> u64 {
        self.garbage
    }

    /// Whether the stream's terminal marker has been seen (`data: [DONE]`,
    /// `message_stop`, `response.completed`/`incomplete`/`failed`, a Gemini
    /// finish reason). `false` after `finish()` means the stream was cut short.
    pub fn is_complete(&self) -> bool {
        self.acc.complete
    }

    /// Everything seen so far. May be called at any time.
    pub fn finish(mut self) -> ParsedResponse {
        match self.mode {
            Mode::Sse => {
                if !self.skipping_line && !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    self.sse_line(&line);
                }
                if !self.data.is_empty() {
                    // An unterminated payload at EOF: try it, else it is garbage.
                    self.flush_event();
                }
            }
            Mode::Json => {
                if self.depth > 0 && !self.skipping_obj {
                    self.garbage += 1;
                }
            }
            Mode::Undecided => {}
        }
        match std::mem::replace(&mut self.format, Format::Ignore) {
            Format::Chat(c) => c.finish(&mut self.acc),
            Format::Messages(m) => m.finish(&mut self.acc),
            Format::Responses(_) | Format::Gemini | Format::Ignore => {}
        }
        self.acc.into_response()
    }

    // --- SSE ---

    fn feed_sse(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (seg, more) = match nl {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if !self.skipping_line {
                if self.line.len() + seg.len() > self.max_line {
                    self.garbage += 1;
                    self.line.clear();
                    self.skipping_line = true;
                } else {
                    self.line.extend_from_slice(seg);
                }
            }
            match more {
                Some(m) => {
                    if self.skipping_line {
                        self.skipping_line = false;
                    } else {
                        let line = std::mem::take(&mut self.line);
                        self.sse_line(&line);
                        self.line = line;
                        self.line.clear();
                    }
                    bytes = m;
                }
                None => break,
            }
        }
    }

    fn sse_line(&mut self, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            self.flush_event();
            self.event = None;
            return;
        }
        if raw[0] == b':' {
            return; // comment / keep-alive
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            self.garbage += 1;
            return;
        };
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data_line(value),
            "event" => self.event = Some(value.trim().to_string()),
            "id" | "retry" => {}
            _ => self.garbage += 1,
        }
    }

    fn data_line(&mut self, value: &str) {
        if self.data.is_empty() {
            if value.trim() == "[DONE]" {
                self.acc.complete = true;
                return;
            }
            if let Ok(v) = serde_json::from_str::<Value>(value) {
                self.dispatch(&v);
                return;
            }
            self.data.push_str(value);
            return;
        }
        // A payload split over several data: lines (allowed by SSE).
        if self.data.len() + value.len() + 1 > self.max_line {
            self.garbage += 1;
            self.data.clear();
            return;
        }
        self.data.push('\n');
        self.data.push_str(value);
        if let Ok(v) = serde_json::from_str::<Value>(&self.data) {
            self.data.clear();
            self.dispatch(&v);
        }
    }

    fn flush_event(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.data);
        match serde_json::from_str::<Value>(&data) {
            Ok(v) => self.dispatch(&v),
            Err(_) => self.garbage += 1,
        }
    }

    fn dispatch(&mut self, v: &Value) {
        if !v.is_object() {
            self.garbage += 1;
            return;
        }
        let event = self.event.as_deref();
        match &mut self.format {
            Format::Chat(c) => c.on_data(v, &mut self.acc),
            Format::Responses(r) => r.on_data(event, v, &mut self.acc),
            Format::Messages(m) => m.on_data(event, v, &mut self.acc),
            Format::Gemini => gemini::on_chunk(v, &mut self.acc),
            Format::Ignore => {}
        }
    }

    // --- JSON array / concatenated objects ---

    fn feed_json(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.depth == 0 {
                match b {
                    b'{' => {
                        self.obj.clear();
                        self.obj.push(b);
                        self.depth = 1;
                        self.in_str = false;
                        self.escaped = false;
                        self.skipping_obj = false;
                        self.in_garbage_run = false;
                    }
                    b'[' | b']' | b',' => self.in_garbage_run = false,
                    b if b.is_ascii_whitespace() => {}
                    _ => {
                        if !self.in_garbage_run {
                            self.garbage += 1;
                            self.in_garbage_run = true;
                        }
                    }
                }
                continue;
            }
            if !self.skipping_obj {
                if self.obj.len() >= self.max_line {
                    self.garbage += 1;
                    self.obj.clear();
                    self.skipping_obj = true;
                } else {
                    self.obj.push(b);
                }
            }
            if self.in_str {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        if !self.skipping_obj {
                            let obj = std::mem::take(&mut self.obj);
                            match serde_json::from_slice::<Value>(&obj) {
                                Ok(v) => apply_full(&self.ep, &v, &mut self.acc),
                                Err(_) => self.garbage += 1,
                            }
                            self.obj = obj;
                            self.obj.clear();
                        }
                        self.skipping_obj = false;
                    }
                }
                _ => {}
            }
        }
    }
}

impl std::fmt::Debug for StreamParser {
    // Hand-written: never print captured response text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamParser")
            .field("endpoint", &self.ep.name)
            .field("mode", &self.mode)
            .field("garbage", &self.garbage)
            .field("complete", &self.acc.complete)
            .field("text_bytes", &self.acc.text.as_str().len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
