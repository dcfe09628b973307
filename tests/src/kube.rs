//! A stand-in for a Kubernetes service-account token issuer: keys made at test time, their JWKS
//! written to a file the server reads, and tokens minted with any claims a test wants.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// One signing key: its encoding key and its JWK.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn es256(kid: &str) -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        });
        SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    pub fn rs256(kid: &str) -> SigningKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = key.to_pkcs1_der().unwrap();
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        });
        SigningKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        }
    }

    /// Signs `claims` with this key (header `kid` set).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The token issuer of one cluster.
pub struct FakeKube {
    pub keys: Vec<SigningKey>,
}

impl FakeKube {
    pub fn new() -> FakeKube {
        FakeKube {
            keys: vec![SigningKey::es256("es-1"), SigningKey::rs256("rs-1")],
        }
    }

    /// Writes the JWKS (every key) to `path`.
    pub fn write_jwks(&self, path: &Path) {
        let jwks = json!({"keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        std::fs::write(path, serde_json::to_vec(&jwks).unwrap()).unwrap();
    }

    /// Standard claims of a projected token for `namespace/service_account`, valid for an hour.
    pub fn claims(namespace: &str, service_account: &str) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "aud": ["istio-ca"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "00000000-0000-0000-0000-000000000001"},
            },
        })
    }

    /// A valid ES256 token for `namespace/service_account`.
    pub fn token(&self, namespace: &str, service_account: &str) -> String {
        self.keys[0].sign(&FakeKube::claims(namespace, service_account))
    }
}

impl Default for FakeKube {
    fn default() -> Self {
        FakeKube::new()
    }
}

/// An unsigned token with `alg: none`.
pub fn alg_none_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{payload}.")
}
