//! The admin HTTP API client (bearer token), with a typed request and answer for every endpoint.
//!
//! Every answer comes back as an [`Answer`]: the typed body, and the JSON the server sent. The
//! typed body is for programs and for `cactl`'s human output; the JSON is what `cactl --output
//! json` prints, so scripts see exactly what the server said (fields this client does not know
//! included). Answers are tolerant: unknown fields are ignored, fields the server may leave out
//! are `Option`s.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// Talks to `listen.admin`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base_url: String,
    token: String,
    http: reqwest::Client,
}

/// An answer of the admin API: `body` decoded from `json`, which is kept as the server sent it.
///
/// Indexing an answer (`answer["serial"]`) reads the JSON, like indexing a [`Value`].
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The server's JSON (`null` for an empty body).
    pub json: Value,
    /// The typed body.
    pub body: T,
}

impl<T> Answer<T> {
    /// The typed body alone.
    pub fn into_body(self) -> T {
        self.body
    }
}

impl<T> Answer<Page<T>> {
    /// The page's items, typed and as JSON (an array); the cursor is dropped.
    pub fn into_items(mut self) -> Answer<Vec<T>> {
        let json = self
            .json
            .get_mut("items")
            .map(Value::take)
            .unwrap_or_default();
        Answer {
            json,
            body: self.body.items,
        }
    }
}

impl<T> std::ops::Index<&str> for Answer<T> {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.json[key]
    }
}

/// One page of a list: `items`, and `next_cursor` unless this is the last page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /admin/v1/issue` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub serial: String,
    pub spiffe_id: String,
    pub not_after: String,
    pub certificate_pem: String,
    /// Leaf, then intermediate.
    pub chain_pem: String,
    pub root_pem: String,
}

/// An item of `GET /admin/v1/trust-domains`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustDomain {
    pub name: String,
    pub bundle_sequence: u64,
    #[serde(default)]
    pub federates_with: Vec<String>,
    pub generations: Vec<Generation>,
    /// When the key of a CSR for the next intermediate was made, if one waits for its
    /// certificate (plug-in CA).
    #[serde(default)]
    pub pending_csr_since: Option<String>,
}

/// A CA generation of a trust domain: its root and intermediate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub generation: i64,
    /// `prepared`, `active`, `retired`, `removed` or `revoked`.
    pub state: String,
    pub key_algorithm: String,
    pub issuer_key_id: String,
    pub root: CaCertificate,
    pub intermediate: CaCertificate,
    /// A plug-in CA's intermediates between `intermediate` and `root`.
    #[serde(default)]
    pub chain: Vec<CaCertificate>,
    /// The root's key is not in the CA (a plug-in CA).
    #[serde(default)]
    pub external_root: bool,
    /// RFC 3339, when it happened.
    #[serde(default)]
    pub activated_at: Option<String>,
    #[serde(default)]
    pub retired_at: Option<String>,
    #[serde(default)]
    pub removed_at: Option<String>,
    /// The active generation: when its automatic rotation is due.
    #[serde(default)]
    pub rotation_due_at: Option<String>,
    /// A prepared generation (root rotation in flight): published, and its activation window.
    #[serde(default)]
    pub published_at: Option<String>,
    #[serde(default)]
    pub activation_earliest: Option<String>,
    #[serde(default)]
    pub activation_latest: Option<String>,
}

/// A generation revoked in an emergency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedGeneration {
    pub trust_domain: String,
    pub generation: i64,
    pub reason: String,
    pub revoked_at: String,
    pub newly_revoked: bool,
    pub active_generation: i64,
}

/// A rotation that happened (`POST /admin/v1/trust-domains/{td}/rotate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotation {
    pub trust_domain: String,
    pub scope: String,
    pub generation: i64,
    pub retired_generation: i64,
    /// `active` (intermediate) or `prepared` (root: published, activated when converged).
    pub state: String,
    pub published_at: String,
    pub activated_at: String,
    pub activation_latest: String,
    pub not_after: String,
    pub next_rotation_at: String,
    pub retired_removal_at: String,
}

/// Istio's `cacerts` files for `AdminClient::import_ca` (PEM text).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct CaFiles {
    pub ca_cert_pem: String,
    /// Absent to install the certificate of a CSR made by the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_key_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_chain_pem: Option<String>,
    pub root_cert_pem: String,
}

impl std::fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFiles")
            .field(
                "ca_key_pem",
                &self.ca_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// What an import became.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Imported {
    pub rotation: Rotation,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The CSR of the next intermediate, whose key stays in the CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntermediateCsr {
    pub trust_domain: String,
    pub csr_pem: String,
    pub key_algorithm: String,
    pub created_at: String,
}

/// A CA certificate as the trust-domain listing shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaCertificate {
    pub subject: String,
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    pub pem: String,
}

