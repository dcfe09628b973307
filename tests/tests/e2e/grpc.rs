//! The Istio CA API over real TLS gRPC: istio-agent- and ztunnel-shaped requests, renewal over
//! mutual TLS, and every authentication and authorization refusal with its status code.

use std::collections::BTreeMap;

use ca_client::{Error, KeyType, TokenAuth, WorkloadClient};
use ca_tests::kube::{FakeKube, SigningKey, alg_none_token};
use ca_tests::{Backend, TestServer, both_backends};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::profile::{assert_svid_profile, openssl_verify};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

fn token_auth(token: &str) -> TokenAuth {
    TokenAuth {
        token: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    }
}

fn code_of(result: Result<Vec<String>, Error>) -> Code {
    match result {
        Err(Error::Server { status, .. }) => Code::from_i32(i32::from(status)),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// Checks Istio's response shape and verifies the chain to its last element with openssl.
fn check_istio_chain(
    dir: &std::path::Path,
    chain: &[String],
    spiffe_id: &str,
    rsa: bool,
) -> Vec<u8> {
    assert!(chain.len() >= 3, "leaf, intermediate, roots");
    assert!(
        chain.iter().all(|e| e.ends_with('\n')),
        "every element newline-terminated"
    );
    for element in &chain[..chain.len() - 1] {
        assert_eq!(
            pem::parse_many(element).unwrap().len(),
            1,
            "one certificate per element"
        );
    }
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    assert_svid_profile(&leaf, spiffe_id, rsa);
    let (ok, out) = openssl_verify(dir, chain.last().unwrap(), &chain[1], &chain[0]);
    assert!(ok, "{out}");
    leaf
}

async fn istio_agent_and_ztunnel_requests(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(backend, &kube).await;
    let client = server.grpc_client(None).await;
    let dir = server.dir.path();

    // istio-agent: RSA-2048, `O=` subject, one critical URI SAN = the caller; RS256 token.
    let agent_csr = ca_client::csr::generate_istio_style(KeyType::Rsa2048, WEB).unwrap();
    let token = kube.keys[1].sign(&FakeKube::claims("default", "web"));
    let mut metadata = BTreeMap::new();
    metadata.insert("CertSigner".to_owned(), String::new());
    let chain = client
        .create_certificate(&agent_csr.csr_pem, 3600, &token_auth(&token), &metadata)
        .await
        .unwrap();
    let leaf = check_istio_chain(dir, &chain, WEB, true);
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(
        cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
        3660
    );

    // ztunnel (dedicated mode): P-256, empty subject, no metadata, ES256 token.
    let zt_id = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
    let zt_csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(zt_id)).unwrap();
    let chain = client
        .create_certificate(
            &zt_csr.csr_pem,
            0,
            &token_auth(&kube.token("istio-system", "ztunnel")),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    check_istio_chain(dir, &chain, zt_id, false);

    // ztunnel as node proxy: impersonates a workload of its trust domain.
    let target = "spiffe://cluster.local/ns/shop/sa/cart";
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(target)).unwrap();
    let mut metadata = BTreeMap::new();
    metadata.insert("ImpersonatedIdentity".to_owned(), target.to_owned());
    let chain = client
        .create_certificate(
            &csr.csr_pem,
            0,
            &token_auth(&kube.token("istio-system", "ztunnel")),
            &metadata,
        )
        .await
        .unwrap();
    check_istio_chain(dir, &chain, target, false);

    // Renewal over mutual TLS with the agent's certificate.
    let identity = (
        chain_pem(&chain_for(&client, &kube, &agent_csr).await),
        agent_csr.key_pem.as_bytes().to_vec(),
    );
    let renewing = server.grpc_client(Some(identity)).await;
    let renew_csr = ca_client::csr::generate_istio_style(KeyType::EcdsaP256, WEB).unwrap();
    let chain = renewing
        .create_certificate(
            &renew_csr.csr_pem,
            0,
            &TokenAuth::default(),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    check_istio_chain(dir, &chain, WEB, false);

    let records = server.store().await.count_certificates().await.unwrap();
    assert_eq!(
        records, 6,
        "five workload certificates and the serving certificate, all recorded"
    );
    server.stop().await;
}
both_backends!(istio_requests_on, istio_agent_and_ztunnel_requests);

async fn chain_for(
    client: &WorkloadClient,
    kube: &FakeKube,
    csr: &ca_client::csr::KeyAndCsr,
) -> Vec<String> {
    client
        .create_certificate(
            &csr.csr_pem,
            0,
            &token_auth(&kube.token("default", "web")),
            &BTreeMap::new(),
        )
        .await
        .unwrap()
}

fn chain_pem(chain: &[String]) -> Vec<u8> {
    chain[..chain.len() - 1].concat().into_bytes()
}

/// (name, CSR PEM, auth, metadata, validity_duration, expected code)
type Case<'a> = (
    &'a str,
    &'a str,
    TokenAuth,
    BTreeMap<String, String>,
    i64,
    Code,
);

/// Every refusal: the right status code, and no certificate row written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_right_codes() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(WEB)).unwrap();
    let bare_csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let good = kube.token("default", "web");
    let stranger = SigningKey::es256("es-1"); // same kid, a key the JWKS does not hold
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let mut expired = FakeKube::claims("default", "web");
    expired["exp"] = (now - 600).into();
    expired["nbf"] = (now - 4000).into();
    let mut wrong_aud = FakeKube::claims("default", "web");
    wrong_aud["aud"] = serde_json::json!(["https://kubernetes.default.svc"]);
    let mut no_exp = FakeKube::claims("default", "web");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_iss = FakeKube::claims("default", "web");
    wrong_iss["iss"] = "https://evil.example".into();
    let mut future = FakeKube::claims("default", "web");
    future["nbf"] = (now + 3600).into();
    let mut not_sa = FakeKube::claims("default", "web");
    not_sa["sub"] = "system:node:worker-1".into();

    let other_ns = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://cluster.local/ns/kube-system/sa/web"),
    )
    .unwrap();
    let other_td = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://eu.cluster.local/ns/default/sa/web"),
    )
    .unwrap();
    let with_dns = {
        let key = ca_client::csr::generate_key(KeyType::EcdsaP256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["web.default.svc".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.serialize_request(&key).unwrap().pem().unwrap()
    };

    let none = TokenAuth::default();
    let unknown_cluster = TokenAuth {
        token: Some(good.clone()),
        cluster_id: Some("other-cluster".to_owned()),
    };
    let impersonate = |id: &str| {
        let mut m = BTreeMap::new();
        m.insert("ImpersonatedIdentity".to_owned(), id.to_owned());
        m
    };
    let empty = BTreeMap::new();
    let ztunnel = kube.token("istio-system", "ztunnel");
    let mut signer = BTreeMap::new();
    signer.insert("CertSigner".to_owned(), "istio-system-signer".to_owned());

    let cases: Vec<Case<'_>> = vec![
        (
            "no credentials",
            &csr.csr_pem,
            none.clone(),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "alg none",
            &csr.csr_pem,
            token_auth(&alg_none_token(&FakeKube::claims("default", "web"))),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "expired token",
            &csr.csr_pem,
            token_auth(&kube.keys[0].sign(&expired)),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "no exp",
            &csr.csr_pem,
            token_auth(&kube.keys[0].sign(&no_exp)),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "not yet valid",
            &csr.csr_pem,
            token_auth(&kube.keys[0].sign(&future)),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "wrong audience",
            &csr.csr_pem,
            token_auth(&kube.keys[0].sign(&wrong_aud)),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "wrong issuer",
            &csr.csr_pem,
            token_auth(&kube.keys[0].sign(&wrong_iss)),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "not a service account",
            &csr.csr_pem,
            token_auth(&kube.keys[0].sign(&not_sa)),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "unknown cluster id",
            &csr.csr_pem,
            unknown_cluster,
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "key not in the JWKS",
            &csr.csr_pem,
            token_auth(&stranger.sign(&FakeKube::claims("default", "web"))),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "garbage token",
            &csr.csr_pem,
            token_auth("not.a.jwt"),
            empty.clone(),
            0,
            Code::Unauthenticated,
        ),
        (
            "CSR for another namespace",
            &other_ns.csr_pem,
            token_auth(&good),
            empty.clone(),
            0,
            Code::InvalidArgument,
        ),
        (
            "CSR for another trust domain",
            &other_td.csr_pem,
            token_auth(&good),
            empty.clone(),
            0,
            Code::InvalidArgument,
        ),
        (
            "CSR with a DNS SAN",
            &with_dns,
            token_auth(&good),
            empty.clone(),
            0,
            Code::InvalidArgument,
        ),
        (
            "impersonation by a workload",
            &bare_csr.csr_pem,
            token_auth(&good),
            impersonate("spiffe://cluster.local/ns/shop/sa/cart"),
            0,
            Code::Unauthenticated,
        ),
        (
            "impersonation across trust domains",
            &bare_csr.csr_pem,
            token_auth(&ztunnel),
            impersonate("spiffe://eu.cluster.local/ns/shop/sa/cart"),
            0,
            Code::Unauthenticated,
        ),
        (
            "impersonation of a non-workload ID",
            &bare_csr.csr_pem,
            token_auth(&ztunnel),
            impersonate("spiffe://cluster.local/admin"),
            0,
            Code::Unauthenticated,
        ),
        (
            "unknown CertSigner",
            &csr.csr_pem,
            token_auth(&good),
            signer,
            0,
            Code::PermissionDenied,
        ),
        (
            "absurd validity",
            &csr.csr_pem,
            token_auth(&good),
            empty.clone(),
            i64::MAX,
            Code::InvalidArgument,
        ),
        (
            "CSR not PEM",
            "hello",
            token_auth(&good),
            empty.clone(),
            0,
            Code::InvalidArgument,
        ),
    ];
    for (name, csr_pem, auth, metadata, validity, expected) in cases {
        let result = client
            .create_certificate(csr_pem, validity, &auth, &metadata)
            .await;
        assert_eq!(code_of(result), expected, "{name}");
    }
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        1,
        "only the serving certificate"
    );

    // Forwarded identity headers are never read.
    let mut request = tonic::Request::new(ca_proto::istio::IstioCertificateRequest {
        csr: csr.csr_pem.clone(),
        validity_duration: 0,
        metadata: None,
    });
    request.metadata_mut().insert(
        "x-forwarded-client-cert",
        format!("By=spiffe://cluster.local/ns/istio-system/sa/gw;URI={WEB}")
            .parse()
            .unwrap(),
    );
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", server.server.grpc_addr))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        server.serving_root_pem(),
                    ))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
    let status =
        ca_proto::istio::istio_certificate_service_client::IstioCertificateServiceClient::new(
            channel.clone(),
        )
        .create_certificate(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "request authenticate failure",
        "opaque message"
    );

    // Longer than max_ttl is clamped (24h), not refused.
    let chain = client
        .create_certificate(&csr.csr_pem, 7 * 86_400, &token_auth(&good), &empty)
        .await
        .unwrap();
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(
        cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
        86_400 + 60
    );

    // Health and metrics.
    let status = tonic_health_check(channel).await;
    assert_eq!(status, 1, "SERVING");
    let metrics = server.metrics().await;
    for needle in [
        "ca_authn_failures_total{reason=\"token_expired\"} 1",
        "ca_authn_failures_total{reason=\"no_credentials\"} 2",
        "ca_authn_failures_total{reason=\"token_algorithm\"} 1",
        "ca_authn_failures_total{reason=\"impersonation_cross_trust_domain\"} 1",
        "ca_ttl_clamped_total{trust_domain=\"cluster.local\"} 1",
        "ca_certificates_issued_total{trust_domain=\"cluster.local\",api=\"istio\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    server.stop().await;
}

