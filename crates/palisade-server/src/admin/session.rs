//! Web console sign-in: `POST /console/login` trades an admin token for a
//! server-side session, `GET /console/session` tells the page who is signed
//! in (and its CSRF token), `POST /console/logout` ends it. The `rbac`
//! middleware accepts the session cookie in place of a bearer token.
//!
//! * The session id is 256 random bits, sent only as an `HttpOnly;
//!   SameSite=Strict` cookie; the store keeps its SHA-256 (like tokens).
//! * Sessions end after [`SESSION_MAX_AGE_SECS`] or [`SESSION_IDLE_SECS`]
//!   without use, at sign-out, or when their admin token is revoked. The
//!   role is the token's, read at every request.
//! * CSRF: a synchronizer token derived from the session id
//!   (`HMAC-SHA256(session id, "palisade-csrf/1")`), so it is bound to the
//!   session, unknowable without the cookie, and needs no storage. Every
//!   cookie-authenticated unsafe call must send it in `X-CSRF-Token`;
//!   cross-site `Origin` / `Sec-Fetch-Site` are refused outright.
//!
//! This module must never log or audit a token, a session id or a CSRF token.

use super::audit::{Action, ActorKind, NewAuditEntry, Outcome};
use super::rbac::{auth_failed, record, Origin, Role};
use super::AdminState;
use crate::store::SessionRecord;
use crate::tokens::hash_token;
use axum::body::to_bytes;
use axum::extract::Request;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{info, warn};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "palisade_session";
/// Header carrying the CSRF token on unsafe cookie-authenticated calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Absolute session lifetime.
pub const SESSION_MAX_AGE_SECS: i64 = 12 * 3600;
/// A session unused this long is over.
pub const SESSION_IDLE_SECS: i64 = 30 * 60;
/// `last_seen` is written at most this often per session.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Longest token accepted by the sign-in form.
const MAX_TOKEN_CHARS: usize = 256;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/session", get(session_info))
}

/// The CSRF token bound to a raw session id.
pub fn csrf_token(session_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_id.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"palisade-csrf/1");
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time string comparison (CSRF tokens).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The raw session id from the `Cookie` header, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Refuse requests a browser marks as coming from another site: an `Origin`
/// whose host is not this server's `Host`, or `Sec-Fetch-Site` other than
/// `same-origin` / `none`. Absent headers pass (non-browser clients).
pub fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = fetch_site {
        if site != "same-origin" && site != "none" {
            return Some("cross-site request (Sec-Fetch-Site)");
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // `Origin: null` is what a browser sends for a same-origin form
        // under `Referrer-Policy: no-referrer`; it passes only when the
        // browser also vouches with `Sec-Fetch-Site: same-origin`.
        if origin == "null" {
            if fetch_site != Some("same-origin") {
                return Some("cross-origin request (Origin)");
            }
        } else {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let origin_host = origin
                .split_once("://")
                .map(|(_, h)| h.trim_end_matches('/'));
            if origin_host.is_none() || origin_host != host {
                return Some("cross-origin request (Origin)");
            }
        }
    }
    None
}

/// Why a cookie-authenticated call is refused before RBAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfProblem {
    Missing,
    Wrong,
    CrossSite(&'static str),
}

impl CsrfProblem {
    pub fn reason(self) -> &'static str {
        match self {
            CsrfProblem::Missing => "CSRF token missing",
            CsrfProblem::Wrong => "CSRF token wrong",
            CsrfProblem::CrossSite(why) => why,
        }
    }
}

/// CSRF check for a cookie-authenticated request; safe methods pass.
pub fn check_csrf(
    method: &Method,
    headers: &HeaderMap,
    session_id: &str,
) -> Result<(), CsrfProblem> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(why) = cross_site(headers) {
        return Err(CsrfProblem::CrossSite(why));
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(CsrfProblem::Missing)?;
    if same(sent, &csrf_token(session_id)) {
        Ok(())
    } else {
        Err(CsrfProblem::Wrong)
    }
}

/// The live session for a raw id, extending its idle window.
pub(super) async fn resolve(
    state: &AdminState,
    session_id: &str,
) -> Result<Option<SessionRecord>, crate::store::StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let hash = hash_token(session_id);
    let found = state
        .store
        .live_session(&hash, now, now - SESSION_IDLE_SECS * 1000)
        .await?;
    if let Some(s) = &found {
        if now - s.last_seen_ms >= TOUCH_EVERY_MS {
            state.store.touch_session(&hash, now).await?;
        }
    }
    Ok(found)
}

