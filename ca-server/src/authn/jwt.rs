//! Kubernetes service-account tokens checked locally against each cluster's JWKS (file or URL,
//! cached, refreshed). Only RS256 and ES256; each key pins its algorithm (RSA keys verify RS256,
//! P-256 keys ES256; a JWK `alg` that says otherwise drops the key). Issuer, audience, `exp`
//! (required) and `nbf` are checked here against the `now` we are given, with a small leeway.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{ClusterConfig, JwksSource};
use crate::kubernetes::pods::PodIndex;
use crate::kubernetes::token_review::{ReviewError, TokenReviewer};
use crate::spiffe::{SpiffeId, TrustDomain};

/// Largest token accepted, before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document read or fetched.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Clock leeway for `exp` and `nbf`.
pub const LEEWAY_SECONDS: i64 = 30;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not allowed (RS256, ES256 only)")]
    Algorithm(String),
    #[error("no key in the cluster's JWKS matches")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token has no exp claim")]
    MissingExpiry,
    #[error("issuer {0:?} is not the cluster's")]
    WrongIssuer(String),
    #[error("audience is not one of the cluster's")]
    WrongAudience,
    #[error("subject is not a service account: {0}")]
    BadSubject(String),
    #[error("TokenReview refused the token: {0}")]
    ReviewRefused(String),
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Algorithm(_) => "token_algorithm",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::MissingExpiry => "token_missing_exp",
            TokenError::WrongIssuer(_) => "token_wrong_issuer",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::BadSubject(_) => "token_bad_subject",
            TokenError::ReviewRefused(_) => "token_review_refused",
        }
    }
}

/// A verified service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub service_account: String,
    /// The pod (name, uid) a bound token names (`kubernetes.io.pod`, or TokenReview's
    /// `authentication.kubernetes.io/pod-name` and `pod-uid`).
    pub pod: Option<(String, String)>,
    /// The node a bound token names (`kubernetes.io.node.name`, or TokenReview's
    /// `authentication.kubernetes.io/node-name`).
    pub node: Option<String>,
}

/// The Kubernetes API parts of a cluster with `[clusters.kubernetes]`.
pub struct KubeParts {
    pub client: kube::Client,
    /// When `auth` is `tokenreview` or `both`.
    pub reviewer: Option<TokenReviewer>,
    /// When `node_authorization` is on.
    pub pods: Option<Arc<PodIndex>>,
}

/// One usable key of a JWKS.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A parsed JWKS.
#[derive(Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Jwks {
    /// Parses a JWKS document; keys of other types or algorithms are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, String> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err("JWKS document too large".to_owned());
        }
        let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let pinned = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let declared = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
            if declared.is_some_and(|d| d != format!("{pinned:?}")) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm: pinned,
                key,
            });
        }
        Ok(Jwks { keys })
    }
}

/// Most verified tokens remembered per cluster (the cache is emptied when full).
const MAX_CACHED_TOKENS: usize = 50_000;

/// A cluster's token checker with its cached JWKS.
///
/// Verified tokens are remembered by the SHA-256 of their bytes (with their `exp`/`nbf`), so a
/// workload that calls again with the same token skips the signature check; time bounds are
/// checked on every call, and the memory is dropped whenever the JWKS changes (a removed key
/// stops working at once).
pub struct ClusterTokens {
    pub config: ClusterConfig,
    jwks: RwLock<Arc<Jwks>>,
    jwks_fingerprint: RwLock<Vec<u8>>,
    last_load: RwLock<Option<Instant>>,
    verified: RwLock<std::collections::HashMap<[u8; 32], CachedToken>>,
    kubernetes: OnceLock<KubeParts>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    account: ServiceAccount,
    exp: i64,
    nbf: Option<i64>,
}

impl std::fmt::Debug for KubeParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeParts")
            .field("reviewer", &self.reviewer)
            .field("pods", &self.pods.as_ref().map(|p| p.len()))
            .finish()
    }
}

