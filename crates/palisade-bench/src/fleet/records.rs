//! Realistic ~2 KB interaction records for the ingest load, made fast enough
//! that the generator measures the server rather than serde.
//!
//! Each device gets a few pre-serialised templates (varied prompt/response
//! text, usage, cost, timing); a record is a copy of one template with a
//! fresh UUIDv7 written over the placeholder id. Ids must never repeat: the
//! server treats a repeated id as already stored, which would inflate the
//! figures without writing anything.

use palisade_core::{
    AppRef, AuditEvent, DeviceRef, EventKind, Finding, FindingLocation, Interaction, PolicyRef, RecordDecision,
    RequestCapture, ResponseCapture, Timing, Usage, UserRef,
};
use palisade_proto as proto;
use uuid::Uuid;

/// Hyphenated length of a UUID.
const ID_LEN: usize = 36;
/// Target size of the serialised record, in bytes (the brief asks for ~2 KB).
pub const TARGET_RECORD_BYTES: usize = 2048;
const TEMPLATES_PER_DEVICE: usize = 8;

const PROMPT_PHRASES: &[&str] = &[
    "Refactor the following Rust function so that it no longer clones the request body on every retry. ",
    "Here is the stack trace we get in production when the uploader reconnects after a network change: ",
    "Summarise this customer e-mail thread for the account manager and list the open action items. ",
    "Write a SQL migration that adds an index on events(device_id, time) without locking the table. ",
    "Explain why this TypeScript generic does not narrow inside the switch statement below. ",
    "Draft a polite reply declining the vendor's proposal, keeping the door open for next quarter. ",
    "Review this Terraform plan and point out anything that would recreate the production database. ",
    "Translate the release notes into German, keeping product names and code identifiers unchanged. ",
];

const RESPONSE_PHRASES: &[&str] = &[
    "The clone happens because the body is moved into the future on each attempt; keep it in an Arc<Bytes> instead. ",
    "The trace shows the reconnect racing the shutdown signal, so the pending batch is dropped before its ack. ",
    "Key points: the renewal is due in March, legal has not signed off, and pricing needs a second review. ",
    "Use CREATE INDEX CONCURRENTLY in its own migration, outside a transaction, and verify it with EXPLAIN. ",
    "Narrowing fails because the discriminant is widened to string; declare the union with `as const`. ",
    "Thank you for the detailed proposal. After review we have decided not to proceed at this time, however ",
    "Two resources would be replaced: the parameter group change forces a new instance, and the subnet group. ",
    "Die folgenden Änderungen sind in dieser Version enthalten, einschließlich Fehlerbehebungen im Uploader. ",
];

const MODELS: &[(&str, &str, &str, &str)] = &[
    ("openai", "api.openai.com", "chat.completions", "gpt-4o"),
    ("anthropic", "api.anthropic.com", "messages", "claude-sonnet-4-5"),
    ("gemini", "generativelanguage.googleapis.com", "generateContent", "gemini-2.5-pro"),
    ("openai", "api.openai.com", "responses", "gpt-4.1-mini"),
];

const APPS: &[(&str, &str, &str)] = &[
    ("claude-code", "Claude Code", "/usr/local/bin/claude"),
    ("cursor", "Cursor", "/Applications/Cursor.app/Contents/MacOS/Cursor"),
    ("codex", "Codex CLI", "/opt/homebrew/bin/codex"),
    ("chatgpt", "ChatGPT", "/Applications/ChatGPT.app/Contents/MacOS/ChatGPT"),
];

