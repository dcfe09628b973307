//! The admin API (bearer token). For now: `POST /admin/v1/issue`, an operator-issued certificate
//! for a named SPIFFE ID, audited whether it succeeds or is refused.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{delete, post};
use axum::{Json, Router};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::parse_duration;
use crate::enrollment::{Api, Request, to_pem};
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::revocation::{self, Reason};
use crate::spiffe::SpiffeId;
use crate::store::AuditRecord;

/// Largest admin request body; a CSR is capped at 64 KiB on its own.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/admin/v1/issue", post(issue))
        .route("/admin/v1/certificates/{serial}/revoke", post(revoke))
        .route("/admin/v1/denied-identities", post(deny).get(list_denied))
        .route("/admin/v1/denied-identities/{id}", delete(lift_deny))
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

/// Appends an audit event; a failure to audit is logged, never hidden from the log.
async fn audit(
    state: &HttpState,
    caller: &AdminCaller,
    action: &str,
    target: &str,
    outcome: &str,
    request_id: &str,
    detail: String,
) {
    let event = AuditRecord {
        at: OffsetDateTime::now_utc().unix_timestamp(),
        actor: caller.name.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        request_id: request_id.to_owned(),
        detail,
    };
    if let Err(e) = state.ca.store.append_audit(&event).await {
        tracing::warn!(error = %e, action, "could not write audit event");
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                rejection.status(),
                "payload_too_large",
                "request body too large",
            )
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RevokeResponse {
    pub serial: String,
    pub spiffe_id: String,
    pub revoked_at: String,
    pub reason: String,
    /// False when the certificate was already revoked (nothing changed).
    pub newly_revoked: bool,
}

async fn revoke(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let request_id = request_id(&headers);
    let result = async {
        let body = json_body(body)?;
        if serial.is_empty() || serial.len() > 40 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request("invalid_serial", "serials are hex"));
        }
        let reason_name = body.reason.unwrap_or_else(|| "unspecified".to_owned());
        let reason = Reason::parse(&reason_name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_reason",
                format!("unknown reason {reason_name:?}; use one of the RFC 5280 names, e.g. keyCompromise, superseded"),
            )
        })?;
        let revoked = state
            .ca
            .revoke_serial(&serial, reason, OffsetDateTime::now_utc())
            .await
            .map_err(revocation_error)?;
        Ok(RevokeResponse {
            serial: revoked.serial,
            spiffe_id: revoked.spiffe_id,
            revoked_at: rfc3339(revoked.revoked_at),
            reason: revoked.reason,
            newly_revoked: revoked.newly_revoked,
        })
    }
    .await;
    let (outcome, detail) = match &result {
        Ok(r) if r.newly_revoked => ("success", format!("reason {}", r.reason)),
        Ok(_) => ("unchanged", "already revoked".to_owned()),
        Err(e) => ("rejected", format!("{}: {}", e.code, e.message)),
    };
    audit(
        &state,
        &caller,
        "certificate.revoke",
        &serial,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(Json)
}

fn revocation_error(error: revocation::Error) -> ApiError {
    match error {
        revocation::Error::UnknownSerial(serial) => {
            ApiError::not_found(format!("no certificate with serial {serial}"))
        }
        revocation::Error::UnknownReason(r) => ApiError::bad_request("invalid_reason", r),
        revocation::Error::UnknownTrustDomain(td) => {
            ApiError::not_found(format!("unknown trust domain {td}"))
        }
        revocation::Error::Store(e) => e.into(),
        other => ApiError::from_internal(&other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    pub spiffe_id: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub revoke_existing: bool,
}

#[derive(Debug, Serialize)]
pub struct DeniedView {
    pub id: String,
    pub spiffe_id: String,
    pub reason: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_certificates: Option<u64>,
}

impl DeniedView {
    fn of(record: &crate::store::DeniedRecord, revoked: Option<u64>) -> DeniedView {
        DeniedView {
            id: record.id.to_string(),
            spiffe_id: record.spiffe_id.clone(),
            reason: record.reason.clone(),
            created_at: rfc3339(record.created_at),
            revoked_certificates: revoked,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

async fn deny(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<DenyBody>, JsonRejection>,
) -> Result<(StatusCode, Json<DeniedView>), ApiError> {
    let caller = authenticate(&state, &headers)?;
    let request_id = request_id(&headers);
    let mut target = String::new();
    let result = async {
        let body = json_body(body)?;
        target = body.spiffe_id.chars().take(256).collect();
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
        Ok(DeniedView::of(&record, Some(revoked)))
    }
    .await;
    let (outcome, detail) = match &result {
        Ok(v) => (
            "success",
            format!("revoked {}", v.revoked_certificates.unwrap_or(0)),
        ),
        Err(e) => ("rejected", format!("{}: {}", e.code, e.message)),
    };
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

async fn list_denied(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Items<DeniedView>>, ApiError> {
    authenticate(&state, &headers)?;
    let records = state.ca.store.denied().await?;
    Ok(Json(Items {
        items: records.iter().map(|r| DeniedView::of(r, None)).collect(),
    }))
}

async fn lift_deny(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = authenticate(&state, &headers)?;
    let request_id = request_id(&headers);
    let result = async {
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::not_found("no such deny"))?;
        match state.ca.lift_deny(id).await.map_err(revocation_error)? {
            Some(record) => Ok(record.spiffe_id),
            None => Err(ApiError::not_found("no such deny")),
        }
    }
    .await;
    let (outcome, target) = match &result {
        Ok(spiffe_id) => ("success", spiffe_id.clone()),
        Err(_) => ("rejected", id.clone()),
    };
    audit(
        &state,
        &caller,
        "identity.lift_deny",
        &target,
        outcome,
        &request_id,
        String::new(),
    )
    .await;
    result.map(|_| StatusCode::NO_CONTENT)
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
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
