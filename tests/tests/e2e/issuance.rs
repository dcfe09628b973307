//! Issuance through the admin API on both backends: the happy path checked independently, the
//! bad-input catalogue (distinct error codes, no row written), serial uniqueness.

use ca_client::{Error, KeyType};
use ca_tests::{Backend, TestServer, both_backends, openssl_csr};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::profile::{assert_svid_profile, openssl_verify};

/// The gRPC serving certificate the server issues (and records) for itself at start.
const SERVING: i64 = 1;

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

fn pem_der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

async fn issues_a_correct_svid(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_client();
    for (key, rsa) in [
        (KeyType::EcdsaP256, false),
        (KeyType::EcdsaP384, false),
        (KeyType::Rsa2048, true),
    ] {
        let generated = ca_client::csr::generate(key, Some(ID)).unwrap();
        let issued = admin
            .issue(&generated.csr_pem, ID, Some("1h"))
            .await
            .unwrap();
        assert_eq!(issued.spiffe_id, ID);
        let leaf = pem_der(&issued.certificate_pem);
        assert_svid_profile(&leaf, ID, rsa);
        let blocks = pem::parse_many(&issued.chain_pem).unwrap();
        assert_eq!(blocks.len(), 2, "chain is leaf + intermediate");
        assert_eq!(blocks[0].contents(), leaf.as_slice());
        let intermediate_pem = pem::encode(&blocks[1]);
        let (ok, out) = openssl_verify(
            server.dir.path(),
            &issued.root_pem,
            &intermediate_pem,
            &issued.certificate_pem,
        );
        assert!(ok, "openssl verify: {out}");

        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        let (_, int) = X509Certificate::from_der(blocks[1].contents()).unwrap();
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60, "1h TTL plus the 60s backdate");
        assert!(cert.validity().not_after.timestamp() <= int.validity().not_after.timestamp());
        // The public key is the CSR's.
        let csr_der = generated.csr_der.clone();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .unwrap();
        assert_eq!(
            cert.public_key().raw,
            csr.certification_request_info.subject_pki.raw
        );

        // Recorded before it was returned.
        let records = server
            .store()
            .await
            .certificates_by_serial(&issued.serial)
            .await
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].der, leaf);
        assert_eq!(records[0].spiffe_id, ID);
        assert_eq!(records[0].api, "admin");
    }
    // The default TTL (24h) applies when none is asked; longer asks are clamped to max_ttl.
    let generated = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    for ttl in [None, Some("48h")] {
        let issued = admin.issue(&generated.csr_pem, ID, ttl).await.unwrap();
        let der = pem_der(&issued.certificate_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 86_400 + 60, "{ttl:?}");
    }
    server.stop().await;
}
both_backends!(issues_a_correct_svid_on, issues_a_correct_svid);

async fn same_key_gets_different_serials(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_client();
    let generated = ca_client::csr::generate(KeyType::EcdsaP256, Some(ID)).unwrap();
    let a = admin.issue(&generated.csr_pem, ID, None).await.unwrap();
    let b = admin.issue(&generated.csr_pem, ID, None).await.unwrap();
    assert_ne!(a.serial, b.serial);
    assert_eq!(a.serial.len(), 32, "128-bit serial in hex");
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        2 + SERVING,
    );
    server.stop().await;
}
both_backends!(
    same_key_gets_different_serials_on,
    same_key_gets_different_serials
);

/// Every bad input gets its own stable error code and writes no certificate row (only an audit
/// row of the rejection).
async fn bad_input_is_rejected_and_changes_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_client();
    let good = ca_client::csr::generate(KeyType::EcdsaP256, Some(ID)).unwrap();

    // A tampered signature: flip a bit in the last byte of the DER (inside the signature).
    let mut tampered = good.csr_der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));

    let rsa_1024 = openssl_csr(&["rsa:1024"]);
    let p224 = openssl_csr(&["ec", "-pkeyopt", "ec_paramgen_curve:P-224"]);
    let not_a_csr = pem::encode(&pem::Pem::new("CERTIFICATE", good.csr_der.clone()));
    let huge = format!("{}{}", good.csr_pem, "A".repeat(70 * 1024));
    let other_ns = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://cluster.local/ns/other/sa/web"),
    )
    .unwrap();

    let cases: Vec<(&str, String, &str, Option<&str>, &str)> = vec![
        (
            "tampered signature",
            tampered_pem,
            ID,
            None,
            "bad_csr_signature",
        ),
        ("RSA-1024", rsa_1024, ID, None, "unsupported_key"),
        ("P-224", p224.clone(), ID, None, "unsupported_key"),
        ("non-CSR PEM", not_a_csr, ID, None, "not_a_csr"),
        ("70 KiB body", huge, ID, None, "csr_too_large"),
        ("garbage", "hello".to_owned(), ID, None, "malformed_csr"),
        (
            "CSR claims another identity",
            other_ns.csr_pem.clone(),
            ID,
            None,
            "csr_identity_mismatch",
        ),
        (
            "foreign trust domain",
            good.csr_pem.clone(),
            "spiffe://evil.example/ns/default/sa/web",
            None,
            "unknown_trust_domain",
        ),
        (
            "invalid SPIFFE ID",
            good.csr_pem.clone(),
            "spiffe://cluster.local/ns/../sa/web",
            None,
            "invalid_spiffe_id",
        ),
        (
            "invalid TTL",
            good.csr_pem.clone(),
            ID,
            Some("forever"),
            "invalid_ttl",
        ),
    ];
    for (name, csr, spiffe_id, ttl, expected) in cases {
        let err = admin.issue(&csr, spiffe_id, ttl).await.unwrap_err();
        match err {
            Error::Server { status, code, .. } => {
                assert_eq!(status, 400, "{name}");
                assert_eq!(code, expected, "{name}");
            }
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        SERVING,
        "no row written"
    );
    let audit = server.store().await.recent_audit(100).await.unwrap();
    assert_eq!(audit.len(), 10);
    assert!(
        audit
            .iter()
            .all(|e| e.outcome == "rejected" && e.action == "certificate.issue")
    );

    // A body over the admin limit is refused before it is parsed.
    let response = reqwest::Client::new()
        .post(format!("{}/admin/v1/issue", server.admin_url()))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // No token, a wrong token.
    for token in ["", "wrong"] {
        let err = ca_client::AdminClient::new(&server.admin_url(), token)
            .unwrap()
            .issue(&good.csr_pem, ID, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Server { status: 401, .. }), "{err:?}");
    }
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        SERVING,
    );
    server.stop().await;
}
both_backends!(
    bad_input_is_rejected_on,
    bad_input_is_rejected_and_changes_nothing
);
