//! The lean client against a real server (the test kit's, in this process): its requests, in
//! both header styles, on resumed TLS sessions and past the server's stream limit, are answered
//! as istio-agent's and ztunnel's are. These were end-to-end tests; the e2e suite now calls the
//! server with tonic and grpcio only, and what is checked here (a token read from the server's
//! HPACK table, the TLS handshake kind and suite, the server's SETTINGS) shows only to a client
//! that owns its TLS connection and frames HTTP/2 itself.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rustls_pki_types::ServerName;

use ca_client::KeyType;
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer};

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

/// A lean client on `server`'s gRPC port with `token`, headers encoded in `style`.
async fn lean_client(server: &TestServer, token: &str, style: HeaderStyle) -> H2Client {
    let config = client_config(&server.serving_root_pem()).unwrap();
    H2Client::connect_with(
        server.server.grpc_addr,
        &config,
        "localhost",
        token,
        "Kubernetes",
        style,
    )
    .await
    .unwrap()
}

/// A request body for a fresh P-256 CSR.
fn fresh_request(metadata: &BTreeMap<String, String>) -> Bytes {
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    encode_request_for(&csr.csr_pem, 0, metadata)
}

/// Checks Istio's response shape (leaf, intermediate, roots), verifies the leaf for `spiffe_id`
/// to the last element, and returns its serial.
fn check_chain(chain: &[String], spiffe_id: &str) -> String {
    assert!(chain.len() >= 3, "leaf, intermediate, roots");
    let now = time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .unsigned_abs();
    let leaf_and_intermediate = format!("{}{}", chain[0], chain[1]);
    ca_client::verify::verify(
        leaf_and_intermediate.as_bytes(),
        chain[chain.len() - 1].as_bytes(),
        None,
        Some(spiffe_id),
        now,
    )
    .unwrap();
    leaf_serial(&chain[0]).unwrap()
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

/// In both header styles a workload's requests are answered, and the certificate received is
/// recorded. In grpc-go's style the second request names its headers (the token too) by HPACK
/// index only; a refusal after it is INVALID_ARGUMENT, so the server read the indexed token
/// (authenticated) before it refused the CSR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_header_styles_are_answered_and_recorded() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    for style in [HeaderStyle::GrpcGo, HeaderStyle::H2] {
        let client = lean_client(&server, &kube.token("default", "web"), style).await;
        let chain = client
            .create_certificate(fresh_request(&BTreeMap::new()))
            .await
            .unwrap();
        let record = the_record(&server, &check_chain(&chain, WEB)).await;
        assert_eq!(record.spiffe_id, WEB);
        assert_eq!(record.api, "istio");

        let chain = client
            .create_certificate(fresh_request(&BTreeMap::new()))
            .await
            .unwrap();
        check_chain(&chain, WEB);

        let refused = client
            .create_certificate(encode_request_for("not a CSR", 0, &BTreeMap::new()))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("grpc-status \"3\""),
            "{style:?}: {refused}"
        );
    }
    server.stop().await;
}

