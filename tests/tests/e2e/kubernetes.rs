//! The Kubernetes API integration against the test kit's stand-in API server (real kube-rs
//! client, real TLS, the real API's JSON; no kube-apiserver can run here): istiod's RA-mode CSR
//! flow, the root ConfigMap writer, istiod's Secret, TokenReview, JWKS discovery and node-bound
//! impersonation, and how each behaves when the API server fails.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use ca_client::{Error, KeyType, TokenAuth};
use ca_server::config::{
    ClusterAuth, CsrSignerConfig, IstiodConfig, JwksSource, KubernetesConfig, RootConfigMapConfig,
};
use ca_server::store::CertificateFilter;
use ca_tests::kube::{FakeKube, SigningKey};
use ca_tests::kube_api::{FakeApiServer, ReviewedUser};
use ca_tests::{Backend, TestServer, both_backends};
use serde_json::{Value, json};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CA's own service-account token, which the stand-in API server requires.
const CA_TOKEN: &str = "mesh-ca-service-account-token";
const SIGNER: &str = "mesh-ca.io/spiffe";
const ISTIOD: &str = "system:serviceaccount:istio-system:istiod";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

/// `[clusters.kubernetes]` pointing at `api`, every feature off; the CA file and token file are
/// written into `dir`.
fn kubernetes_config(api: &FakeApiServer, dir: &Path) -> KubernetesConfig {
    let ca_file = dir.join("api-ca.pem");
    let token_file = dir.join("api-token");
    std::fs::write(&ca_file, api.ca_pem()).unwrap();
    std::fs::write(&token_file, CA_TOKEN).unwrap();
    KubernetesConfig {
        api_server: api.url(),
        ca_file,
        token_file,
        node_authorization: false,
        jwks_discovery: false,
        token_review_cache_ttl: Duration::from_secs(60),
        csr_signer: None,
        root_configmap: None,
        lease_namespace: "istio-system".to_owned(),
    }
}

/// Polls `check` every 100 ms until it gives a value or `limit` passes.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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

/// A CSR object as istiod creates it in RA mode (`security/pkg/k8s/chiron/utils.go`):
/// `generateName: csr-workload-`, its four usages, `expirationSeconds` = the requested TTL.
fn istiod_csr(request_pem: &str, expiration_seconds: i64, name: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "name": name },
        "spec": {
            "request": base64_encode(request_pem.as_bytes()),
            "signerName": SIGNER,
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "expirationSeconds": expiration_seconds,
            "username": ISTIOD,
        },
    })
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Adds a condition (`Approved`, `Denied`) the way `kubectl certificate approve` and istiod do,
/// through the approval subresource's shape (the stand-in stores it in `status.conditions`).
fn with_condition(mut csr: Value, kind: &str) -> Value {
    csr["status"]["conditions"] = json!([{
        "type": kind, "status": "True", "reason": "Test", "message": "test",
    }]);
    csr
}

fn csr_status(api: &FakeApiServer, name: &str) -> Option<Value> {
    api.get("certificatesigningrequests", None, name)
        .and_then(|csr| csr.get("status").cloned())
}

fn failed_reason(api: &FakeApiServer, name: &str) -> Option<String> {
    let status = csr_status(api, name)?;
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Failed" && c["status"] == "True")
        .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
}

fn certificate_of(api: &FakeApiServer, name: &str) -> Option<String> {
    let status = csr_status(api, name)?;
    let encoded = status.get("certificate")?.as_str()?;
    Some(String::from_utf8(base64_decode(encoded)).unwrap())
}

