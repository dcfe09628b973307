//! Serving an axum router on a listener, plain or over TLS, with the listener's limits
//! (`crate::limits`): a connection cap, the rustls handshake per connection with a timeout,
//! then hyper's HTTP/1 + HTTP/2 connection with a header read timeout, HTTP/2 keep-alive and a
//! silent-client deadline, until shutdown; shutdown lets open requests finish (bounded).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_rustls::TlsAcceptor;

use crate::limits::{self, Connection, ConnectionLimit};

/// Serves `router` on `listener` over TLS until `shutdown` turns true, with the public
/// listener's limits.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(
        listener,
        Some(config),
        router,
        shutdown,
        &limits::PUBLIC_HTTP,
    )
    .await;
}

/// Serves `router` on `listener`, over TLS when `tls` is given, with `listener_limits`, until
/// `shutdown`
/// turns true; then waits (up to `limits::DRAIN_TIMEOUT`) for open connections to finish.
pub(crate) async fn serve_with(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    listener_limits: &'static limits::Listener,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let builder = connection_builder();
    let mut limit = ConnectionLimit::new(listener_limits);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Over the cap the stream is dropped here: the client sees its connection closed.
        let Some(permit) = limit.admit(peer) else {
            continue;
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let router = router.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    handshake_and_serve(acceptor, stream, permit, builder, router, stop).await
                }
                None => {
                    serve_connection(Connection::new(stream, permit), builder, router, stop).await
                }
            }
        });
    }
    limit.drain(limits::DRAIN_TIMEOUT).await;
}

/// hyper's connection settings: HTTP/1 request heads within `HEADER_READ_TIMEOUT` (which also
/// closes idle keep-alive connections), HTTP/2 connections pinged and closed when unanswered.
fn connection_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(limits::KEEPALIVE_TIMEOUT);
    builder
}

async fn handshake_and_serve(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    builder: Builder<TokioExecutor>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let handshake = tokio::time::timeout(limits::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::report::Chain(&e), "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|stop| *stop) => return,
    };
    serve_connection(Connection::new(tls, permit), builder, router, stop).await;
}

async fn serve_connection<IO>(
    io: Connection<IO>,
    builder: Builder<TokioExecutor>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(connection);
    let stopping = tokio::select! {
        _ = connection.as_mut() => false,
        _ = stop.wait_for(|stop| *stop) => true,
    };
    if stopping {
        // Requests in flight finish; idle connections close now.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(limits::DRAIN_TIMEOUT, connection).await;
    }
}
