//! Revocation end to end: revoke -> CRL and OCSP say so (checked with openssl), unknown serials,
//! other CAs, malformed requests, store down, denied identities on every path, pkilint on CRLs
//! and OCSP responses, and a property test over random issue/revoke/time sequences.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ca_client::{Error, KeyType, TokenAuth};
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer, both_backends, run};
use x509_parser::prelude::{FromDer, X509Certificate};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

struct Issued {
    serial: String,
    leaf_pem: String,
    intermediate_pem: String,
    root_pem: String,
}

async fn issue(server: &TestServer, id: &str) -> Issued {
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(id)).unwrap();
    let issued = server
        .admin_client()
        .issue(&csr.csr_pem, id, None)
        .await
        .unwrap();
    let blocks = pem::parse_many(&issued.chain_pem).unwrap();
    Issued {
        serial: issued.serial,
        leaf_pem: issued.certificate_pem,
        intermediate_pem: pem::encode(&blocks[1]),
        root_pem: issued.root_pem,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn fetch_crl(server: &TestServer) -> Vec<u8> {
    let response = reqwest::get(format!("{}/v1/crl/cluster.local", server.http_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/pkix-crl");
    response.bytes().await.unwrap().to_vec()
}

/// `openssl ocsp` against our responder; returns its stdout+stderr.
fn openssl_ocsp(dir: &Path, server: &TestServer, issued: &Issued, target: &[&str]) -> String {
    let int = write(dir, "o-int.pem", &issued.intermediate_pem);
    let root = write(dir, "o-root.pem", &issued.root_pem);
    let (_, out, err) = run(Command::new("openssl")
        .arg("ocsp")
        .arg("-issuer")
        .arg(&int)
        .args(target)
        .args([
            "-url",
            &format!("{}/v1/ocsp/cluster.local", server.http_url()),
        ])
        .arg("-CAfile")
        .arg(&root)
        .arg("-verify_other")
        .arg(&int));
    format!("{out}{err}")
}

async fn revoke_shows_on_crl_and_ocsp(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = server.dir.path().to_owned();
    let admin = server.admin_client();
    let kept = issue(&server, WEB).await;
    let revoked = issue(&server, WEB).await;
    let crl_before = fetch_crl(&server).await;

    let answer = admin
        .revoke(&revoked.serial, "keyCompromise")
        .await
        .unwrap();
    assert_eq!(answer["newly_revoked"], true);
    assert_eq!(answer["reason"], "keyCompromise");
    // Idempotent: nothing changes the second time.
    let again = admin.revoke(&revoked.serial, "superseded").await.unwrap();
    assert_eq!(again["newly_revoked"], false);
    assert_eq!(again["reason"], "keyCompromise");
    assert_eq!(again["revoked_at"], answer["revoked_at"]);
    // Unknown serial: 404; bad reason: 400.
    assert!(matches!(
        admin.revoke("0123456789abcdef", "keyCompromise").await,
        Err(Error::Server { status: 404, .. })
    ));
    assert!(matches!(
        admin.revoke(&kept.serial, "certificateHold").await,
        Err(Error::Server { status: 400, .. })
    ));
    assert!(matches!(
        admin.revoke("not-hex!", "keyCompromise").await,
        Err(Error::Server { status: 400, .. })
    ));

    // The CRL, rebuilt at once on this replica, lists it; openssl verifies the signature.
    let crl = fetch_crl(&server).await;
    let crl_file = dir.join("crl.der");
    std::fs::write(&crl_file, &crl).unwrap();
    let bundle = write(
        &dir,
        "bundle.pem",
        &format!("{}{}", revoked.intermediate_pem, revoked.root_pem),
    );
    let (ok, text, err) = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-text", "-noout", "-in"])
        .arg(&crl_file)
        .arg("-CAfile")
        .arg(&bundle));
    assert!(ok, "{err}");
    assert!(
        err.contains("verify OK") || text.contains("verify OK"),
        "{text}{err}"
    );
    assert!(text.contains(&revoked.serial.to_uppercase()), "{text}");
    assert!(!text.contains(&kept.serial.to_uppercase()), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    let number = |der: &[u8]| {
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
        crl.crl_number().unwrap().to_u64_digits()
    };
    assert!(number(&crl) > number(&crl_before), "CRL number increases");

    // OCSP: revoked, good, unknown, with and without a nonce.
    let revoked_pem = write(&dir, "revoked.pem", &revoked.leaf_pem);
    let out = openssl_ocsp(
        &dir,
        &server,
        &revoked,
        &["-cert", revoked_pem.to_str().unwrap()],
    );
    assert!(
        out.contains(": revoked") && out.contains("Response verify OK"),
        "{out}"
    );
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    let kept_pem = write(&dir, "kept.pem", &kept.leaf_pem);
    let out = openssl_ocsp(
        &dir,
        &server,
        &kept,
        &["-cert", kept_pem.to_str().unwrap(), "-no_nonce"],
    );
    assert!(
        out.contains(": good") && out.contains("Response verify OK"),
        "{out}"
    );
    let out = openssl_ocsp(
        &dir,
        &server,
        &kept,
        &["-serial", "0x1234567890abcdef1234567890abcdef"],
    );
    assert!(
        out.contains(": unknown") && out.contains("Response verify OK"),
        "{out}"
    );
    assert!(!out.contains("WARNING: no nonce"), "nonce echoed: {out}");
    server.stop().await;
}
both_backends!(
    revoke_shows_on_crl_and_ocsp_on,
    revoke_shows_on_crl_and_ocsp
);

/// Requests the responder must refuse: another CA's CertID, garbage, oversized, store down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_refusals() {
    let server = TestServer::start(Backend::Sqlite).await;
    let dir = server.dir.path().to_owned();
    let issued = issue(&server, WEB).await;
    // Another CA as issuer: unauthorized.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = params.self_signed(&other_key).unwrap();
    let other_pem = write(&dir, "other.pem", &other.pem());
    let root = write(&dir, "root.pem", &issued.root_pem);
    let (_, out, err) = run(Command::new("openssl")
        .arg("ocsp")
        .arg("-issuer")
        .arg(&other_pem)
        .args(["-serial", &format!("0x{}", issued.serial)])
        .args([
            "-url",
            &format!("{}/v1/ocsp/cluster.local", server.http_url()),
        ])
        .arg("-CAfile")
        .arg(&root));
    assert!(format!("{out}{err}").contains("unauthorized"), "{out}{err}");

    let post = |body: Vec<u8>| {
        let url = format!("{}/v1/ocsp/cluster.local", server.http_url());
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/ocsp-request")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED }: malformedRequest(1), tryLater(3).
    let malformed = [0x30, 0x03, 0x0a, 0x01, 0x01];
    let response = post(b"garbage".to_vec()).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/ocsp-response"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), malformed);
    let response = post(vec![0x30; 20 * 1024]).await;
    assert_eq!(
        response.status(),
        413,
        "oversized request refused before parsing"
    );
    let response = reqwest::get(format!("{}/v1/ocsp/cluster.local/%%%", server.http_url()))
        .await
        .unwrap();
    let body = response.bytes().await.unwrap();
    assert!(body.as_ref() == malformed || body.is_empty(), "{body:?}");

    // A real request over GET (base64 in the path) works.
    let req_file = dir.join("req.der");
    let int = write(&dir, "int.pem", &issued.intermediate_pem);
    let (ok, _, err) = run(Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&int)
        .args(["-serial", &format!("0x{}", issued.serial), "-reqout"])
        .arg(&req_file));
    assert!(ok, "{err}");
    let der = std::fs::read(&req_file).unwrap();
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&der);
    let url = format!(
        "{}/v1/ocsp/cluster.local/{}",
        server.http_url(),
        encoded.replace('/', "%2F").replace('+', "%2B")
    );
    let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        &body[..5],
        &[0x30, 0x82, body[2], body[3], 0x0a][..],
        "a successful response"
    );

    // Store down: tryLater, never "good".
    server.server.close_store_for_tests().await;
    let body = post(der).await.bytes().await.unwrap();
    assert_eq!(body.as_ref(), [0x30, 0x03, 0x0a, 0x01, 0x03]);
    server.stop().await;
}

