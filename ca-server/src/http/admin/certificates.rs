//! Certificates in the issuance record: search (filters, cursor pagination, newest first), one
//! certificate with its PEM and status, and revocation by serial.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::HttpState;
use crate::http::admin::{
    ErrorBody, Page, Role, audit, caller_with, decode_cursor, json_body, page_limit, paginate,
    request_id, rfc3339,
};
use crate::http::error::ApiError;
use crate::revocation::{self, Reason};
use crate::store::{CertificateFilter, CertificateRecord};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub trust_domain: Option<String>,
    pub spiffe_id: Option<String>,
    /// `valid`, `revoked` or `expired`.
    pub status: Option<String>,
    /// RFC 3339 time or unix seconds: only certificates whose notAfter is before it.
    pub expiring_before: Option<String>,
    /// 1 to 500, default 50.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CertificateView {
    pub serial: String,
    pub spiffe_id: String,
    pub trust_domain: String,
    /// `valid`, `revoked` or `expired`.
    pub status: String,
    pub not_before: String,
    pub not_after: String,
    pub issuer_key_id: String,
    pub requested_by: String,
    pub api: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
}

fn view(record: &CertificateRecord, now: i64, with_pem: bool) -> CertificateView {
    let status = if record.revoked_at.is_some() {
        "revoked"
    } else if record.not_after <= now {
        "expired"
    } else {
        "valid"
    };
    CertificateView {
        serial: record.serial.clone(),
        spiffe_id: record.spiffe_id.clone(),
        trust_domain: record.trust_domain.clone(),
        status: status.to_owned(),
        not_before: rfc3339(record.not_before),
        not_after: rfc3339(record.not_after),
        issuer_key_id: record.issuer_key_id.clone(),
        requested_by: record.requested_by.clone(),
        api: record.api.clone(),
        created_at: rfc3339(record.created_at),
        revoked_at: record.revoked_at.map(rfc3339),
        revocation_reason: record.revocation_reason.clone(),
        certificate_pem: with_pem.then(|| crate::pem::certificate(&record.der)),
    }
}

#[utoipa::path(operation_id = "certificates_list", get, path = "/admin/v1/certificates", tag = "certificates", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "OK", body = Page<CertificateView>), (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<CertificateView>>, ApiError> {
    caller_with(&state, &headers, Role::Viewer).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if let Some(status) = &query.status
        && !["valid", "revoked", "expired"].contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            "status is valid, revoked or expired",
        ));
    }
    let expiring_before = match &query.expiring_before {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .or_else(|| {
                    OffsetDateTime::parse(text, &Rfc3339)
                        .ok()
                        .map(|t| t.unix_timestamp())
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_time",
                        "expiring_before is RFC 3339 or unix seconds",
                    )
                })?,
        ),
    };
    for value in [&query.trust_domain, &query.spiffe_id]
        .into_iter()
        .flatten()
    {
        if value.len() > 2048 || value.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_filter",
                "filters are at most 2048 printable characters",
            ));
        }
    }
    let limit = page_limit(query.limit)?;
    let before = decode_cursor(query.cursor.as_deref())?;
    let filter = CertificateFilter {
        trust_domain: query.trust_domain,
        spiffe_id: query.spiffe_id,
        status: query.status,
        expiring_before,
        now,
    };
    let rows = state
        .ca
        .store()
        .search_certificates(&filter, before, limit + 1)
        .await?;
    Ok(Json(paginate(
        rows,
        limit,
        |r| r.id,
        |r| view(&r.record, now, false),
    )))
}

#[utoipa::path(operation_id = "certificates_show", get, path = "/admin/v1/certificates/{serial}", tag = "certificates",
    params(("serial" = String, Path, description = "Serial number, lower-case hex")),
    security(("bearer" = [])),
    responses((status = 200, description = "OK", body = CertificateView), (status = 404, description = "Not found", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody)))]
pub async fn show(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Result<Json<CertificateView>, ApiError> {
    caller_with(&state, &headers, Role::Viewer).await?;
    let serial = valid_serial(&serial)?;
    let records = state.ca.store().certificates_by_serial(&serial).await?;
    let record = records
        .first()
        .ok_or_else(|| ApiError::not_found(format!("no certificate with serial {serial}")))?;
    Ok(Json(view(
        record,
        OffsetDateTime::now_utc().unix_timestamp(),
        true,
    )))
}

fn valid_serial(serial: &str) -> Result<String, ApiError> {
    if serial.is_empty() || serial.len() > 40 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("invalid_serial", "serials are hex"));
    }
    Ok(serial.to_ascii_lowercase())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// RFC 5280 reason name (default `unspecified`).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevokeResponse {
    pub serial: String,
    pub spiffe_id: String,
    pub revoked_at: String,
    pub reason: String,
    /// False when the certificate was already revoked (nothing changed).
    pub newly_revoked: bool,
}

#[utoipa::path(operation_id = "certificates_revoke", post, path = "/admin/v1/certificates/{serial}/revoke", tag = "revocation",
    params(("serial" = String, Path, description = "Serial number, hex")), request_body = RevokeBody,
    security(("bearer" = [])),
    responses((status = 200, description = "OK", body = RevokeResponse), (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn revoke(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let caller = caller_with(&state, &headers, Role::Operator).await?;
    let request_id = request_id(&headers);
    let result = async {
        let body = json_body(body)?;
        let serial = valid_serial(&serial)?;
        let reason_name = body.reason.unwrap_or_else(|| "unspecified".to_owned());
        let reason = Reason::parse(&reason_name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_reason",
                format!("unknown reason {reason_name:?}; use an RFC 5280 name such as keyCompromise or superseded"),
            )
        })?;
        let revoked = state
            .ca
            .revoke_serial(&serial, reason, OffsetDateTime::now_utc())
            .await
            .map_err(revocation_error)?;
        Ok::<_, ApiError>(RevokeResponse {
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

pub fn revocation_error(error: revocation::Error) -> ApiError {
    match error {
        revocation::Error::UnknownSerial(serial) => {
            ApiError::not_found(format!("no certificate with serial {serial}"))
        }
        revocation::Error::UnknownReason(r) => ApiError::bad_request("invalid_reason", r),
        revocation::Error::UnknownTrustDomain(td) => {
            ApiError::not_found(format!("unknown trust domain {td}"))
        }
        revocation::Error::Store(e) => e.into(),
        other => ApiError::internal(&other),
    }
}