fn origin_of(headers: &HeaderMap, peer: Option<SocketAddr>) -> Origin {
    Origin {
        ip: peer.map(|p| p.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// `Secure` when the browser reached us over TLS (directly or through a
/// proxy that says so).
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let s = format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&s).expect("cookie is ASCII")
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// Largest sign-in form body.
const MAX_FORM_BYTES: usize = 4096;

/// Decode one `application/x-www-form-urlencoded` value.
fn form_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = v.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The `name` field of a form body.
fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| form_decode(v))
}

fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn login(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let origin = origin_of(req.headers(), peer(&req));
    let headers = req.headers().clone();
    let form = match to_bytes(req.into_body(), MAX_FORM_BYTES).await {
        Ok(b) => String::from_utf8(b.to_vec())
            .ok()
            .and_then(|b| form_field(&b, "token")),
        Err(_) => None,
    };
    // A refused sign-in is audited, or answered 429 once its address has
    // failed too often (the console shows why).
    let fail = |reason: &'static str| {
        let origin = &origin;
        let s = &s;
        async move {
            warn!(reason, "Console sign-in refused");
            auth_failed(s, "unknown", "console-session", "", origin, json!({ "reason": reason }))
                .await
                .map(|_| redirect("/?error=too_many_attempts"))
        }
    };
    if let Some(why) = cross_site(&headers) {
        if let Some(throttled) = fail(why).await {
            return throttled;
        }
        return (StatusCode::FORBIDDEN, Json(json!({ "error": why }))).into_response();
    }
    let token = form.unwrap_or_default().trim().to_string();
    if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
        return fail("no token given")
            .await
            .unwrap_or_else(|| redirect("/?error=missing_token"));
    }
    let identity = match s.store.admin_token_identity(&hash_token(&token)).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            return fail("invalid token")
                .await
                .unwrap_or_else(|| redirect("/?error=invalid_token"));
        }
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    if identity.role.parse::<Role>().is_err() {
        return fail("unknown role")
            .await
            .unwrap_or_else(|| redirect("/?error=invalid_token"));
    }
    let raw: [u8; 32] = rand::random();
    let session_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let public_id = uuid::Uuid::now_v7().to_string();
    let now = chrono::Utc::now().timestamp_millis();
    if let Err(error) = s
        .store
        .purge_sessions(now, now - SESSION_IDLE_SECS * 1000)
        .await
    {
        warn!(%error, "Could not purge old console sessions");
    }
    // The session and its sign-in entry commit together: no session
    // exists that the log does not show.
    let seal = s.audit.sealer(|_: &()| {
        Some(NewAuditEntry {
            actor_kind: ActorKind::Token,
            actor_id: identity.name.clone(),
            action: Action::Login,
            outcome: Outcome::Success,
            target_type: "console-session".into(),
            target_id: public_id.clone(),
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            details: json!({ "caller_role": identity.role, "caller_token_id": identity.id }),
        })
    });
    if let Err(e) = s
        .store
        .create_session(
            &hash_token(&session_id),
            &public_id,
            &identity.id,
            now + SESSION_MAX_AGE_SECS * 1000,
            Some(&seal),
        )
        .await
    {
        return super::ApiError::from(e).into_response();
    }
    info!(session = %public_id, token = %identity.name, role = %identity.role, "Console sign-in");
    let mut resp = redirect("/");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&session_id, SESSION_MAX_AGE_SECS, secure(&headers)),
    );
    resp
}