async fn csr_signer_signs_what_istiod_asks_and_refuses_the_rest(backend: Backend) {
    let api = FakeApiServer::start(CA_TOKEN).await;
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.csr_signer = Some(CsrSignerConfig {
        signer_name: SIGNER.to_owned(),
        allowed_requesters: vec![ISTIOD.to_owned()],
    });
    let server = TestServer::start_with_cluster_and(backend, &FakeKube::new(), |config| {
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;

    // istiod's flow: create, approve itself, wait (up to 60 s) for status.certificate.
    let key = ca_client::csr::generate_istio_style(KeyType::EcdsaP256, WEB).unwrap();
    api.put(with_condition(
        istiod_csr(&key.csr_pem, 3600, "csr-workload-abcde"),
        "Approved",
    ));
    let chain = eventually("the signed CSR", Duration::from_secs(30), || async {
        certificate_of(&api, "csr-workload-abcde")
    })
    .await;
    let blocks = pem::parse_many(&chain).unwrap();
    assert_eq!(blocks.len(), 2, "leaf then intermediate");
    let (_, leaf) = X509Certificate::from_der(blocks[0].contents()).unwrap();
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(uris, vec![format!("URI({WEB})")]);
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (3600..=3600 + 360).contains(&life),
        "expirationSeconds honoured: {life}"
    );
    // The same record as every other path, with who asked.
    let rows = server
        .store()
        .await
        .search_certificates(
            &CertificateFilter {
                spiffe_id: Some(WEB.to_owned()),
                ..CertificateFilter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.api, "k8s-csr");
    assert!(
        rows[0]
            .record
            .requested_by
            .contains("csr-workload-abcde by system:serviceaccount:istio-system:istiod"),
        "{}",
        rows[0].record.requested_by
    );

    // Not approved: left alone. Denied: left alone.
    let waiting = ca_client::csr::generate(KeyType::EcdsaP256, Some(WEB)).unwrap();
    api.put(istiod_csr(&waiting.csr_pem, 3600, "csr-workload-pending"));
    api.put(with_condition(
        istiod_csr(&waiting.csr_pem, 3600, "csr-workload-denied"),
        "Denied",
    ));

    // Refusals, each with a Failed condition and its reason.
    let other_td = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://eu.cluster.local/ns/default/sa/web"),
    )
    .unwrap();
    let not_workload =
        ca_client::csr::generate(KeyType::EcdsaP256, Some("spiffe://cluster.local/admin")).unwrap();
    let no_uri = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let mut stranger = istiod_csr(&waiting.csr_pem, 3600, "csr-workload-stranger");
    stranger["spec"]["username"] = json!("system:serviceaccount:default:intruder");
    let mut cert_sign = istiod_csr(&waiting.csr_pem, 3600, "csr-workload-certsign");
    cert_sign["spec"]["usages"] = json!(["digital signature", "cert sign"]);
    let mut garbage = istiod_csr("not a CSR", 3600, "csr-workload-garbage");
    garbage["spec"]["request"] = json!(base64_encode(
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    ));
    let cases = [
        (stranger, "RequesterNotAllowed"),
        (cert_sign, "UnsupportedUsage"),
        (garbage, "InvalidRequest"),
        (
            istiod_csr(&other_td.csr_pem, 3600, "csr-workload-othertd"),
            "InvalidIdentity",
        ),
        (
            istiod_csr(&not_workload.csr_pem, 3600, "csr-workload-notsa"),
            "InvalidIdentity",
        ),
        (
            istiod_csr(&no_uri.csr_pem, 3600, "csr-workload-nouri"),
            "InvalidIdentity",
        ),
    ];
    for (csr, _) in &cases {
        api.put(with_condition(csr.clone(), "Approved"));
    }
    for (csr, reason) in &cases {
        let name = csr["metadata"]["name"].as_str().unwrap();
        let got = eventually(name, Duration::from_secs(30), || async {
            failed_reason(&api, name)
        })
        .await;
        assert_eq!(got, *reason, "{name}");
        assert!(
            certificate_of(&api, name).is_none(),
            "{name} got no certificate"
        );
    }
    // A denied identity: refused through the same deny list as every path.
    server
        .server
        .ca
        .deny(
            &ca_server::spiffe::SpiffeId::parse("spiffe://cluster.local/ns/default/sa/blocked")
                .unwrap(),
            "test",
            false,
            "test",
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let blocked = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://cluster.local/ns/default/sa/blocked"),
    )
    .unwrap();
    api.put(with_condition(
        istiod_csr(&blocked.csr_pem, 3600, "csr-workload-blocked"),
        "Approved",
    ));
    let reason = eventually("the denied CSR", Duration::from_secs(30), || async {
        failed_reason(&api, "csr-workload-blocked")
    })
    .await;
    assert_eq!(reason, "SignerValidationFailure");

    // Nothing else was signed; the pending and denied ones are untouched.
    for name in ["csr-workload-pending", "csr-workload-denied"] {
        assert!(certificate_of(&api, name).is_none(), "{name}");
        assert!(failed_reason(&api, name).is_none(), "{name}");
    }
    let store = server.store().await;
    assert_eq!(
        store.count_certificates().await.unwrap(),
        2,
        "the serving certificate and the one signed CSR"
    );
    // Every decision is audited.
    let audit = store.recent_audit(200).await.unwrap();
    let k8s: Vec<_> = audit
        .iter()
        .filter(|e| e.actor.starts_with("k8s-csr:Kubernetes/"))
        .collect();
    assert!(k8s.iter().any(|e| e.outcome == "success"), "{k8s:?}");
    assert!(
        k8s.iter().filter(|e| e.outcome == "rejected").count() >= cases.len(),
        "{k8s:?}"
    );
}
both_backends!(
    csr_signer_signs_what_istiod_asks_and_refuses_the_rest,
    csr_signer_signs_what_istiod_asks_and_refuses_the_rest
);

fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "labels": labels },
        "status": { "phase": "Active" },
    })
}

