//! Plug-in CAs (SPEC 10): an issuing intermediate signed by a CA outside this server (a
//! corporate root, Vault, an offline root), as Istio's `cacerts` files hold it: `ca-cert.pem`
//! (the issuing certificate), `ca-key.pem` (its key; absent when the key was made here with a
//! CSR), `cert-chain.pem` (the issuing certificate and any intermediates above it, up to the
//! root) and `root-cert.pem` (the external root).
//!
//! [`validate`] is the whole admission check; a refusal carries a stable code
//! ([`ImportError::code`]) and nothing is kept. What it refuses, each a family:
//! - **malformed**: a field over [`MAX_PEM_BYTES`], not PEM, a block that is not a certificate
//!   (or not a key), trailing bytes after a certificate's DER, more than [`MAX_CHAIN_CERTS`]
//!   certificates, an encrypted key;
//! - **key**: a key that does not match `ca-cert.pem`, or an algorithm the CA cannot sign with
//!   (ECDSA P-256/P-384, RSA 2048/3072/4096);
//! - **not a CA**: any certificate of the path without `basicConstraints` CA, or without
//!   `keyCertSign`;
//! - **path length**: a `pathLenConstraint` above the issuing certificate that forbids the
//!   intermediates below it, so leaves would not verify;
//! - **chain**: issuer names that do not link, a signature that does not verify, a root that is
//!   not self-signed, a weak signature algorithm (MD5, SHA-1);
//! - **validity**: a certificate expired or not yet valid, or a path that ends before `max_ttl`
//!   from now (a leaf must get its full TTL);
//! - **profile**: no subject key identifier on the issuing certificate (leaves name it), an
//!   unknown critical extension, an extended key usage on a CA that excludes our leaves'
//!   `serverAuth`/`clientAuth`, URI name constraints that exclude the trust domain.
//!
//! What passes but is worth saying comes back as warnings (no `cRLSign`: the generation's CRL
//! will not verify; no `digitalSignature`: strict OCSP clients refuse its answers). The key
//! and CSR of an intermediate to be signed outside are made by `authority::intermediate_csr`.

use std::time::Duration;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::keys::{CaKey, KeyAlgorithm};
use crate::spiffe::TrustDomain;

/// The largest PEM field taken (each of the four files).
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// The most certificates a chain may hold.
pub const MAX_CHAIN_CERTS: usize = 8;

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Malformed(String),
    #[error("the key does not match ca-cert.pem")]
    KeyMismatch,
    #[error("{0}")]
    KeyAlgorithm(String),
    #[error("{0}")]
    NotCa(String),
    #[error("{0}")]
    PathLength(String),
    #[error("{0}")]
    Chain(String),
    #[error("{0}")]
    NotValid(String),
    #[error("{0}")]
    TooShort(String),
    #[error("{0}")]
    Profile(String),
}

impl ImportError {
    /// The stable error code of the HTTP answer and the audit row.
    pub fn code(&self) -> &'static str {
        match self {
            ImportError::Malformed(_) => "import_malformed",
            ImportError::KeyMismatch => "import_key_mismatch",
            ImportError::KeyAlgorithm(_) => "import_key_algorithm",
            ImportError::NotCa(_) => "import_not_ca",
            ImportError::PathLength(_) => "import_path_length",
            ImportError::Chain(_) => "import_chain_invalid",
            ImportError::NotValid(_) => "import_expired",
            ImportError::TooShort(_) => "import_validity_too_short",
            ImportError::Profile(_) => "import_profile",
        }
    }
}

/// The `cacerts` files as given (untrusted).
#[derive(Debug, Default)]
pub struct CaFiles<'a> {
    pub ca_cert_pem: &'a str,
    /// Absent when installing a certificate for a key made here (`authority::intermediate_csr`).
    pub ca_key_pem: Option<&'a str>,
    /// The issuing certificate and the intermediates above it, up to the root; either end may
    /// be left out, and so may the whole file when the root signed `ca-cert.pem` itself.
    pub cert_chain_pem: Option<&'a str>,
    pub root_cert_pem: &'a str,
}

/// A validated plug-in intermediate, ready to be sealed as a generation.
#[derive(Debug)]
pub struct Validated {
    pub intermediate_der: Vec<u8>,
    /// The intermediates above the issuing one, issuer of the one before first; not the root.
    pub upper_chain: Vec<Vec<u8>>,
    pub root_der: Vec<u8>,
    pub key: CaKey,
    /// Hex of the issuing certificate's subject key identifier.
    pub issuer_key_id: String,
    pub not_after: i64,
    pub warnings: Vec<String>,
}

