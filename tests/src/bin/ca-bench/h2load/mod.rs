//! A lean gRPC load client for `ca-bench`: `CreateCertificate` over one TLS HTTP/2 connection,
//! framed by hand in the manner of h2load or ghz.
//!
//! Why not the tonic client (`ca_client::WorkloadClient`) or the `h2` crate? The load generator
//! shares the machine's two cores with the server and Postgres, so its cost is subtracted from
//! the figure being measured. tonic sends a request as three writes and passes every call
//! through a tower buffer task. The `h2` crate never indexes `authorization` in HPACK, so a
//! bearer token of about 700 bytes is Huffman-coded by the client and decoded by the server on
//! every request; grpc-go, which istio-agent uses, indexes it (it sets no `Sensitive` flag), so
//! from the second request on a connection the token travels as one byte.
//!
//! So here, as istio-agent's grpc-go does, the first request of a connection adds its headers
//! (`:path`, `:authority`, `content-type`, `te`, `authorization`, `clusterid`) to the server's
//! HPACK table and every later one names them by index; each request (HEADERS plus one final
//! DATA frame) is encoded once, and everything ready leaves in one write. Responses are decoded
//! in full: HPACK (the `hpack` crate), `:status`, the message and `grpc-status` in the trailers.
//! The server sees ordinary gRPC requests; `ca-bench grpc --client tonic` keeps the tonic path
//! measurable. [`HeaderStyle::H2`] encodes the headers as the `h2` crate does instead (what a
//! ztunnel sends; `ca-bench grpc --ztunnel`), so the server pays for the token on every request
//! while the load generator still encodes each request once.
//!
//! Layout: this file holds the client handle and what a caller builds requests with;
//! `headers` encodes the request header blocks, `connection` is the task that frames requests
//! and decodes responses, and `serial` reads a received leaf's serial.

mod connection;
mod headers;
mod serial;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;

use ca_proto::istio::IstioCertificateResponse;

use connection::{Connection, Reply};
use headers::RequestHeaders;
pub use serial::leaf_serial;

const PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// One HTTP/2 connection to the gRPC port; clones share it.
#[derive(Clone)]
pub struct H2Client {
    calls: mpsc::UnboundedSender<(Bytes, Reply)>,
    /// The server sent GOAWAY: the connection takes no new requests.
    going_away: Arc<std::sync::atomic::AtomicBool>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS once its SETTINGS arrived (`usize::MAX`
    /// until then, or if it announces no limit). Only the unit tests read it.
    #[cfg(test)]
    max_streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Client {
    /// Connects over TLS (ALPN `h2`) with `config` (connections made with the same configuration
    /// share its session store, so a later one can resume an earlier's session), verifying the
    /// server as `server_name`, and starts HTTP/2 with headers encoded in `style`.
    pub async fn connect_with(
        address: std::net::SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        server_name: &str,
        token: &str,
        cluster_id: &str,
        style: HeaderStyle,
    ) -> anyhow::Result<H2Client> {
        let tls = connect_tls(address, config, server_name).await?;
        H2Client::start(tls, server_name, token, cluster_id, style).await
    }

    /// Starts HTTP/2 on an established TLS connection (it must have chosen ALPN `h2`): sends the
    /// client preface and spawns the connection task on the current runtime. `authority` is
    /// the `:authority` of every request.
    pub async fn start(
        mut tls: TlsStream<TcpStream>,
        authority: &str,
        token: &str,
        cluster_id: &str,
        style: HeaderStyle,
    ) -> anyhow::Result<H2Client> {
        anyhow::ensure!(
            tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            "the server did not choose HTTP/2"
        );
        tls.write_all(&connection::preface()).await?;
        tls.flush().await?;

        let headers =
            RequestHeaders::new(authority, &format!("Bearer {token}"), cluster_id, style)?;
        let (calls, receiver) = mpsc::unbounded_channel();
        let mut connection = Connection::new(headers);
        #[cfg(test)]
        let max_streams = connection.announced_max_streams();
        let going_away = connection.announced_going_away();
        tokio::spawn(async move {
            if let Err(e) = connection.run(tls, receiver).await {
                connection.fail_all(&e);
            }
        });
        Ok(H2Client {
            calls,
            going_away,
            #[cfg(test)]
            max_streams,
        })
    }

    /// The server's limit on concurrent streams per connection, as its SETTINGS announced it
    /// (`usize::MAX` before they arrived or without a limit).
    #[cfg(test)]
    pub fn server_max_concurrent_streams(&self) -> usize {
        self.max_streams.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The connection takes no new requests: the server sent GOAWAY (it recycles connections
    /// at their maximum age), or the connection ended.
    pub fn is_closed(&self) -> bool {
        self.going_away.load(std::sync::atomic::Ordering::Acquire) || self.calls.is_closed()
    }

    /// `CreateCertificate` with a body from [`encode_request_for`]; returns the `cert_chain`.
    pub async fn create_certificate(&self, body: Bytes) -> anyhow::Result<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send((body, reply))
            .map_err(|_| anyhow::anyhow!("connection closed"))?;
        let message = answer.await.context("connection closed")??;
        Ok(IstioCertificateResponse::decode(message)?.cert_chain)
    }
}

/// A TLS connection to `address` (TCP_NODELAY set), the server verified as `server_name`.
pub async fn connect_tls(
    address: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())?;
    Ok(tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?)
}

/// How a client encodes its request headers in HPACK (RFC 7541), which decides what the server
/// decodes on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// As grpc-go (istio-agent) does: every field enters the dynamic table on a connection's
    /// first request and is named by index afterwards; strings are not Huffman-coded.
    GrpcGo,
    /// As the `h2` crate (ztunnel, tonic) does: every string is Huffman-coded, and `:path` and
    /// `authorization` never enter the dynamic table, so they travel as literals on every
    /// request (the server Huffman-decodes the bearer token each time).
    H2,
}

/// A rustls client configuration trusting `ca_pem`, offering ALPN `h2`, with rustls' default
/// in-memory session store (so connections made with it resume).
pub fn client_config(ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        roots.add(cert.context("CA PEM")?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A `CreateCertificate` request body: one uncompressed gRPC message (flag, length, protobuf),
/// with request `metadata` (`ImpersonatedIdentity`, as ztunnel asks for the identities of its
/// node's workloads; none if empty), built as our client library builds it.
pub fn encode_request_for(
    csr_pem: &str,
    validity_seconds: i64,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Bytes {
    let message = ca_client::workload::istio_request(csr_pem, validity_seconds, metadata);
    let encoded = message.encode_to_vec();
    let mut body = BytesMut::with_capacity(5 + encoded.len());
    body.put_u8(0);
    body.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    body.extend_from_slice(&encoded);
    body.freeze()
}
