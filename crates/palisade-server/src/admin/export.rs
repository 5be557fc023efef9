//! `GET /api/v1/export` (events as JSON, JSONL or RFC 5424 syslog, streamed
//! a page at a time) and `GET /api/v1/forwarders` (live forwarding status).
//!
//! The export takes the same filters as `GET /api/v1/events` through the one
//! shared [`EventQuery::into_filter`], plus `format`, oldest first. It must never collect the
//! whole result: memory stays at one page ([`EXPORT_PAGE_ROWS`]) whatever
//! the export's size, and a failure mid-stream ends the body with an error
//! record (see [`crate::export`]).

use super::rbac::{AuditNote, Principal};
use super::events::EventQuery;
use super::{AdminState, ApiError};
use crate::export::{event_pages, Encoder, ExportFormat, EXPORT_PAGE_ROWS};
use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;

/// `format` out of the query, and the rest (the event filters).
fn split_format(raw: &str) -> Result<(ExportFormat, String), ApiError> {
    let mut format = None;
    let mut rest = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", v)) => {
                if format.is_some() {
                    return Err(ApiError::bad_request("format: given more than once"));
                }
                format = Some(v.parse::<ExportFormat>().map_err(|e| ApiError::bad_request(e.to_string()))?);
            }
            _ => rest.push(pair),
        }
    }
    let format = format.ok_or_else(|| ApiError::bad_request("format: required (json, jsonl or syslog)"))?;
    Ok((format, rest.join("&")))
}

pub(super) async fn export_events(
    State(s): State<Arc<AdminState>>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (format, rest) = split_format(raw.as_deref().unwrap_or(""))?;
    let uri: Uri = format!("/?{rest}")
        .parse()
        .map_err(|_| ApiError::bad_request("query string is not valid"))?;
    let Query(q): Query<EventQuery> =
        Query::try_from_uri(&uri).map_err(|e| ApiError::bad_request(e.body_text()))?;
    if q.limit.is_some() {
        return Err(ApiError::bad_request(
            "limit: not supported by export (it streams every match; narrow it with since, until or after)",
        ));
    }
    if q.cursor.is_some() {
        return Err(ApiError::bad_request(
            "cursor: not supported by export (it streams oldest first; use after)",
        ));
    }
    let mut filter = q
        .into_filter(EXPORT_PAGE_ROWS)
        .map_err(|p| ApiError::bad_request(p.join("; ")))?;
    filter.limit = EXPORT_PAGE_ROWS;
    let after = filter.after_seq.unwrap_or(0);
    // Oldest first from `after` (a set after_seq is what orders the pages).
    filter.after_seq = Some(after);
    let encoder = Encoder::new(format, who.role.hides_content(), after);
    let head = encoder.begin();
    let pages = Box::pin(event_pages(s.store.clone(), filter, None));
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures_util::stream::unfold(Tail::Pages(pages, encoder), move |state| async move {
            match state {
                Tail::Pages(mut pages, mut enc) => match pages.next().await {
                    Some(Ok(rows)) => {
                        let chunk = enc.page(&rows);
                        Some((Ok(chunk), Tail::Pages(pages, enc)))
                    }
                    None => {
                        tracing::info!(records = enc.count, format = format.as_str(), "Event export finished");
                        Some((Ok(enc.end()), Tail::Done))
                    }
                    Some(Err(error)) => {
                        tracing::error!(%error, after_seq = enc.last_seq, "Event export failed mid-stream");
                        Some((Ok(enc.error("store unavailable")), Tail::Done))
                    }
                },
                Tail::Done => None,
            }
        }),
    );
    let filename = format!(
        "palisade-events-{}.{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        format.extension()
    );
    let note = AuditNote {
        target_id: None,
        details: json!({ "format": format.as_str() }),
    };
    Ok((
        StatusCode::OK,
        Extension(note),
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Where an export body is.
enum Tail<P> {
    Pages(P, Encoder),
    Done,
}

/// `GET /api/v1/forwarders`: every configured target, its saved cursor and
/// lag (events stored after the cursor, by seq), and this server's view of
/// it (state, last error).
pub(super) async fn list_forwarders(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let head = s.store.max_event_seq().await?;
    let saved = s.store.forward_cursors().await?;
    let targets: Vec<Value> = s
        .forwarders
        .statuses()
        .into_iter()
        .map(|st| {
            let cursor = saved
                .iter()
                .find(|c| c.name == st.name)
                .map_or(st.cursor, |c| c.last_seq.max(st.cursor));
            let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("cursor".into(), json!(cursor));
                obj.insert("lag".into(), json!((head - cursor).max(0)));
            }
            v
        })
        .collect();
    Ok(Json(json!({ "head_seq": head, "forwarders": targets })))
}