/// Checks `files` (see the module docs); `pending` is the key made here when `ca_key_pem` is
/// absent. `now` in unix seconds.
pub fn validate(
    files: &CaFiles<'_>,
    pending: Option<CaKey>,
    trust_domain: &TrustDomain,
    max_ttl: Duration,
    now: i64,
) -> Result<Validated, ImportError> {
    for (name, text) in [
        ("ca-cert.pem", Some(files.ca_cert_pem)),
        ("ca-key.pem", files.ca_key_pem),
        ("cert-chain.pem", files.cert_chain_pem),
        ("root-cert.pem", Some(files.root_cert_pem)),
    ] {
        if text.is_some_and(|t| t.len() > MAX_PEM_BYTES) {
            return Err(ImportError::Malformed(format!(
                "{name} is larger than {} KiB",
                MAX_PEM_BYTES / 1024
            )));
        }
    }
    let issuing_der = one_certificate("ca-cert.pem", files.ca_cert_pem)?;
    let root_der = one_certificate("root-cert.pem", files.root_cert_pem)?;
    let mut upper = match files.cert_chain_pem {
        Some(text) if !text.trim().is_empty() => certificates("cert-chain.pem", text)?,
        _ => Vec::new(),
    };
    if upper.first() == Some(&issuing_der) {
        upper.remove(0);
    }
    if upper.last() == Some(&root_der) {
        upper.pop();
    }
    if upper.len() + 2 > MAX_CHAIN_CERTS {
        return Err(ImportError::Malformed(format!(
            "the chain holds more than {MAX_CHAIN_CERTS} certificates"
        )));
    }
    // The path from the issuing certificate up to the root.
    let mut path_der: Vec<&[u8]> = vec![&issuing_der];
    path_der.extend(upper.iter().map(Vec::as_slice));
    path_der.push(&root_der);
    let path: Vec<X509Certificate<'_>> = path_der
        .iter()
        .map(|der| parse(der))
        .collect::<Result<_, _>>()?;
    let issuing = &path[0];

    let key = match (files.ca_key_pem, pending) {
        (Some(pem), _) => load_key(pem, issuing)?,
        (None, Some(key)) => key,
        (None, None) => {
            return Err(ImportError::Malformed(
                "ca-key.pem is missing and no key was made here for it (cactl ca csr)".to_owned(),
            ));
        }
    };
    if key.spki_der().as_slice() != issuing.public_key().raw {
        return Err(ImportError::KeyMismatch);
    }

    let mut warnings = Vec::new();
    for (depth, cert) in path.iter().enumerate() {
        let role = role(depth, path.len());
        warnings.extend(check_ca(cert, depth, depth + 1 == path.len(), &role)?);
        check_profile(cert, &role, trust_domain)?;
        check_validity(cert, &role, now)?;
        let signer = path.get(depth + 1).unwrap_or(cert);
        check_signed_by(cert, signer, &role)?;
    }
    let root = &path[path.len() - 1];
    if root.subject().as_raw() != root.issuer().as_raw() {
        return Err(ImportError::Chain(
            "root-cert.pem is not self-issued (its issuer is not its subject)".to_owned(),
        ));
    }

    // Every certificate of the path must outlive a leaf issued now with the longest TTL.
    let max_ttl = i64::try_from(max_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    let path_end = path
        .iter()
        .map(|c| c.validity().not_after.timestamp())
        .min()
        .unwrap_or(now);
    if path_end - now <= max_ttl {
        return Err(ImportError::TooShort(format!(
            "the chain ends in {} s, which does not cover max_ttl ({max_ttl} s)",
            path_end - now
        )));
    }

    let usage = issuing.key_usage().ok().flatten().map(|u| *u.value);
    // (Without a keyUsage every use is allowed: `check_ca` warned about that already.)
    if usage.as_ref().is_some_and(|u| !u.crl_sign()) {
        warnings.push(
            "ca-cert.pem lacks cRLSign: this generation's CRL will not verify at strict clients (OCSP still answers)".to_owned(),
        );
    }
    if usage.as_ref().is_some_and(|u| !u.digital_signature()) {
        warnings.push(
            "ca-cert.pem lacks digitalSignature: strict OCSP clients refuse answers signed by it"
                .to_owned(),
        );
    }
    let ski = issuing
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| {
            ImportError::Profile(
                "ca-cert.pem has no subject key identifier (RFC 5280 4.2.1.2); leaves name it"
                    .to_owned(),
            )
        })?;
    let not_after = issuing.validity().not_after.timestamp();
    drop(path);
    Ok(Validated {
        intermediate_der: issuing_der,
        upper_chain: upper,
        root_der,
        key,
        issuer_key_id: hex::encode(ski),
        not_after,
        warnings,
    })
}

