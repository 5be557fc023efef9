//! The web console in a real headless Chromium (Debian's `chromium`, driven
//! through `chromedriver`), against the real server with data uploaded over
//! the real gRPC path: sign in (and a wrong token), the overview, a
//! one-click approval, a free-text event search and its detail view, a
//! prompt holding `<script>` / `onerror` markup shown as text, CSRF refused
//! for a same-origin fetch without the token and for a cross-site form, the
//! policy editor's validate / diff / save, the audit viewer, and a viewer
//! who sees no prompt text. Screenshots land in
//! `target/console-screenshots/`.
//!
//! Without chromium/chromedriver the tests print a notice and pass, unless
//! `PALISADE_REQUIRE_BROWSER=1` (CI sets it), where they fail.

mod support;
#[path = "support/webdriver.rs"]
mod webdriver;

use palisade_core::{
    AppRef, AuditEvent, DeviceRef, EventKind, Finding, FindingLocation, Interaction, PolicyRef,
    RecordDecision, RequestCapture, ResponseCapture, Usage, UserRef,
};
use palisade_proto as proto;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;
use webdriver::Browser;

const XSS: &str = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>";

fn interaction(
    d: &Device,
    user: &str,
    app: &str,
    model: &str,
    prompt: &str,
    answer: &str,
    findings: Vec<Finding>,
) -> proto::AuditRecord {
    let mut ev = AuditEvent::new(
        EventKind::Interaction,
        DeviceRef {
            id: d.id.clone(),
            hostname: "laptop-1".into(),
            os: "linux".into(),
        },
        UserRef {
            os_user: Some(user.split('@').next().unwrap().into()),
            email: Some(user.into()),
            team: None,
        },
    );
    ev.app = Some(AppRef {
        id: Some(app.into()),
        name: Some(app.into()),
        exe: Some(format!("/usr/bin/{app}")),
        pid: Some(4242),
        unknown_reason: None,
    });
    ev.interaction = Some(Interaction {
        provider: "openai".into(),
        host: "api.openai.com".into(),
        endpoint: "chat.completions".into(),
        model: Some(model.into()),
        request: RequestCapture {
            prompt: Some(prompt.into()),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            ..Default::default()
        },
        response: ResponseCapture {
            status: Some(200),
            text: Some(answer.into()),
            stop_reason: Some("stop".into()),
            ..Default::default()
        },
        usage: Usage {
            input_tokens: Some(120),
            output_tokens: Some(48),
            ..Default::default()
        },
        cost_usd: Some(0.0123),
        policy: PolicyRef {
            decision: RecordDecision::Allow,
            rule: None,
            version: 1,
        },
        findings,
        ..Default::default()
    });
    proto::AuditRecord {
        id: ev.id.to_string(),
        json: serde_json::to_vec(&ev).unwrap(),
    }
}

fn inventory_item(kind: &str, id: &str, name: &str) -> proto::InventoryItem {
    proto::InventoryItem {
        kind: kind.into(),
        id: id.into(),
        name: name.into(),
        details_json: br#"{"clients":["cursor"]}"#.to_vec(),
    }
}

/// A server with one device, three interactions (one with markup in its
/// prompt) and two items pending approval.
async fn seeded() -> (TestServer, Vec<String>) {
    let srv = TestServer::start().await;
    let d = srv.enroll_new("hw-console").await;
    let mut c = srv.clients(&d).await;
    let email = Finding {
        detector: "email".into(),
        action: "redact".into(),
        location: FindingLocation::Request,
        path: None,
        count: 1,
    };
    let records = vec![
        interaction(
            &d,
            "ann@example.com",
            "cursor",
            "gpt-4o",
            "Summarise the Q3 revenue report for ann@example.com",
            "Revenue grew 12% quarter on quarter.",
            vec![email],
        ),
        interaction(
            &d,
            "bob@example.com",
            "claude-code",
            "claude-sonnet-4",
            XSS,
            "<b>not bold</b>",
            vec![],
        ),
        interaction(
            &d,
            "ann@example.com",
            "cursor",
            "gpt-4o-mini",
            "Write a haiku about firewalls",
            "Packets at the gate",
            vec![],
        ),
    ];
    let ids = records.iter().map(|r| r.id.clone()).collect();
    let acks = upload(&mut c.audit, vec![batch(1, records)]).await.unwrap();
    assert_eq!(acked_ids(&acks[0]).len(), 3);
    c.inventory
        .report(proto::InventoryReport {
            items: vec![
                inventory_item(proto::INVENTORY_KIND_APP, "cursor", "Cursor"),
                inventory_item(
                    "mcp_server",
                    "fp-github",
                    "github<img src=x onerror=window.__xss=3>",
                ),
            ],
            full_snapshot: true,
            observed_at_unix_ms: 0,
        })
        .await
        .unwrap();
    (srv, ids)
}

