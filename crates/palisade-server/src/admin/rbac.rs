//! Role-based access for the admin API: the roles, the ONE permission matrix
//! ([`PERMISSIONS`], mirrored in docs/PERMISSIONS.md) and the middleware that
//! enforces it and writes the admin audit log.
//!
//! Deny by default: a method + path not in the matrix is refused (403) for
//! every role, and so is a role the row does not list. Every refusal (401
//! without or with a bad token, 403 for a role) and every call a row marks as
//! audited becomes an admin audit entry. This module must never record or log
//! the presented bearer token (only the token's name), nor a request body,
//! nor a query string (it may carry filters with personal data).

use super::audit::{Action, ActorKind, NewAuditEntry, Outcome, MAX_FIELD_CHARS};
use super::throttle::Verdict;
use super::{session, AdminState, ApiError};
use crate::store::AdminTokenIdentity;
use crate::tokens::hash_token;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{error, warn};

/// An admin token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including policy and tokens.
    Admin,
    /// Approvals, and read access (not the admin audit log).
    Approver,
    /// Read everything, export, verify the audit log.
    Auditor,
    /// Dashboards, devices, usage; events without prompt or response text.
    Viewer,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected admin, approver, auditor or viewer")]
pub struct UnknownRole(pub String);

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Approver, Role::Auditor, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    /// True when events must be shown without prompt and response text.
    pub fn hides_content(self) -> bool {
        self == Role::Viewer
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// What an allowed call records in the audit log. Reads are not audited
/// (refused reads are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    No,
    /// `target` is a fixed target type, or `{param}` to take it from the path.
    Yes {
        action: Action,
        target: &'static str,
    },
}

/// One row of the permission matrix. `path` segments in braces match any
/// one segment; `{id}` (when present) becomes the audit target id.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub roles: &'static [Role],
    pub audit: Audit,
}

const ALL: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor, Role::Viewer];
const READERS: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor];
const ADMIN: &[Role] = &[Role::Admin];
const APPROVERS: &[Role] = &[Role::Admin, Role::Approver];
const AUDITORS: &[Role] = &[Role::Admin, Role::Auditor];

