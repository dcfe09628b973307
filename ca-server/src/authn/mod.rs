//! Who is calling (never what they may have: that is `authz`). Sources, in a fixed order:
//!
//! 1. `authorization: Bearer <JWT>` present: a Kubernetes service-account token, checked against
//!    the JWKS of the cluster named by the `clusterid` header (`jwt`). The header decides: a bad
//!    token fails even if a client certificate was also presented.
//! 2. No bearer token but a verified client certificate (mutual TLS renewal): the certificate's
//!    single SPIFFE URI, if we issued it, it is unexpired and it is not revoked (`mtls`).
//!    Per cluster (`auth`), the token is checked against the JWKS, by the API server's
//!    TokenReview (`kubernetes::token_review`), or both.
//! 3. Nothing else. Forwarded identity headers (XFCC and the like) are never read.
//!
//! Failures carry a reason for the log and the `ca_authn_failures_total{reason}` counter; callers
//! only ever see an opaque "unauthenticated".

pub mod jwt;
pub mod mtls;

use rustls_pki_types::CertificateDer;

use crate::config::ClusterAuth;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::store;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A Kubernetes service account, proven by a token from a configured cluster.
    ServiceAccount {
        cluster: String,
        namespace: String,
        service_account: String,
        spiffe_id: SpiffeId,
        /// The pod (name, uid) the token is bound to, when it says.
        pod: Option<(String, String)>,
        /// The node the token is bound to, when it says.
        node: Option<String>,
    },
    /// A workload renewing with a certificate we issued.
    Certificate { spiffe_id: SpiffeId, serial: String },
}

impl Principal {
    /// How the caller was authenticated, for logs and audit: `token` or `mtls`.
    pub fn method(&self) -> &'static str {
        match self {
            Principal::ServiceAccount { .. } => "token",
            Principal::Certificate { .. } => "mtls",
        }
    }

    /// The identity this caller has proven.
    pub fn spiffe_id(&self) -> &SpiffeId {
        match self {
            Principal::ServiceAccount { spiffe_id, .. }
            | Principal::Certificate { spiffe_id, .. } => spiffe_id,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.spiffe_id().trust_domain()
    }

    /// How the caller is named in the issuance record.
    pub fn describe(&self) -> String {
        match self {
            Principal::ServiceAccount {
                cluster,
                namespace,
                service_account,
                ..
            } => format!("sa:{cluster}/{namespace}/{service_account}"),
            Principal::Certificate { spiffe_id, serial } => format!("cert:{spiffe_id}#{serial}"),
        }
    }
}

/// What the caller presented.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub authorization: Option<&'a str>,
    pub cluster_id: Option<&'a str>,
    /// The verified client chain (leaf first), if the TLS handshake had one.
    pub peer_certs: Option<&'a [CertificateDer<'static>]>,
}

/// Why authentication failed. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no credentials")]
    NoCredentials,
    #[error("authorization header is not `Bearer <token>`")]
    MalformedHeader,
    #[error("unknown cluster id {0:?}")]
    UnknownCluster(String),
    #[error("token: {0}")]
    Token(#[from] jwt::TokenError),
    #[error("client certificate: {0}")]
    Certificate(#[from] mtls::CertError),
    /// Not the caller's fault: the revocation state could not be read. Fails closed.
    #[error("store: {0}")]
    Store(#[from] store::Error),
    /// Not the caller's fault: the cluster's API server (TokenReview) could not be asked.
    /// Fails closed, with a code the agent retries.
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoCredentials => "no_credentials",
            Error::MalformedHeader => "malformed_header",
            Error::UnknownCluster(_) => "unknown_cluster",
            Error::Token(e) => e.reason(),
            Error::Certificate(e) => e.reason(),
            Error::Store(_) => "store_unavailable",
            Error::Kubernetes(_) => "kubernetes_unavailable",
        }
    }
}

/// The `clusterid` assumed when a caller sends none (Istio's default cluster name).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Authenticates a caller by the fixed order above.
pub async fn authenticate(
    credentials: &Credentials<'_>,
    clusters: &jwt::Clusters,
    authorities: &crate::authority::Authorities,
    store: &store::Store,
    now: i64,
) -> Result<Principal, Error> {
    if let Some(header) = credentials.authorization {
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::MalformedHeader)?;
        let cluster_id = credentials.cluster_id.unwrap_or(DEFAULT_CLUSTER_ID);
        let cluster = clusters
            .get(cluster_id)
            .ok_or_else(|| Error::UnknownCluster(cluster_id.chars().take(64).collect()))?;
        let account = match cluster.config.auth {
            ClusterAuth::Jwks => cluster.verify(token, now).await?,
            ClusterAuth::Tokenreview => cluster.review(token).await?,
            ClusterAuth::Both => {
                // The signature first (no API call for a forged token), then the API server.
                let signed = cluster.verify(token, now).await?;
                let reviewed = cluster.review(token).await?;
                if (&signed.namespace, &signed.service_account)
                    != (&reviewed.namespace, &reviewed.service_account)
                {
                    return Err(jwt::TokenError::BadSubject(
                        "TokenReview and the token name different accounts".to_owned(),
                    )
                    .into());
                }
                jwt::ServiceAccount {
                    pod: reviewed.pod.or(signed.pod),
                    node: reviewed.node.or(signed.node),
                    ..signed
                }
            }
        };
        let spiffe_id = SpiffeId::for_service_account(
            cluster.trust_domain(),
            &account.namespace,
            &account.service_account,
        )
        .map_err(|e| jwt::TokenError::BadSubject(e.to_string()))?;
        return Ok(Principal::ServiceAccount {
            cluster: cluster.config.name.clone(),
            namespace: account.namespace,
            service_account: account.service_account,
            spiffe_id,
            pod: account.pod,
            node: account.node,
        });
    }
    if let Some(leaf) = credentials.peer_certs.and_then(<[_]>::first) {
        return mtls::authenticate(leaf.as_ref(), authorities, store, now).await;
    }
    Err(Error::NoCredentials)
}
