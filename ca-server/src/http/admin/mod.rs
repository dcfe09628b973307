//! The admin API (`listen.admin`, bearer tokens with roles). Every route is declared with its
//! OpenAPI description next to its handler and registered through `utoipa-axum`, so the document
//! served at `/admin/v1/openapi.json` is generated from the real routes.
//!
//! Before any route: a path guard (`//`, a trailing `/`, encoded slashes or dots, `.`/`..`
//! segments never reach a handler) and a 256 KiB body cap. Then each handler authenticates the
//! token and checks its role. Actions are audited into the hash-chained log.

mod audit;
mod certificates;
mod denied;
mod federation;
mod issue;
mod plug_in;
mod tokens;
mod trust_domains;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::AuditEvent;
use crate::http::HttpState;
use crate::http::error::ApiError;

/// Largest admin request body; a CSR is capped at 64 KiB on its own.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "mesh-ca admin API", description = "Operate the mesh CA: certificates, revocation, denied identities, tokens, audit."),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The error body every failing route answers (SPEC section 6).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unauthenticated`, `forbidden`, `not_found`.
    pub code: String,
    pub message: String,
}

/// The admin router and the OpenAPI document generated from it.
pub fn router_and_openapi(state: HttpState) -> (Router, utoipa::openapi::OpenApi) {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(issue::issue))
        .routes(routes!(trust_domains::list))
        .routes(routes!(trust_domains::rotate))
        .routes(routes!(trust_domains::revoke_generation))
        .routes(routes!(plug_in::import))
        .routes(routes!(plug_in::csr))
        .routes(routes!(certificates::list))
        .routes(routes!(certificates::show))
        .routes(routes!(certificates::revoke))
        .routes(routes!(denied::deny, denied::list))
        .routes(routes!(denied::lift))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::delete))
        .routes(routes!(audit::list))
        .routes(routes!(federation::reset))
        .split_for_parts();
    let document = openapi.clone();
    let router = router
        .route(
            "/admin/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    let guarded = Router::new()
        .fallback_service(router)
        .layer(middleware::from_fn(path_guard));
    (guarded, openapi)
}

/// The admin router.
pub fn router(state: HttpState) -> Router {
    router_and_openapi(state).0
}

/// Refuses sloppy or ambiguous paths before routing (Dogtag CVE-2026-18047 class: the auth layer
/// and the router must never disagree about what a path is).
async fn path_guard(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let lower = path.to_ascii_lowercase();
    let sloppy = path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || path.contains('\\')
        || path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if sloppy {
        return ApiError::not_found("no such route").into_response();
    }
    next.run(request).await
}

/// Admin roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The caller of an admin route, once its token checked out.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub name: String,
    pub role: Role,
}

impl AdminCaller {
    /// `403 forbidden` unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role",
                role.as_str()
            )))
        }
    }
}

/// Checks `Authorization: Bearer <token>`: the bootstrap token (role admin), or a stored token
/// (by the SHA-256 of the secret; expired or deleted tokens fail at once).
pub async fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<AdminCaller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(ApiError::unauthenticated)?;
    let presented = digest(&SHA256, token.as_bytes());
    if constant_time_eq(presented.as_ref(), state.bootstrap_token_sha256.as_slice()) {
        return Ok(AdminCaller {
            name: "bootstrap".to_owned(),
            role: Role::Admin,
        });
    }
    let presented_hex = hex::encode(presented.as_ref());
    let record = state
        .ca
        .store()
        .token_by_hash(&presented_hex)
        .await?
        .filter(|r| constant_time_eq(r.token_sha256.as_bytes(), presented_hex.as_bytes()))
        .ok_or_else(ApiError::unauthenticated)?;
    if record
        .expires_at
        .is_some_and(|at| OffsetDateTime::now_utc().unix_timestamp() >= at)
    {
        return Err(ApiError::unauthenticated());
    }
    let role = Role::parse(&record.role).ok_or_else(ApiError::unauthenticated)?;
    Ok(AdminCaller {
        name: record.name,
        role,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Authenticates and checks the role in one step.
pub async fn caller_with(
    state: &HttpState,
    headers: &HeaderMap,
    role: Role,
) -> Result<AdminCaller, ApiError> {
    let caller = authenticate(state, headers).await?;
    caller.require(role)?;
    Ok(caller)
}

/// Records an admin action in the audit log.
pub async fn audit(
    state: &HttpState,
    caller: &AdminCaller,
    action: &str,
    target: &str,
    outcome: &str,
    request_id: &str,
    detail: String,
) {
    state
        .ca
        .audit(AuditEvent {
            at: OffsetDateTime::now_utc().unix_timestamp(),
            actor: caller.name.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            request_id: request_id.to_owned(),
            detail,
        })
        .await;
}

/// The audit outcome and detail of a result.
pub fn outcome<T>(
    result: &Result<T, ApiError>,
    detail: impl FnOnce(&T) -> String,
) -> (&'static str, String) {
    match result {
        Ok(value) => ("success", detail(value)),
        Err(e) => ("rejected", format!("{}: {}", e.code, e.message)),
    }
}

/// A JSON body, with malformed input reported in our error format.
pub fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|rejection| ApiError::from_json_rejection(&rejection))
}

/// The caller's `x-request-id` if it is sane, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    crate::request_id::from_header(headers.get("x-request-id").and_then(|v| v.to_str().ok()))
}

pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A list page: `next_cursor` is absent on the last page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Page size: default 50, at most 500.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=500).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be 1 to 500",
        )),
    }
}

/// Cursors are opaque: base64url of the last row id seen.
pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("id:").and_then(|n| n.parse().ok()))
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
        })
}

pub fn encode_cursor(last_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("id:{last_id}"))
}

/// A page from `limit + 1` rows: the extra row only says there is more.
pub fn paginate<R, T>(
    mut rows: Vec<R>,
    limit: i64,
    id: impl Fn(&R) -> i64,
    view: impl Fn(&R) -> T,
) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Page {
        next_cursor: if more {
            rows.last().map(|r| encode_cursor(id(r)))
        } else {
            None
        },
        items: rows.iter().map(view).collect(),
    }
}
