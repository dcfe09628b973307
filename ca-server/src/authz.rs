//! What an authenticated caller may get. A caller gets its own identity; a trusted node agent
//! (ztunnel) may ask for another identity of its own trust domain with `ImpersonatedIdentity`.
//!
//! Limit: Istio also requires a pod with the impersonated service account to run on the
//! caller's node. That check needs the Kubernetes API and is not done yet: any identity of the
//! node agent's trust domain is allowed to a listed node account.

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
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ImpersonationNotAllowed(_) => "impersonation_not_allowed",
            Error::ImpersonationMalformed(_) => "impersonation_malformed",
            Error::ImpersonationCrossTrustDomain(_) => "impersonation_cross_trust_domain",
            Error::UnknownSigner(_) => "unknown_signer",
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
        ..
    } = principal
    else {
        return Err(Error::ImpersonationNotAllowed(principal.describe()));
    };
    let trusted = clusters.get(cluster).is_some_and(|c| {
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
    match path.as_slice() {
        ["ns", namespace, "sa", service_account]
            if crate::spiffe::is_dns_label(namespace)
                && crate::spiffe::is_dns_subdomain(service_account) => {}
        _ => return Err(Error::ImpersonationMalformed(target.to_string())),
    }
    if target.trust_domain() != principal.trust_domain() {
        return Err(Error::ImpersonationCrossTrustDomain(target.to_string()));
    }
    Ok(target)
}
