//! `POST /admin/v1/federation/{td}/reset`: forget a federated peer's last good bundle and fetch
//! it again at once, whatever its sequence (admin role, audited). The way out when a peer's
//! `spiffe_sequence` was pushed beyond anything real, or its trust domain was rebuilt.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use time::OffsetDateTime;

use crate::federation::{FetchOutcome, fetch_once};
use crate::http::HttpState;
use crate::http::admin::{ErrorBody, Role, audit, caller_with, outcome, request_id};
use crate::http::error::ApiError;
use crate::spiffe::TrustDomain;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResetView {
    pub trust_domain: String,
    /// A stored bundle was forgotten (false: there was none).
    pub removed: bool,
    /// The fetch made right after: `updated`, or `failed` with the reason (the next scheduled
    /// fetch tries again).
    pub fetch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[utoipa::path(operation_id = "federation_reset", post, path = "/admin/v1/federation/{td}/reset", tag = "trust domains",
    params(("td" = String, Path, description = "a federated peer's trust domain")), security(("bearer" = [])),
    responses((status = 200, description = "Reset, and fetched again", body = ResetView), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody),
        (status = 403, description = "The token's role does not allow this", body = ErrorBody), (status = 404, description = "Not a federation peer", body = ErrorBody)))]
pub async fn reset(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(td): Path<String>,
) -> Result<Json<ResetView>, ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let result = async {
        let trust_domain = TrustDomain::parse(&td)
            .map_err(|_| ApiError::not_found("no such federated trust domain"))?;
        let removed = state
            .ca
            .reset_federated_bundle(&trust_domain)
            .await?
            .ok_or_else(|| ApiError::not_found("no such federated trust domain"))?;
        let entry = state
            .ca
            .config()
            .federation
            .iter()
            .find(|f| f.trust_domain == trust_domain)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such federated trust domain"))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let view = match fetch_once(&state.ca, &entry, now).await {
            Ok(FetchOutcome::Updated { sequence } | FetchOutcome::Unchanged { sequence }) => {
                ResetView {
                    trust_domain: trust_domain.to_string(),
                    removed,
                    fetch: "updated".to_owned(),
                    sequence: Some(sequence),
                    reason: None,
                }
            }
            Err(e) => ResetView {
                trust_domain: trust_domain.to_string(),
                removed,
                fetch: "failed".to_owned(),
                sequence: None,
                reason: Some(e.reason().to_owned()),
            },
        };
        Ok(view)
    }
    .await;
    let (outcome, detail) = outcome(&result, |v| {
        format!(
            "removed {}, fetch {} {}",
            v.removed,
            v.fetch,
            v.reason.as_deref().unwrap_or("")
        )
    });
    audit(
        &state,
        &caller,
        "federation.reset",
        &td,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(Json)
}
