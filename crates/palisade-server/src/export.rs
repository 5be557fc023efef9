//! Event export encodings and the paged reader behind both the export
//! download (`GET /api/v1/export`) and live forwarding ([`crate::forward`]).
//!
//! Formats:
//! * `json`: one JSON array, streamed element by element;
//! * `jsonl`: one record per line;
//! * `syslog`: one RFC 5424 message per line (for a file) or per RFC 6587
//!   octet-counted frame (for a collector, [`octet_frame`]).
//!
//! Each record is the stored interaction record (compact JSON) plus its
//! ingest `seq`. An export that fails part-way ends with an error record
//! ([`Encoder::error`]: `{"export_error": .., "after_seq": N}` for
//! JSON/JSONL, still a valid array for JSON; a syslog message with MSGID
//! `export.error` for syslog) and then a clean end of body, so the record
//! reaches the reader (aborting the body instead would let the HTTP server
//! drop the buffered record with the connection). A server that dies
//! mid-export leaves an unterminated chunked body, which HTTP clients report.
//!
//! Memory is bounded by [`EXPORT_PAGE_ROWS`] records, whatever the export's
//! size: the reader never holds more than one page. This module must never
//! log record contents.

use crate::store::{EventFilter, Store, StoreError, StoredEvent};
use chrono::SecondsFormat;
use futures_util::Stream;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Rows read from the store per page (and so records held in memory).
pub const EXPORT_PAGE_ROWS: u32 = 500;
/// SD-ID of the structured-data element: `palisade` at IANA private
/// enterprise number 32473 (reserved for documentation by RFC 5612).
pub const SD_ID: &str = "palisade@32473";
/// APP-NAME of every syslog message.
pub const APP_NAME: &str = "palisade";
/// Syslog facility 13: "log audit".
pub const FACILITY: u8 = 13;
/// UTF-8 byte order mark that RFC 5424 §6.4 requires before a UTF-8 MSG.
pub const BOM: &str = "\u{feff}";

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Jsonl,
    Syslog,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("format: {0:?} is not one of json, jsonl, syslog")]
pub struct UnknownFormat(pub String);

// === impl ExportFormat ===

impl std::str::FromStr for ExportFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "jsonl" => Ok(Self::Jsonl),
            "syslog" => Ok(Self::Syslog),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Jsonl => "jsonl",
            Self::Syslog => "syslog",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Jsonl => "application/x-ndjson",
            Self::Syslog => "text/plain; charset=utf-8",
        }
    }

    /// File extension for the download's file name.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Jsonl => "jsonl",
            Self::Syslog => "log",
        }
    }
}

/// Syslog severity (RFC 5424 §6.2.1) of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
}

/// The record as exported: the stored JSON with `seq` added. A stored row
/// that is not a JSON object (never written by ingest) is exported as an
/// object naming the problem instead of being dropped silently.
pub fn record_value(ev: &StoredEvent) -> Value {
    match serde_json::from_str::<Value>(&ev.json) {
        Ok(Value::Object(mut obj)) => {
            obj.insert("seq".into(), json!(ev.seq));
            Value::Object(obj)
        }
        _ => json!({
            "seq": ev.seq,
            "id": ev.id,
            "time": ev.time,
            "kind": ev.kind,
            "device": { "id": ev.device_id },
            "export_warning": "stored record is not a JSON object",
        }),
    }
}

/// Severity: blocks (policy `block`, `*.blocked`) and recorded losses are
/// warnings, redactions notices, everything else informational.
pub fn severity(kind: &str, record: &Value) -> Severity {
    let decision = record.pointer("/policy/decision").and_then(Value::as_str);
    if decision == Some("block") || kind.ends_with(".blocked") || kind == "spool.dropped" {
        Severity::Warning
    } else if decision == Some("redact") {
        Severity::Notice
    } else {
        Severity::Informational
    }
}

