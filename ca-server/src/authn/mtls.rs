//! Renewal over mutual TLS: the TLS layer has already verified the client chain against our own
//! roots; here the leaf must also carry exactly one SPIFFE URI SAN of a trust domain we issue for,
//! be signed by one of that trust domain's loaded intermediates (the active generation, or a
//! retired one whose leaves are still live: rotation must not cut renewal), be unexpired, be in
//! our issuance record and not be revoked. Revocation is read from the store on every renewal (fail closed if unreadable).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authn::{Error, Principal};
use crate::authority::Authorities;
use crate::spiffe::SpiffeId;
use crate::store::Store;

/// Why a client certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("does not parse")]
    Malformed,
    #[error("must carry exactly one URI SAN, a SPIFFE ID, and no other name")]
    Names,
    #[error("trust domain is not one we issue for")]
    UnknownTrustDomain,
    #[error("not signed by the trust domain's issuing CA")]
    WrongIssuer,
    #[error("expired or not yet valid")]
    Expired,
    #[error("not in the issuance record")]
    Unknown,
    #[error("revoked")]
    Revoked,
}

impl CertError {
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::Malformed => "cert_malformed",
            CertError::Names => "cert_names",
            CertError::UnknownTrustDomain => "cert_unknown_trust_domain",
            CertError::WrongIssuer => "cert_wrong_issuer",
            CertError::Expired => "cert_expired",
            CertError::Unknown => "cert_unknown",
            CertError::Revoked => "cert_revoked",
        }
    }
}

/// Authenticates the leaf of a verified client chain.
pub async fn authenticate(
    leaf_der: &[u8],
    authorities: &Authorities,
    store: &Store,
    now: i64,
) -> Result<Principal, Error> {
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|_| CertError::Malformed)?;
    let san = leaf
        .subject_alternative_name()
        .map_err(|_| CertError::Malformed)?
        .ok_or(CertError::Names)?;
    let uri = match san.value.general_names.as_slice() {
        [GeneralName::URI(uri)] => *uri,
        _ => return Err(CertError::Names.into()),
    };
    let spiffe_id = SpiffeId::parse(uri).map_err(|_| CertError::Names)?;
    if authorities.get(spiffe_id.trust_domain()).is_none() {
        return Err(CertError::UnknownTrustDomain.into());
    }
    // The generation is named by the leaf's authority key identifier.
    let aki = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .ok_or(CertError::WrongIssuer)?;
    let authority = authorities
        .generations(spiffe_id.trust_domain())
        .find(|a| a.intermediate_ski == aki)
        .ok_or(CertError::WrongIssuer)?;
    let (_, intermediate) =
        X509Certificate::from_der(&authority.intermediate_der).map_err(|_| CertError::Malformed)?;
    leaf.verify_signature(Some(intermediate.public_key()))
        .map_err(|_| CertError::WrongIssuer)?;
    let validity = leaf.validity();
    if now < validity.not_before.timestamp() || now >= validity.not_after.timestamp() {
        return Err(CertError::Expired.into());
    }
    let serial = hex::encode(leaf.raw_serial());
    let record = store
        .certificate(&authority.issuer_key_id, &serial)
        .await?
        .ok_or(CertError::Unknown)?;
    if record.der != leaf_der {
        return Err(CertError::Unknown.into());
    }
    if record.revoked_at.is_some() {
        return Err(CertError::Revoked.into());
    }
    Ok(Principal::Certificate { spiffe_id, serial })
}
