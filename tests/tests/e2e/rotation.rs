//! CA lifecycle, the part built: intermediate rotation under the same root, by the admin API and
//! by the schedule, across replicas; the retired generation keeps answering for its leaves
//! (mTLS renewal, OCSP, its own CRL) until they have expired, then it is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ca_client::{Error, KeyType, TokenAuth};
use ca_server::keys::Kek;
use ca_server::spiffe::TrustDomain;
use ca_tests::kube::FakeKube;
use ca_tests::ocsp::{self, Answer};
use ca_tests::{Backend, TestServer, both_backends};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

fn token_auth(token: &str) -> TokenAuth {
    TokenAuth {
        token: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    }
}

fn chain_pem(chain: &[String]) -> Vec<u8> {
    chain[..chain.len() - 1].concat().into_bytes()
}

fn leaf_of(chain: &[String]) -> Vec<u8> {
    pem::parse(&chain[0]).unwrap().into_contents()
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    hex::encode(cert.raw_serial())
}

fn aki_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap()
}

fn crl_distribution_point(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::CRLDistributionPoints(points) => {
                Some(format!("{points:?}"))
            }
            _ => None,
        })
        .unwrap()
}

fn crl_serials(der: &[u8]) -> BTreeSet<String> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

/// The DER OCSP response about `serial` under `issuer_der` (`None` when not HTTP 200).
async fn ocsp_response(server: &TestServer, issuer_der: &[u8], serial: &str) -> Option<Vec<u8>> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/ocsp/cluster.local", server.http_url()))
        .header("content-type", "application/ocsp-request")
        .body(ocsp::request(issuer_der, serial))
        .send()
        .await
        .unwrap();
    if !response.status().is_success() {
        return None;
    }
    Some(response.bytes().await.unwrap().to_vec())
}

async fn ocsp_status(server: &TestServer, issuer_der: &[u8], serial: &str) -> Option<Answer> {
    ocsp_response(server, issuer_der, serial)
        .await
        .map(|der| ocsp::answer(&der))
}

async fn get_crl(server: &TestServer, path: &str) -> Option<Vec<u8>> {
    let response = reqwest::get(format!("{}{path}", server.http_url()))
        .await
        .unwrap();
    response
        .status()
        .is_success()
        .then_some(response.bytes().await.unwrap().to_vec())
}

/// `openssl verify` of a leaf with its intermediate against a root.
fn openssl_verifies(dir: &std::path::Path, root_pem: &str, chain: &[String]) -> bool {
    let root = dir.join("rotation-root.pem");
    let intermediate = dir.join("rotation-int.pem");
    let leaf = dir.join("rotation-leaf.pem");
    std::fs::write(&root, root_pem).unwrap();
    std::fs::write(&intermediate, &chain[1]).unwrap();
    std::fs::write(&leaf, &chain[0]).unwrap();
    let (ok, _, _) = ca_tests::run(
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&intermediate)
            .arg(&leaf),
    );
    ok
}

