//! The SVID source (`ca_client::svid`) rides through the CA's lifecycle: two workloads handshake
//! with each other over mutual TLS continuously (about 10 handshakes a second) while the CA
//! rotates its intermediate, publishes and activates a new root, and revokes the active
//! generation in an emergency. Time is compressed: 20 s leaves, renewed at about half-life.
//! A federated EU CA fetches the US bundle all along and verifies the US workload's current
//! leaf against its copy every half second: its copy holds the new root before any leaf chains
//! to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ca_client::KeyType;
use ca_client::svid::{SvidSource, SvidSourceOptions};
use ca_server::keys::Kek;
use ca_server::spiffe::TrustDomain;
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::{FromDer, X509Certificate};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const API: &str = "spiffe://cluster.local/ns/default/sa/api";

fn aki(der: &[u8]) -> Vec<u8> {
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

/// An independent client in every phase: Python grpcio (istio-agent's request) gets a leaf with
/// a token, and `openssl verify` checks it against the roots of its own response's last element
/// (during a root rotation: old and new). Returns how many roots that element held.
async fn grpcio_leaf_verifies(server: &TestServer, kube: &FakeKube, phase: &str) -> usize {
    let chain = grpcio_chain(server, kube, phase).await;
    let roots = chain.last().unwrap();
    let (ok, out) = crate::profile::openssl_verify(server.dir.path(), roots, &chain[1], &chain[0]);
    assert!(ok, "{phase}: openssl: {out}");
    pem::parse_many(roots).unwrap().len()
}

/// The `cert_chain` Python grpcio (istio-agent's request, with a token) gets from `server`.
pub(crate) async fn grpcio_chain(server: &TestServer, kube: &FakeKube, phase: &str) -> Vec<String> {
    let dir = server
        .dir
        .path()
        .join(format!("grpcio-{}", phase.replace(' ', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("serving-trust.pem");
    std::fs::write(&ca_file, server.serving_trust_pem()).unwrap();
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let token = kube.keys[1].sign(&FakeKube::claims("default", "python"));
    let addr = server.server.grpc_addr.to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ca_tests::run(
            std::process::Command::new(ca_tests::python_tool("python"))
                .arg(workspace.join("tests/python/istio_client.py"))
                .arg("--proto-root")
                .arg(workspace.join("proto"))
                .args([
                    "--addr",
                    &addr,
                    "--token",
                    &token,
                    "--spiffe-id",
                    "spiffe://cluster.local/ns/default/sa/python",
                    // Short-lived like the rest of the run (min_ttl is 10 s here).
                    "--validity",
                    "20",
                    "--ca-file",
                ])
                .arg(&ca_file),
        )
    })
    .await
    .unwrap();
    assert!(ok, "{phase}: python client failed: {stdout}{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    serde_json::from_value(answer["cert_chain"].clone()).unwrap()
}

/// An EU CA (its own trust domain) federated with `us`: it fetches the US bundle over
/// https_spiffe at the US refresh hint, from a bootstrap of the US root.
async fn federated_eu(us: &TestServer) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::federation::free_port();
    let config =
        crate::federation::region_config(dir.path(), Backend::Sqlite, "eu.cluster.local", port)
            .await;
    let bootstrap = dir.path().join("us-bootstrap.pem");
    std::fs::write(&bootstrap, us.serving_root_pem()).unwrap();
    let us_port = us.server.http_addr.port();
    let config = crate::federation::with_federation(config, "cluster.local", us_port, &bootstrap);
    TestServer::start_with(config, dir).await
}

/// The client config without session resumption: every handshake verifies the peer's current
/// certificate against the current trust set (a resumed session would skip both).
fn full_handshakes(config: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// `web` serves on 127.0.0.1 (accepting only `api`, answering "ok"); the returned handshake
/// connects as `api` (accepting only `web`), a full handshake each time.
async fn web_serves_api(
    web: &SvidSource,
    api: &SvidSource,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
+ Clone
+ Send
+ 'static {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(web.server_config(Arc::new(|id: &str| id == API)).unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let connector = tokio_rustls::TlsConnector::from(full_handshakes(
        api.client_config(Arc::new(|id: &str| id == WEB)).unwrap(),
    ));
    move || {
        let connector = connector.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let name = rustls_pki_types::ServerName::try_from("web.invalid").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            let mut answer = [0u8; 2];
            tls.read_exact(&mut answer).await?;
            anyhow::ensure!(&answer == b"ok", "unexpected answer");
            Ok(())
        })
    }
}