async fn sign_in(b: &Browser, srv: &TestServer, token: &str) {
    b.goto(&srv.url("/")).await;
    let input = b.find("#token").await;
    b.type_into(&input, token).await;
    b.click(&b.find("#sign-in").await).await;
}

async fn audit_log(srv: &TestServer) -> Vec<Value> {
    let (s, v) = srv
        .admin(Method::GET, "/api/v1/admin-audit?limit=1000", None)
        .await;
    assert_eq!(s, 200);
    v["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn admin_goes_through_the_console_in_a_real_browser() {
    let Some(b) = Browser::launch().await else {
        return;
    };
    let (srv, ids) = seeded().await;

    // Sign-in page; a wrong token is refused with a visible error.
    b.goto(&srv.url("/")).await;
    b.find("#login-form").await;
    b.screenshot("01-sign-in").await;
    sign_in(&b, &srv, "pal_admin_not-a-real-token").await;
    b.wait_text("#login-error", "not valid").await;
    b.screenshot("02-sign-in-error").await;

    // The real token: the overview with pending approvals and devices.
    sign_in(&b, &srv, &srv.admin_token).await;
    b.wait_text("#card-pending", "2").await;
    b.wait_text("#card-online", "1 / 1").await;
    b.wait_text("#top-apps", "cursor").await;
    // Charts are SVG drawn from the overview and usage APIs: 3 requests, $0.0369.
    b.find("#requests-chart svg rect").await;
    b.find("#cost-chart svg rect").await;
    b.wait_text("#cost-chart", "$0.0369").await;
    assert_eq!(b.text(&b.find("#who b").await).await, "test-admin");
    b.screenshot("03-overview").await;

    // Approve the pending app with one click.
    b.goto(&srv.url("/#/approvals")).await;
    b.find("tr.approval-row[data-id=\"cursor\"]").await;
    b.screenshot("04-approvals").await;
    // A device-reported name with markup is text here too.
    let name = b
        .wait_text("tr.approval-row[data-id=\"fp-github\"]", "<img")
        .await;
    assert!(
        name.contains("github<img src=x onerror=window.__xss=3>"),
        "{name}"
    );
    assert_eq!(
        b.exec("return typeof window.__xss;", vec![]).await,
        "undefined"
    );
    b.click(
        &b.find("tr.approval-row[data-id=\"cursor\"] button.approve")
            .await,
    )
    .await;
    b.wait_gone("tr.approval-row[data-id=\"cursor\"]").await;
    b.find("tr.approval-row[data-id=\"fp-github\"]").await;
    b.screenshot("05-approved").await;
    // And deny the MCP server, also with one click.
    b.click(
        &b.find("tr.approval-row[data-id=\"fp-github\"] button.deny")
            .await,
    )
    .await;
    b.wait_gone("tr.approval-row[data-id=\"fp-github\"]").await;
    b.wait_text("#main", "Nothing waiting").await;
    let (_, item) = srv
        .admin(Method::GET, "/api/v1/approvals/mcp/fp-github", None)
        .await;
    assert_eq!(item["status"], "denied", "{item}");
    let (_, item) = srv
        .admin(Method::GET, "/api/v1/approvals/app/cursor", None)
        .await;
    assert_eq!(item["status"], "approved", "{item}");
    let approve = audit_log(&srv)
        .await
        .into_iter()
        .rev()
        .find(|e| e["action"] == "approve")
        .expect("approve audited");
    assert_eq!(
        (
            approve["actor"]["id"].as_str(),
            approve["details"]["via"].as_str()
        ),
        (Some("test-admin"), Some("session"))
    );

    // Search events by free text and open the detail view.
    b.goto(&srv.url("/#/events")).await;
    b.find("#events-table").await;
    assert_eq!(b.all("tr.event-row").await.len(), 3);
    // The export link downloads over the session (audited as an export).
    let export = b
        .exec("return fetch(document.getElementById('export').href).then(async r => [r.status, await r.text()]);", vec![])
        .await;
    assert_eq!(export[0], 200, "{export}");
    assert!(export[1].as_str().unwrap().contains(&ids[0]), "{export}");
    b.type_into(&b.find("#f-q").await, "revenue").await;
    b.click(&b.find("#search").await).await;
    // Only the matching event (waiting for the new page replaces the old one).
    let rows = b.wait_count("tr.event-row", 1).await;
    assert!(b.text(&rows[0]).await.contains("Summarise the Q3"));
    b.screenshot("06-events-search").await;
    b.click(&rows[0]).await;
    b.wait_text("#event-json", &ids[0]).await;
    b.wait_text("#event-findings", "email").await;
    b.wait_text("#event-prompt", "Summarise the Q3 revenue report")
        .await;
    b.wait_text("#event-facts", "ann@example.com").await;
    b.screenshot("07-event-detail").await;

    // XSS: the markup in a prompt is shown as text and never runs.
    b.goto(&srv.url("/#/events")).await;
    b.type_into(&b.find("#f-q").await, "onerror").await;
    b.click(&b.find("#search").await).await;
    let rows = b.wait_count("tr.event-row", 1).await;
    assert!(b.text(&rows[0]).await.contains("<script>"));
    b.click(&rows[0]).await;
    let shown = b.wait_text("#event-prompt", "window.__xss").await;
    assert_eq!(shown, XSS, "the prompt is shown verbatim, as text");
    b.wait_text("#event-response", "<b>not bold</b>").await;
    let probe = b
        .exec(
            "return {xss: typeof window.__xss, tags: document.querySelectorAll('#main script, img[src=x], #event-prompt *, #event-response *, #event-json *').length};",
            vec![],
        )
        .await;
    assert_eq!(
        probe["xss"], "undefined",
        "markup from a prompt ran: {probe}"
    );
    assert_eq!(
        probe["tags"], 0,
        "markup from a prompt became elements: {probe}"
    );
    b.screenshot("08-xss-shown-as-text").await;

    // Filter by finding and time window (a select set as a person would pick it).
    b.goto(&srv.url("/#/events")).await;
    b.find("#events-table").await;
    b.type_into(&b.find("#f-q").await, "").await;
    b.type_into(&b.find("#f-detector").await, "email").await;
    b.exec(
        "document.getElementById('f-window').value = '24h'; return true;",
        vec![],
    )
    .await;
    b.click(&b.find("#search").await).await;
    let rows = b.wait_count("tr.event-row", 1).await;
    assert!(b.text(&rows[0]).await.contains("Summarise the Q3"));

    // CSRF from the console's own origin: a fetch without or with a wrong token is refused.
    let statuses = b
        .exec(
            "const post = (h) => fetch('/api/v1/enrollment-tokens', {method: 'POST', credentials: 'same-origin', headers: Object.assign({'Content-Type': 'application/json'}, h), body: '{}'}).then(r => r.status);
             return Promise.all([post({}), post({'X-CSRF-Token': 'f'.repeat(64)})]);",
            vec![],
        )
        .await;
    assert_eq!(statuses, json!([403, 403]));
    let refused: Vec<Value> = audit_log(&srv)
        .await
        .into_iter()
        .filter(|e| e["target"]["type"] == "enrollment-token" && e["details"]["via"] == "session")
        .collect();
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["details"]["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"CSRF token missing") && reasons.contains(&"CSRF token wrong"),
        "{reasons:?}"
    );
    assert!(
        refused.iter().all(|e| e["outcome"] == "failure"),
        "no token was created: {refused:?}"
    );

    // CSRF from another site: a page on another origin auto-submits a form
    // at the API; the browser keeps the SameSite=Strict cookie home and the
    // server refuses it.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_port = evil.local_addr().unwrap().port();
    let target = srv.url("/api/v1/enrollment-tokens");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = evil.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = format!(
                "<!doctype html><form method=post action=\"{target}\" enctype=\"text/plain\">\
                 <input name='{{\"max_uses\":1,\"x\":\"' value='\"}}'></form>\
                 <script>document.forms[0].submit()</script>"
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    b.goto(&format!("http://localhost:{evil_port}/")).await;
    let landed = b.wait_text("body", "error").await;
    assert!(
        landed.contains("bearer token required")
            || landed.contains("CSRF")
            || landed.contains("cross-"),
        "{landed}"
    );
    let created = audit_log(&srv)
        .await
        .into_iter()
        .filter(|e| {
            e["target"]["type"] == "enrollment-token"
                && e["outcome"] == "success"
                && e["details"]["via"] == "session"
        })
        .count();
    assert_eq!(created, 0, "a cross-site form must not create anything");

    // Policy editor: invalid draft lists its errors; a valid one shows the diff and saves.
    b.goto(&srv.url("/#/policy")).await;
    let area = b.find("#policy-text").await;
    let current: Value = serde_json::from_str(&b.value(&area).await).unwrap();
    let set_text = "const a = document.getElementById('policy-text'); a.value = arguments[0]; a.dispatchEvent(new Event('input')); return true;";
    let mut bad = current.clone();
    bad["apps"]["rules"] = json!([{"id": "", "decision": "allow"}, {"id": "dup", "decision": "allow"}, {"id": "DUP", "decision": "deny"}]);
    b.exec(
        set_text,
        vec![json!(serde_json::to_string_pretty(&bad).unwrap())],
    )
    .await;
    b.click(&b.find("#policy-validate").await).await;
    let errors = b.wait_text("#policy-errors", "id is empty").await;
    assert!(errors.contains("duplicate id"), "{errors}");
    assert_eq!(
        b.exec(
            "return document.getElementById('policy-save').disabled;",
            vec![]
        )
        .await,
        json!(true),
        "no saving an invalid draft"
    );
    let mut good = current.clone();
    good["never_intercept"] = json!(["bank.example.com"]);
    b.exec(
        set_text,
        vec![json!(serde_json::to_string_pretty(&good).unwrap())],
    )
    .await;
    b.click(&b.find("#policy-validate").await).await;
    b.find("#policy-valid").await;
    b.wait_text("#unified-diff", "bank.example.com").await;
    b.screenshot("09-policy-diff").await;
    let (_, before) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    b.click(&b.find("#policy-save").await).await;
    b.wait_text("#toasts", "Policy version").await;
    let (_, after) = srv.admin(Method::GET, "/api/v1/policy", None).await;
    assert_eq!(
        after["version"].as_u64(),
        before["version"].as_u64().map(|v| v + 1)
    );
    assert_eq!(
        after["document"]["never_intercept"],
        json!(["bank.example.com"])
    );
    b.find("#policy-history").await;
    b.screenshot("10-policy-saved").await;

    // Devices and the admin audit viewer.
    b.click(&b.find("#policy-history button").await).await;
    b.wait_text("#history-diff", "never_intercept").await;

    b.goto(&srv.url("/#/devices")).await;
    b.wait_text("#devices-table", "laptop-1").await;
    b.screenshot("11-devices").await;
    // Revoke asks first; Cancel keeps the device, Revoke revokes it.
    b.click(&b.find("#devices-table button.danger").await).await;
    b.click(&b.find("#confirm-cancel").await).await;
    b.wait_gone("#confirm").await;
    let (_, d) = srv.admin(Method::GET, "/api/v1/devices", None).await;
    assert_eq!(d["devices"][0]["revoked"], false);
    b.click(&b.find("#devices-table button.danger").await).await;
    b.find("#confirm").await;
    b.screenshot("11b-revoke-confirm").await;
    b.click(&b.find("#confirm-ok").await).await;
    b.wait_text("#devices-table", "revoked").await;
    let (_, d) = srv.admin(Method::GET, "/api/v1/devices", None).await;
    assert_eq!(d["devices"][0]["revoked"], true);
    b.goto(&srv.url("/#/audit")).await;
    let log = b.wait_text("#audit-table", "approve").await;
    assert!(log.contains("console-session"), "sign-in is in the log");
    b.wait_text("#audit-status", "Chain verified").await;
    // Browsing the console made no refused reads (it only calls what the role may).
    let refused_reads: Vec<Value> = audit_log(&srv)
        .await
        .into_iter()
        .filter(|e| e["action"] == "read")
        .collect();
    assert!(refused_reads.is_empty(), "{refused_reads:?}");
    b.screenshot("12-audit").await;

    // Sign out: back to the sign-in form, and the session no longer works.
    b.click(&b.find("#sign-out").await).await;
    b.find("#login-form").await;
    let status = b
        .exec(
            "return fetch('/api/v1/devices', {credentials: 'same-origin'}).then(r => r.status);",
            vec![],
        )
        .await;
    assert_eq!(status, 401);
    b.quit().await;
    srv.stop().await;
}

#[tokio::test]
async fn viewer_sees_no_prompt_text_and_no_admin_controls() {
    let Some(b) = Browser::launch().await else {
        return;
    };
    let (srv, ids) = seeded().await;
    let (s, v) = srv
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "dashboard", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201);
    sign_in(&b, &srv, v["token"].as_str().unwrap()).await;
    b.wait_text("#who", "viewer").await;
    assert!(
        b.all("#nav-policy").await.is_empty(),
        "viewers have no policy page"
    );
    assert!(
        b.all("#nav-audit").await.is_empty(),
        "viewers have no audit page"
    );

    b.goto(&srv.url("/#/events")).await;
    let table = b.wait_text("#events-table", "(hidden)").await;
    assert!(
        b.all("#f-q").await.is_empty(),
        "no free-text search over text the viewer may not read"
    );
    assert!(
        !table.contains("revenue") && !table.contains("haiku"),
        "{table}"
    );
    b.click(
        &b.find(&format!("tr.event-row[data-id=\"{}\"]", ids[0]))
            .await,
    )
    .await;
    b.wait_text("#event-prompt", "Hidden for your role.").await;
    b.wait_text("#event-response", "Hidden for your role.")
        .await;
    let record = b.text(&b.find("#event-json").await).await;
    assert!(
        !record.contains("revenue") && !record.contains("Revenue grew"),
        "{record}"
    );
    b.screenshot("13-viewer-event").await;

    b.goto(&srv.url("/#/approvals")).await;
    b.find("tr.approval-row").await;
    assert!(
        b.all("button.approve").await.is_empty(),
        "no approve button for a viewer"
    );
    // Typing the policy page's address shows the overview instead.
    b.goto(&srv.url("/#/policy")).await;
    b.find("#overview-cards").await;
    assert!(b.all("#policy-text").await.is_empty());
    b.goto(&srv.url("/#/devices")).await;
    b.find("#devices-table").await;
    assert!(
        b.all("#devices-table button.danger").await.is_empty(),
        "no revoke button for a viewer"
    );
    let refused_reads: Vec<Value> = audit_log(&srv)
        .await
        .into_iter()
        .filter(|e| e["action"] == "read")
        .collect();
    assert!(
        refused_reads.is_empty(),
        "the console asked for what a viewer may not read: {refused_reads:?}"
    );
    b.quit().await;
    srv.stop().await;
}

#[tokio::test]
async fn events_page_through_with_next_and_previous() {
    let Some(b) = Browser::launch().await else {
        return;
    };
    let srv = TestServer::start().await;
    let d = srv.enroll_new("hw-paging").await;
    let mut c = srv.clients(&d).await;
    let records: Vec<_> = (0..60)
        .map(|i| {
            interaction(
                &d,
                "ann@example.com",
                "cursor",
                "gpt-4o",
                &format!("question number {i}"),
                "ok",
                vec![],
            )
        })
        .collect();
    upload(&mut c.audit, vec![batch(1, records)]).await.unwrap();
    sign_in(&b, &srv, &srv.admin_token).await;
    b.find("#overview-cards").await;
    b.goto(&srv.url("/#/events")).await;
    b.find("#events-table").await;
    assert_eq!(b.all("tr.event-row").await.len(), 50, "a page is 50 rows");
    let prompts = "return [...document.querySelectorAll('tr.event-row td:nth-child(6)')].map(td => td.textContent);";
    let first_page = b.exec(prompts, vec![]).await;
    b.click(&b.find("#older").await).await;
    b.wait_gone("tr.event-row:nth-child(11)").await;
    b.find("tr.event-row:nth-child(10)").await;
    assert_eq!(b.all("tr.event-row").await.len(), 10, "the rest");
    let second_page = b.exec(prompts, vec![]).await;
    // Every event on exactly one page.
    let mut seen: Vec<String> = first_page
        .as_array()
        .unwrap()
        .iter()
        .chain(second_page.as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..60).map(|i| format!("question number {i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(
        b.exec("return document.getElementById('older').disabled;", vec![])
            .await,
        json!(true)
    );
    b.click(&b.find("#newer").await).await;
    b.find("tr.event-row:nth-child(50)").await;
    assert_eq!(b.exec(prompts, vec![]).await, first_page);
    b.screenshot("14-events-paging").await;
    b.quit().await;
    srv.stop().await;
}
