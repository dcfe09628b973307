//! What an authenticated caller may get. A caller gets its own identity; a trusted node agent
//! (ztunnel) may ask for another identity of its own trust domain with `ImpersonatedIdentity`.
//!
//! With `[clusters.kubernetes] node_authorization = true` the impersonation is also bound to
//! the caller's node, as Istio's `node_auth.go` does: the caller's token must name its pod
//! (bound tokens do: `kubernetes.io.pod`, or TokenReview's `pod-name`/`pod-uid`), that pod must
//! still exist with that uid in the cluster's pod index, and a live pod of the requested
//! service account must be on the same node. The node comes from the pod index (the token's
//! node claim, when present, must agree). Until the index has synced every impersonation of that
//! cluster is refused with a retriable error (fail closed). Without `node_authorization`, a
//! listed node account may ask for any identity of its trust domain.

use crate::authn::Principal;
use crate::authn::jwt::Clusters;
use crate::spiffe::SpiffeId;

/// Why the request is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("caller {0} may not impersonate")]
    ImpersonationNotAllowed(String),
    #[error("impersonated identity is not a service-account SPIFFE ID: {0}")]
    ImpersonationMalformed(String),
    #[error("impersonated identity {0} is outside the caller's trust domain")]
    ImpersonationCrossTrustDomain(String),
    #[error("unknown certificate signer {0:?}")]
    UnknownSigner(String),
    /// The pod index is not synced (or not running): fail closed, retriably.
    #[error("the cluster's pod index is not synced yet")]
    NodeIndexNotSynced,
    #[error("caller {0}: its token names no live pod, so its node is unknown")]
    CallerNodeUnknown(String),
    #[error("no live pod of {0} runs on the caller's node")]
    NotOnCallerNode(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ImpersonationNotAllowed(_) => "impersonation_not_allowed",
            Error::ImpersonationMalformed(_) => "impersonation_malformed",
            Error::ImpersonationCrossTrustDomain(_) => "impersonation_cross_trust_domain",
            Error::UnknownSigner(_) => "unknown_signer",
            Error::NodeIndexNotSynced => "node_index_not_synced",
            Error::CallerNodeUnknown(_) => "caller_node_unknown",
            Error::NotOnCallerNode(_) => "impersonation_not_on_node",
        }
    }
}

/// Decides the identity to issue for.
///
/// `cert_signer`: Istio's `CertSigner` metadata; empty or absent is the default signer; we know
/// no named signers, so any other value is refused.
pub fn decide(
    principal: &Principal,
    impersonated: Option<&str>,
    cert_signer: Option<&str>,
    clusters: &Clusters,
) -> Result<SpiffeId, Error> {
    if let Some(signer) = cert_signer.filter(|s| !s.is_empty()) {
        return Err(Error::UnknownSigner(crate::untrusted::bounded(signer, 64)));
    }
    let Some(requested) = impersonated.filter(|s| !s.is_empty()) else {
        return Ok(principal.spiffe_id().clone());
    };
    let Principal::ServiceAccount {
        cluster,
        namespace,
        service_account,
        pod,
        node,
        ..
    } = principal
    else {
        return Err(Error::ImpersonationNotAllowed(principal.describe()));
    };
    let cluster_tokens = clusters.get(cluster);
    let trusted = cluster_tokens.is_some_and(|c| {
        c.config
            .trusted_node_accounts
            .iter()
            .any(|a| *a == format!("{namespace}/{service_account}"))
    });
    if !trusted {
        return Err(Error::ImpersonationNotAllowed(principal.describe()));
    }
    let target = SpiffeId::parse(requested).map_err(|_| {
        Error::ImpersonationMalformed(crate::untrusted::bounded(
            requested,
            crate::untrusted::LOG_CHARS,
        ))
    })?;
    // Exactly spiffe://<td>/ns/<ns>/sa/<sa>, as Istio names workloads.
    let path: Vec<&str> = target
        .as_str()
        .trim_start_matches("spiffe://")
        .split_once('/')
        .map(|(_, path)| path.split('/').collect())
        .unwrap_or_default();
    let (target_namespace, target_account) = match path.as_slice() {
        ["ns", namespace, "sa", service_account]
            if crate::spiffe::is_dns_label(namespace)
                && crate::spiffe::is_dns_subdomain(service_account) =>
        {
            (*namespace, *service_account)
        }
        _ => return Err(Error::ImpersonationMalformed(target.to_string())),
    };
    if target.trust_domain() != principal.trust_domain() {
        return Err(Error::ImpersonationCrossTrustDomain(target.to_string()));
    }
    let node_bound = cluster_tokens.is_some_and(|c| {
        c.config
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.node_authorization)
    });
    if node_bound {
        let index = cluster_tokens
            .and_then(|c| c.kubernetes())
            .and_then(|k| k.pods.as_ref())
            .filter(|index| index.is_synced())
            .ok_or(Error::NodeIndexNotSynced)?;
        let caller_node = pod
            .as_ref()
            .and_then(|(name, uid)| index.node_of(namespace, name, Some(uid)))
            .filter(|found| node.as_ref().is_none_or(|claimed| claimed == found))
            .ok_or_else(|| Error::CallerNodeUnknown(principal.describe()))?;
        if !index.has_pod_on_node(&caller_node, target_namespace, target_account) {
            return Err(Error::NotOnCallerNode(target.to_string()));
        }
    }
    Ok(target)
}
