//! The issuance engine: the only path to a workload signature. No I/O and no clock: the caller
//! passes the authority, the authorised identity, the verified CSR and `now`.
//!
//! - `csr`: untrusted bytes to a [`VerifiedCsr`] (size cap, key policy, signature).
//! - `profile`: the X509-SVID template, built field by field from policy and identity.
//! - `check`: the signed certificate re-parsed and held to that template before it leaves.

pub mod check;
pub mod csr;
pub mod profile;
pub mod serving;

use std::time::Duration;

use time::OffsetDateTime;

use crate::authority::Authority;
use crate::serial::Serial;
use crate::spiffe::SpiffeId;

pub use csr::{KeyKind, VerifiedCsr};

/// How far `notBefore` is backdated, for relying parties with slow clocks.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Why a certificate was not issued. Every variant but `Signing`, `SelfCheck` and `Rng` is the
/// caller's fault and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("CSR larger than {} bytes", csr::MAX_CSR_BYTES)]
    CsrTooLarge,
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("expected a CERTIFICATE REQUEST, got a PEM block of type {0}")]
    NotACsr(String),
    #[error("CSR signature does not verify")]
    BadCsrSignature,
    #[error("unsupported CSR key: {0}")]
    UnsupportedKey(String),
    #[error("CSR claims an identity other than the authorised one: {0}")]
    CsrClaimsOtherIdentity(String),
    #[error("CSR asks for CA or signing powers")]
    CsrRequestsCaPowers,
    #[error("SPIFFE ID {0} is not in this trust domain")]
    WrongTrustDomain(String),
    #[error("requested TTL is out of range")]
    TtlOutOfRange,
    #[error("the issuing CA is not valid at this time")]
    IssuerNotValid,
    #[error("signing failed")]
    Signing(#[source] rcgen::Error),
    #[error("issued certificate failed its self-check: {0}")]
    SelfCheck(String),
    #[error(transparent)]
    Rng(#[from] crate::serial::RngError),
}

impl Error {
    /// A stable short name (metric label, error code).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::CsrTooLarge => "csr_too_large",
            Error::MalformedCsr(_) => "malformed_csr",
            Error::NotACsr(_) => "not_a_csr",
            Error::BadCsrSignature => "bad_csr_signature",
            Error::UnsupportedKey(_) => "unsupported_key",
            Error::CsrClaimsOtherIdentity(_) => "csr_identity_mismatch",
            Error::CsrRequestsCaPowers => "csr_requests_ca",
            Error::WrongTrustDomain(_) => "wrong_trust_domain",
            Error::TtlOutOfRange => "invalid_ttl",
            Error::IssuerNotValid => "issuer_not_valid",
            Error::Signing(_) => "signing_failed",
            Error::SelfCheck(_) => "self_check_failed",
            Error::Rng(_) => "rng_failed",
        }
    }

    /// The caller's fault (vs. ours).
    pub fn is_bad_request(&self) -> bool {
        !matches!(
            self,
            Error::IssuerNotValid | Error::Signing(_) | Error::SelfCheck(_) | Error::Rng(_)
        )
    }
}

/// TTL policy of a trust domain.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// A signed certificate that passed its self-check (not yet recorded).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    pub serial: Serial,
    pub spiffe_id: SpiffeId,
    pub not_before: i64,
    pub not_after: i64,
    /// The request asked for more than `max_ttl` and was shortened to it.
    pub ttl_clamped: bool,
    /// notAfter was cut to the intermediate's notAfter.
    pub capped_by_issuer: bool,
}

/// Checks that `csr` claims nothing but `spiffe_id` (no other URI, no DNS/IP/e-mail name, no CN,
/// no CA powers). A CSR with no URI SAN, or with exactly this one, is fine.
pub fn authorize_csr(csr: &VerifiedCsr, spiffe_id: &SpiffeId) -> Result<(), Error> {
    if csr.requests_ca_powers {
        return Err(Error::CsrRequestsCaPowers);
    }
    if csr.requests_other_names {
        return Err(Error::CsrClaimsOtherIdentity(
            "DNS, IP, e-mail and other non-URI names are not allowed".to_owned(),
        ));
    }
    if csr.subject_names_identity {
        return Err(Error::CsrClaimsOtherIdentity(
            "the subject must not carry a common name or e-mail address".to_owned(),
        ));
    }
    match csr.requested_uris.as_slice() {
        [] => Ok(()),
        [uri] if uri == spiffe_id.as_str() => Ok(()),
        _ => Err(Error::CsrClaimsOtherIdentity(format!(
            "the CSR's URI SANs must be empty or exactly {spiffe_id}"
        ))),
    }
}

/// Issues a certificate for `spiffe_id` over the public key of `csr`.
///
/// `requested_ttl` of `None` or zero means the trust domain's default; longer than `max_ttl` is
/// clamped to it (reported in `ttl_clamped`); notAfter never passes the intermediate's.
pub fn issue(
    authority: &Authority,
    policy: TtlPolicy,
    csr: &VerifiedCsr,
    spiffe_id: &SpiffeId,
    requested_ttl: Option<Duration>,
    now: OffsetDateTime,
) -> Result<IssuedCert, Error> {
    if spiffe_id.trust_domain() != &authority.trust_domain {
        return Err(Error::WrongTrustDomain(spiffe_id.to_string()));
    }
    authorize_csr(csr, spiffe_id)?;
    let now_s = now.unix_timestamp();
    if now_s < authority.intermediate_not_before || now_s >= authority.intermediate_not_after {
        return Err(Error::IssuerNotValid);
    }
    let requested = requested_ttl.filter(|t| !t.is_zero());
    let ttl = requested.unwrap_or(policy.default_ttl);
    let ttl_clamped = ttl > policy.max_ttl;
    let ttl = ttl.min(policy.max_ttl);
    let ttl_s = i64::try_from(ttl.as_secs()).map_err(|_| Error::TtlOutOfRange)?;
    let wanted_not_after = now_s.checked_add(ttl_s).ok_or(Error::TtlOutOfRange)?;
    let not_after = wanted_not_after.min(authority.intermediate_not_after);
    let backdate = i64::try_from(BACKDATE.as_secs()).unwrap_or(60);
    let not_before = (now_s - backdate).max(authority.intermediate_not_before);

    let serial = Serial::random()?;
    let template = profile::Template {
        spiffe_id,
        serial: &serial,
        not_before,
        not_after,
        rsa_key: csr.key_kind.is_rsa(),
    };
    let der = profile::sign(&template, csr, authority)?;
    check::check(&der, &template, csr, authority)?;
    Ok(IssuedCert {
        der,
        serial,
        spiffe_id: spiffe_id.clone(),
        not_before,
        not_after,
        ttl_clamped,
        capped_by_issuer: wanted_not_after > authority.intermediate_not_after,
    })
}

#[cfg(test)]
mod tests;
