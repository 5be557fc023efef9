//! Event search and usage through the real admin API, on SQLite and (when
//! `PALISADE_TEST_POSTGRES_URL` is set) PostgreSQL: every filter alone and
//! combined, cursor paging while events arrive, free text, SQL and FTS
//! injection in every parameter, viewer redaction, usage sums.

mod support;

use chrono::{DateTime, Duration, TimeZone, Utc};
use palisade_core::{
    AppRef, AuditEvent, DeviceRef, EventKind, Finding, FindingLocation, Interaction, PolicyRef,
    RecordDecision, RequestCapture, ResponseCapture, Usage, UserRef,
};
use palisade_proto as proto;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
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

fn backend(srv: &TestServer) -> &'static str {
    if srv.cfg.store.postgres_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// One seeded interaction: everything a filter can look at.
#[derive(Debug, Clone)]
struct Spec {
    n: usize,
    device: usize,
    os_user: &'static str,
    email: Option<&'static str>,
    team: Option<&'static str>,
    app: &'static str,
    provider: &'static str,
    model: &'static str,
    decision: RecordDecision,
    detectors: Vec<&'static str>,
    prompt: String,
    response: String,
    time: DateTime<Utc>,
    input: u64,
    output: u64,
    cost: Option<f64>,
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 22, 0, 0).unwrap()
}

fn specs() -> Vec<Spec> {
    let users = ["alice", "bob", "carol"];
    let models = [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4"),
        ("openai", "gpt-4o-mini"),
        ("gemini", "gemini-2.5-pro"),
    ];
    (0..12)
        .map(|n| {
            let (provider, model) = models[n % 4];
            let mut prompt = format!("request number{n} about");
            if n % 3 == 0 {
                prompt.push_str(" the Invoice");
            }
            if n % 2 == 0 {
                prompt.push_str(" for the quarterly review");
            }
            if n == 4 {
                prompt.push_str(" from alice@example.com");
            }
            let response = if n == 7 {
                "Bananas are yellow".to_string()
            } else {
                format!("answer{n}")
            };
            let mut detectors = Vec::new();
            if n % 4 == 0 {
                detectors.push("aws_access_key");
            }
            if n % 6 == 0 {
                detectors.push("email");
            }
            Spec {
                n,
                device: usize::from(n >= 6),
                os_user: users[n % 3],
                email: (n % 3 != 2).then(|| ["alice@corp.test", "bob@corp.test"][n % 3]),
                team: (n % 3 != 2).then_some(if n % 3 == 0 { "legal" } else { "eng" }),
                app: if n % 2 == 0 { "Cursor" } else { "Claude Code" },
                provider,
                model,
                decision: match n % 5 {
                    0 => RecordDecision::Block,
                    1 => RecordDecision::Redact,
                    _ => RecordDecision::Allow,
                },
                detectors,
                prompt,
                response,
                // Every 3 hours: the 12 events span two UTC days.
                time: base_time() + Duration::hours(3 * n as i64),
                input: 100 + n as u64,
                output: 10 * n as u64,
                cost: (n % 4 != 3).then_some(0.25 * n as f64),
            }
        })
        .collect()
}

fn record(s: &Spec) -> proto::AuditRecord {
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef::default(),
        UserRef {
            os_user: Some(s.os_user.into()),
            email: s.email.map(Into::into),
            team: s.team.map(Into::into),
        },
    );
    ev.time = s.time;
    ev.app = Some(AppRef {
        name: Some(s.app.into()),
        ..Default::default()
    });
    ev.interaction = Some(Interaction {
        provider: s.provider.into(),
        model: Some(s.model.into()),
        request: RequestCapture {
            prompt: Some(s.prompt.clone()),
            ..Default::default()
        },
        response: ResponseCapture {
            text: Some(s.response.clone()),
            ..Default::default()
        },
        usage: Usage {
            input_tokens: Some(s.input),
            output_tokens: Some(s.output),
            cached_input_tokens: Some(s.n as u64),
            reasoning_tokens: None,
        },
        cost_usd: s.cost,
        policy: PolicyRef {
            decision: s.decision,
            ..Default::default()
        },
        findings: s
            .detectors
            .iter()
            .map(|d| Finding {
                detector: (*d).into(),
                action: "log".into(),
                location: FindingLocation::Request,
                path: None,
                count: 1,
            })
            .collect(),
        ..Default::default()
    });
    proto::AuditRecord {
        id: ev.id.to_string(),
        json: serde_json::to_vec(&ev).unwrap(),
    }
}

