//! The one certificate writer: DER for any [`Template`] (leaf, serving, intermediate), signed
//! with the issuer's key.
//!
//! The DER is written directly rather than through rcgen's general builder, which cost about a
//! fifth of the leaf issuance CPU outside the signature itself (measured); the leaf is the hot
//! path. Everything goes into one buffer: a constructed value is written in place and its length
//! patched in when it closes, so a certificate costs one allocation besides the signature.
//! Extensions are written by [`write_extension`] with named OIDs (`const_oid`'s database), in the
//! order [`Template::extensions`] gives; no extension is a hand-written byte blob.
//!
//! The output is byte-identical to rcgen's for the same inputs (the differential tests
//! `rcgen_writes_the_same_certificate`, `rcgen_writes_the_same_serving_certificate` and
//! `rcgen_writes_the_same_intermediate`), and every certificate still passes the independent
//! self-check (`check`) before it may leave.

use der::oid::ObjectIdentifier;
use der::oid::db::{rfc4519, rfc5280, rfc5912};
use rcgen::SigningKey;
use time::OffsetDateTime;

use crate::issuance::template::{
    BasicConstraints, Extension, Kind, SubjectKey, Template, key_identifier,
};
use crate::issuance::{Error, Issuer, KeyKind};
use crate::keys::KeyAlgorithm;

/// Writes the certificate `template` describes and signs it with `issuer`'s key.
pub fn sign(template: &Template<'_>, issuer: &Issuer<'_>) -> Result<Vec<u8>, Error> {
    let signature_algorithm = signature_algorithm(issuer.key.algorithm());
    // Room for the largest case (an RSA-4096 key and signature) without growing.
    let capacity = 1536 + template.public_key.bits.len() + issuer.subject_der.len();
    let mut out = Vec::with_capacity(capacity);
    nested(&mut out, SEQUENCE, |out| {
        let tbs_at = out.len();
        nested(out, SEQUENCE, |out| {
            to_be_signed(out, template, issuer, &signature_algorithm)
        })?;
        let signature = issuer.key.sign(&out[tbs_at..]).map_err(Error::Signing)?;
        signature_algorithm.write(out);
        bit_string(out, &signature);
        Ok::<(), Error>(())
    })?;
    Ok(out)
}

/// Appends `Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue }`, the
/// OCTET STRING `extnValue` holding what `value` writes.
pub fn write_extension(
    out: &mut Vec<u8>,
    oid: &ObjectIdentifier,
    critical: bool,
    value: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    nested(out, SEQUENCE, |out| {
        tlv(out, OBJECT_IDENTIFIER, oid.as_bytes());
        // DEFAULT FALSE: DER leaves a false `critical` out.
        if critical {
            tlv(out, BOOLEAN, &[0xff]);
        }
        nested(out, OCTET_STRING, value)
    })
}

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OBJECT_IDENTIFIER: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// `[0] IMPLICIT` primitive (AKI keyIdentifier).
const CONTEXT_0: u8 = 0x80;
/// `[0]` constructed (the TBSCertificate's version; CRLDP names).
const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
/// `[3] EXPLICIT` (the TBSCertificate's extensions).
const CONTEXT_3_CONSTRUCTED: u8 = 0xa3;
/// GeneralName `dNSName [2] IA5String`.
const DNS_NAME: u8 = 0x82;
/// GeneralName `uniformResourceIdentifier [6] IA5String`.
const URI: u8 = 0x86;

/// X.509 v3, as the INTEGER 2.
const VERSION_3: u8 = 2;

/// `AlgorithmIdentifier ::= SEQUENCE { algorithm, parameters ANY OPTIONAL }`.
struct AlgorithmIdentifier {
    algorithm: ObjectIdentifier,
    parameters: Parameters,
}

