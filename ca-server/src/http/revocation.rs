//! Public revocation endpoints: `GET /v1/crl/{td}` (the active generation's DER CRL),
//! `GET /v1/crl/{td}/{generation}` (one generation's, the URL its leaves name),
//! `GET /v1/crl/{td}/root` (signed by the root: the intermediates revoked in an emergency) and
//! the OCSP
//! responder,
//! `POST /v1/ocsp/{td}` and `GET /v1/ocsp/{td}/{base64 request}` (RFC 6960 appendix A).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use time::OffsetDateTime;

use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::revocation;
use crate::revocation::ocsp::{self, Refusal};
use crate::spiffe::TrustDomain;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/crl/{td}", get(crl))
        .route("/v1/crl/{td}/{generation}", get(generation_crl))
        .route("/v1/ocsp/{td}", post(ocsp_post))
        .route("/v1/ocsp/{td}/{*request}", get(ocsp_get))
        .layer(DefaultBodyLimit::max(ocsp::MAX_REQUEST_BYTES))
}

async fn crl(State(state): State<HttpState>, Path(td): Path<String>) -> Result<Response, ApiError> {
    let trust_domain =
        TrustDomain::parse(&td).map_err(|_| ApiError::not_found("unknown trust domain"))?;
    let crl = state
        .ca
        .crl(&trust_domain, OffsetDateTime::now_utc())
        .await
        .map_err(crl_error)?;
    Ok(crl_response(&crl))
}

async fn generation_crl(
    State(state): State<HttpState>,
    Path((td, generation)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let trust_domain =
        TrustDomain::parse(&td).map_err(|_| ApiError::not_found("unknown trust domain"))?;
    if generation == "root" {
        if state.ca.config().trust_domain(&trust_domain).is_none() {
            return Err(ApiError::not_found("unknown trust domain"));
        }
        let crl = state
            .ca
            .root_crl(&state.kek, &trust_domain, OffsetDateTime::now_utc())
            .await
            .map_err(|e| match e {
                crate::ca::lifecycle::Error::ExternalRoot(td) => ApiError::not_found(format!(
                    "the root of {td} is external: its CRL is published by the CA that holds it"
                )),
                other => other.into(),
            })?;
        return Ok(crl_response(&crl));
    }
    let generation: i32 = generation
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found("unknown CA generation"))?;
    let crl = state
        .ca
        .crl_of_generation(&trust_domain, generation, OffsetDateTime::now_utc())
        .await
        .map_err(crl_error)?
        .ok_or_else(|| ApiError::not_found("unknown CA generation"))?;
    Ok(crl_response(&crl))
}

fn crl_error(e: revocation::Error) -> ApiError {
    match e {
        revocation::Error::UnknownTrustDomain(_) => ApiError::not_found("unknown trust domain"),
        revocation::Error::Store(e) => e.into(),
        other => ApiError::internal(&other),
    }
}

fn crl_response(crl: &revocation::CachedCrl) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/pkix-crl".to_owned()),
            (
                header::CACHE_CONTROL,
                format!(
                    "max-age={}",
                    ((crl.next_update - crl.this_update) / 2).max(0)
                ),
            ),
        ],
        crl.der.as_ref().clone(),
    )
        .into_response()
}

async fn ocsp_post(
    State(state): State<HttpState>,
    Path(td): Path<String>,
    body: Bytes,
) -> Response {
    ocsp_response(&state, &td, &body).await
}

async fn ocsp_get(
    State(state): State<HttpState>,
    Path((td, request)): Path<(String, String)>,
) -> Response {
    if request.len() > ocsp::MAX_REQUEST_BYTES * 2 {
        return ocsp_bytes(ocsp::refusal_response(Refusal::Malformed));
    }
    match base64::engine::general_purpose::STANDARD.decode(request.trim()) {
        Ok(der) => ocsp_response(&state, &td, &der).await,
        Err(_) => ocsp_bytes(ocsp::refusal_response(Refusal::Malformed)),
    }
}

async fn ocsp_response(state: &HttpState, td: &str, der: &[u8]) -> Response {
    let body = match state
        .ca
        .ocsp_answer(td, der, OffsetDateTime::now_utc())
        .await
    {
        Ok(signed) => signed,
        Err(refusal) => ocsp::refusal_response(refusal),
    };
    ocsp_bytes(body)
}

fn ocsp_bytes(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/ocsp-response")], body).into_response()
}
