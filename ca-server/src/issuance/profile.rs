//! The X509-SVID profile (SPEC section 8), built field by field: empty subject; exactly one URI
//! SAN, critical; KU digitalSignature (+keyEncipherment for RSA keys), critical; EKU serverAuth +
//! clientAuth; basicConstraints cA=false, critical; AKI and SKI; our serial and validity. Only the
//! public key comes from the CSR: rcgen's CSR-params signing is never used (it would copy the
//! CSR's names and usages, derive the serial from the key and default validity to 1975-4096).

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::authority::Authority;
use crate::issuance::{Error, KeyKind, VerifiedCsr};
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

/// Builds the certificate and signs it with the authority's intermediate.
pub fn sign(
    template: &Template<'_>,
    csr: &VerifiedCsr,
    authority: &Authority,
) -> Result<Vec<u8>, Error> {
    let signing = |e: rcgen::Error| Error::Signing(e.to_string());
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(template.serial.as_bytes()));
    params.not_before = timestamp(template.not_before)?;
    params.not_after = timestamp(template.not_after)?;
    let uri = template
        .spiffe_id
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| Error::Signing(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = if template.rsa_key {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    if let Some(url) = &authority.crl_url {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![url.clone()],
        }];
    }
    if let Some(url) = &authority.ocsp_url {
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            ocsp_access(url),
        )];
    }
    let public_key = CsrPublicKey {
        algorithm: match csr.key_kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        },
        bits: &csr.public_key_bits,
    };
    let certificate = params
        .signed_by(&public_key, &authority.issuer)
        .map_err(signing)?;
    Ok(certificate.der().to_vec())
}

/// The CSR's public key as rcgen writes it: the algorithm identifier of its key kind and the key
/// bits (the self-check compares the written SPKI with the CSR's byte for byte).
struct CsrPublicKey<'a> {
    algorithm: &'static rcgen::SignatureAlgorithm,
    bits: &'a [u8],
}

impl rcgen::PublicKeyData for CsrPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// DER of an AuthorityInfoAccessSyntax with one id-ad-ocsp entry pointing at `url`.
fn ocsp_access(url: &str) -> Vec<u8> {
    const ID_AD_OCSP: [u8; 10] = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let mut location = vec![0x86];
    push_len(&mut location, url.len());
    location.extend_from_slice(url.as_bytes());
    let mut description = vec![0x30];
    push_len(&mut description, ID_AD_OCSP.len() + location.len());
    description.extend_from_slice(&ID_AD_OCSP);
    description.extend_from_slice(&location);
    let mut out = vec![0x30];
    push_len(&mut out, description.len());
    out.extend_from_slice(&description);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

fn timestamp(unix: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| Error::TtlOutOfRange)
}
