//! The self-check: every signed certificate is re-parsed from its DER and held to the template
//! that produced it before it may leave (after SPIRE's `credvalidator`). A failure here is our
//! bug, never the caller's; the certificate is discarded and nothing is recorded.

use std::collections::HashSet;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

use crate::authority::Authority;
use crate::issuance::profile::Template;
use crate::issuance::{Error, VerifiedCsr};

const OID_SAN: &str = "2.5.29.17";
const OID_KU: &str = "2.5.29.15";
const OID_EKU: &str = "2.5.29.37";
const OID_BC: &str = "2.5.29.19";
const OID_AKI: &str = "2.5.29.35";
const OID_SKI: &str = "2.5.29.14";
const OID_CRLDP: &str = "2.5.29.31";
const OID_AIA: &str = "1.3.6.1.5.5.7.1.1";

/// Checks `der` against the SPIFFE X509-SVID profile and the template.
pub fn check(
    der: &[u8],
    template: &Template<'_>,
    csr: &VerifiedCsr,
    authority: &Authority,
) -> Result<(), Error> {
    let fail = |message: &str| Err(Error::SelfCheck(message.to_owned()));
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| Error::SelfCheck(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return fail("trailing bytes");
    }

    if cert.version() != X509Version::V3 {
        return fail("not a v3 certificate");
    }
    let serial = cert.raw_serial();
    let expected_serial = template.serial.as_bytes();
    if serial != expected_serial
        || serial.len() > 20
        || serial.first().is_none_or(|b| b & 0x80 != 0)
    {
        return fail("serial is not the positive, at most 20-octet value drawn");
    }
    if cert.tbs_certificate.signature != cert.signature_algorithm {
        return fail("inner and outer signature algorithms differ");
    }
    if cert.issuer().as_raw() != authority.intermediate_subject_der.as_slice() {
        return fail("issuer name is not the intermediate's subject");
    }
    if cert.subject().iter().next().is_some() {
        return fail("subject is not empty");
    }
    let validity = cert.validity();
    if validity.not_before.timestamp() != template.not_before
        || validity.not_after.timestamp() != template.not_after
    {
        return fail("validity differs from the template");
    }
    if template.not_after > authority.intermediate_not_after
        || template.not_before >= template.not_after
    {
        return fail("validity outside the issuer's");
    }
    if cert.public_key().raw != csr.spki_der.as_slice() {
        return fail("public key is not the CSR's");
    }

    let mut seen = HashSet::new();
    let mut saw = |oid: &str| seen.insert(oid.to_owned());
    let issuer_ski = Some(authority.intermediate_ski.clone());
    for extension in cert.iter_extensions() {
        let oid = extension.oid.to_id_string();
        if !saw(&oid) {
            return fail("duplicate extension");
        }
        match (oid.as_str(), extension.parsed_extension()) {
            (OID_SAN, ParsedExtension::SubjectAlternativeName(san)) => {
                if !extension.critical {
                    return fail("SAN not critical with an empty subject");
                }
                match san.general_names.as_slice() {
                    [GeneralName::URI(uri)] if *uri == template.spiffe_id.as_str() => {}
                    _ => return fail("SAN is not exactly the authorised SPIFFE ID"),
                }
            }
            (OID_KU, ParsedExtension::KeyUsage(ku)) => {
                let expected: u16 = if template.rsa_key { 0b101 } else { 0b1 };
                if !extension.critical || ku.flags != expected {
                    return fail("key usage is not the profile's, or not critical");
                }
            }
            (OID_EKU, ParsedExtension::ExtendedKeyUsage(eku)) => {
                let only_tls = eku.server_auth
                    && eku.client_auth
                    && !eku.any
                    && !eku.code_signing
                    && !eku.email_protection
                    && !eku.time_stamping
                    && !eku.ocsp_signing
                    && eku.other.is_empty();
                if !only_tls {
                    return fail("extended key usage is not serverAuth+clientAuth");
                }
            }
            (OID_BC, ParsedExtension::BasicConstraints(bc)) => {
                if !extension.critical || bc.ca || bc.path_len_constraint.is_some() {
                    return fail("basic constraints are not cA=false, critical");
                }
            }
            (OID_AKI, ParsedExtension::AuthorityKeyIdentifier(aki)) => {
                let key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                if key_id.is_none() || key_id != issuer_ski || extension.critical {
                    return fail("authority key identifier does not name the intermediate");
                }
            }
            (OID_SKI, ParsedExtension::SubjectKeyIdentifier(_)) => {
                if extension.critical {
                    return fail("subject key identifier is critical");
                }
            }
            (OID_CRLDP, _) if !extension.critical && authority.crl_url.is_some() => {}
            (OID_AIA, _) if !extension.critical && authority.ocsp_url.is_some() => {}
            _ => return fail("unexpected extension"),
        }
    }
    for required in [OID_SAN, OID_KU, OID_EKU, OID_BC, OID_AKI, OID_SKI] {
        if !seen.contains(required) {
            return fail("a required extension is missing");
        }
    }
    if authority.crl_url.is_some() != seen.contains(OID_CRLDP)
        || authority.ocsp_url.is_some() != seen.contains(OID_AIA)
    {
        return fail("CRL distribution point or OCSP URL missing");
    }
    Ok(())
}
