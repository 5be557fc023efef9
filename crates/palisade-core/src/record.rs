//! Audit records: the interaction record and the envelope shared by every
//! other record kind (`app.discovered`, `mcp.blocked`, ...).
//!
//! JSON field names here are the wire/API contract from the product brief.
//! A record must never hold a secret that a guardrail found: findings carry
//! detector, action, location and count only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Kinds of audit record. Stored and sent as their dotted string form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum EventKind {
    Interaction,
    AppDiscovered,
    McpDiscovered,
    PolicyApplied,
    AppBlocked,
    McpBlocked,
    SpoolDropped,
    Other(String),
}

impl EventKind {
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Interaction => "interaction",
            EventKind::AppDiscovered => "app.discovered",
            EventKind::McpDiscovered => "mcp.discovered",
            EventKind::PolicyApplied => "policy.applied",
            EventKind::AppBlocked => "app.blocked",
            EventKind::McpBlocked => "mcp.blocked",
            EventKind::SpoolDropped => "spool.dropped",
            EventKind::Other(s) => s,
        }
    }
}

impl From<String> for EventKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "interaction" => EventKind::Interaction,
            "app.discovered" => EventKind::AppDiscovered,
            "mcp.discovered" => EventKind::McpDiscovered,
            "policy.applied" => EventKind::PolicyApplied,
            "app.blocked" => EventKind::AppBlocked,
            "mcp.blocked" => EventKind::McpBlocked,
            "spool.dropped" => EventKind::SpoolDropped,
            _ => EventKind::Other(s),
        }
    }
}

impl From<EventKind> for String {
    fn from(k: EventKind) -> String {
        k.as_str().to_string()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceRef {
    pub id: String,
    pub hostname: String,
    pub os: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRef {
    pub os_user: Option<String>,
    /// Owner named by MDM, when known.
    pub email: Option<String>,
    /// The device's team as named by MDM (usage reports group by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// The process that opened the connection. All fields are `None` when the
/// platform cannot attribute the socket; `unknown_reason` then says why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppRef {
    /// App catalog id (`cursor`, `claude-code`), or `exe:<name>` for an app
    /// the catalog does not know. Policy decisions are keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: Option<String>,
    pub exe: Option<String>,
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_reason: Option<String>,
}

/// One audit record. `kind == interaction` carries `interaction`; other kinds
/// carry free-form `details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UUIDv7 assigned on the device; the idempotency key end to end.
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub device: DeviceRef,
    pub user: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppRef>,
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub interaction: Option<Interaction>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new record of `kind` with a fresh UUIDv7 and the current time.
    pub fn new(kind: EventKind, device: DeviceRef, user: UserRef) -> Self {
        Self {
            id: Uuid::now_v7(),
            time: Utc::now(),
            kind,
            device,
            user,
            app: None,
            interaction: None,
            details: serde_json::Value::Null,
        }
    }
}

/// Policy outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordDecision {
    #[default]
    Allow,
    Block,
    Redact,
}

impl RecordDecision {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordDecision::Allow => "allow",
            RecordDecision::Block => "block",
            RecordDecision::Redact => "redact",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub decision: RecordDecision,
    pub rule: Option<String>,
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingLocation {
    Request,
    Response,
}

/// A guardrail finding. Never holds the matched value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub detector: String,
    /// `log`, `redact` or `block`.
    pub action: String,
    pub location: FindingLocation,
    /// Which message, e.g. `messages[2]` or `system`; `None` when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestCapture {
    /// Prompt text as captured under the capture mode; `None` in metadata mode.
    pub prompt: Option<String>,
    /// Non-content request parameters (temperature, max_tokens, tools count ...).
    #[serde(default)]
    pub params: serde_json::Value,
    pub method: String,
    pub path: String,
    /// Bytes of the body as sent on the wire.
    pub bytes: u64,
    /// True when the captured copy was cut at the capture cap.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseCapture {
    pub status: Option<u16>,
    pub text: Option<String>,
    pub stop_reason: Option<String>,
    pub bytes: u64,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub duration_ms: u64,
    pub ttfb_ms: Option<u64>,
}

/// Fields of an AI request/response pair. Flattened into [`AuditEvent`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub provider: String,
    pub host: String,
    /// `chat.completions`, `responses`, `embeddings`, `messages`,
    /// `generateContent`, `streamGenerateContent`, or `unknown`.
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    pub request: RequestCapture,
    pub response: ResponseCapture,
    pub usage: Usage,
    /// `None` when the model has no known price: never a made-up 0.
    pub cost_usd: Option<f64>,
    pub policy: PolicyRef,
    #[serde(default)]
    pub findings: Vec<Finding>,
    pub timing: Timing,
    pub error: Option<String>,
    /// Why guardrails did not inspect this request (e.g. `binary body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_skipped: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interaction_round_trips_with_flat_fields() {
        let mut ev = AuditEvent::new(
            EventKind::Interaction,
            DeviceRef {
                id: "dev-1".into(),
                hostname: "h".into(),
                os: "linux".into(),
            },
            UserRef::default(),
        );
        ev.interaction = Some(Interaction {
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            ..Default::default()
        });
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["kind"], "interaction");
        assert_eq!(v["provider"], "openai");
        assert_eq!(v["model"], "gpt-4o");
        assert!(v["cost_usd"].is_null());
        let back: AuditEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn other_kind_round_trips() {
        let mut ev = AuditEvent::new(
            EventKind::from("mcp.blocked".to_string()),
            DeviceRef::default(),
            UserRef::default(),
        );
        ev.details = serde_json::json!({"server": "x"});
        let s = serde_json::to_string(&ev).unwrap();
        let back: AuditEvent = serde_json::from_str(&s).unwrap();
        assert_eq!(back.kind, EventKind::McpBlocked);
        assert!(back.interaction.is_none());
        assert_eq!(back, ev);
    }
}
