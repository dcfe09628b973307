//! The self-check: every signed certificate is re-parsed from its DER and held to the template
//! that produced it before it may leave (after SPIRE's `credvalidator`). A failure here is our
//! bug, never the caller's; the certificate is discarded and nothing is recorded.

use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKIX_AUTHORITY_INFO_ACCESS, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_CRL_DISTRIBUTION_POINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

use crate::authority::Authority;
use crate::issuance::profile::Template;
use crate::issuance::{Error, VerifiedCsr};

/// The extensions an X509-SVID may carry, each with its bit in the `seen` mask.
const SAN: u8 = 1;
const KU: u8 = 1 << 1;
const EKU: u8 = 1 << 2;
const BC: u8 = 1 << 3;
const AKI: u8 = 1 << 4;
const SKI: u8 = 1 << 5;
const CRLDP: u8 = 1 << 6;
const AIA: u8 = 1 << 7;
/// Every certificate carries these; CRLDP and AIA follow the authority's URLs.
const REQUIRED: u8 = SAN | KU | EKU | BC | AKI | SKI;

fn extension_bit(oid: &Oid<'_>) -> Option<u8> {
    [
        (OID_X509_EXT_SUBJECT_ALT_NAME, SAN),
        (OID_X509_EXT_KEY_USAGE, KU),
        (OID_X509_EXT_EXTENDED_KEY_USAGE, EKU),
        (OID_X509_EXT_BASIC_CONSTRAINTS, BC),
        (OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, AKI),
        (OID_X509_EXT_SUBJECT_KEY_IDENTIFIER, SKI),
        (OID_X509_EXT_CRL_DISTRIBUTION_POINTS, CRLDP),
        (OID_PKIX_AUTHORITY_INFO_ACCESS, AIA),
    ]
    .into_iter()
    .find_map(|(known, bit)| (known == *oid).then_some(bit))
}

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

    let mut seen: u8 = 0;
    for extension in cert.iter_extensions() {
        let Some(bit) = extension_bit(&extension.oid) else {
            return fail("unexpected extension");
        };
        if seen & bit != 0 {
            return fail("duplicate extension");
        }
        seen |= bit;
        match (bit, extension.parsed_extension()) {
            (SAN, ParsedExtension::SubjectAlternativeName(san)) => {
                if !extension.critical {
                    return fail("SAN not critical with an empty subject");
                }
                match san.general_names.as_slice() {
                    [GeneralName::URI(uri)] if *uri == template.spiffe_id.as_str() => {}
                    _ => return fail("SAN is not exactly the authorised SPIFFE ID"),
                }
            }
            (KU, ParsedExtension::KeyUsage(ku)) => {
                let expected: u16 = if template.rsa_key { 0b101 } else { 0b1 };
                if !extension.critical || ku.flags != expected {
                    return fail("key usage is not the profile's, or not critical");
                }
            }
            (EKU, ParsedExtension::ExtendedKeyUsage(eku)) => {
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
            (BC, ParsedExtension::BasicConstraints(bc)) => {
                if !extension.critical || bc.ca || bc.path_len_constraint.is_some() {
                    return fail("basic constraints are not cA=false, critical");
                }
            }
            (AKI, ParsedExtension::AuthorityKeyIdentifier(aki)) => {
                let names_issuer = aki
                    .key_identifier
                    .as_ref()
                    .is_some_and(|k| k.0 == authority.intermediate_ski.as_slice());
                if !names_issuer || extension.critical {
                    return fail("authority key identifier does not name the intermediate");
                }
            }
            (SKI, ParsedExtension::SubjectKeyIdentifier(_)) => {
                if extension.critical {
                    return fail("subject key identifier is critical");
                }
            }
            (CRLDP, _) if !extension.critical && authority.crl_url.is_some() => {}
            (AIA, _) if !extension.critical && authority.ocsp_url.is_some() => {}
            _ => return fail("unexpected extension"),
        }
    }
    if seen & REQUIRED != REQUIRED {
        return fail("a required extension is missing");
    }
    if authority.crl_url.is_some() != (seen & CRLDP != 0)
        || authority.ocsp_url.is_some() != (seen & AIA != 0)
    {
        return fail("CRL distribution point or OCSP URL missing");
    }
    Ok(())
}
