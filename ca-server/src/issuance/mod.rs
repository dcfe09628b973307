//! The issuance engine: the only path to a signature over a certificate. No I/O and no clock:
//! the caller passes the [`Issuer`], the authorised identity, the verified CSR and `now`.
//!
//! - `csr`: untrusted bytes to a [`VerifiedCsr`] (size cap, key policy, signature).
//! - `lifetime`: backdate and clamp, the validity of any certificate inside its issuer's.
//! - `template`: one template per certificate kind (leaf, serving, intermediate), built field
//!   by field from policy and identity.
//! - `writer`: the one DER writer and signer, for any template.
//! - `check`: the signed certificate re-parsed and held to its template before it leaves.
//! - `serving`: the CA's own TLS serving certificates, through the same template, writer and
//!   check.

pub mod check;
pub mod csr;
pub mod lifetime;
pub mod serving;
pub mod template;
pub mod writer;

use std::time::Duration;

use time::OffsetDateTime;

use crate::keys::CaKey;
use crate::serial::Serial;
use crate::spiffe::{SpiffeId, TrustDomain};

pub use csr::{KeyKind, VerifiedCsr};
pub use lifetime::{Lifetime, TtlPolicy, Validity};
pub use template::{SubjectKey, Template};

/// A CA certificate and its key, as issuance needs them: borrowed from whoever holds the CA
/// (an `Authority` for its intermediate), so the engine depends on no one above it.
#[derive(Debug, Clone, Copy)]
pub struct Issuer<'a> {
    pub trust_domain: &'a TrustDomain,
    /// The CA's subject `Name` (DER): the issuer field of everything it signs.
    pub subject_der: &'a [u8],
    /// The CA's subject key identifier: the authority key identifier of everything it signs.
    pub key_identifier: &'a [u8],
    /// The CA certificate's own validity; nothing it signs leaves it.
    pub validity: Validity,
    /// Signs; its algorithm decides the signature algorithm.
    pub key: &'a CaKey,
    /// CRL distribution point and OCSP URL to name in the leaves it signs (when published).
    pub crl_url: Option<&'a str>,
    pub ocsp_url: Option<&'a str>,
}

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
    #[error(
        "CSR signature algorithm {0} is not allowed (ECDSA, or RSA PKCS #1 v1.5, with SHA-256/384/512)"
    )]
    WeakSignature(String),
    #[error(
        "CSR asks for extension {0}; only subjectAltName, keyUsage, extendedKeyUsage and basicConstraints may be requested"
    )]
    ForbiddenExtension(String),
    #[error("CSR carries attribute {0}; only extensionRequest is accepted")]
    ForbiddenAttribute(String),
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
    #[error("{0:?} cannot be written as an IA5String (ASCII only)")]
    NotIa5String(String),
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
            Error::WeakSignature(_) => "csr_weak_signature",
            Error::ForbiddenExtension(_) => "csr_forbidden_extension",
            Error::ForbiddenAttribute(_) => "csr_forbidden_attribute",
            Error::CsrClaimsOtherIdentity(_) => "csr_identity_mismatch",
            Error::CsrRequestsCaPowers => "csr_requests_ca",
            Error::WrongTrustDomain(_) => "wrong_trust_domain",
            Error::TtlOutOfRange => "invalid_ttl",
            Error::IssuerNotValid => "issuer_not_valid",
            Error::Signing(_) => "signing_failed",
            Error::NotIa5String(_) => "not_ia5_string",
            Error::SelfCheck(_) => "self_check_failed",
            Error::Rng(_) => "rng_failed",
        }
    }

    /// The caller's fault (vs. ours).
    pub fn is_bad_request(&self) -> bool {
        !matches!(
            self,
            Error::IssuerNotValid
                | Error::Signing(_)
                | Error::NotIa5String(_)
                | Error::SelfCheck(_)
                | Error::Rng(_)
        )
    }
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
    /// The request asked for less than `min_ttl` and was raised to it.
    pub ttl_raised: bool,
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
        [uri] => match SpiffeId::parse(uri) {
            // The common misconfiguration: the mesh's trustDomain is not the one this cluster
            // is configured for, so every workload asks for the wrong trust domain.
            Ok(asked) if asked.trust_domain() != spiffe_id.trust_domain() => {
                Err(Error::CsrClaimsOtherIdentity(format!(
                    "the CSR asks for trust domain {}, but this caller's identity is {spiffe_id}: \
                     the mesh's trustDomain must equal the [[clusters]] trust_domain of its cluster",
                    asked.trust_domain()
                )))
            }
            _ => Err(Error::CsrClaimsOtherIdentity(format!(
                "the CSR's URI SANs must be empty or exactly {spiffe_id}"
            ))),
        },
        _ => Err(Error::CsrClaimsOtherIdentity(format!(
            "the CSR's URI SANs must be empty or exactly {spiffe_id}"
        ))),
    }
}

/// Issues a certificate for `spiffe_id` over the public key of `csr`.
///
/// `requested_ttl` of `None` or zero means the trust domain's default; longer than `max_ttl` is
/// clamped to it (reported in `ttl_clamped`); notAfter never passes the issuer's.
pub fn issue(
    issuer: &Issuer<'_>,
    policy: TtlPolicy,
    csr: &VerifiedCsr,
    spiffe_id: &SpiffeId,
    requested_ttl: Option<Duration>,
    now: OffsetDateTime,
) -> Result<IssuedCert, Error> {
    if spiffe_id.trust_domain() != issuer.trust_domain {
        return Err(Error::WrongTrustDomain(spiffe_id.to_string()));
    }
    authorize_csr(csr, spiffe_id)?;
    let lifetime = Lifetime::new(now, requested_ttl, policy, issuer.validity)?;
    let serial = Serial::random()?;
    let template = Template::leaf(spiffe_id, &serial, &lifetime, SubjectKey::of(csr), issuer);
    let der = writer::sign(&template, issuer)?;
    check::check(&der, &template, issuer)?;
    Ok(IssuedCert {
        der,
        serial,
        spiffe_id: spiffe_id.clone(),
        not_before: lifetime.validity.not_before,
        not_after: lifetime.validity.not_after,
        ttl_clamped: lifetime.ttl_clamped,
        ttl_raised: lifetime.ttl_raised,
        capped_by_issuer: lifetime.capped_by_issuer,
    })
}

#[cfg(test)]
mod tests;