/// Text of about `len` bytes made of whole phrases, starting at phrase `seed`.
fn text(phrases: &[&str], seed: usize, len: usize) -> String {
    let mut s = String::with_capacity(len + 128);
    let mut i = seed;
    while s.len() < len {
        s.push_str(phrases[i % phrases.len()]);
        i += 1;
    }
    // Phrases may hold non-ASCII text: cut on a character boundary.
    let mut cut = len.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

/// One serialised record with the byte offsets of its placeholder id.
struct Template {
    json: Vec<u8>,
    id_offsets: Vec<usize>,
}

/// Makes records for one device.
pub struct RecordFactory {
    templates: Vec<Template>,
    next: usize,
}

// === impl RecordFactory ===

impl RecordFactory {
    /// Templates for `device_id`, varied by `seed` so devices differ.
    pub fn new(device_id: &str, seed: usize) -> Self {
        let templates = (0..TEMPLATES_PER_DEVICE).map(|i| template(device_id, seed.wrapping_add(i))).collect();
        Self { templates, next: 0 }
    }

    /// A record with a fresh UUIDv7 (in `id` and in the JSON).
    pub fn record(&mut self) -> proto::AuditRecord {
        let t = &self.templates[self.next % self.templates.len()];
        self.next = self.next.wrapping_add(1);
        let mut buf = [0u8; ID_LEN];
        let id = Uuid::now_v7().hyphenated().encode_lower(&mut buf).to_string();
        let mut json = t.json.clone();
        for &at in &t.id_offsets {
            json[at..at + ID_LEN].copy_from_slice(id.as_bytes());
        }
        proto::AuditRecord { id, json }
    }

    /// A batch of `n` fresh records.
    pub fn batch(&mut self, batch_id: u64, n: usize) -> proto::EventBatch {
        proto::EventBatch { batch_id, events: (0..n).map(|_| self.record()).collect() }
    }
}

fn template(device_id: &str, seed: usize) -> Template {
    let (provider, host, endpoint, model) = MODELS[seed % MODELS.len()];
    let (app_id, app_name, exe) = APPS[seed % APPS.len()];
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef { id: device_id.into(), hostname: format!("laptop-{}", seed % 997), os: "macos 14.5".into() },
        UserRef { os_user: Some("ann".into()), email: Some("ann@example.com".into()), team: None },
    );
    ev.id = Uuid::nil();
    ev.app = Some(AppRef {
        id: Some(app_id.into()),
        name: Some(app_name.into()),
        exe: Some(exe.into()),
        pid: Some(40_000 + (seed % 20_000) as u32),
        unknown_reason: None,
    });
    let input_tokens = 300 + (seed % 700) as u64;
    let output_tokens = 150 + (seed % 400) as u64;
    let mut interaction = Interaction {
        provider: provider.into(),
        host: host.into(),
        endpoint: endpoint.into(),
        model: Some(model.into()),
        stream: seed.is_multiple_of(2),
        request: RequestCapture {
            prompt: Some(String::new()),
            params: serde_json::json!({"temperature": 0.2, "max_tokens": 1024, "tools": 3}),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            bytes: 4_000 + seed as u64 % 2_000,
            truncated: false,
        },
        response: ResponseCapture {
            status: Some(200),
            text: Some(String::new()),
            stop_reason: Some("end_turn".into()),
            bytes: 3_000 + seed as u64 % 1_500,
            truncated: false,
        },
        usage: Usage {
            input_tokens: Some(input_tokens),
            output_tokens: Some(output_tokens),
            cached_input_tokens: Some(input_tokens / 4),
            reasoning_tokens: None,
        },
        cost_usd: Some((input_tokens as f64 * 2.5 + output_tokens as f64 * 10.0) / 1e6),
        policy: PolicyRef { decision: RecordDecision::Allow, rule: None, version: 1 },
        findings: vec![Finding {
            detector: "email".into(),
            action: "log".into(),
            location: FindingLocation::Request,
            path: Some("messages[1]".into()),
            count: 1,
        }],
        timing: Timing { duration_ms: 800 + seed as u64 % 4_000, ttfb_ms: Some(250 + seed as u64 % 500) },
        error: None,
        guard_skipped: None,
    };
    // Size the texts so the whole record lands near the target.
    ev.interaction = Some(interaction.clone());
    let skeleton = serde_json::to_vec(&ev).expect("an AuditEvent always serialises").len();
    let room = TARGET_RECORD_BYTES.saturating_sub(skeleton);
    let prompt_len = room * 11 / 20;
    interaction.request.prompt = Some(text(PROMPT_PHRASES, seed, prompt_len));
    interaction.response.text = Some(text(RESPONSE_PHRASES, seed, room - prompt_len));
    ev.interaction = Some(interaction);
    let json = serde_json::to_vec(&ev).expect("an AuditEvent always serialises");
    let placeholder = Uuid::nil().hyphenated().to_string();
    let id_offsets = json
        .windows(ID_LEN)
        .enumerate()
        .filter(|(_, w)| *w == placeholder.as_bytes())
        .map(|(i, _)| i)
        .collect();
    Template { json, id_offsets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn records_are_about_two_kilobytes_and_valid_audit_events() {
        let mut f = RecordFactory::new("0190a000-0000-7000-8000-000000000001", 3);
        for _ in 0..TEMPLATES_PER_DEVICE * 2 {
            let r = f.record();
            let n = r.json.len();
            assert!((1900..=2200).contains(&n), "record is {n} bytes");
            let ev: AuditEvent = serde_json::from_slice(&r.json).unwrap();
            assert_eq!(ev.id.to_string(), r.id, "the JSON id must equal the record id");
            assert_eq!(ev.kind, EventKind::Interaction);
            let i = ev.interaction.unwrap();
            assert!(i.request.prompt.unwrap().len() > 500);
            assert!(i.response.text.unwrap().len() > 400);
        }
    }

    #[test]
    fn every_record_gets_a_fresh_id() {
        let mut f = RecordFactory::new("d", 0);
        let b = f.batch(7, 500);
        assert_eq!(b.batch_id, 7);
        let ids: HashSet<_> = b.events.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), 500);
        assert!(b.events.iter().all(|r| Uuid::parse_str(&r.id).unwrap().get_version_num() == 7));
    }

    #[test]
    fn templates_hold_exactly_one_placeholder_id() {
        for seed in 0..16 {
            let t = template("device", seed);
            assert_eq!(t.id_offsets.len(), 1, "seed {seed}");
        }
    }

    #[test]
    fn text_cuts_on_a_character_boundary() {
        // RESPONSE_PHRASES[7] is German with multi-byte characters.
        for len in 0..300 {
            let s = text(&RESPONSE_PHRASES[7..], 0, len);
            assert!(s.len() <= len && s.len() + 4 > len, "len {len} gave {}", s.len());
        }
    }
}
