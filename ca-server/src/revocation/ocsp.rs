//! OCSP (RFC 6960) encoding, behind a small interface: parse a request, check a CertID against an
//! issuer, sign a response, or produce an error response; and the cache of signed responses with
//! the budget for fresh signatures. No I/O: the caller looks statuses up.
//!
//! Built on RustCrypto's `x509-ocsp` types (whose README still calls the crate not production
//! ready), so all of it stays in this file and its output is checked by openssl's client and by
//! pkilint in the test suite. Responses are signed by the issuing intermediate itself
//! (responderID byKey), for one hour.
//!
//! The responder is unauthenticated, so what a requester can make the intermediate sign is
//! bounded (security.md H7, G5, G7). The request profile we answer, family by family:
//!
//! | request | answer |
//! |---|---|
//! | not DER, trailing bytes, over [`MAX_REQUEST_BYTES`], version other than v1 | `malformedRequest` |
//! | 0 or 2.. CertIDs (RFC 5019 2.1.1: one per request) | `malformedRequest` |
//! | CertID hash other than SHA-1 or SHA-256 | `unauthorized` (G7: we cannot tell it names us) |
//! | SHA-1/SHA-256 with parameters neither absent nor NULL | `malformedRequest` |
//! | issuerNameHash or issuerKeyHash not the hash's length | `malformedRequest` |
//! | hashes of another issuer | `unauthorized` (checked by [`IssuerHashes::matches`]) |
//! | negative serial (would alias a positive one once leading bytes are stripped) | `malformedRequest` |
//! | optionalSignature (RFC 5019 2.1.2: clients MUST NOT sign; we could not check it) | `malformedRequest` |
//! | requestorName, unsigned (RFC 5019 2.1.2: servers MUST be prepared for it) | ignored, never echoed |
//! | an empty extension list, or one extension twice (RFC 5280 4.2) | `malformedRequest` |
//! | an unknown request or single-request extension, critical | `malformedRequest` |
//! | an unknown request or single-request extension, not critical | ignored, never echoed |
//! | nonce whose value is not exactly one DER OCTET STRING | `malformedRequest` |
//! | nonce of 0 octets, or over 32 (RFC 8954 2.1 MUST; RFC 9654 allows up to 128, we keep 32) | `malformedRequest` |
//! | nonce of 1 to 15 octets (RFC 8954 2.1 MAY ignore below 16) | answered without a nonce (cached) |
//! | nonce of 16 to 32 octets, critical or not (we understand it) | echoed, always **non-critical** |
//!
//! What a request may cost: answers without a nonce are signed once per (issuer, CertID as sent,
//! status) and reused until half their validity has passed ([`ResponseCache`]); the CertID
//! variants of one certificate are few (two hashes, two parameter spellings). Fresh signatures
//! a requester can ask for at will (an echoed nonce, a serial we never issued) draw on one budget
//! of [`FRESH_SIGNATURES_PER_SECOND`]; when it is spent a nonce is answered without it (RFC 5019
//! responders do not echo nonces; the client decides) and an unknown serial gets `tryLater`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::CrlReason;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::Authority;
use crate::revocation::Reason;

/// Largest OCSP request accepted, before parsing.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Most CertIDs answered in one request: one, as RFC 5019 2.1.1 profiles it, so a response
/// carries one requester-chosen CertID and is cacheable per certificate.
pub const MAX_ITEMS: usize = 1;
/// How long a response may be relied on.
pub const VALIDITY_SECONDS: i64 = 3600;
/// Shortest nonce echoed (RFC 8954 2.1: responders MUST accept 16 octets and more, MAY ignore
/// shorter ones).
pub const MIN_ECHOED_NONCE: usize = 16;
/// Longest nonce accepted (RFC 8954 2.1); longer, or empty, is `malformedRequest`.
pub const MAX_NONCE: usize = 32;
/// Fresh signatures per second (per CA process, every trust domain) that requesters can cause
/// at will: echoed nonces and answers for serials we never issued. ECDSA signs this many in
/// a few milliseconds; an RSA-4096 intermediate in under a second of one core.
pub const FRESH_SIGNATURES_PER_SECOND: u32 = 100;
/// Most cached responses (about 0.5 KiB each); past it the stalest is dropped.
pub const CACHE_CAPACITY: usize = 16_384;

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// A request we will answer.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// Exactly one CertID ([`MAX_ITEMS`]), of a known hash algorithm with well-formed hashes.
    pub items: Vec<CertId>,
    /// The nonce to echo (16 to 32 octets); `None` when there was none or it was shorter.
    pub nonce: Option<Vec<u8>>,
}

