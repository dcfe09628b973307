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
    san_names(cert, |n| match n {
        GeneralName::URI(u) => Some(u),
        _ => None,
    })
}

/// The subject alternative names `pick` selects (URIs, DNS names), in order.
fn san_names(
    cert: &X509Certificate<'_>,
    pick: impl for<'a> Fn(&'a GeneralName<'a>) -> Option<&'a str>,
) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| pick(n).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes a file for people: PEM or DER certificates (a chain), a CSR, a CRL, or a SPIFFE bundle
/// (JSON). Returns one JSON object per item.
pub fn describe(bytes: &[u8], now: i64) -> Result<Vec<serde_json::Value>, Error> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim_start);
    if let Some(json) = text.filter(|t| t.starts_with('{')) {
        return describe_bundle(json, now);
    }
    let items: Vec<(String, Vec<u8>)> = if text.is_some_and(|t| t.starts_with("-----BEGIN")) {
        pem::parse_many(bytes)
            .map_err(|e| Error::Protocol(format!("PEM: {e}")))?
            .into_iter()
            .map(|p| (p.tag().to_owned(), p.into_contents()))
            .collect()
    } else {
        vec![(sniff_der(bytes).to_owned(), bytes.to_vec())]
    };
    items
        .iter()
        .map(|(tag, der)| match tag.as_str() {
            "CERTIFICATE" => describe_certificate(der, now),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => describe_csr(der),
            "X509 CRL" => describe_crl(der),
            other => Err(Error::Argument(format!("cannot inspect a {other}"))),
        })
        .collect()
}

fn sniff_der(der: &[u8]) -> &'static str {
    if X509Certificate::from_der(der).is_ok() {
        "CERTIFICATE"
    } else if x509_parser::certification_request::X509CertificationRequest::from_der(der).is_ok() {
        "CERTIFICATE REQUEST"
    } else if x509_parser::revocation_list::CertificateRevocationList::from_der(der).is_ok() {
        "X509 CRL"
    } else {
        "unknown DER"
    }
}

fn key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let first = rsa.modulus.iter().position(|b| *b != 0).unwrap_or(0);
            let modulus = &rsa.modulus[first..];
            let bits = modulus.len() * 8
                - modulus
                    .first()
                    .map(|b| b.leading_zeros() as usize)
                    .unwrap_or(0);
            format!("RSA-{bits}")
        }
        Ok(PublicKey::EC(_)) => match spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .as_deref()
        {
            Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_owned(),
            Some("1.3.132.0.34") => "ECDSA P-384".to_owned(),
            Some(other) => format!("ECDSA ({other})"),
            None => "ECDSA".to_owned(),
        },
        _ => spki.algorithm.algorithm.to_id_string(),
    }
}

/// RFC 3339 of unix seconds.
pub fn rfc3339_public(unix: i64) -> String {
    rfc3339(unix)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn describe_certificate(der: &[u8], now: i64) -> Result<serde_json::Value, Error> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::Protocol(format!("certificate: {e}")))?;
    let not_after = cert.validity().not_after.timestamp();
    let dns = san_names(&cert, |n| match n {
        GeneralName::DNSName(d) => Some(d),
        _ => None,
    });
    Ok(serde_json::json!({
        "type": "certificate",
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "serial": hex::encode(cert.raw_serial()),
        "spiffe_ids": uris(&cert),
        "dns_names": dns,
        "is_ca": cert.is_ca(),
        "key_type": key_type(cert.public_key()),
        "not_before": rfc3339(cert.validity().not_before.timestamp()),
        "not_after": rfc3339(not_after),
        "seconds_left": not_after - now,
        "expired": not_after <= now,
    }))
}

fn describe_csr(der: &[u8]) -> Result<serde_json::Value, Error> {
    use x509_parser::certification_request::X509CertificationRequest;
    let (_, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::Protocol(format!("CSR: {e}")))?;
    let mut requested = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for extension in extensions {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = extension
            {
                requested.extend(san.general_names.iter().map(|n| n.to_string()));
            }
        }
    }
    Ok(serde_json::json!({
        "type": "csr",
        "subject": csr.certification_request_info.subject.to_string(),
        "key_type": key_type(&csr.certification_request_info.subject_pki),
        "requested_names": requested,
        "signature_valid": csr.verify_signature().is_ok(),
    }))
}

fn describe_crl(der: &[u8]) -> Result<serde_json::Value, Error> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| Error::Protocol(format!("CRL: {e}")))?;
    let revoked: Vec<serde_json::Value> = crl
        .iter_revoked_certificates()
        .map(|r| {
            serde_json::json!({
                "serial": hex::encode(r.raw_serial()),
                "revoked_at": rfc3339(r.revocation_date.timestamp()),
                "reason": r.reason_code().map(|(_, code)| code.to_string()),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "type": "crl",
        "issuer": crl.issuer().to_string(),
        "crl_number": crl.crl_number().map(|n| n.to_string()),
        "this_update": rfc3339(crl.last_update().timestamp()),
        "next_update": crl.next_update().map(|t| rfc3339(t.timestamp())),
        "revoked_count": revoked.len(),
        "revoked": revoked,
    }))
}

fn describe_bundle(json: &str, now: i64) -> Result<Vec<serde_json::Value>, Error> {
    use base64::Engine;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::Protocol(format!("bundle JSON: {e}")))?;
    let keys = value["keys"]
        .as_array()
        .ok_or_else(|| Error::Protocol("not a SPIFFE bundle (no keys)".to_owned()))?;
    let mut roots = Vec::new();
    for key in keys {
        if key["use"] != "x509-svid" {
            continue;
        }
        let Some(first) = key["x5c"]
            .as_array()
            .and_then(|x| x.first())
            .and_then(|v| v.as_str())
        else {
            continue;
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(first)
            .map_err(|e| Error::Protocol(format!("x5c: {e}")))?;
        roots.push(describe_certificate(&der, now)?);
    }
    Ok(vec![serde_json::json!({
        "type": "spiffe_bundle",
        "spiffe_sequence": value["spiffe_sequence"],
        "spiffe_refresh_hint": value["spiffe_refresh_hint"],
        "x509_authorities": roots,
    })])
}
