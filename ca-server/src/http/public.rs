//! The public listener: trust bundles as PEM, liveness and readiness.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::spiffe::TrustDomain;

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/bundles", get(bundle_map))
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
        state.ca.render_metrics(),
    )
        .into_response()
}

/// Ready when the store answers and every trust domain's CA is loaded.
async fn readyz(State(state): State<HttpState>) -> Response {
    let loaded = state.ca.authorities().iter().count() == state.ca.config().trust_domains.len();
    match state.ca.store().ping().await {
        Ok(()) if loaded => (StatusCode::OK, "ready\n").into_response(),
        Ok(()) => (StatusCode::SERVICE_UNAVAILABLE, "CA keys not loaded\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::report::Chain(&e), "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
    }
}

/// `GET /v1/bundles/{td}` (SPIFFE bundle, JSON) and `GET /v1/bundles/{td}.pem` (the same roots
/// as PEM); for a federated trust domain, the last good copy. ETag / If-None-Match supported.
async fn bundle(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let (name, as_pem) = match file.strip_suffix(".pem") {
        Some(name) => (name, true),
        None => (file.as_str(), false),
    };
    let trust_domain =
        TrustDomain::parse(name).map_err(|_| ApiError::not_found("unknown trust domain"))?;
    let bundle = state
        .ca
        .bundles()
        .get(&trust_domain)
        .ok_or_else(|| ApiError::not_found("unknown trust domain"))?;
    let (content_type, body) = if as_pem {
        ("application/x-pem-file", bundle.roots_pem().to_owned())
    } else {
        let hint = state.ca.refresh_hint(&trust_domain).or(Some(300));
        let json = crate::trust::bundle::render(&bundle.roots, bundle.sequence, hint);
        ("application/json", json.to_string())
    };
    Ok(with_etag(&headers, content_type, body))
}

/// `GET /v1/bundles`: the SPIFFE bundle map of every trust domain we know.
async fn bundle_map(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let mut map = serde_json::Map::new();
    for (trust_domain, bundle) in state.ca.bundles().all() {
        map.insert(
            trust_domain.to_string(),
            crate::trust::bundle::render(&bundle.roots, bundle.sequence, None),
        );
    }
    let body = serde_json::json!({"trust_domains": map}).to_string();
    with_etag(&headers, "application/json", body)
}

fn with_etag(headers: &HeaderMap, content_type: &'static str, body: String) -> Response {
    let etag = format!(
        "\"{}\"",
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref()[..16])
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, "max-age=60".to_owned()),
        ],
        body,
    )
        .into_response()
}