async fn tonic_health_check(channel: tonic::transport::Channel) -> i32 {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "istio.v1.auth.IstioCertificateService".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// A revoked certificate cannot renew; neither can one we never issued (another CA's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_refusals() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(WEB)).unwrap();
    let chain = client
        .create_certificate(
            &csr.csr_pem,
            0,
            &token_auth(&kube.token("default", "web")),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let identity = (chain_pem(&chain), csr.key_pem.as_bytes().to_vec());
    let renewing = server.grpc_client(Some(identity.clone())).await;
    let next = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    renewing
        .create_certificate(&next.csr_pem, 0, &TokenAuth::default(), &BTreeMap::new())
        .await
        .unwrap();

    // Revoke it through the store, then renewal fails.
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let serial = hex::encode(cert.raw_serial());
    let issuer = server
        .server
        .ca
        .authorities()
        .iter()
        .find(|a| a.trust_domain.as_str() == "cluster.local")
        .unwrap()
        .issuer_key_id
        .clone();
    assert!(
        server
            .store()
            .await
            .revoke(&issuer, &serial, "keyCompromise", 1)
            .await
            .unwrap()
    );
    let renewing = server.grpc_client(Some(identity)).await;
    let result = renewing
        .create_certificate(&next.csr_pem, 0, &TokenAuth::default(), &BTreeMap::new())
        .await;
    assert_eq!(code_of(result), Code::Unauthenticated);

    // A certificate from a CA we do not know fails the TLS handshake itself.
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(WEB.try_into().unwrap())];
    let foreign = params.self_signed(&foreign_key).unwrap();
    let result = WorkloadClient::connect(&ca_client::ConnectOptions {
        address: server.server.grpc_addr.to_string(),
        ca_pem: server.serving_root_pem(),
        server_name: Some("localhost".to_owned()),
        client_identity: Some((
            foreign.pem().into_bytes(),
            foreign_key.serialize_pem().into_bytes(),
        )),
    })
    .await;
    match result {
        Err(_) => {}
        Ok(client) => {
            let r = client
                .create_certificate(&next.csr_pem, 0, &TokenAuth::default(), &BTreeMap::new())
                .await;
            assert!(
                r.is_err(),
                "a foreign client certificate must not get through"
            );
        }
    }
    server.stop().await;
}

