//! `GET /admin/v1/audit`: the hash-chained audit log, newest first, paginated.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::http::HttpState;
use crate::http::admin::{ErrorBody, Page, Role, caller_with, decode_cursor, page_limit, paginate};
use crate::http::error::ApiError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[utoipa::path(operation_id = "audit_list", get, path = "/admin/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, description = "OK", body = Page<AuditView>), (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    caller_with(&state, &headers, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = page_limit(query.limit)?;
    let before = decode_cursor(query.cursor.as_deref())?;
    let rows = state.ca.store().audit_page(before, limit + 1).await?;
    Ok(Json(paginate(
        rows,
        limit,
        |r| r.id,
        |r| AuditView {
            id: r.id,
            at: r.at,
            actor: r.actor.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            outcome: r.outcome.clone(),
            request_id: r.request_id.clone(),
            detail: r.detail.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        },
    )))
}
