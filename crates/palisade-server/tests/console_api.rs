//! The console's server side through the real server over HTTP: sign-in
//! sessions (cookie flags, hashed storage, expiry, sign-out), CSRF on
//! cookie-authenticated calls, RBAC unchanged for sessions, the policy
//! history / diff / validate API and the overview counts. Runs on SQLite,
//! and on PostgreSQL when `PALISADE_TEST_POSTGRES_URL` is set.

mod support;

use palisade_server::admin::audit::AuditEntry;
use palisade_server::tokens::hash_token;
use palisade_server::Store;
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

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// POST the sign-in form; returns (status, Location, Set-Cookie).
async fn sign_in(srv: &TestServer, token: &str) -> (u16, String, Option<String>) {
    sign_in_with(srv, token, &[]).await
}

async fn sign_in_with(
    srv: &TestServer,
    token: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut req = no_redirects().post(srv.url("/console/login"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .header("content-type", "application/x-www-form-urlencoded")
        .header("user-agent", "console-test/1")
        .body(format!("token={}", token.replace('+', "%2B")))
        .send()
        .await
        .unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), loc, cookie)
}

/// The cookie value from a Set-Cookie header.
fn session_of(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap();
    first.strip_prefix("palisade_session=").unwrap().to_string()
}

async fn with_cookie(
    srv: &TestServer,
    method: Method,
    path: &str,
    session: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = no_redirects()
        .request(method, srv.url(path))
        .header("cookie", format!("palisade_session={session}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn entries(store: &Store) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.admin_audit_page(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page.iter().map(AuditEntry::from_row));
    }
    out
}

async fn sessions_scenario(srv: TestServer) {
    let store = Store::open(&srv.cfg).await.unwrap();

    // A wrong token: back to the sign-in page with an error, no cookie, audited.
    let (s, loc, cookie) = sign_in(&srv, "pal_admin_wrong").await;
    assert_eq!(
        (s, loc.as_str(), cookie),
        (303, "/?error=invalid_token", None)
    );
    let (s, loc, _) = sign_in(&srv, "").await;
    assert_eq!((s, loc.as_str()), (303, "/?error=missing_token"));
    let log = entries(&store).await;
    let fails: Vec<_> = log
        .iter()
        .filter(|e| e.action == "login" && e.target.kind == "console-session")
        .collect();
    assert_eq!(fails.len(), 2, "{log:?}");
    assert!(fails
        .iter()
        .all(|e| e.outcome == "failure" && e.actor.id == "unknown"));
    assert_eq!(fails[0].details["reason"], "invalid token");

    // The admin token: a session cookie with the strict flags.
    let (s, loc, cookie) = sign_in(&srv, &srv.admin_token).await;
    assert_eq!((s, loc.as_str()), (303, "/"));
    let cookie = cookie.expect("Set-Cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    // Behind a TLS-terminating proxy the cookie is Secure.
    let (_, _, tls) = sign_in_with(&srv, &srv.admin_token, &[("x-forwarded-proto", "https")]).await;
    assert!(tls.unwrap().contains("; Secure"));
    let sid = session_of(&cookie);
    assert_eq!(sid.len(), 43, "256 bits, base64url");
    // Stored hashed: the hash finds it, the raw id does not.
    let now = chrono::Utc::now().timestamp_millis();
    let live = store
        .live_session(&hash_token(&sid), now, now - 1000)
        .await
        .unwrap()
        .expect("live session");
    assert_eq!(
        (live.token_name.as_str(), live.role.as_str()),
        ("test-admin", "admin")
    );
    assert!(store.live_session(&sid, now, 0).await.unwrap().is_none());
    // Expiry and idle timeout end it (asked with a later clock, no waiting).
    let later = now + 13 * 3600 * 1000;
    assert!(store
        .live_session(&hash_token(&sid), later, 0)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .live_session(&hash_token(&sid), now, now + 31 * 60 * 1000)
        .await
        .unwrap()
        .is_none());
    let ok = entries(&store).await;
    let signed_in = ok
        .iter()
        .find(|e| e.action == "login" && e.outcome == "success")
        .unwrap();
    assert_eq!(signed_in.actor.id, "test-admin");
    assert_eq!(signed_in.target.id, live.public_id);
    assert_eq!(signed_in.user_agent.as_deref(), Some("console-test/1"));

    let (s, who) = with_cookie(&srv, Method::GET, "/console/session", &sid, &[], None).await;
    assert_eq!(s, 200, "{who}");
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str()),
        (Some("test-admin"), Some("admin"))
    );
    let csrf = who["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(csrf.len(), 64);
    let perms = who["permissions"].to_string();
    assert!(
        perms.contains("PUT /api/v1/policy") && perms.contains("GET /api/v1/admin-audit"),
        "{perms}"
    );

    // Reads need no CSRF token.
    let (s, _) = with_cookie(&srv, Method::GET, "/api/v1/devices", &sid, &[], None).await;
    assert_eq!(s, 200);

    // Unsafe calls: missing, wrong, cross-origin → 403 and audited; right → allowed.
    let body = Some(json!({"max_uses": 1}));
    let path = "/api/v1/enrollment-tokens";
    let wrong_csrf = "0".repeat(64);
    let evil_origin: &[(&str, &str)] =
        &[("x-csrf-token", &csrf), ("origin", "http://evil.example")];
    let cross_fetch: &[(&str, &str)] = &[("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")];
    for (headers, reason) in [
        (&[][..], "CSRF token missing"),
        (
            &[("x-csrf-token", wrong_csrf.as_str())][..],
            "CSRF token wrong",
        ),
        (evil_origin, "cross-origin request (Origin)"),
        (cross_fetch, "cross-site request (Sec-Fetch-Site)"),
    ] {
        let before = entries(&store).await.len();
        let (s, v) = with_cookie(&srv, Method::POST, path, &sid, headers, body.clone()).await;
        assert_eq!((s, v["error"].as_str()), (403, Some(reason)), "{headers:?}");
        let new = entries(&store).await;
        assert_eq!(new.len(), before + 1, "refusal audited");
        let e = new.last().unwrap();
        assert_eq!(
            (
                e.outcome.as_str(),
                e.actor.id.as_str(),
                e.details["reason"].as_str()
            ),
            ("failure", "test-admin", Some(reason))
        );
    }
    let (s, v) = with_cookie(
        &srv,
        Method::POST,
        path,
        &sid,
        &[("x-csrf-token", &csrf)],
        body.clone(),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let made = entries(&store).await.pop().unwrap();
    assert_eq!(
        (
            made.action.as_str(),
            made.outcome.as_str(),
            made.details["via"].as_str()
        ),
        ("create", "success", Some("session"))
    );
    // Another session's CSRF token does not work for this one.
    let (_, _, other) = sign_in(&srv, &srv.admin_token).await;
    let other = session_of(&other.unwrap());
    let (s, v) = with_cookie(&srv, Method::GET, "/console/session", &other, &[], None).await;
    assert_eq!(s, 200);
    let other_csrf = v["csrf_token"].as_str().unwrap().to_string();
    assert_ne!(other_csrf, csrf);
    let (s, _) = with_cookie(
        &srv,
        Method::POST,
        path,
        &sid,
        &[("x-csrf-token", &other_csrf)],
        body.clone(),
    )
    .await;
    assert_eq!(s, 403);

    // RBAC is the same through a session: a viewer cannot read policy or
    // publish one, and sees events without prompt text.
    let (s, v) = srv
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "dash", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, _, vc) = sign_in(&srv, v["token"].as_str().unwrap()).await;
    let vsid = session_of(&vc.unwrap());
    let (s, _) = with_cookie(&srv, Method::GET, "/api/v1/policy", &vsid, &[], None).await;
    assert_eq!(s, 403);
    let (_, vwho) = with_cookie(&srv, Method::GET, "/console/session", &vsid, &[], None).await;
    let vcsrf = vwho["csrf_token"].as_str().unwrap().to_string();
    let vperms = vwho["permissions"].to_string();
    assert!(
        vperms.contains("GET /api/v1/events") && !vperms.contains("/api/v1/policy"),
        "{vperms}"
    );
    let (s, _) = with_cookie(
        &srv,
        Method::PUT,
        "/api/v1/policy",
        &vsid,
        &[("x-csrf-token", &vcsrf)],
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = with_cookie(&srv, Method::GET, "/api/v1/overview", &vsid, &[], None).await;
    assert_eq!(s, 200);

    // Revoking the token ends its sessions at once.
    let vid = v["id"].as_str().unwrap().to_string();
    let (s, r) = srv
        .admin(Method::POST, &format!("/api/v1/tokens/{vid}/revoke"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, _) = with_cookie(&srv, Method::GET, "/api/v1/overview", &vsid, &[], None).await;
    assert_eq!(s, 401, "a revoked token's session is over");
    let (s, _) = with_cookie(&srv, Method::GET, "/console/session", &vsid, &[], None).await;
    assert_eq!(s, 401);
    let (s, loc, cookie) = sign_in(&srv, v["token"].as_str().unwrap()).await;
    assert_eq!(
        (s, loc.as_str(), cookie),
        (303, "/?error=invalid_token", None)
    );

    // A bad cookie is a 401, audited like a bad token.
    let (s, v) = with_cookie(&srv, Method::GET, "/api/v1/devices", "nope", &[], None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("session expired: sign in again"))
    );
    assert_eq!(entries(&store).await.pop().unwrap().actor.id, "unknown");

    // Sign-out needs the CSRF token too, then the session is gone.
    let (s, _) = with_cookie(&srv, Method::POST, "/console/logout", &sid, &[], None).await;
    assert_eq!(s, 403);
    let r = no_redirects()
        .post(srv.url("/console/logout"))
        .header("cookie", format!("palisade_session={sid}"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cleared = r.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cleared.starts_with("palisade_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let (s, _) = with_cookie(&srv, Method::GET, "/api/v1/devices", &sid, &[], None).await;
    assert_eq!(s, 401);
    let (s, _) = with_cookie(&srv, Method::GET, "/console/session", &sid, &[], None).await;
    assert_eq!(s, 401);
    let out = entries(&store).await;
    assert!(out.iter().any(|e| e.action == "delete"
        && e.target.kind == "console-session"
        && e.outcome == "success"));

    // Never a token, session id or CSRF token in the log.
    let everything = serde_json::to_string(&out).unwrap();
    for secret in [srv.admin_token.as_str(), &sid, &csrf, &hash_token(&sid)] {
        assert!(!everything.contains(secret), "secret in the audit log");
    }
    store.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn sessions_and_csrf() {
    for srv in servers().await {
        sessions_scenario(srv).await;
    }
}

#[tokio::test]
async fn cross_site_sign_in_is_refused() {
    let srv = TestServer::start().await;
    let r = no_redirects()
        .post(srv.url("/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body(format!("token={}", srv.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn console_pages_carry_strict_headers() {
    let srv = TestServer::start().await;
    for (path, ty) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = srv.http().get(srv.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ty),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for d in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(d), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let html = srv
        .http()
        .get(srv.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("onclick="),
        "no inline script"
    );
    // The API keeps its auth: the console does not open it.
    let r = srv
        .http()
        .get(srv.url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

async fn policy_scenario(srv: TestServer) {
    let (_, cur) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    let mut doc = cur["document"].clone();
    let (s, v1) = srv
        .admin(Method::PUT, "/api/v1/policy", Some(doc.clone()))
        .await;
    assert_eq!(s, 200, "{v1}");
    let v1 = v1["version"].as_u64().unwrap();
    doc["capture"] = json!("metadata");
    doc["never_intercept"] = json!(["bank.example.com"]);
    let (s, v2) = srv
        .admin(Method::PUT, "/api/v1/policy", Some(doc.clone()))
        .await;
    assert_eq!(s, 200, "{v2}");
    let v2 = v2["version"].as_u64().unwrap();

    let (s, list) = srv
        .admin(Method::GET, "/api/v1/policy/versions", None)
        .await;
    assert_eq!(s, 200, "{list}");
    let versions: Vec<u64> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![v2, v1], "newest first");
    assert_eq!(list["versions"][0]["author"], "test-admin");
    assert_eq!(list["current"], json!(v2));
    let (_, page) = srv
        .admin(Method::GET, "/api/v1/policy/versions?limit=1", None)
        .await;
    assert_eq!(page["versions"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_before"], json!(v2));
    let (_, rest) = srv
        .admin(
            Method::GET,
            &format!("/api/v1/policy/versions?before={v2}"),
            None,
        )
        .await;
    assert_eq!(rest["versions"][0]["version"], json!(v1));

    let (s, got) = srv
        .admin(Method::GET, &format!("/api/v1/policy/versions/{v2}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(got["document"]["capture"], "metadata");

    let (s, d) = srv
        .admin(
            Method::GET,
            &format!("/api/v1/policy/diff?from={v1}&to={v2}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{d}");
    let changed = d["changed"].as_array().unwrap();
    assert!(
        changed
            .iter()
            .any(|c| c["path"] == "capture" && c["new"] == "metadata"),
        "{d}"
    );
    let all = format!("{}{}", d["added"], d["changed"]);
    assert!(all.contains("bank.example.com"), "{d}");
    assert!(
        d["unified"]
            .as_str()
            .unwrap()
            .contains("+  \"capture\": \"metadata\""),
        "{d}"
    );

    // Bad inputs: each named clearly.
    for (path, status, needle) in [
        (
            "/api/v1/policy/versions/abc",
            400,
            "version: \"abc\" is not a policy version",
        ),
        ("/api/v1/policy/versions/0", 400, "is not a policy version"),
        ("/api/v1/policy/versions/999", 404, "no policy version 999"),
        (
            "/api/v1/policy/versions?limit=0",
            400,
            "limit: must be 1..=1000",
        ),
        ("/api/v1/policy/versions?colour=red", 400, "unknown field"),
        (
            "/api/v1/policy/diff",
            400,
            "from: required (a policy version); to: required",
        ),
        (
            "/api/v1/policy/diff?from=1&to=x",
            400,
            "to: \"x\" is not a policy version",
        ),
        (
            "/api/v1/policy/diff?from=1&to=999",
            404,
            "no policy version 999",
        ),
    ] {
        let (s, v) = srv.admin(Method::GET, path, None).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{path}: {v}");
    }

    // Validate: every error, nothing stored.
    let mut bad = doc.clone();
    bad["apps"] = json!({"rules": [{"id": "", "decision": "allow"}, {"id": "x", "decision": "allow"}, {"id": "X", "decision": "deny"}]});
    bad["guardrails"]["custom"] = json!([{"id": "broken", "regex": "(unclosed"}]);
    let (s, v) = srv
        .admin(Method::POST, "/api/v1/policy/validate", Some(bad))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert!(errors.len() >= 2, "every problem listed: {v}");
    let text = v["errors"].to_string();
    assert!(
        text.contains("id is empty") && text.contains("duplicate id"),
        "{v}"
    );
    assert!(text.contains("broken"), "guardrail compile errors too: {v}");
    let r = srv
        .http()
        .post(srv.url("/api/v1/policy/validate"))
        .bearer_auth(&srv.admin_token)
        .body("{\"capture\": ")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["diff"].is_null()),
        (Some(false), true),
        "{v}"
    );
    assert!(v["errors"][0]
        .as_str()
        .unwrap()
        .contains("not a valid policy document"));
    let mut good = doc.clone();
    good["capture"] = json!("full");
    let (s, v) = srv
        .admin(Method::POST, "/api/v1/policy/validate", Some(good))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (v["valid"].as_bool(), v["errors"].as_array().unwrap().len()),
        (Some(true), 0),
        "{v}"
    );
    assert_eq!(v["diff"]["from"], json!(v2));
    assert_eq!(v["diff"]["changed"][0]["path"], "capture");
    let (_, after) = srv
        .admin(Method::GET, "/api/v1/policy/versions", None)
        .await;
    assert_eq!(
        after["versions"].as_array().unwrap().len(),
        2,
        "validate stores nothing"
    );
    srv.stop().await;
}

#[tokio::test]
async fn policy_history_diff_and_validate() {
    for srv in servers().await {
        policy_scenario(srv).await;
    }
}

async fn overview_scenario(srv: TestServer) {
    let (s, o) = srv.admin(Method::GET, "/api/v1/overview", None).await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["devices"]["total"], 0);
    assert_eq!(o["pending_approvals"], 0);
    let d = srv.enroll_new("hw-ov-1").await;
    let mut c = srv.clients(&d).await;
    c.inventory
        .report(palisade_proto::InventoryReport {
            items: vec![palisade_proto::InventoryItem {
                kind: palisade_proto::INVENTORY_KIND_APP.into(),
                id: "cursor".into(),
                name: "Cursor".into(),
                details_json: b"{}".to_vec(),
            }],
            full_snapshot: true,
            observed_at_unix_ms: 0,
        })
        .await
        .unwrap();
    let (_, o) = srv.admin(Method::GET, "/api/v1/overview", None).await;
    assert_eq!(o["devices"]["total"], 1, "{o}");
    assert_eq!(o["devices"]["online"], 1, "{o}");
    assert_eq!(o["devices"]["on_old_policy"], 1, "never applied one: {o}");
    assert_eq!(o["pending_approvals"], 1, "{o}");
    assert_eq!(o["requests_by_day"], json!([]), "{o}");
    // Interactions count per day and model, and per app.
    let mut recs = vec![
        record(&d.id, "openai"),
        record(&d.id, "openai"),
        record(&d.id, "anthropic"),
    ];
    let mut other: palisade_core::AuditEvent = serde_json::from_slice(&recs[2].json).unwrap();
    other.interaction.as_mut().unwrap().model = Some("claude-sonnet-4".into());
    other.app = Some(palisade_core::AppRef {
        id: Some("cursor".into()),
        name: Some("Cursor".into()),
        ..Default::default()
    });
    recs[2].json = serde_json::to_vec(&other).unwrap();
    upload(&mut c.audit, vec![batch(1, recs)]).await.unwrap();
    let (_, o) = srv.admin(Method::GET, "/api/v1/overview", None).await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(
        o["requests_by_day"],
        json!([
            {"day": today, "model": "gpt-4o", "requests": 2},
            {"day": today, "model": "claude-sonnet-4", "requests": 1},
        ]),
        "{o}"
    );
    assert_eq!(
        o["top_apps"],
        json!([{"app": "Cursor", "requests": 1}]),
        "{o}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn overview_counts_devices_and_pending() {
    for srv in servers().await {
        overview_scenario(srv).await;
    }
}

/// Overview and usage latency over a store holding many interactions
/// (uploaded through the real gRPC path), on SQLite and, when set,
/// PostgreSQL. Prints figures; asserts nothing about time.
///   PALISADE_OVERVIEW_EVENTS=100000 cargo test -p palisade-server --test console_api -- --ignored --nocapture
#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn overview_latency_with_many_events() {
    let n: usize = std::env::var("PALISADE_OVERVIEW_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    for srv in servers().await {
        let backend = if srv.cfg.store.postgres_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        let d = srv.enroll_new("hw-measure").await;
        let mut c = srv.clients(&d).await;
        let models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-pro"];
        let started = std::time::Instant::now();
        let mut sent = 0;
        let mut batch_id = 0;
        while sent < n {
            let recs: Vec<_> = (0..1000.min(n - sent))
                .map(|i| {
                    let mut r = record(&d.id, "openai");
                    let mut ev: palisade_core::AuditEvent =
                        serde_json::from_slice(&r.json).unwrap();
                    ev.interaction.as_mut().unwrap().model = Some(models[(sent + i) % 4].into());
                    ev.app = Some(palisade_core::AppRef {
                        name: Some(format!("app-{}", (sent + i) % 17)),
                        ..Default::default()
                    });
                    r.json = serde_json::to_vec(&ev).unwrap();
                    r
                })
                .collect();
            sent += recs.len();
            batch_id += 1;
            upload(&mut c.audit, vec![batch(batch_id, recs)])
                .await
                .unwrap();
        }
        let ingest = started.elapsed();
        let time = |path: &'static str| {
            let srv = &srv;
            async move {
                let mut runs = Vec::new();
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    let (s, _) = srv.admin(Method::GET, path, None).await;
                    runs.push(t.elapsed());
                    assert_eq!(s, 200, "{path}");
                }
                runs.sort();
                runs[2]
            }
        };
        let overview = time("/api/v1/overview").await;
        let usage = time("/api/v1/usage?group_by=day").await;
        println!(
            "{backend}: {n} interactions uploaded in {:.1} s; GET /api/v1/overview median {:.1} ms; \
             GET /api/v1/usage?group_by=day median {:.1} ms",
            ingest.as_secs_f64(),
            overview.as_secs_f64() * 1e3,
            usage.as_secs_f64() * 1e3
        );
        srv.stop().await;
    }
}
