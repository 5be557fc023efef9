//! `GET /api/v1/events`, `GET /api/v1/events/{id}` and `GET /api/v1/usage`.
//!
//! [`EventQuery::into_filter`] is the ONE place that turns HTTP filter
//! parameters into a [`store::EventFilter`] (exports call it too): every
//! parameter is validated here with a message naming it, and values only ever
//! reach the store as bound values (free text as quoted words). Must never
//! return prompt or response text to a role that hides content, and never log
//! filter values (they can name people).

use super::{AdminState, ApiError, Principal};
use crate::store::{EventFilter, StoredEvent, TextQuery, UsageGroup, UsageQuery, UsageRow};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// Longest accepted filter value (user, app, model, ...), in bytes.
pub const MAX_FILTER_LEN: usize = 256;
/// Longest accepted free-text query, in bytes.
pub const MAX_TEXT_QUERY_LEN: usize = 512;
/// Most words in a free-text query.
pub const MAX_TEXT_WORDS: usize = 16;
/// Prefix inside an encoded cursor, so a stray base64 string is refused.
const CURSOR_TAG: &str = "seq:";

/// The filter parameters of `/api/v1/events` (and of exports).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// `user.email` when it contains `@`, else `user.os_user`.
    pub user: Option<String>,
    pub device: Option<String>,
    pub app: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// `allow`, `block` or `redact`.
    pub decision: Option<String>,
    /// A finding's detector id.
    pub detector: Option<String>,
    pub kind: Option<String>,
    /// RFC 3339, or Unix milliseconds.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Free text: every word must occur in the prompt or the response.
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only events with `seq` greater than this, listed oldest first
    /// (tailing; the page's `next_after` continues it).
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

impl EventQuery {
    /// Validate every parameter, reporting all problems at once (one line
    /// each, naming the parameter). `max_limit` caps `limit` and is the
    /// default.
    pub fn into_filter(self, max_limit: u32) -> Result<EventFilter, Vec<String>> {
        let mut p = Vec::new();
        let since = parse_time("since", self.since.as_deref(), &mut p);
        let until = parse_time("until", self.until.as_deref(), &mut p);
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                p.push("since: must be before until".to_string());
            }
        }
        let limit = self.limit.unwrap_or(max_limit);
        if limit == 0 || limit > max_limit {
            p.push(format!("limit: must be 1..={max_limit}"));
        }
        let (mut os_user, mut user_email) = (None, None);
        if let Some(u) = value("user", self.user, &mut p) {
            if u.contains('@') {
                user_email = Some(u);
            } else {
                os_user = Some(u);
            }
        }
        let decision = value("decision", self.decision, &mut p);
        if let Some(d) = &decision {
            if !["allow", "block", "redact"].contains(&d.as_str()) {
                p.push(format!(
                    "decision: {d:?} is not one of allow, block, redact"
                ));
            }
        }
        let kind = value("kind", self.kind, &mut p);
        if let Some(k) = &kind {
            if !k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
            {
                p.push(format!("kind: {k:?} must be lowercase [a-z0-9_.]"));
            }
        }
        let text = self.q.and_then(|q| {
            if q.len() > MAX_TEXT_QUERY_LEN {
                p.push(format!("q: longer than {MAX_TEXT_QUERY_LEN} bytes"));
                return None;
            }
            if q.chars().any(char::is_control) {
                p.push("q: contains control characters".to_string());
                return None;
            }
            match TextQuery::new(&q) {
                None => {
                    p.push("q: has no word to search for (letters or digits)".to_string());
                    None
                }
                Some(t) if t.words().len() > MAX_TEXT_WORDS => {
                    p.push(format!("q: more than {MAX_TEXT_WORDS} words"));
                    None
                }
                Some(t) => Some(t),
            }
        });
        let before_seq = self.cursor.and_then(|c| match decode_cursor(&c) {
            Some(seq) => Some(seq),
            None => {
                p.push("cursor: not a cursor this server issued".to_string());
                None
            }
        });
        if self.after.is_some_and(|a| a < 0) {
            p.push("after: must be 0 or more".to_string());
        }
        if self.after.is_some() && before_seq.is_some() {
            p.push("after: cannot be combined with cursor".to_string());
        }
        let filter = EventFilter {
            device_id: value("device", self.device, &mut p),
            kind,
            provider: value("provider", self.provider, &mut p),
            model: value("model", self.model, &mut p),
            app: value("app", self.app, &mut p),
            decision,
            os_user,
            user_email,
            detector: value("detector", self.detector, &mut p),
            text,
            since,
            until,
            before_seq,
            after_seq: self.after,
            limit,
        };
        if p.is_empty() {
            Ok(filter)
        } else {
            Err(p)
        }
    }
}

