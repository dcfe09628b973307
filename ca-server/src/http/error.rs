//! `ApiError` and its `IntoResponse`: the one place that turns domain errors into HTTP statuses
//! and the JSON error body `{"error": {"code", "message"}}`. Codes are stable; internal causes are
//! logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ca;
use crate::issuance;
use crate::store;

/// An error as the HTTP client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing or invalid bearer token",
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn not_implemented(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", message)
    }

    /// A JSON body axum could not take: too large (413) or malformed (400).
    pub fn from_json_rejection(rejection: &axum::extract::rejection::JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large",
            )
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(cause: &dyn std::error::Error) -> ApiError {
        tracing::warn!(cause = %crate::report::Chain(cause), "store unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the CA cannot record certificates right now; retry later",
        )
    }

    /// An internal failure: logged in full, answered with an opaque 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<issuance::Error> for ApiError {
    fn from(error: issuance::Error) -> Self {
        if !error.is_bad_request() {
            return ApiError::internal(&error);
        }
        ApiError::bad_request(error.reason(), error.to_string())
    }
}

impl From<ca::Error> for ApiError {
    fn from(error: ca::Error) -> Self {
        match error {
            ca::Error::Issuance(e) => e.into(),
            ca::Error::UnknownTrustDomain(td) => ApiError::bad_request(
                "unknown_trust_domain",
                format!("this CA does not issue for trust domain {td}"),
            ),
            ca::Error::Denied(id) => ApiError::new(
                StatusCode::FORBIDDEN,
                "identity_denied",
                format!("{id} is on the deny list"),
            ),
            ca::Error::Reserved(id) => ApiError::new(
                StatusCode::FORBIDDEN,
                "reserved_identity",
                format!("{id} is reserved for the CA itself"),
            ),
            ca::Error::RateLimited { retry_after, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many certificates for this identity; retry in {retry_after} s"),
            ),
            ca::Error::Overloaded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the CA is overloaded; retry",
            ),
            ca::Error::Store(e) => e.into(),
        }
    }
}

impl From<ca::lifecycle::Error> for ApiError {
    fn from(error: ca::lifecycle::Error) -> Self {
        use ca::lifecycle::Error;
        match error {
            Error::UnknownTrustDomain(_) => ApiError::not_found("unknown trust domain"),
            Error::InFlight(td) => ApiError::conflict(format!(
                "a rotation of {td} is in flight or just happened; look at GET /admin/v1/trust-domains"
            )),
            Error::UnknownGeneration {
                trust_domain,
                generation,
            } => ApiError::not_found(format!(
                "trust domain {trust_domain} has no CA generation {generation}"
            )),
            Error::RootTooShort { trust_domain } => ApiError::conflict(format!(
                "the root of {trust_domain} expires too soon for a new intermediate; rotate the root"
            )),
            Error::ExternalRoot(_) => {
                ApiError::new(StatusCode::CONFLICT, "external_root", error.to_string())
            }
            Error::NoPendingKey(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_pending_csr", error.to_string())
            }
            Error::AlreadyInstalled { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_installed", error.to_string())
            }
            Error::Import(e) => ApiError::bad_request(e.code(), e.to_string()),
            Error::Store(e) => e.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::Unavailable(_) => ApiError::unavailable(&error),
            _ => ApiError::internal(&error),
        }
    }
}
