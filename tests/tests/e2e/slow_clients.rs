//! Connection limits under hostile clients: slow-loris connections to the gRPC and public HTTP
//! ports are closed by the handshake and header timeouts while a well-behaved workload keeps
//! getting certificates; connections over a listener's cap are closed at once; `WatchBundles`
//! streams are capped per caller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ca_client::{KeyType, TokenAuth};
use ca_proto::ca_v1::certificate_authority_client::CertificateAuthorityClient;
use ca_proto::ca_v1::{GetBundlesResponse, WatchBundlesRequest};
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
/// The server's handshake and header read timeouts (`ca-server/src/limits.rs`).
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// The admin listener's connection cap (`limits::ADMIN_HTTP`).
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// How a slow client behaves.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// Sends `prefix`, then one more byte every second.
    Trickle(&'static [u8]),
}

/// A TLS record header announcing a 512-byte handshake record that never completes.
const TLS_RECORD_START: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00];
/// An HTTP/1 request head that never ends.
const HTTP_HEAD_START: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: ca\r\nX-Slow: ";

/// Plays `slow` against `addr` until the server closes the connection (EOF or an error);
/// returns how long the server took, or `None` if it was still open after `give_up`.
async fn slow_client(addr: SocketAddr, slow: Slow, give_up: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    if let Slow::Trickle(prefix) = slow
        && stream.write_all(prefix).await.is_err()
    {
        return Some(started.elapsed());
    }
    let mut buf = [0u8; 512];
    while started.elapsed() < give_up {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // Whatever the server says before it closes (an alert, a 408) is read past.
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
        if matches!(slow, Slow::Trickle(_)) && stream.write_all(b"a").await.is_err() {
            return Some(started.elapsed());
        }
    }
    None
}

fn token_auth(token: &str) -> TokenAuth {
    TokenAuth {
        token: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    }
}

/// Slow loris: 200 connections to the gRPC port and 200 to the public HTTP port, half silent and
/// half sending a byte a second. A workload issuing certificates all along (on its connection and
/// on new ones) is served promptly every time, and every slow connection is closed by the server
/// within the handshake or header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_and_issuance_goes_on() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let give_up = SERVER_TIMEOUT + Duration::from_secs(5);
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (grpc, http) = if i % 2 == 0 {
            (Slow::Silent, Slow::Silent)
        } else {
            (
                Slow::Trickle(TLS_RECORD_START),
                Slow::Trickle(HTTP_HEAD_START),
            )
        };
        let (grpc_addr, http_addr) = (server.server.grpc_addr, server.server.http_addr);
        slow.spawn(async move { ("grpc", grpc, slow_client(grpc_addr, grpc, give_up).await) });
        slow.spawn(async move { ("http", http, slow_client(http_addr, http, give_up).await) });
    }
    // Let every slow connection reach the server before the workload starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let auth = token_auth(&kube.token("default", "web"));
    let metadata = BTreeMap::new();
    let mut client = server.grpc_client(None).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < SERVER_TIMEOUT + Duration::from_secs(1) {
        if latencies.len() % 10 == 9 {
            // A new connection (TLS handshake included) is served too.
            let connecting = Instant::now();
            client = server.grpc_client(None).await;
            assert!(
                connecting.elapsed() < Duration::from_secs(2),
                "connecting took {:?}",
                connecting.elapsed()
            );
        }
        let issuing = Instant::now();
        let chain = client
            .create_certificate(&csr.csr_pem, 3600, &auth, &metadata)
            .await
            .unwrap();
        assert!(chain.len() >= 3);
        latencies.push(issuing.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(latencies.len() >= 20, "only {} issuances", latencies.len());
    assert!(
        slowest < Duration::from_secs(2),
        "slowest issuance {slowest:?}"
    );

    let mut closed = Vec::new();
    while let Some(joined) = slow.join_next().await {
        let (port, how, after) = joined.unwrap();
        let after = after.unwrap_or_else(|| panic!("{port} {how:?}: still open after {give_up:?}"));
        assert!(
            after >= SERVER_TIMEOUT - Duration::from_secs(1),
            "{port} {how:?}: closed after {after:?}, before the timeout"
        );
        closed.push(after);
    }
    assert_eq!(closed.len(), 400);
    let last = closed.iter().max().copied().unwrap_or_default();
    assert!(
        last <= SERVER_TIMEOUT + Duration::from_secs(3),
        "last slow connection closed after {last:?}"
    );
    eprintln!(
        "{} issuances, slowest {slowest:?}; 400 slow connections closed after at most {last:?}",
        latencies.len()
    );
    server.stop().await;
}

/// Sends a request head on `stream` and reads until the status line arrives.
async fn request_answered(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(b"GET /admin/v1/nothing HTTP/1.1\r\nHost: ca\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 256];
    let mut read = 0;
    while read < 12 {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf[read..])).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => read += n,
        }
    }
    buf.starts_with(b"HTTP/1.1 ")
}

