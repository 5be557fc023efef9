//! Admin API token management: `GET /api/v1/tokens` lists them (never a hash
//! or a secret), `POST /api/v1/tokens/{id}/revoke` revokes one at once.
//! Creating a token lives with the other creators in the parent module.

use super::rbac::{AuditNote, AuditScope, AuditSealed, Principal};
use super::{AdminState, ApiError};
use crate::store::AdminTokenInfo;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/tokens", get(list))
        .route("/api/v1/tokens/{id}/revoke", post(revoke))
}

fn token_json(t: &AdminTokenInfo) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": t.created_at,
        "revoked": t.revoked_at.is_some(),
        "revoked_at": t.revoked_at,
    })
}

async fn list(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let tokens = s.store.list_admin_tokens().await?;
    Ok(Json(json!({ "tokens": tokens.iter().map(token_json).collect::<Vec<_>>() })))
}

async fn revoke(
    State(s): State<Arc<AdminState>>,
    Extension(actor): Extension<Principal>,
    Extension(scope): Extension<AuditScope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // An unknown token gets no entry here: the middleware audits the 404.
    let seal = s.audit.sealer(|result: &Option<bool>| {
        result.map(|newly| {
            scope.entry(
                StatusCode::OK,
                AuditNote {
                    target_id: Some(id.clone()),
                    details: json!({ "already_revoked": !newly }),
                },
            )
        })
    });
    match s.store.revoke_admin_token(&id, Some(&seal)).await? {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no admin token {id}"))),
        Some(newly) => {
            if newly {
                info!(token_id = %id, actor = %actor.name, "Admin token revoked");
            }
            Ok((Extension(AuditSealed), Json(json!({ "id": id, "revoked": true }))).into_response())
        }
    }
}
