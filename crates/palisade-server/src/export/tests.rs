use super::*;
use chrono::{TimeZone, Utc};
use palisade_test_support::parse_rfc5424;
use uuid::Uuid;

fn event(seq: i64, json: Value) -> StoredEvent {
    StoredEvent {
        seq,
        id: Uuid::now_v7(),
        device_id: "dev-1".into(),
        time: Utc.timestamp_millis_opt(1_767_323_045_678).unwrap(),
        kind: json["kind"].as_str().unwrap_or("interaction").to_string(),
        json: json.to_string(),
    }
}

fn nasty() -> Value {
    json!({
        "kind": "interaction",
        "device": {"id": "dev-1", "hostname": "ann's laptop\u{e9}"},
        "user": {"os_user": "ann\"]\\x", "email": "ann@example.com"},
        "app": {"name": "Claude\nCode"},
        "provider": "openai",
        "model": "gpt-4o",
        "policy": {"decision": "block", "rule": "r1", "version": 3},
        "request": {"prompt": "line1\nline2 ] \" \\"},
    })
}

#[test]
fn syslog_message_parses_strictly_and_round_trips_fields() {
    let ev = event(42, nasty());
    let v = record_value(&ev);
    let line = syslog_message(&ev, &v);
    assert!(!line.contains('\n'), "one line: {line}");
    let m = parse_rfc5424(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(m.version, 1);
    assert_eq!(m.facility, FACILITY);
    assert_eq!(m.severity, Severity::Warning as u8, "blocked is a warning");
    assert_eq!(m.timestamp.as_deref(), Some("2026-01-02T03:04:05.678Z"));
    assert_eq!(m.hostname.as_deref(), Some("ann's_laptop_"), "PRINTUSASCII only");
    assert_eq!(m.app_name.as_deref(), Some(APP_NAME));
    assert_eq!(m.msgid.as_deref(), Some("interaction"));
    assert!(m.bom);
    let sd = &m.sd[0];
    assert_eq!(sd.id, SD_ID);
    assert_eq!(sd.param("seq"), Some("42"));
    assert_eq!(sd.param("id"), Some(ev.id.to_string().as_str()));
    assert_eq!(sd.param("user"), Some("ann\"]\\x"), "escaped and unescaped back");
    assert_eq!(sd.param("app"), Some("Claude\u{fffd}Code"), "no raw newline");
    assert_eq!(sd.param("provider"), Some("openai"));
    assert_eq!(sd.param("decision"), Some("block"));
    let back: Value = serde_json::from_str(m.msg.as_deref().unwrap()).unwrap();
    assert_eq!(back, v, "MSG is the record");
    assert_eq!(back["request"]["prompt"], "line1\nline2 ] \" \\");
}

#[test]
fn severity_follows_the_decision() {
    let mut r = nasty();
    assert_eq!(severity("interaction", &r), Severity::Warning);
    r["policy"]["decision"] = json!("redact");
    assert_eq!(severity("interaction", &r), Severity::Notice);
    r["policy"]["decision"] = json!("allow");
    assert_eq!(severity("interaction", &r), Severity::Informational);
    assert_eq!(severity("mcp.blocked", &json!({})), Severity::Warning);
}

#[test]
fn absent_fields_are_left_out_or_nil() {
    let ev = event(1, json!({"kind": "app.discovered", "device": {"id": "d"}}));
    let m = parse_rfc5424(&syslog_message(&ev, &record_value(&ev))).unwrap();
    assert_eq!(m.hostname, None);
    assert_eq!(m.sd[0].param("provider"), None);
    assert_eq!(m.sd[0].param("device"), Some("dev-1"));
    assert_eq!(m.severity, Severity::Informational as u8);
}

#[test]
fn octet_frames_count_bytes_not_chars() {
    let mut out = Vec::new();
    octet_frame("é]", &mut out);
    octet_frame("x", &mut out);
    assert_eq!(out, "3 é]1 x".as_bytes());
}

#[test]
fn json_export_is_one_array_and_error_marker_keeps_it_valid() {
    let rows = [event(1, nasty()), event(2, nasty())];
    let mut e = Encoder::new(ExportFormat::Json, false, 0);
    let body = format!("{}{}{}{}", e.begin(), e.page(&rows[..1]), e.page(&rows[1..]), e.end());
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1]["seq"], 2);
    let empty = Encoder::new(ExportFormat::Json, false, 0);
    let v: Vec<Value> = serde_json::from_str(&format!("{}{}", empty.begin(), empty.end())).unwrap();
    assert!(v.is_empty());

    let mut e = Encoder::new(ExportFormat::Json, false, 0);
    let body = format!("{}{}{}", e.begin(), e.page(&rows[..1]), e.error("store unavailable"));
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.last().unwrap()["export_error"], "store unavailable");
    assert_eq!(v.last().unwrap()["after_seq"], 1);
}

