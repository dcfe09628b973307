//! OCSP (RFC 6960) encoding, behind a small interface: parse a request, check a CertID against an
//! issuer, sign a response, or produce an error response. No I/O: the caller looks statuses up.
//!
//! Built on RustCrypto's `x509-ocsp` types (whose README still calls the crate not production
//! ready), so all of it stays in this file and its output is checked by openssl's client and by
//! pkilint in the test suite. Responses are signed by the issuing intermediate itself
//! (responderID byKey), for one hour.

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
/// Most CertIDs answered in one request.
pub const MAX_ITEMS: usize = 16;
/// How long a response may be relied on.
pub const VALIDITY_SECONDS: i64 = 3600;

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// A request we will answer.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    pub items: Vec<CertId>,
    /// The nonce extension to echo (1 to 32 octets, RFC 8954); a nonce outside that is ignored.
    pub nonce: Option<Extension>,
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

/// Parses a DER OCSP request (size-capped by the caller's transport and here).
pub fn parse_request(der: &[u8]) -> Result<ParsedRequest, Refusal> {
    if der.is_empty() || der.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::Malformed);
    }
    let request = OcspRequest::from_der(der).map_err(|_| Refusal::Malformed)?;
    let items: Vec<CertId> = request
        .tbs_request
        .request_list
        .iter()
        .map(|r| r.req_cert.clone())
        .collect();
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(Refusal::Malformed);
    }
    for item in &items {
        if hash_len(&item.hash_algorithm.oid).is_none() {
            return Err(Refusal::Malformed);
        }
    }
    let nonce = request
        .tbs_request
        .request_extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == OID_NONCE))
        .filter(|e| {
            OctetString::from_der(e.extn_value.as_bytes())
                .is_ok_and(|inner| (1..=32).contains(&inner.as_bytes().len()))
        })
        .cloned();
    Ok(ParsedRequest { items, nonce })
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

/// Signs a successful response with one SingleResponse per item.
pub fn sign_response(
    authority: &Authority,
    hashes: &IssuerHashes,
    items: &[(CertId, Status)],
    nonce: Option<Extension>,
    now: i64,
) -> Result<Vec<u8>, String> {
    let time = |t: i64| -> Result<OcspGeneralizedTime, String> {
        let seconds = u64::try_from(t).map_err(|e| e.to_string())?;
        let dt = der::DateTime::from_unix_duration(std::time::Duration::from_secs(seconds))
            .map_err(|e| e.to_string())?;
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
    let tbs = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(hashes.key_sha1()).map_err(|e| e.to_string())?,
        ),
        produced_at: time(now)?,
        responses,
        response_extensions: nonce.map(|n| vec![n]),
    };
    let tbs_der = tbs.to_der().map_err(|e| e.to_string())?;
    let signature =
        rcgen::SigningKey::sign(authority.issuer.key(), &tbs_der).map_err(|e| e.to_string())?;
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
        signature: BitString::from_bytes(&signature).map_err(|e| e.to_string())?,
        certs: None,
    };
    OcspResponse::successful(basic)
        .and_then(|r| r.to_der())
        .map_err(|e| e.to_string())
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
