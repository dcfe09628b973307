//! PKCS#10 CSRs from untrusted callers: size cap, PEM/DER envelope, key policy, signature check.
//! The result, [`VerifiedCsr`], keeps the public key and the identities the CSR *claims* (so
//! policy can refuse a CSR that names someone else); nothing else of the CSR is ever used.

use ring::digest::{SHA256, digest};
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

fn decode_envelope(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let block = pem::parse(trimmed).map_err(|e| Error::MalformedCsr(format!("PEM: {e}")))?;
    match block.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(block.into_contents()),
        other => Err(Error::NotACsr(other.to_owned())),
    }
}

/// The key policy: RSA 2048 to 8192 bits, or ECDSA on P-256 or P-384. CSR keys and our own
/// serving and CA keys are held to it alike.
pub fn key_policy(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, Error> {
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = bit_length(rsa.modulus);
            if !(2048..=8192).contains(&bits) {
                return Err(Error::UnsupportedKey(format!(
                    "RSA keys must be 2048 to 8192 bits, this one has {bits}"
                )));
            }
            Ok(KeyKind::Rsa { bits })
        }
        Ok(PublicKey::EC(_)) => {
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
}
