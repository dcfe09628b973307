//! `GET /admin/v1/trust-domains` (every CA generation: state, certificates, key ids, when it was
//! activated, retired, removed, and what is planned), `POST .../{td}/rotate` (intermediate:
//! done at once; root: published now, activated by the lifecycle when converged) and
//! `POST .../{td}/generations/{n}/revoke` (emergency).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::lifecycle::{self, Scope};
use crate::http::HttpState;
use crate::http::admin::{
    ErrorBody, Page, Role, audit, caller_with, json_body, request_id, rfc3339,
};
use crate::http::error::ApiError;
use crate::spiffe::TrustDomain;

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
    /// `prepared`, `active`, `retired`, `removed` or `revoked`.
    pub state: String,
    pub key_algorithm: String,
    pub issuer_key_id: String,
    pub root: CertificateSummary,
    pub intermediate: CertificateSummary,
    /// A plug-in CA's intermediates between `intermediate` and `root` (usually none).
    pub chain: Vec<CertificateSummary>,
    /// The root's key is not here (a plug-in CA): nothing under it rotates automatically.
    pub external_root: bool,
    /// RFC 3339; absent when it has not happened.
    pub activated_at: Option<String>,
    pub retired_at: Option<String>,
    pub removed_at: Option<String>,
    /// The active generation: when the next automatic rotation is due.
    pub rotation_due_at: Option<String>,
    /// A prepared generation (root rotation in flight): when its root was published, and the
    /// window of its activation (earliest once converged, latest regardless).
    pub published_at: Option<String>,
    pub activation_earliest: Option<String>,
    pub activation_latest: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrustDomainView {
    pub name: String,
    pub bundle_sequence: u64,
    pub federates_with: Vec<String>,
    pub generations: Vec<GenerationView>,
    /// When the key of a CSR for the next intermediate was made (`cactl ca csr`), if one waits
    /// for its certificate (`cactl ca install`).
    pub pending_csr_since: Option<String>,
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

/// Each certificate of concatenated DER.
fn chain_summaries(mut rest: &[u8]) -> Vec<CertificateSummary> {
    let mut out = Vec::new();
    while let Ok((next, _)) = X509Certificate::from_der(rest) {
        out.push(summary(&rest[..rest.len() - next.len()]));
        rest = next;
    }
    out
}

#[utoipa::path(operation_id = "trust_domains_list", get, path = "/admin/v1/trust-domains", tag = "trust domains", security(("bearer" = [])),
    responses((status = 200, description = "OK", body = Page<TrustDomainView>), (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Page<TrustDomainView>>, ApiError> {
    caller_with(&state, &headers, Role::Viewer).await?;
    let mut items = Vec::new();
    let authorities = state.ca.authorities();
    for td in &state.ca.config().trust_domains {
        let generations = state.ca.store().generations(td.name.as_str()).await?;
        let pending = state.ca.store().pending_key(td.name.as_str()).await?;
        let due = authorities
            .get(&td.name)
            .map(|a| (a.generation, lifecycle::rotation_due_at(a, td)));
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
                    chain: chain_summaries(g.chain.as_deref().unwrap_or_default()),
                    external_root: g.external_root(),
                    activated_at: g.activated_at.map(rfc3339),
                    retired_at: g.retired_at.map(rfc3339),
                    removed_at: g.removed_at.map(rfc3339),
                    rotation_due_at: due
                        .filter(|(n, _)| *n == g.generation && g.state == "active")
                        .map(|(_, at)| rfc3339(at)),
                    published_at: (g.state == "prepared").then(|| rfc3339(g.created_at)),
                    activation_earliest: (g.state == "prepared")
                        .then(|| rfc3339(lifecycle::activation_window(td, g.created_at).0)),
                    activation_latest: (g.state == "prepared")
                        .then(|| rfc3339(lifecycle::activation_window(td, g.created_at).1)),
                })
                .collect(),
            pending_csr_since: pending.map(|p| rfc3339(p.created_at)),
        });
    }
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// `POST /admin/v1/trust-domains/{td}/rotate`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// `intermediate` (default) or `root`.
    pub scope: Option<String>,
}

/// The timeline of a rotation: done (intermediate) or started (root).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotationView {
    pub trust_domain: String,
    pub scope: String,
    /// The new generation and the one it replaces (retired now, or at the root's activation).
    pub generation: i32,
    pub retired_generation: i32,
    /// `active` (intermediate: done) or `prepared` (root: published, activation pending).
    pub state: String,
    pub published_at: String,
    /// When it became active, or (root) the earliest it can: 3 refresh hints after publishing,
    /// once every live leaf was issued after the publication.
    pub activated_at: String,
    /// Root: the latest activation (`root_activation_max_wait`).
    pub activation_latest: String,
    pub not_after: String,
    /// When the next automatic rotation is due.
    pub next_rotation_at: String,
    /// When the retired generation stops answering for its leaves at the latest.
    pub retired_removal_at: String,
}

impl From<lifecycle::Rotated> for RotationView {
    fn from(rotated: lifecycle::Rotated) -> RotationView {
        RotationView {
            trust_domain: rotated.trust_domain,
            scope: rotated.scope.as_str().to_owned(),
            generation: rotated.generation,
            retired_generation: rotated.retired_generation,
            state: rotated.state.to_owned(),
            published_at: rfc3339(rotated.published_at),
            activated_at: rfc3339(rotated.activated_at),
            activation_latest: rfc3339(rotated.activation_latest),
            not_after: rfc3339(rotated.not_after),
            next_rotation_at: rfc3339(rotated.next_rotation_at),
            retired_removal_at: rfc3339(rotated.retired_removal_at),
        }
    }
}