enum Parameters {
    /// Left out (the ECDSA signature algorithms, RFC 5758).
    Absent,
    /// An explicit NULL (the RSA algorithms, RFC 4055).
    Null,
    /// A named curve (id-ecPublicKey, RFC 5480).
    Curve(ObjectIdentifier),
}

impl AlgorithmIdentifier {
    fn write(&self, out: &mut Vec<u8>) {
        nested(out, SEQUENCE, |out| {
            tlv(out, OBJECT_IDENTIFIER, self.algorithm.as_bytes());
            match &self.parameters {
                Parameters::Absent => {}
                Parameters::Null => tlv(out, NULL, &[]),
                Parameters::Curve(curve) => tlv(out, OBJECT_IDENTIFIER, curve.as_bytes()),
            }
        });
    }
}

/// The algorithm of signatures made by a CA key of this algorithm.
fn signature_algorithm(algorithm: KeyAlgorithm) -> AlgorithmIdentifier {
    let (algorithm, parameters) = match algorithm {
        KeyAlgorithm::EcdsaP256 => (rfc5912::ECDSA_WITH_SHA_256, Parameters::Absent),
        KeyAlgorithm::EcdsaP384 => (rfc5912::ECDSA_WITH_SHA_384, Parameters::Absent),
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            (rfc5912::SHA_256_WITH_RSA_ENCRYPTION, Parameters::Null)
        }
    };
    AlgorithmIdentifier {
        algorithm,
        parameters,
    }
}

/// The SPKI algorithm of a public key of this kind.
fn key_algorithm(kind: KeyKind) -> AlgorithmIdentifier {
    let (algorithm, parameters) = match kind {
        KeyKind::EcdsaP256 => (
            rfc5912::ID_EC_PUBLIC_KEY,
            Parameters::Curve(rfc5912::SECP_256_R_1),
        ),
        KeyKind::EcdsaP384 => (
            rfc5912::ID_EC_PUBLIC_KEY,
            Parameters::Curve(rfc5912::SECP_384_R_1),
        ),
        KeyKind::Rsa { .. } => (rfc5912::RSA_ENCRYPTION, Parameters::Null),
    };
    AlgorithmIdentifier {
        algorithm,
        parameters,
    }
}

/// The TBSCertificate's contents.
fn to_be_signed(
    out: &mut Vec<u8>,
    template: &Template<'_>,
    issuer: &Issuer<'_>,
    signature_algorithm: &AlgorithmIdentifier,
) -> Result<(), Error> {
    nested(out, CONTEXT_0_CONSTRUCTED, |out| {
        tlv(out, INTEGER, &[VERSION_3]);
    });
    // Always positive and minimal (see `Serial`), so its bytes are the INTEGER's contents.
    tlv(out, INTEGER, template.serial.as_bytes());
    signature_algorithm.write(out);
    out.extend_from_slice(issuer.subject_der);
    nested(out, SEQUENCE, |out| {
        time(out, template.validity.not_before)?;
        time(out, template.validity.not_after)
    })?;
    subject(out, &template.kind);
    let spki_at = out.len();
    subject_public_key_info(out, &template.public_key);
    let key_identifier = key_identifier(&out[spki_at..]);
    nested(out, CONTEXT_3_CONSTRUCTED, |out| {
        nested(out, SEQUENCE, |out| {
            for extension in template.extensions() {
                write_extension(
                    out,
                    &extension.oid(),
                    template.is_critical(extension),
                    |out| extension_value(out, extension, template, issuer, &key_identifier),
                )?;
            }
            Ok(())
        })
    })
}

/// The subject `Name`: empty for leaves and serving certificates (they are named in the SAN),
/// `O=.., CN=..` (UTF8String, one attribute per RDN) for an intermediate.
fn subject(out: &mut Vec<u8>, kind: &Kind<'_>) {
    nested(out, SEQUENCE, |out| {
        if let Kind::Intermediate {
            organization,
            common_name,
        } = kind
        {
            for (attribute, value) in [(rfc4519::O, organization), (rfc4519::CN, common_name)] {
                nested(out, SET, |out| {
                    nested(out, SEQUENCE, |out| {
                        tlv(out, OBJECT_IDENTIFIER, attribute.as_bytes());
                        tlv(out, UTF8_STRING, value.as_bytes());
                    });
                });
            }
        }
    });
}

