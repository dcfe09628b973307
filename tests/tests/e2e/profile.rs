//! Independent checks of issued certificates: x509-parser field by field, `openssl verify`, and
//! pkilint's RFC 5280 linter.

use std::path::Path;
use std::process::Command;

use ca_tests::{Backend, TestServer, run};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Asserts the SPIFFE X509-SVID profile on a leaf (DER) for `spiffe_id`.
pub fn assert_svid_profile(der: &[u8], spiffe_id: &str, rsa: bool) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    assert_eq!(cert.version().0, 2, "v3");
    assert!(cert.subject().iter().next().is_none(), "empty subject");
    let serial = cert.raw_serial();
    assert!(serial.len() <= 20 && serial[0] & 0x80 == 0 && serial.iter().any(|b| *b != 0));
    let mut names = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "SAN critical");
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => names.push(uri.to_string()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical);
                assert!(ku.digital_signature());
                assert_eq!(ku.key_encipherment(), rsa);
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth && !eku.any);
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(ext.critical && !bc.ca);
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => assert!(aki.key_identifier.is_some()),
            ParsedExtension::SubjectKeyIdentifier(_) => {}
            other => panic!("unexpected extension {other:?}"),
        }
    }
    assert_eq!(names, vec![spiffe_id.to_owned()], "exactly one URI SAN");
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!(lifetime > 0);
}

/// `openssl verify -CAfile root -untrusted intermediate leaf` with the client-auth purpose.
pub fn openssl_verify(
    dir: &Path,
    root_pem: &str,
    intermediate_pem: &str,
    leaf_pem: &str,
) -> (bool, String) {
    std::fs::write(dir.join("v-root.pem"), root_pem).unwrap();
    std::fs::write(dir.join("v-int.pem"), intermediate_pem).unwrap();
    std::fs::write(dir.join("v-leaf.pem"), leaf_pem).unwrap();
    let (ok, stdout, stderr) = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("v-root.pem"))
        .arg("-untrusted")
        .arg(dir.join("v-int.pem"))
        .arg(dir.join("v-leaf.pem")));
    (ok, format!("{stdout}{stderr}"))
}

/// pkilint `lint_pkix_cert`: the only finding allowed is `pkix.invalid_uri_syntax` on the
/// spiffe URI (pkilint validates URIs as web URLs; our own parser accepted the value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificates_pass_pkilint() {
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_client();
    for key in [ca_client::KeyType::EcdsaP256, ca_client::KeyType::Rsa2048] {
        let id = "spiffe://cluster.local/ns/default/sa/lint";
        let generated = ca_client::csr::generate(key, Some(id)).unwrap();
        let issued = admin.issue(&generated.csr_pem, id, None).await.unwrap();
        let file = server.dir.path().join("leaf.pem");
        std::fs::write(&file, &issued.certificate_pem).unwrap();
        let codes = ca_tests::pkilint("lint_pkix_cert", &[], &file);
        let unexpected: Vec<_> = codes
            .iter()
            .filter(|c| *c != "pkix.invalid_uri_syntax")
            .collect();
        assert!(
            unexpected.is_empty(),
            "pkilint findings for {key:?}: {codes:?}"
        );
        // The intermediate too.
        let intermediate = issued
            .chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .nth(1)
            .unwrap();
        std::fs::write(&file, intermediate).unwrap();
        let codes = ca_tests::pkilint("lint_pkix_cert", &[], &file);
        assert!(
            codes.is_empty(),
            "pkilint findings for the intermediate: {codes:?}"
        );
    }
    server.stop().await;
}