#[utoipa::path(operation_id = "trust_domains_rotate", post, path = "/admin/v1/trust-domains/{td}/rotate", tag = "trust domains",
    params(("td" = String, Path)), request_body = RotateBody, security(("bearer" = [])),
    responses((status = 202, description = "Rotated: the new generation is active", body = RotationView), (status = 400, description = "Bad input (stable error code)", body = ErrorBody),
        (status = 404, description = "Unknown trust domain", body = ErrorBody), (status = 409, description = "A rotation of this trust domain is in flight", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn rotate(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(td): Path<String>,
    body: Result<Json<RotateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RotationView>), ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let target = crate::untrusted::bounded(&td, crate::untrusted::LOG_CHARS);
    let result = async {
        let body = json_body(body)?;
        let scope_name = body.scope.unwrap_or_else(|| "intermediate".to_owned());
        let scope = Scope::parse(&scope_name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_scope",
                "scope is `intermediate` or `root`".to_owned(),
            )
        })?;
        let trust_domain = TrustDomain::parse(&td)
            .ok()
            .filter(|t| state.ca.config().trust_domain(t).is_some())
            .ok_or_else(|| ApiError::not_found("unknown trust domain"))?;
        let rotated = state
            .ca
            .rotate(
                &state.kek,
                &trust_domain,
                scope,
                "admin",
                &caller.name,
                OffsetDateTime::now_utc(),
            )
            .await?;
        Ok::<_, ApiError>(RotationView::from(rotated))
    }
    .await;
    let (outcome, detail) = match &result {
        Ok(r) => (
            "success",
            format!("{} rotation: generation {} active", r.scope, r.generation),
        ),
        Err(e) => ("rejected", format!("{}: {}", e.code, e.message)),
    };
    audit(
        &state,
        &caller,
        "ca.rotate.request",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(|view| (StatusCode::ACCEPTED, Json(view)))
}

/// `POST /admin/v1/trust-domains/{td}/generations/{n}/revoke`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeGenerationBody {
    /// RFC 5280 reason name (default `cACompromise`).
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevokedGenerationView {
    pub trust_domain: String,
    pub generation: i32,
    pub reason: String,
    pub revoked_at: String,
    /// False when it was already revoked.
    pub newly_revoked: bool,
    /// The generation active afterwards (a fresh one when the active one was revoked).
    pub active_generation: i32,
}

#[utoipa::path(operation_id = "trust_domains_revoke_generation", post, path = "/admin/v1/trust-domains/{td}/generations/{generation}/revoke", tag = "trust domains",
    params(("td" = String, Path), ("generation" = i32, Path)), request_body = RevokeGenerationBody, security(("bearer" = [])),
    responses((status = 200, description = "Revoked (or already revoked)", body = RevokedGenerationView), (status = 400, description = "Bad input (stable error code)", body = ErrorBody),
        (status = 404, description = "Unknown trust domain or generation", body = ErrorBody), (status = 409, description = "A rotation of this trust domain is in flight", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or deleted token", body = ErrorBody), (status = 403, description = "The token's role does not allow this", body = ErrorBody)))]
pub async fn revoke_generation(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((td, generation)): Path<(String, String)>,
    body: Result<Json<RevokeGenerationBody>, JsonRejection>,
) -> Result<Json<RevokedGenerationView>, ApiError> {
    let caller = caller_with(&state, &headers, Role::Admin).await?;
    let request_id = request_id(&headers);
    let target =
        crate::untrusted::bounded(&format!("{td}/{generation}"), crate::untrusted::LOG_CHARS);
    let result = async {
        let body = json_body(body)?;
        let reason_name = body.reason.unwrap_or_else(|| "cACompromise".to_owned());
        let reason = crate::revocation::Reason::parse(&reason_name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_reason",
                format!(
                    "unknown reason {:?}; use an RFC 5280 name such as cACompromise or superseded",
                    crate::untrusted::bounded(&reason_name, 64)
                ),
            )
        })?;
        let trust_domain = TrustDomain::parse(&td)
            .ok()
            .filter(|t| state.ca.config().trust_domain(t).is_some())
            .ok_or_else(|| ApiError::not_found("unknown trust domain"))?;
        let number: i32 = generation
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::not_found("unknown CA generation"))?;
        let revoked = state
            .ca
            .revoke_generation(
                &state.kek,
                &trust_domain,
                number,
                reason,
                &caller.name,
                OffsetDateTime::now_utc(),
            )
            .await?;
        Ok::<_, ApiError>(RevokedGenerationView {
            trust_domain: revoked.trust_domain,
            generation: revoked.generation,
            reason: revoked.reason.as_str().to_owned(),
            revoked_at: rfc3339(revoked.revoked_at),
            newly_revoked: revoked.newly_revoked,
            active_generation: revoked.active_generation,
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
        "ca.generation.revoke.request",
        &target,
        outcome,
        &request_id,
        detail,
    )
    .await;
    result.map(Json)
}