/// A plain filter value: trimmed, non-empty, bounded, no control characters.
fn value(field: &str, v: Option<String>, p: &mut Vec<String>) -> Option<String> {
    let v = v?.trim().to_string();
    if v.is_empty() {
        p.push(format!("{field}: must not be empty"));
    } else if v.len() > MAX_FILTER_LEN {
        p.push(format!("{field}: longer than {MAX_FILTER_LEN} bytes"));
    } else if v.chars().any(char::is_control) {
        p.push(format!("{field}: contains control characters"));
    } else {
        return Some(v);
    }
    None
}

/// RFC 3339, or Unix milliseconds (digits only).
pub fn parse_time(field: &str, v: Option<&str>, p: &mut Vec<String>) -> Option<DateTime<Utc>> {
    let v = v?;
    if !v.is_empty() && v.len() <= 15 && v.bytes().all(|b| b.is_ascii_digit()) {
        let parsed = v
            .parse::<i64>()
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
        if parsed.is_none() {
            p.push(format!("{field}: {v:?} is out of range"));
        }
        return parsed;
    }
    match DateTime::parse_from_rfc3339(v) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            let shown: String = v.chars().take(64).collect();
            p.push(format!(
                "{field}: {shown:?} is not an RFC 3339 time or Unix milliseconds ({e})"
            ));
            None
        }
    }
}

/// The cursor for the page after one ending at `seq` (opaque to clients).
pub fn encode_cursor(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{seq}"))
}

fn decode_cursor(c: &str) -> Option<i64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.trim())
        .ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    text.strip_prefix(CURSOR_TAG)?
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0)
}

/// The stored JSON plus `seq`, without content for roles that hide it.
pub fn event_json(r: StoredEvent, hide_content: bool) -> Value {
    let mut v: Value = serde_json::from_str(&r.json).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("seq".into(), json!(r.seq));
    }
    if hide_content {
        crate::export::strip_content(&mut v);
    }
    v
}

/// `GET /api/v1/events`: newest first, one page.
pub(super) async fn list(
    State(s): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if who.role.hides_content() && q.q.is_some() {
        // Matching on text the role may not read would reveal it.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "role {} may not search prompt or response text (q)",
                who.role.as_str()
            ),
        ));
    }
    let filter = q
        .into_filter(s.limits.events_page_limit)
        .map_err(|p| ApiError::bad_request(p.join("; ")))?;
    let rows = s.store.query_events(&filter).await?;
    let full = rows.len() == filter.limit as usize;
    let last = rows.last().filter(|_| full).map(|r| r.seq);
    let hide = who.role.hides_content();
    let events: Vec<Value> = rows.into_iter().map(|r| event_json(r, hide)).collect();
    if filter.after_seq.is_some() {
        return Ok(Json(json!({ "events": events, "next_after": last })));
    }
    Ok(Json(
        json!({ "events": events, "next_cursor": last.map(encode_cursor) }),
    ))
}

/// `GET /api/v1/events/{id}`.
pub(super) async fn detail(
    State(s): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("id: not a UUID"))?;
    match s.store.get_event(id).await? {
        Some(r) => Ok(Json(event_json(r, who.role.hides_content()))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event {id}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageParams {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn usage_group(v: &str) -> Option<UsageGroup> {
    Some(match v {
        "user" => UsageGroup::User,
        "team" => UsageGroup::Team,
        "app" => UsageGroup::App,
        "model" => UsageGroup::Model,
        "day" => UsageGroup::Day,
        _ => return None,
    })
}

fn usage_json(r: &UsageRow) -> Value {
    json!({
        "key": r.key,
        "requests": r.requests,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cached_input_tokens": r.cached_input_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "cost_usd": r.cost_usd,
        "priced_requests": r.priced_requests,
        "unpriced_requests": r.unpriced_requests,
    })
}

/// `GET /api/v1/usage?group_by=user|team|app|model|day&since&until`.
pub(super) async fn usage(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut p = Vec::new();
    let group_by = match q.group_by.as_deref() {
        None => {
            p.push("group_by: required (user, team, app, model or day)".to_string());
            None
        }
        Some(g) => usage_group(g).or_else(|| {
            let shown: String = g.chars().take(32).collect();
            p.push(format!(
                "group_by: {shown:?} is not one of user, team, app, model, day"
            ));
            None
        }),
    };
    let since = parse_time("since", q.since.as_deref(), &mut p);
    let until = parse_time("until", q.until.as_deref(), &mut p);
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            p.push("since: must be before until".to_string());
        }
    }
    let Some(group_by) = group_by.filter(|_| p.is_empty()) else {
        return Err(ApiError::bad_request(p.join("; ")));
    };
    let rows = s
        .store
        .usage(&UsageQuery {
            group_by,
            since,
            until,
        })
        .await?;
    let name = q.group_by.unwrap_or_default();
    Ok(Json(json!({
        "group_by": name,
        "since": since,
        "until": until,
        "groups": rows.iter().map(usage_json).collect::<Vec<_>>(),
    })))
}
