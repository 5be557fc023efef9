//! `/api/v1/approvals`: the fleet catalog of AI apps and MCP servers, and
//! the admin's approve / deny decisions on them.
//!
//! A decision records the catalog status and publishes a policy version
//! whose `apps.rules` / `mcp.rules` carry it, in one store transaction, then
//! wakes the local policy bus so connected agents get it at once. Deciding
//! what an item already has (and the policy already carries) publishes
//! nothing. Handlers must never hold SQL or log request bodies; the admin
//! audit entry for each decision is written by the `rbac` middleware from
//! the [`AuditNote`] attached to the response.

use super::rbac::{AuditNote, AuditScope, AuditSealed, Principal};
use super::{AdminState, ApiError};
use crate::store::{
    CatalogDetail, CatalogEntry, CatalogFilter, CatalogKind, CatalogStatus, DecideOutcome,
    DecisionSummary,
    StoreError,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use palisade_core::policy::ItemRule;
use palisade_core::{Decision, Policy};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::{error, info, warn};

/// Default and largest page of `GET /api/v1/approvals`.
pub const DEFAULT_PAGE: u32 = 200;
pub const MAX_PAGE: u32 = 1000;
/// Devices listed in an item's detail (the count is always exact).
pub const DETAIL_DEVICE_LIMIT: u32 = 1000;
/// Longest decision note, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;

/// The approvals routes (the caller adds auth).
pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/approvals", get(list))
        .route("/api/v1/approvals/{kind}/{id}", get(detail))
        .route("/api/v1/approvals/{kind}/{id}/approve", post(approve))
        .route("/api/v1/approvals/{kind}/{id}/deny", post(deny))
}

/// The kind as the API names it (`app`, `mcp`).
pub fn api_kind(kind: CatalogKind) -> &'static str {
    match kind {
        CatalogKind::App => "app",
        CatalogKind::McpServer => "mcp",
    }
}

/// `app`, `mcp` (or the inventory's own `mcp_server`).
pub fn parse_kind(s: &str) -> Option<CatalogKind> {
    match s {
        "app" => Some(CatalogKind::App),
        "mcp" | "mcp_server" => Some(CatalogKind::McpServer),
        _ => None,
    }
}

fn kind_label(kind: CatalogKind) -> &'static str {
    match kind {
        CatalogKind::App => "app",
        CatalogKind::McpServer => "MCP server",
    }
}

/// Rewrite a policy document so the `kind` section rules `id` as `decision`
/// (replacing any rule for the same id, compared case-insensitively like
/// the device does). `Ok(None)`: the document already rules it so. The rest
/// of the document is kept as is.
pub fn apply_decision(
    document: Option<&str>,
    kind: CatalogKind,
    id: &str,
    decision: Decision,
    note: Option<&str>,
) -> Result<Option<String>, String> {
    let mut policy = match document {
        Some(d) => Policy::from_json(d).map_err(|e| e.to_string())?,
        None => Policy::default(),
    };
    let section = match kind {
        CatalogKind::App => &mut policy.apps,
        CatalogKind::McpServer => &mut policy.mcp,
    };
    match section
        .rules
        .iter_mut()
        .find(|r| r.id.eq_ignore_ascii_case(id))
    {
        Some(r) if r.decision == decision => return Ok(None),
        Some(r) => {
            r.decision = decision;
            r.note = note.map(str::to_string);
        }
        None => section.rules.push(ItemRule {
            id: id.to_string(),
            decision,
            note: note.map(str::to_string),
        }),
    }
    policy
        .validate()
        .map_err(|e| format!("the policy with this decision is invalid: {e}"))?;
    serde_json::to_string(&policy)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn entry_json(e: &CatalogEntry) -> Value {
    json!({
        "kind": api_kind(e.kind),
        "id": e.item_id,
        "name": e.name,
        "status": e.status.as_str(),
        "note": e.note,
        "decided_by": e.decided_by,
        "decided_at": e.decided_at,
        "first_seen": e.first_seen,
        "last_seen": e.last_seen,
        "device_count": e.device_count,
    })
}

fn detail_json(d: &CatalogDetail) -> Value {
    let mut clients = BTreeSet::new();
    let devices: Vec<Value> = d
        .devices
        .iter()
        .map(|dev| {
            let details: Value = serde_json::from_str(&dev.details).unwrap_or_else(|e| {
                warn!(error = %e, device_id = %dev.device_id, "Stored inventory details are not JSON");
                json!({})
            });
            if let Some(list) = details.get("clients").and_then(Value::as_array) {
                clients.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
            }
            json!({
                "device_id": dev.device_id,
                "hostname": dev.hostname,
                "os": dev.os,
                "owner_email": dev.owner_email,
                "name": dev.name,
                "first_seen": dev.first_seen,
                "last_seen": dev.last_seen,
                "details": details,
            })
        })
        .collect();
    let mut v = entry_json(&d.entry);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("names".into(), json!(d.names));
        obj.insert(
            "devices_truncated".into(),
            json!((devices.len() as u64) < d.entry.device_count),
        );
        obj.insert("devices".into(), Value::Array(devices));
        if d.entry.kind == CatalogKind::McpServer {
            obj.insert("clients".into(), json!(clients));
        }
    }
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

async fn list(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut problems = Vec::new();
    let kind = q.kind.as_deref().and_then(|k| {
        let parsed = parse_kind(k);
        if parsed.is_none() {
            problems.push(format!("kind: {k:?} is not app or mcp"));
        }
        parsed
    });
    let status = q.status.as_deref().and_then(|st| {
        let parsed = CatalogStatus::parse(st);
        if parsed.is_none() {
            problems.push(format!("status: {st:?} is not pending, approved or denied"));
        }
        parsed
    });
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        problems.push(format!("limit: must be 1..={MAX_PAGE}"));
    }
    if !problems.is_empty() {
        return Err(ApiError::bad_request(problems.join("; ")));
    }
    let offset = q.offset.unwrap_or(0);
    let filter = CatalogFilter {
        kind,
        status,
        limit,
        offset,
    };
    let entries = s.store.list_catalog(&filter).await?;
    let next_offset = (entries.len() as u64 == u64::from(limit)).then(|| offset + u64::from(limit));
    Ok(Json(json!({
        "items": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_offset": next_offset,
    })))
}