impl std::fmt::Debug for ClusterTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTokens")
            .field("cluster", &self.config.name)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    aud: Audience,
    exp: Option<i64>,
    nbf: Option<i64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct KubernetesClaim {
    namespace: Option<String>,
    serviceaccount: Option<NamedRef>,
    pod: Option<NamedRef>,
    node: Option<NamedRef>,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: Option<String>,
    uid: Option<String>,
}

impl ClusterTokens {
    pub fn new(config: ClusterConfig) -> ClusterTokens {
        ClusterTokens {
            config,
            jwks: RwLock::new(Arc::new(Jwks::default())),
            jwks_fingerprint: RwLock::new(Vec::new()),
            last_load: RwLock::new(None),
            verified: RwLock::new(std::collections::HashMap::new()),
            kubernetes: OnceLock::new(),
        }
    }

    /// The cluster's Kubernetes API parts, once connected (`Clusters::connect_kubernetes`).
    pub fn kubernetes(&self) -> Option<&KubeParts> {
        self.kubernetes.get()
    }

    /// Checks a token with the API server's TokenReview (`auth = "tokenreview"` or `"both"`).
    pub async fn review(&self, token: &str) -> Result<ServiceAccount, super::Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge.into());
        }
        let reviewer = self
            .kubernetes()
            .and_then(|k| k.reviewer.as_ref())
            .ok_or_else(|| super::Error::Kubernetes("TokenReview is not connected".to_owned()))?;
        match reviewer.review(token).await {
            Ok(reviewed) => {
                SpiffeId::for_service_account(
                    &self.config.trust_domain,
                    &reviewed.namespace,
                    &reviewed.service_account,
                )
                .map_err(|e| TokenError::BadSubject(e.to_string()))?;
                Ok(ServiceAccount {
                    namespace: reviewed.namespace,
                    service_account: reviewed.service_account,
                    pod: reviewed.pod_name.zip(reviewed.pod_uid),
                    node: reviewed.node_name,
                })
            }
            Err(ReviewError::Unavailable(e)) => Err(super::Error::Kubernetes(
                crate::report::Chain(&e).to_string(),
            )),
            Err(ReviewError::Refused(why)) => Err(TokenError::ReviewRefused(why).into()),
            Err(ReviewError::WrongAudience) => Err(TokenError::WrongAudience.into()),
            Err(ReviewError::NotServiceAccount(who)) => Err(TokenError::BadSubject(who).into()),
        }
    }

    /// The client that fetches `jwks_url`: https only (redirects included: a JWKS is what we
    /// trust tokens with), verified with `jwks_ca_file` when given, else the web roots.
    async fn jwks_client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .https_only(true);
        if let Some(path) = &self.config.jwks_ca_file {
            let pem = tokio::fs::read(path)
                .await
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
            if roots.is_empty() {
                return Err(format!("jwks_ca_file {}: no certificate", path.display()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        builder.build().map_err(|e| e.to_string())
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// (Re)loads the JWKS from its file or URL. On failure the previous keys stay.
    pub async fn reload(&self) -> Result<(), String> {
        if let Ok(mut last) = self.last_load.write() {
            *last = Some(Instant::now());
        }
        let bytes = match &self.config.jwks {
            None => return Ok(()),
            Some(JwksSource::Discovery) => {
                let client = &self
                    .kubernetes()
                    .ok_or("the cluster's API server is not connected")?
                    .client;
                crate::kubernetes::discovery::fetch_jwks(client, &self.config.issuer)
                    .await
                    .map_err(|e| crate::report::Chain(&e).to_string())?
            }
            Some(JwksSource::File(path)) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Some(JwksSource::Url(url)) => {
                let client = self.jwks_client().await?;
                let response = client.get(url).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("{url}: HTTP {}", response.status()));
                }
                if response
                    .content_length()
                    .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
                {
                    return Err(format!("{url}: JWKS too large"));
                }
                // Chunk by chunk: a chunked body without a length is cut at the cap, never
                // read whole first.
                let mut body = Vec::new();
                let mut response = response;
                while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!("{url}: JWKS too large"));
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        let jwks = Jwks::parse(&bytes)?;
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        let changed = self
            .jwks_fingerprint
            .read()
            .map(|f| *f != fingerprint)
            .unwrap_or(true);
        if changed {
            if let Ok(mut current) = self.jwks.write() {
                *current = Arc::new(jwks);
            }
            if let Ok(mut f) = self.jwks_fingerprint.write() {
                *f = fingerprint;
            }
            if let Ok(mut verified) = self.verified.write() {
                verified.clear();
            }
        }
        Ok(())
    }

    fn current(&self) -> Arc<Jwks> {
        self.jwks.read().map(|j| j.clone()).unwrap_or_default()
    }

    fn may_reload(&self) -> bool {
        self.last_load
            .read()
            // Anyone can present an unknown `kid`: at most one reload per interval (60 s by
            // default; the periodic reload every 5 min catches a rotation anyway).
            .map(|last| last.is_none_or(|t| t.elapsed() >= self.config.jwks_reload_min_interval))
            .unwrap_or(false)
    }

    /// Verifies a token and returns the service account it names. An unknown `kid` triggers a
    /// JWKS reload (rate-limited) before giving up.
    pub async fn verify(&self, token: &str, now: i64) -> Result<ServiceAccount, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        let cached = self.verified.read().ok().and_then(|m| m.get(&key).cloned());
        if let Some(cached) = cached {
            if now > cached.exp.saturating_add(LEEWAY_SECONDS) {
                return Err(TokenError::Expired);
            }
            if cached
                .nbf
                .is_some_and(|nbf| now < nbf.saturating_sub(LEEWAY_SECONDS))
            {
                return Err(TokenError::NotYetValid);
            }
            return Ok(cached.account);
        }
        let result = self.verify_uncached(token, now).await;
        if let Ok((account, exp, nbf)) = &result
            && let Ok(mut verified) = self.verified.write()
        {
            if verified.len() >= MAX_CACHED_TOKENS {
                verified.clear();
            }
            verified.insert(
                key,
                CachedToken {
                    account: account.clone(),
                    exp: *exp,
                    nbf: *nbf,
                },
            );
        }
        result.map(|(account, _, _)| account)
    }

    async fn verify_uncached(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(ServiceAccount, i64, Option<i64>), TokenError> {
        match self.verify_with(&self.current(), token, now) {
            Err(TokenError::UnknownKey) if self.may_reload() => {
                if let Err(e) = self.reload().await {
                    tracing::warn!(cluster = %self.config.name, error = %e, "JWKS reload failed");
                }
                self.verify_with(&self.current(), token, now)
            }
            other => other,
        }
    }

    fn verify_with(
        &self,
        jwks: &Jwks,
        token: &str,
        now: i64,
    ) -> Result<(ServiceAccount, i64, Option<i64>), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            let text = e.to_string();
            // An unknown `alg` such as "none" fails header parsing in jsonwebtoken.
            if text.contains("unknown variant") {
                TokenError::Algorithm(text)
            } else {
                TokenError::Malformed(text)
            }
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates: Vec<&Key> = jwks
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                }
                Err(e) => return Err(TokenError::Malformed(e.to_string())),
            }
        }
        let claims = claims.ok_or(TokenError::BadSignature)?;
        self.check_claims(claims, now)
    }

    fn check_claims(
        &self,
        claims: Claims,
        now: i64,
    ) -> Result<(ServiceAccount, i64, Option<i64>), TokenError> {
        let exp = claims.exp.ok_or(TokenError::MissingExpiry)?;
        let nbf = claims.nbf;
        if now > exp.saturating_add(LEEWAY_SECONDS) {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now < nbf.saturating_sub(LEEWAY_SECONDS))
        {
            return Err(TokenError::NotYetValid);
        }
        let issuer = claims.iss.unwrap_or_default();
        if issuer != self.config.issuer {
            return Err(TokenError::WrongIssuer(issuer));
        }
        let audiences: Vec<String> = match claims.aud {
            Audience::None => Vec::new(),
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        };
        if !audiences.iter().any(|a| self.config.audiences.contains(a)) {
            return Err(TokenError::WrongAudience);
        }
        let subject = claims.sub.unwrap_or_default();
        let parts: Vec<&str> = subject.split(':').collect();
        let (namespace, service_account) = match parts.as_slice() {
            ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => (*ns, *sa),
            _ => {
                return Err(TokenError::BadSubject(crate::untrusted::bounded(
                    &subject,
                    crate::untrusted::LOG_CHARS,
                )));
            }
        };
        let mut pod = None;
        let mut node = None;
        if let Some(k8s) = &claims.kubernetes {
            let ns_ok = k8s.namespace.as_deref().is_none_or(|n| n == namespace);
            let sa_ok = k8s
                .serviceaccount
                .as_ref()
                .and_then(|s| s.name.as_deref())
                .is_none_or(|n| n == service_account);
            if !ns_ok || !sa_ok {
                return Err(TokenError::BadSubject(
                    "kubernetes.io claim disagrees with sub".to_owned(),
                ));
            }
            let bounded = |v: &String| crate::untrusted::bounded(v, 253);
            pod = k8s.pod.as_ref().and_then(|p| {
                p.name
                    .as_ref()
                    .map(bounded)
                    .zip(p.uid.as_ref().map(bounded))
            });
            node = k8s.node.as_ref().and_then(|n| n.name.as_ref()).map(bounded);
        }
        // The names must make a valid SPIFFE ID path.
        SpiffeId::for_service_account(&self.config.trust_domain, namespace, service_account)
            .map_err(|e| TokenError::BadSubject(e.to_string()))?;
        Ok((
            ServiceAccount {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                pod,
                node,
            },
            exp,
            nbf,
        ))
    }
}