/// THE permission matrix. Anything not listed is refused for everyone.
#[rustfmt::skip]
pub const PERMISSIONS: &[Rule] = &[
    Rule { method: "GET", path: "/api/v1/policy", roles: READERS, audit: Audit::No },
    Rule { method: "PUT", path: "/api/v1/policy", roles: ADMIN, audit: Audit::Yes { action: Action::Update, target: "policy" } },
    Rule { method: "GET", path: "/api/v1/policy/versions", roles: READERS, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/policy/versions/{version}", roles: READERS, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/policy/diff", roles: READERS, audit: Audit::No },
    // Stores nothing (the PUT that follows is audited), so not audited.
    Rule { method: "POST", path: "/api/v1/policy/validate", roles: ADMIN, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/overview", roles: ALL, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/devices", roles: ALL, audit: Audit::No },
    Rule { method: "POST", path: "/api/v1/devices/{id}/revoke", roles: ADMIN, audit: Audit::Yes { action: Action::Revoke, target: "device" } },
    Rule { method: "POST", path: "/api/v1/enrollment-tokens", roles: ADMIN, audit: Audit::Yes { action: Action::Create, target: "enrollment-token" } },
    Rule { method: "POST", path: "/api/v1/tokens", roles: ADMIN, audit: Audit::Yes { action: Action::Create, target: "admin-token" } },
    Rule { method: "GET", path: "/api/v1/tokens", roles: ADMIN, audit: Audit::No },
    Rule { method: "POST", path: "/api/v1/tokens/{id}/revoke", roles: ADMIN, audit: Audit::Yes { action: Action::Revoke, target: "admin-token" } },
    Rule { method: "GET", path: "/api/v1/events", roles: ALL, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/events/{id}", roles: ALL, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/usage", roles: ALL, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/approvals", roles: ALL, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/approvals/{kind}/{id}", roles: ALL, audit: Audit::No },
    Rule { method: "POST", path: "/api/v1/approvals/{kind}/{id}/approve", roles: APPROVERS, audit: Audit::Yes { action: Action::Approve, target: "{kind}" } },
    Rule { method: "POST", path: "/api/v1/approvals/{kind}/{id}/deny", roles: APPROVERS, audit: Audit::Yes { action: Action::Deny, target: "{kind}" } },
    Rule { method: "GET", path: "/api/v1/admin-audit", roles: AUDITORS, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/admin-audit/verify", roles: AUDITORS, audit: Audit::No },
    Rule { method: "GET", path: "/api/v1/admin-audit/export", roles: AUDITORS, audit: Audit::Yes { action: Action::Export, target: "admin-audit" } },
    Rule { method: "GET", path: "/api/v1/export", roles: AUDITORS, audit: Audit::Yes { action: Action::Export, target: "events" } },
    Rule { method: "GET", path: "/api/v1/forwarders", roles: AUDITORS, audit: Audit::No },
];

/// The matched rule and its path parameters.
#[derive(Debug, Clone)]
pub struct Matched {
    pub rule: &'static Rule,
    pub params: Vec<(&'static str, String)>,
}

impl Matched {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Find the row for a method and path (query string excluded).
pub fn match_route(method: &Method, path: &str) -> Option<Matched> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    PERMISSIONS.iter().find_map(|rule| {
        if rule.method != method.as_str() {
            return None;
        }
        let pat: Vec<&'static str> = rule.path.split('/').collect();
        if pat.len() != segs.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in pat.iter().zip(&segs) {
            if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if s.is_empty() {
                    return None;
                }
                params.push((name, (*s).to_string()));
            } else if p != s {
                return None;
            }
        }
        Some(Matched { rule, params })
    })
}

/// The authenticated caller, for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

/// A handler's summary for the audit entry of its call (response extension):
/// a target id known only after the call (e.g. a new policy version) and
/// small details. Never a body, token or secret.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditNote {
    pub target_id: Option<String>,
    pub details: Value,
}

/// The audit entry an allowed, audited call gets (request extension). A
/// handler that changes something builds the entry with [`AuditScope::entry`],
/// seals it into the change's own store transaction (see
/// [`super::audit::AuditLog::sealer`]) and answers with [`AuditSealed`]: the
/// change and its entry then commit together or not at all. For every other
/// answer (an error, a read such as an export) the middleware writes the
/// entry after the call.
#[derive(Debug, Clone)]
pub struct AuditScope {
    actor: String,
    token_id: String,
    role: Role,
    via: &'static str,
    action: Action,
    target_type: String,
    target_id: String,
    ip: Option<String>,
    user_agent: Option<String>,
}

/// Response extension: the handler sealed this call's audit entry into its
/// own transaction, so the middleware writes none.
#[derive(Debug, Clone, Copy)]
pub struct AuditSealed;

