//! PKCS#10 CSRs from untrusted callers, refused unless strictly well-formed, before anything is
//! signed: size cap; a strict envelope (DER, or exactly one PEM `CERTIFICATE REQUEST` block with
//! no headers, nothing around it and clean base64); strict DER (the `der` crate: minimal lengths,
//! definite lengths, canonical BOOLEAN/INTEGER/SET OF, no trailing bytes; version 1 only); only
//! the `extensionRequest` attribute, once; only the identity and usage extensions, each once;
//! the signature algorithm from an allow-list (ECDSA or RSA PKCS #1 v1.5 with SHA-2, parameters
//! as the RFCs say); key policy (RSA 2048/3072/4096 with e = 65537 and NULL parameters, ECDSA
//! P-256/P-384 named curves with uncompressed points); then the signature. The result,
//! [`VerifiedCsr`], keeps the public key and the identities the CSR *claims* (so policy can
//! refuse a CSR that names someone else); nothing else of the CSR is ever used.

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode, Tagged};
use ring::digest::{SHA256, digest};
use x509_cert::request::CertReq;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use crate::issuance::Error;

/// Largest CSR accepted, before any parsing (PEM or DER).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// The kind of public key in a CSR that passed key policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    EcdsaP256,
    EcdsaP384,
}

impl KeyKind {
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa { .. })
    }
}

/// A CSR whose signature verified and whose key passed policy.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo: the only part that reaches the certificate.
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey bits inside it.
    pub public_key_bits: Vec<u8>,
    pub key_kind: KeyKind,
    /// URI SANs the CSR asks for (checked against the authorised identity, never copied).
    pub requested_uris: Vec<String>,
    /// The CSR asks for a DNS, IP, e-mail or other non-URI name.
    pub requests_other_names: bool,
    /// The CSR's subject carries a common name or e-mail address (an identity claim).
    pub subject_names_identity: bool,
    /// The CSR asks for CA or signing powers (basicConstraints cA, keyCertSign, cRLSign, or an
    /// extended key usage other than serverAuth/clientAuth).
    pub requests_ca_powers: bool,
}

impl VerifiedCsr {
    /// Hex SHA-256 of the SubjectPublicKeyInfo.
    pub fn spki_sha256(&self) -> String {
        hex::encode(digest(&SHA256, &self.spki_der))
    }
}

/// Parses a CSR in PEM (one `CERTIFICATE REQUEST` block) or DER, enforcing the size cap first.
pub fn parse(bytes: &[u8]) -> Result<VerifiedCsr, Error> {
    if bytes.len() > MAX_CSR_BYTES {
        return Err(Error::CsrTooLarge);
    }
    let der = decode_envelope(bytes)?;
    strict_structure(&der)?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| Error::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::MalformedCsr(
            "trailing bytes after the CSR".to_owned(),
        ));
    }
    // Key policy before the signature check: ring cannot verify RSA-1024 or P-224 signatures, and
    // the caller deserves "key too small", not "bad signature".
    let spki = &csr.certification_request_info.subject_pki;
    let key_kind = key_policy(spki)?;
    csr.verify_signature().map_err(|_| Error::BadCsrSignature)?;

    let mut requested_uris = Vec::new();
    let mut requests_other_names = false;
    let mut requests_ca_powers = false;
    if let Some(extensions) = csr.requested_extensions() {
        for extension in extensions {
            match extension {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => requested_uris.push((*uri).to_owned()),
                            _ => requests_other_names = true,
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => requests_ca_powers = true,
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    requests_ca_powers = true
                }
                ParsedExtension::ExtendedKeyUsage(eku)
                    if eku.any
                        || eku.code_signing
                        || eku.email_protection
                        || eku.time_stamping
                        || eku.ocsp_signing
                        || !eku.other.is_empty() =>
                {
                    requests_ca_powers = true;
                }
                ParsedExtension::NameConstraints(_) | ParsedExtension::PolicyConstraints(_) => {
                    requests_ca_powers = true
                }
                ParsedExtension::ParseError { error } => {
                    return Err(Error::MalformedCsr(format!("requested extension: {error}")));
                }
                _ => {}
            }
        }
    }
    let subject = &csr.certification_request_info.subject;
    let subject_names_identity =
        subject.iter_common_name().next().is_some() || subject.iter_email().next().is_some();

    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        public_key_bits: spki.subject_public_key.data.to_vec(),
        key_kind,
        requested_uris,
        requests_other_names,
        subject_names_identity,
        requests_ca_powers,
    })
}

