//! SPIFFE bundles (JWK sets) and bundle maps: rendering ours and parsing peers' (SPIFFE Trust
//! Domain and Bundle spec). No I/O.
//!
//! Rendering: one `x509-svid` key per root, `x5c` with exactly one standard-base64 DER
//! certificate, key parameters per RFC 7518 (`kty`, `crv`/`x`/`y` or `n`/`e`), no `kid`,
//! `spiffe_sequence`, `spiffe_refresh_hint` (omitted inside bundle maps).
//!
//! Parsing refuses: a body over [`MAX_BUNDLE_BYTES`], non-JSON, a bundle map that names a trust
//! domain twice, an `x509-svid` key with a `kid`, with other than one `x5c`, or whose certificate
//! is not a CA certificate, a `spiffe_sequence` that is not an integer up to [`MAX_SEQUENCE`],
//! a `spiffe_refresh_hint` that is not a positive integer. Keys of other uses (`jwt-svid`) are
//! ignored.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::digest::{SHA256, digest};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::spiffe::TrustDomain;

/// Largest `spiffe_sequence` accepted: 2^53 - 1, the largest integer every JSON reader holds
/// exactly (RFC 7493). A bundle published every second would take 285 million years to reach
/// it; a peer (or an attacker serving as one) cannot pin us to "2^64 - 1" for good.
pub const MAX_SEQUENCE: u64 = (1 << 53) - 1;

/// Largest bundle (or bundle map) accepted, before parsing.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Why a peer's bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("not a JSON bundle: {0}")]
    NotJson(String),
    #[error("the bundle map names a trust domain twice")]
    DuplicateTrustDomain,
    #[error("the bundle map has no entry for {0}")]
    MissingTrustDomain(String),
    #[error("an x509-svid key is invalid: {0}")]
    BadKey(String),
    #[error("an x509-svid certificate is not a CA certificate")]
    NotCa,
    #[error("spiffe_sequence must be an integer from 0 to {MAX_SEQUENCE}")]
    BadSequence,
    #[error("spiffe_refresh_hint must be a positive integer number of seconds")]
    BadRefreshHint,
}

impl BundleError {
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::TooLarge => "too_large",
            BundleError::NotJson(_) => "not_json",
            BundleError::DuplicateTrustDomain => "duplicate_trust_domain",
            BundleError::MissingTrustDomain(_) => "missing_trust_domain",
            BundleError::BadKey(_) => "bad_key",
            BundleError::NotCa => "not_ca",
            BundleError::BadSequence => "bad_sequence",
            BundleError::BadRefreshHint => "bad_refresh_hint",
        }
    }
}

/// A parsed peer bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBundle {
    pub sequence: Option<u64>,
    pub refresh_hint: Option<u64>,
    /// DER CA certificates, in the order given.
    pub roots: Vec<Vec<u8>>,
}

/// The SPIFFE bundle of a set of roots.
pub fn render(roots: &[Vec<u8>], sequence: u64, refresh_hint: Option<u64>) -> Value {
    let keys: Vec<Value> = roots.iter().filter_map(|der| jwk(der).ok()).collect();
    let mut bundle = json!({"keys": keys, "spiffe_sequence": sequence});
    if let Some(hint) = refresh_hint {
        bundle["spiffe_refresh_hint"] = json!(hint);
    }
    bundle
}

/// A fingerprint of bundle content (the set of roots), for "did it change".
pub fn content_hash(roots: &[Vec<u8>]) -> String {
    let mut sorted: Vec<&Vec<u8>> = roots.iter().collect();
    sorted.sort();
    let mut input = Vec::new();
    for der in sorted {
        input.extend_from_slice(&(der.len() as u64).to_be_bytes());
        input.extend_from_slice(der);
    }
    hex::encode(digest(&SHA256, &input))
}

