//! TokenReview: the API server says whether a token is valid now (its pod and service account
//! still exist, it was not revoked) and for which audiences, as istiod and istio-csr ask.
//!
//! We send the cluster's `audiences` in `spec.audiences` and require the answer to name at least
//! one of them: without audiences the API server checks the token against its own audience,
//! and any ordinary service-account token would pass (security.md F4). The user must be a
//! service account (`system:serviceaccount:<ns>:<sa>`, in group `system:serviceaccounts`).
//!
//! Positive answers are remembered by the token's SHA-256 for `token_review_cache_ttl`
//! (default 60 s, at most 10 min; at most [`MAX_CACHED`] tokens, the memory is emptied when
//! full), so a restart storm of pods presenting the same tokens does not flood the API server.
//! Refusals are not remembered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

use super::Error;

/// Most positive answers remembered.
pub const MAX_CACHED: usize = 10_000;

/// A service account the API server vouched for, with the pod and node the token is bound to
/// (from `user.extra`, when the token is a bound one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub node_name: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server could not be asked: not the caller's fault, fails closed (UNAVAILABLE).
    #[error("TokenReview unavailable")]
    Unavailable(#[source] Error),
    /// The API server said no.
    #[error("TokenReview refused the token: {0}")]
    Refused(String),
    #[error("TokenReview: none of the token's audiences is ours")]
    WrongAudience,
    #[error("TokenReview: not a service account: {0}")]
    NotServiceAccount(String),
}

/// The TokenReview client of one cluster.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Reviewed, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .finish()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audiences: Vec<String>, ttl: Duration) -> TokenReviewer {
        TokenReviewer {
            api: Api::all(client),
            audiences,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the API server about `token` (or answers from the positive cache).
    pub async fn review(&self, token: &str) -> Result<Reviewed, ReviewError> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        if let Ok(cache) = self.cache.lock()
            && let Some((reviewed, at)) = cache.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(reviewed.clone());
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| ReviewError::Unavailable(e.into()))?;
        let reviewed = self.judge(answer)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, (reviewed.clone(), Instant::now()));
        }
        Ok(reviewed)
    }

    fn judge(&self, answer: TokenReview) -> Result<Reviewed, ReviewError> {
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let error = status
                .error
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(ReviewError::Refused(crate::untrusted::bounded(
                &error,
                crate::untrusted::LOG_CHARS,
            )));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(ReviewError::WrongAudience);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let not_sa = || {
            ReviewError::NotServiceAccount(crate::untrusted::bounded(
                &username,
                crate::untrusted::LOG_CHARS,
            ))
        };
        let groups = user.groups.unwrap_or_default();
        if !groups.iter().any(|g| g == "system:serviceaccounts") {
            return Err(not_sa());
        }
        let parts: Vec<&str> = username.split(':').collect();
        let ["system", "serviceaccount", namespace, service_account] = parts.as_slice() else {
            return Err(not_sa());
        };
        if !super::is_valid_name(namespace) || !super::is_valid_name(service_account) {
            return Err(not_sa());
        }
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| {
            extra
                .get(key)
                .and_then(|values| values.first())
                .filter(|v| super::is_valid_name(v) || key.ends_with("uid"))
                .map(|v| crate::untrusted::bounded(v, 253))
        };
        Ok(Reviewed {
            namespace: (*namespace).to_owned(),
            service_account: (*service_account).to_owned(),
            pod_name: one("authentication.kubernetes.io/pod-name"),
            pod_uid: one("authentication.kubernetes.io/pod-uid"),
            node_name: one("authentication.kubernetes.io/node-name"),
        })
    }
}