/// A denied identity gets nothing on any path; lifting the deny lets it enrol again.
async fn denied_identity_everywhere(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(backend, &kube).await;
    let admin = server.admin_client();
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(WEB)).unwrap();
    let auth = TokenAuth {
        token: Some(kube.token("default", "web")),
        cluster_id: Some("Kubernetes".to_owned()),
    };
    let chain = client
        .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
        .await
        .unwrap();
    let live_chain_pem = chain[..chain.len() - 1].concat().into_bytes();
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let live_serial = hex::encode(cert.raw_serial());

    let denied = admin.deny(WEB, "compromised workload", true).await.unwrap();
    assert_eq!(denied["revoked_certificates"], 1);
    let id = denied["id"].as_str().unwrap().to_owned();
    // Denying again is idempotent.
    let again = admin.deny(WEB, "again", false).await.unwrap();
    assert_eq!(again["id"], denied["id"]);

    // Admin issue: 403.
    let err = admin.issue(&csr.csr_pem, WEB, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { status: 403, code, .. } if code == "identity_denied"),
        "{err:?}"
    );
    // Istio gRPC with a token: PERMISSION_DENIED.
    let err = client
        .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 7, .. }), "{err:?}");
    // ca.v1: PERMISSION_DENIED.
    let err = client.issue(&csr.csr_der, 0, &auth).await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 7, .. }), "{err:?}");
    // Impersonation by ztunnel: PERMISSION_DENIED too.
    let mut metadata = BTreeMap::new();
    metadata.insert("ImpersonatedIdentity".to_owned(), WEB.to_owned());
    let zt = TokenAuth {
        token: Some(kube.token("istio-system", "ztunnel")),
        cluster_id: Some("Kubernetes".to_owned()),
    };
    let err = client
        .create_certificate(&csr.csr_pem, 0, &zt, &metadata)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 7, .. }), "{err:?}");
    // mTLS renewal with the (now revoked) certificate: refused.
    let renewing = server
        .grpc_client(Some((live_chain_pem, csr.key_pem.as_bytes().to_vec())))
        .await;
    assert!(
        renewing
            .create_certificate(&csr.csr_pem, 0, &TokenAuth::default(), &BTreeMap::new())
            .await
            .is_err()
    );
    // Its certificate is revoked.
    let record = server
        .store()
        .await
        .certificates_by_serial(&live_serial)
        .await
        .unwrap();
    assert_eq!(
        record[0].revocation_reason.as_deref(),
        Some("privilegeWithdrawn")
    );
    // Listed.
    let list = admin.denied().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["spiffe_id"], WEB);

    // Lift: enrols again on every path.
    admin.lift_deny(&id).await.unwrap();
    assert!(matches!(
        admin.lift_deny(&id).await,
        Err(Error::Server { status: 404, .. })
    ));
    admin.issue(&csr.csr_pem, WEB, None).await.unwrap();
    client
        .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
        .await
        .unwrap();
    let audit = server.store().await.recent_audit(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "identity.deny" && e.outcome == "success")
    );
    assert!(
        audit
            .iter()
            .any(|e| e.action == "identity.lift_deny" && e.outcome == "success")
    );
    server.stop().await;
}
both_backends!(denied_identity_everywhere_on, denied_identity_everywhere);

