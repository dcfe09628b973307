//! istiod's xDS serving certificate: issued under our root for istiod's DNS names, recorded,
//! written as `tls.crt` / `tls.key` / `ca.crt` (key 0600), verified by openssl as a TLS server
//! certificate for `istiod.istio-system.svc`, and renewed (files rewritten) at two thirds.

use std::process::Command;

use ca_tests::{Backend, TestServer};
use x509_parser::prelude::{FromDer, X509Certificate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_gets_a_serving_certificate_under_our_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("istiod-tls");
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    config.istiod = ca_server::config::Config::from_toml(&format!(
        "[istiod]\ndns_names = [\"istiod.istio-system.svc\", \"istiod-canary.istio-system.svc\"]\nttl = \"12h\"\noutput_dir = {:?}\n",
        out.display().to_string()
    ))
    .unwrap()
    .istiod;
    let server = TestServer::start_with(config, dir).await;

    let chain = std::fs::read_to_string(out.join("tls.crt")).unwrap();
    let blocks = pem::parse_many(&chain).unwrap();
    assert_eq!(blocks.len(), 2, "leaf, then intermediate");
    let (_, leaf) = X509Certificate::from_der(blocks[0].contents()).unwrap();
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "DNSName(istiod.istio-system.svc)",
            "DNSName(istiod-canary.istio-system.svc)"
        ]
    );
    assert_eq!(
        leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp(),
        12 * 3600 + 60
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // openssl: a TLS server certificate for istiod's name, chaining to ca.crt (our root).
    std::fs::write(out.join("leaf.pem"), pem::encode(&blocks[0])).unwrap();
    std::fs::write(out.join("inter.pem"), pem::encode(&blocks[1])).unwrap();
    let (ok, stdout, stderr) = ca_tests::run(
        Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-verify_hostname"])
            .arg("istiod.istio-system.svc")
            .arg("-CAfile")
            .arg(out.join("ca.crt"))
            .arg("-untrusted")
            .arg(out.join("inter.pem"))
            .arg(out.join("leaf.pem")),
    );
    assert!(ok, "{stdout}{stderr}");
    // The key is the certificate's.
    let (ok, key_pub, _) = ca_tests::run(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(out.join("tls.key")),
    );
    assert!(ok);
    let (ok, cert_pub, _) = ca_tests::run(
        Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(out.join("leaf.pem")),
    );
    assert!(ok);
    assert_eq!(key_pub, cert_pub);
    // Recorded like every other certificate, and audited.
    let serial = hex::encode(leaf.raw_serial());
    let records = server
        .store()
        .await
        .certificates_by_serial(&serial)
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].api, "istiod");
    let audit = server.store().await.recent_audit(20).await.unwrap();
    assert!(
        audit.iter().any(|e| e.detail.contains(&serial)),
        "{audit:?}"
    );

    // Renewal at two thirds of the life: new files, a new serial.
    let istiod = ca_server::istiod::IstiodCertificate::start(
        &server.server.ca,
        server.config.istiod.clone().unwrap(),
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let first = std::fs::read_to_string(out.join("tls.crt")).unwrap();
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert!(!istiod.renew_if_due(&server.server.ca, later).await.unwrap());
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(9);
    assert!(istiod.renew_if_due(&server.server.ca, later).await.unwrap());
    assert_ne!(std::fs::read_to_string(out.join("tls.crt")).unwrap(), first);
    server.stop().await;
}