async fn rotation_keeps_every_leaf_working(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(backend, &kube, |config| {
        config.listen.public_url = Some("https://ca.example.internal".to_owned());
    })
    .await;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let first = server.server.ca.authorities().get(&td).unwrap().clone();
    assert_eq!(first.generation, 1);
    let client = server.grpc_client(None).await;
    let none = BTreeMap::new();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let before = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "web")),
            &none,
        )
        .await
        .unwrap();
    let old_leaf = leaf_of(&before);
    assert!(
        crl_distribution_point(&old_leaf)
            .contains("https://ca.example.internal/v1/crl/cluster.local/1"),
        "each generation names its own CRL"
    );
    let root_pem = before.last().unwrap().clone();

    // The admin API rotates: 202 with the timeline.
    let admin = server.admin_client();
    let rotated = admin.rotate("cluster.local", "intermediate").await.unwrap();
    assert_eq!(rotated.body.generation, 2);
    assert_eq!(rotated.body.retired_generation, 1);
    assert!(rotated.body.next_rotation_at > rotated.body.activated_at);
    let second = server.server.ca.authorities().get(&td).unwrap().clone();
    assert_eq!(second.generation, 2);
    assert_ne!(second.issuer_key_id, first.issuer_key_id);
    assert_eq!(second.root_der, first.root_der, "same root");

    // New leaves come from the new intermediate; the trust set (last element) is unchanged.
    let after = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "api")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(aki_of(&leaf_of(&after)), second.intermediate_ski);
    assert_eq!(after.last().unwrap(), &root_pem);
    assert!(crl_distribution_point(&leaf_of(&after)).contains("/v1/crl/cluster.local/2"));
    let dir = server.dir.path();
    assert!(openssl_verifies(dir, &root_pem, &before));
    assert!(openssl_verifies(dir, &root_pem, &after));

    // The old leaf renews over mutual TLS (its intermediate is retired, not gone) and gets a
    // leaf of the new generation.
    let identity = (chain_pem(&before), csr.key_pem.as_bytes().to_vec());
    let renewing = server.grpc_client(Some(identity.clone())).await;
    let next = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let renewed = renewing
        .create_certificate(&next.csr_pem, 3600, &TokenAuth::default(), &none)
        .await
        .unwrap();
    assert_eq!(aki_of(&leaf_of(&renewed)), second.intermediate_ski);

    // OCSP answers for both generations; revoking the old leaf shows on generation 1's CRL only.
    let old_serial = serial_of(&old_leaf);
    let new_serial = serial_of(&leaf_of(&after));
    assert_eq!(
        ocsp_status(&server, &first.intermediate_der, &old_serial).await,
        Some(Answer::Good)
    );
    assert_eq!(
        ocsp_status(&server, &second.intermediate_der, &new_serial).await,
        Some(Answer::Good)
    );
    admin.revoke(&old_serial, "keyCompromise").await.unwrap();
    assert_eq!(
        ocsp_status(&server, &first.intermediate_der, &old_serial).await,
        Some(Answer::Revoked)
    );
    let crl_1 = get_crl(&server, "/v1/crl/cluster.local/1").await.unwrap();
    let crl_2 = get_crl(&server, "/v1/crl/cluster.local/2").await.unwrap();
    assert!(crl_serials(&crl_1).contains(&old_serial));
    assert!(crl_serials(&crl_2).is_empty());
    assert_eq!(
        get_crl(&server, "/v1/crl/cluster.local").await.unwrap(),
        crl_2,
        "the plain URL is the active generation's CRL"
    );
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_1).unwrap();
    let (_, intermediate_1) = X509Certificate::from_der(&first.intermediate_der).unwrap();
    crl.verify_signature(intermediate_1.public_key())
        .expect("generation 1's CRL is signed by generation 1's intermediate");
    for bad in [
        "/v1/crl/cluster.local/3",
        "/v1/crl/cluster.local/0",
        "/v1/crl/cluster.local/x",
    ] {
        assert!(get_crl(&server, bad).await.is_none(), "{bad}");
    }
    // The revoked old leaf may no longer renew.
    let result = server
        .grpc_client(Some(identity))
        .await
        .create_certificate(&next.csr_pem, 3600, &TokenAuth::default(), &none)
        .await;
    assert!(matches!(result, Err(Error::Server { .. })), "{result:?}");

    // The listing shows the timeline; metrics and audit record the transition.
    let listed = admin.trust_domains().await.unwrap();
    let cluster = listed
        .body
        .items
        .iter()
        .find(|t| t.name == "cluster.local")
        .unwrap();
    let states: Vec<(i64, &str)> = cluster
        .generations
        .iter()
        .map(|g| (g.generation, g.state.as_str()))
        .collect();
    assert_eq!(states, vec![(1, "retired"), (2, "active")]);
    assert!(cluster.generations[0].retired_at.is_some());
    assert!(cluster.generations[1].activated_at.is_some());
    assert!(cluster.generations[1].rotation_due_at.is_some());
    assert!(cluster.generations[0].rotation_due_at.is_none());
    let metrics = server.metrics().await;
    for line in [
        "ca_generation_state{trust_domain=\"cluster.local\",generation=\"1\",state=\"retired\"} 1",
        "ca_generation_state{trust_domain=\"cluster.local\",generation=\"2\",state=\"active\"} 1",
        "ca_generation_state{trust_domain=\"cluster.local\",generation=\"1\",state=\"active\"} 0",
        "ca_rotations_total{trust_domain=\"cluster.local\",scope=\"intermediate\",trigger=\"admin\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}");
    }
    let audit = server.store().await.recent_audit(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "ca.rotate" && e.outcome == "success")
    );

    // Refusals change nothing: bad scope, unknown trust domain, a role below admin.
    let raw = reqwest::Client::new();
    for (path, body, status) in [
        (
            "/admin/v1/trust-domains/cluster.local/rotate",
            r#"{"scope":"everything"}"#,
            400,
        ),
        (
            "/admin/v1/trust-domains/cluster.local/rotate",
            r#"{"scope":1}"#,
            400,
        ),
        (
            "/admin/v1/trust-domains/cluster.local/rotate",
            r#"{"unknown":1}"#,
            400,
        ),
        ("/admin/v1/trust-domains/nowhere.local/rotate", r#"{}"#, 404),
    ] {
        let response = raw
            .post(format!("{}{path}", server.admin_url()))
            .bearer_auth(&server.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path} {body}");
    }
    let operator = admin.create_token("ops", "operator", None).await.unwrap();
    let token = operator.json["token"].as_str().unwrap();
    let response = raw
        .post(format!(
            "{}/admin/v1/trust-domains/cluster.local/rotate",
            server.admin_url()
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        server
            .store()
            .await
            .generations("cluster.local")
            .await
            .unwrap()
            .len(),
        2,
        "no refusal made a generation"
    );

    // Once its last leaf has expired (plus the margin) generation 1 is removed: no more OCSP or
    // CRL for it, and generation 2 goes on.
    let kek = Kek::load_or_create(&server.config.kek_file).unwrap().0;
    let later = OffsetDateTime::now_utc() + time::Duration::days(3);
    server.server.ca.lifecycle_tick(&kek, later, true).await;
    let states: Vec<String> = server
        .store()
        .await
        .generations("cluster.local")
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.state)
        .collect();
    assert_eq!(states, vec!["removed", "active"]);
    assert!(get_crl(&server, "/v1/crl/cluster.local/1").await.is_none());
    // RFC 6960 `unauthorized` (6): a removed generation's leaves are not ours to answer for.
    assert_eq!(
        ocsp_status(&server, &first.intermediate_der, &old_serial).await,
        Some(Answer::Error(6)),
    );
    assert!(get_crl(&server, "/v1/crl/cluster.local/2").await.is_some());
    server.stop().await;
}
both_backends!(
    rotation_keeps_every_leaf_working,
    rotation_keeps_every_leaf_working
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_rotates_at_half_life() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let first = server.server.ca.authorities().get(&td).unwrap().clone();
    let kek = Kek::load_or_create(&server.config.kek_file).unwrap().0;
    let now = OffsetDateTime::now_utc();
    // Before half life: nothing happens.
    server.server.ca.lifecycle_tick(&kek, now, true).await;
    assert_eq!(
        server.server.ca.authorities().get(&td).unwrap().generation,
        1
    );
    let half = (first.intermediate_not_after - first.intermediate_not_before) / 2;
    let due =
        OffsetDateTime::from_unix_timestamp(first.intermediate_not_before + half + 60).unwrap();
    server.server.ca.lifecycle_tick(&kek, due, true).await;
    let second = server.server.ca.authorities().get(&td).unwrap().clone();
    assert_eq!(second.generation, 2);
    assert!(second.intermediate_not_after > first.intermediate_not_after);
    // Once per due time: the next tick does not rotate again.
    server.server.ca.lifecycle_tick(&kek, due, true).await;
    assert_eq!(
        server.server.ca.authorities().get(&td).unwrap().generation,
        2
    );
    let metrics = server.metrics().await;
    assert!(metrics.contains(
        "ca_rotations_total{trust_domain=\"cluster.local\",scope=\"intermediate\",trigger=\"schedule\"} 1"
    ));
    // Each trust domain keeps its own schedule: the other one, made at the same time, was due
    // too and rotated once.
    let eu = TrustDomain::parse("eu.cluster.local").unwrap();
    assert_eq!(
        server.server.ca.authorities().get(&eu).unwrap().generation,
        2
    );
    server.stop().await;
}

