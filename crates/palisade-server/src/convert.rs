//! Conversions from generated proto messages into domain and store types.
//!
//! Each `TryFrom` destructures every field of the proto message, so adding a
//! field to the `.proto` breaks the build here until someone decides what it
//! means. Input is untrusted: every rule is checked and reported with a clear
//! message. This module must never take a device id from a payload: callers
//! pass the certificate's id in.

use crate::store::{EventUsage, InventoryRecord, NewEvent};
use palisade_core::AuditEvent;
use palisade_proto as proto;
use uuid::Uuid;

/// Longest accepted device fact / inventory string, in bytes.
pub const MAX_FIELD_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidInput {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field: field.into(),
        problem: problem.into(),
    }
}

fn checked(field: &str, v: String, required: bool) -> Result<String, InvalidInput> {
    let v = v.trim().to_string();
    if required && v.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if v.len() > MAX_FIELD_LEN {
        return Err(invalid(field, format!("longer than {MAX_FIELD_LEN} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(v)
}

/// Device facts as reported at enrollment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    pub hostname: String,
    pub os: String,
    pub hardware_id: String,
    pub agent_version: String,
    pub owner_email: Option<String>,
}

impl TryFrom<proto::DeviceFacts> for DeviceFacts {
    type Error = InvalidInput;

    fn try_from(f: proto::DeviceFacts) -> Result<Self, InvalidInput> {
        let proto::DeviceFacts {
            hostname,
            os,
            hardware_id,
            agent_version,
            owner_email,
        } = f;
        let owner_email = checked("facts.owner_email", owner_email, false)?;
        if !owner_email.is_empty() && !owner_email.contains('@') {
            return Err(invalid("facts.owner_email", "is not an e-mail address"));
        }
        Ok(Self {
            hostname: checked("facts.hostname", hostname, true)?,
            os: checked("facts.os", os, true)?,
            hardware_id: checked("facts.hardware_id", hardware_id, true)?,
            agent_version: checked("facts.agent_version", agent_version, true)?,
            owner_email: (!owner_email.is_empty()).then_some(owner_email),
        })
    }
}

/// One uploaded audit record, parsed and checked but not yet bound to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub id: Uuid,
    pub event: AuditEvent,
    /// The JSON bytes as sent, kept whole so fields this server version does
    /// not know yet (a newer agent) are stored, not dropped.
    raw: Vec<u8>,
}

/// Why one record of a batch can never be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("id {0:?} is not a UUID")]
    BadId(String),
    #[error("id {0} is not a UUIDv7")]
    NotV7(Uuid),
    #[error("json is not a valid audit event: {0}")]
    BadJson(String),
    #[error("json id {json} does not match record id {record}")]
    IdMismatch { record: Uuid, json: Uuid },
}

impl TryFrom<proto::AuditRecord> for IncomingEvent {
    type Error = RecordProblem;

    fn try_from(r: proto::AuditRecord) -> Result<Self, RecordProblem> {
        let proto::AuditRecord { id, json } = r;
        let id = Uuid::parse_str(&id)
            .map_err(|_| RecordProblem::BadId(id.chars().take(64).collect()))?;
        if id.get_version_num() != 7 {
            return Err(RecordProblem::NotV7(id));
        }
        // One parse, straight into the domain type; the bytes are kept as
        // sent (ingest profiling showed a map round trip costing more than
        // the parse itself).
        let event: AuditEvent =
            serde_json::from_slice(&json).map_err(|e| RecordProblem::BadJson(e.to_string()))?;
        if event.id != id {
            return Err(RecordProblem::IdMismatch {
                record: id,
                json: event.id,
            });
        }
        Ok(Self { id, event, raw: json })
    }
}

impl IncomingEvent {
    /// Bind the event to the authenticated device: the certificate's id
    /// replaces whatever `device.id` the payload claimed. Returns the row and
    /// whether the payload had claimed a different id.
    pub fn into_new_event(self, device_id: &str) -> (NewEvent, bool) {
        let IncomingEvent { id, event, raw } = self;
        let spoofed = event.device.id != device_id && !event.device.id.is_empty();
        let json = if event.device.id == device_id {
            // The common case: the bytes as sent are already right. They
            // parsed as JSON, so they are UTF-8.
            String::from_utf8(raw).unwrap_or_default()
        } else {
            rebind_device(&raw, device_id)
        };
        let mut row = NewEvent {
            id,
            time: event.time,
            kind: event.kind.as_str().to_string(),
            app: event.app.as_ref().and_then(|a| a.name.clone()),
            json,
            os_user: event.user.os_user.clone(),
            user_email: event.user.email.clone(),
            team: event.user.team.clone(),
            ..NewEvent::default()
        };
        if let Some(i) = &event.interaction {
            row.provider = Some(i.provider.clone());
            row.model = i.model.clone();
            row.decision = Some(i.policy.decision.as_str().to_string());
            let tokens = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
            row.usage = EventUsage {
                input_tokens: tokens(i.usage.input_tokens),
                output_tokens: tokens(i.usage.output_tokens),
                cached_input_tokens: tokens(i.usage.cached_input_tokens),
                reasoning_tokens: tokens(i.usage.reasoning_tokens),
                cost_usd: i.cost_usd.filter(|c| c.is_finite()),
            };
            let mut detectors: Vec<String> =
                i.findings.iter().map(|f| f.detector.clone()).collect();
            detectors.sort_unstable();
            detectors.dedup();
            row.detectors = detectors;
            row.search_text = match (&i.request.prompt, &i.response.text) {
                (None, None) => None,
                (Some(p), None) => Some(p.clone()),
                (None, Some(t)) => Some(t.clone()),
                (Some(p), Some(t)) => Some(format!("{p}\n{t}")),
            };
        }
        (row, spoofed)
    }
}

/// The JSON with `device.id` replaced by the certificate's id, every other
/// field (known or not) kept.
fn rebind_device(raw: &[u8], device_id: &str) -> String {
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw).unwrap_or_default();
    // `device` is an object here: the AuditEvent parse accepted it.
    if let Some(serde_json::Value::Object(device)) = map.get_mut("device") {
        device.insert(
            "id".into(),
            serde_json::Value::String(device_id.to_string()),
        );
    }
    serde_json::Value::Object(map).to_string()
}

