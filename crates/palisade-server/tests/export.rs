//! `GET /api/v1/export` end to end: every format parsed back (syslog with a
//! strict RFC 5424 parser), filters, roles, bad input, and a huge export
//! streamed in bounded memory. PostgreSQL runs too when
//! `PALISADE_TEST_POSTGRES_URL` is set.

mod support;

use palisade_test_support::parse_rfc5424;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

async fn servers() -> Vec<TestServer> {
    let mut out = vec![TestServer::start().await];
    if let Some(url) = postgres_url() {
        let schema = fresh_schema();
        out.push(
            TestServer::start_with(move |cfg| {
                cfg.store.postgres_url = Some(url);
                cfg.store.postgres_schema = Some(schema);
            })
            .await,
        );
    }
    out
}

/// A record with a prompt full of characters syslog and JSON must escape.
fn rich_record(device: &str, provider: &str, decision: &str, i: usize) -> palisade_proto::AuditRecord {
    let mut rec = record(device, provider);
    let mut ev: Value = serde_json::from_slice(&rec.json).unwrap();
    ev["request"]["prompt"] = json!(format!("prompt {i}\nwith \"quotes\" ] and \\ backslash"));
    ev["policy"] = json!({"decision": decision, "rule": "r1", "version": 1});
    ev["user"] = json!({"os_user": "ann\"]", "email": "ann@example.com"});
    ev["app"] = json!({"name": "Claude Code", "exe": "/usr/bin/claude", "pid": 42});
    rec.json = serde_json::to_vec(&ev).unwrap();
    rec
}

/// Device A: 5 openai records (the 3rd blocked); device B: 3 anthropic.
async fn seed(srv: &TestServer) -> (Device, Device) {
    let a = srv.enroll_new("hw-export-a").await;
    let b = srv.enroll_new("hw-export-b").await;
    let recs: Vec<_> = (0..5)
        .map(|i| rich_record(&a.id, "openai", if i == 2 { "block" } else { "allow" }, i))
        .collect();
    let mut c = srv.clients(&a).await;
    assert_eq!(acked_ids(&upload(&mut c.audit, vec![batch(1, recs)]).await.unwrap()[0]).len(), 5);
    let recs: Vec<_> = (0..3).map(|i| rich_record(&b.id, "anthropic", "redact", i)).collect();
    let mut c = srv.clients(&b).await;
    assert_eq!(acked_ids(&upload(&mut c.audit, vec![batch(1, recs)]).await.unwrap()[0]).len(), 3);
    (a, b)
}

