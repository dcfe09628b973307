//! CA signing keys: algorithms, generation, and the key-encryption key (KEK) that seals them at
//! rest. The only module that touches private key material; `Debug` of every holder is redacted.

mod kek;

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::PrivatePkcs8KeyDer;
use zeroize::Zeroizing;

pub use kek::{Kek, check_secret_file_mode, write_secret_file};

/// What went wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or create the KEK file {path}")]
    KekFile {
        path: String,
        source: std::io::Error,
    },
    #[error("KEK file {path} must hold exactly 32 bytes, it holds {len}")]
    KekLength { path: String, len: usize },
    #[error("a stored CA key cannot be decrypted (wrong KEK, or the ciphertext was altered)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("a stored CA key is not a valid {algorithm} key: {message}")]
    Load {
        algorithm: KeyAlgorithm,
        message: String,
    },
}

/// Key algorithms a trust domain's CA may use (SPEC section 3, `key_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    pub fn parse(text: &str) -> Option<KeyAlgorithm> {
        Some(match text {
            "ecdsa-p256" => KeyAlgorithm::EcdsaP256,
            "ecdsa-p384" => KeyAlgorithm::EcdsaP384,
            "rsa-2048" => KeyAlgorithm::Rsa2048,
            "rsa-3072" => KeyAlgorithm::Rsa3072,
            "rsa-4096" => KeyAlgorithm::Rsa4096,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// The signature algorithm certificates signed by such a key carry.
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &rcgen::PKCS_RSA_SHA256
            }
        }
    }

    fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CA private key ready to sign, with its PKCS#8 encoding kept only to be sealed for storage.
pub struct CaKey {
    algorithm: KeyAlgorithm,
    key_pair: KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKey")
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl CaKey {
    /// Generates a fresh key. ECDSA keys come from ring; RSA keys from the `rsa` crate, used for
    /// generation only (ring cannot generate RSA keys), then loaded into ring for signing.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<CaKey, Error> {
        let pkcs8 = match algorithm.rsa_bits() {
            None => {
                let key_pair = KeyPair::generate_for(algorithm.signature_algorithm())
                    .map_err(|e| Error::Generate(e.to_string()))?;
                Zeroizing::new(key_pair.serialize_der())
            }
            Some(bits) => generate_rsa_pkcs8(bits)?,
        };
        CaKey::from_pkcs8(algorithm, pkcs8)
    }

    /// Loads a PKCS#8 key (after decryption).
    pub fn from_pkcs8(algorithm: KeyAlgorithm, pkcs8: Zeroizing<Vec<u8>>) -> Result<CaKey, Error> {
        let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&der, algorithm.signature_algorithm())
            .map_err(|e| Error::Load {
                algorithm,
                message: e.to_string(),
            })?;
        Ok(CaKey {
            algorithm,
            key_pair,
            pkcs8,
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// DER SubjectPublicKeyInfo of this key.
    pub fn spki_der(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }

    /// Seals the key under the KEK; `context` binds the ciphertext to where it is stored.
    pub fn seal(&self, kek: &Kek, context: &[u8]) -> Result<Vec<u8>, Error> {
        kek.seal(&self.pkcs8, context)
    }

    /// Opens a sealed key; fails on a wrong KEK, altered bytes or a different `context`.
    pub fn open(
        kek: &Kek,
        algorithm: KeyAlgorithm,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<CaKey, Error> {
        let pkcs8 = kek.open(sealed, context)?;
        CaKey::from_pkcs8(algorithm, pkcs8)
    }
}

fn generate_rsa_pkcs8(bits: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| Error::Generate(e.to_string()))?;
    let document = key
        .to_pkcs8_der()
        .map_err(|e| Error::Generate(e.to_string()))?;
    Ok(Zeroizing::new(document.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_round_trip_and_bind_their_context() {
        let kek = Kek::from_bytes([7; 32]);
        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let sealed = key.seal(&kek, b"td/1/root").unwrap();
        let opened = CaKey::open(&kek, KeyAlgorithm::EcdsaP256, &sealed, b"td/1/root").unwrap();
        assert_eq!(opened.spki_der(), key.spki_der());
        assert!(matches!(
            CaKey::open(&kek, KeyAlgorithm::EcdsaP256, &sealed, b"td/1/intermediate"),
            Err(Error::Decrypt)
        ));
        let other = Kek::from_bytes([8; 32]);
        assert!(matches!(
            CaKey::open(&other, KeyAlgorithm::EcdsaP256, &sealed, b"td/1/root"),
            Err(Error::Decrypt)
        ));
        let mut tampered = sealed;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            CaKey::open(&kek, KeyAlgorithm::EcdsaP256, &tampered, b"td/1/root"),
            Err(Error::Decrypt)
        ));
    }

    #[test]
    fn every_algorithm_generates_and_signs() {
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = CaKey::generate(algorithm).unwrap();
            assert!(!format!("{key:?}").contains(&hex::encode(&key.pkcs8[..8])));
            assert!(format!("{key:?}").contains("redacted"));
            rcgen::SigningKey::sign(key.key_pair(), b"msg").unwrap();
        }
    }
}
