//! Trust bundles and federation: the SPIFFE bundle endpoint (checked by Python's cryptography),
//! ETags, the bundle map, WatchBundles; a US CA (Postgres) and an EU CA (SQLite) federating both
//! ways over https_spiffe on loopback, with workload certificates and a mutual TLS handshake that
//! fail before and succeed after; and every refusal rule keeping the last good bundle.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use ca_client::KeyType;
use ca_server::config::Config;
use ca_server::federation::{FetchError, FetchOutcome, fetch_once};
use ca_tests::{Backend, TestServer, python_tool, run};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client that trusts `roots` (PEM) for https and skips nothing else.
pub(crate) fn https_client(roots_pem: &[u8]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_hostnames(true);
    for block in pem::parse_many(roots_pem).unwrap() {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_der(block.contents()).unwrap());
    }
    builder.build().unwrap()
}

pub(crate) async fn region_config(
    dir: &std::path::Path,
    backend: Backend,
    td: &str,
    http_port: u16,
) -> Config {
    let url = ca_tests::fresh_database(backend, dir).await;
    let mut config = Config::ephemeral(dir, &url);
    let parsed = Config::from_toml(&format!(
        "[tls]\nserving_trust_domain = \"{td}\"\nhttp_tls = true\n[[trust_domains]]\nname = \"{td}\"\nrefresh_hint = \"30s\"\n"
    ))
    .unwrap();
    config.trust_domains = parsed.trust_domains;
    config.tls = parsed.tls;
    config.listen.http = SocketAddr::from(([127, 0, 0, 1], http_port));
    config
}

pub(crate) fn with_federation(
    mut config: Config,
    peer: &str,
    peer_port: u16,
    bootstrap: &std::path::Path,
) -> Config {
    let own = config.trust_domains[0].name.to_string();
    let parsed = Config::from_toml(&format!(
        r#"
        [tls]
        serving_trust_domain = "{own}"
        [[trust_domains]]
        name = "{own}"
        refresh_hint = "30s"
        federates_with = ["{peer}"]
        [[federation]]
        trust_domain = "{peer}"
        url = "https://127.0.0.1:{peer_port}/v1/bundles/{peer}"
        profile = "https_spiffe"
        endpoint_spiffe_id = "spiffe://{peer}/ca"
        bootstrap_bundle_file = "{}"
        "#,
        bootstrap.display()
    ))
    .unwrap();
    config.trust_domains = parsed.trust_domains;
    config.federation = parsed.federation;
    config
}

struct Workload {
    chain_pem: String,
    key_pem: String,
    trust_pem: String,
    id: String,
}

async fn workload(server: &TestServer, id: &str) -> Workload {
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, Some(id)).unwrap();
    let issued = server
        .admin_client()
        .issue(&csr.csr_pem, id, None)
        .await
        .unwrap();
    Workload {
        chain_pem: issued.chain_pem,
        key_pem: csr.key_pem.to_string(),
        trust_pem: issued.root_pem,
        id: id.to_owned(),
    }
}

fn certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

fn key(pem_text: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(pem::parse(pem_text).unwrap().into_contents().into())
}

fn roots(pem_text: &str) -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(pem_text) {
        store.add(cert).unwrap();
    }
    Arc::new(store)
}

/// The client's server check: chain to its trust, and the expected SPIFFE ID (no host names).
#[derive(Debug)]
struct SpiffeIdVerifier {
    inner: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    expected: String,
}

