//! The CA's own TLS serving certificates (the gRPC port: DNS names; the public listener: DNS names
//! and `spiffe://<td>/ca` for https_spiffe federation), serverAuth, issued by the
//! serving trust domain's intermediate over a key the server made itself. Not a workload SVID, so
//! it has its own small profile and check.

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::Authority;
use crate::issuance::{BACKDATE, Error};
use crate::serial::Serial;

/// A signed serving certificate.
#[derive(Debug, Clone)]
pub struct ServingCert {
    pub der: Vec<u8>,
    pub serial: Serial,
    pub not_before: i64,
    pub not_after: i64,
}

/// Issues a serving certificate for `dns_names` over `spki_der`, valid for `ttl_seconds` (capped
/// at the intermediate's notAfter).
pub fn issue(
    authority: &Authority,
    dns_names: &[String],
    uri: Option<&str>,
    spki_der: &[u8],
    ttl_seconds: i64,
    now: OffsetDateTime,
) -> Result<ServingCert, Error> {
    let signing = Error::Signing;
    let now_s = now.unix_timestamp();
    if now_s < authority.intermediate_not_before || now_s >= authority.intermediate_not_after {
        return Err(Error::IssuerNotValid);
    }
    let serial = Serial::random()?;
    let not_before = (now_s - BACKDATE.as_secs() as i64).max(authority.intermediate_not_before);
    let not_after = now_s
        .saturating_add(ttl_seconds)
        .min(authority.intermediate_not_after);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    params.not_before =
        OffsetDateTime::from_unix_timestamp(not_before).map_err(|_| Error::TtlOutOfRange)?;
    params.not_after =
        OffsetDateTime::from_unix_timestamp(not_after).map_err(|_| Error::TtlOutOfRange)?;
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| Ok(SanType::DnsName(name.as_str().try_into()?)))
        .collect::<Result<Vec<_>, rcgen::Error>>()
        .map_err(signing)?;
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().map_err(signing)?));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let public_key = SubjectPublicKeyInfo::from_der(spki_der).map_err(signing)?;
    let der = params
        .signed_by(&public_key, &authority.issuer)
        .map_err(signing)?
        .der()
        .to_vec();

    // Self-check: it parses, names exactly these DNS names, and stays inside the issuer.
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| Error::SelfCheck(e.to_string()))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names != dns_names
        || cert.is_ca()
        || cert.validity().not_after.timestamp() > authority.intermediate_not_after
    {
        return Err(Error::SelfCheck(
            "serving certificate does not match its template".to_owned(),
        ));
    }
    Ok(ServingCert {
        der,
        serial,
        not_before,
        not_after,
    })
}
