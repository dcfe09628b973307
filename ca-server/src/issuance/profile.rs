//! The X509-SVID profile (SPEC section 8), built field by field: empty subject; exactly one URI
//! SAN, critical; KU digitalSignature (+keyEncipherment for RSA keys), critical; EKU serverAuth +
//! clientAuth; basicConstraints cA=false, critical; AKI and SKI; our serial and validity. Only the
//! public key comes from the CSR, and it is re-encoded from its key kind and key bits, never
//! copied (the self-check then holds the result to the CSR's SPKI byte for byte).
//!
//! The DER is written directly: the issuer's name, AKI and signature algorithm are fixed per
//! authority, and everything else is a handful of TLVs, so building a leaf is a few small
//! buffers instead of rcgen's general builder (about a fifth of the issuance CPU outside the
//! signature itself, measured). The output is byte-identical to rcgen's for the same inputs
//! (`rcgen_writes_the_same_certificate` in the tests), and every certificate still passes the
//! independent self-check (`check`) before it may leave.

use rcgen::SigningKey;
use ring::digest;
use time::OffsetDateTime;

use crate::authority::Authority;
use crate::issuance::{Error, KeyKind, VerifiedCsr};
use crate::keys::KeyAlgorithm;
use crate::serial::Serial;
use crate::spiffe::SpiffeId;