/// A server with the specs uploaded over gRPC (in spec order); returns the
/// device ids and each spec's event id.
async fn seed(srv: &TestServer, specs: &[Spec]) -> (Vec<String>, Vec<String>) {
    let devices = [srv.enroll_new("hw-a").await, srv.enroll_new("hw-b").await];
    let mut ids = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let r = record(s);
        ids.push(r.id.clone());
        let mut c = srv.clients(&devices[s.device]).await;
        let acks = upload(&mut c.audit, vec![batch(i as u64 + 1, vec![r])])
            .await
            .unwrap();
        assert_eq!(acked_ids(&acks[0]).len(), 1);
    }
    (devices.iter().map(|d| d.id.clone()).collect(), ids)
}

async fn get(srv: &TestServer, path_and_query: &str) -> (u16, Value) {
    srv.admin(Method::GET, path_and_query, None).await
}

/// The spec numbers an events query returns (asserting 200 and newest first).
async fn found(srv: &TestServer, ids: &[String], query: &str) -> Vec<usize> {
    let (status, v) = get(srv, &format!("/api/v1/events?{query}")).await;
    assert_eq!(status, 200, "{} {query}: {v}", backend(srv));
    let events = v["events"].as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    events
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            ids.iter().position(|x| x == id).expect("a seeded event")
        })
        .collect()
}

fn expect(specs: &[Spec], pred: impl Fn(&Spec) -> bool) -> Vec<usize> {
    // Seeded in spec order, listed newest first.
    specs
        .iter()
        .filter(|s| pred(s))
        .map(|s| s.n)
        .rev()
        .collect()
}

fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn every_filter_alone_and_combined() {
    let specs = specs();
    for srv in servers().await {
        let (devices, ids) = seed(&srv, &specs).await;
        let b = backend(&srv);
        let t = |h: i64| enc(&(base_time() + Duration::hours(h)).to_rfc3339());
        let ms = |h: i64| (base_time() + Duration::hours(h)).timestamp_millis();
        let cases: Vec<(String, Vec<usize>)> = vec![
            ("".into(), expect(&specs, |_| true)),
            ("user=bob".into(), expect(&specs, |s| s.os_user == "bob")),
            (
                "user=carol".into(),
                expect(&specs, |s| s.os_user == "carol"),
            ),
            (
                format!("user={}", enc("alice@corp.test")),
                expect(&specs, |s| s.email == Some("alice@corp.test")),
            ),
            (
                format!("device={}", devices[1]),
                expect(&specs, |s| s.device == 1),
            ),
            (
                format!("app={}", enc("Claude Code")),
                expect(&specs, |s| s.app == "Claude Code"),
            ),
            (
                "provider=openai".into(),
                expect(&specs, |s| s.provider == "openai"),
            ),
            (
                "model=gpt-4o".into(),
                expect(&specs, |s| s.model == "gpt-4o"),
            ),
            (
                "decision=block".into(),
                expect(&specs, |s| s.decision == RecordDecision::Block),
            ),
            (
                "decision=redact".into(),
                expect(&specs, |s| s.decision == RecordDecision::Redact),
            ),
            (
                "detector=aws_access_key".into(),
                expect(&specs, |s| s.detectors.contains(&"aws_access_key")),
            ),
            (
                "detector=email".into(),
                expect(&specs, |s| s.detectors.contains(&"email")),
            ),
            ("detector=nothing_found".into(), vec![]),
            ("kind=interaction".into(), expect(&specs, |_| true)),
            ("kind=app.discovered".into(), vec![]),
            (
                format!("since={}&until={}", t(9), t(21)),
                expect(&specs, |s| (3..7).contains(&s.n)),
            ),
            (
                format!("since={}&until={}", ms(9), ms(21)),
                expect(&specs, |s| (3..7).contains(&s.n)),
            ),
            ("q=invoice".into(), expect(&specs, |s| s.n % 3 == 0)),
            (
                "q=INVOICE%20quarterly".into(),
                expect(&specs, |s| s.n % 6 == 0),
            ),
            ("q=bananas".into(), vec![7]),
            (format!("q={}", enc("alice@example.com")), vec![4]),
            ("q=number5".into(), vec![5]),
            ("q=zeppelin".into(), vec![]),
            // Combinations.
            (
                "user=alice&provider=openai&decision=block".into(),
                expect(&specs, |s| {
                    s.os_user == "alice"
                        && s.provider == "openai"
                        && s.decision == RecordDecision::Block
                }),
            ),
            (
                format!("app=Cursor&q=quarterly&since={}", t(10)),
                expect(&specs, |s| {
                    s.app == "Cursor" && s.n % 2 == 0 && s.n * 3 >= 10
                }),
            ),
            (
                format!("detector=aws_access_key&device={}&q=invoice", devices[0]),
                expect(&specs, |s| {
                    s.detectors.contains(&"aws_access_key") && s.device == 0 && s.n % 3 == 0
                }),
            ),
        ];
        for (query, want) in cases {
            assert_eq!(found(&srv, &ids, &query).await, want, "{b}: {query}");
        }
        // The user filter picks up the e-mail and the OS user alike.
        assert!(!found(&srv, &ids, "user=alice").await.is_empty(), "{b}");
        srv.stop().await;
    }
}

