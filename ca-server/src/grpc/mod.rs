//! The gRPC port (tonic over our own rustls acceptor): Istio's `IstioCertificateService`, our
//! `ca.v1.CertificateAuthority`, `grpc.health.v1.Health` and server reflection.
//!
//! Limits (`crate::limits`): at most `limits::GRPC` connections (over the cap a new one is
//! closed at once, before its handshake); the TLS handshake runs per connection in its own task
//! (a slow client cannot stall the accept loop) within `limits::HANDSHAKE_TIMEOUT`; a client
//! must then start talking within `limits::HEADER_READ_TIMEOUT`, answer HTTP/2 keep-alive pings,
//! and is closed after `limits::IDLE_TIMEOUT` of silence. The resulting connection still exposes
//! the verified client chain to handlers through `Request::peer_certs`.

pub mod api;
pub mod istio;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;

use crate::authn::{self, Credentials, Principal};
use crate::ca::Ca;
use crate::limits::{self, Connection, ConnectionLimit, PerCaller};

/// Largest gRPC message accepted (a CSR is capped at 64 KiB on its own).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Concurrent requests (HTTP/2 streams) one connection may have open.
///
/// Not below 100: grpc-go (istio-agent) and hyper (ztunnel, tonic) assume 100 until the
/// server's SETTINGS arrive, so a lower limit lets the first burst on a new connection (a node
/// restarting, asking for all its pods' certificates) be refused with REFUSED_STREAM, which
/// clients report as UNAVAILABLE.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Connections waiting to be handed to the gRPC server.
const ACCEPT_QUEUE: usize = 256;