fn role(depth: usize, len: usize) -> String {
    match depth {
        0 => "ca-cert.pem".to_owned(),
        d if d + 1 == len => "root-cert.pem".to_owned(),
        d => format!("cert-chain.pem intermediate {d}"),
    }
}

/// The DER of every `CERTIFICATE` block of `text`.
fn certificates(name: &str, text: &str) -> Result<Vec<Vec<u8>>, ImportError> {
    let blocks = ::pem::parse_many(text)
        .map_err(|_| ImportError::Malformed(format!("{name} is not PEM")))?;
    if blocks.is_empty() {
        return Err(ImportError::Malformed(format!(
            "{name} holds no certificate"
        )));
    }
    if blocks.len() > MAX_CHAIN_CERTS {
        return Err(ImportError::Malformed(format!(
            "{name} holds more than {MAX_CHAIN_CERTS} certificates"
        )));
    }
    blocks
        .into_iter()
        .map(|b| match b.tag() {
            "CERTIFICATE" => Ok(b.into_contents()),
            other => Err(ImportError::Malformed(format!(
                "{name} holds a {} block; only CERTIFICATE blocks belong there",
                crate::untrusted::bounded(other, 40)
            ))),
        })
        .collect()
}

fn one_certificate(name: &str, text: &str) -> Result<Vec<u8>, ImportError> {
    let mut all = certificates(name, text)?;
    if all.len() != 1 {
        return Err(ImportError::Malformed(format!(
            "{name} must hold exactly one certificate, it holds {}",
            all.len()
        )));
    }
    Ok(all.remove(0))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ImportError> {
    match X509Certificate::from_der(der) {
        Ok((&[], cert)) => Ok(cert),
        Ok(_) => Err(ImportError::Malformed(
            "a certificate has bytes after its DER".to_owned(),
        )),
        Err(_) => Err(ImportError::Malformed(
            "a certificate does not parse as X.509".to_owned(),
        )),
    }
}

/// The issuing certificate's key algorithm, from its public key.
fn key_algorithm(cert: &X509Certificate<'_>) -> Result<KeyAlgorithm, ImportError> {
    let spki = cert.public_key();
    let unsupported = |what: String| {
        ImportError::KeyAlgorithm(format!(
            "ca-cert.pem has a {what} key; the CA signs with ECDSA P-256/P-384 or RSA 2048/3072/4096"
        ))
    };
    match spki.algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok(KeyAlgorithm::EcdsaP256),
                "1.3.132.0.34" => Ok(KeyAlgorithm::EcdsaP384),
                other => Err(unsupported(format!(
                    "EC ({})",
                    crate::untrusted::bounded(other, 40)
                ))),
            }
        }
        "1.2.840.113549.1.1.1" => {
            let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err(ImportError::Malformed(
                    "ca-cert.pem's RSA public key does not parse".to_owned(),
                ));
            };
            let modulus = rsa.modulus;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            match significant * 8 {
                2048 => Ok(KeyAlgorithm::Rsa2048),
                3072 => Ok(KeyAlgorithm::Rsa3072),
                4096 => Ok(KeyAlgorithm::Rsa4096),
                bits => Err(unsupported(format!("{bits}-bit RSA"))),
            }
        }
        other => Err(unsupported(crate::untrusted::bounded(other, 40))),
    }
}