/// ca.v1: structured answer, same authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_v1_issue_and_bundles() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let answer = client
        .issue(
            &csr.csr_der,
            7200,
            &token_auth(&kube.token("default", "web")),
        )
        .await
        .unwrap();
    assert_eq!(answer.spiffe_id, WEB);
    assert_eq!(answer.not_after - answer.not_before, 7260);
    let half = answer.not_before + (answer.not_after - answer.not_before) / 2;
    assert!((answer.renew_after - half).abs() <= (answer.not_after - answer.not_before) / 20 + 1);
    assert_eq!(answer.chain.len(), 2);
    assert_eq!(answer.trust_bundle.len(), 1);
    assert_svid_profile(&answer.chain[0], WEB, false);
    assert_eq!(the_record(&server, &answer.serial).await.api, "ca.v1");
    let err = client
        .issue(&csr.csr_der, 0, &TokenAuth::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 16, .. }), "{err:?}");
    server.stop().await;
}

/// JWKS from an https URL (served on loopback with a test CA given as `jwks_ca_file`), and key
/// rotation: a token signed by a key added to the JWKS after start is refused within the reload
/// interval and accepted once the interval has passed and its unknown `kid` reloads the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_and_key_rotation() {
    use std::sync::{Arc, Mutex};
    let kube = FakeKube::new();
    let jwks = Arc::new(Mutex::new(
        serde_json::json!({"keys": [kube.keys[0].jwk.clone()]}),
    ));
    let served = jwks.clone();
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    // A test CA and a serving certificate for 127.0.0.1, made now.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(ca_server::http::tls_serve::serve(
        listener,
        Arc::new(tls),
        app,
        stop_rx,
    ));

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("jwks-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    config.clusters = ca_server::config::Config::from_toml(&format!(
        "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"{}\"\njwks_url = \"https://{jwks_addr}/openid/v1/jwks\"\njwks_ca_file = {:?}\njwks_reload_min_interval = \"2s\"\n",
        ca_tests::kube::ISSUER,
        ca_file.display().to_string(),
    ))
    .unwrap()
    .clusters;
    let server = TestServer::start_with(config, dir).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let es = kube.keys[0].sign(&FakeKube::claims("default", "web"));
    client
        .create_certificate(&csr.csr_pem, 0, &token_auth(&es), &BTreeMap::new())
        .await
        .unwrap();

    // The RSA key is not published yet: refused (after the interval, so this refusal's unknown
    // kid reloads the JWKS, and the interval starts again now).
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let rs = kube.keys[1].sign(&FakeKube::claims("default", "web"));
    let refused = client
        .create_certificate(&csr.csr_pem, 0, &token_auth(&rs), &BTreeMap::new())
        .await;
    assert_eq!(code_of(refused), Code::Unauthenticated);
    // Publish it: within the reload interval the unknown kid does not reload (refused again);
    // after it, the unknown kid reloads the JWKS.
    jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(kube.keys[1].jwk.clone());
    let refused = client
        .create_certificate(&csr.csr_pem, 0, &token_auth(&rs), &BTreeMap::new())
        .await;
    assert_eq!(code_of(refused), Code::Unauthenticated);
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    client
        .create_certificate(&csr.csr_pem, 0, &token_auth(&rs), &BTreeMap::new())
        .await
        .unwrap();
    server.stop().await;
}