#[tokio::test]
async fn cursor_pages_are_stable_while_events_arrive() {
    let specs = specs();
    for srv in servers().await {
        let b = backend(&srv);
        let (_, ids) = seed(&srv, &specs).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        let late = srv.enroll_new("hw-late").await;
        loop {
            let mut q = "/api/v1/events?limit=5".to_string();
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (status, v) = get(&srv, &q).await;
            assert_eq!(status, 200, "{b}: {v}");
            let page = v["events"].as_array().unwrap();
            seen.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_string()));
            pages += 1;
            // New events arrive between pages: they sort before page one,
            // so they never shift what the cursor has left to read.
            let mut c = srv.clients(&late).await;
            upload(&mut c.audit, vec![batch(pages, vec![record(&specs[0])])])
                .await
                .unwrap();
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{b}: 12 events in pages of 5");
        let want: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, want, "{b}: every event once, newest first");

        // Free text alone pages the same way (the text index yields the page).
        let mut texted = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = "/api/v1/events?limit=5&q=request".to_string();
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (status, v) = get(&srv, &q).await;
            assert_eq!(status, 200, "{b}: {v}");
            texted.extend(v["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let late_ones = texted.len() - want.len();
        assert_eq!(texted[late_ones..].to_vec(), want, "{b}: text paging, newest first");
        assert_eq!(late_ones, 3, "{b}: the three late copies of spec 0 match too");

        // `after` tails instead: oldest first, continued by `next_after`.
        let (status, v) = get(&srv, "/api/v1/events?after=0&limit=5&kind=interaction").await;
        assert_eq!(status, 200, "{b}: {v}");
        let first: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(first, ids[..5].iter().map(String::as_str).collect::<Vec<_>>(), "{b}");
        let next = v["next_after"].as_i64().unwrap();
        let (_, v) = get(&srv, &format!("/api/v1/events?after={next}&limit=5")).await;
        assert_eq!(v["events"][0]["id"], ids[5].as_str(), "{b}");
        let (status, v) = get(&srv, &format!("/api/v1/events?after=1&cursor={}", "c2VxOjU")).await;
        assert_eq!(status, 400, "{b}: after and cursor together: {v}");
        srv.stop().await;
    }
}

/// Hostile strings for every parameter. Each call must answer 400, or 200
/// with what the string literally means (nothing here matches a seeded
/// event, except words the seeded text really holds); never 5xx, and the
/// events table must be intact afterwards.
#[tokio::test]
async fn injection_in_every_parameter_is_refused_or_inert() {
    let specs = specs();
    let payloads = [
        "' OR 1=1 --",
        "'; DROP TABLE events; --",
        "\"; DROP TABLE events; --",
        "1) OR (1=1",
        "x' UNION SELECT seq, id, device_id, time, kind, json FROM events --",
        "\" OR \"\"=\"",
        "NEAR(a b)",
        "answer0 OR answer1",
        "answer0 NOT answer1",
        "* AND body:answer0",
        "\"unterminated",
        "answer0*",
        "^answer0",
        "{body}: answer0",
        "a\\' || pg_sleep(1) --",
        "!!! & | ( ) :",
        "%",
        "_",
    ];
    let params = [
        "user", "device", "app", "provider", "model", "decision", "detector", "kind", "since",
        "until", "q", "cursor", "limit",
    ];
    for srv in servers().await {
        let b = backend(&srv);
        let (_, ids) = seed(&srv, &specs).await;
        for p in params {
            for payload in payloads {
                let (status, v) = get(&srv, &format!("/api/v1/events?{p}={}", enc(payload))).await;
                let ctx = format!("{b}: {p}={payload:?}: {v}");
                match status {
                    400 => assert!(v["error"].as_str().unwrap().contains(p), "{ctx}"),
                    200 => {
                        let got: Vec<&str> = v["events"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e["id"].as_str().unwrap())
                            .collect();
                        // Free text is read as plain words, all required:
                        // "answer0 OR answer1" is three words no event holds,
                        // and "{body}: answer0" needs the word "body".
                        let allowed: &[usize] = match (p, payload) {
                            ("q", "answer0*" | "^answer0") => &[0],
                            _ => &[],
                        };
                        let want: Vec<&str> = allowed.iter().map(|&i| ids[i].as_str()).collect();
                        assert_eq!(got, want, "{ctx}");
                    }
                    _ => panic!("{ctx}: status {status}"),
                }
            }
        }
        assert_eq!(
            found(&srv, &ids, "limit=1000").await.len(),
            12,
            "{b}: table intact"
        );
        assert_eq!(
            found(&srv, &ids, "q=invoice").await.len(),
            4,
            "{b}: text index intact"
        );
        srv.stop().await;
    }
}