/// The JWK of a CA certificate's public key, `use: x509-svid`, with the certificate in `x5c`.
pub fn jwk(der: &[u8]) -> Result<Value, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    let x5c = STANDARD.encode(der);
    match spki.parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let crv = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "P-256",
                Some("1.3.132.0.34") => "P-384",
                _ => return Err("unsupported curve".to_owned()),
            };
            let bytes = point.data();
            if bytes.first() != Some(&4) || bytes.len() % 2 != 1 {
                return Err("EC point is not uncompressed".to_owned());
            }
            let half = (bytes.len() - 1) / 2;
            Ok(json!({
                "kty": "EC", "use": "x509-svid", "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&bytes[1..1 + half]),
                "y": URL_SAFE_NO_PAD.encode(&bytes[1 + half..]),
                "x5c": [x5c],
            }))
        }
        PublicKey::RSA(rsa) => Ok(json!({
            "kty": "RSA", "use": "x509-svid",
            "n": URL_SAFE_NO_PAD.encode(unsigned(rsa.modulus)),
            "e": URL_SAFE_NO_PAD.encode(unsigned(rsa.exponent)),
            "x5c": [x5c],
        })),
        _ => Err("unsupported key type".to_owned()),
    }
}

fn unsigned(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

/// Parses a peer's bundle, or its entry in a bundle map.
pub fn parse(bytes: &[u8], trust_domain: &TrustDomain) -> Result<ParsedBundle, BundleError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| BundleError::NotJson(e.to_string()))?;
    let bundle = if value.get("trust_domains").is_some() {
        let map: BundleMap = serde_json::from_slice(bytes).map_err(|e| {
            if e.to_string().contains(DUPLICATE) {
                BundleError::DuplicateTrustDomain
            } else {
                BundleError::NotJson(e.to_string())
            }
        })?;
        map.trust_domains
            .into_iter()
            .find(|(name, _)| name == trust_domain.as_str())
            .map(|(_, bundle)| bundle)
            .ok_or_else(|| BundleError::MissingTrustDomain(trust_domain.to_string()))?
    } else {
        value
    };
    let keys = bundle
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| BundleError::NotJson("no keys array".to_owned()))?;
    let mut roots = Vec::new();
    for key in keys {
        if key.get("use").and_then(Value::as_str) != Some("x509-svid") {
            continue;
        }
        if key.get("kid").is_some() {
            return Err(BundleError::BadKey(
                "x509-svid keys must not have a kid".to_owned(),
            ));
        }
        let x5c = key
            .get("x5c")
            .and_then(Value::as_array)
            .filter(|x| x.len() == 1)
            .and_then(|x| x[0].as_str())
            .ok_or_else(|| {
                BundleError::BadKey("x5c must hold exactly one certificate".to_owned())
            })?;
        let der = STANDARD
            .decode(x5c)
            .map_err(|e| BundleError::BadKey(format!("x5c is not base64: {e}")))?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| BundleError::BadKey(e.to_string()))?;
        if !cert.is_ca() {
            return Err(BundleError::NotCa);
        }
        roots.push(der);
    }
    let sequence = match bundle.get("spiffe_sequence") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|s| *s <= MAX_SEQUENCE)
                .ok_or(BundleError::BadSequence)?,
        ),
    };
    let refresh_hint = match bundle.get("spiffe_refresh_hint") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|s| *s > 0)
                .ok_or(BundleError::BadRefreshHint)?,
        ),
    };
    Ok(ParsedBundle {
        sequence,
        refresh_hint,
        roots,
    })
}

const DUPLICATE: &str = "duplicate trust domain in bundle map";

#[derive(Deserialize)]
struct BundleMap {
    trust_domains: NoDuplicates,
}

/// A JSON object read as ordered pairs, refusing repeated keys (serde_json would keep the last).
struct NoDuplicates(Vec<(String, Value)>);

impl IntoIterator for NoDuplicates {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = NoDuplicates;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of trust domains to bundles")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<NoDuplicates, A::Error> {
                let mut seen = BTreeSet::new();
                let mut pairs = Vec::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(DUPLICATE));
                    }
                    pairs.push((key, value));
                }
                Ok(NoDuplicates(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}
