//! `POST /admin/v1/issue`: an operator-issued certificate for a named SPIFFE ID, audited whether
//! it succeeds or is refused.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ca::{Api, Request};
use crate::config::parse_duration;
use crate::http::HttpState;
use crate::http::admin::{
    ErrorBody, Role, audit, caller_with, json_body, outcome, request_id, rfc3339,
};
use crate::http::error::ApiError;
use crate::spiffe::SpiffeId;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// PEM (or DER in PEM armor) PKCS#10 CSR; only its public key is used.
    pub csr: String,
    pub spiffe_id: String,
    /// Seconds, or a duration like `"1h"`; absent or 0 means the trust domain's default.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// A TTL given as seconds or as a duration string (`"1h"`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Ttl {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssueResponse {
    pub serial: String,
    pub spiffe_id: String,
    pub not_after: String,
    pub certificate_pem: String,
    /// Leaf, then intermediate.
    pub chain_pem: String,
    pub root_pem: String,
}

#[utoipa::path(operation_id = "issue_issue", post, path = "/admin/v1/issue", tag = "certificates", request_body = IssueBody,
    security(("bearer" = [])),
    responses((status = 200, description = "OK", body = IssueResponse), (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody),
        (status = 403, description = "The token's role does not allow this", body = ErrorBody), (status = 503, description = "Store unavailable; retry", body = ErrorBody)))]
pub async fn issue(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<IssueBody>, JsonRejection>,
) -> Result<Json<IssueResponse>, ApiError> {
    let caller = caller_with(&state, &headers, Role::Operator).await?;
    let request_id = request_id(&headers);
    let mut target = String::new();
    let result = async {
        let body = json_body(body)?;
        target = body.spiffe_id.clone();
        let spiffe_id = SpiffeId::parse(&body.spiffe_id)
            .map_err(|e| ApiError::bad_request("invalid_spiffe_id", e.to_string()))?;
        let ttl = match body.ttl {
            None => None,
            Some(Ttl::Seconds(seconds)) => Some(Duration::from_secs(seconds)),
            Some(Ttl::Text(text)) => Some(
                parse_duration("ttl", &text)
                    .map_err(|e| ApiError::bad_request("invalid_ttl", e.to_string()))?,
            ),
        };
        let enrolled = state
            .ca
            .enroll(
                &Request {
                    csr: body.csr.as_bytes(),
                    spiffe_id: &spiffe_id,
                    ttl,
                    requested_by: &format!("admin:{}", caller.name),
                    request_id: &request_id,
                    api: Api::Admin,
                    authenticated_by: "admin_token",
                    impersonated: false,
                },
                OffsetDateTime::now_utc(),
            )
            .await?;
        let certificate_pem = crate::pem::certificate(&enrolled.cert.der);
        Ok(IssueResponse {
            serial: enrolled.cert.serial.to_hex(),
            spiffe_id: spiffe_id.to_string(),
            not_after: rfc3339(enrolled.cert.not_after),
            chain_pem: format!("{certificate_pem}{}", enrolled.chain_pem.concat()),
            certificate_pem,
            root_pem: enrolled.roots_pem,
        })
    }
    .await;
    let (outcome, detail) = outcome(&result, |r| format!("serial {}", r.serial));
    audit(
        &state,
        &caller,
        "certificate.issue",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(Json)
}
