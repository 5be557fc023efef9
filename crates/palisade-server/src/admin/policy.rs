//! Policy history for the console and API: `GET /api/v1/policy/versions`,
//! `GET /api/v1/policy/versions/{v}`, `GET /api/v1/policy/diff?from=&to=`,
//! `POST /api/v1/policy/validate` (the PUT checks, nothing stored), the
//! `GET /api/v1/overview` counts the console's first page shows, and
//! `GET /api/v1/admin-audit/verify` for its audit viewer.
//!
//! The diff is computed on the stored JSON documents: a structured list of
//! added / removed / changed paths, plus a unified text diff of the pretty
//! JSON. Handlers never hold SQL and never log policy documents.

use super::{AdminState, ApiError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use palisade_core::Policy;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Default and largest page of `GET /api/v1/policy/versions`.
pub const DEFAULT_VERSIONS_PAGE: u32 = 100;
pub const MAX_VERSIONS_PAGE: u32 = 1000;
/// A device seen this recently counts as online.
pub const ONLINE_WINDOW_SECS: i64 = 5 * 60;
/// Window of the overview's top-apps list and requests-per-day series.
pub const TOP_APPS_WINDOW_SECS: i64 = 14 * 86_400;
pub const TOP_APPS: u32 = 10;
/// Lines of context around each hunk of the text diff.
const CONTEXT_LINES: usize = 3;
/// Above this many line pairs the text diff replaces the whole document
/// instead of searching for the shortest edit (bounded time and memory).
const MAX_LCS_CELLS: usize = 4_000_000;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/policy/versions", get(list_versions))
        .route("/api/v1/policy/versions/{version}", get(get_version))
        .route("/api/v1/policy/diff", get(diff_versions))
        .route("/api/v1/policy/validate", post(validate))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/admin-audit/verify", get(verify_audit))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionsQuery {
    limit: Option<u32>,
    before: Option<u64>,
}

async fn list_versions(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<VersionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_VERSIONS_PAGE);
    if limit == 0 || limit > MAX_VERSIONS_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1..={MAX_VERSIONS_PAGE}"
        )));
    }
    let rows = s.store.list_policy_versions(q.before, limit).await?;
    let next_before = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.version))
        .flatten();
    Ok(Json(json!({
        "current": s.bus.current().version,
        "versions": rows.iter().map(|r| json!({
            "version": r.version,
            "author": r.author,
            "created_at": r.created_at,
        })).collect::<Vec<_>>(),
        "next_before": next_before,
    })))
}

fn parse_version(field: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field}: {raw:?} is not a policy version (1, 2, ...)"
        ))
    })
}

async fn load(
    s: &AdminState,
    version: u64,
) -> Result<(crate::store::StoredPolicy, Value), ApiError> {
    let p = s.store.policy_version(version).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no policy version {version}"),
        )
    })?;
    let doc = serde_json::from_str(&p.document).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored policy version {version} is not JSON: {e}"),
        )
    })?;
    Ok((p, doc))
}

async fn get_version(
    State(s): State<Arc<AdminState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let version = parse_version("version", &raw)?;
    let (p, doc) = load(&s, version).await?;
    Ok(Json(json!({
        "version": p.version,
        "author": p.author,
        "created_at": p.created_at,
        "document": doc,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn diff_versions(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut problems = Vec::new();
    let mut version = |field: &str, v: &Option<String>| match v {
        None => {
            problems.push(format!("{field}: required (a policy version)"));
            None
        }
        Some(raw) => match parse_version(field, raw) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(e.message);
                None
            }
        },
    };
    let (from, to) = (version("from", &q.from), version("to", &q.to));
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::bad_request(problems.join("; ")));
    };
    let (_, a) = load(&s, from).await?;
    let (_, b) = load(&s, to).await?;
    let mut out = diff(&a, &b);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("from".into(), json!(from));
        obj.insert("to".into(), json!(to));
    }
    Ok(Json(out))
}

/// Every problem with a policy document, as PUT would find them: JSON and
/// policy validation, then guardrail compilation (agents' exact checks).
pub(crate) fn problems(body: &str) -> Vec<String> {
    let policy: Policy = match serde_json::from_str(body) {
        Ok(p) => p,
        Err(_) => {
            return Policy::from_json(body)
                .err()
                .map(|e| e.problems)
                .unwrap_or_default()
        }
    };
    let mut out = policy
        .validate()
        .err()
        .map(|e| e.problems)
        .unwrap_or_default();
    if let Err(e) = super::check_guardrails(&policy) {
        for p in e.split("; ") {
            if !out.iter().any(|o| o == p) {
                out.push(p.to_string());
            }
        }
    }
    out
}

