//! The self-check: every signed certificate, of every kind, is re-parsed from its DER with
//! x509-parser and held to the template that produced it before it may leave (after SPIRE's
//! `credvalidator`). The extensions it expects are the template's own list
//! ([`Template::extensions`]), so the writer and the check agree on it by construction; their
//! contents are checked independently of the writer's code. A failure here is our bug, never the
//! caller's; the certificate is discarded and nothing is recorded.

use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    OID_PKIX_ACCESS_DESCRIPTOR_OCSP, OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME,
};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

use crate::issuance::template::{BasicConstraints, Extension, Kind, Template, key_identifier};
use crate::issuance::{Error, Issuer};

/// Checks `der` against `template` and the issuer that signed it.
pub fn check(der: &[u8], template: &Template<'_>, issuer: &Issuer<'_>) -> Result<(), Error> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| Error::SelfCheck(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return fail("trailing bytes");
    }

    if cert.version() != X509Version::V3 {
        return fail("not a v3 certificate");
    }
    let serial = cert.raw_serial();
    if serial != template.serial.as_bytes()
        || serial.len() > 20
        || serial.first().is_none_or(|b| b & 0x80 != 0)
    {
        return fail("serial is not the positive, at most 20-octet value drawn");
    }
    if cert.tbs_certificate.signature != cert.signature_algorithm {
        return fail("inner and outer signature algorithms differ");
    }
    if cert.issuer().as_raw() != issuer.subject_der {
        return fail("issuer name is not the issuing CA's subject");
    }
    check_subject(&cert, &template.kind)?;
    let validity = cert.validity();
    let expected = template.validity;
    if validity.not_before.timestamp() != expected.not_before
        || validity.not_after.timestamp() != expected.not_after
    {
        return fail("validity differs from the template");
    }
    if expected.not_before < issuer.validity.not_before
        || expected.not_after > issuer.validity.not_after
        || expected.not_before >= expected.not_after
    {
        return fail("validity outside the issuer's");
    }
    // The key compared as a key (its kind under the key policy and its bits), not as bytes: an
    // encoding detail the CSR chose can never make the check refuse what was signed.
    let issued_key = cert.public_key();
    let same_key = crate::issuance::csr::key_policy(issued_key)
        .is_ok_and(|kind| kind == template.public_key.kind)
        && *issued_key.subject_public_key.data == *template.public_key.bits;
    if !same_key {
        return fail("public key is not the template's");
    }

    let mut seen = [false; Extension::ALL.len()];
    for extension in cert.iter_extensions() {
        let Some(known) = Extension::from_oid_bytes(extension.oid.as_bytes()) else {
            return fail("unexpected extension");
        };
        if !template.carries(known) {
            return fail("unexpected extension");
        }
        let slot = &mut seen[known as usize];
        if *slot {
            return fail("duplicate extension");
        }
        *slot = true;
        if extension.critical != template.is_critical(known) {
            return Err(Error::SelfCheck(format!(
                "{known:?} is {}critical, the template says otherwise",
                if extension.critical { "" } else { "not " }
            )));
        }
        check_extension(known, extension, &cert, template, issuer)?;
    }
    if let Some(missing) = template.extensions().find(|e| !seen[*e as usize]) {
        return Err(Error::SelfCheck(format!(
            "a required extension is missing: {missing:?}"
        )));
    }
    Ok(())
}

fn fail(message: &str) -> Result<(), Error> {
    Err(Error::SelfCheck(message.to_owned()))
}

/// Leaves and serving certificates have an empty subject; an intermediate exactly
/// `O=<organization>, CN=<common name>`, one attribute per RDN.
fn check_subject(cert: &X509Certificate<'_>, kind: &Kind<'_>) -> Result<(), Error> {
    let mut attributes = cert.subject().iter_rdn().map(|rdn| {
        let mut one = rdn.iter();
        match (one.next(), one.next()) {
            (Some(attribute), None) => Some((attribute.attr_type(), attribute.as_str().ok())),
            _ => None,
        }
    });
    let as_expected = match kind {
        Kind::Leaf { .. } | Kind::Serving { .. } => attributes.next().is_none(),
        Kind::Intermediate {
            organization,
            common_name,
        } => {
            attributes.next() == Some(Some((&OID_X509_ORGANIZATION_NAME, Some(*organization))))
                && attributes.next() == Some(Some((&OID_X509_COMMON_NAME, Some(*common_name))))
                && attributes.next().is_none()
        }
    };
    if as_expected {
        Ok(())
    } else {
        fail("subject is not the template's")
    }
}