/// DER as it is, or the one PEM block: exactly one `CERTIFICATE REQUEST` (or `NEW CERTIFICATE
/// REQUEST`) block, only whitespace around it, no RFC 1421 headers, base64 lines only.
fn decode_envelope(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let malformed = |why: &str| Error::MalformedCsr(format!("PEM: {why}"));
    let trimmed = bytes.trim_ascii();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(trimmed).map_err(|_| malformed("not ASCII"))?;
    if text.matches("-----BEGIN").count() != 1 || text.matches("-----END").count() != 1 {
        return Err(malformed("exactly one PEM block is accepted"));
    }
    let mut lines = text.lines();
    let begin = lines.next().unwrap_or_default().trim_end();
    let label = begin
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| malformed("bad BEGIN line"))?;
    if !matches!(label, "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
        return Err(Error::NotACsr(crate::untrusted::bounded(label, 64)));
    }
    let end = format!("-----END {label}-----");
    if text.trim_end().lines().last().map(str::trim_end) != Some(end.as_str()) {
        return Err(malformed(
            "text after the END line, or an END line of another label",
        ));
    }
    for line in text.lines().skip(1) {
        let line = line.trim_end_matches('\r');
        if line == end {
            break;
        }
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(malformed(
                "headers and characters outside base64 are not accepted",
            ));
        }
    }
    let block = pem::parse(text).map_err(|e| malformed(&e.to_string()))?;
    Ok(block.into_contents())
}