impl TryFrom<proto::InventoryItem> for InventoryRecord {
    type Error = InvalidInput;

    fn try_from(i: proto::InventoryItem) -> Result<Self, InvalidInput> {
        let proto::InventoryItem {
            kind,
            id,
            name,
            details_json,
        } = i;
        let kind = checked("kind", kind, true)?;
        if !kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        {
            return Err(invalid(
                "kind",
                format!("{kind:?} must be lowercase [a-z0-9_.]"),
            ));
        }
        let details = if details_json.is_empty() {
            "{}".to_string()
        } else {
            let v: serde_json::Value = serde_json::from_slice(&details_json)
                .map_err(|e| invalid("details_json", e.to_string()))?;
            if !v.is_object() {
                return Err(invalid("details_json", "must be a JSON object"));
            }
            v.to_string()
        };
        Ok(Self {
            kind,
            item_id: checked("id", id, true)?,
            name: checked("name", name, false)?,
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::{DeviceRef, EventKind, Interaction, UserRef};

    fn facts() -> proto::DeviceFacts {
        proto::DeviceFacts {
            hostname: "mac-1".into(),
            os: "macos".into(),
            hardware_id: "C02XYZ".into(),
            agent_version: "0.1.0".into(),
            owner_email: "ann@example.com".into(),
        }
    }

    #[test]
    fn facts_convert_and_validate() {
        let f = DeviceFacts::try_from(facts()).unwrap();
        assert_eq!(f.owner_email.as_deref(), Some("ann@example.com"));
        let f = DeviceFacts::try_from(proto::DeviceFacts {
            owner_email: "".into(),
            ..facts()
        })
        .unwrap();
        assert_eq!(f.owner_email, None);

        let cases = [
            (
                proto::DeviceFacts {
                    hostname: " ".into(),
                    ..facts()
                },
                "facts.hostname",
            ),
            (
                proto::DeviceFacts {
                    hardware_id: "".into(),
                    ..facts()
                },
                "facts.hardware_id",
            ),
            (
                proto::DeviceFacts {
                    owner_email: "nobody".into(),
                    ..facts()
                },
                "facts.owner_email",
            ),
            (
                proto::DeviceFacts {
                    os: "x".repeat(MAX_FIELD_LEN + 1),
                    ..facts()
                },
                "facts.os",
            ),
            (
                proto::DeviceFacts {
                    agent_version: "1\n2".into(),
                    ..facts()
                },
                "facts.agent_version",
            ),
        ];
        for (input, field) in cases {
            let e = DeviceFacts::try_from(input).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    fn record(ev: &AuditEvent) -> proto::AuditRecord {
        proto::AuditRecord {
            id: ev.id.to_string(),
            json: serde_json::to_vec(ev).unwrap(),
        }
    }

    fn ev() -> AuditEvent {
        let mut e = AuditEvent::new(
            EventKind::Interaction,
            DeviceRef {
                id: "other-device".into(),
                hostname: "h".into(),
                os: "linux".into(),
            },
            UserRef::default(),
        );
        e.interaction = Some(Interaction {
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            ..Default::default()
        });
        e
    }

    #[test]
    fn record_binds_to_certificate_device() {
        let e = ev();
        let inc = IncomingEvent::try_from(record(&e)).unwrap();
        let (row, spoofed) = inc.into_new_event("cert-device");
        assert!(spoofed);
        assert_eq!(row.id, e.id);
        assert_eq!(row.provider.as_deref(), Some("openai"));
        assert_eq!(row.decision.as_deref(), Some("allow"));
        let stored: AuditEvent = serde_json::from_str(&row.json).unwrap();
        assert_eq!(stored.device.id, "cert-device");
    }

    #[test]
    fn unknown_fields_from_newer_agents_are_kept() {
        let e = ev();
        let mut v = serde_json::to_value(&e).unwrap();
        v["future_field"] = serde_json::json!({"x": 1});
        let r = proto::AuditRecord {
            id: e.id.to_string(),
            json: serde_json::to_vec(&v).unwrap(),
        };
        let (row, _) = IncomingEvent::try_from(r).unwrap().into_new_event("d");
        let stored: serde_json::Value = serde_json::from_str(&row.json).unwrap();
        assert_eq!(stored["future_field"]["x"], 1);
        assert_eq!(stored["device"]["id"], "d");
    }

    #[test]
    fn non_object_json_is_rejected() {
        let e = ev();
        let r = proto::AuditRecord {
            id: e.id.to_string(),
            json: b"[1,2]".to_vec(),
        };
        assert!(matches!(
            IncomingEvent::try_from(r),
            Err(RecordProblem::BadJson(_))
        ));
    }

    #[test]
    fn bad_records_are_rejected_with_reasons() {
        let e = ev();
        let bad_id = proto::AuditRecord {
            id: "nope".into(),
            ..record(&e)
        };
        assert!(matches!(
            IncomingEvent::try_from(bad_id),
            Err(RecordProblem::BadId(_))
        ));
        let v4 = proto::AuditRecord {
            id: "8f2e5c1e-4b7a-4c7e-9d1a-2b3c4d5e6f70".into(),
            ..record(&e)
        };
        assert!(matches!(
            IncomingEvent::try_from(v4),
            Err(RecordProblem::NotV7(_))
        ));
        let bad_json = proto::AuditRecord {
            json: b"{not json".to_vec(),
            ..record(&e)
        };
        assert!(matches!(
            IncomingEvent::try_from(bad_json),
            Err(RecordProblem::BadJson(_))
        ));
        let other = proto::AuditRecord {
            id: Uuid::now_v7().to_string(),
            ..record(&e)
        };
        assert!(matches!(
            IncomingEvent::try_from(other),
            Err(RecordProblem::IdMismatch { .. })
        ));
    }

    #[test]
    fn inventory_items_validate() {
        let ok = proto::InventoryItem {
            kind: "mcp_server".into(),
            id: "fp1".into(),
            name: "github".into(),
            details_json: br#"{"command":"npx"}"#.to_vec(),
        };
        let r = InventoryRecord::try_from(ok.clone()).unwrap();
        assert_eq!(r.details, r#"{"command":"npx"}"#);
        let empty = InventoryRecord::try_from(proto::InventoryItem {
            details_json: vec![],
            ..ok.clone()
        })
        .unwrap();
        assert_eq!(empty.details, "{}");
        for (bad, field) in [
            (
                proto::InventoryItem {
                    kind: "MCP Server".into(),
                    ..ok.clone()
                },
                "kind",
            ),
            (
                proto::InventoryItem {
                    id: "".into(),
                    ..ok.clone()
                },
                "id",
            ),
            (
                proto::InventoryItem {
                    details_json: b"[1]".to_vec(),
                    ..ok.clone()
                },
                "details_json",
            ),
            (
                proto::InventoryItem {
                    details_json: b"{".to_vec(),
                    ..ok.clone()
                },
                "details_json",
            ),
        ] {
            assert_eq!(InventoryRecord::try_from(bad).unwrap_err().field, field);
        }
    }
}
