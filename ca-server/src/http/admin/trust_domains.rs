//! `GET /admin/v1/trust-domains` (CA certificates, states, expiries, bundle sequence) and the
//! rotation trigger (not implemented yet: 501).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::http::HttpState;
use crate::http::admin::{ErrorBody, Page, Role, caller_with, rfc3339};
use crate::http::error::ApiError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CertificateSummary {
    pub subject: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub pem: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GenerationView {
    pub generation: i32,
    /// `prepared`, `active` or `retired`.
    pub state: String,
    pub key_algorithm: String,
    pub issuer_key_id: String,
    pub root: CertificateSummary,
    pub intermediate: CertificateSummary,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrustDomainView {
    pub name: String,
    pub bundle_sequence: u64,
    pub federates_with: Vec<String>,
    pub generations: Vec<GenerationView>,
}

fn summary(der: &[u8]) -> CertificateSummary {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => CertificateSummary {
            subject: cert.subject().to_string(),
            serial: hex::encode(cert.raw_serial()),
            not_before: rfc3339(cert.validity().not_before.timestamp()),
            not_after: rfc3339(cert.validity().not_after.timestamp()),
            pem: crate::pem::certificate(der),
        },
        Err(_) => CertificateSummary {
            subject: String::new(),
            serial: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            pem: crate::pem::certificate(der),
        },
    }
}

#[utoipa::path(operation_id = "trust_domains_list", get, path = "/admin/v1/trust-domains", tag = "trust domains", security(("bearer" = [])),
    responses((status = 200, description = "OK", body = Page<TrustDomainView>), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Page<TrustDomainView>>, ApiError> {
    caller_with(&state, &headers, Role::Viewer).await?;
    let mut items = Vec::new();
    for td in &state.ca.config().trust_domains {
        let generations = state.ca.store().generations(td.name.as_str()).await?;
        items.push(TrustDomainView {
            name: td.name.to_string(),
            bundle_sequence: state.ca.bundle_sequence(&td.name),
            federates_with: td.federates_with.iter().map(ToString::to_string).collect(),
            generations: generations
                .iter()
                .map(|g| GenerationView {
                    generation: g.generation,
                    state: g.state.clone(),
                    key_algorithm: g.key_algorithm.clone(),
                    issuer_key_id: g.issuer_key_id.clone(),
                    root: summary(&g.root_cert),
                    intermediate: summary(&g.intermediate_cert),
                })
                .collect(),
        });
    }
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

#[utoipa::path(operation_id = "trust_domains_rotate", post, path = "/admin/v1/trust-domains/{td}/rotate", tag = "trust domains",
    params(("td" = String, Path)), security(("bearer" = [])),
    responses((status = 501, description = "Not implemented", body = ErrorBody), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn rotate(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(td): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller_with(&state, &headers, Role::Admin).await?;
    Err(ApiError::not_implemented(format!(
        "CA rotation of {td} is not implemented yet"
    )))
}