/// `POST /api/v1/policy/validate`: `{valid, errors, diff}`; the diff is
/// against the current policy, and only for a document that is valid JSON.
async fn validate(State(s): State<Arc<AdminState>>, body: String) -> Result<Json<Value>, ApiError> {
    let errors = problems(&body);
    let diff_vs_current = match serde_json::from_str::<Value>(&body) {
        Ok(draft) => {
            let current: Value =
                serde_json::from_slice(&s.bus.current().document_json).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("current policy: {e}"),
                    )
                })?;
            // Compare what would be stored: the normalised document when valid.
            let draft = match Policy::from_json(&body)
                .ok()
                .and_then(|p| serde_json::to_value(p).ok())
            {
                Some(normalised) if errors.is_empty() => normalised,
                _ => draft,
            };
            let mut d = diff(&current, &draft);
            if let Some(obj) = d.as_object_mut() {
                obj.insert("from".into(), json!(s.bus.current().version));
                obj.insert("to".into(), json!("draft"));
            }
            d
        }
        Err(_) => Value::Null,
    };
    Ok(Json(json!({
        "valid": errors.is_empty(),
        "errors": errors,
        "diff": diff_vs_current,
    })))
}

async fn overview(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let current = s.bus.current().version;
    let now = Utc::now().timestamp_millis();
    let c = s
        .store
        .overview_counts(
            current,
            now - ONLINE_WINDOW_SECS * 1000,
            now - TOP_APPS_WINDOW_SECS * 1000,
            TOP_APPS,
        )
        .await?;
    Ok(Json(json!({
        "current_policy_version": current,
        "devices": {
            "total": c.devices_total,
            "online": c.devices_online,
            "on_old_policy": c.devices_old_policy,
            "online_window_secs": ONLINE_WINDOW_SECS,
        },
        "pending_approvals": c.pending_approvals,
        "top_apps": c.top_apps.iter().map(|(app, n)| json!({"app": app, "requests": n})).collect::<Vec<_>>(),
        "top_apps_window_secs": TOP_APPS_WINDOW_SECS,
        "requests_by_day": c.requests_by_day.iter().map(|(day, model, n)| json!({
            "day": chrono::DateTime::from_timestamp(day * 86_400, 0).map(|t| t.format("%Y-%m-%d").to_string()),
            "model": model,
            "requests": n,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /api/v1/admin-audit/verify`: the console's verify status, the same
/// check as `palisade audit verify` on the server's own store and key.
async fn verify_audit(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    use super::audit::{verify_store, VerifyStoreError};
    match verify_store(s.audit.store(), s.audit.key()).await {
        Ok(r) => Ok(Json(json!({
            "ok": true,
            "entries": r.entries,
            "head_seq": r.head_seq,
            "head_hash": r.head_hash,
        }))),
        Err(VerifyStoreError::Broken(e)) => {
            Ok(Json(json!({ "ok": false, "error": e.to_string() })))
        }
        Err(VerifyStoreError::Store(e)) => Err(e.into()),
    }
}

// === diff ===

/// Structured and text diff of two JSON documents:
/// `{added: [{path, value}], removed: [{path, value}], changed: [{path, old, new}], unified}`.
/// Paths look like `apps.rules[0].id`; arrays compare index by index.
pub fn diff(a: &Value, b: &Value) -> Value {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    walk("", a, b, &mut added, &mut removed, &mut changed);
    let pa = serde_json::to_string_pretty(a).unwrap_or_default();
    let pb = serde_json::to_string_pretty(b).unwrap_or_default();
    json!({
        "added": added,
        "removed": removed,
        "changed": changed,
        "unified": unified(&pa, &pb),
    })
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(
    path: &str,
    a: &Value,
    b: &Value,
    added: &mut Vec<Value>,
    removed: &mut Vec<Value>,
    changed: &mut Vec<Value>,
) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => walk(&child(path, k), va, vb, added, removed, changed),
                    None => removed.push(json!({"path": child(path, k), "value": va})),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    added.push(json!({"path": child(path, k), "value": vb}));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, va) in x.iter().enumerate() {
                let p = format!("{path}[{i}]");
                match y.get(i) {
                    Some(vb) => walk(&p, va, vb, added, removed, changed),
                    None => removed.push(json!({"path": p, "value": va})),
                }
            }
            for (i, vb) in y.iter().enumerate().skip(x.len()) {
                added.push(json!({"path": format!("{path}[{i}]"), "value": vb}));
            }
        }
        _ if a == b => {}
        _ => changed.push(json!({"path": path, "old": a, "new": b})),
    }
}

/// A unified diff (`--- from` / `+++ to`, `@@` hunks, 3 lines of context);
/// empty when the texts are equal.
pub fn unified(a: &str, b: &str) -> String {
    let x: Vec<&str> = a.lines().collect();
    let y: Vec<&str> = b.lines().collect();
    if x == y {
        return String::new();
    }
    // Edit script: (tag, line) with tag ' ', '-', '+'.
    let ops: Vec<(char, &str)> = if x.len().saturating_mul(y.len()) > MAX_LCS_CELLS {
        x.iter()
            .map(|l| ('-', *l))
            .chain(y.iter().map(|l| ('+', *l)))
            .collect()
    } else {
        let (n, m) = (x.len(), y.len());
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * (m + 1) + j] = if x[i] == y[j] {
                    lcs[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    lcs[(i + 1) * (m + 1) + j].max(lcs[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        let mut ops = Vec::with_capacity(n + m);
        while i < n || j < m {
            if i < n && j < m && x[i] == y[j] {
                ops.push((' ', x[i]));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * (m + 1) + j] >= lcs[i * (m + 1) + j + 1]) {
                ops.push(('-', x[i]));
                i += 1;
            } else {
                ops.push(('+', y[j]));
                j += 1;
            }
        }
        ops
    };
    // Group changes into hunks with context.
    let mut out = String::from("--- from\n+++ to\n");
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != ' ')
        .map(|(k, _)| k)
        .collect();
    let mut k = 0;
    while k < changes.len() {
        let start = changes[k].saturating_sub(CONTEXT_LINES);
        let mut end = changes[k];
        while k < changes.len() && changes[k] <= end + 2 * CONTEXT_LINES + 1 {
            end = changes[k];
            k += 1;
        }
        let end = (end + CONTEXT_LINES + 1).min(ops.len());
        // Line numbers at `start` in each side.
        let a_start = ops[..start].iter().filter(|o| o.0 != '+').count();
        let b_start = ops[..start].iter().filter(|o| o.0 != '-').count();
        let a_len = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let b_len = ops[start..end].iter().filter(|o| o.0 != '-').count();
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            a_start + usize::from(a_len > 0),
            a_len,
            b_start + usize::from(b_len > 0),
            b_len
        ));
        for (tag, line) in &ops[start..end] {
            out.push(*tag);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_diff_names_every_path() {
        let a = json!({"capture": "full", "apps": {"rules": [{"id": "x", "decision": "allow"}]}, "gone": 1});
        let b = json!({"capture": "metadata", "apps": {"rules": [{"id": "x", "decision": "deny"}, {"id": "y"}]}, "new": [1]});
        let d = diff(&a, &b);
        assert_eq!(
            d["changed"],
            json!([
                {"path": "apps.rules[0].decision", "old": "allow", "new": "deny"},
                {"path": "capture", "old": "full", "new": "metadata"},
            ])
        );
        assert_eq!(
            d["added"],
            json!([{"path": "apps.rules[1]", "value": {"id": "y"}}, {"path": "new", "value": [1]}])
        );
        assert_eq!(d["removed"], json!([{"path": "gone", "value": 1}]));
        let u = d["unified"].as_str().unwrap();
        assert!(u.starts_with("--- from\n+++ to\n@@ -"), "{u}");
        assert!(
            u.contains("-  \"capture\": \"full\",") && u.contains("+  \"capture\": \"metadata\","),
            "{u}"
        );
    }

    #[test]
    fn equal_documents_have_an_empty_diff() {
        let a = json!({"a": [1, 2, {"b": null}]});
        let d = diff(&a, &a.clone());
        assert_eq!(
            d,
            json!({"added": [], "removed": [], "changed": [], "unified": ""})
        );
    }

    #[test]
    fn unified_hunks_count_lines() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\n19\n20";
        let b = a.replace("2\n", "two\n").replace("19", "nineteen");
        let u = unified(a, &b);
        // Two changes far apart: two hunks.
        assert_eq!(u.matches("@@ -").count(), 2, "{u}");
        assert!(u.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n"), "{u}");
        assert!(u.contains("-19\n+nineteen\n 20\n"), "{u}");
    }

    #[test]
    fn validation_reports_every_problem_and_json_errors() {
        assert_eq!(problems("{}"), Vec::<String>::new());
        let p = problems("{not json");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("not a valid policy document"), "{p:?}");
        let two = problems(
            r#"{"apps": {"rules": [{"id": "", "decision": "allow"}, {"id": " ", "decision": "deny"}]}}"#,
        );
        assert_eq!(two.len(), 2, "{two:?}");
    }
}