/// The status of one certificate, as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    Revoked { at: i64, reason: Option<Reason> },
    Unknown,
}

/// Why no signed answer can be given; each maps to an OCSP error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unauthorized,
    TryLater,
    Internal,
}

/// Parses a DER OCSP request (size-capped by the caller's transport and here) against the
/// profile in the module docs.
pub fn parse_request(der: &[u8]) -> Result<ParsedRequest, Refusal> {
    if der.is_empty() || der.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::Malformed);
    }
    let request = OcspRequest::from_der(der).map_err(|_| Refusal::Malformed)?;
    if request.optional_signature.is_some() {
        return Err(Refusal::Malformed);
    }
    let tbs = request.tbs_request;
    if tbs.request_list.is_empty() || tbs.request_list.len() > MAX_ITEMS {
        return Err(Refusal::Malformed);
    }
    let mut items = Vec::with_capacity(tbs.request_list.len());
    for single in tbs.request_list {
        check_extensions(single.single_request_extensions.as_deref(), false)?;
        check_cert_id(&single.req_cert)?;
        items.push(single.req_cert);
    }
    let nonce = check_extensions(tbs.request_extensions.as_deref(), true)?
        .filter(|nonce| nonce.len() >= MIN_ECHOED_NONCE);
    Ok(ParsedRequest { items, nonce })
}

/// Checks an extension list: present means not empty, each OID once, nothing critical we do not
/// understand. Returns the nonce's value when `nonce_allowed` and one is there (1 to 32 octets).
fn check_extensions(
    extensions: Option<&[Extension]>,
    nonce_allowed: bool,
) -> Result<Option<Vec<u8>>, Refusal> {
    let Some(extensions) = extensions else {
        return Ok(None);
    };
    if extensions.is_empty() {
        return Err(Refusal::Malformed);
    }
    let mut nonce = None;
    for (i, extension) in extensions.iter().enumerate() {
        if extensions[..i]
            .iter()
            .any(|e| e.extn_id == extension.extn_id)
        {
            return Err(Refusal::Malformed);
        }
        if nonce_allowed && extension.extn_id == OID_NONCE {
            // Nonce ::= OCTET STRING (SIZE(1..32)), exactly that inside extnValue.
            let value = OctetString::from_der(extension.extn_value.as_bytes())
                .map_err(|_| Refusal::Malformed)?;
            let bytes = value.as_bytes();
            if bytes.is_empty() || bytes.len() > MAX_NONCE {
                return Err(Refusal::Malformed);
            }
            nonce = Some(bytes.to_vec());
        } else if extension.critical {
            return Err(Refusal::Malformed);
        }
    }
    Ok(nonce)
}

/// A CertID we can match: a known hash (else `unauthorized`, G7) with absent or NULL
/// parameters, hashes of that hash's length, a serial that is not negative.
fn check_cert_id(cert_id: &CertId) -> Result<(), Refusal> {
    let algorithm = &cert_id.hash_algorithm;
    let length = hash_len(&algorithm.oid).ok_or(Refusal::Unauthorized)?;
    if algorithm.parameters.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(Refusal::Malformed);
    }
    if cert_id.issuer_name_hash.as_bytes().len() != length
        || cert_id.issuer_key_hash.as_bytes().len() != length
    {
        return Err(Refusal::Malformed);
    }
    if cert_id
        .serial_number
        .as_bytes()
        .first()
        .is_some_and(|b| b & 0x80 != 0)
    {
        return Err(Refusal::Malformed);
    }
    Ok(())
}

fn hash_len(oid: &ObjectIdentifier) -> Option<usize> {
    match *oid {
        OID_SHA1 => Some(20),
        OID_SHA256 => Some(32),
        _ => None,
    }
}

fn hash(oid: &ObjectIdentifier, data: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match *oid {
        OID_SHA1 => &SHA1_FOR_LEGACY_USE_ONLY,
        OID_SHA256 => &SHA256,
        _ => return None,
    };
    Some(digest(algorithm, data).as_ref().to_vec())
}

/// The issuer's subject DER and public key bytes, for CertID matching.
#[derive(Debug, Clone)]
pub struct IssuerHashes {
    subject_der: Vec<u8>,
    public_key: Vec<u8>,
}