async fn logout(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let origin = origin_of(req.headers(), peer(&req));
    let method = req.method().clone();
    let headers = req.headers().clone();
    let Some(session_id) = session_cookie(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "not signed in" })),
        )
            .into_response();
    };
    let session = match resolve(&s, &session_id).await {
        Ok(Some(x)) => x,
        Ok(None) => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "session expired" })),
            )
                .into_response()
        }
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    if let Err(problem) = check_csrf(&method, &headers, &session_id) {
        record(
            &s,
            ActorKind::Token,
            &session.token_name,
            Action::Delete,
            Outcome::Failure,
            "console-session",
            &session.public_id,
            &origin,
            json!({ "reason": problem.reason(), "via": "session" }),
        )
        .await;
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": problem.reason() })),
        )
            .into_response();
    }
    let seal = s.audit.sealer(|_: &Option<String>| {
        Some(NewAuditEntry {
            actor_kind: ActorKind::Token,
            actor_id: session.token_name.clone(),
            action: Action::Delete,
            outcome: Outcome::Success,
            target_type: "console-session".into(),
            target_id: session.public_id.clone(),
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            details: json!({ "reason": "sign-out" }),
        })
    });
    if let Err(e) = s
        .store
        .delete_session(&hash_token(&session_id), Some(&seal))
        .await
    {
        return super::ApiError::from(e).into_response();
    }
    info!(session = %session.public_id, token = %session.token_name, "Console sign-out");
    let mut resp = (StatusCode::OK, Json(json!({ "signed_out": true }))).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, secure(&headers)));
    resp
}

/// Who is signed in, their role, what it may call, and the CSRF token the
/// page must send.
async fn session_info(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let Some(session_id) = session_cookie(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "not signed in" })),
        )
            .into_response();
    };
    match resolve(&s, &session_id).await {
        Ok(Some(sess)) => {
            // What this role may call: the console hides what it cannot use.
            let permissions: Vec<String> = sess
                .role
                .parse::<Role>()
                .map(|role| {
                    super::rbac::PERMISSIONS
                        .iter()
                        .filter(|r| r.roles.contains(&role))
                        .map(|r| format!("{} {}", r.method, r.path))
                        .collect()
                })
                .unwrap_or_default();
            let mut resp = Json(json!({
                "name": sess.token_name,
                "role": sess.role,
                "permissions": permissions,
                "csrf_token": csrf_token(&session_id),
                "expires_at_unix_ms": sess.expires_at_ms,
                "idle_timeout_secs": SESSION_IDLE_SECS,
            }))
            .into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "session expired" })),
        )
            .into_response(),
        Err(e) => super::ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_field("a=1&token=pal_admin_x%2By+z", "token").as_deref(),
            Some("pal_admin_x+y z")
        );
        assert_eq!(form_field("token=%zz", "token"), None);
        assert_eq!(form_field("other=1", "token"), None);
    }

    #[test]
    fn cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; palisade_session=abc ; b=2")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&headers(&[("cookie", "a=1")])), None);
        assert_eq!(
            session_cookie(&headers(&[("cookie", "palisade_session=")])),
            None
        );
    }

    #[test]
    fn csrf_is_bound_to_the_session_and_checked_on_unsafe_methods() {
        let t = csrf_token("sess-1");
        assert_ne!(t, csrf_token("sess-2"));
        assert!(check_csrf(&Method::GET, &HeaderMap::new(), "sess-1").is_ok());
        assert_eq!(
            check_csrf(&Method::POST, &HeaderMap::new(), "sess-1"),
            Err(CsrfProblem::Missing)
        );
        assert_eq!(
            check_csrf(
                &Method::PUT,
                &headers(&[("x-csrf-token", &csrf_token("sess-2"))]),
                "sess-1"
            ),
            Err(CsrfProblem::Wrong)
        );
        assert!(check_csrf(&Method::DELETE, &headers(&[("x-csrf-token", &t)]), "sess-1").is_ok());
        let evil = headers(&[
            ("x-csrf-token", &t),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(matches!(
            check_csrf(&Method::POST, &evil, "sess-1"),
            Err(CsrfProblem::CrossSite(_))
        ));
        let null = headers(&[("x-csrf-token", &t), ("origin", "null")]);
        assert!(matches!(
            check_csrf(&Method::POST, &null, "sess-1"),
            Err(CsrfProblem::CrossSite(_))
        ));
        let null_same = headers(&[
            ("x-csrf-token", &t),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check_csrf(&Method::POST, &null_same, "sess-1").is_ok());
        let fetch = headers(&[("x-csrf-token", &t), ("sec-fetch-site", "cross-site")]);
        assert!(matches!(
            check_csrf(&Method::POST, &fetch, "sess-1"),
            Err(CsrfProblem::CrossSite(_))
        ));
        let ok = headers(&[
            ("x-csrf-token", &t),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check_csrf(&Method::POST, &ok, "sess-1").is_ok());
    }
}
