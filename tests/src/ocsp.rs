//! An independent OCSP client for tests: builds requests (SHA-1 CertID, or any variant a test
//! spells: other hashes and parameters, several CertIDs, nonces, extensions) and reads responses
//! with the RustCrypto types, without going through the server's own helpers.

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest, Version,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a response said about one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Good,
    Revoked,
    Unknown,
    /// Not a successful response: the OCSP status code.
    Error(u8),
}

/// A DER OCSP request for `serial_hex` issued by the CA certificate `issuer_der`.
pub fn request(issuer_der: &[u8], serial_hex: &str) -> Vec<u8> {
    let (_, issuer) = X509Certificate::from_der(issuer_der).unwrap();
    let name_hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, issuer.subject().as_raw());
    let key_hash = digest(
        &SHA1_FOR_LEGACY_USE_ONLY,
        &issuer.public_key().subject_public_key.data,
    );
    let cert_id = CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.3.14.3.2.26"),
            parameters: Some(der::Any::from(der::asn1::Null)),
        },
        issuer_name_hash: OctetString::new(name_hash.as_ref()).unwrap(),
        issuer_key_hash: OctetString::new(key_hash.as_ref()).unwrap(),
        serial_number: SerialNumber::new(&hex::decode(serial_hex).unwrap()).unwrap(),
    };
    OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// Reads the status of the first certificate in a DER response.
pub fn answer(response_der: &[u8]) -> Answer {
    let response = OcspResponse::from_der(response_der).unwrap();
    if response.response_status != OcspResponseStatus::Successful {
        return Answer::Error(response.response_status as u8);
    }
    let bytes = response.response_bytes.unwrap();
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
    match basic.tbs_response_data.responses[0].cert_status {
        CertStatus::Good(_) => Answer::Good,
        CertStatus::Revoked(_) => Answer::Revoked,
        CertStatus::Unknown(_) => Answer::Unknown,
    }
}

/// The revocation reason (RFC 5280 CRLReason code) of the first answer, if it is `revoked`
/// with a reason.
pub fn revocation_reason(response_der: &[u8]) -> Option<u8> {
    let response = OcspResponse::from_der(response_der).ok()?;
    let bytes = response.response_bytes?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).ok()?;
    match &basic.tbs_response_data.responses.first()?.cert_status {
        CertStatus::Revoked(info) => info.revocation_reason.map(|r| r as u8),
        _ => None,
    }
}

/// SHA-1 (what openssl and Go send by default).
pub const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// SHA-256.
pub const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-pkix-ocsp-nonce (RFC 8954).
pub const NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// A CertID for `serial_hex` under the CA certificate `issuer_der`, hashed with `hash`
/// (SHA-1 or SHA-256; another OID is named with SHA-256-sized hashes) and NULL parameters.
pub fn cert_id(issuer_der: &[u8], serial_hex: &str, hash: ObjectIdentifier) -> CertId {
    let (_, issuer) = X509Certificate::from_der(issuer_der).unwrap();
    let algorithm = if hash == SHA1 {
        &SHA1_FOR_LEGACY_USE_ONLY
    } else {
        &ring::digest::SHA256
    };
    let name_hash = digest(algorithm, issuer.subject().as_raw());
    let key_hash = digest(algorithm, &issuer.public_key().subject_public_key.data);
    CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: hash,
            parameters: Some(der::Any::from(der::asn1::Null)),
        },
        issuer_name_hash: OctetString::new(name_hash.as_ref()).unwrap(),
        issuer_key_hash: OctetString::new(key_hash.as_ref()).unwrap(),
        serial_number: SerialNumber::new(&hex::decode(serial_hex).unwrap()).unwrap(),
    }
}

/// An unsigned request for these CertIDs, without extensions: edit its fields to make any
/// variant, then [`encode`] it.
pub fn unsigned(items: Vec<CertId>) -> OcspRequest {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: items
                .into_iter()
                .map(|req_cert| Request {
                    req_cert,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions: None,
        },
        optional_signature: None,
    }
}

/// The DER of a request.
pub fn encode(request: &OcspRequest) -> Vec<u8> {
    request.to_der().unwrap()
}

/// A nonce extension whose value is `nonce` as an OCTET STRING (RFC 8954), as clients send it.
pub fn nonce(nonce: &[u8], critical: bool) -> Extension {
    let inner = OctetString::new(nonce).unwrap().to_der().unwrap();
    raw_extension(NONCE, critical, &inner)
}

/// An extension with exactly these extnValue bytes.
pub fn raw_extension(oid: ObjectIdentifier, critical: bool, value: &[u8]) -> Extension {
    Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value).unwrap(),
    }
}

/// Everything a test checks in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The OCSPResponseStatus (0 successful, 1 malformedRequest, 3 tryLater, 6 unauthorized).
    pub status: u8,
    /// One answer per SingleResponse (empty unless successful).
    pub answers: Vec<Answer>,
    /// The CertIDs answered, DER, as the responder echoed them.
    pub cert_ids: Vec<Vec<u8>>,
    /// The response extensions: OID, critical, extnValue.
    pub extensions: Vec<(ObjectIdentifier, bool, Vec<u8>)>,
    pub produced_at: Option<std::time::Duration>,
    pub signature: Vec<u8>,
}

impl Parsed {
    /// The echoed nonce, if any: its value and whether it was marked critical.
    pub fn nonce(&self) -> Option<(Vec<u8>, bool)> {
        self.extensions
            .iter()
            .find(|(oid, _, _)| *oid == NONCE)
            .map(|(_, critical, value)| {
                (
                    OctetString::from_der(value).unwrap().as_bytes().to_vec(),
                    *critical,
                )
            })
    }
}

/// Parses a DER response completely (any status).
pub fn parse(response_der: &[u8]) -> Parsed {
    let response = OcspResponse::from_der(response_der).unwrap();
    let status = response.response_status as u8;
    let Some(bytes) = response.response_bytes else {
        return Parsed {
            status,
            answers: Vec::new(),
            cert_ids: Vec::new(),
            extensions: Vec::new(),
            produced_at: None,
            signature: Vec::new(),
        };
    };
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
    let data = &basic.tbs_response_data;
    Parsed {
        status,
        answers: data
            .responses
            .iter()
            .map(|r| match r.cert_status {
                CertStatus::Good(_) => Answer::Good,
                CertStatus::Revoked(_) => Answer::Revoked,
                CertStatus::Unknown(_) => Answer::Unknown,
            })
            .collect(),
        cert_ids: data
            .responses
            .iter()
            .map(|r| r.cert_id.to_der().unwrap())
            .collect(),
        extensions: data
            .response_extensions
            .iter()
            .flatten()
            .map(|e| (e.extn_id, e.critical, e.extn_value.as_bytes().to_vec()))
            .collect(),
        produced_at: Some(data.produced_at.0.to_unix_duration()),
        signature: basic.signature.raw_bytes().to_vec(),
    }
}