/// One extension's contents against the template.
fn check_extension(
    known: Extension,
    extension: &X509Extension<'_>,
    cert: &X509Certificate<'_>,
    template: &Template<'_>,
    issuer: &Issuer<'_>,
) -> Result<(), Error> {
    match (known, extension.parsed_extension()) {
        (Extension::SubjectAltName, ParsedExtension::SubjectAlternativeName(san)) => {
            let names = san.general_names.as_slice();
            let as_expected = match template.kind {
                Kind::Leaf { spiffe_id } => {
                    matches!(names, [GeneralName::URI(uri)] if *uri == spiffe_id.as_str())
                }
                Kind::Serving { dns_names, uri } => {
                    let (dns, rest) = names.split_at(dns_names.len().min(names.len()));
                    let dns_match = dns.len() == dns_names.len()
                        && dns
                            .iter()
                            .zip(dns_names)
                            .all(|(got, want)| matches!(got, GeneralName::DNSName(d) if d == want));
                    let uri_match = match (rest, uri) {
                        ([], None) => true,
                        ([GeneralName::URI(got)], Some(want)) => got == &want,
                        _ => false,
                    };
                    dns_match && uri_match
                }
                Kind::Intermediate { .. } => false,
            };
            if !as_expected {
                return fail("SAN is not exactly the template's names");
            }
        }
        (Extension::KeyUsage, ParsedExtension::KeyUsage(key_usage)) => {
            if key_usage.flags != template.key_usage.bits() {
                return fail("key usage is not the template's");
            }
        }
        (Extension::ExtendedKeyUsage, ParsedExtension::ExtendedKeyUsage(eku)) => {
            let wanted = template.extended_key_usage;
            let as_expected = eku.server_auth == wanted.server_auth
                && eku.client_auth == wanted.client_auth
                && !eku.any
                && !eku.code_signing
                && !eku.email_protection
                && !eku.time_stamping
                && !eku.ocsp_signing
                && eku.other.is_empty();
            if !as_expected {
                return fail("extended key usage is not the template's");
            }
        }
        (Extension::BasicConstraints, ParsedExtension::BasicConstraints(bc)) => {
            let as_expected = match template.basic_constraints {
                BasicConstraints::EndEntity => !bc.ca && bc.path_len_constraint.is_none(),
                BasicConstraints::Ca { path_len } => {
                    bc.ca && bc.path_len_constraint == Some(u32::from(path_len))
                }
            };
            if !as_expected {
                return fail("basic constraints are not the template's");
            }
        }
        (Extension::AuthorityKeyIdentifier, ParsedExtension::AuthorityKeyIdentifier(aki)) => {
            let names_issuer = aki
                .key_identifier
                .as_ref()
                .is_some_and(|k| k.0 == issuer.key_identifier);
            if !names_issuer || aki.authority_cert_issuer.is_some() {
                return fail("authority key identifier does not name the issuing CA");
            }
        }
        (Extension::SubjectKeyIdentifier, ParsedExtension::SubjectKeyIdentifier(ski)) => {
            if ski.0 != key_identifier(cert.public_key().raw) {
                return fail("subject key identifier is not the key's SHA-256");
            }
        }
        (Extension::CrlDistributionPoints, ParsedExtension::CRLDistributionPoints(points)) => {
            let names_url = match points.points.as_slice() {
                [point] => match &point.distribution_point {
                    Some(DistributionPointName::FullName(names)) => {
                        matches!(names.as_slice(), [GeneralName::URI(url)] if Some(*url) == template.crl_url)
                    }
                    _ => false,
                },
                _ => false,
            };
            if !names_url {
                return fail("CRL distribution point is not the template's URL");
            }
        }
        (Extension::AuthorityInfoAccess, ParsedExtension::AuthorityInfoAccess(access)) => {
            let names_url = match access.accessdescs.as_slice() {
                [only] => {
                    only.access_method == OID_PKIX_ACCESS_DESCRIPTOR_OCSP
                        && matches!(&only.access_location, GeneralName::URI(url) if Some(*url) == template.ocsp_url)
                }
                _ => false,
            };
            if !names_url {
                return fail("OCSP URL is not the template's");
            }
        }
        _ => return fail("extension does not parse as its kind"),
    }
    Ok(())
}
