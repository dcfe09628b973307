//! Plug-in CAs over the admin API: `POST /admin/v1/trust-domains/{td}/import` (Istio's
//! `cacerts` files, with the key or for the key of a CSR made here) and
//! `POST /admin/v1/trust-domains/{td}/csr` (make the next intermediate's key here and get its
//! CSR). Both need the admin role; every request, accepted or refused, is audited.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::external_ca::CaFiles;
use crate::http::HttpState;
use crate::http::admin::trust_domains::RotationView;
use crate::http::admin::{ErrorBody, Role, audit, caller_with, json_body, request_id, rfc3339};
use crate::http::error::ApiError;
use crate::spiffe::TrustDomain;

/// Istio's `cacerts` files, as PEM text.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// `ca-cert.pem`: the intermediate that will sign leaves.
    pub ca_cert_pem: String,
    /// `ca-key.pem` (PKCS#8, PKCS#1 or SEC1, unencrypted). Absent to install the certificate of
    /// a CSR made here (`POST .../csr`), whose key never left the CA.
    pub ca_key_pem: Option<String>,
    /// `cert-chain.pem`: `ca-cert.pem` and the intermediates above it up to the root (either end
    /// may be left out).
    pub cert_chain_pem: Option<String>,
    /// `root-cert.pem`: the external root, which bundles then publish.
    pub root_cert_pem: String,
}

impl std::fmt::Debug for ImportBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportBody")
            .field(
                "ca_key_pem",
                &self.ca_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportView {
    /// The generation it became: `active` at once under the same root, or `prepared` under a
    /// new root (published now, activated once converged).
    pub rotation: RotationView,
    /// Accepted, but worth knowing (for example: no `cRLSign`, so its CRL will not verify).
    pub warnings: Vec<String>,
}

#[utoipa::path(operation_id = "trust_domains_import", post, path = "/admin/v1/trust-domains/{td}/import", tag = "trust domains",
    params(("td" = String, Path)), request_body = ImportBody, security(("bearer" = [])),
    responses((status = 202, description = "Imported: the next generation, active or prepared", body = ImportView),
        (status = 400, description = "Refused by validation (stable code: import_malformed, import_key_mismatch, import_key_algorithm, import_not_ca, import_path_length, import_chain_invalid, import_expired, import_validity_too_short, import_profile); nothing changed", body = ErrorBody),
        (status = 404, description = "Unknown trust domain", body = ErrorBody),
        (status = 409, description = "A rotation is in flight, the intermediate is already installed, or no CSR key waits (no_pending_csr)", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn import(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(td): Path<String>,
    body: Result<Json<ImportBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ImportView>), ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let target = crate::untrusted::bounded(&td, crate::untrusted::LOG_CHARS);
    let result = async {
        let body = json_body(body)?;
        let key = body.ca_key_pem.map(Zeroizing::new);
        let trust_domain = known_trust_domain(&state, &td)?;
        let files = CaFiles {
            ca_cert_pem: &body.ca_cert_pem,
            ca_key_pem: key.as_deref().map(String::as_str),
            cert_chain_pem: body.cert_chain_pem.as_deref(),
            root_cert_pem: &body.root_cert_pem,
        };
        let imported = state
            .ca
            .import_intermediate(
                &state.kek,
                &trust_domain,
                &files,
                &caller.name,
                OffsetDateTime::now_utc(),
            )
            .await?;
        Ok::<_, ApiError>(ImportView {
            rotation: RotationView::from(imported.rotated),
            warnings: imported.warnings,
        })
    }
    .await;
    let (outcome, detail) = match &result {
        Ok(v) => (
            "success",
            format!(
                "generation {} {} ({} warnings)",
                v.rotation.generation,
                v.rotation.state,
                v.warnings.len()
            ),
        ),
        Err(e) => ("rejected", format!("{}: {}", e.code, e.message)),
    };
    audit(
        &state,
        &caller,
        "ca.import.request",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(|view| (StatusCode::ACCEPTED, Json(view)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrBody {
    /// Make a fresh key even when one already waits (default: return the waiting CSR).
    pub replace: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CsrView {
    pub trust_domain: String,
    /// Sign it as a CA (keyCertSign) and install the certificate with `POST .../import`
    /// without `ca_key_pem`.
    pub csr_pem: String,
    pub key_algorithm: String,
    pub created_at: String,
}

#[utoipa::path(operation_id = "trust_domains_csr", post, path = "/admin/v1/trust-domains/{td}/csr", tag = "trust domains",
    params(("td" = String, Path)), request_body = CsrBody, security(("bearer" = [])),
    responses((status = 201, description = "A fresh key and its CSR", body = CsrView), (status = 200, description = "The CSR already waiting", body = CsrView),
        (status = 400, description = "Bad input (stable error code)", body = ErrorBody), (status = 404, description = "Unknown trust domain", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn csr(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(td): Path<String>,
    body: Result<Json<CsrBody>, JsonRejection>,
) -> Result<(StatusCode, Json<CsrView>), ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let target = crate::untrusted::bounded(&td, crate::untrusted::LOG_CHARS);
    let result = async {
        let body = json_body(body)?;
        let trust_domain = known_trust_domain(&state, &td)?;
        let pending = state
            .ca
            .intermediate_csr(
                &state.kek,
                &trust_domain,
                body.replace.unwrap_or(false),
                &caller.name,
                OffsetDateTime::now_utc(),
            )
            .await?;
        Ok::<_, ApiError>(pending)
    }
    .await;
    let (outcome, detail) = match &result {
        Ok(p) if p.new => ("success", "new key and CSR".to_owned()),
        Ok(_) => ("unchanged", "the waiting CSR returned".to_owned()),
        Err(e) => ("rejected", format!("{}: {}", e.code, e.message)),
    };
    audit(
        &state,
        &caller,
        "ca.csr.request",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    let pending = result?;
    let status = if pending.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(CsrView {
            trust_domain: pending.trust_domain,
            csr_pem: pending.csr_pem,
            key_algorithm: pending.key_algorithm,
            created_at: rfc3339(pending.created_at),
        }),
    ))
}

fn known_trust_domain(state: &HttpState, td: &str) -> Result<TrustDomain, ApiError> {
    TrustDomain::parse(td)
        .ok()
        .filter(|t| state.ca.config().trust_domain(t).is_some())
        .ok_or_else(|| ApiError::not_found("unknown trust domain"))
}