/// One RFC 5424 message (no trailing newline, no framing):
/// `<PRI>1 TIMESTAMP HOSTNAME palisade - MSGID [palisade@32473 ...] BOM{json}`.
/// HOSTNAME is the device the record came from; MSGID is the record kind.
pub fn syslog_message(ev: &StoredEvent, record: &Value) -> String {
    let sev = severity(&ev.kind, record);
    let mut out = String::with_capacity(ev.json.len() + 256);
    let _ = write!(
        out,
        "<{}>1 {} {} {APP_NAME} - {} [{SD_ID}",
        u16::from(FACILITY) * 8 + sev as u16,
        ev.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        header_token(record.pointer("/device/hostname").and_then(Value::as_str), 255),
        header_token(Some(&ev.kind), 32),
    );
    let seq = ev.seq.to_string();
    let id = ev.id.to_string();
    let params: [(&str, Option<&str>); 10] = [
        ("seq", Some(&seq)),
        ("id", Some(&id)),
        ("device", Some(&ev.device_id)),
        ("user", record.pointer("/user/os_user").and_then(Value::as_str)),
        ("email", record.pointer("/user/email").and_then(Value::as_str)),
        ("app", record.pointer("/app/name").and_then(Value::as_str)),
        ("provider", record.get("provider").and_then(Value::as_str)),
        ("model", record.get("model").and_then(Value::as_str)),
        ("decision", record.pointer("/policy/decision").and_then(Value::as_str)),
        ("error", record.get("error").and_then(error_text)),
    ];
    for (name, value) in params {
        if let Some(v) = value {
            out.push(' ');
            out.push_str(name);
            out.push_str("=\"");
            push_param_value(&mut out, v);
            out.push('"');
        }
    }
    out.push_str("] ");
    out.push_str(BOM);
    out.push_str(&serde_json::to_string(record).unwrap_or_default());
    out
}

/// [`syslog_message`], at most `max` bytes where possible: over it, the
/// prompt and response text are removed from MSG (and the record says so in
/// `export_truncated`); if that is still too long, MSG keeps only the
/// envelope (`seq`, `id`, `time`, `kind`, `device`). Collectors must accept
/// 2048 bytes and should accept 8192 (RFC 5425 §4.3.1); many refuse more.
pub fn syslog_message_capped(ev: &StoredEvent, record: &Value, max: usize) -> String {
    let full = syslog_message(ev, record);
    if full.len() <= max {
        return full;
    }
    let mut lean = record.clone();
    strip_content(&mut lean);
    if let Some(obj) = lean.as_object_mut() {
        obj.insert(
            "export_truncated".into(),
            json!(format!("prompt and response text removed: message over {max} bytes")),
        );
    }
    let msg = syslog_message(ev, &lean);
    if msg.len() <= max {
        return msg;
    }
    let mut envelope = serde_json::Map::new();
    for key in ["seq", "id", "time", "kind", "device"] {
        if let Some(v) = record.get(key) {
            envelope.insert(key.into(), v.clone());
        }
    }
    envelope.insert(
        "export_truncated".into(),
        json!(format!("record reduced to its envelope: message over {max} bytes")),
    );
    syslog_message(ev, &Value::Object(envelope))
}

fn error_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("kind").and_then(Value::as_str))
}

/// A syslog message reporting that an export failed after `after_seq`.
pub fn syslog_error_message(after_seq: i64, error: &str) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut out = format!(
        "<{}>1 {now} - {APP_NAME} - export.error [{SD_ID} after_seq=\"{after_seq}\" error=\"",
        u16::from(FACILITY) * 8 + Severity::Error as u16
    );
    push_param_value(&mut out, error);
    out.push_str("\"] ");
    out.push_str(BOM);
    out.push_str(&json!({ "export_error": error, "after_seq": after_seq }).to_string());
    out
}

