//! The one mapping from domain errors to `tonic::Status` (SPEC section 4). Only transient
//! failures (store down, overload) use codes istio-agent retries (`UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED`); authentication failures are opaque.

use tonic::{Code, Status};

use crate::{authn, authz, ca};

/// Istio's own text for a failed authentication; the real reason is only logged.
pub const UNAUTHENTICATED: &str = "request authenticate failure";
/// Istio's text for a refused impersonation.
pub const IMPERSONATION_FAILED: &str = "request impersonation authentication failure";

pub fn from_authn(error: &authn::Error) -> Status {
    match error {
        authn::Error::Store(_) => Status::unavailable("the CA cannot check revocation right now"),
        authn::Error::Kubernetes(_) => {
            Status::unavailable("the CA cannot reach the cluster's API server right now; retry")
        }
        _ => Status::unauthenticated(UNAUTHENTICATED),
    }
}

pub fn from_authz(error: &authz::Error) -> Status {
    match error {
        authz::Error::UnknownSigner(signer) => {
            Status::permission_denied(format!("unknown certificate signer {signer:?}"))
        }
        authz::Error::NodeIndexNotSynced => {
            Status::unavailable("the CA has not yet seen the cluster's pods; retry")
        }
        _ => Status::unauthenticated(IMPERSONATION_FAILED),
    }
}

pub fn from_enrollment(error: &ca::Error) -> Status {
    match error {
        ca::Error::Issuance(e) if e.is_bad_request() => {
            Status::new(Code::InvalidArgument, format!("{}: {e}", e.reason()))
        }
        ca::Error::Issuance(_) => Status::internal("the CA failed to sign"),
        ca::Error::UnknownTrustDomain(td) => {
            Status::permission_denied(format!("this CA does not issue for trust domain {td}"))
        }
        ca::Error::Denied(_) => Status::permission_denied("this identity is denied"),
        ca::Error::Reserved(_) => {
            Status::permission_denied("this identity is reserved for the CA itself")
        }
        ca::Error::Overloaded => Status::resource_exhausted("the CA is overloaded; retry"),
        ca::Error::RateLimited { retry_after, .. } => {
            let mut status = Status::resource_exhausted(format!(
                "too many certificates for this identity; retry in {retry_after} s"
            ));
            if let Ok(value) = retry_after.to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        ca::Error::Store(_) => {
            Status::unavailable("the CA cannot record certificates right now; retry")
        }
    }
}

/// A `validity_duration` (or `ttl_seconds`) that cannot be honoured or clamped sensibly.
pub fn invalid_ttl() -> Status {
    Status::invalid_argument("validity_duration out of range")
}

/// A caller already has the most `WatchBundles` streams it may keep open.
pub fn too_many_watches() -> Status {
    Status::resource_exhausted("too many WatchBundles streams open for this caller")
}