/// The serving certificate is renewed at two thirds of its life, recorded, and used by new
/// handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_renews() {
    let server = TestServer::start(Backend::Sqlite).await;
    let ca = &server.server.ca;
    let now = time::OffsetDateTime::now_utc();
    let serving = ca_server::tls::ServingIdentity::new(ca, now).await.unwrap();
    let first = serving.not_after();
    assert!(
        !serving
            .renew_if_due(ca, now + time::Duration::hours(1))
            .await
            .unwrap()
    );
    let later = now + time::Duration::hours(17);
    assert!(serving.renew_if_due(ca, later).await.unwrap());
    assert!(serving.not_after() > first);
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        3,
        "start, new(), renewal"
    );
    server.stop().await;
}

/// Server reflection lists every service on the gRPC port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = TestServer::start(Backend::Sqlite).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", server.server.grpc_addr))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        server.serving_root_pem(),
                    ))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "istio.v1.auth.IstioCertificateService",
        "ca.v1.CertificateAuthority",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    server.stop().await;
}

/// The one issuance record of `serial` (there must be exactly one).
async fn the_record(server: &TestServer, serial: &str) -> ca_server::store::CertificateRecord {
    let mut records = server
        .store()
        .await
        .certificates_by_serial(serial)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{serial}");
    records.remove(0)
}

