//! What an attacker tried, refused at its root: caller-controlled text bounded and escaped in
//! the audit log and aggregated when it repeats, reserved identities never issued, Kubernetes
//! names only in SPIFFE IDs, metric labels from configuration only, gauges that return to 0.

use std::collections::BTreeMap;

use ca_client::{Error, KeyType, TokenAuth};
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer};
use tonic::Code;

fn token_auth(token: &str) -> TokenAuth {
    TokenAuth {
        token: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    }
}

fn grpc_code(error: &Error) -> Code {
    match error {
        Error::Server { status, .. } => Code::from_i32(i32::from(*status)),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// M1: a trusted node agent sends a quarter-megabyte `ImpersonatedIdentity` full of newlines
/// and a forged audit line, again and again. Every request is refused; the audit log holds one
/// bounded, escaped row for it (the rest are counted), and `cactl audit list` prints no forged
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_impersonation_text_is_bounded_escaped_and_aggregated() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let ztunnel = token_auth(&kube.token("istio-system", "ztunnel"));
    let forged_line = "\n1700000000 bootstrap token.create admin-backdoor success role admin\n";
    let forged = format!("x\u{1b}[2K\r{}", forged_line.repeat(3500));
    assert!(forged.len() > 200_000);
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let before = server.store().await.recent_audit(1000).await.unwrap().len();
    for _ in 0..40 {
        let metadata = BTreeMap::from([("ImpersonatedIdentity".to_owned(), forged.clone())]);
        let err = client
            .create_certificate(&csr.csr_pem, 0, &ztunnel, &metadata)
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&err), Code::Unauthenticated, "{err:?}");
    }
    // The workload audit queue is written in batches: wait for it to settle.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let events = server.store().await.recent_audit(1000).await.unwrap();
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.actor.contains("ztunnel") && e.outcome == "rejected")
        .collect();
    assert_eq!(refusals.len(), 1, "one row, the rest counted: {refusals:?}");
    assert!(
        events.len() - before <= 2,
        "{} new rows",
        events.len() - before
    );
    let row = refusals[0];
    assert!(row.target.chars().count() < 300, "{}", row.target.len());
    assert!(
        !row.target.chars().any(char::is_control),
        "{:?}",
        row.target
    );
    assert!(row.target.contains("\\u{a}") && row.target.contains("\\u{1b}"));
    let chain = server.store().await.audit_page(None, 1000).await.unwrap();
    let mut oldest_first = chain;
    oldest_first.reverse();
    ca_server::audit::verify(&oldest_first).unwrap();

    let (ok, stdout, stderr) = ca_tests::run(
        std::process::Command::new(ca_tests::bin("cactl"))
            .args(["--admin", &server.admin_url(), "--admin-token-file"])
            .arg(server.dir.path().join("admin.token"))
            .args(["audit", "list", "--limit", "50"]),
    );
    assert!(ok, "{stderr}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.trim_start().starts_with("1700000000 bootstrap")),
        "{stdout}"
    );
    server.stop().await;
}

/// M2 / H5: the CA's own identity (`spiffe://<td>/ca`, which https_spiffe peers pin) is never
/// issued, whatever the role, in any trust domain we serve; nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_identities_are_never_issued() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let admin = server.admin_client();
    let records = server.store().await.count_certificates().await.unwrap();
    let operator = admin.create_token("op", "operator", None).await.unwrap();
    let as_operator =
        ca_client::AdminClient::new(&server.admin_url(), &operator.body.token).unwrap();
    for id in ["spiffe://cluster.local/ca", "spiffe://eu.cluster.local/ca"] {
        let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(id)).unwrap();
        for client in [&admin, &as_operator] {
            let err = client.issue(&csr.csr_pem, id, None).await.unwrap_err();
            assert!(
                matches!(&err, Error::Server { status: 403, code, .. } if code == "reserved_identity"),
                "{id}: {err:?}"
            );
        }
    }
    // Its neighbours are ordinary identities.
    let near = "spiffe://cluster.local/ca/x";
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(near)).unwrap();
    admin.issue(&csr.csr_pem, near, None).await.unwrap();
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        records + 1
    );
    server.stop().await;
}

/// L7: namespace and service-account names are Kubernetes names: a token whose `sub` carries a
/// `/` (extra SPIFFE path segments) or upper case is refused, and so is an impersonated
/// identity that is not `ns/<label>/sa/<subdomain>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_kubernetes_names_become_identities() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    for (ns, sa) in [
        ("default/sa/admin/ns", "web"),
        ("default", "web/x"),
        ("Default", "web"),
        ("default", "Web"),
        ("default", "under_score"),
    ] {
        let err = client
            .create_certificate(
                &csr.csr_pem,
                0,
                &token_auth(&kube.token(ns, sa)),
                &BTreeMap::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&err), Code::Unauthenticated, "{ns}/{sa}: {err:?}");
    }
    let ztunnel = token_auth(&kube.token("istio-system", "ztunnel"));
    for target in [
        "spiffe://cluster.local/ns/Kube-System/sa/admin",
        "spiffe://cluster.local/ns/kube-system/sa/a..b",
        "spiffe://cluster.local/ns/-x/sa/admin",
    ] {
        let metadata = BTreeMap::from([("ImpersonatedIdentity".to_owned(), target.to_owned())]);
        let err = client
            .create_certificate(&csr.csr_pem, 0, &ztunnel, &metadata)
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&err), Code::Unauthenticated, "{target}: {err:?}");
    }
    server.stop().await;
}