async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workloads_keep_talking_through_every_rotation() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        for td in &mut config.trust_domains {
            td.min_ttl = Duration::from_secs(10);
            td.refresh_hint = Duration::from_secs(2);
            td.root_activation_max_wait = Duration::from_secs(3600);
        }
        // The bundle endpoint over https, so the EU CA can fetch it (https_spiffe).
        config.tls.http_tls = true;
    })
    .await;
    let dir = server.dir.path().to_owned();
    let eu = federated_eu(&server).await;
    let start = |sa: &str| {
        let token_file = dir.join(format!("{sa}.token"));
        std::fs::write(&token_file, kube.token("default", sa)).unwrap();
        SvidSource::start(SvidSourceOptions {
            connect: ca_client::ConnectOptions {
                address: server.server.grpc_addr.to_string(),
                ca_pem: server.serving_trust_pem(),
                server_name: Some("localhost".to_owned()),
                client_identity: None,
            },
            token_file: Some(token_file),
            cluster_id: Some("Kubernetes".to_owned()),
            key_type: KeyType::EcdsaP256,
            ttl_seconds: 20,
            follow_bundles: true,
        })
    };
    let web = Arc::new(start("web").await.unwrap());
    let api = Arc::new(start("api").await.unwrap());
    assert_eq!(web.current().spiffe_id, WEB);
    assert_eq!(api.current().spiffe_id, API);

    // web serves, accepting only api; api connects, accepting only web.
    let handshake = web_serves_api(&web, &api).await;
    handshake().await.expect("first handshake");

    // Handshakes all along, about ten a second.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let prober = {
        let (stop, ok, failed, handshake) =
            (stop.clone(), ok.clone(), failed.clone(), handshake.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match handshake().await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The EU CA verifies web's current leaf against its copy of the US bundle, all along.
    let eu_copy = Arc::new(std::sync::Mutex::new(String::new()));
    let eu_checks = Arc::new(AtomicUsize::new(0));
    let eu_failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let eu_checker = {
        let (stop, eu_copy, eu_checks, eu_failed, web) = (
            stop.clone(),
            eu_copy.clone(),
            eu_checks.clone(),
            eu_failed.clone(),
            web.clone(),
        );
        let client = crate::federation::https_client(&eu.serving_root_pem());
        let url = format!(
            "{}/v1/bundles/cluster.local.pem",
            eu.http_url().replace("http://", "https://")
        );
        // The EU CA serves its copy once its first fetch of the US bundle is done (until then,
        // 404: a trust domain it does not know yet).
        let start = Instant::now();
        while !client.get(&url).send().await.unwrap().status().is_success() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the EU CA never fetched the US bundle"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(&url).send().await.unwrap();
                if !response.status().is_success() {
                    let status = response.status();
                    eu_failed
                        .lock()
                        .unwrap()
                        .push(format!("its copy answered {status}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let copy = response.text().await.unwrap();
                let svid = web.current();
                let chain: String = svid.chain.iter().map(|d| ca_tests::cert_pem(d)).collect();
                let now = OffsetDateTime::now_utc().unix_timestamp() as u64;
                match ca_client::verify::verify(
                    chain.as_bytes(),
                    copy.as_bytes(),
                    None,
                    Some(WEB),
                    now,
                ) {
                    Ok(_) => {
                        eu_checks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => eu_failed.lock().unwrap().push(format!("{e}")),
                }
                *eu_copy.lock().unwrap() = copy;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let td = TrustDomain::parse("cluster.local").unwrap();
    let ca = server.server.ca.clone();
    let admin = server.admin_client();
    let kek = Kek::load_or_create(&server.config.kek_file).unwrap().0;
    let under_active = |source: &SvidSource| {
        let active = ca.authorities().get(&td).unwrap().clone();
        aki(&source.current().chain[0]) == active.intermediate_ski
    };
    let began = Instant::now();

    assert_eq!(grpcio_leaf_verifies(&server, &kube, "start").await, 1);

    // 1. Intermediate rotation: both move to the new intermediate at their next renewal.
    admin.rotate("cluster.local", "intermediate").await.unwrap();
    until(
        "renewal under the new intermediate",
        Duration::from_secs(30),
        || under_active(&web) && under_active(&api),
    )
    .await;
    assert_eq!(
        grpcio_leaf_verifies(&server, &kube, "after intermediate").await,
        1
    );

    // 2. Root rotation: publication reaches both at once through WatchBundles.
    admin.rotate("cluster.local", "root").await.unwrap();
    until(
        "the new root in both trust sets",
        Duration::from_secs(15),
        || web.current().trust_roots.len() == 2 && api.current().trust_roots.len() == 2,
    )
    .await;
    assert_eq!(
        grpcio_leaf_verifies(&server, &kube, "root published").await,
        2,
        "old and new roots in the last element"
    );
    // The EU CA's copy holds the new root while nothing chains to it yet.
    let new_root = ca_tests::cert_pem(&ca.authorities().prepared(&td).unwrap().root_der);
    until(
        "the new root in the EU CA's copy of the US bundle",
        Duration::from_secs(15),
        || eu_copy.lock().unwrap().contains(new_root.trim()),
    )
    .await;
    assert!(
        ca.authorities().prepared(&td).is_some(),
        "no leaf under the new root before the EU CA held it"
    );
    // Activation, once converged (both renewed after publication; old leaves expired).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut activated = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !activated {
        assert!(Instant::now() < deadline, "the new root never converged");
        ca.lifecycle_tick(
            &kek,
            OffsetDateTime::now_utc() + time::Duration::seconds(7),
            true,
        )
        .await;
        activated = ca.authorities().prepared(&td).is_none();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    until("leaves under the new root", Duration::from_secs(30), || {
        under_active(&web) && under_active(&api)
    })
    .await;
    assert_eq!(grpcio_leaf_verifies(&server, &kube, "root active").await, 2);

    // 3. Emergency: the active generation is revoked. mTLS renewal with its leaves is refused;
    // the sources fall back to their tokens and get leaves of the fresh generation.
    let revoked = ca.authorities().get(&td).unwrap().generation;
    admin
        .revoke_generation("cluster.local", i64::from(revoked), "cACompromise")
        .await
        .unwrap();
    until(
        "leaves of the generation after the revoked one",
        Duration::from_secs(30),
        || under_active(&web) && under_active(&api),
    )
    .await;
    grpcio_leaf_verifies(&server, &kube, "after emergency").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    eu_checker.await.unwrap();
    let eu_failures = eu_failed.lock().unwrap().clone();
    let eu_verified = eu_checks.load(Ordering::Relaxed);
    assert!(
        eu_failures.is_empty(),
        "the EU CA refused US leaves: {eu_failures:?}"
    );
    let failures = failed.lock().unwrap().clone();
    let handshakes = ok.load(Ordering::Relaxed);
    let seconds = began.elapsed().as_secs_f64();
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    assert!(
        handshakes as f64 >= 5.0 * seconds,
        "{handshakes} handshakes in {seconds:.0} s"
    );
    assert!(
        eu_verified as f64 >= seconds,
        "{eu_verified} EU verifications in {seconds:.0} s"
    );
    println!(
        "{handshakes} handshakes in {seconds:.0} s, 0 failed; the EU CA verified {eu_verified} US leaves, 0 refused"
    );
    eu.stop().await;
    // The sources' WatchBundles streams are still open: the server's shutdown ends them.
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("shutdown with open WatchBundles streams");
    drop((web, api));
}

/// The negative control: the same two workloads, but learning their trust set only when they
/// renew (as istio-agent does), and the new root activated about at once after its publication
/// (the publish lead forced to the minimum, before the workloads converged). One of them then
/// presents a leaf under the new root to a peer that does not trust it yet: handshakes fail, so
/// the zero-downtime test above can fail, and publish-first with convergence is what prevents it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn negative_control_activating_a_new_root_at_once_breaks_handshakes() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        for td in &mut config.trust_domains {
            td.min_ttl = Duration::from_secs(10);
            td.refresh_hint = Duration::from_secs(1);
            // Below what the config accepts (3 x refresh_hint): the lead forced down.
            td.root_activation_max_wait = Duration::from_secs(1);
        }
    })
    .await;
    let dir = server.dir.path().to_owned();
    let start = |sa: &str| {
        let token_file = dir.join(format!("{sa}.token"));
        std::fs::write(&token_file, kube.token("default", sa)).unwrap();
        SvidSource::start(SvidSourceOptions {
            connect: ca_client::ConnectOptions {
                address: server.server.grpc_addr.to_string(),
                ca_pem: server.serving_trust_pem(),
                server_name: Some("localhost".to_owned()),
                client_identity: None,
            },
            token_file: Some(token_file),
            cluster_id: Some("Kubernetes".to_owned()),
            key_type: KeyType::EcdsaP256,
            ttl_seconds: 20,
            follow_bundles: false,
        })
    };
    let web = Arc::new(start("web").await.unwrap());
    // Renewals out of step (about half of the 10 s renewal period apart).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api = Arc::new(start("api").await.unwrap());

    let handshake = web_serves_api(&web, &api).await;
    handshake().await.expect("first handshake");

    // Publish and activate at once.
    server
        .admin_client()
        .rotate("cluster.local", "root")
        .await
        .unwrap();
    let kek = Kek::load_or_create(&server.config.kek_file).unwrap().0;
    let ca = server.server.ca.clone();
    let td = TrustDomain::parse("cluster.local").unwrap();
    ca.lifecycle_tick(
        &kek,
        OffsetDateTime::now_utc() + time::Duration::seconds(4),
        true,
    )
    .await;
    assert!(ca.authorities().prepared(&td).is_none(), "activated");

    let mut failed = 0;
    let mut ok = 0;
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        match handshake().await {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("negative control: {failed} failed, {ok} succeeded");
    assert!(
        failed > 0,
        "activating a root before the workloads held it must break handshakes"
    );
    drop((web, api));
    server.stop().await;
}