impl rustls::client::danger::ServerCertVerifier for SpiffeIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        // webpki's name check would look for a DNS name; SPIFFE checks the URI instead.
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)) => {
            }
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let id = ca_client::inspect::first_uri(end_entity.as_ref()).unwrap_or_default();
        if id != self.expected {
            return Err(rustls::Error::General(format!(
                "server is {id}, expected {}",
                self.expected
            )));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A mutual TLS handshake over loopback between `client` and `server`, each trusting what its
/// own CA handed it; both sides check the other's SPIFFE ID.
async fn mtls_handshake(client: &Workload, server: &Workload) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&server.trust_pem),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs(&server.chain_pem), key(&server.key_pem))
        .map_err(|e| e.to_string())?;
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&client.trust_pem),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeIdVerifier {
            inner,
            expected: server.id.clone(),
        }))
        .with_client_auth_cert(certs(&client.chain_pem), key(&client.key_pem))
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let expected_client = client.id.clone();
    let server_task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| format!("server side: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client certificate")?;
        let id = ca_client::inspect::first_uri(peer.as_ref()).unwrap_or_default();
        if id != expected_client {
            return Err(format!("client is {id}"));
        }
        use tokio::io::AsyncWriteExt;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(ServerName::try_from("workload.invalid").unwrap(), stream)
            .await
            .map_err(|e| format!("client side: {e}"))?;
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        if buf != b"hello" {
            return Err("no data".to_owned());
        }
        Ok(())
    }
    .await;
    let server_result = server_task.await.unwrap();
    client_result.and(server_result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn us_and_eu_federate_both_ways() {
    let (us_port, eu_port) = (free_port(), free_port());
    let us_dir = tempfile::tempdir().unwrap();
    let eu_dir = tempfile::tempdir().unwrap();
    let us_config = region_config(
        us_dir.path(),
        Backend::Postgres,
        "us.cluster.local",
        us_port,
    )
    .await;
    let eu_config =
        region_config(eu_dir.path(), Backend::Sqlite, "eu.cluster.local", eu_port).await;
    let us = TestServer::start_with(us_config, us_dir).await;
    let eu = TestServer::start_with(eu_config, eu_dir).await;
    let us_web = "spiffe://us.cluster.local/ns/shop/sa/frontend";
    let eu_api = "spiffe://eu.cluster.local/ns/shop/sa/api";

    // Before federation: each side trusts only its own root.
    let us_workload = workload(&us, us_web).await;
    let eu_workload = workload(&eu, eu_api).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    assert!(
        ca_client::verify::verify(
            us_workload.chain_pem.as_bytes(),
            eu_workload.trust_pem.as_bytes(),
            None,
            None,
            now
        )
        .is_err()
    );
    let refused = mtls_handshake(&us_workload, &eu_workload).await;
    assert!(refused.is_err(), "handshake must fail before federation");

    // Each side's bootstrap bundle is the other's root, handed over out of band.
    let us_root = us.serving_root_pem();
    let eu_root = eu.serving_root_pem();
    let (us_config, us_dir) = us.stop().await;
    let (eu_config, eu_dir) = eu.stop().await;
    let us_bootstrap = us_dir.path().join("eu-bootstrap.pem");
    let eu_bootstrap = eu_dir.path().join("us-bootstrap.pem");
    std::fs::write(&us_bootstrap, &eu_root).unwrap();
    std::fs::write(&eu_bootstrap, &us_root).unwrap();
    let us_config = with_federation(us_config, "eu.cluster.local", eu_port, &us_bootstrap);
    let eu_config = with_federation(eu_config, "us.cluster.local", us_port, &eu_bootstrap);
    let us = TestServer::start_with(us_config, us_dir).await;
    let eu = TestServer::start_with(eu_config, eu_dir).await;
    // Fetch now rather than wait for the loops (which fetched at start, possibly before the peer
    // was listening).
    for (server, peer) in [(&us, "eu.cluster.local"), (&eu, "us.cluster.local")] {
        let entry = server
            .config
            .federation
            .iter()
            .find(|f| f.trust_domain.as_str() == peer)
            .unwrap();
        let outcome = fetch_once(
            &server.server.ca,
            entry,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .await;
        assert!(
            matches!(
                outcome,
                Ok(FetchOutcome::Updated { .. } | FetchOutcome::Unchanged { .. })
            ),
            "{outcome:?}"
        );
    }
    // The federated bundle is served (over https, verified with the peer's own root).
    let served = https_client(&us_root)
        .get(format!(
            "https://127.0.0.1:{us_port}/v1/bundles/eu.cluster.local.pem"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served.as_bytes(), eu_root.as_slice());

    // After: what each CA hands its workloads includes the other's root.
    let us_workload = workload(&us, us_web).await;
    let eu_workload = workload(&eu, eu_api).await;
    assert_eq!(pem::parse_many(&us_workload.trust_pem).unwrap().len(), 2);
    for (leaf, trust) in [(&us_workload, &eu_workload), (&eu_workload, &us_workload)] {
        let verified = ca_client::verify::verify(
            leaf.chain_pem.as_bytes(),
            trust.trust_pem.as_bytes(),
            None,
            Some(&leaf.id),
            now,
        );
        assert!(
            verified.is_ok(),
            "{} against the other side's trust: {:?}",
            leaf.id,
            verified.err()
        );
    }
    mtls_handshake(&us_workload, &eu_workload).await.unwrap();
    mtls_handshake(&eu_workload, &us_workload).await.unwrap();

    // The Istio path hands the same trust as the last element.
    let metrics = https_client(&us_root)
        .get(format!("https://127.0.0.1:{us_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ca_federation_bundle_sequence{trust_domain=\"eu.cluster.local\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "ca_federation_last_success_timestamp_seconds{trust_domain=\"eu.cluster.local\"}"
        ),
        "{metrics}"
    );
    us.stop().await;
    eu.stop().await;
}

/// A bundle endpoint we control (https_web, a test CA), to feed the fetcher every bad input.
struct FakeEndpoint {
    port: u16,
    response: Arc<Mutex<(u16, Vec<u8>)>>,
    ca_pem: String,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn fake_endpoint() -> FakeEndpoint {
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
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let response = Arc::new(Mutex::new((200u16, b"{}".to_vec())));
    let served = response.clone();
    let router = axum::Router::new().fallback(move || {
        let served = served.clone();
        async move {
            let (status, body) = served.lock().unwrap().clone();
            (http::StatusCode::from_u16(status).unwrap(), body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(ca_server::http::tls_serve::serve(
        listener,
        Arc::new(config),
        router,
        stop_rx,
    ));
    FakeEndpoint {
        port,
        response,
        ca_pem: ca_cert.pem(),
        stop,
    }
}

fn peer_bundle(roots: &[Vec<u8>], sequence: u64) -> Vec<u8> {
    ca_server::trust::bundle::render(roots, sequence, Some(60))
        .to_string()
        .into_bytes()
}

fn ca_root() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bundles_keep_the_last_good_one() {
    let endpoint = fake_endpoint().await;
    // Serve a good bundle from the start: the server's own fetch loop runs as soon as it starts.
    let good = vec![ca_root()];
    *endpoint.response.lock().unwrap() = (200, peer_bundle(&good, 5));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("web-ca.pem");
    std::fs::write(&ca_file, &endpoint.ca_pem).unwrap();
    let url = ca_tests::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut config = Config::ephemeral(dir.path(), &url);
    config.federation = Config::from_toml(&format!(
        "[[federation]]\ntrust_domain = \"peer.example\"\nurl = \"https://127.0.0.1:{}/bundle\"\nprofile = \"https_web\"\nca_file = \"{}\"\nrefresh_hint = \"1h\"\n",
        endpoint.port,
        ca_file.display()
    ))
    .unwrap()
    .federation;
    let server = TestServer::start_with(config, dir).await;
    let ca = &server.server.ca;
    let entry = server.config.federation[0].clone();
    let now = || time::OffsetDateTime::now_utc().unix_timestamp();
    let set = |status: u16, body: Vec<u8>| *endpoint.response.lock().unwrap() = (status, body);
    let served = || async {
        let body = reqwest::get(format!("{}/v1/bundles/peer.example", server.http_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };

    // Wait for the server's own fetch loop to take the good bundle: its first fetch must not
    // land among the refusals below (it would count as one more), and after a success it waits
    // about an hour (`refresh_hint`).
    let bundle_url = format!("{}/v1/bundles/peer.example", server.http_url());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !reqwest::get(&bundle_url)
        .await
        .unwrap()
        .status()
        .is_success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the fetch loop never took the bundle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        fetch_once(ca, &entry, now()).await.unwrap(),
        FetchOutcome::Unchanged { sequence: 5 }
    );
    let last_good = served().await;
    assert_eq!(last_good["spiffe_sequence"], 5);
    set(200, peer_bundle(&good, 5));
    assert_eq!(
        fetch_once(ca, &entry, now()).await.unwrap(),
        FetchOutcome::Unchanged { sequence: 5 }
    );

    let other = vec![ca_root()];
    let not_ca = {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["leaf".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    };
    let mut duplicate_map = String::from("{\"trust_domains\": {\"peer.example\": ");
    duplicate_map.push_str(&String::from_utf8(peer_bundle(&other, 9)).unwrap());
    duplicate_map.push_str(", \"peer.example\": ");
    duplicate_map.push_str(&String::from_utf8(peer_bundle(&other, 10)).unwrap());
    duplicate_map.push_str("}}");
    let cases: Vec<(&str, u16, Vec<u8>, &str)> = vec![
        (
            "equal sequence, other content",
            200,
            peer_bundle(&other, 5),
            "stale_sequence",
        ),
        (
            "lower sequence",
            200,
            peer_bundle(&other, 4),
            "stale_sequence",
        ),
        (
            "duplicate trust domain in a map",
            200,
            duplicate_map.into_bytes(),
            "duplicate_trust_domain",
        ),
        ("over 1 MiB", 200, vec![b' '; 1024 * 1024 + 10], "too_large"),
        ("not a CA", 200, peer_bundle(&[not_ca], 11), "not_ca"),
        ("not JSON", 200, b"<html>".to_vec(), "not_json"),
        ("server error", 500, b"oops".to_vec(), "http_status"),
    ];
    // The sequence and refresh-hint family: out of range or not an integer is refused, so no
    // peer can pin us to a sequence nothing real will ever pass.
    let with = |field: &str, raw: &str| {
        let mut bundle: serde_json::Value =
            serde_json::from_slice(&peer_bundle(&other, 12)).unwrap();
        bundle[field] = serde_json::from_str(raw).unwrap();
        bundle.to_string().into_bytes()
    };
    let mut cases = cases;
    for (name, raw) in [
        ("sequence 2^64-1", "18446744073709551615"),
        ("sequence 2^53", "9007199254740992"),
        ("sequence -1", "-1"),
        ("sequence as a string", "\"13\""),
        ("sequence 13.5", "13.5"),
        ("sequence null", "null"),
    ] {
        cases.push((name, 200, with("spiffe_sequence", raw), "bad_sequence"));
    }
    for (name, raw) in [
        ("hint 0", "0"),
        ("hint -60", "-60"),
        ("hint \"60\"", "\"60\""),
    ] {
        cases.push((
            name,
            200,
            with("spiffe_refresh_hint", raw),
            "bad_refresh_hint",
        ));
    }
    let refusals = cases.len() as u64;
    for (name, status, body, reason) in cases {
        set(status, body);
        let err = fetch_once(ca, &entry, now()).await.unwrap_err();
        assert_eq!(err.reason(), reason, "{name}: {err}");
        assert_eq!(
            served().await,
            last_good,
            "{name}: the last good bundle is still served"
        );
    }
    // A bundle map with exactly one entry is fine; a higher sequence replaces the bundle.
    let map = format!(
        "{{\"trust_domains\": {{\"peer.example\": {}}}}}",
        String::from_utf8(peer_bundle(&other, 6)).unwrap()
    );
    set(200, map.into_bytes());
    assert_eq!(
        fetch_once(ca, &entry, now()).await.unwrap(),
        FetchOutcome::Updated { sequence: 6 }
    );
    assert_eq!(served().await["spiffe_sequence"], 6);
    let metrics = server.metrics().await;
    // Every refusal, all here.
    let errors: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("ca_federation_fetch_errors_total{trust_domain=\"peer.example\"} ")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(errors, refusals, "{metrics}");

    // A peer pushed to the highest sequence we accept pins us there: a real bundle after it is
    // stale. An operator's reset (admin role only, audited) forgets it and fetches again.
    set(
        200,
        peer_bundle(&other, ca_server::trust::bundle::MAX_SEQUENCE),
    );
    fetch_once(ca, &entry, now()).await.unwrap();
    set(200, peer_bundle(&good, 7));
    assert_eq!(
        fetch_once(ca, &entry, now()).await.unwrap_err().reason(),
        "stale_sequence"
    );
    let admin = server.admin_client();
    let viewer = admin
        .create_token("fed-viewer", "viewer", None)
        .await
        .unwrap();
    let as_viewer = ca_client::AdminClient::new(&server.admin_url(), &viewer.body.token).unwrap();
    let refused = as_viewer
        .reset_federation("peer.example")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ca_client::Error::Server { status: 403, .. }),
        "{refused:?}"
    );
    let unknown = admin.reset_federation("nobody.example").await.unwrap_err();
    assert!(
        matches!(unknown, ca_client::Error::Server { status: 404, .. }),
        "{unknown:?}"
    );
    let reset = admin.reset_federation("peer.example").await.unwrap();
    assert!(reset.body.removed);
    assert_eq!(reset.body.fetch, "updated");
    assert_eq!(reset.body.sequence, Some(7));
    assert_eq!(served().await["spiffe_sequence"], 7);
    let audit = admin.audit(20).await.unwrap();
    assert!(
        audit
            .body
            .items
            .iter()
            .any(|e| e.action == "federation.reset"
                && e.outcome == "success"
                && e.actor == "bootstrap"),
        "{:?}",
        audit.json
    );

    // An endpoint whose certificate does not chain to ca_file is refused.
    let other_endpoint = fake_endpoint().await;
    let mut wrong = entry.clone();
    wrong.url = format!("https://127.0.0.1:{}/bundle", other_endpoint.port);
    assert!(matches!(
        fetch_once(ca, &wrong, now()).await,
        Err(FetchError::Transport(_))
    ));

    // The last good bundle survives a restart.
    let (config, dir) = server.stop().await;
    let server = TestServer::start_with(config, dir).await;
    let body = reqwest::get(format!("{}/v1/bundles/peer.example", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["spiffe_sequence"],
        7
    );
    let _ = endpoint.stop.send(true);
    let _ = other_endpoint.stop.send(true);
    server.stop().await;
}

/// Our bundle endpoint: SPIFFE format checked by pyca/cryptography, sequence stable across
/// restarts, ETag, `.pem`, the bundle map, WatchBundles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_endpoint() {
    let server = TestServer::start(Backend::Sqlite).await;
    let url = format!("{}/v1/bundles/cluster.local", server.http_url());
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body = response.text().await.unwrap();
    let file = server.dir.path().join("bundle.json");
    std::fs::write(&file, &body).unwrap();
    let (ok, out, err) = run(Command::new(python_tool("python"))
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/bundle_check.py"))
        .arg(&file));
    assert!(ok, "{out}{err}");
    let checked: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(checked["keys"], 1);
    let bundle: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["spiffe_refresh_hint"], 300);
    let sequence = bundle["spiffe_sequence"].as_u64().unwrap();
    assert!(bundle["keys"][0].get("kid").is_none());

    let not_modified = reqwest::Client::new()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    let pem_text = reqwest::get(format!("{url}.pem"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pem_text.as_bytes(), server.serving_root_pem().as_slice());
    let map: serde_json::Value = reqwest::get(format!("{}/v1/bundles", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        map["trust_domains"]["cluster.local"]["keys"],
        bundle["keys"]
    );
    assert!(
        map["trust_domains"]["cluster.local"]
            .get("spiffe_refresh_hint")
            .is_none()
    );
    assert_eq!(
        reqwest::get(format!("{}/v1/bundles/nope.example", server.http_url()))
            .await
            .unwrap()
            .status(),
        404
    );

    // WatchBundles: the current set first.
    let client = server.grpc_client(None).await;
    let mut stream = client.watch_bundles().await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.bundles.len(), 1);
    assert_eq!(first.bundles[0].sequence, sequence);
    // A change (a federated bundle arriving) is pushed.
    server.server.ca.bundles().set(
        ca_server::spiffe::TrustDomain::parse("peer.example").unwrap(),
        ca_server::trust::Bundle::new(
            3,
            vec![ca_root()],
            ca_server::trust::Source::Federated,
            "x".to_owned(),
        ),
    );
    let second = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.bundles.len(), 2);

    // The sequence survives a restart (same content: same sequence).
    drop(stream);
    let (config, dir) = server.stop().await;
    let server = TestServer::start_with(config, dir).await;
    let again: serde_json::Value =
        reqwest::get(format!("{}/v1/bundles/cluster.local", server.http_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(again["spiffe_sequence"].as_u64().unwrap(), sequence);
    server.stop().await;
}