fn kind_or_404(kind: &str) -> Result<CatalogKind, ApiError> {
    parse_kind(kind).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown kind {kind:?}: expected app or mcp"),
        )
    })
}

fn not_in_catalog(kind: CatalogKind, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no {} with id {id:?} in the catalog (items appear once a device reports them)",
            kind_label(kind)
        ),
    )
}

async fn detail(
    State(s): State<Arc<AdminState>>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_or_404(&kind)?;
    let d = s
        .store
        .catalog_detail(kind, &id, DETAIL_DEVICE_LIMIT)
        .await?
        .ok_or_else(|| not_in_catalog(kind, &id))?;
    Ok(Json(detail_json(&d)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    note: Option<String>,
}

fn parse_body(body: &str) -> Result<DecisionBody, ApiError> {
    if body.trim().is_empty() {
        return Ok(DecisionBody::default());
    }
    let b: DecisionBody = serde_json::from_str(body).map_err(|e| {
        ApiError::bad_request(format!("body: {e} (expected {{\"note\": \"...\"}})"))
    })?;
    if let Some(n) = &b.note {
        if n.chars().count() > MAX_NOTE_CHARS {
            return Err(ApiError::bad_request(format!(
                "note: longer than {MAX_NOTE_CHARS} characters"
            )));
        }
        if n.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ApiError::bad_request(
                "note: control characters are not allowed",
            ));
        }
    }
    Ok(DecisionBody {
        note: b
            .note
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty()),
    })
}

async fn approve(
    state: State<Arc<AdminState>>,
    actor: Extension<Principal>,
    scope: Extension<AuditScope>,
    path: Path<(String, String)>,
    body: String,
) -> Result<Response, ApiError> {
    decide(state, actor, scope, path, body, CatalogStatus::Approved).await
}

async fn deny(
    state: State<Arc<AdminState>>,
    actor: Extension<Principal>,
    scope: Extension<AuditScope>,
    path: Path<(String, String)>,
    body: String,
) -> Result<Response, ApiError> {
    decide(state, actor, scope, path, body, CatalogStatus::Denied).await
}