async fn get(srv: &TestServer, token: &str, query: &str) -> reqwest::Response {
    srv.http()
        .get(srv.url(&format!("/api/v1/export?{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn make_token(srv: &TestServer, name: &str, role: &str) -> String {
    let (s, v) = srv
        .admin(Method::POST, "/api/v1/tokens", Some(json!({"name": name, "role": role})))
        .await;
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Export `query` in all three formats; check they agree and return the records.
async fn export_all_formats(srv: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let r = get(srv, token, &format!("format=json&{query}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let cd = r.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(cd.starts_with("attachment; filename=\"palisade-events-") && cd.ends_with(".json\""), "{cd}");
    let from_json: Vec<Value> = serde_json::from_str(&r.text().await.unwrap()).unwrap();

    let r = get(srv, token, &format!("format=jsonl&{query}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let from_jsonl: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_jsonl, from_json);

    let r = get(srv, token, &format!("format=syslog&{query}")).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    let mut from_syslog = Vec::new();
    for line in text.lines() {
        let m = parse_rfc5424(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(m.app_name.as_deref(), Some("palisade"));
        assert_eq!(m.msgid.as_deref(), Some("interaction"));
        assert_eq!(m.hostname.as_deref(), Some("laptop-1"));
        assert!(m.bom);
        let v: Value = serde_json::from_str(m.msg.as_deref().unwrap()).unwrap();
        let sd = &m.sd[0];
        assert_eq!(sd.id, "palisade@32473");
        assert_eq!(sd.param("seq"), Some(v["seq"].to_string().as_str()));
        assert_eq!(sd.param("id"), v["id"].as_str());
        assert_eq!(sd.param("device"), v["device"]["id"].as_str());
        assert_eq!(sd.param("provider"), v["provider"].as_str());
        assert_eq!(sd.param("user"), Some("ann\"]"));
        assert_eq!(sd.param("app"), Some("Claude Code"));
        let decision = v["policy"]["decision"].as_str().unwrap();
        assert_eq!(sd.param("decision"), Some(decision));
        let want = match decision {
            "block" => 4,
            "redact" => 5,
            _ => 6,
        };
        assert_eq!((m.facility, m.severity), (13, want), "{line}");
        from_syslog.push(v);
    }
    assert_eq!(from_syslog, from_json);
    from_json
}

#[tokio::test]
async fn every_format_round_trips_with_filters_on_both_backends() {
    for srv in servers().await {
        let (a, b) = seed(&srv).await;
        let token = srv.admin_token.clone();
        let all = export_all_formats(&srv, &token, "").await;
        assert_eq!(all.len(), 8);
        let seqs: Vec<i64> = all.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order: {seqs:?}");
        assert_eq!(all[0]["request"]["prompt"], "prompt 0\nwith \"quotes\" ] and \\ backslash");
        // The export holds the same records as the events API (oldest first with `after`).
        let listed = srv.events("limit=100&after=0").await;
        assert_eq!(listed, all);

        let openai = export_all_formats(&srv, &token, "provider=openai").await;
        assert_eq!(openai.len(), 5);
        assert!(openai.iter().all(|v| v["device"]["id"] == a.id.as_str()));
        let dev_b = export_all_formats(&srv, &token, &format!("device={}", b.id)).await;
        assert_eq!(dev_b.len(), 3);
        let after = export_all_formats(&srv, &token, &format!("after={}", seqs[5])).await;
        assert_eq!(after.len(), 2);
        let none = export_all_formats(&srv, &token, "model=no-such-model").await;
        assert!(none.is_empty());
        let future = export_all_formats(&srv, &token, "since=2999-01-01T00:00:00Z").await;
        assert!(future.is_empty());
        srv.stop().await;
    }
}

#[tokio::test]
async fn auditors_export_viewers_cannot_and_exports_are_audited() {
    let srv = TestServer::start().await;
    seed(&srv).await;
    let auditor = make_token(&srv, "siem-export", "auditor").await;
    let viewer = make_token(&srv, "dash", "viewer").await;
    let approver = make_token(&srv, "approver", "approver").await;
    let r = get(&srv, &auditor, "format=jsonl").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().count(), 8);
    assert!(text.contains("prompt 0"), "auditors read content");
    for t in [&viewer, &approver] {
        assert_eq!(get(&srv, t, "format=jsonl").await.status(), 403);
    }
    assert_eq!(
        srv.http().get(srv.url("/api/v1/export?format=jsonl")).send().await.unwrap().status(),
        401
    );
    let (s, v) = srv.admin(Method::GET, "/api/v1/admin-audit", None).await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let exports: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "export" && e["target"]["type"] == "events")
        .collect();
    assert!(
        exports.iter().any(|e| e["actor"]["id"] == "siem-export" && e["outcome"] == "success" && e["details"]["format"] == "jsonl"),
        "{exports:?}"
    );
    assert!(exports.iter().any(|e| e["actor"]["id"] == "dash" && e["outcome"] == "failure"), "{exports:?}");
    srv.stop().await;
}

#[tokio::test]
async fn bad_export_queries_get_clear_errors() {
    let srv = TestServer::start().await;
    let t = srv.admin_token.clone();
    for (query, want) in [
        ("", "format: required"),
        ("format=csv", "\"csv\" is not one of json, jsonl, syslog"),
        ("format=json&format=jsonl", "more than once"),
        ("format=json&limit=10", "limit: not supported by export"),
        ("format=json&since=yesterday", "since: \"yesterday\" is not an RFC 3339 time"),
        ("format=json&since=bad&until=worse", "until: \"worse\""),
        ("format=json&colour=red", "colour"),
        ("format=json&after=x", "after"),
    ] {
        let r = get(&srv, &t, query).await;
        assert_eq!(r.status(), 400, "{query}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{query}: {msg}");
    }
    srv.stop().await;
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Security test: a 200k-record export (over 200 MB) streams with the
/// server (in this process) growing by far less than the export's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_export_stays_in_bounded_memory() {
    use futures_util::StreamExt;
    const N: usize = 200_000;
    let srv = TestServer::start().await;
    {
        let store = palisade_server::Store::open(&srv.cfg).await.unwrap();
        let prompt = "x".repeat(900);
        for chunk in 0..N / 1000 {
            let events: Vec<_> = (0..1000)
                .map(|i| {
                    let mut rec = record("dev-huge", "openai");
                    let mut ev: Value = serde_json::from_slice(&rec.json).unwrap();
                    ev["request"]["prompt"] = json!(format!("{chunk}-{i} {prompt}"));
                    rec.json = serde_json::to_vec(&ev).unwrap();
                    palisade_server::convert::IncomingEvent::try_from(rec).unwrap().into_new_event("dev-huge").0
                })
                .collect();
            store.insert_events("dev-huge", &events).await.unwrap();
        }
        store.close().await;
    }
    for format in ["jsonl", "syslog"] {
        let before = rss_bytes();
        let mut peak = before;
        let r = get(&srv, &srv.admin_token, &format!("format={format}")).await;
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let (mut bytes, mut lines, mut since_sample) = (0u64, 0usize, 0u64);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&c| c == b'\n').count();
            since_sample += chunk.len() as u64;
            if since_sample > 1 << 20 {
                since_sample = 0;
                peak = peak.max(rss_bytes());
            }
        }
        assert_eq!(lines, N, "{format}");
        assert!(bytes > 200 << 20, "{format}: export is {bytes} bytes");
        let growth = peak.saturating_sub(before);
        eprintln!("{format}: {bytes} bytes exported, RSS grew {} KiB", growth >> 10);
        assert!(growth < 64 << 20, "{format}: RSS grew {growth} bytes for a {bytes}-byte export");
    }
    srv.stop().await;
}

/// Run `sql` on the server's store through a connection of our own (test
/// sabotage only; the product never does this).
async fn sabotage(srv: &TestServer, sql: &str) {
    use sqlx::{ConnectOptions, Connection};
    match &srv.cfg.store.postgres_url {
        None => {
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(srv.cfg.sqlite_path())
                .busy_timeout(std::time::Duration::from_secs(10))
                .connect()
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        Some(url) => {
            let schema = srv.cfg.store.postgres_schema.clone().unwrap();
            let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
            let mut c = opts.options([("search_path", schema.as_str())]).connect().await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

/// A store failure part-way through ends the export with an error record
/// naming where it stopped: never a short file that looks complete.
#[tokio::test]
async fn a_store_failure_mid_export_ends_with_an_error_record() {
    fn has_a_whole_record(got: &[u8]) -> bool {
        let text = String::from_utf8_lossy(got);
        text.find("seq").is_some_and(|at| text[at..].contains('\n'))
    }
    use futures_util::StreamExt;
    for srv in servers().await {
        let dev = srv.enroll_new("hw-midway").await;
        let mut c = srv.clients(&dev).await;
        let big = "y".repeat(4000);
        for b in 0..6u64 {
            let recs: Vec<_> = (0..500)
                .map(|_| {
                    let mut rec = record(&dev.id, "openai");
                    let mut ev: Value = serde_json::from_slice(&rec.json).unwrap();
                    ev["request"]["prompt"] = json!(big);
                    rec.json = serde_json::to_vec(&ev).unwrap();
                    rec
                })
                .collect();
            assert_eq!(acked_ids(&upload(&mut c.audit, vec![batch(b + 1, recs)]).await.unwrap()[0]).len(), 500);
        }
        // 3000 records of 4 KB: far more than socket buffers hold, so the
        // server is still paging when the table goes away.
        for format in ["jsonl", "json", "syslog"] {
            let r = get(&srv, &srv.admin_token, &format!("format={format}")).await;
            assert_eq!(r.status(), 200);
            let mut body = r.bytes_stream();
            let mut got = Vec::new();
            // Sabotage only once a first record has arrived: a busy machine
            // may not have read the first page yet when the headers come.
            while !has_a_whole_record(&got) {
                got.extend_from_slice(&body.next().await.unwrap().unwrap());
            }
            sabotage(&srv, "ALTER TABLE events RENAME TO events_away").await;
            while let Some(chunk) = body.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            sabotage(&srv, "ALTER TABLE events_away RENAME TO events").await;
            let text = String::from_utf8(got).unwrap();
            let last = text.lines().last().unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let (marker, records, last_seq) = match format {
                "jsonl" => {
                    let prev: Value = serde_json::from_str(lines[lines.len() - 2]).unwrap();
                    (serde_json::from_str::<Value>(last).unwrap(), lines.len() - 1, prev["seq"].clone())
                }
                "json" => {
                    let all: Vec<Value> = serde_json::from_str(&text).expect("still a valid JSON array");
                    (all[all.len() - 1].clone(), all.len() - 1, all[all.len() - 2]["seq"].clone())
                }
                _ => {
                    let m = parse_rfc5424(last).unwrap();
                    assert_eq!(m.msgid.as_deref(), Some("export.error"));
                    assert_eq!(m.severity, 3);
                    let prev = parse_rfc5424(lines[lines.len() - 2]).unwrap();
                    let seq: i64 = prev.sd[0].param("seq").unwrap().parse().unwrap();
                    (serde_json::from_str(m.msg.as_deref().unwrap()).unwrap(), lines.len() - 1, json!(seq))
                }
            };
            assert_eq!(marker["export_error"], "store unavailable", "{format}");
            assert!(records > 0 && records < 3000, "{format}: {records} records before the failure");
            assert_eq!(records % 500, 0, "{format}: whole pages only");
            assert_eq!(marker["after_seq"], last_seq, "{format}: the resume point");
        }
        srv.stop().await;
    }
}