/// RFC 6587 §3.4.1 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn octet_frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// A header field (HOSTNAME, MSGID): PRINTUSASCII only, at most `max`
/// characters, `-` (NILVALUE) when absent or empty. Other characters become `_`.
fn header_token(v: Option<&str>, max: usize) -> String {
    let t: String = v
        .unwrap_or("")
        .chars()
        .take(max)
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

/// PARAM-VALUE escaping (RFC 5424 §6.3.3): `"`, `\` and `]` get a
/// backslash. Control characters (which would split a line-based file)
/// become U+FFFD.
fn push_param_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

// === Encoder ===

/// Turns pages of events into the bytes of one export download.
#[derive(Debug)]
pub struct Encoder {
    format: ExportFormat,
    /// Null prompt and response text (roles that may not read content).
    strip_content: bool,
    wrote_element: bool,
    /// Records encoded so far.
    pub count: u64,
    /// Seq of the last record encoded.
    pub last_seq: i64,
}

impl Encoder {
    pub fn new(format: ExportFormat, strip_content: bool, after_seq: i64) -> Self {
        Self {
            format,
            strip_content,
            wrote_element: false,
            count: 0,
            last_seq: after_seq,
        }
    }

    /// What goes before the first page.
    pub fn begin(&self) -> String {
        match self.format {
            ExportFormat::Json => "[".into(),
            _ => String::new(),
        }
    }

    /// One page of records.
    pub fn page(&mut self, rows: &[StoredEvent]) -> String {
        let mut out = String::with_capacity(rows.iter().map(|r| r.json.len() + 300).sum());
        for ev in rows {
            let mut v = record_value(ev);
            if self.strip_content {
                strip_content(&mut v);
            }
            match self.format {
                ExportFormat::Json => {
                    out.push_str(if self.wrote_element { ",\n" } else { "\n" });
                    out.push_str(&serde_json::to_string(&v).unwrap_or_default());
                    self.wrote_element = true;
                }
                ExportFormat::Jsonl => {
                    out.push_str(&serde_json::to_string(&v).unwrap_or_default());
                    out.push('\n');
                }
                ExportFormat::Syslog => {
                    out.push_str(&syslog_message(ev, &v));
                    out.push('\n');
                }
            }
            self.count += 1;
            self.last_seq = ev.seq;
        }
        out
    }

    /// What goes after the last page of a complete export.
    pub fn end(&self) -> String {
        match self.format {
            ExportFormat::Json if self.wrote_element => "\n]\n".into(),
            ExportFormat::Json => "]\n".into(),
            _ => String::new(),
        }
    }

    /// The error record that ends a failed export (see the module docs).
    pub fn error(&mut self, error: &str) -> String {
        let marker = json!({ "export_error": error, "after_seq": self.last_seq });
        match self.format {
            ExportFormat::Json => {
                let sep = if self.wrote_element { ",\n" } else { "\n" };
                self.wrote_element = true;
                format!("{sep}{marker}\n]\n")
            }
            ExportFormat::Jsonl => format!("{marker}\n"),
            ExportFormat::Syslog => format!("{}\n", syslog_error_message(self.last_seq, error)),
        }
    }
}

/// Remove prompt and response text; the fields stay, set to null, so
/// clients see the shape they expect.
pub fn strip_content(v: &mut Value) {
    for (section, field) in [("request", "prompt"), ("response", "text")] {
        if let Some(obj) = v.get_mut(section).and_then(Value::as_object_mut) {
            if obj.contains_key(field) {
                obj.insert(field.into(), Value::Null);
            }
        }
    }
}

/// Pages of events matching `filter` (its `after_seq` is the start, its
/// `limit` the page size), in seq order, until one comes back empty, or
/// until `up_to` (inclusive) when given. One page in memory at a time.
pub fn event_pages(
    store: Store,
    filter: EventFilter,
    up_to: Option<i64>,
) -> impl Stream<Item = Result<Vec<StoredEvent>, StoreError>> + Send {
    futures_util::stream::unfold(Some(filter), move |state| {
        let store = store.clone();
        async move {
            let mut filter = state?;
            match store.query_events(&filter).await {
                Ok(mut rows) => {
                    if let Some(max) = up_to {
                        rows.retain(|r| r.seq <= max);
                    }
                    if rows.is_empty() {
                        return None;
                    }
                    let full = rows.len() == filter.limit as usize;
                    filter.after_seq = rows.last().map(|r| r.seq);
                    Some((Ok(rows), full.then_some(filter)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

#[cfg(test)]
mod tests;
