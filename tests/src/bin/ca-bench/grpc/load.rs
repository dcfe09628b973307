//! The load side of `ca-bench grpc`: one client connection of either kind (the lean `h2load`
//! client or tonic), the pre-encoded requests, and the loops that drive a connection: closed,
//! open at a fixed rate, or reconnecting for every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientKind, Reconnect};
use crate::h2load::{self, H2Client, HeaderStyle};
use crate::process::{SERVER_NAME, Target};

/// One client connection of either kind.
pub enum Conn {
    H2(H2Client),
    Tonic(ca_client::WorkloadClient, ca_client::TokenAuth),
}

impl Conn {
    /// A connection; the `h2` client encodes its headers in `style`.
    pub async fn connect(
        kind: ClientKind,
        target: &Target,
        token: &str,
        style: HeaderStyle,
    ) -> anyhow::Result<Conn> {
        Ok(match kind {
            ClientKind::H2 => Conn::H2(
                H2Client::connect_with(
                    target.address,
                    &h2load::client_config(&target.ca_pem)?,
                    SERVER_NAME,
                    token,
                    "Kubernetes",
                    style,
                )
                .await?,
            ),
            ClientKind::Tonic => Conn::Tonic(
                ca_client::WorkloadClient::connect(&ca_client::ConnectOptions {
                    address: target.address.to_string(),
                    ca_pem: target.ca_pem.clone(),
                    server_name: Some(SERVER_NAME.to_owned()),
                    client_identity: None,
                })
                .await?,
                ca_client::TokenAuth {
                    token: Some(token.to_owned()),
                    cluster_id: Some("Kubernetes".to_owned()),
                },
            ),
        })
    }

    /// The connection takes no new requests (GOAWAY, or ended): dial a new one. A tonic channel
    /// dials again by itself.
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::H2(client) => client.is_closed(),
            Conn::Tonic(..) => false,
        }
    }

    /// One `CreateCertificate`; the serial of the leaf received.
    pub async fn call(&self, request: &BenchRequest) -> Result<String, ()> {
        let chain = match self {
            Conn::H2(client) => client
                .create_certificate(request.body.clone())
                .await
                .map_err(|_| ())?,
            Conn::Tonic(client, auth) => client
                .create_certificate(&request.csr_pem, 0, auth, &request.metadata)
                .await
                .map_err(|_| ())?,
        };
        let leaf = chain.first().ok_or(())?;
        h2load::leaf_serial(leaf).map_err(|_| ())
    }
}

/// (latency, serial received or error)
pub type Outcome = (Duration, Result<String, ()>);

/// One pre-generated request: the CSR, the `metadata` it goes with (`ImpersonatedIdentity` for
/// a ztunnel), and both encoded as the `h2` client sends them.
pub struct BenchRequest {
    pub csr_pem: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub body: Bytes,
}

impl BenchRequest {
    /// `count` workload requests (no metadata), each with a fresh CSR of `key`.
    pub fn workload_requests(
        key: ca_client::KeyType,
        count: usize,
    ) -> anyhow::Result<Vec<BenchRequest>> {
        (0..count)
            .map(|_| {
                let pem = ca_client::csr::generate(key, None)?.csr_pem;
                let metadata = std::collections::BTreeMap::new();
                Ok(BenchRequest {
                    body: h2load::encode_request_for(&pem, 0, &metadata),
                    csr_pem: pem,
                    metadata,
                })
            })
            .collect()
    }
}

/// One connection's load: closed loop (next request when the last is answered) or, with an
/// `interval`, open loop (one request every `interval`, whether or not earlier ones are done,
/// each connection's schedule offset so that together they send evenly).
pub async fn drive(
    connection: Arc<Conn>,
    requests: Arc<Vec<BenchRequest>>,
    first: usize,
    stride: usize,
    deadline: Instant,
    interval: Option<Duration>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut n = first;
    match interval {
        None => {
            while Instant::now() < deadline {
                let request = &requests[n % requests.len()];
                let t = Instant::now();
                let outcome = connection.call(request).await;
                outcomes.push((t.elapsed(), outcome));
                n += stride;
            }
        }
        Some(interval) => {
            // Finished requests report through a channel: holding a JoinHandle per request
            // would keep every finished task's memory until the end of the run.
            let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
            // Connection `first` of `stride` starts `first/stride` of an interval late, so the
            // connections' requests interleave into an even stream at the total rate. (Started
            // together, they would arrive as one burst of `stride` requests per interval, and
            // the burst's queueing would be measured as latency.)
            let mut next = Instant::now() + interval.mul_f64(first as f64 / stride.max(1) as f64);
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let (connection, requests, report) =
                    (connection.clone(), requests.clone(), report.clone());
                let index = n % requests.len();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let outcome = connection.call(&requests[index]).await;
                    let _ = report.send((t.elapsed(), outcome));
                });
                n += stride;
                next += interval;
            }
            drop(report);
            while let Some(outcome) = reports.recv().await {
                outcomes.push(outcome);
            }
        }
    }
    outcomes
}

/// One client's closed loop with a new connection per request (the latency includes the
/// connection): [`Reconnect::Full`] disables resumption, [`Reconnect::Resume`] keeps one TLS
/// session store per client, as a restarting workload's agent would.
pub async fn drive_reconnecting(
    target: Target,
    token: String,
    reconnect: Reconnect,
    requests: Arc<Vec<BenchRequest>>,
    (first, stride): (usize, usize),
    deadline: Instant,
) -> anyhow::Result<Vec<Outcome>> {
    let mut config = (*h2load::client_config(&target.ca_pem)?).clone();
    if reconnect == Reconnect::Full {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let config = Arc::new(config);
    let mut outcomes = Vec::new();
    let mut n = first;
    while Instant::now() < deadline {
        let request = &requests[n % requests.len()];
        let t = Instant::now();
        let outcome = match H2Client::connect_with(
            target.address,
            &config,
            SERVER_NAME,
            &token,
            "Kubernetes",
            HeaderStyle::GrpcGo,
        )
        .await
        {
            Ok(client) => Conn::H2(client).call(request).await,
            Err(_) => Err(()),
        };
        outcomes.push((t.elapsed(), outcome));
        n += stride;
    }
    Ok(outcomes)
}