/// CRL numbers never repeat, even with two replicas building at once on one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_numbers_across_replicas() {
    let url = ca_tests::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let config = ca_server::config::Config::ephemeral(dir.path(), &url);
    let a = ca_server::server::Server::start(config.clone())
        .await
        .unwrap();
    let b = ca_server::server::Server::start(config).await.unwrap();
    let td = ca_server::spiffe::TrustDomain::parse("cluster.local").unwrap();
    let mut numbers = Vec::new();
    for i in 0..20 {
        // Push each replica past half-life so every call builds a new CRL.
        let now = time::OffsetDateTime::now_utc() + time::Duration::hours(13 * (i + 1));
        let (x, y) = tokio::join!(a.ca.crl(&td, now), b.ca.crl(&td, now));
        numbers.push(x.unwrap().number);
        numbers.push(y.unwrap().number);
    }
    let mut sorted = numbers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        numbers.len(),
        "no CRL number used twice: {numbers:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// pkilint (PKIX profiles): no errors on an empty CRL, CRLs with 1 and 1,000 entries, and good /
/// revoked / unknown OCSP responses (with a nonce echoed on one of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_and_ocsp_responses_pass_pkilint() {
    use ca_server::ca::{Api, Request};
    use ca_server::revocation::Reason;
    // A thousand certificates for one identity in a second: the per-identity rate limit is off
    // for this CRL fixture.
    let dir = tempfile::tempdir().unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    for td in &mut config.trust_domains {
        td.identity_burst = 0;
    }
    let server = TestServer::start_with(config, dir).await;
    let ca = server.server.ca.clone();
    let dir = server.dir.path().to_owned();
    let td = ca_server::spiffe::TrustDomain::parse("cluster.local").unwrap();
    let authority = ca.authorities().get(&td).unwrap().clone();
    let far = time::OffsetDateTime::now_utc();
    let mut files = Vec::new();

    let empty = ca.crl(&td, far).await.unwrap();
    files.push(("lint_crl", write_bytes(&dir, "crl-0.der", &empty.der)));

    let id = ca_server::spiffe::SpiffeId::parse(WEB).unwrap();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let mut serials = Vec::new();
    for _ in 0..1000 {
        let enrolled = ca
            .enroll(
                &Request {
                    csr: &csr.csr_der,
                    spiffe_id: &id,
                    ttl: None,
                    requested_by: "lint",
                    request_id: "l",
                    api: Api::Admin,
                    authenticated_by: "admin_token",
                    impersonated: false,
                },
                far,
            )
            .await
            .unwrap();
        serials.push(enrolled.cert.serial.to_hex());
    }
    ca.revoke_serial(&serials[0], Reason::KeyCompromise, far)
        .await
        .unwrap();
    let one = ca.crl(&td, far).await.unwrap();
    files.push(("lint_crl", write_bytes(&dir, "crl-1.der", &one.der)));
    for (i, serial) in serials.iter().enumerate().skip(1) {
        let reason = Reason::ALL[i % Reason::ALL.len()];
        ca.revoke_serial(serial, reason, far).await.unwrap();
    }
    let thousand = ca.crl(&td, far).await.unwrap();
    assert_eq!(
        x509_parser::revocation_list::CertificateRevocationList::from_der(&thousand.der)
            .unwrap()
            .1
            .iter_revoked_certificates()
            .count(),
        1000
    );
    files.push(("lint_crl", write_bytes(&dir, "crl-1000.der", &thousand.der)));

    let good = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let good = ca
        .enroll(
            &Request {
                csr: &good.csr_der,
                spiffe_id: &id,
                ttl: None,
                requested_by: "lint",
                request_id: "l",
                api: Api::Admin,
                authenticated_by: "admin_token",
                impersonated: false,
            },
            far,
        )
        .await
        .unwrap();
    for (name, serial) in [
        ("good", good.cert.serial.to_hex()),
        ("revoked", serials[0].clone()),
        ("unknown", format!("7f{}", ca_tests::random_hex(15))),
    ] {
        let request = ca_tests::ocsp::request(&authority.intermediate_der, &serial);
        let response = ca
            .ocsp_answer("cluster.local", &request, far)
            .await
            .unwrap();
        files.push((
            "lint_ocsp_response",
            write_bytes(&dir, &format!("ocsp-{name}.der"), &response),
        ));
    }
    // With a nonce, via openssl's request maker.
    let req = dir.join("nonce-req.der");
    let int = write(
        &dir,
        "int.pem",
        &ca_tests::cert_pem(&authority.intermediate_der),
    );
    let (ok, _, err) = run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&int)
        .args(["-serial", &format!("0x{}", serials[1]), "-reqout"])
        .arg(&req));
    assert!(ok, "{err}");
    let response = ca
        .ocsp_answer("cluster.local", &std::fs::read(&req).unwrap(), far)
        .await
        .unwrap();
    files.push((
        "lint_ocsp_response",
        write_bytes(&dir, "ocsp-nonce.der", &response),
    ));

    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|(tool, file)| {
                scope.spawn(move || {
                    let args: &[&str] = if *tool == "lint_crl" {
                        &["-t", "CRL", "-p", "PKIX"]
                    } else {
                        &[]
                    };
                    (
                        file.clone(),
                        ca_tests::pkilint_at(tool, args, file, "ERROR"),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (file, codes) in results {
        assert!(
            codes.is_empty(),
            "pkilint errors on {}: {codes:?}",
            file.display()
        );
    }
    server.stop().await;
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// With `public_url`, issued certificates point at our CRL and OCSP endpoints; the gauges count
/// revocations and denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_and_revocation_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    config.listen.public_url = Some("https://ca.example.internal".to_owned());
    let server = TestServer::start_with(config, dir).await;
    let issued = issue(&server, WEB).await;
    let leaf = write(server.dir.path(), "leaf.pem", &issued.leaf_pem);
    let (ok, text, _) = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf));
    assert!(ok);
    assert!(
        text.contains("URI:https://ca.example.internal/v1/crl/cluster.local"),
        "{text}"
    );
    assert!(
        text.contains("OCSP - URI:https://ca.example.internal/v1/ocsp/cluster.local"),
        "{text}"
    );
    let codes = ca_tests::pkilint("lint_pkix_cert", &[], &leaf);
    assert!(
        codes.iter().all(|c| c == "pkix.invalid_uri_syntax"),
        "{codes:?}"
    );

    server
        .admin_client()
        .revoke(&issued.serial, "superseded")
        .await
        .unwrap();
    server
        .admin_client()
        .deny("spiffe://cluster.local/ns/bad/sa/actor", "", false)
        .await
        .unwrap();
    ca_server::jobs::refresh_gauges(&server.server.ca, time::OffsetDateTime::now_utc()).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("ca_revoked_certificates{trust_domain=\"cluster.local\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ca_denied_identities{trust_domain=\"cluster.local\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ca_crl_next_update_timestamp_seconds{trust_domain=\"cluster.local\"}"),
        "{metrics}"
    );
    server.stop().await;
}