/// `ca-bench --ztunnel --streams N`'s shape: one connection authenticated as a node's ztunnel
/// (headers encoded as its h2 stack does) keeps many requests in flight, each asking for another
/// workload's identity. Every one is issued for the impersonated identity (not the ztunnel's
/// own) and recorded so; a workload token asking the same is refused, so the bench's requests do
/// take the impersonation path.
#[tokio::test]
async fn ztunnel_streams_take_the_impersonation_path() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let ztunnel = lean_client(
        &server,
        &kube.token("istio-system", "ztunnel"),
        HeaderStyle::H2,
    )
    .await;
    let target = |k: usize| format!("spiffe://cluster.local/ns/bench/sa/pod{k}");
    let impersonate = |k: usize| BTreeMap::from([("ImpersonatedIdentity".to_owned(), target(k))]);
    // All 24 are spawned at once: they share the one HTTP/2 connection as concurrent streams.
    let calls: Vec<_> = (0..24)
        .map(|k| {
            let (ztunnel, metadata) = (ztunnel.clone(), impersonate(k));
            tokio::spawn(async move {
                ztunnel
                    .create_certificate(fresh_request(&metadata))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut serials = HashSet::new();
    for (k, call) in calls.into_iter().enumerate() {
        let serial = check_chain(&call.await.unwrap(), &target(k));
        assert_eq!(the_record(&server, &serial).await.spiffe_id, target(k));
        assert!(serials.insert(serial));
    }
    assert_eq!(serials.len(), 24);

    let workload = lean_client(&server, &kube.token("default", "web"), HeaderStyle::GrpcGo).await;
    let refused = workload
        .create_certificate(fresh_request(&impersonate(0)))
        .await
        .unwrap_err();
    // A workload may not impersonate: UNAUTHENTICATED with Istio's message.
    assert!(
        refused.to_string().contains("grpc-status \"16\"")
            && refused.to_string().contains("impersonation"),
        "{refused}"
    );
    server.stop().await;
}

/// A reconnecting workload (`ca-bench grpc --reconnect resume`) resumes its TLS session
/// (stateless tickets), and resuming skips no check: on a resumed connection a good token still
/// issues and a forged one is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resume_tls_and_are_still_authenticated() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let tickets = Arc::new(CountingTickets::default());
    let mut config = (*client_config(&server.serving_root_pem()).unwrap()).clone();
    config.resumption = rustls::client::Resumption::store(tickets.clone());
    let config = Arc::new(config);
    // (client, whether its handshake resumed a session, the cipher suite the server chose)
    let connect = |token: String| {
        let config = config.clone();
        let address = server.server.grpc_addr;
        async move {
            let tls = connect_tls(address, &config, "localhost").await.unwrap();
            let session = tls.get_ref().1;
            let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let suite = session.negotiated_cipher_suite().map(|s| s.suite());
            let client =
                H2Client::start(tls, "localhost", &token, "Kubernetes", HeaderStyle::GrpcGo)
                    .await
                    .unwrap();
            (client, resumed, suite)
        }
    };
    let issue = |client: H2Client| async move {
        client
            .create_certificate(fresh_request(&BTreeMap::new()))
            .await
    };

    // The first connection is a full handshake; its answer carries the server's tickets.
    let (first, resumed, suite) = connect(kube.token("default", "web")).await;
    assert!(!resumed);
    // The server's suite order decides: rustls clients list AES-256-GCM first.
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    check_chain(&issue(first).await.unwrap(), WEB);
    // One ticket per handshake (rustls' default is two).
    assert_eq!(tickets.received(), 1);

    // Many other clients connect meanwhile (more than rustls' default 256-entry server-side
    // session cache holds): the ticket is stateless, so the first client still resumes.
    let root = server.serving_root_pem();
    for _ in 0..300 {
        H2Client::connect_with(
            server.server.grpc_addr,
            &client_config(&root).unwrap(),
            "localhost",
            "unused",
            "Kubernetes",
            HeaderStyle::GrpcGo,
        )
        .await
        .unwrap();
    }
    let (again, resumed, _) = connect(kube.token("default", "web")).await;
    assert!(resumed, "the first client's session resumes");
    check_chain(&issue(again).await.unwrap(), WEB);
    // The resumed handshake used that ticket and brought the next one.
    assert_eq!(tickets.received(), 2);

    // Signed by a key the cluster never published.
    let (forged, resumed, _) = connect(FakeKube::new().token("default", "web")).await;
    assert!(resumed);
    let refused = issue(forged).await.unwrap_err();
    assert!(
        refused.to_string().contains("grpc-status \"16\""),
        "UNAUTHENTICATED on a resumed session: {refused}"
    );
    server.stop().await;
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    received: std::sync::atomic::AtomicUsize,
}

impl Default for CountingTickets {
    fn default() -> Self {
        CountingTickets {
            inner: rustls::client::ClientSessionMemoryCache::new(16),
            received: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl CountingTickets {
    fn received(&self) -> usize {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.received
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// The lean client reads the server's stream limit from its SETTINGS (at least the 100 that
/// grpc-go and hyper assume before the SETTINGS arrive; the e2e suite checks that a fresh tonic
/// connection gets 100 requests at once) and multiplexes 150 requests at once on one connection,
/// beyond the limit: all answered, each with its own recorded certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexes_past_the_stream_limit() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Postgres, &kube).await;
    let client = lean_client(&server, &kube.token("default", "web"), HeaderStyle::GrpcGo).await;
    client
        .create_certificate(fresh_request(&BTreeMap::new()))
        .await
        .unwrap();
    let limit = client.server_max_concurrent_streams();
    assert!((100..=150).contains(&limit), "{limit}");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let (client, body) = (client.clone(), fresh_request(&BTreeMap::new()));
        calls.spawn(async move {
            let chain = client.create_certificate(body).await.unwrap();
            leaf_serial(&chain[0]).unwrap()
        });
    }
    let serials: HashSet<String> = calls.join_all().await.into_iter().collect();
    assert_eq!(serials.len(), 150);
    for serial in &serials {
        the_record(&server, serial).await;
    }
    server.stop().await;
}