#[test]
fn jsonl_and_syslog_error_markers_are_detectable() {
    let mut e = Encoder::new(ExportFormat::Jsonl, false, 7);
    let line = e.error("boom");
    let v: Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(v["export_error"], "boom");
    assert_eq!(v["after_seq"], 7);
    let mut e = Encoder::new(ExportFormat::Syslog, false, 7);
    let m = parse_rfc5424(e.error("boom").trim_end()).unwrap();
    assert_eq!(m.msgid.as_deref(), Some("export.error"));
    assert_eq!(m.severity, Severity::Error as u8);
    assert_eq!(m.sd[0].param("after_seq"), Some("7"));
}

#[test]
fn content_is_stripped_for_roles_that_may_not_read_it() {
    let mut e = Encoder::new(ExportFormat::Jsonl, true, 0);
    let out = e.page(&[event(1, nasty())]);
    let v: Value = serde_json::from_str(out.trim_end()).unwrap();
    assert_eq!(v["request"]["prompt"], Value::Null);
}

#[test]
fn non_object_rows_are_exported_with_a_warning_not_dropped() {
    let mut ev = event(9, json!({}));
    ev.json = "not json".into();
    let v = record_value(&ev);
    assert_eq!(v["seq"], 9);
    assert!(v["export_warning"].is_string());
}

#[test]
fn format_names() {
    assert_eq!("syslog".parse::<ExportFormat>(), Ok(ExportFormat::Syslog));
    let e = "csv".parse::<ExportFormat>().unwrap_err();
    assert!(e.to_string().contains("json, jsonl, syslog"), "{e}");
}

#[test]
fn capped_messages_drop_text_first_then_all_but_the_envelope() {
    let mut r = nasty();
    r["request"]["prompt"] = json!("p".repeat(20_000));
    let ev = event(5, r);
    let v = record_value(&ev);
    let full = syslog_message_capped(&ev, &v, 1 << 20);
    assert_eq!(full, syslog_message(&ev, &v), "under the cap: unchanged");

    let lean = syslog_message_capped(&ev, &v, 8192);
    assert!(lean.len() <= 8192, "{}", lean.len());
    let m = parse_rfc5424(&lean).unwrap();
    let back: Value = serde_json::from_str(m.msg.as_deref().unwrap()).unwrap();
    assert_eq!(back["request"]["prompt"], Value::Null);
    assert_eq!(back["provider"], "openai", "metadata stays");
    assert!(back["export_truncated"].as_str().unwrap().contains("8192"));
    assert_eq!(m.sd[0].param("decision"), Some("block"), "SD is untouched");

    let mut r = nasty();
    r["details"] = json!("d".repeat(20_000));
    let ev = event(6, r);
    let tiny = syslog_message_capped(&ev, &record_value(&ev), 2048);
    assert!(tiny.len() <= 2048, "{}", tiny.len());
    let m = parse_rfc5424(&tiny).unwrap();
    let back: Value = serde_json::from_str(m.msg.as_deref().unwrap()).unwrap();
    assert_eq!(back["seq"], 6);
    assert_eq!(back["details"], Value::Null);
    assert!(back["export_truncated"].as_str().unwrap().contains("envelope"));
}
