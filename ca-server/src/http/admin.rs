//! The admin API (bearer token). For now: `POST /admin/v1/issue`, an operator-issued certificate
//! for a named SPIFFE ID, audited whether it succeeds or is refused.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::parse_duration;
use crate::enrollment::{Api, Request, to_pem};
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::spiffe::SpiffeId;
use crate::store::AuditRecord;

/// Largest admin request body; a CSR is capped at 64 KiB on its own.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/admin/v1/issue", post(issue))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The caller of an admin route, once its token checked out.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub name: String,
}

/// Checks `Authorization: Bearer <token>` against the bootstrap token, comparing SHA-256 digests
/// in constant time.
pub fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<AdminCaller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthenticated)?;
    let presented = digest(&SHA256, token.trim().as_bytes());
    if constant_time_eq(presented.as_ref(), state.bootstrap_token_sha256.as_slice()) {
        Ok(AdminCaller {
            name: "bootstrap".to_owned(),
        })
    } else {
        Err(ApiError::unauthenticated())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    pub csr: String,
    pub spiffe_id: String,
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// A TTL given as seconds or as a duration string (`"1h"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Serialize)]
pub struct IssueResponse {
    pub serial: String,
    pub spiffe_id: String,
    pub not_after: String,
    pub certificate_pem: String,
    pub chain_pem: String,
    pub root_pem: String,
}

async fn issue(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<IssueBody>, JsonRejection>,
) -> Result<Json<IssueResponse>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let now = OffsetDateTime::now_utc();
    let request_id = request_id(&headers);
    let result = issue_inner(&state, &caller, &request_id, body, now).await;
    let (outcome, target, detail) = match &result {
        Ok(response) => (
            "success",
            response.spiffe_id.clone(),
            format!("serial {}", response.serial),
        ),
        Err(e) => (
            "rejected",
            String::new(),
            format!("{}: {}", e.code, e.message),
        ),
    };
    let event = AuditRecord {
        at: now.unix_timestamp(),
        actor: caller.name.clone(),
        action: "certificate.issue".to_owned(),
        target,
        outcome: outcome.to_owned(),
        request_id,
        detail,
    };
    if let Err(e) = state.ca.store.append_audit(&event).await {
        tracing::warn!(error = %e, "could not write audit event");
    }
    result.map(Json)
}

async fn issue_inner(
    state: &HttpState,
    caller: &AdminCaller,
    request_id: &str,
    body: Result<Json<IssueBody>, JsonRejection>,
    now: OffsetDateTime,
) -> Result<IssueResponse, ApiError> {
    let Json(body) = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                rejection.status(),
                "payload_too_large",
                "request body too large",
            )
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
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
    let request = Request {
        csr: body.csr.as_bytes(),
        spiffe_id: &spiffe_id,
        ttl,
        requested_by: &format!("admin:{}", caller.name),
        request_id,
        api: Api::Admin,
    };
    let enrolled = state.ca.enroll(&request, now).await?;
    let not_after = OffsetDateTime::from_unix_timestamp(enrolled.cert.not_after)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let certificate_pem = to_pem(&enrolled.cert.der);
    Ok(IssueResponse {
        serial: enrolled.cert.serial.to_hex(),
        spiffe_id: spiffe_id.to_string(),
        not_after,
        chain_pem: format!("{certificate_pem}{}", to_pem(&enrolled.intermediate_der)),
        certificate_pem,
        root_pem: enrolled.roots.iter().map(|der| to_pem(der)).collect(),
    })
}

/// The caller's `x-request-id` if it is sane, else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            crate::serial::Serial::random()
                .map(|s| s.to_hex())
                .unwrap_or_default()
        })
}
