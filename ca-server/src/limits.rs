//! Connection limits shared by every listener: how many connections each may hold, how long a
//! client may take to finish its TLS handshake, to start talking and to send its request
//! headers, how long a connection may stay silent, and how many `WatchBundles` streams one
//! caller may keep open.
//!
//! The values are named constants, sized generously for a mesh (a node's ztunnel or a pod's
//! istio-agent holds one gRPC connection); they may become configuration keys later. A client
//! that hits a limit is closed, or refused with `RESOURCE_EXHAUSTED`, at once: nothing queues
//! behind a slow or greedy client, so well-behaved ones keep being served.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A TLS handshake that takes longer than this is dropped (on every TLS listener).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its first bytes within this time of the connection being ready (accepted,
/// or its TLS handshake done), and an HTTP/1 client its whole request head within this time of
/// starting to wait for it (hyper's header read timeout, which also closes idle keep-alive
/// connections).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: the server pings a connection it has not heard from for this long...
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and closes it when the ping is not answered within this time.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A connection whose client sends nothing at all for this long is closed.
///
/// A live HTTP/2 client is heard from at least every `KEEPALIVE_INTERVAL` (it answers the
/// server's pings, even while idle), and an HTTP/1 client waiting for its next request is
/// closed by `HEADER_READ_TIMEOUT` earlier; this catches what neither sees, such as a client
/// that never finishes the HTTP/2 preface. Longer than any request runs (gRPC requests time out
/// at 30 s).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown waits for the connections of an HTTP listener to finish what they are
/// doing (after they were told to close).
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `WatchBundles` streams one caller (an authenticated SPIFFE ID, or the address of a caller
/// without credentials) may have open at once; one more is refused with `RESOURCE_EXHAUSTED`.
/// A workload needs one; a few more allow for restarts whose old stream is not yet torn down.
pub(crate) const MAX_WATCHES_PER_CALLER: usize = 8;
/// Refused connections are logged at most once per this period, with their count.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A listener's name (for logs) and its connection cap.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) name: &'static str,
    /// Connections held at once, counting those still in their TLS handshake.
    pub(crate) max_connections: u32,
}

/// The gRPC port: one connection per workload agent (istio-agent, ztunnel, `ca-client`).
pub(crate) const GRPC: Listener = Listener {
    name: "grpc",
    max_connections: 4096,
};
/// The public HTTP port: bundles, CRLs, OCSP, health and metrics; short requests.
pub(crate) const PUBLIC_HTTP: Listener = Listener {
    name: "public http",
    max_connections: 1024,
};
/// The admin HTTP port: operators and `cactl`.
pub(crate) const ADMIN_HTTP: Listener = Listener {
    name: "admin http",
    max_connections: 256,
};

/// The connection cap of one listener, held by its accept loop.
///
/// Each accepted connection takes a permit before anything else happens (before its TLS
/// handshake); it is returned when the connection is dropped. Over the cap the new connection
/// is closed at once: refusing is cheap, queueing would let slow clients hold everyone up.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    listener: &'static Listener,
    permits: Arc<Semaphore>,
    /// Refusals not yet logged, and when the last log line was written.
    refused: u64,
    last_report: Option<Instant>,
}

impl ConnectionLimit {
    pub(crate) fn new(listener: &'static Listener) -> ConnectionLimit {
        ConnectionLimit {
            listener,
            permits: Arc::new(Semaphore::new(listener.max_connections as usize)),
            refused: 0,
            last_report: None,
        }
    }

    /// A permit for a new connection, or `None` when the listener is full (the refusal is
    /// counted and logged, at most once per `REFUSAL_LOG_INTERVAL`).
    pub(crate) fn admit(&mut self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        self.refused += 1;
        let now = Instant::now();
        if self
            .last_report
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL)
        {
            tracing::debug!(
                listener = self.listener.name,
                max_connections = self.listener.max_connections,
                refused = self.refused,
                last_peer = %peer,
                "connections refused: the listener is at its cap"
            );
            self.refused = 0;
            self.last_report = Some(now);
        }
        None
    }

    /// Waits until every connection has returned its permit, or `timeout` has passed.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let all = self.permits.acquire_many(self.listener.max_connections);
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::info!(
                listener = self.listener.name,
                open = self.listener.max_connections as usize - self.permits.available_permits(),
                "shutdown: connections still open after the drain timeout"
            );
        }
    }
}

