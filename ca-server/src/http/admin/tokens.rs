//! Admin tokens: created with a role and an optional expiry, shown once, stored as SHA-256,
//! deleted with immediate effect (every request reads the store).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::parse_duration;
use crate::http::HttpState;
use crate::http::admin::{
    ErrorBody, Page, Role, audit, caller_with, json_body, outcome, request_id, rfc3339,
};
use crate::http::error::ApiError;
use crate::store::{self, TokenRecord};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1-64 characters of `[A-Za-z0-9._-]`; `bootstrap` is reserved.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// A duration like `"30d"`; absent means no expiry.
    #[serde(default)]
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: String,
    /// The secret. Shown once; only its hash is stored.
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[utoipa::path(operation_id = "tokens_create", post, path = "/admin/v1/tokens", tag = "tokens", request_body = CreateToken, security(("bearer" = [])),
    responses((status = 201, description = "Created", body = CreatedToken), (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody),
        (status = 403, description = "The token's role does not allow this", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)))]
pub async fn create(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let mut target = String::new();
    let result = async {
        let body = json_body(body)?;
        target = body.name.clone();
        let name_ok = !body.name.is_empty()
            && body.name.len() <= 64
            && body.name != "bootstrap"
            && body
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(ApiError::bad_request(
                "invalid_name",
                "names are 1-64 of [A-Za-z0-9._-], not `bootstrap`",
            ));
        }
        let role = Role::parse(&body.role).ok_or_else(|| {
            ApiError::bad_request("invalid_role", "role is viewer, operator or admin")
        })?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let expires_at = match &body.expires_in {
            None => None,
            Some(text) => {
                let duration = parse_duration("expires_in", text)
                    .map_err(|e| ApiError::bad_request("invalid_expiry", e.to_string()))?;
                Some(now + i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2))
            }
        };
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| ApiError::internal(&"system RNG failed"))?;
        let token = hex::encode(secret);
        let record = TokenRecord {
            name: body.name.clone(),
            role: role.as_str().to_owned(),
            token_sha256: hex::encode(digest(&SHA256, token.as_bytes())),
            created_by: caller.name.clone(),
            created_at: now,
            expires_at,
        };
        state
            .ca
            .store()
            .create_token(&record)
            .await
            .map_err(|e| match e {
                store::Error::Conflict(_) => {
                    ApiError::conflict(format!("a token named {} exists", body.name))
                }
                other => other.into(),
            })?;
        Ok(CreatedToken {
            name: record.name,
            role: record.role,
            token,
            expires_at: expires_at.map(rfc3339),
        })
    }
    .await;
    let (outcome, detail) = outcome(&result, |t| format!("role {}", t.role));
    audit(
        &state,
        &caller,
        "token.create",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(|t| (StatusCode::CREATED, Json(t)))
}

#[utoipa::path(operation_id = "tokens_list", get, path = "/admin/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, description = "OK", body = Page<TokenView>), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Page<TokenView>>, ApiError> {
    caller_with(&state, &headers, Role::Admin).await?;
    let records = state.ca.store().tokens().await?;
    Ok(Json(Page {
        items: records
            .into_iter()
            .map(|r| TokenView {
                name: r.name,
                role: r.role,
                created_by: r.created_by,
                created_at: rfc3339(r.created_at),
                expires_at: r.expires_at.map(rfc3339),
            })
            .collect(),
        next_cursor: None,
    }))
}

#[utoipa::path(operation_id = "tokens_delete", delete, path = "/admin/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204, description = "Done"), (status = 404, description = "Not found", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn delete(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let result = if state.ca.store().delete_token(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no token named {name}")))
    };
    let (outcome, detail) = outcome(&result, |_| String::new());
    audit(
        &state,
        &caller,
        "token.delete",
        &name,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result
}