/// A cluster connected to its API server: its name, client and pod index (if any) to run.
pub type Connected = (String, kube::Client, Option<Arc<PodIndex>>);

/// Every configured cluster, by `clusterid`.
#[derive(Debug, Default, Clone)]
pub struct Clusters {
    by_name: BTreeMap<String, Arc<ClusterTokens>>,
}

impl Clusters {
    pub fn new(configs: &[ClusterConfig]) -> Clusters {
        Clusters {
            by_name: configs
                .iter()
                .map(|c| (c.name.clone(), Arc::new(ClusterTokens::new(c.clone()))))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ClusterTokens>> {
        self.by_name.get(name)
    }

    /// Connects every cluster that has `[clusters.kubernetes]`: its client, TokenReview when
    /// its `auth` uses it, and an (empty, unsynced) pod index when `node_authorization` is on.
    /// Returns what must run in the background: each pod index to watch, with its client.
    pub fn connect_kubernetes(&self) -> Result<Vec<Connected>, (String, crate::kubernetes::Error)> {
        let mut started = Vec::new();
        for cluster in self.by_name.values() {
            let Some(config) = &cluster.config.kubernetes else {
                continue;
            };
            let name = cluster.config.name.clone();
            let client = crate::kubernetes::client(config).map_err(|e| (name.clone(), e))?;
            let reviewer = cluster.config.auth.uses_token_review().then(|| {
                TokenReviewer::new(
                    client.clone(),
                    cluster.config.audiences.clone(),
                    config.token_review_cache_ttl,
                )
            });
            let pods = config
                .node_authorization
                .then(|| Arc::new(PodIndex::default()));
            let _ = cluster.kubernetes.set(KubeParts {
                client: client.clone(),
                reviewer,
                pods: pods.clone(),
            });
            started.push((name, client, pods));
        }
        Ok(started)
    }

    /// Loads every cluster's JWKS; failures are logged (tokens of that cluster fail until a
    /// later reload works), not fatal.
    pub async fn load_all(&self) {
        for cluster in self.by_name.values() {
            if let Err(e) = cluster.reload().await {
                tracing::warn!(cluster = %cluster.config.name, error = %e, "cannot load JWKS");
            }
        }
    }
}