/// `ca-key.pem` as PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`), of the algorithm of `issuing`'s public key.
fn load_key(text: &str, issuing: &X509Certificate<'_>) -> Result<CaKey, ImportError> {
    let algorithm = key_algorithm(issuing)?;
    let blocks = ::pem::parse_many(text)
        .map_err(|_| ImportError::Malformed("ca-key.pem is not PEM".to_owned()))?;
    let keys: Vec<&::pem::Pem> = blocks
        .iter()
        .filter(|b| b.tag() != "EC PARAMETERS")
        .collect();
    let [block] = keys.as_slice() else {
        return Err(ImportError::Malformed(format!(
            "ca-key.pem must hold exactly one key, it holds {} blocks",
            keys.len()
        )));
    };
    let der = Zeroizing::new(block.contents().to_vec());
    let pkcs8 = match block.tag() {
        "PRIVATE KEY" => der,
        "RSA PRIVATE KEY" => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| {
                ImportError::Malformed("ca-key.pem: the RSA PRIVATE KEY does not parse".to_owned())
            })?;
            let document = key.to_pkcs8_der().map_err(|_| {
                ImportError::Malformed("ca-key.pem: the RSA key cannot be re-encoded".to_owned())
            })?;
            Zeroizing::new(document.as_bytes().to_vec())
        }
        "EC PRIVATE KEY" => sec1_to_pkcs8(&der, algorithm)?,
        "ENCRYPTED PRIVATE KEY" => {
            return Err(ImportError::Malformed(
                "ca-key.pem is encrypted; decrypt it first (openssl pkey -in ca-key.pem -out plain.pem)".to_owned(),
            ));
        }
        other => {
            return Err(ImportError::Malformed(format!(
                "ca-key.pem holds a {} block, not a private key",
                crate::untrusted::bounded(other, 40)
            )));
        }
    };
    CaKey::from_pkcs8(algorithm, pkcs8).map_err(|_| ImportError::KeyMismatch)
}

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8 (RFC 5208) with the curve of `algorithm`, as ring
/// loads only PKCS#8. A SEC1 key naming another curve does not match.
fn sec1_to_pkcs8(sec1: &[u8], algorithm: KeyAlgorithm) -> Result<Zeroizing<Vec<u8>>, ImportError> {
    use der::Encode;
    use der::asn1::{ObjectIdentifier, OctetStringRef};
    let curve = match algorithm {
        KeyAlgorithm::EcdsaP256 => ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
        KeyAlgorithm::EcdsaP384 => ObjectIdentifier::new_unwrap("1.3.132.0.34"),
        _ => return Err(ImportError::KeyMismatch),
    };
    let algorithm = spki::AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
        parameters: Some(der::Any::encode_from(&curve).map_err(|_| ImportError::KeyMismatch)?),
    };
    let private_key = OctetStringRef::new(sec1)
        .map_err(|_| ImportError::Malformed("ca-key.pem: the EC key is too large".to_owned()))?;
    #[derive(der::Sequence)]
    struct PrivateKeyInfo<'a> {
        version: u8,
        algorithm: spki::AlgorithmIdentifierOwned,
        private_key: OctetStringRef<'a>,
    }
    let info = PrivateKeyInfo {
        version: 0,
        algorithm,
        private_key,
    };
    info.to_der().map(Zeroizing::new).map_err(|_| {
        ImportError::Malformed("ca-key.pem: the EC key cannot be re-encoded".to_owned())
    })
}

/// CA with `keyCertSign`, and a path length that lets the CAs below it (all but the issuing
/// one count) and then leaves follow. An intermediate must say it is a CA (basicConstraints);
/// the root, a trust anchor, may be a v1 certificate without extensions, as verifiers accept.
/// A `keyUsage`, where present, must allow `keyCertSign`; where absent, verifiers allow every
/// use, and the answer is a warning (RFC 5280 wants it on every CA). Returns that warning.
fn check_ca(
    cert: &X509Certificate<'_>,
    depth: usize,
    is_root: bool,
    role: &str,
) -> Result<Option<String>, ImportError> {
    let constraints = cert
        .basic_constraints()
        .map_err(|_| {
            ImportError::Malformed(format!("{role}: basicConstraints is malformed or repeated"))
        })?
        .map(|b| b.value.clone());
    match &constraints {
        Some(b) if b.ca => {}
        None if is_root => {}
        _ => {
            return Err(ImportError::NotCa(format!(
                "{role} is not a CA certificate (basicConstraints CA is not set)"
            )));
        }
    }
    let usage = cert.key_usage().map_err(|_| {
        ImportError::Malformed(format!("{role}: keyUsage is malformed or repeated"))
    })?;
    let warning = match usage {
        Some(u) if !u.value.key_cert_sign() => {
            return Err(ImportError::NotCa(format!(
                "{role} may not sign certificates (keyUsage lacks keyCertSign)"
            )));
        }
        Some(_) => None,
        None => Some(format!(
            "{role} has no keyUsage: verifiers allow every use, but RFC 5280 wants keyCertSign stated on a CA"
        )),
    };
    if let Some(limit) = constraints.and_then(|b| b.path_len_constraint)
        && (limit as usize) < depth
    {
        return Err(ImportError::PathLength(format!(
            "{role} has pathLenConstraint {limit}, but {depth} intermediate(s) sit below it before the leaves; leaves would not verify"
        )));
    }
    Ok(warning)
}