/// A certificate in the issuance record (`GET /admin/v1/certificates[/{serial}]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certificate {
    /// Lower-case hex.
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
    #[serde(default)]
    pub revoked_at: Option<String>,
    #[serde(default)]
    pub revocation_reason: Option<String>,
    /// Only when showing one certificate.
    #[serde(default)]
    pub certificate_pem: Option<String>,
}

/// Search filters of `GET /admin/v1/certificates`; `None` is no filter.
#[derive(Debug, Clone, Default)]
pub struct CertificateFilter {
    pub trust_domain: Option<String>,
    pub spiffe_id: Option<String>,
    /// `valid`, `revoked` or `expired`.
    pub status: Option<String>,
    /// RFC 3339 or unix seconds.
    pub expiring_before: Option<String>,
}

impl CertificateFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("trust_domain", &self.trust_domain),
            ("spiffe_id", &self.spiffe_id),
            ("status", &self.status),
            ("expiring_before", &self.expiring_before),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
        .collect()
    }
}

/// `POST /admin/v1/certificates/{serial}/revoke` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub serial: String,
    pub spiffe_id: String,
    pub revoked_at: String,
    /// The reason on record (the first revocation's, if it was already revoked).
    pub reason: String,
    /// False when the certificate was already revoked (nothing changed).
    pub newly_revoked: bool,
}

/// A denied identity (`/admin/v1/denied-identities`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeniedIdentity {
    pub id: String,
    pub spiffe_id: String,
    pub reason: String,
    pub created_at: String,
    pub created_by: String,
    /// How many live certificates the deny revoked (only in the answer to adding it).
    #[serde(default)]
    pub revoked_certificates: Option<u64>,
}

