//! The public listener: trust bundles as PEM, liveness and readiness.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::enrollment::to_pem;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::spiffe::TrustDomain;

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/bundles/{file}", get(bundle))
        .merge(crate::http::revocation::routes())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.ca.metrics.render(),
    )
        .into_response()
}

/// Ready when the store answers and every trust domain's CA is loaded.
async fn readyz(State(state): State<HttpState>) -> Response {
    let loaded = state.ca.authorities.iter().count() == state.ca.config.trust_domains.len();
    match state.ca.store.ping().await {
        Ok(()) if loaded => (StatusCode::OK, "ready\n").into_response(),
        Ok(()) => (StatusCode::SERVICE_UNAVAILABLE, "CA keys not loaded\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
    }
}

/// `GET /v1/bundles/{td}.pem`: the roots of a trust domain as PEM.
async fn bundle(
    State(state): State<HttpState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let Some(name) = file.strip_suffix(".pem") else {
        return Err(ApiError::not_found("use /v1/bundles/{trust domain}.pem"));
    };
    let trust_domain =
        TrustDomain::parse(name).map_err(|_| ApiError::not_found("unknown trust domain"))?;
    let authority = state
        .ca
        .authorities
        .get(&trust_domain)
        .ok_or_else(|| ApiError::not_found("unknown trust domain"))?;
    let body: String = state
        .ca
        .roots_for(authority)
        .iter()
        .map(|der| to_pem(der))
        .collect();
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], body).into_response())
}