/// Everything that decides the content of one certificate; `check` holds the result to it.
#[derive(Debug)]
pub struct Template<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub serial: &'a Serial,
    pub not_before: i64,
    pub not_after: i64,
    pub rsa_key: bool,
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] IMPLICIT` primitive (AKI keyIdentifier) and constructed (CRLDP names).
const CONTEXT_0: u8 = 0x80;
const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
/// `[3] EXPLICIT` (the TBSCertificate's extensions).
const CONTEXT_3_CONSTRUCTED: u8 = 0xa3;
/// GeneralName `uniformResourceIdentifier [6] IA5String`.
const URI: u8 = 0x86;

/// `[0] EXPLICIT Version v3`.
const VERSION_V3: [u8; 5] = [0xa0, 0x03, 0x02, 0x01, 0x02];
/// An empty subject `Name`.
const EMPTY_NAME: [u8; 2] = [0x30, 0x00];
/// `basicConstraints`, critical: an empty SEQUENCE (`cA` DEFAULT FALSE).
const BASIC_CONSTRAINTS: [u8; 14] = [
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
];
/// `extendedKeyUsage`, not critical: serverAuth, clientAuth.
const EXTENDED_KEY_USAGE: [u8; 31] = [
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01,
    0x05, 0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];
/// `keyUsage`, critical: digitalSignature (bit 0; a BIT STRING with 7 unused bits).
const KEY_USAGE_EC: [u8; 16] = [
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07, 0x80,
];
/// `keyUsage`, critical: digitalSignature and keyEncipherment (bits 0 and 2; 5 unused bits).
const KEY_USAGE_RSA: [u8; 16] = [
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x05, 0xa0,
];
const OID_SAN: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x11];
const OID_SKI: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x0e];
const OID_AKI: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x23];
const OID_CRLDP: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x1f];
const OID_AIA: [u8; 10] = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x01];
const CRITICAL: [u8; 3] = [0x01, 0x01, 0xff];

/// The `AlgorithmIdentifier` of signatures made by a CA key of this algorithm.
fn signature_algorithm_der(algorithm: KeyAlgorithm) -> &'static [u8] {
    match algorithm {
        // ecdsa-with-SHA256 (RFC 5758), no parameters
        KeyAlgorithm::EcdsaP256 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ],
        // ecdsa-with-SHA384
        KeyAlgorithm::EcdsaP384 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
        ],
        // sha256WithRSAEncryption (RFC 4055), NULL parameters
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ],
    }
}

/// The SPKI `AlgorithmIdentifier` of a workload key of this kind (RFC 5480, RFC 3279).
fn key_algorithm_der(kind: KeyKind) -> &'static [u8] {
    match kind {
        // id-ecPublicKey, prime256v1
        KeyKind::EcdsaP256 => &[
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
            0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ],
        // id-ecPublicKey, secp384r1
        KeyKind::EcdsaP384 => &[
            0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
            0x81, 0x04, 0x00, 0x22,
        ],
        // rsaEncryption, NULL parameters
        KeyKind::Rsa { .. } => &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ],
    }
}

/// Builds the certificate and signs it with the authority's intermediate.
pub fn sign(
    template: &Template<'_>,
    csr: &VerifiedCsr,
    authority: &Authority,
) -> Result<Vec<u8>, Error> {
    let signing_key = authority.issuer.key();
    let signature_algorithm = signature_algorithm_der(signing_key.algorithm());

    let mut spki = Vec::with_capacity(csr.public_key_bits.len() + 32);
    spki.extend_from_slice(key_algorithm_der(csr.key_kind));
    bit_string(&mut spki, &csr.public_key_bits);
    let spki = wrap(SEQUENCE, &spki);

    let extensions = extensions(template, authority, &spki);

    let mut tbs = Vec::with_capacity(512 + spki.len() + extensions.len());
    tbs.extend_from_slice(&VERSION_V3);
    tlv(&mut tbs, INTEGER, template.serial.as_bytes());
    tbs.extend_from_slice(signature_algorithm);
    tbs.extend_from_slice(&authority.intermediate_subject_der);
    let mut validity = Vec::with_capacity(40);
    time(&mut validity, template.not_before)?;
    time(&mut validity, template.not_after)?;
    tlv(&mut tbs, SEQUENCE, &validity);
    tbs.extend_from_slice(&EMPTY_NAME);
    tbs.extend_from_slice(&spki);
    // [3] EXPLICIT Extensions (a SEQUENCE of Extension)
    tlv(
        &mut tbs,
        CONTEXT_3_CONSTRUCTED,
        &wrap(SEQUENCE, &extensions),
    );
    let tbs = wrap(SEQUENCE, &tbs);

    let signature = signing_key.sign(&tbs).map_err(Error::Signing)?;
    let mut certificate = Vec::with_capacity(tbs.len() + signature.len() + 32);
    certificate.extend_from_slice(&tbs);
    certificate.extend_from_slice(signature_algorithm);
    bit_string(&mut certificate, &signature);
    Ok(wrap(SEQUENCE, &certificate))
}

/// The `Extensions` SEQUENCE, in rcgen's order: AKI, SAN, KU, EKU, CRLDP, SKI, BC, AIA.
fn extensions(template: &Template<'_>, authority: &Authority, spki: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);

    // AKI: keyIdentifier [0] only.
    let aki = wrap(SEQUENCE, &wrap(CONTEXT_0, &authority.intermediate_ski));
    extension(&mut out, &OID_AKI, false, &aki);

    // SAN: one uniformResourceIdentifier [6]; critical, the subject being empty.
    let san = wrap(SEQUENCE, &wrap(URI, template.spiffe_id.as_str().as_bytes()));
    extension(&mut out, &OID_SAN, true, &san);

    if template.rsa_key {
        out.extend_from_slice(&KEY_USAGE_RSA);
    } else {
        out.extend_from_slice(&KEY_USAGE_EC);
    }
    out.extend_from_slice(&EXTENDED_KEY_USAGE);

    if let Some(url) = &authority.crl_url {
        // DistributionPoint { distributionPoint [0] { fullName [0] { URI [6] } } }
        let uri = wrap(URI, url.as_bytes());
        let name = wrap(CONTEXT_0_CONSTRUCTED, &wrap(CONTEXT_0_CONSTRUCTED, &uri));
        let points = wrap(SEQUENCE, &wrap(SEQUENCE, &name));
        extension(&mut out, &OID_CRLDP, false, &points);
    }

    // SKI: SHA-256 of the SPKI, as rcgen's `KeyIdMethod::Sha256` (its first 20 bytes).
    let hash = digest::digest(&digest::SHA256, spki);
    let ski = wrap(OCTET_STRING, &hash.as_ref()[..20]);
    extension(&mut out, &OID_SKI, false, &ski);

    out.extend_from_slice(&BASIC_CONSTRAINTS);

    if let Some(url) = &authority.ocsp_url {
        extension(&mut out, &OID_AIA, false, &ocsp_access(url));
    }
    out
}

/// Appends `Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue OCTET STRING }`.
fn extension(out: &mut Vec<u8>, oid: &[u8], critical: bool, value: &[u8]) {
    let mut body = Vec::with_capacity(oid.len() + value.len() + 8);
    body.extend_from_slice(oid);
    if critical {
        body.extend_from_slice(&CRITICAL);
    }
    tlv(&mut body, OCTET_STRING, value);
    tlv(out, SEQUENCE, &body);
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
    push_tag_len(out, BIT_STRING, bits.len() + 1);
    out.push(0);
    out.extend_from_slice(bits);
}

fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    push_tag_len(out, tag, content.len());
    out.extend_from_slice(content);
}

fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    tlv(&mut out, tag, content);
    out
}

fn push_tag_len(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    push_len(out, len);
}

/// DER of an AuthorityInfoAccessSyntax with one id-ad-ocsp entry pointing at `url`.
fn ocsp_access(url: &str) -> Vec<u8> {
    const ID_AD_OCSP: [u8; 10] = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let mut description = ID_AD_OCSP.to_vec();
    tlv(&mut description, URI, url.as_bytes());
    wrap(SEQUENCE, &wrap(SEQUENCE, &description))
}

/// A DER length: short form below 128, else the long form with the fewest octets.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let octets = len.to_be_bytes();
    let skip = octets.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (octets.len() - skip) as u8);
    out.extend_from_slice(&octets[skip..]);
}