/// Serves the gRPC API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ca: Ca,
    max_connection_age: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<
        Result<Connection<TlsStream<TcpStream>>, std::io::Error>,
    >(ACCEPT_QUEUE);
    let acceptor = TlsAcceptor::from(tls);
    let accept_loop = tokio::spawn(async move {
        let mut limit = ConnectionLimit::new(&limits::GRPC);
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Over the cap the stream is dropped here: the client sees its connection closed.
            let Some(permit) = limit.admit(peer) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(Connection::new(tls, permit))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %crate::report::Chain(&e), "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ca_proto::istio::istio_certificate_service_server::IstioCertificateServiceServer<istio::IstioService>>()
        .await;
    health_reporter
        .set_serving::<ca_proto::ca_v1::certificate_authority_server::CertificateAuthorityServer<api::ApiService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ca_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| tracing::error!(error = %crate::report::Chain(&e), "reflection service"))
        .ok();

    let istio =
        ca_proto::istio::istio_certificate_service_server::IstioCertificateServiceServer::new(
            istio::IstioService { ca: ca.clone() },
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Long-lived `WatchBundles` streams end when the server stops (a graceful shutdown waits
    // for every open stream).
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let api = ca_proto::ca_v1::certificate_authority_server::CertificateAuthorityServer::new(
        api::ApiService {
            ca,
            watchers: PerCaller::new(limits::MAX_WATCHES_PER_CALLER),
            stopping: stop_signal,
        },
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let result = Server::builder()
        // A client that stops answering pings (gone, or hostile) is closed; `Connection` closes
        // one that never speaks HTTP/2 at all.
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        // Connections are recycled (`Config::grpc_max_connection_age`): GOAWAY, the requests
        // in flight finish, the client reconnects, possibly to another replica. No
        // `max_connection_age_grace`: tonic 0.14 then skips the GOAWAY and only cuts the
        // connection at age + grace, failing whatever is in flight. So a connection closes when
        // its last stream ends (unary calls time out at 30 s; an open `WatchBundles` stream
        // keeps its connection until it ends).
        .max_connection_age(max_connection_age)
        .timeout(Duration::from_secs(30))
        // Per-client fairness: one connection (one istio-agent, or one ztunnel speaking for a
        // node's pods) holds at most 100 of the default 256 issuance slots; its further
        // requests wait in the client, not in a server queue. Admission
        // (`ca::Admission`) sheds what the server as a whole cannot take in time.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(istio)
        .add_service(api)
        .serve_with_incoming_shutdown(ReceiverStream::new(receiver), shutdown)
        .await;
    accept_loop.abort();
    result
}

/// Reads the caller's credentials from a request and authenticates them; failures are logged
/// with their reason and counted, and become an opaque status.
pub(crate) async fn authenticate<T>(
    ca: &Ca,
    request: &tonic::Request<T>,
    now: OffsetDateTime,
) -> Result<Principal, tonic::Status> {
    let metadata = request.metadata();
    let peer_certs = request.peer_certs();
    let credentials = Credentials {
        authorization: ascii(metadata, "authorization"),
        cluster_id: ascii(metadata, "clusterid"),
        peer_certs: peer_certs.as_deref().map(Vec::as_slice),
    };
    authn::authenticate(
        &credentials,
        ca.clusters(),
        &ca.authorities(),
        ca.store(),
        now.unix_timestamp(),
    )
    .await
    .map_err(|e| {
        tracing::info!(reason = e.reason(), error = %crate::report::Chain(&e), "authentication failed");
        ca.metrics().authn_failure(e.reason());
        status::from_authn(&e)
    })
}

fn ascii<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
    metadata.get(key).and_then(|v| v.to_str().ok())
}

/// Converts a requested lifetime in seconds: `<= 0` means the default; more than 100 years is
/// refused (never wrapped); anything else is passed on and clamped to `max_ttl` by the engine.
pub(crate) fn requested_ttl(seconds: i64) -> Result<Option<Duration>, tonic::Status> {
    const ABSURD: i64 = 100 * 365 * 86_400;
    match seconds {
        s if s <= 0 => Ok(None),
        s if s > ABSURD => Err(status::invalid_ttl()),
        s => Ok(Some(Duration::from_secs(s.unsigned_abs()))),
    }
}

/// An audit event of a workload request.
pub(crate) fn workload_event(
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    request_id: &str,
    detail: String,
    now: OffsetDateTime,
) -> crate::audit::AuditEvent {
    crate::audit::AuditEvent {
        at: now.unix_timestamp(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        request_id: request_id.to_owned(),
        detail,
    }
}

/// Logs a refused issuance and maps it to its status. Overload sheds are logged at debug only:
/// they are counted (`ca_issuance_shed_total`), and a renewal storm must not become a log storm.
pub(crate) fn refusal(caller: &str, e: &crate::ca::Error) -> tonic::Status {
    if matches!(e, crate::ca::Error::Overloaded) {
        tracing::debug!(caller, "issuance shed: overloaded");
    } else {
        tracing::info!(caller, error = %crate::report::Chain(e), "issuance refused");
    }
    status::from_enrollment(e)
}

/// Audits the outcome of a workload issuance (success with its serial, or the refusal).
///
/// Requests shed under overload are not audit events: nothing was decided about the caller, the
/// metric counts them, and writing one chained row per shed request would add load exactly when
/// the server has none to spare.
pub(crate) fn audit_issuance(
    ca: &Ca,
    caller: &Principal,
    identity: &str,
    request_id: &str,
    api: &str,
    result: &Result<crate::ca::Enrolled, crate::ca::Error>,
    now: OffsetDateTime,
) {
    let how = caller.method();
    let caller = caller.describe();
    let (outcome, detail) = match result {
        Err(crate::ca::Error::Overloaded) => return,
        Ok(enrolled) => (
            "success",
            format!("{api} serial {} by {how}", enrolled.cert.serial.to_hex()),
        ),
        Err(e) => ("rejected", format!("{api} {} by {how}", e.reason())),
    };
    ca.audit_soon(workload_event(
        &caller,
        "certificate.issue",
        identity,
        outcome,
        request_id,
        detail,
        now,
    ));
}

/// The caller's `x-request-id` if it is sane, else a fresh one (for the issuance record).
pub(crate) fn request_id(metadata: &MetadataMap) -> String {
    crate::request_id::from_header(ascii(metadata, "x-request-id"))
}