impl IssuerHashes {
    pub fn of(authority: &Authority) -> Result<IssuerHashes, String> {
        let (_, cert) =
            X509Certificate::from_der(&authority.intermediate_der).map_err(|e| e.to_string())?;
        Ok(IssuerHashes {
            subject_der: cert.subject().as_raw().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether a CertID names this issuer (name hash and key hash, by its own hash algorithm).
    pub fn matches(&self, cert_id: &CertId) -> bool {
        let oid = &cert_id.hash_algorithm.oid;
        hash(oid, &self.subject_der).is_some_and(|h| h == cert_id.issuer_name_hash.as_bytes())
            && hash(oid, &self.public_key).is_some_and(|h| h == cert_id.issuer_key_hash.as_bytes())
    }

    fn key_sha1(&self) -> Vec<u8> {
        digest(&SHA1_FOR_LEGACY_USE_ONLY, &self.public_key)
            .as_ref()
            .to_vec()
    }
}

/// The serial a CertID asks about, as lower-case hex without leading zero bytes.
pub fn serial_hex(cert_id: &CertId) -> String {
    let bytes = cert_id.serial_number.as_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    hex::encode(&bytes[first..])
}

/// A signed response and the times it carries.
#[derive(Debug, Clone)]
pub struct Signed {
    pub der: Vec<u8>,
    pub this_update: i64,
    pub next_update: i64,
}

/// Signs a successful response with one SingleResponse per item; a nonce is echoed in a
/// non-critical extension (RFC 8954 2.1), re-encoded from its value rather than copied.
pub fn sign_response(
    authority: &Authority,
    hashes: &IssuerHashes,
    items: &[(CertId, Status)],
    nonce: Option<&[u8]>,
    now: i64,
) -> Result<Signed, SignError> {
    let time = |t: i64| -> Result<OcspGeneralizedTime, SignError> {
        let seconds = u64::try_from(t).map_err(|_| SignError::Time(t))?;
        let dt = der::DateTime::from_unix_duration(std::time::Duration::from_secs(seconds))
            .map_err(SignError::Encode)?;
        Ok(OcspGeneralizedTime(GeneralizedTime::from_date_time(dt)))
    };
    let next_update = (now + VALIDITY_SECONDS).min(authority.intermediate_not_after);
    let mut responses = Vec::with_capacity(items.len());
    for (cert_id, status) in items {
        let cert_status = match status {
            Status::Good => CertStatus::Good(Null),
            Status::Unknown => CertStatus::Unknown(Null),
            Status::Revoked { at, reason } => CertStatus::Revoked(RevokedInfo {
                revocation_time: time(*at)?,
                revocation_reason: reason.and_then(crl_reason),
            }),
        };
        responses.push(SingleResponse {
            cert_id: cert_id.clone(),
            cert_status,
            this_update: time(now)?,
            next_update: Some(time(next_update)?),
            single_extensions: None,
        });
    }
    let response_extensions = match nonce {
        Some(nonce) => Some(vec![Extension {
            extn_id: OID_NONCE,
            critical: false,
            extn_value: OctetString::new(OctetString::new(nonce)?.to_der()?)?,
        }]),
        None => None,
    };
    let tbs = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(OctetString::new(hashes.key_sha1())?),
        produced_at: time(now)?,
        responses,
        response_extensions,
    };
    let tbs_der = tbs.to_der()?;
    let signature = rcgen::SigningKey::sign(authority.issuer.key(), &tbs_der)?;
    let algorithm = match authority.issuer.key().algorithm() {
        crate::keys::KeyAlgorithm::EcdsaP256 => AlgorithmIdentifierOwned {
            oid: OID_ECDSA_SHA256,
            parameters: None,
        },
        crate::keys::KeyAlgorithm::EcdsaP384 => AlgorithmIdentifierOwned {
            oid: OID_ECDSA_SHA384,
            parameters: None,
        },
        _ => AlgorithmIdentifierOwned {
            oid: OID_RSA_SHA256,
            parameters: Some(der::Any::from(Null)),
        },
    };
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature)?,
        certs: None,
    };
    let der = OcspResponse::successful(basic)?.to_der()?;
    Ok(Signed {
        der,
        this_update: now,
        next_update,
    })
}