/// Three replicas on one Postgres race the same rotation: exactly one new generation, and every
/// replica issues under it after one lifecycle tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_rotation() {
    let url = ca_tests::fresh_postgres_database().await;
    let shared = tempfile::tempdir().unwrap();
    let kek_file = shared.path().join("kek");
    let kube = FakeKube::new();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        kube.write_jwks(&jwks);
        let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
        config.kek_file = kek_file.clone();
        config.clusters = ca_server::config::Config::from_toml(&format!(
            "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"{}\"\njwks_file = \"{}\"\n",
            ca_tests::kube::ISSUER,
            jwks.display()
        ))
        .unwrap()
        .clusters;
        replicas.push(TestServer::start_with(config, dir).await);
    }
    let kek = Kek::load_or_create(&kek_file).unwrap().0;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let now = OffsetDateTime::now_utc();
    let results = futures_join(
        replicas
            .iter()
            .map(|r| {
                let ca = r.server.ca.clone();
                let td = td.clone();
                let kek = Kek::load_or_create(&kek_file).unwrap().0;
                tokio::spawn(async move {
                    ca.rotate(
                        &kek,
                        &td,
                        ca_server::ca::lifecycle::Scope::Intermediate,
                        "schedule",
                        "server",
                        now,
                    )
                    .await
                    .is_ok()
                })
            })
            .collect(),
    )
    .await;
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
    let generations = replicas[0]
        .store()
        .await
        .generations("cluster.local")
        .await
        .unwrap();
    assert_eq!(
        generations
            .iter()
            .map(|g| (g.generation, g.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "retired"), (2, "active")]
    );
    // One tick later every replica issues under generation 2.
    for replica in &replicas {
        replica.server.ca.lifecycle_tick(&kek, now, false).await;
        let active = replica.server.ca.authorities().get(&td).unwrap().clone();
        assert_eq!(active.generation, 2);
        let client = replica.grpc_client(None).await;
        let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
        let chain = client
            .create_certificate(
                &csr.csr_pem,
                3600,
                &token_auth(&kube.token("default", "web")),
                &BTreeMap::new(),
            )
            .await
            .unwrap();
        assert_eq!(aki_of(&leaf_of(&chain)), active.intermediate_ski);
    }
    for replica in replicas {
        replica.server.shutdown().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    ca_tests::drop_postgres_database(&url).await.unwrap();
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<bool>>) -> Vec<bool> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn emergency_revocation_of_a_generation(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(backend, &kube).await;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let first = server.server.ca.authorities().get(&td).unwrap().clone();
    let client = server.grpc_client(None).await;
    let none = BTreeMap::new();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let before = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "web")),
            &none,
        )
        .await
        .unwrap();
    let serial = serial_of(&leaf_of(&before));
    // A leaf revoked on its own earlier keeps its own revocation.
    let early = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "early")),
            &none,
        )
        .await
        .unwrap();
    let early_serial = serial_of(&leaf_of(&early));
    let admin = server.admin_client();
    admin.revoke(&early_serial, "keyCompromise").await.unwrap();

    // Revoking the active generation activates a fresh one first.
    let revoked = admin
        .revoke_generation("cluster.local", 1, "cACompromise")
        .await
        .unwrap();
    assert!(revoked.body.newly_revoked);
    assert_eq!(revoked.body.active_generation, 2);
    let second = server.server.ca.authorities().get(&td).unwrap().clone();
    assert_eq!(second.generation, 2);
    assert_eq!(second.root_der, first.root_der);

    // Its leaves: OCSP says revoked; mTLS renewal is refused; the token path works and gets a
    // leaf of the new generation.
    assert_eq!(
        ocsp_status(&server, &first.intermediate_der, &serial).await,
        Some(Answer::Revoked)
    );
    assert_eq!(
        ocsp_status(&server, &first.intermediate_der, &early_serial).await,
        Some(Answer::Revoked)
    );
    let response = ocsp_response(&server, &first.intermediate_der, &serial)
        .await
        .unwrap();
    assert_eq!(
        ocsp::revocation_reason(&response),
        Some(2),
        "cACompromise (2)"
    );
    let early_response = ocsp_response(&server, &first.intermediate_der, &early_serial)
        .await
        .unwrap();
    assert_eq!(
        ocsp::revocation_reason(&early_response),
        Some(1),
        "its own earlier keyCompromise (1) stands"
    );
    let identity = (chain_pem(&before), csr.key_pem.as_bytes().to_vec());
    let next = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let result = server
        .grpc_client(Some(identity))
        .await
        .create_certificate(&next.csr_pem, 3600, &TokenAuth::default(), &none)
        .await;
    assert!(matches!(result, Err(Error::Server { .. })), "{result:?}");
    let after = client
        .create_certificate(
            &next.csr_pem,
            3600,
            &token_auth(&kube.token("default", "web")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(aki_of(&leaf_of(&after)), second.intermediate_ski);

    // The root-signed CRL lists the revoked intermediate, with its reason.
    let root_crl = get_crl(&server, "/v1/crl/cluster.local/root")
        .await
        .unwrap();
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&root_crl).unwrap();
    let (_, root) = X509Certificate::from_der(&first.root_der).unwrap();
    crl.verify_signature(root.public_key())
        .expect("signed by the root");
    let listed: Vec<(String, Option<u8>)> = crl
        .iter_revoked_certificates()
        .map(|r| {
            (
                hex::encode(r.raw_serial()),
                r.reason_code().map(|(_, code)| code.0),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![(serial_of(&first.intermediate_der), Some(2))],
        "{listed:?}"
    );
    // openssl agrees: the old intermediate is revoked by its root.
    let dir = server.dir.path();
    std::fs::write(dir.join("e-root.pem"), ca_tests::cert_pem(&first.root_der)).unwrap();
    std::fs::write(
        dir.join("e-int.pem"),
        ca_tests::cert_pem(&first.intermediate_der),
    )
    .unwrap();
    std::fs::write(
        dir.join("e-root-crl.pem"),
        pem::encode(&pem::Pem::new("X509 CRL", root_crl.clone())),
    )
    .unwrap();
    let (ok, out, err) = ca_tests::run(
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-crl_check")
            .arg("-CAfile")
            .arg(dir.join("e-root.pem"))
            .arg("-CRLfile")
            .arg(dir.join("e-root-crl.pem"))
            .arg(dir.join("e-int.pem")),
    );
    assert!(
        !ok && format!("{out}{err}").contains("revoked"),
        "{out}{err}"
    );

    // Idempotent; unknown generation 404; bad reason 400; nothing changed by refusals.
    let again = admin
        .revoke_generation("cluster.local", 1, "cACompromise")
        .await
        .unwrap();
    assert!(!again.body.newly_revoked);
    let raw = reqwest::Client::new();
    for (path, body, status) in [
        (
            "/admin/v1/trust-domains/cluster.local/generations/9/revoke",
            "{}",
            404,
        ),
        (
            "/admin/v1/trust-domains/cluster.local/generations/x/revoke",
            "{}",
            404,
        ),
        (
            "/admin/v1/trust-domains/nowhere/generations/1/revoke",
            "{}",
            404,
        ),
        (
            "/admin/v1/trust-domains/cluster.local/generations/2/revoke",
            r#"{"reason":"because"}"#,
            400,
        ),
        (
            "/admin/v1/trust-domains/cluster.local/generations/2/revoke",
            r#"{"extra":1}"#,
            400,
        ),
    ] {
        let response = raw
            .post(format!("{}{path}", server.admin_url()))
            .bearer_auth(&server.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path} {body}");
    }
    let states: Vec<String> = server
        .store()
        .await
        .generations("cluster.local")
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.state)
        .collect();
    assert_eq!(states, vec!["revoked", "active"]);
    let audit = server.store().await.recent_audit(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "ca.generation.revoke" && e.outcome == "success")
    );
    server.stop().await;
}
both_backends!(
    emergency_revocation_of_a_generation,
    emergency_revocation_of_a_generation
);