fn root_cert_of(api: &FakeApiServer, namespace: &str) -> Option<String> {
    let map = api.get("configmaps", Some(namespace), "istio-ca-root-cert")?;
    if map["metadata"]["labels"]["istio.io/config"] != "true" {
        return None;
    }
    map["data"]["root-cert.pem"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_configmap_is_kept_current_in_every_selected_namespace() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    for (name, labels) in [
        ("default", json!({"mesh": "on"})),
        ("istio-system", json!({"mesh": "on"})),
        ("unmeshed", json!({})),
    ] {
        api.put(namespace(name, labels));
    }
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.root_configmap = Some(RootConfigMapConfig {
        name: "istio-ca-root-cert".to_owned(),
        namespace_selector: Some("mesh=on".to_owned()),
    });
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &FakeKube::new(), |config| {
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;
    let authority = server
        .server
        .ca
        .authorities()
        .get(&ca_server::spiffe::TrustDomain::parse("cluster.local").unwrap())
        .unwrap()
        .clone();
    let expected = server.server.ca.roots_pem_for(&authority);
    assert!(expected.contains("BEGIN CERTIFICATE"));

    for ns in ["default", "istio-system"] {
        let got = eventually(ns, Duration::from_secs(20), || async {
            root_cert_of(&api, ns)
        })
        .await;
        assert_eq!(got, expected, "{ns}");
    }
    assert!(
        api.get("configmaps", Some("unmeshed"), "istio-ca-root-cert")
            .is_none(),
        "namespaces outside the selector are left alone"
    );

    // A new namespace gets it within seconds.
    api.put(namespace("team-a", json!({"mesh": "on"})));
    let got = eventually(
        "the new namespace's ConfigMap",
        Duration::from_secs(10),
        || async { root_cert_of(&api, "team-a") },
    )
    .await;
    assert_eq!(got, expected);

    // A manual edit is repaired, other keys kept; a deleted one is recreated.
    let mut edited = api
        .get("configmaps", Some("default"), "istio-ca-root-cert")
        .unwrap();
    edited["data"]["root-cert.pem"] = json!("tampered");
    edited["data"]["note"] = json!("kept");
    edited["metadata"]["resourceVersion"] = Value::Null;
    api.put(edited);
    eventually(
        "the repaired ConfigMap",
        Duration::from_secs(10),
        || async {
            (root_cert_of(&api, "default").as_deref() == Some(expected.as_str())).then_some(())
        },
    )
    .await;
    let repaired = api
        .get("configmaps", Some("default"), "istio-ca-root-cert")
        .unwrap();
    assert_eq!(repaired["data"]["note"], "kept");
    api.delete("configmaps", Some("team-a"), "istio-ca-root-cert");
    eventually(
        "the recreated ConfigMap",
        Duration::from_secs(10),
        || async { root_cert_of(&api, "team-a") },
    )
    .await;

    // The API server fails for a while: writes are retried (with backoff) until it works.
    api.fail_next(6, 500);
    api.drop_watches();
    api.put(namespace("team-b", json!({"mesh": "on"})));
    let got = eventually(
        "a ConfigMap after the failures",
        Duration::from_secs(30),
        || async { root_cert_of(&api, "team-b") },
    )
    .await;
    assert_eq!(got, expected);

    // History compacted (410 Gone on the next watch): the watcher relists and goes on.
    api.compact();
    api.drop_watches();
    api.put(namespace("team-c", json!({"mesh": "on"})));
    eventually(
        "a ConfigMap after a relist",
        Duration::from_secs(30),
        || async { root_cert_of(&api, "team-c") },
    )
    .await;

    // A trust change (a root rotation publishes a new root): every ConfigMap carries old and
    // new roots within seconds.
    server
        .admin_client()
        .rotate("cluster.local", "root")
        .await
        .unwrap();
    let trust = server.server.ca.roots_pem_for(&authority);
    assert_eq!(pem::parse_many(&trust).unwrap().len(), 2);
    let changed = Instant::now();
    for ns in ["default", "istio-system", "team-a", "team-b", "team-c"] {
        eventually(ns, Duration::from_secs(10), || async {
            (root_cert_of(&api, ns).as_deref() == Some(trust.as_str())).then_some(())
        })
        .await;
    }
    assert!(changed.elapsed() < Duration::from_secs(10));

    // One replica wrote: the Lease names it.
    let lease = api
        .get("leases", Some("istio-system"), "mesh-ca-writers")
        .expect("the writers' Lease");
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    server.server.shutdown().await;
    let released = api
        .get("leases", Some("istio-system"), "mesh-ca-writers")
        .unwrap();
    assert!(
        released["spec"]["holderIdentity"].is_null(),
        "released at shutdown: {released}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_a_takeover() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.csr_signer = Some(CsrSignerConfig {
        signer_name: SIGNER.to_owned(),
        allowed_requesters: vec![ISTIOD.to_owned()],
    });
    // Two replicas on one Postgres database.
    let url = ca_tests::fresh_postgres_database().await;
    // The replicas share the KEK (as replicas share a Secret).
    let shared = tempfile::tempdir().unwrap();
    let kek = shared.path().join("kek");
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let with_kek = |dir: tempfile::TempDir, kubernetes: KubernetesConfig| {
        let url = url.clone();
        let kek = kek.clone();
        async move {
            let kube = FakeKube::new();
            let jwks = dir.path().join("jwks.json");
            kube.write_jwks(&jwks);
            let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
            config.kek_file = kek;
            config.clusters = ca_server::config::Config::from_toml(&format!(
                "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"{}\"\njwks_file = \"{}\"\n",
                ca_tests::kube::ISSUER,
                jwks.display()
            ))
            .unwrap()
            .clusters;
            config.clusters[0].kubernetes = Some(kubernetes);
            TestServer::start_with(config, dir).await
        }
    };
    let first = with_kek(first_dir, kubernetes.clone()).await;
    let second = with_kek(second_dir, kubernetes).await;

    let holder = |api: &FakeApiServer| {
        api.get("leases", Some("istio-system"), "mesh-ca-writers")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let leader = eventually("a Lease holder", Duration::from_secs(10), || async {
        holder(&api)
    })
    .await;

    // Ten CSRs at once: each signed exactly once although both replicas watch them.
    for i in 0..10 {
        let key = ca_client::csr::generate(
            KeyType::EcdsaP256,
            Some(&format!("spiffe://cluster.local/ns/default/sa/app-{i}")),
        )
        .unwrap();
        api.put(with_condition(
            istiod_csr(&key.csr_pem, 3600, &format!("csr-workload-{i}")),
            "Approved",
        ));
    }
    for i in 0..10 {
        let name = format!("csr-workload-{i}");
        eventually(&name, Duration::from_secs(30), || async {
            certificate_of(&api, &name)
        })
        .await;
    }
    let store = first.store().await;
    let signed = store
        .search_certificates(
            &CertificateFilter {
                trust_domain: Some("cluster.local".to_owned()),
                ..CertificateFilter::default()
            },
            None,
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.record.api == "k8s-csr")
        .count();
    assert_eq!(signed, 10, "each CSR signed once, by the Lease holder");

    // The first replica stops. If it held the Lease it gives it up and the other takes over;
    // either way the next CSR is signed.
    first.server.shutdown().await;
    let first_led = holder(&api).is_none();
    let key = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://cluster.local/ns/default/sa/after"),
    )
    .unwrap();
    api.put(with_condition(
        istiod_csr(&key.csr_pem, 3600, "csr-workload-after"),
        "Approved",
    ));
    eventually(
        "a CSR signed after the stop",
        Duration::from_secs(40),
        || async { certificate_of(&api, "csr-workload-after") },
    )
    .await;
    let now_holder = holder(&api).expect("a holder");
    if first_led {
        assert_ne!(now_holder, leader, "taken over by the other replica");
    } else {
        assert_eq!(now_holder, leader, "the other replica kept it");
    }
    second.server.shutdown().await;
    ca_tests::drop_postgres_database(&url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_secret_is_written_renewed_and_repaired() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    let files = tempfile::tempdir().unwrap();
    let kubernetes = kubernetes_config(&api, files.path());
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &FakeKube::new(), |config| {
        config.clusters[0].kubernetes = Some(kubernetes);
        config.istiod = Some(IstiodConfig {
            trust_domain: config.tls.serving_trust_domain.clone(),
            dns_names: vec!["istiod.istio-system.svc".to_owned()],
            ttl: None,
            output_dir: None,
            secret_cluster: Some("Kubernetes".to_owned()),
            secret_namespace: "istio-system".to_owned(),
            secret_name: "istiod-tls".to_owned(),
        });
    })
    .await;
    let secret = eventually("istiod-tls", Duration::from_secs(20), || async {
        api.get("secrets", Some("istio-system"), "istiod-tls")
    })
    .await;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let data = |secret: &Value, key: &str| {
        String::from_utf8(base64_decode(secret["data"][key].as_str().unwrap())).unwrap()
    };
    let chain = data(&secret, "tls.crt");
    let blocks = pem::parse_many(&chain).unwrap();
    assert_eq!(blocks.len(), 2);
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
    assert_eq!(names, vec!["DNSName(istiod.istio-system.svc)".to_owned()]);
    assert!(data(&secret, "tls.key").contains("PRIVATE KEY"));
    let expected_roots = String::from_utf8(server.serving_root_pem()).unwrap();
    assert_eq!(data(&secret, "ca.crt"), expected_roots);

    // openssl agrees it serves istiod.istio-system.svc under our root.
    let dir = server.dir.path();
    std::fs::write(dir.join("istiod-ca.pem"), data(&secret, "ca.crt")).unwrap();
    std::fs::write(dir.join("istiod-chain.pem"), &chain).unwrap();
    std::fs::write(
        dir.join("istiod-leaf.pem"),
        ca_tests::cert_pem(blocks[0].contents()),
    )
    .unwrap();
    std::fs::write(
        dir.join("istiod-int.pem"),
        ca_tests::cert_pem(blocks[1].contents()),
    )
    .unwrap();
    let (ok, out, err) = ca_tests::run(
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-purpose")
            .arg("sslserver")
            .arg("-verify_hostname")
            .arg("istiod.istio-system.svc")
            .arg("-CAfile")
            .arg(dir.join("istiod-ca.pem"))
            .arg("-untrusted")
            .arg(dir.join("istiod-int.pem"))
            .arg(dir.join("istiod-leaf.pem")),
    );
    assert!(ok, "{out}{err}");

    // An edited ca.crt (not our trust set) makes the writer reissue; a deleted Secret is
    // recreated.
    let mut edited = secret.clone();
    edited["data"]["ca.crt"] = json!(base64_encode(b"tampered"));
    edited["metadata"]["resourceVersion"] = Value::Null;
    api.put(edited);
    let repaired = eventually("the repaired Secret", Duration::from_secs(20), || async {
        api.get("secrets", Some("istio-system"), "istiod-tls")
            .filter(|s| data(s, "ca.crt") == expected_roots)
    })
    .await;
    assert_ne!(
        data(&repaired, "tls.crt"),
        chain,
        "a fresh certificate with the fix"
    );
    api.delete("secrets", Some("istio-system"), "istiod-tls");
    eventually("the recreated Secret", Duration::from_secs(20), || async {
        api.get("secrets", Some("istio-system"), "istiod-tls")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_authenticates_and_fails_closed() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    let files = tempfile::tempdir().unwrap();
    let kubernetes = kubernetes_config(&api, files.path());
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        config.clusters[0].auth = ClusterAuth::Tokenreview;
        config.clusters[0].jwks = None;
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;
    let client = server.grpc_client(None).await;
    let user = |ns: &str, sa: &str, audiences: &[&str]| ReviewedUser {
        username: format!("system:serviceaccount:{ns}:{sa}"),
        uid: "uid-1".to_owned(),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
        ],
        extra: serde_json::Map::new(),
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
    };
    // Opaque tokens: only the API server knows them.
    api.set_token_review("web-token", Some(user("default", "web", &["istio-ca"])));
    api.set_token_review(
        "apiserver-audience",
        Some(user(
            "default",
            "web",
            &["https://kubernetes.default.svc.cluster.local"],
        )),
    );
    let mut not_sa = user("default", "web", &["istio-ca"]);
    not_sa.username = "alice".to_owned();
    not_sa.groups = vec!["system:authenticated".to_owned()];
    api.set_token_review("user-token", Some(not_sa));
    api.set_token_review("deleted-pod", None);

    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(WEB)).unwrap();
    let none = BTreeMap::new();
    let chain = client
        .create_certificate(&csr.csr_pem, 3600, &token_auth("web-token"), &none)
        .await
        .unwrap();
    assert!(chain.len() >= 3);
    let reviews = || {
        api.requests()
            .iter()
            .filter(|(method, path)| method == "POST" && path.contains("tokenreviews"))
            .count()
    };
    assert_eq!(reviews(), 1);
    // The same token again: answered from the cache, no second TokenReview.
    client
        .create_certificate(&csr.csr_pem, 3600, &token_auth("web-token"), &none)
        .await
        .unwrap();
    assert_eq!(reviews(), 1, "cached");

    // Refusals: unknown or revoked token (a deleted pod), a token for the API server's own
    // audience (security.md F4), a user that is not a service account.
    for token in [
        "deleted-pod",
        "apiserver-audience",
        "user-token",
        "never-seen",
    ] {
        let result = client
            .create_certificate(&csr.csr_pem, 3600, &token_auth(token), &none)
            .await;
        assert_eq!(code_of(result), Code::Unauthenticated, "{token}");
    }
    // The API server down: UNAVAILABLE (istio-agent retries), never a certificate.
    api.set_token_review("fresh-token", Some(user("default", "web", &["istio-ca"])));
    api.fail_next(20, 500);
    let result = client
        .create_certificate(&csr.csr_pem, 3600, &token_auth("fresh-token"), &none)
        .await;
    assert_eq!(code_of(result), Code::Unavailable);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("reason=\"kubernetes_unavailable\""),
        "counted as unavailable"
    );
    assert!(metrics.contains("reason=\"token_review_refused\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_discovery_follows_the_clusters_key_rotation() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    let kube = FakeKube::new();
    let first_key = &kube.keys[0];
    api.set_oidc(
        ca_tests::kube::ISSUER,
        json!({"keys": [first_key.jwk.clone()]}),
    );
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.jwks_discovery = true;
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        config.clusters[0].jwks = Some(JwksSource::Discovery);
        config.clusters[0].jwks_reload_min_interval = Duration::from_secs(1);
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(WEB)).unwrap();
    let none = BTreeMap::new();
    client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&first_key.sign(&FakeKube::claims("default", "web"))),
            &none,
        )
        .await
        .unwrap();

    // The cluster rotates its signing key: a token with the new kid works once the JWKS is
    // refetched (an unknown kid triggers it, rate-limited).
    let rotated = SigningKey::es256("es-rotated");
    api.set_oidc(
        ca_tests::kube::ISSUER,
        json!({"keys": [rotated.jwk.clone()]}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = rotated.sign(&FakeKube::claims("default", "web"));
    client
        .create_certificate(&csr.csr_pem, 3600, &token_auth(&token), &none)
        .await
        .unwrap();

    // The API server fails: the last good keys keep working.
    api.fail_next(50, 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = SigningKey::es256("es-unknown").sign(&FakeKube::claims("default", "web"));
    let result = client
        .create_certificate(&csr.csr_pem, 3600, &token_auth(&unknown), &none)
        .await;
    assert_eq!(code_of(result), Code::Unauthenticated);
    client
        .create_certificate(
            &csr.csr_pem,
            3600,
            // ECDSA signatures are randomised: a new token, not one the verified-token cache knows.
            &token_auth(&rotated.sign(&FakeKube::claims("default", "web"))),
            &none,
        )
        .await
        .expect("the last good keys still verify while the API server fails");
    api.fail_next(0, 500);

    // A discovery document naming another issuer is not trusted: its keys are not taken.
    let foreign = SigningKey::es256("es-foreign");
    api.set_oidc(
        "https://evil.example",
        json!({"keys": [foreign.jwk.clone()]}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let result = client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&foreign.sign(&FakeKube::claims("default", "web"))),
            &none,
        )
        .await;
    assert_eq!(code_of(result), Code::Unauthenticated);
    // The same keys under the right issuer are taken: it was the issuer check that refused.
    api.set_oidc(
        ca_tests::kube::ISSUER,
        json!({"keys": [foreign.jwk.clone()]}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&foreign.sign(&FakeKube::claims("default", "web"))),
            &none,
        )
        .await
        .unwrap();
}

fn pod(namespace: &str, name: &str, uid: &str, service_account: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "namespace": namespace, "name": name, "uid": uid },
        "spec": { "serviceAccountName": service_account, "nodeName": node, "containers": [] },
        "status": { "phase": "Running" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_is_bound_to_the_callers_node() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    api.put(pod(
        "istio-system",
        "ztunnel-a",
        "uid-zt-a",
        "ztunnel",
        "node-a",
    ));
    api.put(pod(
        "istio-system",
        "ztunnel-b",
        "uid-zt-b",
        "ztunnel",
        "node-b",
    ));
    api.put(pod("default", "web-1", "uid-web-1", "web", "node-a"));
    api.put(pod("default", "db-1", "uid-db-1", "db", "node-b"));
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.node_authorization = true;
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;
    let client = server.grpc_client(None).await;
    // ztunnel's bound token names its pod (and, on recent Kubernetes, its node).
    let ztunnel_token = |pod: &str, uid: &str, node: Option<&str>| {
        let mut claims = FakeKube::claims("istio-system", "ztunnel");
        claims["kubernetes.io"]["pod"] = json!({"name": pod, "uid": uid});
        if let Some(node) = node {
            claims["kubernetes.io"]["node"] = json!({"name": node, "uid": "node-uid"});
        }
        kube.keys[0].sign(&claims)
    };
    let impersonate =
        |target: &str| BTreeMap::from([("ImpersonatedIdentity".to_owned(), target.to_owned())]);
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let on_a = ztunnel_token("ztunnel-a", "uid-zt-a", Some("node-a"));
    let db = "spiffe://cluster.local/ns/default/sa/db";

    // The pod index syncs first; until then the answer is retriable.
    let chain = eventually("the pod index", Duration::from_secs(20), || async {
        client
            .create_certificate(&csr.csr_pem, 3600, &token_auth(&on_a), &impersonate(WEB))
            .await
            .ok()
    })
    .await;
    assert!(chain.len() >= 3);
    // web runs on node-a, db on node-b only: ztunnel-a may not be db.
    let cases = [
        (on_a.clone(), db.to_owned(), Code::Unauthenticated),
        (
            on_a.clone(),
            "spiffe://cluster.local/ns/kube-system/sa/admin".to_owned(),
            Code::Unauthenticated,
        ),
        // The token names a pod that does not exist (deleted ztunnel): no node, refused.
        (
            ztunnel_token("ztunnel-gone", "uid-gone", None),
            WEB.to_owned(),
            Code::Unauthenticated,
        ),
        // The pod's uid does not match (a recreated pod of the same name).
        (
            ztunnel_token("ztunnel-a", "uid-other", None),
            WEB.to_owned(),
            Code::Unauthenticated,
        ),
        // The node claim disagrees with where the pod runs.
        (
            ztunnel_token("ztunnel-a", "uid-zt-a", Some("node-b")),
            WEB.to_owned(),
            Code::Unauthenticated,
        ),
        // A token without a bound pod: the node is unknown.
        (
            kube.keys[0].sign(&FakeKube::claims("istio-system", "ztunnel")),
            WEB.to_owned(),
            Code::Unauthenticated,
        ),
    ];
    for (token, target, code) in cases {
        let result = client
            .create_certificate(
                &csr.csr_pem,
                3600,
                &token_auth(&token),
                &impersonate(&target),
            )
            .await;
        assert_eq!(code_of(result), code, "{target}");
    }
    // ztunnel-b may be db (its pod is on node-b); pod-only token, node from the index.
    client
        .create_certificate(
            &csr.csr_pem,
            3600,
            &token_auth(&ztunnel_token("ztunnel-b", "uid-zt-b", None)),
            &impersonate(db),
        )
        .await
        .unwrap();

    // The web pod goes away: the watch removes it and ztunnel-a may no longer be web.
    api.delete("pods", Some("default"), "web-1");
    eventually("the pod deletion", Duration::from_secs(10), || async {
        let result = client
            .create_certificate(&csr.csr_pem, 3600, &token_auth(&on_a), &impersonate(WEB))
            .await;
        matches!(result, Err(Error::Server { .. })).then_some(())
    })
    .await;
    // A cut watch and a compaction: the index relists and keeps answering.
    api.compact();
    api.drop_watches();
    api.put(pod("default", "web-2", "uid-web-2", "web", "node-a"));
    eventually("the relisted index", Duration::from_secs(20), || async {
        client
            .create_certificate(&csr.csr_pem, 3600, &token_auth(&on_a), &impersonate(WEB))
            .await
            .ok()
    })
    .await;
    // Refusals are audited with their reason.
    let audit = server.store().await.recent_audit(100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.outcome == "rejected" && e.detail.contains("impersonation_not_on_node")),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_binding_fails_closed_before_the_index_syncs() {
    let api = FakeApiServer::start(CA_TOKEN).await;
    api.put(pod(
        "istio-system",
        "ztunnel-a",
        "uid-zt-a",
        "ztunnel",
        "node-a",
    ));
    api.put(pod("default", "web-1", "uid-web-1", "web", "node-a"));
    // The API server refuses everything for now: the pod list cannot complete.
    api.fail_next(100_000, 500);
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.node_authorization = true;
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;
    let client = server.grpc_client(None).await;
    let mut claims = FakeKube::claims("istio-system", "ztunnel");
    claims["kubernetes.io"]["pod"] = json!({"name": "ztunnel-a", "uid": "uid-zt-a"});
    let token = kube.keys[0].sign(&claims);
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let impersonate = BTreeMap::from([("ImpersonatedIdentity".to_owned(), WEB.to_owned())]);
    let result = client
        .create_certificate(&csr.csr_pem, 3600, &token_auth(&token), &impersonate)
        .await;
    assert_eq!(code_of(result), Code::Unavailable, "fail closed, retriably");
    // Its own identity needs no pod index.
    let own = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
    )
    .unwrap();
    client
        .create_certificate(&own.csr_pem, 3600, &token_auth(&token), &BTreeMap::new())
        .await
        .unwrap();
    // The API server recovers: the index syncs and the impersonation works.
    api.fail_next(0, 500);
    eventually(
        "the index after recovery",
        Duration::from_secs(40),
        || async {
            client
                .create_certificate(&csr.csr_pem, 3600, &token_auth(&token), &impersonate)
                .await
                .ok()
        },
    )
    .await;
}

/// istiod's RA flow exactly, with the real kube-rs client as istiod's side: create the CSR with
/// `generateName: csr-workload-` (the API server names it), approve it through the approval
/// subresource (istiod approves its own), then wait at most 60 s for `status.certificate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_ra_flow_through_kube_rs() {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestSpec,
    };
    use kube::api::{Api, PostParams};

    let api = FakeApiServer::start(CA_TOKEN).await;
    let files = tempfile::tempdir().unwrap();
    let mut kubernetes = kubernetes_config(&api, files.path());
    kubernetes.csr_signer = Some(CsrSignerConfig {
        signer_name: SIGNER.to_owned(),
        allowed_requesters: vec![ISTIOD.to_owned()],
    });
    let _server = TestServer::start_with_cluster_and(Backend::Sqlite, &FakeKube::new(), |config| {
        config.clusters[0].kubernetes = Some(kubernetes);
    })
    .await;

    // istiod's client (the stand-in accepts one bearer token; the requester it records for a
    // created CSR is istiod's service account by default).
    let mut config = kube::Config::new(api.url().parse().unwrap());
    config.root_cert = Some(vec![pem::parse(api.ca_pem()).unwrap().into_contents()]);
    config.auth_info.token = Some(CA_TOKEN.to_owned().into());
    let istiod = kube::Client::try_from(config).unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(istiod);

    let key = ca_client::csr::generate_istio_style(KeyType::EcdsaP256, WEB).unwrap();
    let request = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("csr-workload-".to_owned()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(key.csr_pem.clone().into_bytes()),
            signer_name: SIGNER.to_owned(),
            usages: Some(
                [
                    "digital signature",
                    "key encipherment",
                    "server auth",
                    "client auth",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        status: None,
    };
    let created = csrs.create(&PostParams::default(), &request).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("csr-workload-"), "{name}");
    // Self-approval through the approval subresource.
    let approval = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "IstiodApproved",
        "message": "istiod approves its own request",
    }]}});
    csrs.patch_approval(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&approval),
    )
    .await
    .unwrap();
    // istiod waits up to 60 s.
    let start = Instant::now();
    let certificate = loop {
        let current = csrs.get(&name).await.unwrap();
        if let Some(cert) = current.status.and_then(|s| s.certificate) {
            break String::from_utf8(cert.0).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "istiod gave up after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let blocks = pem::parse_many(&certificate).unwrap();
    assert_eq!(blocks.len(), 2, "leaf then intermediate");
    let (_, leaf) = X509Certificate::from_der(blocks[0].contents()).unwrap();
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((3600..=3960).contains(&life), "{life}");
    println!("signed {name} within {:?}", start.elapsed());
}