#[tokio::test]
async fn bad_parameters_get_a_400_naming_them() {
    for srv in servers().await {
        let b = backend(&srv);
        let long = "x".repeat(300);
        let cases = [
            ("decision=maybe", "decision"),
            ("kind=Interaction", "kind"),
            ("since=yesterday", "since"),
            ("until=2026-13-01T00:00:00Z", "until"),
            (
                "since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z",
                "since",
            ),
            ("limit=0", "limit"),
            ("limit=100000000", "limit"),
            ("limit=-1", "limit"),
            ("cursor=not-a-cursor", "cursor"),
            ("cursor=c2VxOi01", "cursor"), // "seq:-5"
            ("q=", "q"),
            ("q=%20%21%21", "q"),
            ("user=", "user"),
            ("unknown=1", "unknown"),
            ("q=a%00b", "q"),
        ];
        for (query, param) in cases {
            let (status, v) = get(&srv, &format!("/api/v1/events?{query}")).await;
            assert_eq!(status, 400, "{b}: {query}: {v}");
            assert!(
                v["error"].as_str().unwrap().contains(param),
                "{b}: {query}: {v}"
            );
        }
        let (status, v) = get(&srv, &format!("/api/v1/events?model={long}")).await;
        assert_eq!(status, 400, "{b}: {v}");
        let many_words = vec!["w"; 17].join("%20");
        let (status, v) = get(&srv, &format!("/api/v1/events?q={many_words}")).await;
        assert_eq!(status, 400, "{b}: {v}");
        // Several problems are reported at once.
        let (status, v) = get(&srv, "/api/v1/events?decision=x&limit=0&since=no").await;
        assert_eq!(status, 400);
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("decision") && msg.contains("limit") && msg.contains("since"),
            "{msg}"
        );
        let (status, _) = get(&srv, "/api/v1/events/not-a-uuid").await;
        assert_eq!(status, 400, "{b}");
        for (query, param) in [
            ("", "group_by"),
            ("group_by=os", "group_by"),
            ("group_by=user&since=never", "since"),
            ("group_by=user&extra=1", "extra"),
        ] {
            let (status, v) = get(&srv, &format!("/api/v1/usage?{query}")).await;
            assert_eq!(status, 400, "{b}: {query}: {v}");
            assert!(
                v["error"].as_str().unwrap().contains(param),
                "{b}: {query}: {v}"
            );
        }
        srv.stop().await;
    }
}