/// The serial (lower-case hex) of the certificate in a PEM chain element.
fn serial_of(pem_element: &str) -> String {
    let der = pem::parse(pem_element).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    hex::encode(cert.raw_serial())
}

/// A workload gets the same answer as istio-agent, the certificate it received is recorded, a
/// second request on the same connection is answered too, and the workload issuance and a
/// refusal reach the audit chain (it is written in batches, so this waits for it).
async fn workload_issuance_and_audit(backend: Backend) {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(backend, &kube).await;
    let client = server.grpc_client(None).await;
    let auth = token_auth(&kube.token("default", "web"));
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let chain = client
        .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
        .await
        .unwrap();
    check_istio_chain(server.dir.path(), &chain, WEB, false);
    let serial = serial_of(&chain[0]);
    let record = the_record(&server, &serial).await;
    assert_eq!(record.spiffe_id, WEB);
    assert_eq!(record.api, "istio");

    let again = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let chain = client
        .create_certificate(&again.csr_pem, 0, &auth, &BTreeMap::new())
        .await
        .unwrap();
    check_istio_chain(server.dir.path(), &chain, WEB, false);

    let refused = client
        .create_certificate("not a CSR", 0, &auth, &BTreeMap::new())
        .await;
    // INVALID_ARGUMENT: authenticated, then the CSR refused.
    assert_eq!(code_of(refused), Code::InvalidArgument);

    let mut events = Vec::new();
    for _ in 0..100 {
        events = server.store().await.recent_audit(10).await.unwrap();
        if events.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let issued = events
        .iter()
        .find(|e| e.outcome == "success" && e.detail.contains(&serial))
        .expect("the issuance is audited");
    assert_eq!(issued.action, "certificate.issue");
    assert_eq!(issued.target, WEB);
    assert_eq!(issued.request_id, record.request_id);
    assert!(
        events
            .iter()
            .any(|e| e.outcome == "rejected" && e.detail.contains("csr")),
        "{events:?}"
    );
    let mut all = server.store().await.audit_page(None, 100).await.unwrap();
    all.reverse();
    assert_eq!(ca_server::audit::verify(&all).unwrap(), all.len());
    server.stop().await;
}
both_backends!(workload_audit_on, workload_issuance_and_audit);

/// `ca-bench --ztunnel --streams N`'s shape with ztunnel's own HTTP/2 stack (tonic's `h2`: the
/// token Huffman-coded and never indexed): one connection authenticated as a node's ztunnel keeps
/// many requests in flight, each asking for another workload's identity. Every one is issued
/// for the impersonated identity (not the ztunnel's own) and recorded so; a workload token
/// asking the same is refused, so these requests do take the impersonation path.
#[tokio::test]
async fn ztunnel_multiplexes_impersonation() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    // One tonic channel: one HTTP/2 connection.
    let ztunnel = server.grpc_client(None).await;
    let ztunnel_auth = token_auth(&kube.token("istio-system", "ztunnel"));
    let target = |k: usize| format!("spiffe://cluster.local/ns/bench/sa/pod{k}");
    let impersonate = |k: usize| BTreeMap::from([("ImpersonatedIdentity".to_owned(), target(k))]);
    // All 24 are spawned at once: they share the one HTTP/2 connection as concurrent streams.
    let calls: Vec<_> = (0..24)
        .map(|k| {
            let (ztunnel, auth, metadata) = (ztunnel.clone(), ztunnel_auth.clone(), impersonate(k));
            tokio::spawn(async move {
                let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
                ztunnel
                    .create_certificate(&csr.csr_pem, 0, &auth, &metadata)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for (k, call) in calls.into_iter().enumerate() {
        answers.push((k, call.await.unwrap()));
    }
    let mut serials = std::collections::HashSet::new();
    for (k, chain) in answers {
        check_istio_chain(server.dir.path(), &chain, &target(k), false);
        let serial = serial_of(&chain[0]);
        assert_eq!(the_record(&server, &serial).await.spiffe_id, target(k));
        assert!(serials.insert(serial));
    }
    assert_eq!(serials.len(), 24);

    let workload = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let refused = workload
        .create_certificate(
            &csr.csr_pem,
            0,
            &token_auth(&kube.token("default", "web")),
            &impersonate(0),
        )
        .await;
    // A workload may not impersonate: UNAUTHENTICATED with Istio's message.
    match refused {
        Err(Error::Server {
            status, message, ..
        }) => {
            assert_eq!(status, 16, "{message}");
            assert!(message.contains("impersonation"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.stop().await;
}

/// The server's stream limit per connection is at least the 100 that grpc-go (istio-agent) and
/// hyper (ztunnel, tonic) assume until the server's SETTINGS arrive: a lower one lets a client's
/// first burst on a new connection be refused (REFUSED_STREAM, seen as UNAVAILABLE), which is
/// exactly when a restarting node asks for all its pods' certificates. A fresh tonic connection
/// gets 100 requests at once, all answered. And the same connection, the server's SETTINGS now
/// known, then carries 150 requests at once, beyond the limit (the client queues the rest), all
/// answered, each with its own recorded certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_multiplexes_past_the_stream_limit() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Postgres, &kube).await;
    let fresh = server.grpc_client(None).await;
    let auth = token_auth(&kube.token("default", "web"));
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, csr, auth) = (fresh.clone(), csr.csr_pem.clone(), auth.clone());
        burst.spawn(async move {
            client
                .create_certificate(&csr, 0, &auth, &BTreeMap::new())
                .await
        });
    }
    for answer in burst.join_all().await {
        answer.unwrap();
    }

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
        let (client, auth) = (fresh.clone(), auth.clone());
        calls.spawn(async move {
            let chain = client
                .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
                .await
                .unwrap();
            serial_of(&chain[0])
        });
    }
    let serials: std::collections::HashSet<String> = calls.join_all().await.into_iter().collect();
    assert_eq!(serials.len(), 150);
    for serial in &serials {
        the_record(&server, serial).await;
    }
    server.stop().await;
}

/// The local ports of this machine's established IPv4 TCP connections to `port` (from
/// `/proc/net/tcp`): the test's client sockets to the server's gRPC port.
fn client_ports(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |address: &str| {
        let hex = address.rsplit(':').next().unwrap();
        u16::from_str_radix(hex, 16).unwrap()
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st; 01 is ESTABLISHED.
            (fields[3] == "01" && port_of(fields[2]) == port).then(|| port_of(fields[1]))
        })
        .collect()
}

/// `grpc_max_connection_age`: the server recycles a connection at that age even if its
/// client keeps it open and idle (GOAWAY, then close), so long-lived clients spread over the
/// replicas again and what a connection's buffers grew to is given back; the client's next
/// request goes out on a new connection and is answered.
#[tokio::test]
async fn connections_are_recycled_at_their_maximum_age() {
    const AGE: std::time::Duration = std::time::Duration::from_secs(2);
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        config.grpc_max_connection_age = AGE;
    })
    .await;
    let port = server.server.grpc_addr.port();
    let client = server.grpc_client(None).await;
    let auth = token_auth(&kube.token("default", "web"));
    let issue = || async {
        let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
        client
            .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
            .await
            .unwrap()
    };

    issue().await;
    let first = client_ports(port);
    assert_eq!(first.len(), 1, "one connection: {first:?}");

    // Past its age: GOAWAY, and with nothing in flight the server closes it at once, while the
    // client still holds its channel.
    let deadline = tokio::time::Instant::now() + AGE + std::time::Duration::from_secs(5);
    while !client_ports(port).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection outlived its maximum age: {:?}",
            client_ports(port)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let chain = issue().await;
    check_istio_chain(server.dir.path(), &chain, WEB, false);
    let second = client_ports(port);
    assert_eq!(second.len(), 1, "one connection again: {second:?}");
    assert_ne!(
        first, second,
        "the second request went out on a new connection"
    );
    server.stop().await;
}

/// Overload: with two issuance slots and a burst of 300 concurrent requests, what cannot be
/// admitted is refused with RESOURCE_EXHAUSTED (and counted), everything else is issued and
/// recorded, and nothing else goes wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_resource_exhausted() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Postgres, &kube, |config| {
        config.max_in_flight = 2;
    })
    .await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let auth = token_auth(&kube.token("default", "web"));
    let mut connections = Vec::new();
    for _ in 0..4 {
        let client = server.grpc_client(None).await;
        // One request first, so the client has the server's SETTINGS (at most 100 streams per
        // connection) before the burst. Otherwise the burst can open more streams than that,
        // and the server refuses the extra ones (REFUSED_STREAM, which tonic reports as
        // UNAVAILABLE) before admission ever sees them.
        client
            .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
            .await
            .unwrap();
        connections.push(client);
    }
    let before = server.store().await.count_certificates().await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let client = connections[i % connections.len()].clone();
        let (csr, auth) = (csr.csr_pem.clone(), auth.clone());
        calls.spawn(async move {
            client
                .create_certificate(&csr, 0, &auth, &BTreeMap::new())
                .await
        });
    }
    let (mut issued, mut shed) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(_) => issued += 1,
            other => {
                assert_eq!(code_of(other), Code::ResourceExhausted);
                shed += 1;
            }
        }
    }
    assert!(issued > 0, "some requests are served");
    assert!(shed > 0, "a burst far over capacity is shed");
    let after = server.store().await.count_certificates().await.unwrap();
    assert_eq!(
        after - before,
        issued,
        "every issued certificate, and only those, recorded"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!("ca_issuance_shed_total {shed}\n")),
        "{metrics}"
    );
    assert!(metrics.contains("ca_issuance_waiting "), "{metrics}");
    // Afterwards the server is idle again and serves normally.
    connections[0]
        .create_certificate(&csr.csr_pem, 0, &auth, &BTreeMap::new())
        .await
        .unwrap();
    server.stop().await;
}

/// A graceful stop writes the audit events still queued: an issuance answered just before the
/// stop is in the audit chain afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_audit_events() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let chain = client
        .create_certificate(
            &csr.csr_pem,
            0,
            &token_auth(&kube.token("default", "web")),
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let serial = serial_of(&chain[0]);
    drop(client);
    let (config, _dir) = server.stop().await;
    let store =
        ca_server::store::Store::open(&ca_server::store::StoreOptions::new(&config.database_url))
            .await
            .unwrap();
    let events = store.recent_audit(10).await.unwrap();
    assert!(
        events.iter().any(|e| e.action == "certificate.issue"
            && e.outcome == "success"
            && e.detail.contains(&serial)),
        "{events:?}"
    );
    store.close().await;
}