/// L8 and the admission gauges: a trust domain we do not serve never becomes a label value,
/// and `ca_issuance_in_flight` / `ca_issuance_waiting` read 0 once the load is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_are_configured_values_and_gauges_settle() {
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_client();
    for i in 0..20 {
        let id = format!("spiffe://attacker-{i}.example/ns/a/sa/b");
        let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(&id)).unwrap();
        let err = admin.issue(&csr.csr_pem, &id, None).await.unwrap_err();
        assert!(matches!(err, Error::Server { status: 400, .. }), "{err:?}");
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let admin = server.admin_client();
        tasks.push(tokio::spawn(async move {
            let id = format!("spiffe://cluster.local/ns/load/sa/w{i}");
            let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(&id)).unwrap();
            admin.issue(&csr.csr_pem, &id, None).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let metrics = server.metrics().await;
    assert!(!metrics.contains("attacker-"), "{metrics}");
    assert!(
        metrics.contains(
            "ca_issuance_failures_total{trust_domain=\"other\",reason=\"unknown_trust_domain\"} 20"
        ),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "ca_issuance_in_flight 0"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "ca_issuance_waiting 0"),
        "{metrics}"
    );
    server.stop().await;
}

/// M3/L2 on both front doors: CSRs openssl writes for weak or odd choices are refused before
/// anything is signed, with their stable code over HTTP and `INVALID_ARGUMENT` over gRPC, and
/// nothing is recorded (the "CA bug" self-check alarm never fires on caller input).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_csrs_are_refused_on_every_front_door() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let admin = server.admin_client();
    let client = server.grpc_client(None).await;
    let web = token_auth(&kube.token("default", "web"));
    let records = server.store().await.count_certificates().await.unwrap();
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "SHA-1 signature",
            vec!["rsa:2048", "-sha1"],
            "csr_weak_signature",
        ),
        ("RSA 1024", vec!["rsa:1024"], "unsupported_key"),
        (
            "RSA e = 3",
            vec!["rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:3"],
            "unsupported_key",
        ),
        (
            "certificatePolicies requested",
            vec![
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-addext",
                "certificatePolicies=1.2.3.4",
            ],
            "csr_forbidden_extension",
        ),
    ];
    for (name, args, code) in cases {
        let csr = ca_tests::openssl_csr(&args);
        let err = admin
            .issue(&csr, "spiffe://cluster.local/ns/default/sa/web", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Server { status: 400, code: c, .. } if c == code),
            "{name}: {err:?}"
        );
        let err = client
            .create_certificate(&csr, 0, &web, &BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&err), Code::InvalidArgument, "{name}: {err:?}");
    }
    assert_eq!(
        server.store().await.count_certificates().await.unwrap(),
        records
    );
    let metrics = server.metrics().await;
    assert!(!metrics.contains("self_check_failed"), "{metrics}");
    server.stop().await;
}