#[tokio::test]
async fn detail_by_id_and_viewer_never_sees_text() {
    let specs = specs();
    for srv in servers().await {
        let b = backend(&srv);
        let (_, ids) = seed(&srv, &specs).await;
        let (status, v) = get(&srv, &format!("/api/v1/events/{}", ids[7])).await;
        assert_eq!(status, 200, "{b}: {v}");
        assert_eq!(v["response"]["text"], "Bananas are yellow", "{b}");
        assert_eq!(v["request"]["prompt"], specs[7].prompt.as_str(), "{b}");
        assert!(v["seq"].as_i64().is_some());
        let (status, _) = get(&srv, "/api/v1/events/0190b0b0-0000-7000-8000-000000000000").await;
        assert_eq!(status, 404, "{b}");

        let (s, t) = srv
            .admin(
                Method::POST,
                "/api/v1/tokens",
                Some(json!({"name": "v", "role": "viewer"})),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        let viewer = t["token"].as_str().unwrap();
        let as_viewer = |path: String| {
            let req = srv.http().get(srv.url(&path)).bearer_auth(viewer);
            async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.json::<Value>().await.unwrap()
            }
        };
        let d = as_viewer(format!("/api/v1/events/{}", ids[7])).await;
        assert_eq!(d["id"], ids[7].as_str());
        assert!(
            d["request"]["prompt"].is_null() && d["response"]["text"].is_null(),
            "{b}: {d}"
        );
        assert_eq!(d["model"], specs[7].model, "{b}: metadata stays");
        // A viewer may not search the text either: which records match a
        // word would reveal the text the role hides.
        let r = srv
            .http()
            .get(srv.url("/api/v1/events?q=bananas"))
            .bearer_auth(viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{b}");
        let l = as_viewer("/api/v1/events?model=gpt-4o".into()).await;
        assert!(l["events"].as_array().unwrap().iter().all(|e| e["response"]["text"].is_null()), "{b}");
        srv.stop().await;
    }
}

#[tokio::test]
async fn usage_sums_match_the_records() {
    let specs = specs();
    for srv in servers().await {
        let b = backend(&srv);
        seed(&srv, &specs).await;
        // One non-interaction event must not count.
        let d = srv.enroll_new("hw-other").await;
        let mut other = AuditEvent::new(
            EventKind::AppDiscovered,
            DeviceRef::default(),
            UserRef::default(),
        );
        other.time = base_time();
        let mut c = srv.clients(&d).await;
        upload(
            &mut c.audit,
            vec![batch(
                1,
                vec![proto::AuditRecord {
                    id: other.id.to_string(),
                    json: serde_json::to_vec(&other).unwrap(),
                }],
            )],
        )
        .await
        .unwrap();

        for (group, key) in [
            (
                "user",
                (|s: &Spec| Some(s.email.unwrap_or(s.os_user).to_string()))
                    as fn(&Spec) -> Option<String>,
            ),
            ("team", |s: &Spec| s.team.map(str::to_string)),
            ("app", |s: &Spec| Some(s.app.to_string())),
            ("model", |s: &Spec| Some(s.model.to_string())),
            ("day", |s: &Spec| {
                Some(s.time.format("%Y-%m-%d").to_string())
            }),
        ] {
            let (status, v) = get(&srv, &format!("/api/v1/usage?group_by={group}")).await;
            assert_eq!(status, 200, "{b}: {v}");
            let groups = v["groups"].as_array().unwrap();
            let keys: BTreeSet<Option<String>> = specs.iter().map(key).collect();
            assert_eq!(groups.len(), keys.len(), "{b} {group}: {v}");
            for k in keys {
                let mine: Vec<&Spec> = specs.iter().filter(|s| key(s) == k).collect();
                let g = groups
                    .iter()
                    .find(|g| g["key"].as_str().map(str::to_string) == k)
                    .unwrap_or_else(|| panic!("{b} {group}: no group {k:?} in {v}"));
                let ctx = format!("{b} {group} {k:?}: {g}");
                assert_eq!(g["requests"], mine.len(), "{ctx}");
                assert_eq!(
                    g["input_tokens"],
                    mine.iter().map(|s| s.input).sum::<u64>(),
                    "{ctx}"
                );
                assert_eq!(
                    g["output_tokens"],
                    mine.iter().map(|s| s.output).sum::<u64>(),
                    "{ctx}"
                );
                assert_eq!(
                    g["cached_input_tokens"],
                    mine.iter().map(|s| s.n as u64).sum::<u64>(),
                    "{ctx}"
                );
                assert!(
                    g["reasoning_tokens"].is_null(),
                    "unknown stays unknown: {ctx}"
                );
                let priced: Vec<f64> = mine.iter().filter_map(|s| s.cost).collect();
                assert_eq!(g["priced_requests"], priced.len(), "{ctx}");
                assert_eq!(g["unpriced_requests"], mine.len() - priced.len(), "{ctx}");
                if priced.is_empty() {
                    assert!(g["cost_usd"].is_null(), "no price is not $0: {ctx}");
                } else {
                    let want: f64 = priced.iter().sum();
                    assert!(
                        (g["cost_usd"].as_f64().unwrap() - want).abs() < 1e-9,
                        "{ctx}"
                    );
                }
            }
        }
        // A time range narrows it: the first UTC day holds specs 0 and 1 (22:00, 01:00 next day is day 2).
        let until = enc(&Utc
            .with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
            .unwrap()
            .to_rfc3339());
        let (status, v) = get(&srv, &format!("/api/v1/usage?group_by=day&until={until}")).await;
        assert_eq!(status, 200, "{b}: {v}");
        assert_eq!(
            v["groups"],
            json!([{
                "key": "2026-03-01", "requests": 1, "input_tokens": 100, "output_tokens": 0,
                "cached_input_tokens": 0, "reasoning_tokens": null, "cost_usd": 0.0,
                "priced_requests": 1, "unpriced_requests": 0,
            }]),
            "{b}"
        );
        srv.stop().await;
    }
}
