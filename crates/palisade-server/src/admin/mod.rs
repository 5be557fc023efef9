//! The admin HTTP API under `/api/v1` (axum), the base the web console will
//! build on.
//!
//! Deny by default: every route sits behind bearer-token auth and the
//! permission matrix in [`rbac`] (tokens are looked up by SHA-256 hash, each
//! carries a role); every mutating or refused call lands in the tamper-evident
//! admin audit log ([`audit`]). Handlers only translate HTTP <-> store calls;
//! they must never hold SQL, never echo a token back (except the one-time
//! response that creates it), and never log request bodies.

mod approvals;
mod export;
pub mod audit;
pub mod console;
pub mod events;
pub mod integrity;
pub mod policy;
pub mod rbac;
pub mod session;
pub(crate) mod throttle;
mod tokens;

use crate::config::Limits;
use crate::policy_bus::PolicyBus;
use crate::store::{DeviceRecord, Store, StoreError};
use crate::tokens::{create_admin_token_audited, create_enrollment_token_audited};
use rbac::{AuditNote, AuditScope, AuditSealed, Principal, Role};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{Duration as ChronoDuration, Utc};
use palisade_core::Policy;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::{error, info, warn};

/// Longest lifetime an enrollment token may be created with.
pub const MAX_ENROLLMENT_TOKEN_TTL_SECS: i64 = 365 * 86_400;
pub const DEFAULT_ENROLLMENT_TOKEN_TTL_SECS: i64 = 7 * 86_400;

#[derive(Debug)]
pub(crate) struct AdminState {
    pub store: Store,
    pub bus: PolicyBus,
    pub limits: Limits,
    pub audit: audit::AuditLog,
    pub forwarders: crate::forward::Forwarders,
    pub auth_failures: throttle::AuthFailures,
}

/// The `/api/v1` router, plus the web console (`/`, `/console/*`).
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/api/v1/policy", get(get_policy).put(put_policy))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/enrollment-tokens", post(new_enrollment_token))
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/events/{id}", get(events::detail))
        .route("/api/v1/usage", get(events::usage))
        .route("/api/v1/tokens", post(new_admin_token))
        .route("/api/v1/admin-audit", get(audit::http::list))
        .route("/api/v1/admin-audit/export", get(audit::http::export))
        .route("/api/v1/export", get(export::export_events))
        .route("/api/v1/forwarders", get(export::list_forwarders))
        .merge(approvals::routes())
        .merge(policy::routes())
        .merge(tokens::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), rbac::authorize))
        // The console's pages and its sign-in sit outside the API's auth.
        .merge(console::routes())
        .merge(session::routes())
        .with_state(state)
}

// === impl ApiError ===

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        error!(error = %e, "Admin API store error");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

async fn get_policy(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let current = s.bus.current();
    let document: Value = serde_json::from_slice(&current.document_json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored policy: {e}"),
        )
    })?;
    let author = s.store.latest_policy().await?.map(|p| p.author);
    Ok(Json(json!({
        "version": current.version,
        "created_at_unix_ms": current.created_at_unix_ms,
        "author": author,
        "document": document,
    })))
}