/// Extensions a verifier must understand when critical: anything else critical makes webpki
/// (ztunnel, rustls) refuse the chain.
const KNOWN_CRITICAL: [&str; 5] = [
    "2.5.29.19", // basicConstraints
    "2.5.29.15", // keyUsage
    "2.5.29.37", // extKeyUsage
    "2.5.29.17", // subjectAltName
    "2.5.29.30", // nameConstraints
];

fn check_profile(
    cert: &X509Certificate<'_>,
    role: &str,
    trust_domain: &TrustDomain,
) -> Result<(), ImportError> {
    for extension in cert.extensions() {
        let oid = extension.oid.to_id_string();
        if extension.critical && !KNOWN_CRITICAL.contains(&oid.as_str()) {
            return Err(ImportError::Profile(format!(
                "{role} has a critical extension {} that verifiers do not understand",
                crate::untrusted::bounded(&oid, 40)
            )));
        }
        match extension.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku)
                if !(eku.any || (eku.server_auth && eku.client_auth)) =>
            {
                return Err(ImportError::Profile(format!(
                    "{role} restricts extended key usage without serverAuth and clientAuth; workload certificates need both"
                )));
            }
            ParsedExtension::NameConstraints(constraints) => {
                let host = trust_domain.as_str();
                let covers = |base: &GeneralName<'_>| match base {
                    GeneralName::URI(c) => {
                        let c = c.to_ascii_lowercase();
                        match c.strip_prefix('.') {
                            Some(suffix) => host.ends_with(&format!(".{suffix}")),
                            None => host == c,
                        }
                    }
                    _ => false,
                };
                let is_uri = |base: &GeneralName<'_>| matches!(base, GeneralName::URI(_));
                if let Some(permitted) = &constraints.permitted_subtrees
                    && permitted.iter().any(|s| is_uri(&s.base))
                    && !permitted.iter().any(|s| covers(&s.base))
                {
                    return Err(ImportError::Profile(format!(
                        "{role} permits URI names that do not include spiffe://{trust_domain}"
                    )));
                }
                if let Some(excluded) = &constraints.excluded_subtrees
                    && excluded.iter().any(|s| covers(&s.base))
                {
                    return Err(ImportError::Profile(format!(
                        "{role} excludes URI names of spiffe://{trust_domain}"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_validity(cert: &X509Certificate<'_>, role: &str, now: i64) -> Result<(), ImportError> {
    let validity = cert.validity();
    if validity.not_before.timestamp() > now {
        return Err(ImportError::NotValid(format!(
            "{role} is not valid yet (notBefore {})",
            validity.not_before
        )));
    }
    if validity.not_after.timestamp() <= now {
        return Err(ImportError::NotValid(format!(
            "{role} has expired (notAfter {})",
            validity.not_after
        )));
    }
    Ok(())
}

/// Signature algorithms verifiers accept: RSA PKCS#1 and PSS with SHA-2, ECDSA with SHA-2,
/// Ed25519.
const ACCEPTED_SIGNATURES: [&str; 8] = [
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12",
    "1.2.840.113549.1.1.13",
    "1.2.840.113549.1.1.10",
    "1.2.840.10045.4.3.2",
    "1.2.840.10045.4.3.3",
    "1.2.840.10045.4.3.4",
    "1.3.101.112",
];

fn check_signed_by(
    cert: &X509Certificate<'_>,
    signer: &X509Certificate<'_>,
    role: &str,
) -> Result<(), ImportError> {
    let algorithm = cert.signature_algorithm.algorithm.to_id_string();
    if !ACCEPTED_SIGNATURES.contains(&algorithm.as_str()) {
        return Err(ImportError::Chain(format!(
            "{role} is signed with {}, which verifiers refuse (use SHA-2 or Ed25519)",
            crate::untrusted::bounded(&algorithm, 40)
        )));
    }
    if cert.issuer().as_raw() != signer.subject().as_raw() {
        return Err(ImportError::Chain(format!(
            "{role}'s issuer is not the subject of the certificate above it"
        )));
    }
    cert.verify_signature(Some(signer.public_key()))
        .map_err(|_| ImportError::Chain(format!("{role}'s signature does not verify")))
}
