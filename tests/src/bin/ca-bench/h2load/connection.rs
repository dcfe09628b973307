//! The connection task: HTTP/2 framing (RFC 9113) over one TLS stream, sending the waiting
//! requests the server's limits allow and decoding every response (HPACK, `:status`, the one
//! gRPC message, `grpc-status` in the trailers).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::headers::RequestHeaders;

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

pub(super) type Reply = oneshot::Sender<anyhow::Result<Bytes>>;

/// The client connection preface: the magic, our SETTINGS (no server push, our stream window)
/// and the connection window raised from the default.
pub(super) fn preface() -> BytesMut {
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
    hello
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
pub(super) struct Connection {
    headers: RequestHeaders,
    decoder: hpack::Decoder<'static>,
    streams: HashMap<u32, Stream>,
    waiting: VecDeque<(Bytes, Reply)>,
    next_stream: u32,
    /// The server's SETTINGS have arrived (nothing is sent before).
    settled: bool,
    max_streams: usize,
    /// `max_streams` as the client handle sees it (the unit tests ask it for the limit).
    announced_max_streams: Arc<std::sync::atomic::AtomicUsize>,
    max_frame: usize,
    stream_window: i64,
    send_window: i64,
    /// DATA received since the last connection WINDOW_UPDATE.
    unacknowledged: u64,
    /// The server sent GOAWAY (it recycles connections at their maximum age): no new stream is
    /// started, the ones it will still answer finish, then the connection ends.
    going_away: bool,
    /// `going_away` as the client handle sees it.
    announced_going_away: Arc<std::sync::atomic::AtomicBool>,
    out: BytesMut,
}

impl Connection {
    pub(super) fn new(headers: RequestHeaders) -> Connection {
        Connection {
            headers,
            decoder: hpack::Decoder::new(),
            streams: HashMap::new(),
            waiting: VecDeque::new(),
            next_stream: 1,
            settled: false,
            max_streams: usize::MAX,
            announced_max_streams: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
            max_frame: 16_384,
            stream_window: 65_535,
            send_window: 65_535,
            unacknowledged: 0,
            going_away: false,
            announced_going_away: Arc::default(),
            out: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Where the server's limit on concurrent streams appears once its SETTINGS arrived
    /// (`usize::MAX` until then, or without a limit).
    #[cfg(test)]
    pub(super) fn announced_max_streams(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.announced_max_streams.clone()
    }

    /// Set once the server sent GOAWAY.
    pub(super) fn announced_going_away(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.announced_going_away.clone()
    }

    pub(super) async fn run(
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
            if (!open || self.going_away) && self.streams.is_empty() && self.waiting.is_empty() {
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
        if self.going_away {
            for (_, reply) in self.waiting.drain(..) {
                let _ = reply.send(Err(anyhow::anyhow!("GOAWAY: not sent")));
            }
        }
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
                GOAWAY => {
                    let last = payload.get(..4).context("bad GOAWAY")?;
                    let last =
                        u32::from_be_bytes([last[0], last[1], last[2], last[3]]) & 0x7fff_ffff;
                    self.going_away = true;
                    self.announced_going_away
                        .store(true, std::sync::atomic::Ordering::Release);
                    let refused: Vec<u32> = self
                        .streams
                        .keys()
                        .copied()
                        .filter(|id| *id > last)
                        .collect();
                    for id in refused {
                        self.finish(id, Err(anyhow::anyhow!("GOAWAY: refused")));
                    }
                }
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
    pub(super) fn fail_all(&mut self, error: &anyhow::Error) {
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
