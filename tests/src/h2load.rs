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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use ca_proto::istio::IstioCertificateResponse;

const PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// Largest response accepted (a chain is a few KiB).
const MAX_RESPONSE: usize = 1024 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What we let the server send before it must wait for a WINDOW_UPDATE: per stream (our
/// SETTINGS) and for the connection (raised at once from the default 65,535).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 30;

/// Frame types (RFC 9113 section 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
/// Frame flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

type Reply = oneshot::Sender<anyhow::Result<Bytes>>;

/// One HTTP/2 connection to the gRPC port; clones share it.
#[derive(Clone)]
pub struct H2Client {
    calls: mpsc::UnboundedSender<(Bytes, Reply)>,
    resumed: bool,
    cipher_suite: Option<rustls::CipherSuite>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS once its SETTINGS arrived (`usize::MAX`
    /// until then, or if it announces no limit).
    max_streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Client {
    /// Connects over TLS (ALPN `h2`), verifying the server against `ca_pem` as `server_name`,
    /// and spawns the connection task on the current runtime.
    pub async fn connect(
        address: std::net::SocketAddr,
        ca_pem: &[u8],
        server_name: &str,
        token: &str,
        cluster_id: &str,
    ) -> anyhow::Result<H2Client> {
        let config = client_config(ca_pem)?;
        H2Client::connect_with(
            address,
            &config,
            server_name,
            token,
            cluster_id,
            HeaderStyle::GrpcGo,
        )
        .await
    }

    /// [`H2Client::connect`] with a given TLS configuration (connections made with the same
    /// configuration share its session store, so a later one can resume an earlier's session)
    /// and header encoding.
    pub async fn connect_with(
        address: std::net::SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        server_name: &str,
        token: &str,
        cluster_id: &str,
        style: HeaderStyle,
    ) -> anyhow::Result<H2Client> {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())?;
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let cipher_suite = tls
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|suite| suite.suite());
        anyhow::ensure!(
            tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            "the server did not choose HTTP/2"
        );
        let mut hello = BytesMut::from(PREFACE);
        let mut settings = BytesMut::new();
        for (id, value) in [(0x2u16, 0u32), (0x4, STREAM_WINDOW)] {
            settings.put_u16(id);
            settings.put_u32(value);
        }
        frame(&mut hello, SETTINGS, 0, 0, &settings);
        frame(
            &mut hello,
            WINDOW_UPDATE,
            0,
            0,
            &(CONNECTION_WINDOW - 65_535).to_be_bytes(),
        );
        tls.write_all(&hello).await?;
        tls.flush().await?;

        let headers =
            RequestHeaders::new(server_name, &format!("Bearer {token}"), cluster_id, style)?;
        let (calls, receiver) = mpsc::unbounded_channel();
        let max_streams = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let announced = max_streams.clone();
        tokio::spawn(async move {
            let mut connection = Connection::new(headers, announced);
            if let Err(e) = connection.run(tls, receiver).await {
                connection.fail_all(&e);
            }
        });
        Ok(H2Client {
            calls,
            resumed,
            cipher_suite,
            max_streams,
        })
    }

    /// Whether the TLS handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The server's limit on concurrent streams per connection, as its SETTINGS announced it
    /// (`usize::MAX` before they arrived or without a limit).
    pub fn server_max_concurrent_streams(&self) -> usize {
        self.max_streams.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The TLS cipher suite the server chose.
    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        self.cipher_suite
    }

    /// `CreateCertificate` with a body from [`encode_request`]; returns the `cert_chain`.
    pub async fn create_certificate(&self, body: Bytes) -> anyhow::Result<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send((body, reply))
            .map_err(|_| anyhow::anyhow!("connection closed"))?;
        let message = answer.await.context("connection closed")??;
        Ok(IstioCertificateResponse::decode(message)?.cert_chain)
    }
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

/// The request header blocks: the first adds its fields to the server's HPACK table, the
/// later ones name them by index (or, if they would not fit the table, both repeat them as
/// literals that are not indexed). With [`HeaderStyle::H2`], `:path` and `authorization` are
/// literals without indexing in both.
struct RequestHeaders {
    first: Bytes,
    later: Bytes,
    /// Dynamic table bytes the first block adds (RFC 7541 section 4.1); 0 if it adds none.
    table_size: usize,
}

impl RequestHeaders {
    fn new(
        authority: &str,
        authorization: &str,
        cluster_id: &str,
        style: HeaderStyle,
    ) -> anyhow::Result<RequestHeaders> {
        // (name, its index in the static table if it has one, value)
        let fields: [(&str, Option<usize>, &str); 6] = [
            (":path", Some(4), PATH),
            (":authority", Some(1), authority),
            ("content-type", Some(31), "application/grpc"),
            ("te", None, "trailers"),
            ("authorization", Some(23), authorization),
            ("clusterid", None, cluster_id),
        ];
        let huffman = style == HeaderStyle::H2;
        let never_in_table = |name: &str| huffman && matches!(name, ":path" | "authorization");
        // :method POST and :scheme https are static entries 3 and 7.
        let mut indexing = vec![0x83, 0x87];
        let mut literal = vec![0x83, 0x87];
        let mut indexed = vec![0x83, 0x87];
        let mut table_size = 0;
        let entries = fields.iter().filter(|f| !never_in_table(f.0)).count();
        let mut entry = 0;
        for (name, static_index, value) in fields {
            // Literal without indexing (RFC 7541 section 6.2.2): `literal`, and for the fields
            // that never enter the table, every block.
            let mut plain = Vec::new();
            match static_index {
                Some(index) => hpack_int(&mut plain, 4, 0x00, index),
                None => {
                    plain.push(0x00);
                    hpack_str(&mut plain, name, huffman)?;
                }
            }
            hpack_str(&mut plain, value, huffman)?;
            literal.extend_from_slice(&plain);
            if never_in_table(name) {
                indexing.extend_from_slice(&plain);
                indexed.extend_from_slice(&plain);
                continue;
            }
            match static_index {
                Some(index) => hpack_int(&mut indexing, 6, 0x40, index),
                None => {
                    indexing.push(0x40);
                    hpack_str(&mut indexing, name, huffman)?;
                }
            }
            hpack_str(&mut indexing, value, huffman)?;
            table_size += name.len() + value.len() + 32;
            // The newest entry is index 62; the first field added is the oldest.
            hpack_int(&mut indexed, 7, 0x80, 62 + entries - 1 - entry);
            entry += 1;
        }
        Ok(if table_size <= DEFAULT_TABLE_SIZE {
            RequestHeaders {
                first: indexing.into(),
                later: indexed.into(),
                table_size,
            }
        } else {
            let literal = Bytes::from(literal);
            RequestHeaders {
                first: literal.clone(),
                later: literal,
                table_size: 0,
            }
        })
    }
}

/// The server's HPACK table size unless its SETTINGS say otherwise (RFC 9113 section 6.5.2).
const DEFAULT_TABLE_SIZE: usize = 4096;

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, flags: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK string literal (RFC 7541 section 5.2), Huffman-coded if `huffman`.
fn hpack_str(out: &mut Vec<u8>, value: &str, huffman: bool) -> anyhow::Result<()> {
    if huffman {
        let mut coded = Vec::with_capacity(value.len());
        httlib_huffman::encode(value.as_bytes(), &mut coded)
            .map_err(|e| anyhow::anyhow!("Huffman coding: {e:?}"))?;
        hpack_int(out, 7, 0x80, coded.len());
        out.extend_from_slice(&coded);
    } else {
        hpack_int(out, 7, 0x00, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    Ok(())
}

/// Appends one frame (RFC 9113 section 4.1).
fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & 0x7fff_ffff);
    out.put_slice(payload);
}

/// A request in flight: the gRPC message received so far and where the answer goes.
struct Stream {
    reply: Reply,
    message: BytesMut,
    status_ok: bool,
}

/// The connection task's state.
struct Connection {
    headers: RequestHeaders,
    decoder: hpack::Decoder<'static>,
    streams: HashMap<u32, Stream>,
    waiting: VecDeque<(Bytes, Reply)>,
    next_stream: u32,
    /// The server's SETTINGS have arrived (nothing is sent before).
    settled: bool,
    max_streams: usize,
    /// Where [`H2Client::server_max_concurrent_streams`] reads `max_streams`.
    announced_max_streams: Arc<std::sync::atomic::AtomicUsize>,
    max_frame: usize,
    stream_window: i64,
    send_window: i64,
    /// DATA received since the last connection WINDOW_UPDATE.
    unacknowledged: u64,
    out: BytesMut,
}

impl Connection {
    fn new(
        headers: RequestHeaders,
        announced_max_streams: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Connection {
        Connection {
            headers,
            decoder: hpack::Decoder::new(),
            streams: HashMap::new(),
            waiting: VecDeque::new(),
            next_stream: 1,
            settled: false,
            max_streams: usize::MAX,
            announced_max_streams,
            max_frame: 16_384,
            stream_window: 65_535,
            send_window: 65_535,
            unacknowledged: 0,
            out: BytesMut::with_capacity(16 * 1024),
        }
    }

    async fn run(
        &mut self,
        mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        mut calls: mpsc::UnboundedReceiver<(Bytes, Reply)>,
    ) -> anyhow::Result<()> {
        let mut input = BytesMut::with_capacity(64 * 1024);
        let mut open = true;
        loop {
            self.send_waiting()?;
            if !self.out.is_empty() {
                tls.write_all(&self.out).await?;
                tls.flush().await?;
                self.out.clear();
            }
            if !open && self.streams.is_empty() && self.waiting.is_empty() {
                return Ok(());
            }
            tokio::select! {
                read = tls.read_buf(&mut input) => {
                    anyhow::ensure!(read? > 0, "the server closed the connection");
                    self.receive(&mut input)?;
                }
                call = calls.recv(), if open => match call {
                    Some(call) => {
                        self.waiting.push_back(call);
                        while let Ok(call) = calls.try_recv() {
                            self.waiting.push_back(call);
                        }
                    }
                    None => open = false,
                },
            }
        }
    }

    /// Encodes every waiting request the server's limits allow.
    fn send_waiting(&mut self) -> anyhow::Result<()> {
        while self.settled && self.streams.len() < self.max_streams {
            let Some((body, _)) = self.waiting.front() else {
                break;
            };
            anyhow::ensure!(
                body.len() <= self.max_frame && (body.len() as i64) <= self.stream_window,
                "request larger than one DATA frame"
            );
            if body.len() as i64 > self.send_window {
                break;
            }
            let Some((body, reply)) = self.waiting.pop_front() else {
                break;
            };
            let id = self.next_stream;
            self.next_stream += 2;
            // Stream 1 carries the block that fills the server's table; the rest name it.
            let block = if id == 1 {
                &self.headers.first
            } else {
                &self.headers.later
            };
            frame(&mut self.out, HEADERS, END_HEADERS, id, block);
            frame(&mut self.out, DATA, END_STREAM, id, &body);
            self.send_window -= body.len() as i64;
            self.streams.insert(
                id,
                Stream {
                    reply,
                    message: BytesMut::new(),
                    status_ok: false,
                },
            );
        }
        Ok(())
    }

    /// Handles every complete frame in `input`.
    fn receive(&mut self, input: &mut BytesMut) -> anyhow::Result<()> {
        while input.len() >= 9 {
            let len =
                usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2]);
            if input.len() < 9 + len {
                break;
            }
            let mut head = input.split_to(9);
            let mut payload = input.split_to(len);
            let kind = head[3];
            let flags = head[4];
            head.advance(5);
            let stream = head.get_u32() & 0x7fff_ffff;
            if matches!(kind, DATA | HEADERS) && flags & PADDED != 0 {
                let pad = usize::from(*payload.first().context("padding")?);
                anyhow::ensure!(pad < payload.len(), "bad padding");
                payload.advance(1);
                payload.truncate(payload.len() - pad);
            }
            match kind {
                DATA => {
                    self.unacknowledged += len as u64;
                    let entry = self.streams.get_mut(&stream).context("DATA on no stream")?;
                    anyhow::ensure!(
                        entry.message.len() + payload.len() <= MAX_RESPONSE,
                        "response too large"
                    );
                    entry.message.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        self.finish(stream, Err(anyhow::anyhow!("no trailers")));
                    }
                }
                HEADERS => {
                    anyhow::ensure!(flags & END_HEADERS != 0, "CONTINUATION is not supported");
                    if flags & PRIORITY != 0 {
                        anyhow::ensure!(payload.len() >= 5, "bad priority");
                        payload.advance(5);
                    }
                    let fields = self
                        .decoder
                        .decode(&payload)
                        .map_err(|e| anyhow::anyhow!("HPACK: {e:?}"))?;
                    self.headers_received(stream, flags & END_STREAM != 0, &fields)?;
                }
                RST_STREAM => {
                    let code = payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    self.finish(stream, Err(anyhow::anyhow!("RST_STREAM {code:?}")));
                }
                SETTINGS if flags & ACK == 0 => {
                    for setting in payload.chunks_exact(6) {
                        let value =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        match u16::from_be_bytes([setting[0], setting[1]]) {
                            0x1 => anyhow::ensure!(
                                value as usize >= self.headers.table_size,
                                "the server's HPACK table is too small"
                            ),
                            0x3 => self.max_streams = value as usize,
                            0x4 => self.stream_window = i64::from(value),
                            0x5 => self.max_frame = value as usize,
                            _ => {}
                        }
                    }
                    frame(&mut self.out, SETTINGS, ACK, 0, &[]);
                    self.settled = true;
                    self.announced_max_streams
                        .store(self.max_streams, std::sync::atomic::Ordering::Release);
                }
                PING if flags & ACK == 0 => frame(&mut self.out, PING, ACK, 0, &payload),
                GOAWAY => anyhow::bail!("GOAWAY"),
                WINDOW_UPDATE if stream == 0 => {
                    let increment = payload.get(..4).context("bad WINDOW_UPDATE")?;
                    let increment = u32::from_be_bytes([
                        increment[0],
                        increment[1],
                        increment[2],
                        increment[3],
                    ]);
                    self.send_window += i64::from(increment & 0x7fff_ffff);
                }
                CONTINUATION => anyhow::bail!("CONTINUATION is not supported"),
                _ => {}
            }
        }
        if self.unacknowledged >= u64::from(CONNECTION_WINDOW / 2) {
            let increment = u32::try_from(self.unacknowledged).unwrap_or(u32::MAX);
            frame(&mut self.out, WINDOW_UPDATE, 0, 0, &increment.to_be_bytes());
            self.unacknowledged = 0;
        }
        Ok(())
    }

    /// Response headers or trailers (a trailers-only answer is an error without a message).
    fn headers_received(
        &mut self,
        stream: u32,
        end: bool,
        fields: &[(Vec<u8>, Vec<u8>)],
    ) -> anyhow::Result<()> {
        let field = |name: &[u8]| {
            fields
                .iter()
                .find(|(n, _)| n.as_slice() == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        if let Some(status) = field(b":status") {
            if status != "200" {
                self.finish(stream, Err(anyhow::anyhow!("HTTP {status}")));
                return Ok(());
            }
            if let Some(entry) = self.streams.get_mut(&stream) {
                entry.status_ok = true;
            }
        }
        if !end {
            return Ok(());
        }
        let status = field(b"grpc-status").unwrap_or_default();
        let result = match self.streams.get_mut(&stream) {
            Some(entry) if status == "0" && entry.status_ok => take_message(&mut entry.message),
            _ => Err(anyhow::anyhow!(
                "grpc-status {status:?}: {}",
                field(b"grpc-message").unwrap_or_default()
            )),
        };
        self.finish(stream, result);
        Ok(())
    }

    fn finish(&mut self, stream: u32, result: anyhow::Result<Bytes>) {
        if let Some(entry) = self.streams.remove(&stream) {
            let _ = entry.reply.send(result);
        }
    }

    /// Answers every open and waiting request with the connection's error.
    fn fail_all(&mut self, error: &anyhow::Error) {
        let replies = self
            .streams
            .drain()
            .map(|(_, s)| s.reply)
            .chain(self.waiting.drain(..).map(|(_, reply)| reply));
        for reply in replies {
            let _ = reply.send(Err(anyhow::anyhow!("connection failed: {error}")));
        }
    }
}

/// The one uncompressed gRPC message of a response body.
fn take_message(message: &mut BytesMut) -> anyhow::Result<Bytes> {
    anyhow::ensure!(
        message.len() >= 5 && message[0] == 0,
        "not one uncompressed gRPC message"
    );
    let length = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
    anyhow::ensure!(message.len() == 5 + length, "gRPC message length");
    let mut message = std::mem::take(message);
    message.advance(5);
    Ok(message.freeze())
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

/// A `CreateCertificate` request body: one uncompressed gRPC message (flag, length, protobuf).
pub fn encode_request(csr_pem: &str, validity_seconds: i64) -> Bytes {
    encode_request_for(csr_pem, validity_seconds, &Default::default())
}

/// [`encode_request`] with request `metadata` (`ImpersonatedIdentity`, as ztunnel asks for
/// the identities of its node's workloads), built as our client library builds it.
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

/// The serial (lower-case hex) of the certificate in a PEM chain element. Only the first two
/// base64 lines are decoded (72 bytes reach past any serial) and only the DER headers down to
/// the serial are read: a full decode and X.509 parse per response would be load generator CPU
/// taken from the server.
pub fn leaf_serial(pem: &str) -> anyhow::Result<String> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let body = pem
        .trim_start()
        .strip_prefix(BEGIN)
        .context("not a PEM certificate")?;
    let mut lines = body.lines().map(str::trim).filter(|line| !line.is_empty());
    let mut head = String::with_capacity(128);
    for line in lines.by_ref().take(2) {
        anyhow::ensure!(!line.starts_with("-----"), "certificate too short");
        head.push_str(line);
    }
    let der = base64::engine::general_purpose::STANDARD.decode(&head)?;
    let mut at = 0;
    // Certificate SEQUENCE, then tbsCertificate SEQUENCE: step into both.
    for _ in 0..2 {
        let (tag, _, content) = der_header(&der, at)?;
        anyhow::ensure!(tag == 0x30, "not a SEQUENCE");
        at = content;
    }
    let (mut tag, mut len, mut content) = der_header(&der, at)?;
    if tag == 0xa0 {
        // [0] version; the serial follows.
        (tag, len, content) = der_header(&der, content + len)?;
    }
    anyhow::ensure!(tag == 0x02, "no serial number");
    let serial = der
        .get(content..content + len)
        .context("serial cut short")?;
    Ok(hex::encode(serial))
}

/// Tag, content length and content offset of the DER TLV at `at`.
fn der_header(der: &[u8], at: usize) -> anyhow::Result<(u8, usize, usize)> {
    let short = || anyhow::anyhow!("DER cut short");
    let tag = *der.get(at).ok_or_else(short)?;
    let first = *der.get(at + 1).ok_or_else(short)?;
    if first < 0x80 {
        return Ok((tag, usize::from(first), at + 2));
    }
    let count = usize::from(first & 0x7f);
    anyhow::ensure!((1..=4).contains(&count), "DER length");
    let bytes = der.get(at + 2..at + 2 + count).ok_or_else(short)?;
    let len = bytes.iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
    Ok((tag, len, at + 2 + count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_serial_agrees_with_a_full_parse() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        for serial in [
            vec![0x01],
            vec![0x7f, 0xff, 0x00, 0x12],
            vec![0x5a; 16],
            vec![0x7a; 20],
        ] {
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let cert = params.self_signed(&key).unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
            assert_eq!(
                leaf_serial(&cert.pem()).unwrap(),
                hex::encode(parsed.raw_serial())
            );
        }
        assert!(leaf_serial("not PEM").is_err());
        assert!(
            leaf_serial("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    /// Both header styles decode (with an independent HPACK decoder, Huffman included) to the
    /// same request on the first and on every later request of a connection; grpc-go's style
    /// sends the token once, h2's sends it Huffman-coded every time.
    #[test]
    fn header_styles_decode_to_the_same_request() {
        let token = format!("Bearer {}", "eyJhbGciOiJSUzI1NiJ9.".repeat(30));
        let expected: Vec<(Vec<u8>, Vec<u8>)> = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", PATH),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", token.as_str()),
            ("clusterid", "Kubernetes"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let mut later_len = Vec::new();
        for style in [HeaderStyle::GrpcGo, HeaderStyle::H2] {
            let headers = RequestHeaders::new("localhost", &token, "Kubernetes", style).unwrap();
            let mut decoder = hpack::Decoder::new();
            for block in [&headers.first, &headers.later, &headers.later] {
                assert_eq!(decoder.decode(block).unwrap(), expected, "{style:?}");
            }
            later_len.push(headers.later.len());
        }
        assert!(later_len[0] < 16, "grpc-go: indexes only, {later_len:?}");
        assert!(
            later_len[1] > token.len() / 2 && later_len[1] < token.len(),
            "h2: the Huffman-coded token on every request, {later_len:?}"
        );
    }
}