/// A connection of a listener: holds its permit, and fails reads once the client has been
/// silent too long (`first` until its first byte, then `idle`); hyper and tonic then close it.
#[derive(Debug)]
pub(crate) struct Connection<IO> {
    io: IO,
    deadline: ReadDeadline,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Connection<IO> {
    /// `io` with the listener's permit and the default deadlines (`HEADER_READ_TIMEOUT` for the
    /// first byte, then `IDLE_TIMEOUT`).
    pub(crate) fn new(io: IO, permit: OwnedSemaphorePermit) -> Connection<IO> {
        Connection::with_deadlines(io, permit, HEADER_READ_TIMEOUT, IDLE_TIMEOUT)
    }

    fn with_deadlines(
        io: IO,
        permit: OwnedSemaphorePermit,
        first: Duration,
        idle: Duration,
    ) -> Connection<IO> {
        Connection {
            io,
            deadline: ReadDeadline::new(first, idle),
            _permit: permit,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline.heard();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.deadline.poll_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent nothing for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Handlers still see the TLS session (the verified client chain) and the peer address.
impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for Connection<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// When a silent client's reads fail. The timer is re-armed lazily: a read only notes the
/// time, and the sleep, when it fires early, moves to the new deadline.
#[derive(Debug)]
struct ReadDeadline {
    first: Duration,
    idle: Duration,
    last_heard: Instant,
    heard_any: bool,
    sleep: Pin<Box<Sleep>>,
}

impl ReadDeadline {
    fn new(first: Duration, idle: Duration) -> ReadDeadline {
        let now = Instant::now();
        ReadDeadline {
            first,
            idle,
            last_heard: now,
            heard_any: false,
            sleep: Box::pin(tokio::time::sleep_until(now + first)),
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.heard_any = true;
    }

    /// Whether the deadline has passed; otherwise the waker is registered for it.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let allowed = if self.heard_any {
                self.idle
            } else {
                self.first
            };
            let deadline = self.last_heard + allowed;
            if deadline <= Instant::now() {
                return true;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// Open streams per caller, each caller capped at `max`.
#[derive(Debug, Clone)]
pub(crate) struct PerCaller {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream of a caller; dropping it (when the stream ends) frees the slot.
#[derive(Debug)]
pub(crate) struct CallerSlot {
    caller: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl PerCaller {
    pub(crate) fn new(max: usize) -> PerCaller {
        PerCaller {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more stream of `caller`, or `None` when it already has `max` open.
    ///
    /// The map holds only callers with an open stream, so it is as large as the streams are
    /// many (and those are bounded by the connection caps).
    pub(crate) fn try_open(&self, caller: &str) -> Option<CallerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(caller.to_owned()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(CallerSlot {
            caller: caller.to_owned(),
            open: Arc::clone(&self.open),
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SMALL: Listener = Listener {
        name: "test",
        max_connections: 3,
    };

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[tokio::test]
    async fn the_cap_refuses_at_once_and_frees_on_drop() {
        let mut limit = ConnectionLimit::new(&SMALL);
        let held: Vec<_> = (0..3).map(|_| limit.admit(peer()).unwrap()).collect();
        assert!(limit.admit(peer()).is_none());
        assert!(limit.admit(peer()).is_none());
        assert_eq!(
            limit.refused, 1,
            "the first refusal was logged, the second waits for the next line"
        );
        drop(held);
        let again = limit.admit(peer());
        assert!(again.is_some());
        // Drain waits for the last connection.
        let started = Instant::now();
        limit.drain(Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(again);
        limit.drain(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_silent_client_is_cut_off_and_a_talking_one_is_not() {
        let permits = Arc::new(Semaphore::new(2));
        let first = Duration::from_millis(200);
        let idle = Duration::from_millis(400);

        // Silent from the start: the first deadline.
        let (server, _client) = tokio::io::duplex(64);
        let permit = Arc::clone(&permits).try_acquire_owned().unwrap();
        let mut silent = Connection::with_deadlines(server, permit, first, idle);
        let started = Instant::now();
        let error = silent.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= first && started.elapsed() < idle);
        drop(silent);
        assert_eq!(permits.available_permits(), 2, "the permit is returned");

        // One byte every 100 ms keeps it open past both deadlines; then silence ends it.
        let (server, mut client) = tokio::io::duplex(64);
        let permit = Arc::clone(&permits).try_acquire_owned().unwrap();
        let mut talking = Connection::with_deadlines(server, permit, first, idle);
        let writer = tokio::spawn(async move {
            for _ in 0..8 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        for _ in 0..8 {
            assert_eq!(talking.read(&mut [0u8; 1]).await.unwrap(), 1);
        }
        let _client = writer.await.unwrap();
        let quiet = Instant::now();
        let error = talking.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(quiet.elapsed() >= idle - Duration::from_millis(150));
    }

    #[test]
    fn streams_per_caller_are_capped_and_freed() {
        let watchers = PerCaller::new(2);
        let a1 = watchers.try_open("a").unwrap();
        let a2 = watchers.try_open("a").unwrap();
        assert!(watchers.try_open("a").is_none());
        let _b = watchers.try_open("b").unwrap();
        drop(a1);
        let a3 = watchers.try_open("a").unwrap();
        assert!(watchers.try_open("a").is_none());
        drop(a2);
        drop(a3);
        let open = watchers.open.lock().unwrap();
        assert_eq!(
            open.len(),
            1,
            "callers without streams leave the map: {open:?}"
        );
    }
}