async fn decide(
    State(s): State<Arc<AdminState>>,
    Extension(actor): Extension<Principal>,
    Extension(scope): Extension<AuditScope>,
    Path((kind, id)): Path<(String, String)>,
    body: String,
    status: CatalogStatus,
) -> Result<Response, ApiError> {
    let kind = kind_or_404(&kind)?;
    let body = parse_body(&body)?;
    let decision = match status {
        CatalogStatus::Approved => Decision::Allow,
        CatalogStatus::Denied => Decision::Deny,
        CatalogStatus::Pending => Decision::Pending,
    };
    let note = body.note.as_deref();
    let edit = |doc: Option<&str>| apply_decision(doc, kind, &id, decision, note);
    let seal = s.audit.sealer(|d: &DecisionSummary| {
        Some(scope.entry(
            StatusCode::OK,
            AuditNote {
                target_id: Some(id.clone()),
                details: json!({
                    "kind": api_kind(kind),
                    "name": d.name,
                    "status": status.as_str(),
                    "note": note,
                    "changed": d.changed,
                    "policy_version": d.policy_version,
                }),
            },
        ))
    });
    let outcome = s
        .store
        .decide_catalog_audited(kind, &id, status, note, &actor.name, &edit, &seal)
        .await
        .map_err(|e| match e {
            StoreError::Corrupt(reason) => {
                error!(%reason, kind = api_kind(kind), item_id = %id, "Decision cannot be published");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decision not recorded: {reason}"),
                )
            }
            other => ApiError::from(other),
        })?;
    let (entry, policy_version, changed, published) = match outcome {
        DecideOutcome::NotFound => return Err(not_in_catalog(kind, &id)),
        DecideOutcome::Unchanged {
            entry,
            policy_version,
        } => (entry, policy_version, false, false),
        DecideOutcome::Decided {
            entry,
            policy_version,
            published,
        } => (entry, policy_version, true, published),
    };
    if published {
        info!(
            kind = api_kind(kind),
            item_id = %id,
            status = status.as_str(),
            policy_version,
            actor = %actor.name,
            "Catalog decision published"
        );
        if let Err(error) = s.bus.refresh().await {
            warn!(%error, "Decision stored but not yet published locally; the poll will pick it up");
        }
    }
    let mut v = entry_json(&entry);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("policy_version".into(), json!(policy_version));
        obj.insert("changed".into(), json!(changed));
        obj.insert("published".into(), json!(published));
    }
    Ok((Extension(AuditSealed), Json(v)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_lands_in_the_right_section_and_keeps_the_rest() {
        let mut p = Policy {
            capture: palisade_core::CaptureMode::Metadata,
            ..Default::default()
        };
        p.apps.rules.push(ItemRule {
            id: "cursor".into(),
            decision: Decision::Allow,
            note: None,
        });
        let doc = serde_json::to_string(&p).unwrap();
        let out = apply_decision(
            Some(&doc),
            CatalogKind::McpServer,
            "fp1",
            Decision::Deny,
            Some("no"),
        )
        .unwrap()
        .unwrap();
        let q = Policy::from_json(&out).unwrap();
        assert_eq!(q.capture, palisade_core::CaptureMode::Metadata);
        assert_eq!(q.apps, p.apps);
        assert_eq!(q.mcp.decision("fp1"), Decision::Deny);
        assert_eq!(q.mcp.rules[0].note.as_deref(), Some("no"));
        // Same decision again: nothing to publish.
        assert_eq!(
            apply_decision(
                Some(&out),
                CatalogKind::McpServer,
                "FP1",
                Decision::Deny,
                None
            ),
            Ok(None)
        );
        // Reversal replaces the rule, never adds a second one.
        let back = apply_decision(
            Some(&out),
            CatalogKind::McpServer,
            "fp1",
            Decision::Allow,
            None,
        )
        .unwrap()
        .unwrap();
        let r = Policy::from_json(&back).unwrap();
        assert_eq!(r.mcp.rules.len(), 1);
        assert_eq!(r.mcp.decision("fp1"), Decision::Allow);
        assert_eq!(r.mcp.rules[0].note, None);
    }

    #[test]
    fn no_stored_policy_starts_from_the_default() {
        let out = apply_decision(None, CatalogKind::App, "zed", Decision::Deny, None)
            .unwrap()
            .unwrap();
        let p = Policy::from_json(&out).unwrap();
        assert_eq!(p.apps.decision("zed"), Decision::Deny);
        assert_eq!(p.ai_hosts, Policy::default().ai_hosts);
    }

    #[test]
    fn a_stored_document_that_is_not_a_policy_is_an_error() {
        let e = apply_decision(
            Some("{\"nope\": 1}"),
            CatalogKind::App,
            "zed",
            Decision::Deny,
            None,
        )
        .unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn kinds_parse_and_print() {
        assert_eq!(parse_kind("app"), Some(CatalogKind::App));
        assert_eq!(parse_kind("mcp"), Some(CatalogKind::McpServer));
        assert_eq!(parse_kind("mcp_server"), Some(CatalogKind::McpServer));
        assert_eq!(parse_kind("MCP"), None);
        assert_eq!(parse_kind("browser"), None);
        for k in CatalogKind::ALL {
            assert_eq!(parse_kind(api_kind(k)), Some(k));
        }
    }

    #[test]
    fn bodies_are_checked() {
        assert_eq!(parse_body("").unwrap().note, None);
        assert_eq!(parse_body("{}").unwrap().note, None);
        assert_eq!(parse_body(r#"{"note":"  "}"#).unwrap().note, None);
        assert_eq!(
            parse_body(r#"{"note":" ok "}"#).unwrap().note.as_deref(),
            Some("ok")
        );
        let e = parse_body(r#"{"notes":"x"}"#).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let e = parse_body("not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let long = format!(r#"{{"note":"{}"}}"#, "x".repeat(MAX_NOTE_CHARS + 1));
        assert!(parse_body(&long).unwrap_err().message.contains("longer"));
        assert!(parse_body(r#"{"note":"a\u001bb"}"#)
            .unwrap_err()
            .message
            .contains("control"));
    }
}