async fn put_policy(
    State(s): State<Arc<AdminState>>,
    Extension(actor): Extension<Principal>,
    Extension(scope): Extension<AuditScope>,
    body: String,
) -> Result<Response, ApiError> {
    let policy = Policy::from_json(&body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    check_guardrails(&policy)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let doc = serde_json::to_string(&policy).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let seal = s.audit.sealer(|version: &u64| {
        Some(scope.entry(
            StatusCode::OK,
            AuditNote {
                target_id: Some(version.to_string()),
                details: json!({ "version": version }),
            },
        ))
    });
    let version = s.store.insert_policy_audited(&doc, &actor.name, &seal).await?;
    info!(version, author = %actor.name, "Policy published");
    if let Err(error) = s.bus.refresh().await {
        warn!(%error, "Policy stored but not yet published locally; the poll will pick it up");
    }
    Ok((Extension(AuditSealed), Json(json!({ "version": version }))).into_response())
}

/// Compile the guardrails exactly as agents will (request and response
/// actions), so a policy every agent would refuse is refused here, naming
/// each bad rule and why.
pub(crate) fn check_guardrails(policy: &Policy) -> Result<(), String> {
    palisade_guard::validate_custom_rules(&policy.guardrails).map_err(|e| e.to_string())?;
    palisade_guard::Guard::new(&policy.guardrails).map_err(|e| e.to_string())?;
    palisade_guard::Guard::new(&policy.guardrails.for_responses()).map_err(|e| e.to_string())?;
    Ok(())
}

fn device_json(d: &DeviceRecord) -> Value {
    json!({
        "id": d.id,
        "hostname": d.hostname,
        "os": d.os,
        "hardware_id": d.hardware_id,
        "agent_version": d.agent_version,
        "owner_email": d.owner_email,
        "cert_serial": d.cert_serial,
        "enrolled_at": d.enrolled_at,
        "last_seen": d.last_seen,
        "revoked": d.revoked_at.is_some(),
        "revoked_at": d.revoked_at,
        "revoked_reason": d.revoked_reason,
        "applied_policy_version": d.applied_policy_version,
    })
}

async fn list_devices(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let devices = s.store.list_devices().await?;
    Ok(Json(
        json!({ "devices": devices.iter().map(device_json).collect::<Vec<_>>() }),
    ))
}

async fn revoke_device(
    State(s): State<Arc<AdminState>>,
    Extension(actor): Extension<Principal>,
    Extension(scope): Extension<AuditScope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let reason = format!("revoked by {}", actor.name);
    // An unknown device gets no entry here: the middleware audits the 404.
    let seal = s.audit.sealer(|result: &Option<bool>| {
        result.map(|newly| {
            scope.entry(
                StatusCode::OK,
                AuditNote {
                    target_id: None,
                    details: json!({ "already_revoked": !newly }),
                },
            )
        })
    });
    match s.store.revoke_device_audited(&id, &reason, &seal).await? {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no device {id}"),
            ))
        }
        Some(true) => info!(device_id = %id, actor = %actor.name, "Device revoked"),
        Some(false) => {}
    }
    // The revocation and its entry are committed: this answer is sealed
    // whatever the read below says.
    let body = match s.store.get_device(&id).await {
        Ok(Some(d)) => device_json(&d),
        Ok(None) => json!({ "id": id, "revoked": true }),
        Err(e) => {
            let mut resp = ApiError::from(e).into_response();
            resp.extensions_mut().insert(AuditSealed);
            return Ok(resp);
        }
    };
    Ok((Extension(AuditSealed), Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenRequest {
    #[serde(default = "one")]
    max_uses: u32,
    #[serde(default = "default_ttl")]
    ttl_seconds: i64,
    #[serde(default)]
    note: Option<String>,
}

fn one() -> u32 {
    1
}
fn default_ttl() -> i64 {
    DEFAULT_ENROLLMENT_TOKEN_TTL_SECS
}

async fn new_enrollment_token(
    State(s): State<Arc<AdminState>>,
    Extension(actor): Extension<Principal>,
    Extension(scope): Extension<AuditScope>,
    body: String,
) -> Result<Response, ApiError> {
    let body = if body.trim().is_empty() {
        "{}"
    } else {
        body.as_str()
    };
    let req: NewTokenRequest =
        serde_json::from_str(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut problems = Vec::new();
    if req.max_uses == 0 {
        problems.push("max_uses: must be at least 1".to_string());
    }
    if !(1..=MAX_ENROLLMENT_TOKEN_TTL_SECS).contains(&req.ttl_seconds) {
        problems.push(format!(
            "ttl_seconds: must be 1..={MAX_ENROLLMENT_TOKEN_TTL_SECS}"
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::bad_request(problems.join("; ")));
    }
    let expires_at = Utc::now() + ChronoDuration::seconds(req.ttl_seconds);
    let seal = s.audit.sealer(|id: &String| {
        Some(scope.entry(
            StatusCode::CREATED,
            AuditNote {
                target_id: Some(id.clone()),
                details: json!({ "max_uses": req.max_uses, "expires_at": expires_at }),
            },
        ))
    });
    let t = create_enrollment_token_audited(
        &s.store,
        req.max_uses,
        expires_at,
        req.note.as_deref(),
        &seal,
    )
    .await?;
    info!(token_id = %t.id, max_uses = t.max_uses, actor = %actor.name, "Enrollment token created");
    Ok((
        StatusCode::CREATED,
        Extension(AuditSealed),
        Json(json!({
            "id": t.id,
            "token": t.token.expose(),
            "max_uses": t.max_uses,
            "expires_at": t.expires_at,
        })),
    )
        .into_response())
}

/// Longest admin token name.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdminTokenRequest {
    name: String,
    role: String,
}

/// `POST /api/v1/tokens` (admin only): a new API token with a role, returned once.
async fn new_admin_token(
    State(s): State<Arc<AdminState>>,
    Extension(actor): Extension<Principal>,
    Extension(scope): Extension<AuditScope>,
    body: String,
) -> Result<Response, ApiError> {
    let req: NewAdminTokenRequest =
        serde_json::from_str(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut problems = Vec::new();
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME_CHARS {
        problems.push(format!("name: must be 1..={MAX_TOKEN_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        problems.push("name: must not contain control characters".to_string());
    }
    let role = match req.role.parse::<Role>() {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(format!("role: {e}"));
            None
        }
    };
    let Some(role) = role.filter(|_| problems.is_empty()) else {
        return Err(ApiError::bad_request(problems.join("; ")));
    };
    let seal = s.audit.sealer(|id: &String| {
        Some(scope.entry(
            StatusCode::CREATED,
            AuditNote {
                target_id: Some(id.clone()),
                details: json!({ "name": name, "role": role.as_str() }),
            },
        ))
    });
    let (id, token) = create_admin_token_audited(&s.store, name, role, &seal).await?;
    info!(token_id = %id, role = role.as_str(), actor = %actor.name, "Admin token created");
    Ok((
        StatusCode::CREATED,
        Extension(AuditSealed),
        Json(json!({ "id": id, "name": name, "role": role.as_str(), "token": token.expose() })),
    )
        .into_response())
}