/// `POST /admin/v1/federation/{td}/reset` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederationReset {
    pub trust_domain: String,
    /// A stored bundle was forgotten.
    pub removed: bool,
    /// `updated` or `failed` (the fetch made right after the reset).
    pub fetch: String,
    #[serde(default)]
    pub sequence: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /admin/v1/tokens` answer: the secret, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: String,
    pub token: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// An admin token as listed (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// An event of the hash-chained audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize)]
struct IssueRequest<'a> {
    csr: &'a str,
    spiffe_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct RevokeRequest<'a> {
    reason: &'a str,
}

#[derive(Debug, Serialize)]
struct DenyRequest<'a> {
    spiffe_id: &'a str,
    reason: &'a str,
    revoke_existing: bool,
}

#[derive(Debug, Serialize)]
struct CreateTokenRequest<'a> {
    name: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

fn ensure_argument(ok: bool, message: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Argument(message.to_owned()))
    }
}

/// Page size when following every page.
const ALL_PAGE_SIZE: i64 = 500;

impl AdminClient {
    pub fn new(base_url: &str, token: &str) -> Result<AdminClient, Error> {
        AdminClient::with_roots(base_url, token, None)
    }

    /// An admin client whose `https://` server is verified against `roots_pem` (PEM
    /// certificates, for example the CA's serving root) instead of the system's roots.
    pub fn with_roots(
        base_url: &str,
        token: &str,
        roots_pem: Option<&[u8]>,
    ) -> Result<AdminClient, Error> {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(pem) = roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Argument(format!("roots: {e}")))?;
            ensure_argument(!roots.is_empty(), "roots: no PEM certificate")?;
            builder = builder.tls_built_in_root_certs(false);
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::Argument(e.to_string()))?;
        Ok(AdminClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http,
        })
    }

    /// Asks for a certificate for `spiffe_id` over the CSR's public key; `ttl` like `"1h"`.
    pub async fn issue(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        ttl: Option<&str>,
    ) -> Result<Issued, Error> {
        let body = IssueRequest {
            csr: csr_pem,
            spiffe_id,
            ttl,
        };
        self.post("/admin/v1/issue", &body)
            .await
            .map(Answer::into_body)
    }

    /// The trust domains: CA generations, states, expiries, bundle sequence.
    pub async fn trust_domains(&self) -> Result<Answer<Page<TrustDomain>>, Error> {
        self.get("/admin/v1/trust-domains", &[]).await
    }

    /// One page of certificates matching `filter`, newest first.
    pub async fn certificates(
        &self,
        filter: &CertificateFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Answer<Page<Certificate>>, Error> {
        self.page("/admin/v1/certificates", filter.query(), limit, cursor)
            .await
    }

    /// Every certificate matching `filter`, newest first (follows the pages).
    pub async fn all_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Answer<Vec<Certificate>>, Error> {
        self.all("/admin/v1/certificates", filter.query()).await
    }

    /// One certificate by serial (hex), with its PEM.
    pub async fn certificate(&self, serial: &str) -> Result<Answer<Certificate>, Error> {
        let path = format!("/admin/v1/certificates/{}", path_segment(serial));
        self.get(&path, &[]).await
    }

    /// Revokes a certificate by serial with an RFC 5280 reason name.
    pub async fn revoke(&self, serial: &str, reason: &str) -> Result<Answer<Revoked>, Error> {
        let path = format!("/admin/v1/certificates/{serial}/revoke");
        self.post(&path, &RevokeRequest { reason }).await
    }

    /// Denies an identity (optionally revoking its live certificates).
    pub async fn deny(
        &self,
        spiffe_id: &str,
        reason: &str,
        revoke_existing: bool,
    ) -> Result<Answer<DeniedIdentity>, Error> {
        let body = DenyRequest {
            spiffe_id,
            reason,
            revoke_existing,
        };
        self.post("/admin/v1/denied-identities", &body).await
    }

    /// Lists denied identities.
    pub async fn denied(&self) -> Result<Answer<Page<DeniedIdentity>>, Error> {
        self.get("/admin/v1/denied-identities", &[]).await
    }

    /// Lifts a deny by its id.
    pub async fn lift_deny(&self, id: &str) -> Result<(), Error> {
        self.delete(&format!("/admin/v1/denied-identities/{id}"))
            .await
    }

    /// Rotates a trust domain's CA (`scope`: `intermediate`, done at once; `root`, published
    /// now and activated when converged).
    pub async fn rotate(&self, trust_domain: &str, scope: &str) -> Result<Answer<Rotation>, Error> {
        let path = format!(
            "/admin/v1/trust-domains/{}/rotate",
            path_segment(trust_domain)
        );
        self.post(&path, &serde_json::json!({ "scope": scope }))
            .await
    }

    /// Imports an externally signed intermediate (plug-in CA): with its key, or (no
    /// `ca_key_pem`) for the key of [`AdminClient::intermediate_csr`].
    pub async fn import_ca(
        &self,
        trust_domain: &str,
        files: &CaFiles,
    ) -> Result<Answer<Imported>, Error> {
        let path = format!(
            "/admin/v1/trust-domains/{}/import",
            path_segment(trust_domain)
        );
        self.post(&path, files).await
    }

    /// The CSR of the next intermediate (the waiting one, or a fresh key with `replace`).
    pub async fn intermediate_csr(
        &self,
        trust_domain: &str,
        replace: bool,
    ) -> Result<Answer<IntermediateCsr>, Error> {
        let path = format!("/admin/v1/trust-domains/{}/csr", path_segment(trust_domain));
        self.post(&path, &serde_json::json!({ "replace": replace }))
            .await
    }

    /// Revokes a CA generation in an emergency (an active one is replaced first).
    pub async fn revoke_generation(
        &self,
        trust_domain: &str,
        generation: i64,
        reason: &str,
    ) -> Result<Answer<RevokedGeneration>, Error> {
        let path = format!(
            "/admin/v1/trust-domains/{}/generations/{generation}/revoke",
            path_segment(trust_domain)
        );
        self.post(&path, &serde_json::json!({ "reason": reason }))
            .await
    }

    /// Forgets a federated peer's stored bundle and fetches it again.
    pub async fn reset_federation(
        &self,
        trust_domain: &str,
    ) -> Result<Answer<FederationReset>, Error> {
        let path = format!("/admin/v1/federation/{}/reset", path_segment(trust_domain));
        self.post(&path, &serde_json::json!({})).await
    }

    /// Creates an admin token with `role`; `expires_in` like `"30d"`, `None` for no expiry.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        expires_in: Option<&str>,
    ) -> Result<Answer<CreatedToken>, Error> {
        let body = CreateTokenRequest {
            name,
            role,
            expires_in,
        };
        self.post("/admin/v1/tokens", &body).await
    }

    /// Lists admin tokens (names, roles, expiries; never secrets).
    pub async fn tokens(&self) -> Result<Answer<Page<Token>>, Error> {
        self.get("/admin/v1/tokens", &[]).await
    }

    /// Deletes an admin token; it stops working at once.
    pub async fn delete_token(&self, name: &str) -> Result<(), Error> {
        self.delete(&format!("/admin/v1/tokens/{}", path_segment(name)))
            .await
    }

    /// The newest `limit` audit events.
    pub async fn audit(&self, limit: i64) -> Result<Answer<Page<AuditEvent>>, Error> {
        self.get("/admin/v1/audit", &[("limit", limit.to_string())])
            .await
    }

    /// The whole audit log, newest first (follows the pages).
    pub async fn all_audit_events(&self) -> Result<Answer<Vec<AuditEvent>>, Error> {
        self.all("/admin/v1/audit", Vec::new()).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer<T>, Error> {
        let mut request = self.http.get(self.url(path));
        if !query.is_empty() {
            request = request.query(query);
        }
        decode(self.send(request).await?)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Answer<T>, Error> {
        decode(self.send(self.http.post(self.url(path)).json(body)).await?)
    }

    async fn delete(&self, path: &str) -> Result<(), Error> {
        self.send(self.http.delete(self.url(path))).await?;
        Ok(())
    }

    /// One page: `query`, then `limit`, then `cursor` if any.
    async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        mut query: Vec<(&str, String)>,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Answer<Page<T>>, Error> {
        query.push(("limit", limit.to_string()));
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        self.get(path, &query).await
    }

    /// Every item of a paginated list, following `next_cursor`.
    async fn all<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Vec<(&str, String)>,
    ) -> Result<Answer<Vec<T>>, Error> {
        let mut json = Vec::new();
        let mut body = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page: Answer<Page<T>> = self
                .page(path, query.clone(), ALL_PAGE_SIZE, cursor.as_deref())
                .await?;
            cursor = page.body.next_cursor.clone();
            let items = page.into_items();
            if let Value::Array(values) = items.json {
                json.extend(values);
            }
            body.extend(items.body);
            if cursor.is_none() {
                return Ok(Answer {
                    json: Value::Array(json),
                    body,
                });
            }
        }
    }

    /// Sends a request with the bearer token; maps error bodies; an empty 2xx body is `null`.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Error> {
        let request = request
            .bearer_auth(&self.token)
            .build()
            .map_err(|e| Error::Argument(e.to_string()))?;
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| Error::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Error::Server {
                    status: status.as_u16(),
                    code: body.error.code,
                    message: body.error.message,
                },
                Err(_) => Error::Server {
                    status: status.as_u16(),
                    code: "http".to_owned(),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                },
            });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// Decodes `json` into `T`, keeping `json`.