/// Why a response could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("time {0} is before 1970")]
    Time(i64),
    #[error("DER encoding")]
    Encode(#[from] der::Error),
    #[error("signing")]
    Sign(#[from] rcgen::Error),
}

/// An unsigned error response.
pub fn refusal_response(refusal: Refusal) -> Vec<u8> {
    let response = match refusal {
        Refusal::Malformed => OcspResponse::malformed_request(),
        Refusal::Unauthorized => OcspResponse::unauthorized(),
        Refusal::TryLater => OcspResponse::try_later(),
        Refusal::Internal => OcspResponse::internal_error(),
    };
    // Encoding a fixed status cannot fail; an empty body would still be refused by clients.
    response.to_der().unwrap_or_default()
}

fn crl_reason(reason: Reason) -> Option<CrlReason> {
    Some(match reason {
        Reason::Unspecified => return None,
        Reason::KeyCompromise => CrlReason::KeyCompromise,
        Reason::CaCompromise => CrlReason::CaCompromise,
        Reason::AffiliationChanged => CrlReason::AffiliationChanged,
        Reason::Superseded => CrlReason::Superseded,
        Reason::CessationOfOperation => CrlReason::CessationOfOperation,
        Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        Reason::AaCompromise => CrlReason::AaCompromise,
    })
}

/// Which cached response answers a request: the issuer and the CertID exactly as the requester
/// encoded it (the response carries it back as sent, RFC 6960 4.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    issuer_key_id: String,
    cert_id_der: Vec<u8>,
}

impl CacheKey {
    pub fn new(issuer_key_id: &str, cert_id: &CertId) -> Result<CacheKey, der::Error> {
        Ok(CacheKey {
            issuer_key_id: issuer_key_id.to_owned(),
            cert_id_der: cert_id.to_der()?,
        })
    }
}

/// A signed response without a nonce, kept for reuse.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    /// The status it states: a lookup with another status misses (and replaces it).
    pub status: Status,
    pub serial: String,
    pub trust_domain: String,
    pub der: Arc<Vec<u8>>,
    pub this_update: i64,
    pub next_update: i64,
}

impl CachedResponse {
    /// Reused while less than half its validity has passed (as the CRLs are), never before its
    /// thisUpdate.
    fn fresh_at(&self, now: i64) -> bool {
        let half_life = self.this_update + (self.next_update - self.this_update) / 2;
        self.this_update <= now && now < half_life
    }
}

/// Signed responses to nonce-less requests, per (issuer, CertID), each valid for the status it
/// states; and the per-second budget of fresh signatures requesters can cause at will.
///
/// The caller reads the status from the store on every request and passes it in, so a
/// revocation is answered `revoked` at once on every replica: a cached `good` is never served
/// for a certificate the store says is revoked. [`ResponseCache::forget_serial`] and
/// [`ResponseCache::forget_trust_domain`] only free entries that can no longer be served.
/// Only answers about certificates we issued are cached (the caller does not cache `unknown`),
/// so requesters cannot grow or churn it with serials of their choosing.
#[derive(Debug, Default)]
pub struct ResponseCache {
    entries: Mutex<HashMap<CacheKey, CachedResponse>>,
    /// The unix second of the current window and the fresh signatures taken in it.
    budget: Mutex<(i64, u32)>,
}

impl ResponseCache {
    /// The cached response for `key` if it states `status` and is still fresh at `now`.
    pub fn get(&self, key: &CacheKey, status: Status, now: i64) -> Option<Arc<Vec<u8>>> {
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(key)?;
        (cached.status == status && cached.fresh_at(now)).then(|| Arc::clone(&cached.der))
    }

    /// Keeps a response; when full, drops what is no longer fresh, then the stalest entry.
    pub fn insert(&self, key: CacheKey, response: CachedResponse, now: i64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, cached| cached.fresh_at(now));
            if entries.len() >= CACHE_CAPACITY {
                let stalest = entries
                    .iter()
                    .min_by_key(|(_, cached)| cached.this_update)
                    .map(|(key, _)| key.clone());
                if let Some(stalest) = stalest {
                    entries.remove(&stalest);
                }
            }
        }
        entries.insert(key, response);
    }

    /// Drops the responses about a serial (its status changed).
    pub fn forget_serial(&self, serial: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, cached| cached.serial != serial);
        }
    }

    /// Drops a trust domain's responses (statuses changed in bulk).
    pub fn forget_trust_domain(&self, trust_domain: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, cached| cached.trust_domain != trust_domain);
        }
    }

    /// Takes one fresh signature from this second's budget ([`FRESH_SIGNATURES_PER_SECOND`]);
    /// false when it is spent (or the lock is poisoned: fail closed).
    pub fn take_fresh_signature(&self, now: i64) -> bool {
        let Ok(mut budget) = self.budget.lock() else {
            return false;
        };
        if budget.0 != now {
            *budget = (now, 0);
        }
        if budget.1 >= FRESH_SIGNATURES_PER_SECOND {
            return false;
        }
        budget.1 += 1;
        true
    }
}