/// The SPKI, re-encoded from the key's kind and bits.
fn subject_public_key_info(out: &mut Vec<u8>, key: &SubjectKey<'_>) {
    nested(out, SEQUENCE, |out| {
        key_algorithm(key.kind).write(out);
        bit_string(out, key.bits);
    });
}

/// An extension's `extnValue` contents.
fn extension_value(
    out: &mut Vec<u8>,
    extension: Extension,
    template: &Template<'_>,
    issuer: &Issuer<'_>,
    key_identifier: &[u8],
) -> Result<(), Error> {
    match extension {
        // AuthorityKeyIdentifier: keyIdentifier [0] only.
        Extension::AuthorityKeyIdentifier => nested(out, SEQUENCE, |out| {
            tlv(out, CONTEXT_0, issuer.key_identifier);
            Ok(())
        }),
        Extension::SubjectAltName => {
            nested(out, SEQUENCE, |out| subject_alt_names(out, &template.kind))
        }
        Extension::KeyUsage => {
            // Bit 0 is the BIT STRING's first (most significant) bit; DER drops trailing zero
            // bits (X.690 11.2.2) and counts them as unused.
            let bits = template.key_usage.bits().reverse_bits();
            let used = u16::BITS - bits.trailing_zeros();
            let octets: u8 = if used <= 8 { 1 } else { 2 };
            nested(out, BIT_STRING, |out| {
                out.push(octets * 8 - used as u8);
                out.extend_from_slice(&bits.to_be_bytes()[..usize::from(octets)]);
                Ok(())
            })
        }
        Extension::ExtendedKeyUsage => nested(out, SEQUENCE, |out| {
            let usage = template.extended_key_usage;
            for (wanted, oid) in [
                (usage.server_auth, rfc5280::ID_KP_SERVER_AUTH),
                (usage.client_auth, rfc5280::ID_KP_CLIENT_AUTH),
            ] {
                if wanted {
                    tlv(out, OBJECT_IDENTIFIER, oid.as_bytes());
                }
            }
            Ok(())
        }),
        // CRLDistributionPoints: one DistributionPoint { distributionPoint [0] { fullName [0]
        // { URI } } }.
        Extension::CrlDistributionPoints => nested(out, SEQUENCE, |out| {
            nested(out, SEQUENCE, |out| {
                nested(out, CONTEXT_0_CONSTRUCTED, |out| {
                    nested(out, CONTEXT_0_CONSTRUCTED, |out| {
                        ia5(out, URI, template.crl_url.unwrap_or_default())
                    })
                })
            })
        }),
        Extension::SubjectKeyIdentifier => {
            tlv(out, OCTET_STRING, key_identifier);
            Ok(())
        }
        // cA DEFAULT FALSE: an end entity's is an empty SEQUENCE.
        Extension::BasicConstraints => nested(out, SEQUENCE, |out| {
            if let BasicConstraints::Ca { path_len } = template.basic_constraints {
                tlv(out, BOOLEAN, &[0xff]);
                // A positive INTEGER: a leading zero octet keeps the top bit a sign bit.
                if path_len < 0x80 {
                    tlv(out, INTEGER, &[path_len]);
                } else {
                    tlv(out, INTEGER, &[0, path_len]);
                }
            }
            Ok(())
        }),
        // AuthorityInfoAccessSyntax: one AccessDescription { id-ad-ocsp, URI }.
        Extension::AuthorityInfoAccess => nested(out, SEQUENCE, |out| {
            nested(out, SEQUENCE, |out| {
                tlv(out, OBJECT_IDENTIFIER, rfc5280::ID_AD_OCSP.as_bytes());
                ia5(out, URI, template.ocsp_url.unwrap_or_default())
            })
        }),
    }
}