fn pem_count(text: &str) -> usize {
    pem::parse_many(text).unwrap().len()
}

async fn root_rotation_publishes_first_and_activates_when_converged(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(backend, &kube, |config| {
        for td in &mut config.trust_domains {
            td.refresh_hint = Duration::from_secs(2);
            td.root_activation_max_wait = Duration::from_secs(3600);
        }
    })
    .await;
    let ca = &server.server.ca;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let first = ca.authorities().get(&td).unwrap().clone();
    let sequence_before = ca.bundle_sequence(&td);
    let client = server.grpc_client(None).await;
    let none = BTreeMap::new();
    let old_csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let old = client
        .create_certificate(
            &old_csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "old")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(pem_count(old.last().unwrap()), 1);

    // Start: the new root is published (prepared), signs nothing yet.
    let admin = server.admin_client();
    let started = admin.rotate("cluster.local", "root").await.unwrap();
    assert_eq!(started.body.state, "prepared");
    assert_eq!(started.body.generation, 2);
    let prepared = ca.authorities().prepared(&td).unwrap().clone();
    assert_ne!(prepared.root_der, first.root_der, "a new root");
    assert_eq!(
        ca.authorities().get(&td).unwrap().generation,
        1,
        "still signing"
    );
    assert_eq!(ca.bundle_sequence(&td), sequence_before + 1, "published");
    let bundle = reqwest::get(format!(
        "{}/v1/bundles/cluster.local.pem",
        server.http_url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(pem_count(&bundle), 2, "old and new roots: {bundle}");

    // A leaf issued now still chains to the old root, and its holder gets both roots. (Leaves
    // of the publication's own second count as unconverged: wait for the next one.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh_csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let fresh = client
        .create_certificate(
            &fresh_csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "fresh")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(aki_of(&leaf_of(&fresh)), first.intermediate_ski);
    assert_eq!(pem_count(fresh.last().unwrap()), 2);
    assert!(openssl_verifies(
        server.dir.path(),
        fresh.last().unwrap(),
        &fresh
    ));

    // In flight: a second root rotation or an intermediate rotation is refused (409).
    for scope in ["root", "intermediate"] {
        match admin.rotate("cluster.local", scope).await {
            Err(Error::Server { status: 409, .. }) => {}
            other => panic!("{scope}: {other:?}"),
        }
    }

    // Not converged: the old leaf (issued before publication) is live. Half converged.
    let kek = Kek::load_or_create(&server.config.kek_file).unwrap().0;
    let now = OffsetDateTime::now_utc();
    ca.lifecycle_tick(&kek, now + time::Duration::seconds(10), true)
        .await;
    assert_eq!(ca.authorities().get(&td).unwrap().generation, 1);
    assert!(
        server
            .metrics()
            .await
            .contains("ca_rotation_convergence_ratio{trust_domain=\"cluster.local\"} 0.5")
    );
    // Its holder is gone (revoked): every live leaf is fresh, 3 refresh hints passed: activate.
    admin
        .revoke(&serial_of(&leaf_of(&old)), "superseded")
        .await
        .unwrap();
    ca.lifecycle_tick(&kek, now + time::Duration::seconds(10), true)
        .await;
    let active = ca.authorities().get(&td).unwrap().clone();
    assert_eq!(active.generation, 2);
    assert_eq!(active.root_der, prepared.root_der);
    assert!(ca.authorities().prepared(&td).is_none());

    // New leaves chain to the new root; the old root stays trusted while its leaves live.
    let new_csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let new = client
        .create_certificate(
            &new_csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "new")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(aki_of(&leaf_of(&new)), active.intermediate_ski);
    assert_eq!(pem_count(new.last().unwrap()), 2);
    assert!(openssl_verifies(
        server.dir.path(),
        new.last().unwrap(),
        &new
    ));
    // Both renew over mutual TLS: the new root's leaf (the client verifier follows the roots)
    // and the old root's (its generation is retired, not gone).
    for (chain, csr) in [(&new, &new_csr), (&fresh, &fresh_csr)] {
        let identity = (chain_pem(chain), csr.key_pem.as_bytes().to_vec());
        let next = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
        let renewed = server
            .grpc_client(Some(identity))
            .await
            .create_certificate(&next.csr_pem, 3600, &TokenAuth::default(), &none)
            .await
            .unwrap();
        assert_eq!(aki_of(&leaf_of(&renewed)), active.intermediate_ski);
    }

    // Once the old generation's leaves have expired it is removed and the old root leaves
    // every trust set (the sequence bumps again).
    let sequence_overlap = ca.bundle_sequence(&td);
    ca.lifecycle_tick(&kek, now + time::Duration::days(3), true)
        .await;
    assert_eq!(ca.bundle_sequence(&td), sequence_overlap + 1);
    let last = client
        .create_certificate(
            &new_csr.csr_pem,
            3600,
            &token_auth(&kube.token("default", "new")),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(pem_count(last.last().unwrap()), 1);
    assert_eq!(
        pem::parse(last.last().unwrap()).unwrap().contents(),
        prepared.root_der.as_slice()
    );
    let audit = server.store().await.recent_audit(100).await.unwrap();
    for action in [
        "ca.root.publish",
        "ca.root.activate",
        "ca.generation.remove",
    ] {
        assert!(audit.iter().any(|e| e.action == action), "{action}");
    }

    // The other trust domain: a leaf that never converges does not block activation past
    // root_activation_max_wait (1 h here).
    let eu = TrustDomain::parse("eu.cluster.local").unwrap();
    let eu_csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    admin
        .issue(
            &eu_csr.csr_pem,
            "spiffe://eu.cluster.local/ns/a/sa/b",
            Some("20h"),
        )
        .await
        .unwrap();
    admin.rotate("eu.cluster.local", "root").await.unwrap();
    ca.lifecycle_tick(&kek, now + time::Duration::minutes(30), true)
        .await;
    assert_eq!(ca.authorities().get(&eu).unwrap().generation, 1, "waits");
    ca.lifecycle_tick(&kek, now + time::Duration::minutes(61), true)
        .await;
    assert_eq!(
        ca.authorities().get(&eu).unwrap().generation,
        2,
        "maximum wait"
    );
    server.stop().await;
}
both_backends!(
    root_rotation_publishes_first_and_activates_when_converged,
    root_rotation_publishes_first_and_activates_when_converged
);
