//! Reading certificates for humans and scripts: the leaf's SPIFFE ID, serial and expiry.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Error;

/// What `cactl` reports about a certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeafSummary {
    pub spiffe_id: String,
    /// Lower-case hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
}

/// Summarises the first certificate of a PEM chain.
pub fn leaf_summary(chain_pem: &[u8]) -> Result<LeafSummary, Error> {
    let blocks = pem::parse_many(chain_pem).map_err(|e| Error::Protocol(format!("PEM: {e}")))?;
    let first = blocks
        .first()
        .ok_or_else(|| Error::Protocol("no certificate".to_owned()))?;
    let (_, cert) = X509Certificate::from_der(first.contents())
        .map_err(|e| Error::Protocol(format!("certificate: {e}")))?;
    let spiffe_id = uris(&cert).into_iter().next().unwrap_or_default();
    let not_after = cert
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok(LeafSummary {
        spiffe_id,
        serial: hex::encode(cert.raw_serial()),
        not_after,
    })
}

/// The single URI SAN of the first certificate of a PEM chain.
pub fn leaf_spiffe_id(chain_pem: &[u8]) -> Result<String, Error> {
    let summary = leaf_summary(chain_pem)?;
    if summary.spiffe_id.is_empty() {
        return Err(Error::Argument("the certificate has no URI SAN".to_owned()));
    }
    Ok(summary.spiffe_id)
}

/// How many URI SANs a DER certificate has.
pub fn uri_count(der: &[u8]) -> usize {
    X509Certificate::from_der(der)
        .map(|(_, c)| uris(&c).len())
        .unwrap_or(0)
}

/// notAfter of a DER certificate (unix seconds).
pub fn not_after(der: &[u8]) -> Option<i64> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// The first URI SAN of a DER certificate, if any.
pub fn first_uri(der: &[u8]) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| uris(&c).into_iter().next())
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
