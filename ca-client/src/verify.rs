//! Verifying a workload certificate the way a relying party does: the chain to a bundle of roots
//! (rustls-webpki, client-auth usage), the SPIFFE ID (exactly one URI SAN, optionally equal to an
//! expected one), the expiry, and revocation against the issuer's CRL (signature checked).

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{
    BorrowedCertRevocationList, CertRevocationList, EndEntityCert, KeyUsage, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};

use crate::Error;
use crate::inspect::{LeafSummary, leaf_summary};

/// Whether revocation was checked, and what it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    NotChecked,
    NotRevoked,
    Revoked,
}

/// A successful verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    #[serde(flatten)]
    pub leaf: LeafSummary,
    pub seconds_left: i64,
    pub revocation: Revocation,
}

/// Why a certificate does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("input: {0}")]
    Input(String),
    #[error("chain does not verify: {0}")]
    Chain(String),
    #[error("the certificate is revoked")]
    Revoked,
    #[error("SPIFFE ID is {actual:?}, expected {expected:?}")]
    WrongId { actual: String, expected: String },
    #[error("the certificate must carry exactly one URI SAN")]
    Names,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Input(e.to_string())
    }
}

/// Verifies `chain_pem` (leaf first, then intermediates) against `roots_pem` at `now` (unix
/// seconds); with `crl_der`, also checks the leaf against it.
pub fn verify(
    chain_pem: &[u8],
    roots_pem: &[u8],
    crl_der: Option<&[u8]>,
    expected_id: Option<&str>,
    now: u64,
) -> Result<Verified, Failure> {
    let chain = certs(chain_pem)?;
    let roots = certs(roots_pem)?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| Failure::Input("empty chain".to_owned()))?;
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Input(format!("root: {e:?}")))?;
    let end_entity = EndEntityCert::try_from(leaf).map_err(|e| Failure::Chain(format!("{e:?}")))?;
    let crl = crl_der
        .map(|der| BorrowedCertRevocationList::from_der(der).map(CertRevocationList::from))
        .transpose()
        .map_err(|e| Failure::Input(format!("CRL: {e:?}")))?;
    let crls: Vec<&CertRevocationList<'_>> = crl.iter().collect();
    let revocation = if crls.is_empty() {
        None
    } else {
        Some(
            RevocationOptionsBuilder::new(&crls)
                .map_err(|e| Failure::Input(format!("{e:?}")))?
                .with_depth(RevocationCheckDepth::EndEntity)
                .with_status_policy(UnknownStatusPolicy::Deny)
                .build(),
        )
    };
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
    match end_entity.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        time,
        KeyUsage::client_auth(),
        revocation,
        None,
    ) {
        Ok(_) => {}
        Err(webpki::Error::CertRevoked) => return Err(Failure::Revoked),
        Err(e) => return Err(Failure::Chain(format!("{e:?}"))),
    }
    let summary = leaf_summary(chain_pem)?;
    if summary.spiffe_id.is_empty() || crate::inspect::uri_count(leaf.as_ref()) != 1 {
        return Err(Failure::Names);
    }
    if let Some(expected) = expected_id
        && expected != summary.spiffe_id
    {
        return Err(Failure::WrongId {
            actual: summary.spiffe_id,
            expected: expected.to_owned(),
        });
    }
    let seconds_left = crate::inspect::not_after(leaf.as_ref()).unwrap_or(0) - now as i64;
    Ok(Verified {
        leaf: summary,
        seconds_left,
        revocation: if crl_der.is_some() {
            Revocation::NotRevoked
        } else {
            Revocation::NotChecked
        },
    })
}

fn certs(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let blocks = pem::parse_many(pem_bytes).map_err(|e| Failure::Input(format!("PEM: {e}")))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(Failure::Input("no certificate in the PEM".to_owned()));
    }
    Ok(certs)
}