fn decode<T: DeserializeOwned>(json: Value) -> Result<Answer<T>, Error> {
    let body = T::deserialize(&json).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(Answer { json, body })
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_json_and_ignore_unknown_fields() {
        let json = serde_json::json!({
            "items": [{"id": "7", "spiffe_id": "spiffe://td/x", "reason": "", "created_at": "t",
                       "created_by": "bootstrap", "new_field": [1, 2]}],
            "next_cursor": "abc",
        });
        let answer: Answer<Page<DeniedIdentity>> = decode(json.clone()).unwrap();
        assert_eq!(answer.json, json);
        assert_eq!(answer["next_cursor"], "abc");
        assert_eq!(answer.body.next_cursor.as_deref(), Some("abc"));
        assert_eq!(answer.body.items[0].revoked_certificates, None);
        let items = answer.into_items();
        assert_eq!(items.json, json["items"]);
        assert_eq!(items.body[0].id, "7");
    }

    /// The shapes the e2e suite reads answers with (`tests/tests/e2e/revocation.rs`).
    #[test]
    fn answers_index_like_json() {
        let revoked: Answer<Revoked> = decode(serde_json::json!({
            "serial": "01", "spiffe_id": "s", "revoked_at": "t", "reason": "keyCompromise",
            "newly_revoked": true,
        }))
        .unwrap();
        assert_eq!(revoked["newly_revoked"], true);
        assert_eq!(revoked["reason"], "keyCompromise");
        assert_eq!(revoked["revoked_at"], revoked.clone()["revoked_at"]);
        assert!(revoked.body.newly_revoked);
        let denied: Answer<DeniedIdentity> = decode(serde_json::json!({
            "id": "7", "spiffe_id": "s", "reason": "", "created_at": "t", "created_by": "b",
            "revoked_certificates": 1,
        }))
        .unwrap();
        assert_eq!(denied["revoked_certificates"], 1);
        assert_eq!(denied["id"].as_str(), Some("7"));
        let list: Answer<Page<DeniedIdentity>> =
            decode(serde_json::json!({"items": [denied.json]})).unwrap();
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(list["items"][0]["spiffe_id"], "s");
    }

    #[test]
    fn a_missing_field_is_a_protocol_error() {
        let result: Result<Answer<Revoked>, Error> = decode(serde_json::json!({"serial": "01"}));
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    }

    #[test]
    fn empty_answers_decode_as_null() {
        let answer: Answer<()> = decode(Value::Null).unwrap();
        assert_eq!(answer.json, Value::Null);
    }

    #[test]
    fn filters_keep_their_order_and_skip_absent_ones() {
        let filter = CertificateFilter {
            spiffe_id: Some("spiffe://td/a b".to_owned()),
            expiring_before: Some("0".to_owned()),
            ..Default::default()
        };
        assert_eq!(
            filter.query(),
            [
                ("spiffe_id", "spiffe://td/a b".to_owned()),
                ("expiring_before", "0".to_owned())
            ]
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("ab-09_.~"), "ab-09_.~");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