/// L9: the data directory is 0700 and the SQLite files 0600 (they hold sealed keys, the audit
/// log, token hashes); a KEK or token file that others can read stops the start, naming the fix.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_the_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = format!("sqlite://{}", data.join("ca.db").display());
    let config = ca_server::config::Config::ephemeral(&data, &url);
    let server = TestServer::start_with(config, dir).await;
    let admin = server.admin_client();
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(id)).unwrap();
    admin.issue(&csr.csr_pem, id, None).await.unwrap();
    assert_eq!(mode(&data), 0o700);
    for file in ["ca.db", "ca.db-wal", "ca.db-shm", "kek", "admin.token"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let (config, dir) = server.stop().await;

    for (file, chmod) in [("kek", 0o644), ("kek", 0o604), ("admin.token", 0o644)] {
        let path = data.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(chmod)).unwrap();
        let err = ca_server::server::Server::start(config.clone())
            .await
            .unwrap_err();
        let chain = ca_tests::error_chain(&err);
        assert!(chain.contains("chmod 600"), "{file} {chmod:o}: {chain}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A data directory others can enter is tightened at start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start_with(config, dir).await;
    assert_eq!(mode(&data), 0o700);
    server.stop().await;
}

/// A trust domain far longer than 64 characters still gets CA names within RFC 5280's upper
/// bounds (CN and O at most 64), distinct per generation; the root asks for keyCertSign and
/// cRLSign only. A leaf issued under them verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_names_fit_rfc_5280_and_the_root_only_signs_certificates() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let td = format!("{}.example", "long-trust-domain-label".repeat(5));
    assert!(td.len() > 100);
    let dir = tempfile::tempdir().unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = ca_server::config::Config::ephemeral(dir.path(), &url);
    let parsed = ca_server::config::Config::from_toml(&format!(
        "[[trust_domains]]\nname = \"{td}\"\n[tls]\nserving_trust_domain = \"{td}\"\n"
    ))
    .unwrap();
    config.trust_domains = parsed.trust_domains;
    config.tls.serving_trust_domain = parsed.tls.serving_trust_domain;
    let server = TestServer::start_with(config, dir).await;
    let admin = server.admin_client();
    let domains = admin.trust_domains().await.unwrap();
    let generation = &domains.body.items[0].generations[0];
    for (kind, pem_text) in [
        ("root", &generation.root.pem),
        ("intermediate", &generation.intermediate.pem),
    ] {
        let der = pem::parse(pem_text).unwrap().into_contents();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        for attribute in cert.subject().iter_attributes() {
            let value = attribute.as_str().unwrap();
            assert!(value.chars().count() <= 64, "{kind}: {value}");
        }
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign(), "{kind}");
        if kind == "root" {
            assert!(
                !ku.digital_signature(),
                "the root needs no digitalSignature"
            );
        }
    }
    let id = format!("spiffe://{td}/ns/default/sa/web");
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(&id)).unwrap();
    let issued = admin.issue(&csr.csr_pem, &id, None).await.unwrap();
    let chain = issued.chain_pem.clone();
    let dir = server.dir.path();
    std::fs::write(dir.join("root.pem"), &issued.root_pem).unwrap();
    std::fs::write(dir.join("chain.pem"), &chain).unwrap();
    std::fs::write(dir.join("leaf.pem"), &issued.certificate_pem).unwrap();
    let (ok, out, err) = ca_tests::run(
        std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.join("root.pem"))
            .arg("-untrusted")
            .arg(dir.join("chain.pem"))
            .arg(dir.join("leaf.pem")),
    );
    assert!(ok, "{out}{err}");
    server.stop().await;
}

/// A mesh whose `trustDomain` differs from the cluster's configured one: every CSR names the
/// wrong trust domain, and the refusal says so (the status message reaches istio-agent's log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_domain_mismatch_is_named() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let csr = ca_client::csr::generate(
        KeyType::EcdsaP256,
        Some("spiffe://mesh.example/ns/default/sa/web"),
    )
    .unwrap();
    let err = client
        .create_certificate(
            &csr.csr_pem,
            0,
            &token_auth(&kube.token("default", "web")),
            &BTreeMap::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&err), Code::InvalidArgument);
    let Error::Server { message, .. } = err else {
        unreachable!()
    };
    assert!(
        message.contains("mesh.example") && message.contains("trustDomain"),
        "{message}"
    );
    server.stop().await;
}

/// Every gauge tells the truth after load and when idle: admission depths back at 0, revoked and
/// denied counts as the store has them, identities whose newest live certificate expires within
/// 6 h counted (revoked ones not), CRL nextUpdate and CA/serving notAfter in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gauge_tells_the_truth_after_load_and_idle() {
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_client();
    let mut short = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..15 {
        let admin = server.admin_client();
        tasks.push(tokio::spawn(async move {
            let id = format!("spiffe://cluster.local/ns/load/sa/w{i}");
            let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(&id)).unwrap();
            // Ten identities on 1 h certificates (renewal failing would leave them expiring
            // within 6 h), five on the default 24 h.
            let ttl = (i < 10).then_some("1h");
            admin.issue(&csr.csr_pem, &id, ttl).await.unwrap()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let issued = task.await.unwrap();
        if i < 10 {
            short.push(issued.serial);
        }
    }
    admin.revoke(&short[0], "keyCompromise").await.unwrap();
    admin.revoke(&short[1], "superseded").await.unwrap();
    admin
        .deny("spiffe://cluster.local/ns/bad/sa/actor", "test", false)
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    ca_server::jobs::refresh_gauges(&server.server.ca, now).await;
    let metrics = server.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} not on /metrics:\n{metrics}"))
    };
    assert_eq!(value("ca_issuance_in_flight "), 0.0);
    assert_eq!(value("ca_issuance_waiting "), 0.0);
    assert_eq!(
        value("ca_revoked_certificates{trust_domain=\"cluster.local\"} "),
        2.0
    );
    assert_eq!(
        value("ca_denied_identities{trust_domain=\"cluster.local\"} "),
        1.0
    );
    assert_eq!(
        value("ca_workload_identities_expiring{trust_domain=\"cluster.local\"} "),
        8.0
    );
    let now_s = now.unix_timestamp() as f64;
    assert!(value("ca_crl_next_update_timestamp_seconds{trust_domain=\"cluster.local\"} ") > now_s);
    for kind in ["root", "intermediate", "serving"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("ca_cert_not_after_timestamp_seconds{")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .unwrap_or_else(|| panic!("{kind}:\n{metrics}"));
        let at: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(at > now_s, "{line}");
    }
    server.stop().await;
}
