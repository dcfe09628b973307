//! Denied identities: add (optionally revoking live certificates), list, lift.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::http::HttpState;
use crate::http::admin::certificates::revocation_error;
use crate::http::admin::{
    ErrorBody, Page, Role, audit, caller_with, json_body, outcome, request_id, rfc3339,
};
use crate::http::error::ApiError;
use crate::spiffe::SpiffeId;
use crate::store::DeniedRecord;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    pub spiffe_id: String,
    #[serde(default)]
    pub reason: String,
    /// Also revoke the identity's live certificates (reason privilegeWithdrawn).
    #[serde(default)]
    pub revoke_existing: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeniedView {
    pub id: String,
    pub spiffe_id: String,
    pub reason: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_certificates: Option<u64>,
}

fn view(record: &DeniedRecord, revoked: Option<u64>) -> DeniedView {
    DeniedView {
        id: record.id.to_string(),
        spiffe_id: record.spiffe_id.clone(),
        reason: record.reason.clone(),
        created_at: rfc3339(record.created_at),
        created_by: record.created_by.clone(),
        revoked_certificates: revoked,
    }
}

#[utoipa::path(operation_id = "denied_deny", post, path = "/admin/v1/denied-identities", tag = "revocation", request_body = DenyBody,
    security(("bearer" = [])),
    responses((status = 201, description = "Created", body = DeniedView), (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody),
        (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn deny(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<DenyBody>, JsonRejection>,
) -> Result<(StatusCode, Json<DeniedView>), ApiError> {
    let caller = caller_with(&state, &headers, Role::Operator).await?;
    let request_id = request_id(&headers);
    let mut target = String::new();
    let result = async {
        let body = json_body(body)?;
        target = body.spiffe_id.clone();
        let spiffe_id = SpiffeId::parse(&body.spiffe_id)
            .map_err(|e| ApiError::bad_request("invalid_spiffe_id", e.to_string()))?;
        if body.reason.len() > 1024 {
            return Err(ApiError::bad_request(
                "invalid_reason",
                "reason longer than 1024 bytes",
            ));
        }
        let (record, revoked) = state
            .ca
            .deny(
                &spiffe_id,
                &body.reason,
                body.revoke_existing,
                &caller.name,
                OffsetDateTime::now_utc(),
            )
            .await
            .map_err(revocation_error)?;
        Ok(view(&record, Some(revoked)))
    }
    .await;
    let (outcome, detail) = outcome(&result, |v| {
        format!("revoked {}", v.revoked_certificates.unwrap_or(0))
    });
    audit(
        &state,
        &caller,
        "identity.deny",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(|v| (StatusCode::CREATED, Json(v)))
}

#[utoipa::path(operation_id = "denied_list", get, path = "/admin/v1/denied-identities", tag = "revocation", security(("bearer" = [])),
    responses((status = 200, description = "OK", body = Page<DeniedView>), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Page<DeniedView>>, ApiError> {
    caller_with(&state, &headers, Role::Viewer).await?;
    let records = state.ca.store().denied().await?;
    Ok(Json(Page {
        items: records.iter().map(|r| view(r, None)).collect(),
        next_cursor: None,
    }))
}

#[utoipa::path(operation_id = "denied_lift", delete, path = "/admin/v1/denied-identities/{id}", tag = "revocation",
    params(("id" = String, Path, description = "The deny's id")), security(("bearer" = [])),
    responses((status = 204, description = "Done"), (status = 404, description = "Not found", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn lift(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = caller_with(&state, &headers, Role::Operator).await?;
    let request_id = request_id(&headers);
    let result = async {
        let number: i64 = id
            .parse()
            .map_err(|_| ApiError::not_found("no such deny"))?;
        match state.ca.lift_deny(number).await.map_err(revocation_error)? {
            Some(record) => Ok(record.spiffe_id),
            None => Err(ApiError::not_found("no such deny")),
        }
    }
    .await;
    let target = result
        .as_ref()
        .map(Clone::clone)
        .unwrap_or_else(|_| id.clone());
    let (outcome, detail) = outcome(&result, |_| String::new());
    audit(
        &state,
        &caller,
        "identity.lift_deny",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(|_| StatusCode::NO_CONTENT)
}
