//! Role-based access and the admin audit log, end to end through the real
//! server: every endpoint × {no token, wrong token, each role}, audit entries
//! for refusals and mutations, chain verification on a real log, tampering
//! directly in the database, no token in the log, and viewers without
//! prompt text. Runs on SQLite, and on PostgreSQL when
//! `PALISADE_TEST_POSTGRES_URL` is set.

mod support;

use palisade_server::admin::audit::{
    parse_export, verify_export, verify_store, AuditEntry, AuditKey, VerifyError, VerifyStoreError,
};
use palisade_server::store::AdminAuditRow;
use palisade_server::Store;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

const ROLES: [&str; 4] = ["admin", "approver", "auditor", "viewer"];

/// One endpoint of the table: who may call it, and what an allowed call
/// returns (`None`: any status but 401/403, for endpoints whose handler
/// lands elsewhere).
struct Case {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    allowed: &'static [&'static str],
    ok_status: Option<u16>,
    /// Whether an allowed call writes an audit entry.
    audited: bool,
}

#[rustfmt::skip]
fn cases(policy_doc: &Value) -> Vec<Case> {
    let all: &[&str] = &["admin", "approver", "auditor", "viewer"];
    vec![
        Case { method: Method::GET, path: "/api/v1/policy", body: None, allowed: &["admin", "approver", "auditor"], ok_status: Some(200), audited: false },
        Case { method: Method::PUT, path: "/api/v1/policy", body: Some(policy_doc.clone()), allowed: &["admin"], ok_status: Some(200), audited: true },
        Case { method: Method::GET, path: "/api/v1/policy/versions", body: None, allowed: &["admin", "approver", "auditor"], ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/policy/versions/1", body: None, allowed: &["admin", "approver", "auditor"], ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/policy/diff?from=1&to=1", body: None, allowed: &["admin", "approver", "auditor"], ok_status: Some(200), audited: false },
        Case { method: Method::POST, path: "/api/v1/policy/validate", body: Some(policy_doc.clone()), allowed: &["admin"], ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/overview", body: None, allowed: all, ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/devices", body: None, allowed: all, ok_status: Some(200), audited: false },
        Case { method: Method::POST, path: "/api/v1/devices/no-such-device/revoke", body: None, allowed: &["admin"], ok_status: Some(404), audited: true },
        Case { method: Method::POST, path: "/api/v1/enrollment-tokens", body: Some(json!({"max_uses": 1})), allowed: &["admin"], ok_status: Some(201), audited: true },
        Case { method: Method::POST, path: "/api/v1/tokens", body: Some(json!({"name": "made-in-table", "role": "viewer"})), allowed: &["admin"], ok_status: Some(201), audited: true },
        Case { method: Method::GET, path: "/api/v1/tokens", body: None, allowed: &["admin"], ok_status: Some(200), audited: false },
        Case { method: Method::POST, path: "/api/v1/tokens/no-such-token/revoke", body: None, allowed: &["admin"], ok_status: Some(404), audited: true },
        Case { method: Method::GET, path: "/api/v1/events", body: None, allowed: all, ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/events/0190b0b0-0000-7000-8000-000000000000", body: None, allowed: all, ok_status: Some(404), audited: false },
        Case { method: Method::GET, path: "/api/v1/usage?group_by=model", body: None, allowed: all, ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/approvals", body: None, allowed: all, ok_status: None, audited: false },
        Case { method: Method::GET, path: "/api/v1/approvals/app/no-such-app", body: None, allowed: all, ok_status: None, audited: false },
        Case { method: Method::POST, path: "/api/v1/approvals/app/no-such-app/approve", body: Some(json!({})), allowed: &["admin", "approver"], ok_status: None, audited: true },
        Case { method: Method::POST, path: "/api/v1/approvals/mcp/no-such-mcp/deny", body: Some(json!({})), allowed: &["admin", "approver"], ok_status: None, audited: true },
        Case { method: Method::GET, path: "/api/v1/admin-audit", body: None, allowed: &["admin", "auditor"], ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/admin-audit/verify", body: None, allowed: &["admin", "auditor"], ok_status: Some(200), audited: false },
        Case { method: Method::GET, path: "/api/v1/admin-audit/export", body: None, allowed: &["admin", "auditor"], ok_status: Some(200), audited: true },
        Case { method: Method::GET, path: "/api/v1/export", body: None, allowed: &["admin", "auditor"], ok_status: None, audited: true },
        // Not in the matrix: refused for everyone, admin included.
        Case { method: Method::GET, path: "/api/v1/secrets", body: None, allowed: &[], ok_status: None, audited: false },
        Case { method: Method::DELETE, path: "/api/v1/policy", body: None, allowed: &[], ok_status: None, audited: false },
    ]
}

async fn call(srv: &TestServer, token: Option<&str>, c: &Case) -> (u16, Value) {
    let mut req = srv
        .http()
        .request(c.method.clone(), srv.url(c.path))
        .header("user-agent", "rbac-table-test/1");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every entry of the log, straight from the store.
async fn all_entries(store: &Store) -> Vec<AuditEntry> {
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

async fn make_token(srv: &TestServer, name: &str, role: &str) -> String {
    let (s, v) = srv
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": name, "role": role})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["role"], role);
    v["token"].as_str().unwrap().to_string()
}

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

#[tokio::test]
async fn every_endpoint_for_every_caller_and_each_refusal_is_audited() {
    for srv in servers().await {
        let store = Store::open(&srv.cfg).await.unwrap();
        let mut tokens = vec![("admin", srv.admin_token.clone())];
        for role in ROLES.iter().skip(1) {
            tokens.push((role, make_token(&srv, &format!("{role}-token"), role).await));
        }
        // The server answered, so it has created its key.
        let key = AuditKey::load(&AuditKey::default_path(&srv.cfg)).unwrap();
        let (_, current) = srv.admin(Method::GET, "/api/v1/policy", None).await;
        let policy_doc = current["document"].clone();
        let wrong = "pal_admin_this-token-does-not-exist";

        for c in cases(&policy_doc) {
            let mut callers: Vec<(String, Option<&str>)> = vec![
                ("no token".into(), None),
                ("wrong token".into(), Some(wrong)),
            ];
            for (role, t) in &tokens {
                callers.push((role.to_string(), Some(t.as_str())));
            }
            for (who, token) in callers {
                let before = all_entries(&store).await.len();
                let (status, body) = call(&srv, token, &c).await;
                let after = all_entries(&store).await;
                let new: Vec<&AuditEntry> = after[before..].iter().collect();
                let ctx = format!(
                    "{} {} as {who} ({}): {status} {body}",
                    c.method,
                    c.path,
                    srv.cfg.store.postgres_url.is_some()
                );
                let refused_unauthenticated = who == "no token" || who == "wrong token";
                match () {
                    _ if refused_unauthenticated => {
                        assert_eq!(status, 401, "{ctx}");
                        assert_eq!(new.len(), 1, "a refusal must be audited: {ctx}");
                        assert_eq!(new[0].outcome, "failure", "{ctx}");
                        assert_eq!(new[0].action, "login", "{ctx}");
                        let expected_actor = if who == "no token" {
                            "anonymous"
                        } else {
                            "unknown"
                        };
                        assert_eq!(new[0].actor.id, expected_actor, "{ctx}");
                    }
                    _ if !c.allowed.contains(&who.as_str()) => {
                        assert_eq!(status, 403, "{ctx}");
                        assert_eq!(new.len(), 1, "a refusal must be audited: {ctx}");
                        let e = new[0];
                        assert_eq!(e.outcome, "failure", "{ctx}");
                        assert_eq!(e.actor.kind, "token", "{ctx}");
                        let name = if who == "admin" {
                            "test-admin".to_string()
                        } else {
                            format!("{who}-token")
                        };
                        assert_eq!(e.actor.id, name, "{ctx}");
                        assert_eq!(e.details["caller_role"], who.as_str(), "{ctx}");
                        assert_eq!(e.user_agent.as_deref(), Some("rbac-table-test/1"), "{ctx}");
                        assert_eq!(e.ip.as_deref(), Some("127.0.0.1"), "{ctx}");
                    }
                    _ => {
                        assert!(status != 401 && status != 403, "{ctx}");
                        if let Some(ok) = c.ok_status {
                            assert_eq!(status, ok, "{ctx}");
                        }
                        assert_eq!(new.len(), usize::from(c.audited), "{ctx}");
                        if c.audited {
                            let expect = if (200..300).contains(&status) {
                                "success"
                            } else {
                                "failure"
                            };
                            assert_eq!(new[0].outcome, expect, "{ctx}");
                        }
                    }
                }
            }
        }

        // The audited mutations carry the right action and target.
        let log = all_entries(&store).await;
        let find = |action: &str, ty: &str| {
            log.iter()
                .find(|e| e.action == action && e.target.kind == ty && e.outcome == "success")
                .unwrap_or_else(|| panic!("no successful {action} {ty}"))
        };
        let upd = find("update", "policy");
        assert_eq!(
            upd.details["version"],
            json!(upd.target.id.parse::<u64>().unwrap())
        );
        assert_eq!(find("create", "enrollment-token").actor.id, "test-admin");
        let made = log
            .iter()
            .find(|e| e.action == "create" && e.details["name"] == "made-in-table")
            .unwrap();
        assert_eq!(
            (made.target.kind.as_str(), &made.details["role"]),
            ("admin-token", &json!("viewer"))
        );
        assert_eq!(find("create", "admin-token").details["role"], "approver");
        find("export", "admin-audit");
        let revoke = log
            .iter()
            .find(|e| e.action == "revoke" && e.target.kind == "device")
            .unwrap();
        assert_eq!(
            (revoke.outcome.as_str(), revoke.target.id.as_str()),
            ("failure", "no-such-device")
        );
        let approve = log.iter().find(|e| e.action == "approve").unwrap();
        assert_eq!(
            (approve.target.kind.as_str(), approve.target.id.as_str()),
            ("app", "no-such-app")
        );

        // The log the calls produced verifies.
        let report = verify_store(&store, &key).await.unwrap();
        assert_eq!(report.entries as usize, log.len());

        // No token, raw or hashed, anywhere in the log (nor in the export).
        let (s, export) = {
            let r = srv
                .http()
                .get(srv.url("/api/v1/admin-audit/export"))
                .bearer_auth(&tokens[2].1)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        assert_eq!(s, 200);
        let everything = serde_json::to_string(&all_entries(&store).await).unwrap();
        for t in tokens.iter().map(|(_, t)| t.as_str()).chain([wrong]) {
            let hashed = palisade_server::tokens::hash_token(t);
            for haystack in [&everything, &export] {
                assert!(!haystack.contains(t), "raw token in the audit log");
                assert!(!haystack.contains(&hashed), "token hash in the audit log");
            }
        }
        assert!(!everything.contains("pal_admin_"), "a token prefix leaked");
        store.close().await;
        srv.stop().await;
    }
}

#[tokio::test]
async fn export_verifies_offline_and_api_pages() {
    let srv = TestServer::start().await;
    for i in 0..5 {
        let (s, _) = srv
            .admin(
                Method::POST,
                "/api/v1/enrollment-tokens",
                Some(json!({"note": format!("n{i}")})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (s, page) = srv
        .admin(Method::GET, "/api/v1/admin-audit?limit=2", None)
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_after_seq"], 2);
    assert_eq!(page["head"]["seq"], 5);
    let (_, rest) = srv
        .admin(
            Method::GET,
            "/api/v1/admin-audit?after_seq=2&limit=1000",
            None,
        )
        .await;
    let seqs: Vec<i64> = rest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    for bad in [
        "limit=0",
        "limit=1001",
        "after_seq=-1",
        "after_seq=x",
        "color=red",
    ] {
        let (s, v) = srv
            .admin(Method::GET, &format!("/api/v1/admin-audit?{bad}"), None)
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }

    let text = srv
        .http()
        .get(srv.url("/api/v1/admin-audit/export"))
        .bearer_auth(&srv.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed = parse_export(&text).unwrap();
    let trailer = parsed.trailer.clone().expect("export ends with a trailer");
    assert!(trailer.instructions.contains("palisade audit verify"));
    let key = AuditKey::load(&AuditKey::default_path(&srv.cfg)).unwrap();
    let report = verify_export(&parsed, &key).unwrap();
    assert_eq!(report.entries, parsed.entries.len() as u64);
    assert_eq!(Some(trailer.chain_head.unwrap().seq), report.head_seq);
    // With another key, the very first entry fails.
    assert_eq!(
        verify_export(&parsed, &AuditKey::from_bytes([0; 32])),
        Err(VerifyError::HmacMismatch { seq: 1 })
    );
    srv.stop().await;
}

/// Runs a statement on the server's database directly (as an attacker with
/// database access would), outside the store.
struct Db {
    sqlite: Option<sqlx::SqlitePool>,
    pg: Option<sqlx::PgPool>,
}

impl Db {
    async fn open(cfg: &palisade_server::ServerConfig) -> Self {
        match &cfg.store.postgres_url {
            None => Db {
                sqlite: Some(
                    sqlx::SqlitePool::connect(&format!("sqlite://{}", cfg.sqlite_path().display()))
                        .await
                        .unwrap(),
                ),
                pg: None,
            },
            Some(url) => {
                use std::str::FromStr;
                let schema = cfg.store.postgres_schema.clone().unwrap();
                let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                    .unwrap()
                    .options([("search_path", schema.as_str())]);
                Db {
                    sqlite: None,
                    pg: Some(sqlx::PgPool::connect_with(opts).await.unwrap()),
                }
            }
        }
    }

    async fn exec(&self, sql: &str) {
        if let Some(p) = &self.sqlite {
            sqlx::query(sql).execute(p).await.unwrap();
        }
        if let Some(p) = &self.pg {
            sqlx::query(sql).execute(p).await.unwrap();
        }
    }

    async fn insert(&self, r: &AdminAuditRow) {
        let sql = "INSERT INTO admin_audit (seq, time, actor_kind, actor_id, action, outcome, \
                   target_type, target_id, ip, user_agent, details, prev_hash, hash, hmac) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
        macro_rules! bind_all {
            ($q:expr) => {
                $q.bind(r.seq)
                    .bind(r.time_ms)
                    .bind(&r.actor_kind)
                    .bind(&r.actor_id)
                    .bind(&r.action)
                    .bind(&r.outcome)
                    .bind(&r.target_type)
                    .bind(&r.target_id)
                    .bind(&r.ip)
                    .bind(&r.user_agent)
                    .bind(&r.details)
                    .bind(&r.prev_hash)
                    .bind(&r.hash)
                    .bind(&r.hmac)
            };
        }
        if let Some(p) = &self.sqlite {
            bind_all!(sqlx::query(sql)).execute(p).await.unwrap();
        }
        if let Some(p) = &self.pg {
            bind_all!(sqlx::query(sql)).execute(p).await.unwrap();
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        if let Some(p) = &self.sqlite {
            return sqlx::query_scalar(sql).fetch_one(p).await.unwrap();
        }
        sqlx::query_scalar(sql).fetch_one(self.pg.as_ref().unwrap()).await.unwrap()
    }

    /// Put the log back exactly as it was.
    async fn restore(&self, rows: &[AdminAuditRow]) {
        self.exec("DELETE FROM admin_audit").await;
        for r in rows {
            self.insert(r).await;
        }
    }
}

#[tokio::test]
async fn tampering_in_the_database_is_detected_at_the_right_seq() {
    for srv in servers().await {
        // Build a real log through the API: 6 entries.
        for _ in 0..3 {
            srv.admin(Method::POST, "/api/v1/enrollment-tokens", Some(json!({})))
                .await;
        }
        let r = srv
            .http()
            .get(srv.url("/api/v1/policy"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        srv.admin(Method::POST, "/api/v1/devices/ghost/revoke", None)
            .await;
        srv.admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "v", "role": "viewer"})),
        )
        .await;

        let store = Store::open(&srv.cfg).await.unwrap();
        let key = AuditKey::load(&AuditKey::default_path(&srv.cfg)).unwrap();
        let original = store.admin_audit_page(0, 100).await.unwrap();
        assert_eq!(original.len(), 6);
        assert_eq!(verify_store(&store, &key).await.unwrap().entries, 6);
        let db = Db::open(&srv.cfg).await;
        let broken = |r: Result<_, VerifyStoreError>| match r {
            Err(VerifyStoreError::Broken(e)) => e,
            other => panic!("tampering not detected: {other:?}"),
        };

        // Edit a field.
        db.exec("UPDATE admin_audit SET actor_id = 'someone-else' WHERE seq = 3")
            .await;
        assert_eq!(
            broken(verify_store(&store, &key).await),
            VerifyError::HashMismatch { seq: 3 }
        );
        // The console's verify endpoint says so too (and writes nothing).
        let (s, v) = srv.admin(Method::GET, "/api/v1/admin-audit/verify", None).await;
        assert_eq!((s, v["ok"].as_bool()), (200, Some(false)), "{v}");
        assert!(v["error"].as_str().unwrap().contains('3'), "{v}");
        db.restore(&original).await;
        let (_, v) = srv.admin(Method::GET, "/api/v1/admin-audit/verify", None).await;
        assert_eq!((v["ok"].as_bool(), v["entries"].as_u64()), (Some(true), Some(6)), "{v}");
        db.exec("UPDATE admin_audit SET details = '{\"max_uses\":1000}' WHERE seq = 2")
            .await;
        assert_eq!(
            broken(verify_store(&store, &key).await),
            VerifyError::HashMismatch { seq: 2 }
        );
        db.restore(&original).await;
        assert!(
            verify_store(&store, &key).await.is_ok(),
            "restore must give back a valid log"
        );

        // Delete a row.
        db.exec("DELETE FROM admin_audit WHERE seq = 4").await;
        assert_eq!(
            broken(verify_store(&store, &key).await),
            VerifyError::SeqGap {
                expected: 4,
                found: 5
            }
        );
        db.restore(&original).await;

        // Insert a forged row with a correct hash (anyone can compute it) but no key.
        let mut forged = AuditEntry::from_row(&original[5]);
        forged.seq = 7;
        forged.prev_hash = original[5].hash.clone();
        forged.details = json!({"forged": true});
        forged.hash = forged.compute_hash();
        forged.hmac = AuditKey::from_bytes([9; 32]).sign(&forged.hash).unwrap();
        let mut row = original[5].clone();
        row.seq = 7;
        row.details = "{\"forged\":true}".into();
        row.prev_hash = forged.prev_hash.clone();
        row.hash = forged.hash.clone();
        row.hmac = forged.hmac.clone();
        db.insert(&row).await;
        assert_eq!(
            broken(verify_store(&store, &key).await),
            VerifyError::HmacMismatch { seq: 7 }
        );
        db.restore(&original).await;

        // Insert in the middle: shift seq 3.. up by one and put a row at 3.
        db.exec("UPDATE admin_audit SET seq = seq + 100 WHERE seq >= 3")
            .await;
        db.exec("UPDATE admin_audit SET seq = seq - 99 WHERE seq >= 100")
            .await;
        let mut mid = original[2].clone();
        mid.details = "{\"inserted\":true}".into();
        db.insert(&mid).await;
        assert_eq!(
            broken(verify_store(&store, &key).await),
            VerifyError::HashMismatch { seq: 3 }
        );
        db.restore(&original).await;

        // Swap two rows.
        db.exec("UPDATE admin_audit SET seq = -2 WHERE seq = 2")
            .await;
        db.exec("UPDATE admin_audit SET seq = 2 WHERE seq = 3")
            .await;
        db.exec("UPDATE admin_audit SET seq = 3 WHERE seq = -2")
            .await;
        assert_eq!(
            broken(verify_store(&store, &key).await),
            VerifyError::BrokenLink { seq: 2 }
        );
        db.restore(&original).await;

        assert_eq!(verify_store(&store, &key).await.unwrap().entries, 6);
        store.close().await;
        srv.stop().await;
    }
}

#[tokio::test]
async fn viewers_get_events_without_prompt_or_response_text() {
    let srv = TestServer::start().await;
    let dev = srv.enroll_new("hw-viewer").await;
    let mut c = srv.clients(&dev).await;
    let mut rec = record(&dev.id, "openai");
    let mut ev: Value = serde_json::from_slice(&rec.json).unwrap();
    ev["request"]["prompt"] = json!("the secret merger plan");
    ev["response"]["text"] = json!("here is the plan summary");
    rec.json = serde_json::to_vec(&ev).unwrap();
    let acks = upload(&mut c.audit, vec![batch(1, vec![rec])])
        .await
        .unwrap();
    assert_eq!(acked_ids(&acks[0]).len(), 1);

    let viewer = make_token(&srv, "dash", "viewer").await;
    let auditor = make_token(&srv, "audit", "auditor").await;
    let get = |t: String| {
        let srv = &srv;
        async move {
            let r = srv
                .http()
                .get(srv.url("/api/v1/events"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let (viewer_again, auditor_again) = (viewer.clone(), auditor.clone());
    let as_viewer = get(viewer).await;
    assert!(!as_viewer.contains("merger"), "{as_viewer}");
    assert!(!as_viewer.contains("plan summary"), "{as_viewer}");
    let v: Value = serde_json::from_str(&as_viewer).unwrap();
    let e = &v["events"][0];
    assert_eq!(e["request"]["prompt"], Value::Null);
    assert_eq!(e["response"]["text"], Value::Null);
    assert_eq!(e["provider"], "openai", "metadata stays: {e}");
    // Roles that may read content still see it.
    let as_auditor = get(auditor).await;
    assert!(as_auditor.contains("the secret merger plan"));
    assert!(as_auditor.contains("here is the plan summary"));

    // Nor can a viewer probe the hidden text through free-text search: the
    // call is refused, and the refusal is audited.
    let store = Store::open(&srv.cfg).await.unwrap();
    let before = all_entries(&store).await.len();
    let r = srv
        .http()
        .get(srv.url("/api/v1/events?q=merger"))
        .bearer_auth(&viewer_again)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let after = all_entries(&store).await;
    assert_eq!(after.len(), before + 1, "the refusal is audited");
    let e = &after[before];
    assert_eq!((e.outcome.as_str(), e.actor.id.as_str()), ("failure", "dash"));
    assert_eq!(e.details["status"], 403);
    let r = srv
        .http()
        .get(srv.url("/api/v1/events?q=merger"))
        .bearer_auth(&auditor_again)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("merger"));
    store.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn bad_token_requests_are_refused_with_clear_errors() {
    let srv = TestServer::start().await;
    for (body, needle) in [
        (
            json!({"name": "x", "role": "root"}),
            "unknown role \"root\"",
        ),
        (
            json!({"name": "", "role": "viewer"}),
            "name: must be 1..=64",
        ),
        (
            json!({"name": "a".repeat(65), "role": "viewer"}),
            "name: must be 1..=64",
        ),
        (
            json!({"name": "bad\nname", "role": "viewer"}),
            "control characters",
        ),
        (json!({"name": "x"}), "missing field `role`"),
        (
            json!({"name": "x", "role": "viewer", "expires": 1}),
            "unknown field",
        ),
    ] {
        let (s, v) = srv
            .admin(Method::POST, "/api/v1/tokens", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    // A refused creation is audited as a failure and makes no token.
    let store = Store::open(&srv.cfg).await.unwrap();
    let log = all_entries(&store).await;
    assert!(log
        .iter()
        .all(|e| e.outcome == "failure" && e.action == "create"));
    assert_eq!(log.len(), 6);
    // A refused call's path is cut to the field limit and its query never kept.
    let long = format!("/api/v1/{}?filter=ann@example.com", "x".repeat(5000));
    let r = srv.http().get(srv.url(&long)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let last = all_entries(&store).await.pop().unwrap();
    assert_eq!(last.target.id.chars().count(), 256);
    let text = serde_json::to_string(&last).unwrap();
    assert!(
        !text.contains("ann@example.com") && !text.contains(&"x".repeat(300)),
        "{text}"
    );
    // A new token works at once and only for its role.
    let t = make_token(&srv, "fresh", "approver").await;
    let r = srv
        .http()
        .get(srv.url("/api/v1/devices"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = srv
        .http()
        .get(srv.url("/api/v1/admin-audit"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    store.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_revoked_admin_token_is_refused_at_once_and_listed_without_secrets() {
    for srv in servers().await {
        let viewer = make_token(&srv, "laptop-viewer", "viewer").await;
        let call_as = |t: &str| {
            srv.http()
                .get(srv.url("/api/v1/devices"))
                .bearer_auth(t.to_string())
                .send()
        };
        assert_eq!(call_as(&viewer).await.unwrap().status().as_u16(), 200);

        let (s, v) = srv.admin(Method::GET, "/api/v1/tokens", None).await;
        assert_eq!(s, 200, "{v}");
        let listed = v["tokens"].as_array().unwrap();
        let entry = listed.iter().find(|t| t["name"] == "laptop-viewer").unwrap();
        assert_eq!((entry["role"].as_str(), entry["revoked"].as_bool()), (Some("viewer"), Some(false)));
        let text = v.to_string();
        assert!(!text.contains(&viewer) && !text.contains(&palisade_server::tokens::hash_token(&viewer)));
        let id = entry["id"].as_str().unwrap().to_string();

        let (s, v) = srv.admin(Method::POST, &format!("/api/v1/tokens/{id}/revoke"), None).await;
        assert_eq!((s, v["revoked"].as_bool()), (200, Some(true)), "{v}");
        assert_eq!(call_as(&viewer).await.unwrap().status().as_u16(), 401, "revoked at once");
        // Revoking again is harmless and says so in the audit entry.
        let (s, _) = srv.admin(Method::POST, &format!("/api/v1/tokens/{id}/revoke"), None).await;
        assert_eq!(s, 200);

        let (_, v) = srv.admin(Method::GET, "/api/v1/tokens", None).await;
        let entry = v["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap().clone();
        assert_eq!(entry["revoked"], true);
        assert!(entry["revoked_at"].is_string());

        let store = Store::open(&srv.cfg).await.unwrap();
        let revokes: Vec<AuditEntry> = all_entries(&store)
            .await
            .into_iter()
            .filter(|e| e.action == "revoke" && e.target.kind == "admin-token")
            .collect();
        assert_eq!(revokes.len(), 2);
        assert_eq!(revokes[0].target.id, id);
        assert_eq!(revokes[0].details["already_revoked"], false);
        assert_eq!(revokes[1].details["already_revoked"], true);
        store.close().await;
    }
}

/// After retention removed the oldest entries, the HTTP export carries the
/// signed checkpoint it starts from, and an auditor verifies it offline.
#[tokio::test]
async fn export_after_retention_carries_its_checkpoint() {
    for srv in servers().await {
        for i in 0..4 {
            let (s, _) = srv
                .admin(
                    Method::POST,
                    "/api/v1/enrollment-tokens",
                    Some(json!({"note": format!("n{i}")})),
                )
                .await;
            assert_eq!(s, 201);
        }
        let key = AuditKey::load(&AuditKey::default_path(&srv.cfg)).unwrap();
        let store = Store::open(&srv.cfg).await.unwrap();
        let before = all_entries(&store).await.len() as u64;
        let retention = palisade_server::config::RetentionConfig {
            admin_audit_days: 1,
            events_days: 0,
            content_days: 0,
            ..Default::default()
        };
        let log = palisade_server::admin::audit::AuditLog::new(store.clone(), key.clone());
        let r = palisade_server::retention::run_once(
            &store,
            &log,
            &key,
            &retention,
            chrono::Utc::now() + chrono::Duration::days(2),
        )
        .await
        .unwrap();
        // Everything but the newest entry went; the retention entry follows it.
        assert_eq!(r.counts.admin_audit_deleted, before - 1);
        verify_store(&store, &key).await.unwrap();
        store.close().await;

        let text = srv
            .http()
            .get(srv.url("/api/v1/admin-audit/export"))
            .bearer_auth(&srv.admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let parsed = parse_export(&text).unwrap();
        let first = parsed.entries[0].seq;
        assert_eq!(first, before as i64);
        let cp = parsed
            .trailer
            .as_ref()
            .and_then(|t| t.checkpoint.clone())
            .expect("the export names the checkpoint it starts from");
        assert_eq!((cp.chain.as_str(), cp.position), ("admin_audit", first - 1));
        let report = verify_export(&parsed, &key).unwrap();
        assert_eq!(report.entries, parsed.entries.len() as u64);
        // The retention entry records what it removed.
        let retention_entry = parsed.entries.iter().find(|e| e.action == "retention").unwrap();
        assert_eq!(
            retention_entry.details["counts"]["admin_audit_deleted"],
            json!(before - 1)
        );
        srv.stop().await;
    }
}

/// Failed authentications past `limits.auth_failures_per_minute` from one
/// address get 429 and are counted, not audited one by one (one entry says
/// the address is throttled); a valid token from that address still works,
/// and the console's sign-in says why it refused.
#[tokio::test]
async fn a_flood_of_bad_tokens_is_throttled_without_locking_out_valid_tokens() {
    let srv = TestServer::start_with(|c| c.limits.auth_failures_per_minute = 3).await;
    let store = Store::open(&srv.cfg).await.unwrap();
    let before = all_entries(&store).await.len();
    let bad = |n: usize| {
        srv.http()
            .get(srv.url("/api/v1/devices"))
            .bearer_auth(format!("pal_admin_wrong{n}"))
            .send()
    };
    for n in 0..3 {
        assert_eq!(bad(n).await.unwrap().status(), 401);
    }
    for n in 3..10 {
        let r = bad(n).await.unwrap();
        assert_eq!(r.status(), 429);
        let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("too many failed authentications"), "{v}");
    }
    // The throttle never refuses a valid token, even from that address.
    let (s, v) = srv.admin(Method::GET, "/api/v1/devices", None).await;
    assert_eq!(s, 200, "{v}");
    // The console's sign-in is counted the same way and says why.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(srv.url("/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=pal_admin_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/?error=too_many_attempts");

    let log = all_entries(&store).await;
    let failures: Vec<_> = log[before..]
        .iter()
        .filter(|e| e.action == "login" && e.outcome == "failure")
        .collect();
    assert_eq!(failures.len(), 4, "3 audited one by one, then one that says throttled: {failures:?}");
    assert_eq!(failures[3].details["throttled"], true);
    assert_eq!(failures[3].details["limit_per_minute"], 3);
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains("pal_admin_wrong"), "tokens never reach the log");
    let key = AuditKey::load(&AuditKey::default_path(&srv.cfg)).unwrap();
    assert_eq!(verify_store(&store, &key).await.unwrap().entries as usize, log.len());
}

/// The admin audit table refuses every insert (as a full disk or a broken
/// constraint would), directly in the database.
async fn break_audit_inserts(db: &Db) {
    if db.pg.is_some() {
        db.exec(
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit storage unavailable'; END $$",
        )
        .await;
        db.exec(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON admin_audit \
             FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        )
        .await;
    } else {
        db.exec(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON admin_audit \
             BEGIN SELECT RAISE(ABORT, 'audit storage unavailable'); END",
        )
        .await;
    }
}

#[tokio::test]
async fn a_change_whose_audit_entry_cannot_be_written_is_not_made() {
    for srv in servers().await {
        let pg = srv.cfg.store.postgres_url.is_some();
        // Something to revoke and to approve.
        let device = srv.enroll_new("hw-audit-atomic").await;
        let mut clients = srv.clients(&device).await;
        clients
            .inventory
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
        let (s, made) = srv
            .admin(Method::POST, "/api/v1/tokens", Some(json!({"name": "keeper", "role": "viewer"})))
            .await;
        assert_eq!(s, 201, "{made}");
        let keeper = made["token"].as_str().unwrap().to_string();
        let keeper_id = made["id"].as_str().unwrap().to_string();
        let (_, before_policy) = srv.admin(Method::GET, "/api/v1/policy", None).await;
        let store = Store::open(&srv.cfg).await.unwrap();
        let key = AuditKey::load(&AuditKey::default_path(&srv.cfg)).unwrap();
        let log_before = all_entries(&store).await.len();

        let db = Db::open(&srv.cfg).await;
        break_audit_inserts(&db).await;
        let doc = before_policy["document"].clone();
        let approve = "/api/v1/approvals/app/cursor/approve";
        let revoke_device = format!("/api/v1/devices/{}/revoke", device.id);
        let revoke_token = format!("/api/v1/tokens/{keeper_id}/revoke");
        let attempts: Vec<(Method, &str, Option<Value>)> = vec![
            (Method::PUT, "/api/v1/policy", Some(doc)),
            (Method::POST, "/api/v1/tokens", Some(json!({"name": "ghost", "role": "admin"}))),
            (Method::POST, "/api/v1/enrollment-tokens", Some(json!({}))),
            (Method::POST, &revoke_device, None),
            (Method::POST, &revoke_token, None),
            (Method::POST, approve, Some(json!({}))),
        ];
        for (method, path, body) in attempts {
            let (s, v) = srv.admin(method.clone(), path, body).await;
            assert_eq!(s, 503, "{method} {path} (pg: {pg}) must fail without its entry: {v}");
        }

        // Nothing changed: no policy version, no token, no revocation, no
        // decision; the kept token still works.
        let (_, policy) = srv.admin(Method::GET, "/api/v1/policy", None).await;
        assert_eq!(policy["version"], before_policy["version"], "pg: {pg}");
        let (_, tokens) = srv.admin(Method::GET, "/api/v1/tokens", None).await;
        let names: Vec<&str> = tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(!names.contains(&"ghost"), "pg: {pg}: {tokens}");
        let (_, devices) = srv.admin(Method::GET, "/api/v1/devices", None).await;
        assert_eq!(devices["devices"][0]["revoked"], false, "pg: {pg}: {devices}");
        let (_, item) = srv.admin(Method::GET, "/api/v1/approvals/app/cursor", None).await;
        assert_eq!(item["status"], "pending", "pg: {pg}: {item}");
        let r = srv
            .http()
            .get(srv.url("/api/v1/devices"))
            .bearer_auth(&keeper)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "pg: {pg}");
        // Only the token the device enrolled with.
        assert_eq!(db.count("SELECT COUNT(*) FROM enrollment_tokens").await, 1, "pg: {pg}");
        assert_eq!(all_entries(&store).await.len(), log_before);

        // Once entries can be written again, the same change goes through
        // with exactly one entry, and the log verifies.
        db.exec(if pg { "DROP TRIGGER refuse_audit ON admin_audit" } else { "DROP TRIGGER refuse_audit" })
            .await;
        let (s, v) = srv.admin(Method::POST, approve, Some(json!({}))).await;
        assert_eq!(s, 200, "{v}");
        let log = all_entries(&store).await;
        assert_eq!(log.len(), log_before + 1);
        assert_eq!((log[log_before].action.as_str(), log[log_before].outcome.as_str()), ("approve", "success"));
        assert_eq!(log[log_before].details["name"], "Cursor");
        assert!(verify_store(&store, &key).await.is_ok());
        store.close().await;
        srv.stop().await;
    }
}