/// The GeneralNames of a leaf (its SPIFFE ID) or a serving certificate (DNS names, then URI).
fn subject_alt_names(out: &mut Vec<u8>, kind: &Kind<'_>) -> Result<(), Error> {
    match kind {
        Kind::Leaf { spiffe_id } => ia5(out, URI, spiffe_id.as_str()),
        Kind::Serving { dns_names, uri } => {
            for name in dns_names.iter() {
                ia5(out, DNS_NAME, name)?;
            }
            match uri {
                Some(uri) => ia5(out, URI, uri),
                None => Ok(()),
            }
        }
        Kind::Intermediate { .. } => Ok(()),
    }
}

/// An IA5String (ASCII) with an implicit tag; anything else cannot be written as one.
fn ia5(out: &mut Vec<u8>, tag: u8, text: &str) -> Result<(), Error> {
    if !text.is_ascii() {
        return Err(Error::NotIa5String(text.to_owned()));
    }
    tlv(out, tag, text.as_bytes());
    Ok(())
}

/// RFC 5280 section 4.1.2.5: UTCTime (`YYMMDDHHMMSSZ`) through 2049, GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) from 2050.
fn time(out: &mut Vec<u8>, unix: i64) -> Result<(), Error> {
    let at = OffsetDateTime::from_unix_timestamp(unix).map_err(|_| Error::TtlOutOfRange)?;
    let year = u32::try_from(at.year()).map_err(|_| Error::TtlOutOfRange)?;
    let mut text = [0u8; 15];
    let (tag, len) = match year {
        1950..=2049 => (UTC_TIME, 13),
        0..=9999 => (GENERALIZED_TIME, 15),
        _ => return Err(Error::TtlOutOfRange),
    };
    let mut digits = |at: usize, value: u32, width: usize| {
        for i in 0..width {
            text[at + width - 1 - i] = b'0' + (value / 10u32.pow(i as u32) % 10) as u8;
        }
    };
    let year_width = len - 11;
    digits(0, year, year_width);
    let rest = [
        u32::from(u8::from(at.month())),
        u32::from(at.day()),
        u32::from(at.hour()),
        u32::from(at.minute()),
        u32::from(at.second()),
    ];
    for (i, value) in rest.into_iter().enumerate() {
        digits(year_width + 2 * i, value, 2);
    }
    text[len - 1] = b'Z';
    tlv(out, tag, &text[..len]);
    Ok(())
}

/// A BIT STRING with no unused bits.
fn bit_string(out: &mut Vec<u8>, bits: &[u8]) {
    out.push(BIT_STRING);
    push_len(out, bits.len() + 1);
    out.push(0);
    out.extend_from_slice(bits);
}

/// A primitive value whose contents are known.
fn tlv(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    push_len(out, contents.len());
    out.extend_from_slice(contents);
}

/// A value whose contents `contents` writes in place; its length is patched in afterwards
/// (widened to the long form, moving the contents up, when it reaches 128 bytes).
fn nested<R>(out: &mut Vec<u8>, tag: u8, contents: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    out.push(tag);
    let length_at = out.len();
    out.push(0);
    let result = contents(out);
    let len = out.len() - length_at - 1;
    if len < 0x80 {
        out[length_at] = len as u8;
    } else {
        let octets = len.to_be_bytes();
        let significant = &octets[octets.iter().take_while(|b| **b == 0).count()..];
        out[length_at] = 0x80 | significant.len() as u8;
        out.splice(length_at + 1..length_at + 1, significant.iter().copied());
    }
    result
}

/// A DER length: short form below 128, else the long form with the fewest octets.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let octets = len.to_be_bytes();
    let significant = &octets[octets.iter().take_while(|b| **b == 0).count()..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}