/// The admin listener holds at most 256 connections: the 257th is closed at once, without an
/// answer, and once one of the 256 goes, a new connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let server = TestServer::start(Backend::Sqlite).await;
    let addr = server.server.admin_addr;
    let mut held = Vec::new();
    for i in 0..ADMIN_MAX_CONNECTIONS {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(request_answered(&mut stream).await, "connection {i}");
        held.push(stream);
    }

    let mut over = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf))
        .await
        .expect("the connection over the cap is closed at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without an answer: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if request_answered(&mut stream).await {
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot serves again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    server.stop().await;
}

/// A `WatchBundles` call as `token`'s caller (or without credentials); the stream once its
/// first message (the current bundles) has arrived.
async fn watch(
    client: &mut CertificateAuthorityClient<tonic::transport::Channel>,
    token: Option<&str>,
) -> Result<tonic::Streaming<GetBundlesResponse>, tonic::Status> {
    let mut request = tonic::Request::new(WatchBundlesRequest {});
    if let Some(token) = token {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata.insert("clusterid", "Kubernetes".parse().unwrap());
    }
    let mut stream = client.watch_bundles(request).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()?
        .unwrap();
    assert!(!first.bundles.is_empty());
    Ok(stream)
}

/// One caller keeps at most 8 `WatchBundles` streams: the 9th is `RESOURCE_EXHAUSTED`, another
/// caller still gets its stream, callers without credentials share a cap per address, bad
/// credentials are refused, and closing a stream frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_bundles_streams_are_capped_per_caller() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
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
    let mut client = CertificateAuthorityClient::new(channel);
    let web = kube.token("default", "web");
    let api = kube.token("default", "api");

    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(watch(&mut client, Some(&web)).await.unwrap());
    }
    let refused = watch(&mut client, Some(&web)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // The same identity on another connection shares the cap.
    let mut other_connection = CertificateAuthorityClient::new(
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
            .unwrap(),
    );
    let refused = watch(&mut other_connection, Some(&web)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Another caller is not affected.
    let _api_stream = watch(&mut client, Some(&api)).await.unwrap();
    // Bad credentials are refused, not counted as anonymous.
    let bad = watch(&mut client, Some("not-a-token")).await.unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated, "{bad:?}");
    // Callers without credentials: one cap per address.
    let mut anonymous = Vec::new();
    for _ in 0..8 {
        anonymous.push(watch(&mut client, None).await.unwrap());
    }
    let refused = watch(&mut client, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Closing a stream frees its slot (the server sees the cancellation shortly).
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        match watch(&mut client, Some(&web)).await {
            Ok(stream) => break stream,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the slot was not freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    streams.push(again);
    let refused = watch(&mut client, Some(&web)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // The issuance API is unaffected by open watches.
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let chain = server
        .grpc_client(None)
        .await
        .create_certificate(&csr.csr_pem, 3600, &token_auth(&web), &BTreeMap::new())
        .await
        .unwrap();
    assert!(
        pem::parse(&chain[0]).is_ok(),
        "{WEB} got a certificate while watching"
    );
    // Open streams would hold the server's graceful shutdown: close them first.
    drop((streams, anonymous, _api_stream, client, other_connection));
    server.stop().await;
}
