//! An independent OCSP client for tests: builds requests (SHA-1 CertID) and reads responses with
//! the RustCrypto types, without going through the server's own helpers.

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use spki::AlgorithmIdentifierOwned;
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
