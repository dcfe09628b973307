//! Building and signing a CRL (RFC 5280 section 5) with rcgen: v2, AKI (= the intermediate's
//! SKI), CRL number, thisUpdate/nextUpdate, reason codes (omitted for `unspecified`, as 5.3.1
//! recommends), entries sorted by serial, no list at all when empty. No I/O.

use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::Authority;
use crate::revocation::Reason;
use crate::store::RevokedRecord;

/// A signed CRL.
#[derive(Debug, Clone)]
pub struct BuiltCrl {
    pub der: Vec<u8>,
    pub this_update: i64,
    pub next_update: i64,
}

/// Signs a CRL over `entries` with the authority's intermediate.
pub fn build(
    authority: &Authority,
    entries: &[RevokedRecord],
    number: i64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<BuiltCrl, String> {
    build_by(
        &authority.issuer,
        &authority.intermediate_der,
        entries,
        number,
        now,
        validity,
    )
}

/// Signs a CRL over `entries` with `issuer`, whose certificate is `issuer_der` (an intermediate
/// for its leaves, or a root for the intermediates it revoked).
pub fn build_by(
    issuer: &rcgen::Issuer<'static, crate::keys::CaKey>,
    issuer_der: &[u8],
    entries: &[RevokedRecord],
    number: i64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<BuiltCrl, String> {
    let (_, issuer_cert) = X509Certificate::from_der(issuer_der).map_err(|e| e.to_string())?;
    let issuer_not_after = issuer_cert.validity().not_after.timestamp();
    let ski = issuer_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                Some(ski.0.to_vec())
            }
            _ => None,
        })
        .ok_or("the issuer has no subject key identifier")?;
    let mut revoked_certs = Vec::with_capacity(entries.len());
    for entry in entries {
        let serial =
            hex::decode(&entry.serial).map_err(|e| format!("serial {}: {e}", entry.serial))?;
        let reason = entry.revocation_reason.as_deref().and_then(Reason::parse);
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::from_unix_timestamp(entry.revoked_at)
                .map_err(|e| e.to_string())?,
            reason_code: reason.and_then(rcgen_reason),
            invalidity_date: None,
        });
    }
    let this_update = now;
    let seconds = i64::try_from(validity.as_secs()).map_err(|e| e.to_string())?;
    // Never promise beyond the issuer's own life.
    let next_update_s = (now.unix_timestamp() + seconds).min(issuer_not_after);
    let next_update =
        OffsetDateTime::from_unix_timestamp(next_update_s).map_err(|e| e.to_string())?;
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(ski),
    };
    let crl = params.signed_by(issuer).map_err(|e| e.to_string())?;
    Ok(BuiltCrl {
        der: crl.der().to_vec(),
        this_update: this_update.unix_timestamp(),
        next_update: next_update_s,
    })
}

fn rcgen_reason(reason: Reason) -> Option<RevocationReason> {
    Some(match reason {
        Reason::Unspecified => return None,
        Reason::KeyCompromise => RevocationReason::KeyCompromise,
        Reason::CaCompromise => RevocationReason::CaCompromise,
        Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
        Reason::Superseded => RevocationReason::Superseded,
        Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        Reason::AaCompromise => RevocationReason::AaCompromise,
    })
}
