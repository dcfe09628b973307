//! Key pair and CSR generation. ECDSA keys come from ring (via rcgen); RSA keys from the `rsa`
//! crate (ring cannot generate RSA keys) and are then signed with by ring.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::PrivatePkcs8KeyDer;
use zeroize::Zeroizing;

use crate::Error;

/// Key types a workload key may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub fn parse(text: &str) -> Result<KeyType, Error> {
        Ok(match text {
            "ecdsa-p256" => KeyType::EcdsaP256,
            "ecdsa-p384" => KeyType::EcdsaP384,
            "rsa-2048" => KeyType::Rsa2048,
            "rsa-3072" => KeyType::Rsa3072,
            "rsa-4096" => KeyType::Rsa4096,
            other => {
                return Err(Error::Argument(format!(
                    "unknown key type {other}; use ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096"
                )));
            }
        })
    }
}

/// A fresh private key and a CSR over it.
pub struct KeyAndCsr {
    /// PKCS#8 PEM of the private key.
    pub key_pem: Zeroizing<String>,
    pub csr_pem: String,
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Generates a key of `key_type` and a CSR with an empty subject and, if given, one URI SAN.
pub fn generate(key_type: KeyType, uri_san: Option<&str>) -> Result<KeyAndCsr, Error> {
    let key_pair = generate_key(key_type)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(uri) = uri_san {
        let uri = uri
            .try_into()
            .map_err(|e: rcgen::Error| Error::Argument(format!("URI SAN: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    let csr = params
        .serialize_request(&key_pair)
        .map_err(|e| Error::Key(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| Error::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: Zeroizing::new(key_pair.serialize_pem()),
        csr_pem,
        csr_der: csr.der().to_vec(),
    })
}

/// Generates a key and a CSR shaped like istio-agent's: subject `O=` (an empty organization) and
/// exactly one URI SAN, marked critical.
pub fn generate_istio_style(key_type: KeyType, uri_san: &str) -> Result<KeyAndCsr, Error> {
    let key_pair = generate_key(key_type)?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(rcgen::DnType::OrganizationName, "");
    params.distinguished_name = subject;
    // rcgen marks the SAN critical only for an empty subject; write it ourselves.
    let mut san =
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], general_names_uri(uri_san));
    san.set_criticality(true);
    params.custom_extensions = vec![san];
    let csr = params
        .serialize_request(&key_pair)
        .map_err(|e| Error::Key(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| Error::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: Zeroizing::new(key_pair.serialize_pem()),
        csr_pem,
        csr_der: csr.der().to_vec(),
    })
}

/// DER of `GeneralNames ::= SEQUENCE { uniformResourceIdentifier [6] IA5String }`.
fn general_names_uri(uri: &str) -> Vec<u8> {
    let mut name = vec![0x86];
    push_len(&mut name, uri.len());
    name.extend_from_slice(uri.as_bytes());
    let mut out = vec![0x30];
    push_len(&mut out, name.len());
    out.extend_from_slice(&name);
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

/// Generates a key pair of `key_type`.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, Error> {
    let rsa_bits = match key_type {
        KeyType::EcdsaP256 => return keygen(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => return keygen(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => 2048,
        KeyType::Rsa3072 => 3072,
        KeyType::Rsa4096 => 4096,
    };
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, rsa_bits)
        .map_err(|e| Error::Key(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| Error::Key(e.to_string()))?;
    let der = Zeroizing::new(der.as_bytes().to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der.as_slice()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(|e| Error::Key(e.to_string()))
}

fn keygen(alg: &'static rcgen::SignatureAlgorithm) -> Result<KeyPair, Error> {
    KeyPair::generate_for(alg).map_err(|e| Error::Key(e.to_string()))
}