/// `extensionRequest` (PKCS #9).
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
/// The extensions a CSR may request: the identity (subjectAltName) and the usages. Anything else
/// (certificatePolicies, nameConstraints, AIA, CRLDP, SCTs, private OIDs, critical or not) is
/// refused, never ignored.
const REQUESTABLE: [ObjectIdentifier; 4] = [
    ObjectIdentifier::new_unwrap("2.5.29.17"), // subjectAltName
    ObjectIdentifier::new_unwrap("2.5.29.15"), // keyUsage
    ObjectIdentifier::new_unwrap("2.5.29.37"), // extendedKeyUsage
    ObjectIdentifier::new_unwrap("2.5.29.19"), // basicConstraints
];
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// Signature algorithms a CSR may be signed with, and whether their parameters are NULL
/// (RFC 4055, RSA) or absent (RFC 5758, ECDSA).
const SIGNATURE_ALGORITHMS: [(ObjectIdentifier, bool); 6] = [
    (ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"), false), // ecdsa-with-SHA256
    (ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3"), false), // ecdsa-with-SHA384
    (ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4"), false), // ecdsa-with-SHA512
    (ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11"), true), // sha256WithRSAEncryption
    (ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12"), true), // sha384WithRSAEncryption
    (ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13"), true), // sha512WithRSAEncryption
];

/// Whether an AlgorithmIdentifier's parameters are exactly NULL.
fn null_parameters(parameters: Option<&der::asn1::Any>) -> bool {
    parameters.is_some_and(|p| p.tag() == der::Tag::Null && p.value().is_empty())
}

/// The structural rules, decoded strictly as DER by the `der` crate before anything else reads
/// the bytes.
fn strict_structure(der: &[u8]) -> Result<(), Error> {
    let request = CertReq::from_der(der)
        .map_err(|e| Error::MalformedCsr(format!("not a DER-encoded PKCS #10 request: {e}")))?;
    // The signature algorithm: allow-listed, parameters as its RFC says.
    let algorithm = &request.algorithm;
    match SIGNATURE_ALGORITHMS
        .iter()
        .find(|(oid, _)| *oid == algorithm.oid)
    {
        Some((_, true)) if null_parameters(algorithm.parameters.as_ref()) => {}
        Some((_, false)) if algorithm.parameters.is_none() => {}
        Some(_) => {
            return Err(Error::WeakSignature(format!(
                "{} with parameters other than its RFC's",
                algorithm.oid
            )));
        }
        None => return Err(Error::WeakSignature(algorithm.oid.to_string())),
    }
    // An RSA key's AlgorithmIdentifier carries NULL parameters (RFC 3279), nothing else.
    let key_algorithm = &request.info.public_key.algorithm;
    if key_algorithm.oid == RSA_ENCRYPTION && !null_parameters(key_algorithm.parameters.as_ref()) {
        return Err(Error::UnsupportedKey(
            "an rsaEncryption key must have NULL parameters".to_owned(),
        ));
    }
    // Attributes: extensionRequest only, once, with one value; its extensions each once and
    // from the requestable set.
    let mut seen_request = false;
    for attribute in request.info.attributes.iter() {
        if attribute.oid != EXTENSION_REQUEST {
            return Err(Error::ForbiddenAttribute(attribute.oid.to_string()));
        }
        if seen_request || attribute.values.len() != 1 {
            return Err(Error::MalformedCsr(
                "extensionRequest must appear once, with one value".to_owned(),
            ));
        }
        seen_request = true;
        for value in attribute.values.iter() {
            let bytes = value
                .to_der()
                .map_err(|e| Error::MalformedCsr(e.to_string()))?;
            let extensions = x509_cert::ext::Extensions::from_der(&bytes)
                .map_err(|e| Error::MalformedCsr(format!("requested extensions: {e}")))?;
            let mut oids = Vec::with_capacity(extensions.len());
            for extension in &extensions {
                if !REQUESTABLE.contains(&extension.extn_id) {
                    return Err(Error::ForbiddenExtension(extension.extn_id.to_string()));
                }
                if oids.contains(&extension.extn_id) {
                    return Err(Error::MalformedCsr(format!(
                        "extension {} requested twice",
                        extension.extn_id
                    )));
                }
                oids.push(extension.extn_id);
            }
        }
    }
    Ok(())
}

/// The key policy: RSA of 2048, 3072 or 4096 bits with public exponent 65537, or ECDSA on P-256
/// or P-384 with an uncompressed point. CSR keys and our own serving and CA keys are held to it
/// alike.
pub fn key_policy(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, Error> {
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = bit_length(rsa.modulus);
            if !matches!(bits, 2048 | 3072 | 4096) {
                return Err(Error::UnsupportedKey(format!(
                    "RSA keys must be 2048, 3072 or 4096 bits, this one has {bits}"
                )));
            }
            if rsa
                .exponent
                .iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<u8>>()
                != [0x01, 0x00, 0x01]
            {
                return Err(Error::UnsupportedKey(
                    "RSA keys must have the public exponent 65537".to_owned(),
                ));
            }
            Ok(KeyKind::Rsa { bits })
        }
        Ok(PublicKey::EC(point)) => {
            let expected = match point.data().len() {
                65 | 97 => point.data().first() == Some(&0x04),
                _ => false,
            };
            if !expected {
                return Err(Error::UnsupportedKey(
                    "ECDSA keys must be uncompressed P-256 or P-384 points".to_owned(),
                ));
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            // Compared as encoded OIDs; the dotted form is only written for the error.
            match curve {
                Some(oid) if oid == x509_parser::oid_registry::OID_EC_P256 => {
                    Ok(KeyKind::EcdsaP256)
                }
                Some(oid) if oid == x509_parser::oid_registry::OID_NIST_EC_P384 => {
                    Ok(KeyKind::EcdsaP384)
                }
                Some(other) => Err(Error::UnsupportedKey(format!(
                    "ECDSA keys must be on P-256 or P-384, not curve {}",
                    other.to_id_string()
                ))),
                None => Err(Error::UnsupportedKey(
                    "ECDSA key without a named curve".to_owned(),
                )),
            }
        }
        Ok(_) => Err(Error::UnsupportedKey(format!(
            "key algorithm {} is not allowed; use RSA 2048-8192 or ECDSA P-256/P-384",
            spki.algorithm.algorithm.to_id_string()
        ))),
        Err(e) => Err(Error::MalformedCsr(format!("public key: {e}"))),
    }
}

/// Bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn bit_length(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|b| *b != 0) else {
        return 0;
    };
    (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        let big = vec![b'A'; MAX_CSR_BYTES + 1];
        assert!(matches!(parse(&big), Err(Error::CsrTooLarge)));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x03\x02\x01\x00",
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(
                matches!(parse(input), Err(Error::MalformedCsr(_))),
                "{input:?}"
            );
        }
    }

    /// A CSR from rcgen (P-256, one SPIFFE URI), DER.
    fn valid() -> (Vec<u8>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://td/ns/a/sa/b".try_into().unwrap(),
        )];
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        (der, key)
    }

    /// `der` decoded, changed by `change`, and encoded again as DER (the signature no longer
    /// matches: every rule below is checked before it).
    fn mutate(der: &[u8], change: impl FnOnce(&mut CertReq)) -> Vec<u8> {
        let mut request = CertReq::from_der(der).unwrap();
        change(&mut request);
        request.to_der().unwrap()
    }

    fn to_pem(der: &[u8]) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()))
    }

    #[test]
    fn the_valid_csr_parses() {
        let (der, _) = valid();
        parse(&der).unwrap();
        parse(to_pem(&der).as_bytes()).unwrap();
        parse(format!("\n  {}\n\n", to_pem(&der)).as_bytes()).unwrap();
    }

    /// A5/A6 and neighbours: one block, nothing around it, no headers, base64 only.
    #[test]
    fn the_pem_envelope_is_strict() {
        let (der, _) = valid();
        let good = to_pem(&der);
        let body: String = good
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n");
        let cases = [
            format!("{good}{good}"),
            format!("garbage\n{good}"),
            format!("{good}trailing"),
            format!("{good}-----END CERTIFICATE REQUEST-----\n"),
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\nProc-Type: 4,ENCRYPTED\n\n{body}\n-----END CERTIFICATE REQUEST-----\n"
            ),
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{body}\u{0}\n-----END CERTIFICATE REQUEST-----\n"
            ),
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{body}!\n-----END CERTIFICATE REQUEST-----\n"
            ),
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE-----\n"),
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{body}=\n-----END CERTIFICATE REQUEST-----\n"
            ),
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}={}\n-----END CERTIFICATE REQUEST-----\n",
                &body[..10],
                &body[10..]
            ),
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n"),
        ];
        for case in cases {
            assert!(
                matches!(parse(case.as_bytes()), Err(Error::MalformedCsr(_))),
                "{case}"
            );
        }
        let label = good.replace("CERTIFICATE REQUEST", "PUBLIC KEY");
        assert!(matches!(parse(label.as_bytes()), Err(Error::NotACsr(_))));
        let forged = good.replace("CERTIFICATE REQUEST", "X\u{1b}[31mY");
        match parse(forged.as_bytes()) {
            Err(Error::NotACsr(label)) => assert!(!label.contains('\u{1b}'), "{label}"),
            other => panic!("{other:?}"),
        }
    }

    /// A7/A8/B5 and neighbours: DER only, nothing after it, version 1.
    #[test]
    fn ber_and_other_versions_are_malformed() {
        let (der, _) = valid();
        assert_eq!(der[0], 0x30);
        // Non-minimal length of the outer SEQUENCE (one more length octet, a leading zero).
        let long_form = der[1] & 0x7f;
        let mut non_minimal = vec![0x30, 0x80 | (long_form + 1), 0x00];
        non_minimal.extend_from_slice(&der[2..]);
        // Indefinite length with end-of-contents.
        let mut indefinite = vec![0x30, 0x80];
        indefinite.extend_from_slice(&der[2 + usize::from(long_form)..]);
        indefinite.extend_from_slice(&[0, 0]);
        let mut trailing = der.clone();
        trailing.push(0);
        // version 5 (the INTEGER right after the two SEQUENCE headers).
        let at = 2 + usize::from(long_form);
        let info_header = 2 + usize::from(der[at + 1] & 0x7f);
        let mut version = der.clone();
        assert_eq!(
            &version[at + info_header..at + info_header + 3],
            &[0x02, 0x01, 0x00]
        );
        version[at + info_header + 2] = 5;
        for (name, input) in [
            ("non-minimal length", non_minimal),
            ("indefinite length", indefinite),
            ("trailing byte", trailing),
            ("version 5", version),
        ] {
            assert!(
                matches!(parse(&input), Err(Error::MalformedCsr(_))),
                "{name}: {:?}",
                parse(&input)
            );
        }
    }

    /// B4 and neighbours: weak or unknown signature algorithms, wrong parameters.
    #[test]
    fn signature_algorithms_come_from_the_allow_list() {
        let (der, _) = valid();
        for oid in [
            "1.2.840.10045.4.1",     // ecdsa-with-SHA1
            "1.2.840.113549.1.1.5",  // sha1WithRSAEncryption
            "1.2.840.113549.1.1.4",  // md5WithRSAEncryption
            "1.2.840.10045.4.3.1",   // ecdsa-with-SHA224
            "1.2.840.113549.1.1.10", // RSASSA-PSS
            "1.3.6.1.4.1.99999.1",   // unknown
        ] {
            let changed = mutate(&der, |r| {
                r.algorithm.oid = ObjectIdentifier::new_unwrap(oid);
            });
            assert!(
                matches!(parse(&changed), Err(Error::WeakSignature(_))),
                "{oid}: {:?}",
                parse(&changed)
            );
        }
        // ecdsa-with-SHA256 with NULL parameters (RFC 5758 says absent).
        let changed = mutate(&der, |r| {
            r.algorithm.parameters = Some(der::asn1::Any::from(der::asn1::Null));
        });
        assert!(matches!(parse(&changed), Err(Error::WeakSignature(_))));
    }

    /// M3: an rsaEncryption key with absent or arbitrary parameters is refused before anything
    /// is signed, as are RSA keys of other sizes or exponents, and EC points not uncompressed.
    #[test]
    fn key_encodings_and_sizes_are_strict() {
        use rsa::pkcs8::EncodePublicKey;
        let (der, _) = valid();
        let rsa_spki = |bits: usize, exponent: u32| {
            let key = rsa::RsaPrivateKey::new_with_exp(
                &mut rsa::rand_core::OsRng,
                bits,
                &rsa::BigUint::from(exponent),
            )
            .unwrap();
            key.to_public_key().to_public_key_der().unwrap().into_vec()
        };
        let with_spki = |spki: &[u8]| {
            mutate(&der, |r| {
                r.info.public_key = spki::SubjectPublicKeyInfoOwned::from_der(spki).unwrap();
                r.algorithm.oid = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
                r.algorithm.parameters = Some(der::asn1::Any::from(der::asn1::Null));
            })
        };
        let good = rsa_spki(2048, 65537);
        let absent = with_spki(&good);
        let absent = mutate(&absent, |r| r.info.public_key.algorithm.parameters = None);
        let arbitrary = mutate(&absent, |r| {
            r.info.public_key.algorithm.parameters =
                Some(der::asn1::Any::from_der(&[0x02, 0x01, 0x05]).unwrap());
        });
        for (name, input) in [
            ("absent parameters", absent),
            ("INTEGER parameters", arbitrary),
            ("2049 bits", with_spki(&rsa_spki(2049, 65537))),
            ("e = 3", with_spki(&rsa_spki(2048, 3))),
        ] {
            assert!(
                matches!(parse(&input), Err(Error::UnsupportedKey(_))),
                "{name}: {:?}",
                parse(&input)
            );
        }
        // A compressed P-256 point.
        let compressed = mutate(&der, |r| {
            let point = r.info.public_key.subject_public_key.raw_bytes().to_vec();
            let mut short = vec![0x02 | (point[64] & 1)];
            short.extend_from_slice(&point[1..33]);
            r.info.public_key.subject_public_key =
                der::asn1::BitString::from_bytes(&short).unwrap();
        });
        assert!(matches!(parse(&compressed), Err(Error::UnsupportedKey(_))));
    }

    /// D4/D6 and neighbours: only the identity and usage extensions, each once; only the
    /// extensionRequest attribute, once.
    #[test]
    fn only_identity_and_usage_extensions_may_be_requested() {
        use x509_cert::attr::{Attribute, AttributeValue};
        use x509_cert::ext::{Extension, Extensions};
        let (der, _) = valid();
        let with_extension = |oid: &str, critical: bool, twice: bool| {
            mutate(&der, |r| {
                let attribute = r.info.attributes.iter().next().unwrap().clone();
                let value = attribute.values.iter().next().unwrap().to_der().unwrap();
                let mut extensions = Extensions::from_der(&value).unwrap();
                let extension = Extension {
                    extn_id: ObjectIdentifier::new_unwrap(oid),
                    critical,
                    extn_value: der::asn1::OctetString::new(vec![0x30, 0x00]).unwrap(),
                };
                extensions.push(extension.clone());
                if twice {
                    extensions.push(extension);
                }
                let value = AttributeValue::from_der(&extensions.to_der().unwrap()).unwrap();
                let attribute = Attribute {
                    oid: attribute.oid,
                    values: der::asn1::SetOfVec::try_from(vec![value]).unwrap(),
                };
                r.info.attributes = der::asn1::SetOfVec::try_from(vec![attribute]).unwrap();
            })
        };
        for (oid, critical) in [
            ("2.5.29.32", false),               // certificatePolicies
            ("2.5.29.30", true),                // nameConstraints
            ("2.5.29.31", false),               // CRL distribution points
            ("1.3.6.1.5.5.7.1.1", false),       // authorityInfoAccess
            ("1.3.6.1.4.1.11129.2.4.2", false), // SCT list
            ("2.5.29.14", false),               // subjectKeyIdentifier
            ("1.3.6.1.4.1.99999.7", true),      // a private critical extension
            ("1.3.6.1.4.1.99999.8", false),     // a private non-critical one
        ] {
            let input = with_extension(oid, critical, false);
            assert!(
                matches!(parse(&input), Err(Error::ForbiddenExtension(ref o)) if o == oid),
                "{oid}: {:?}",
                parse(&input)
            );
        }
        // Allowed extensions, twice.
        let twice = with_extension("2.5.29.19", false, true);
        assert!(
            matches!(parse(&twice), Err(Error::MalformedCsr(_))),
            "{:?}",
            parse(&twice)
        );
        // challengePassword beside the extension request.
        let password = mutate(&der, |r| {
            let mut attributes: Vec<Attribute> = r.info.attributes.iter().cloned().collect();
            attributes.push(Attribute {
                oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7"),
                values: der::asn1::SetOfVec::try_from(vec![AttributeValue::from(
                    der::asn1::PrintableStringRef::new("secret").unwrap(),
                )])
                .unwrap(),
            });
            r.info.attributes = der::asn1::SetOfVec::try_from(attributes).unwrap();
        });
        assert!(
            matches!(parse(&password), Err(Error::ForbiddenAttribute(_))),
            "{:?}",
            parse(&password)
        );
    }
}