impl AuditScope {
    /// The entry for this call answered with `status`, summarised by `note`.
    pub fn entry(&self, status: StatusCode, note: AuditNote) -> NewAuditEntry {
        let mut details = match note.details {
            Value::Object(map) => Value::Object(map),
            Value::Null => json!({}),
            other => json!({ "summary": other }),
        };
        if let Some(obj) = details.as_object_mut() {
            obj.insert("status".into(), json!(status.as_u16()));
            obj.insert("caller_role".into(), json!(self.role.as_str()));
            obj.insert("caller_token_id".into(), json!(self.token_id));
            if self.via == "session" {
                obj.insert("via".into(), json!(self.via));
            }
        }
        NewAuditEntry {
            actor_kind: ActorKind::Token,
            actor_id: self.actor.clone(),
            action: self.action,
            outcome: if status.is_success() {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            target_type: self.target_type.clone(),
            target_id: note.target_id.unwrap_or_else(|| self.target_id.clone()),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            details,
        }
    }
}

/// Where the call came from.
pub(super) struct Origin {
    pub(super) ip: Option<String>,
    pub(super) user_agent: Option<String>,
}

fn default_action(method: &Method) -> Action {
    match *method {
        Method::GET | Method::HEAD => Action::Read,
        Method::PUT | Method::PATCH => Action::Update,
        Method::DELETE => Action::Delete,
        _ => Action::Create,
    }
}

/// The middleware: authenticate, authorise against [`PERMISSIONS`], run, audit.
pub(crate) async fn authorize(
    State(state): State<Arc<AdminState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    // Only the path (never the query), cut to the audit field limit: a
    // scanner's garbage must not bloat the log.
    let path: String = req.uri().path().chars().take(MAX_FIELD_CHARS).collect();
    let origin = Origin {
        ip: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let matched = match_route(&method, &path);
    let (action, target_type, target_id) = match &matched {
        Some(m) => match m.rule.audit {
            Audit::Yes { action, target } => {
                let ty = match target.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    Some(param) => m.param(param).unwrap_or("unknown").to_string(),
                    None => target.to_string(),
                };
                (action, ty, m.param("id").unwrap_or("").to_string())
            }
            Audit::No => (
                default_action(&method),
                "endpoint".to_string(),
                path.clone(),
            ),
        },
        None => (
            default_action(&method),
            "endpoint".to_string(),
            path.clone(),
        ),
    };

    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    // A bearer token wins; otherwise the console's session cookie.
    let session_id = match token {
        Some(_) => None,
        None => session::session_cookie(req.headers()),
    };
    let via = if session_id.is_some() {
        "session"
    } else {
        "token"
    };
    let identity = if let Some(session_id) = &session_id {
        let sess = match session::resolve(&state, session_id).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                warn!(path, "Admin API: invalid or expired session");
                let refusal = json!({"reason": "invalid or expired session", "method": method.as_str(), "path": path});
                record(
                    &state,
                    ActorKind::Token,
                    "unknown",
                    Action::Login,
                    Outcome::Failure,
                    "endpoint",
                    &path,
                    &origin,
                    refusal,
                )
                .await;
                return ApiError::new(StatusCode::UNAUTHORIZED, "session expired: sign in again")
                    .into_response();
            }
            Err(e) => return ApiError::from(e).into_response(),
        };
        if let Err(problem) = session::check_csrf(&method, req.headers(), session_id) {
            warn!(path, method = %method, token = %sess.token_name, reason = problem.reason(), "Admin API: CSRF check failed");
            let refusal = json!({
                "reason": problem.reason(),
                "via": via,
                "caller_token_id": sess.token_id,
                "method": method.as_str(),
                "path": path,
            });
            record(
                &state,
                ActorKind::Token,
                &sess.token_name,
                action,
                Outcome::Failure,
                &target_type,
                &target_id,
                &origin,
                refusal,
            )
            .await;
            return ApiError::new(StatusCode::FORBIDDEN, problem.reason()).into_response();
        }
        AdminTokenIdentity {
            id: sess.token_id,
            name: sess.token_name,
            role: sess.role,
        }
    } else {
        let Some(token) = token else {
            let refusal =
                json!({"reason": "no bearer token", "method": method.as_str(), "path": path});
            if let Some(throttled) =
                auth_failed(&state, "anonymous", "endpoint", &path, &origin, refusal).await
            {
                return throttled;
            }
            return ApiError::new(StatusCode::UNAUTHORIZED, "bearer token required")
                .into_response();
        };
        match state.store.admin_token_identity(&hash_token(token)).await {
            Ok(Some(i)) => i,
            Ok(None) => {
                warn!(path, "Admin API: invalid token");
                let refusal =
                    json!({"reason": "invalid token", "method": method.as_str(), "path": path});
                if let Some(throttled) =
                    auth_failed(&state, "unknown", "endpoint", &path, &origin, refusal).await
                {
                    return throttled;
                }
                return ApiError::new(StatusCode::UNAUTHORIZED, "invalid token").into_response();
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    let role: Role = match identity.role.parse() {
        Ok(r) => r,
        Err(e) => {
            // A role this build does not know gets nothing (deny by default).
            error!(error = %e, token = %identity.name, "Admin token has an unknown role");
            let refusal = json!({"reason": "unknown role", "caller_token_id": identity.id});
            record(
                &state,
                ActorKind::Token,
                &identity.name,
                action,
                Outcome::Failure,
                &target_type,
                &target_id,
                &origin,
                refusal,
            )
            .await;
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden").into_response();
        }
    };
    let Some(m) = matched.filter(|m| m.rule.roles.contains(&role)) else {
        warn!(path, method = %method, role = role.as_str(), token = %identity.name, "Admin API: refused");
        let refusal = json!({
            "reason": "role not permitted",
            "caller_role": role.as_str(),
            "caller_token_id": identity.id,
            "method": method.as_str(),
            "path": path,
        });
        record(
            &state,
            ActorKind::Token,
            &identity.name,
            action,
            Outcome::Failure,
            &target_type,
            &target_id,
            &origin,
            refusal,
        )
        .await;
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not {} {}", role.as_str(), method, path),
        )
        .into_response();
    };
    req.extensions_mut().insert(Principal {
        token_id: identity.id.clone(),
        name: identity.name.clone(),
        role,
    });
    let scope = AuditScope {
        actor: identity.name,
        token_id: identity.id,
        role,
        via,
        action,
        target_type,
        target_id,
        ip: origin.ip,
        user_agent: origin.user_agent,
    };
    req.extensions_mut().insert(scope.clone());
    let response = next.run(req).await;
    // A handler may refuse too (e.g. a search the role may not run): every
    // 403 becomes an audit entry, whether or not the route is audited.
    let refused_by_handler = response.status() == StatusCode::FORBIDDEN;
    let sealed = response.extensions().get::<AuditSealed>().is_some();
    if (matches!(m.rule.audit, Audit::Yes { .. }) || refused_by_handler) && !sealed {
        let note = response
            .extensions()
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default();
        append(&state, scope.entry(response.status(), note)).await;
    }
    response
}

/// A failed authentication (`details` says why): audited as a failed
/// `login`, unless its address is throttled (see [`super::throttle`]); then
/// the answer is 429 and only the first one over the limit is audited.
/// `None`: audited, the caller answers as usual.
pub(super) async fn auth_failed(
    state: &AdminState,
    actor_id: &str,
    target_type: &str,
    target_id: &str,
    origin: &Origin,
    mut details: Value,
) -> Option<Response> {
    // Which failures are audited, and which are answered 429 (with how long).
    let (audited, throttled_for) = match state.auth_failures.failed(origin.ip.as_deref()) {
        Verdict::Audit { unaudited_before } => {
            if unaudited_before > 0 {
                if let Some(obj) = details.as_object_mut() {
                    obj.insert("unaudited_failures_before".into(), json!(unaudited_before));
                }
            }
            (true, None)
        }
        Verdict::Throttle {
            first,
            limit,
            retry_after,
        } => {
            let secs = retry_after.as_secs().max(1);
            if first {
                warn!(ip = origin.ip.as_deref().unwrap_or("unknown"), limit, "Too many failed authentications; throttling the address");
                if let Some(obj) = details.as_object_mut() {
                    obj.insert("throttled".into(), json!(true));
                    obj.insert("limit_per_minute".into(), json!(limit));
                    obj.insert("throttled_for_seconds".into(), json!(secs));
                }
            }
            (first, Some(secs))
        }
    };
    if audited {
        record(
            state,
            ActorKind::Token,
            actor_id,
            Action::Login,
            Outcome::Failure,
            target_type,
            target_id,
            origin,
            details,
        )
        .await;
    }
    throttled_for.map(|secs| {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed authentications from this address; retry in {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        resp
    })
}

/// Append one entry. A failure is logged, never turned into a different
/// response: the call has already happened (or been refused).
#[allow(clippy::too_many_arguments)]
pub(super) async fn record(
    state: &AdminState,
    actor_kind: ActorKind,
    actor_id: &str,
    action: Action,
    outcome: Outcome,
    target_type: &str,
    target_id: &str,
    origin: &Origin,
    details: Value,
) {
    let entry = NewAuditEntry {
        actor_kind,
        actor_id: actor_id.to_string(),
        action,
        outcome,
        target_type: target_type.to_string(),
        target_id: target_id.to_string(),
        ip: origin.ip.clone(),
        user_agent: origin.user_agent.clone(),
        details,
    };
    append(state, entry).await;
}

/// Append one finished entry; a failure is logged (see [`record`]).
async fn append(state: &AdminState, entry: NewAuditEntry) {
    let (action, target_type) = (entry.action, entry.target_type.clone());
    if let Err(error) = state.audit.append(entry).await {
        error!(%error, action = action.as_str(), target_type, "Admin audit entry NOT written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_unknown_is_refused() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let e = "root".parse::<Role>().unwrap_err();
        assert!(e.to_string().contains("unknown role \"root\""), "{e}");
        assert!("Admin".parse::<Role>().is_err(), "roles are case-sensitive");
    }

    #[test]
    fn routes_match_with_params_and_unknown_routes_do_not() {
        let m = match_route(&Method::POST, "/api/v1/approvals/mcp/abc/approve").unwrap();
        assert_eq!(m.param("kind"), Some("mcp"));
        assert_eq!(m.param("id"), Some("abc"));
        assert_eq!(
            m.rule.audit,
            Audit::Yes {
                action: Action::Approve,
                target: "{kind}"
            }
        );
        let m = match_route(&Method::POST, "/api/v1/devices/d1/revoke").unwrap();
        assert_eq!(m.param("id"), Some("d1"));
        assert!(match_route(&Method::DELETE, "/api/v1/policy").is_none());
        assert!(match_route(&Method::GET, "/api/v1/secret").is_none());
        assert!(match_route(&Method::POST, "/api/v1/devices//revoke").is_none());
        assert!(match_route(&Method::POST, "/api/v1/devices/a/b/revoke").is_none());
    }

    #[test]
    fn matrix_has_no_duplicate_rows_and_mutations_are_audited() {
        for (i, a) in PERMISSIONS.iter().enumerate() {
            for b in &PERMISSIONS[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "duplicate {} {}",
                    a.method,
                    a.path
                );
            }
            // Validation stores nothing; every other non-GET changes state.
            if a.method != "GET" && a.path != "/api/v1/policy/validate" {
                assert!(
                    matches!(a.audit, Audit::Yes { .. }),
                    "{} {} must be audited",
                    a.method,
                    a.path
                );
            }
            assert!(!a.roles.is_empty());
        }
        // Only admins manage policy and tokens.
        for path in [
            "/api/v1/policy",
            "/api/v1/tokens",
            "/api/v1/enrollment-tokens",
        ] {
            let m = PERMISSIONS
                .iter()
                .find(|r| r.path == path && r.method != "GET")
                .unwrap();
            assert_eq!(m.roles, &[Role::Admin]);
        }
    }

    #[test]
    fn permissions_doc_lists_every_row() {
        let doc = include_str!("../../../../docs/PERMISSIONS.md");
        for r in PERMISSIONS {
            let row = format!("| `{} {}` |", r.method, r.path);
            assert!(doc.contains(&row), "docs/PERMISSIONS.md lacks {row}");
        }
    }
}
