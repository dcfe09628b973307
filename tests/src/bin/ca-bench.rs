//! `ca-bench`: the project's load tool.
//!
//! `ca-bench engine`: the issuance engine end to end in-process (CSR -> signed, self-checked,
//! *recorded* certificate) on SQLite and Postgres, for ECDSA P-256 and RSA-2048 CSRs, with N
//! concurrent tasks for a bounded time; prints issuances/s and latency percentiles, median of R
//! runs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use ca_client::KeyType;
use ca_server::ca::{Api, Ca, Request};
use ca_server::config::Config;
use ca_server::keys::Kek;
use ca_server::metrics::Metrics;
use ca_server::spiffe::SpiffeId;
use ca_server::store::{Store, StoreOptions};

/// The same allocator as `ca-server`, so in-process figures match the real binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ca-bench",
    about = "Load and throughput benchmarks for the mesh CA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time to build and sign a CRL with N revoked entries (Postgres; entries inserted in SQL).
    Crl {
        #[arg(long, default_value_t = 100_000)]
        entries: i64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Requests/s of `GET /v1/bundles/{td}` on an in-process server.
    Bundle {
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// OCSP responses/s: concurrent HTTP POSTs to the responder of an in-process server.
    Ocsp {
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// gRPC `CreateCertificate` against an in-process server on loopback: N concurrent HTTP/2
    /// clients with bearer tokens, pre-generated CSRs; afterwards every received serial is looked
    /// up in the database.
    Grpc {
        #[arg(long, default_value = "sqlite,postgres")]
        backends: String,
        #[arg(long, default_value = "ecdsa-p256,rsa-2048")]
        keys: String,
        /// Concurrent clients, each with its own connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Open loop at this many requests/s in total (default: closed loop, as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// The load client: `h2` (lean, pre-encoded requests) or `tonic` (our client library).
        #[arg(long, value_enum, default_value_t = ClientKind::H2)]
        client: ClientKind,
        /// Load threads, each a current-thread runtime driving its share of the connections.
        #[arg(long, default_value_t = 1)]
        load_threads: usize,
        /// Where the server runs: `process` (the release ca-server binary) or `in-process`.
        #[arg(long, value_enum, default_value_t = ServerMode::Process)]
        server: ServerMode,
        /// A new connection per request, as restarting workloads make them: `full` handshakes,
        /// or `resume` (each client resumes its previous session). Closed loop, `h2` client only.
        #[arg(long, value_enum, default_value_t = Reconnect::No)]
        reconnect: Reconnect,
        /// Requests each connection keeps in flight (HTTP/2 streams), as ztunnel multiplexes a
        /// node's workloads over one connection; the total concurrency is `clients * streams`.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Each client is a node's ztunnel (ambient mode): it authenticates as
        /// `istio-system/ztunnel` and asks for its workloads' identities with
        /// `ImpersonatedIdentity`. Without it each client is a workload asking for its own.
        #[arg(long)]
        ztunnel: bool,
    },
    /// In-process engine benchmark: CSR -> recorded certificate.
    Engine {
        /// Backends: sqlite, postgres (comma-separated).
        #[arg(long, default_value = "sqlite,postgres")]
        backends: String,
        /// CSR key types: ecdsa-p256, rsa-2048, ... (comma-separated).
        #[arg(long, default_value = "ecdsa-p256,rsa-2048")]
        keys: String,
        /// Concurrent tasks.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Runs per combination (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Postgres server (a fresh database is created per run).
        #[arg(
            long,
            env = "CA_TEST_POSTGRES",
            default_value = "postgres://postgres@127.0.0.1:5432"
        )]
        postgres: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crl { entries, runs } => bench_crl(entries, runs).await?,
        Command::Bundle {
            concurrency,
            seconds,
            runs,
        } => bench_bundle(concurrency, Duration::from_secs(seconds), runs).await?,
        Command::Ocsp {
            concurrency,
            seconds,
            runs,
        } => bench_ocsp(concurrency, Duration::from_secs(seconds), runs).await?,
        Command::Grpc {
            backends,
            keys,
            clients,
            seconds,
            runs,
            rate,
            client,
            load_threads,
            server,
            reconnect,
            streams,
            ztunnel,
        } => {
            anyhow::ensure!(
                reconnect == Reconnect::No || (rate.is_none() && client == ClientKind::H2),
                "--reconnect runs a closed loop with the h2 client"
            );
            anyhow::ensure!(
                streams >= 1 && (streams == 1 || reconnect == Reconnect::No),
                "--streams is at least 1, and more than 1 only on long-lived connections"
            );
            println!(
                "backend   key          clients  issuances/s  p50_ms  p90_ms  p99_ms  max_ms  errors  err_p99_ms  rss0_mb  rss_mb  server_us  client_us  pg_us  (median of {runs} runs of {seconds}s{}; *_us: CPU time per issuance of the server, the load generator and Postgres)",
                rate.map(|r| format!(", offered {r:.0}/s"))
                    .unwrap_or_default()
            );
            if streams > 1 || ztunnel {
                println!(
                    "({streams} requests in flight on each client's connection{})",
                    if ztunnel {
                        "; clients are ztunnels impersonating their workloads"
                    } else {
                        ""
                    }
                );
            }
            for backend in backends.split(',') {
                for key in keys.split(',') {
                    let key_type = KeyType::parse(key)?;
                    let csrs = make_csr_pems(key_type, 64)?;
                    let mut results = Vec::new();
                    for _ in 0..runs {
                        results.push(
                            run_grpc(
                                backend,
                                &csrs,
                                clients,
                                Duration::from_secs(seconds),
                                rate,
                                LoadShape {
                                    server,
                                    client,
                                    threads: load_threads,
                                    reconnect,
                                    streams,
                                    ztunnel,
                                },
                            )
                            .await?,
                        );
                    }
                    results.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                    let m = &results[results.len() / 2];
                    println!(
                        "{backend:<9} {key:<12} {clients:>7}  {:>11.0}  {:>6.2}  {:>6.2}  {:>6.2}  {:>6.2}  {:>6}  {:>10.2}  {:>7.0}  {:>6.0}  {:>9.0}  {:>9.0}  {:>5.0}",
                        m.rate,
                        m.p50_ms,
                        m.p90_ms,
                        m.p99_ms,
                        m.max_ms,
                        m.errors,
                        m.error_p99_ms,
                        m.rss_start_mb,
                        m.rss_mb,
                        m.server_us,
                        m.client_us,
                        m.pg_us
                    );
                }
            }
        }
        Command::Engine {
            backends,
            keys,
            concurrency,
            seconds,
            runs,
            postgres,
        } => {
            println!(
                "backend   key          conc  issuances/s  p50_ms  p99_ms  (median of {runs} runs of {seconds}s)"
            );
            for backend in backends.split(',') {
                for key in keys.split(',') {
                    let key_type = KeyType::parse(key)?;
                    let csrs = make_csrs(key_type, 64)?;
                    let mut results = Vec::new();
                    for _ in 0..runs {
                        let dir = tempfile::tempdir()?;
                        let url = match backend {
                            "sqlite" => {
                                format!("sqlite://{}", dir.path().join("bench.db").display())
                            }
                            "postgres" => fresh_pg(&postgres).await?,
                            other => anyhow::bail!("unknown backend {other}"),
                        };
                        let (ca, store) = open_ca(dir.path(), &url, concurrency as u32 + 2).await?;
                        results.push(
                            run_engine(
                                &ca,
                                &store,
                                &csrs,
                                concurrency,
                                Duration::from_secs(seconds),
                            )
                            .await?,
                        );
                        store.close().await;
                        if backend == "postgres" {
                            ca_tests::drop_postgres_database(&url).await?;
                        }
                    }
                    results.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                    let median = &results[results.len() / 2];
                    println!(
                        "{backend:<9} {key:<12} {concurrency:>4}  {:>11.0}  {:>6.2}  {:>6.2}",
                        median.rate, median.p50_ms, median.p99_ms
                    );
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct RunResult {
    rate: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Requests answered with an error (e.g. RESOURCE_EXHAUSTED when overloaded).
    errors: usize,
    error_p99_ms: f64,
    /// Resident memory of this process (server and load generator) at the start and the end.
    rss_start_mb: f64,
    rss_mb: f64,
    /// CPU time (user + system) of the server's threads per successful issuance, in microseconds.
    server_us: f64,
    /// CPU time of the load generator (every other thread of this process) per issuance.
    client_us: f64,
    /// CPU time of every `postgres` process on the machine per successful issuance.
    pg_us: f64,
}

/// CPU time (user + system) in microseconds of the process `pid`, from `/proc` (Linux; 0 when
/// unreadable).
fn cpu_us(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3. USER_HZ is 100 on
    // every Linux this runs on.
    (ticks(11) + ticks(12)) * 10_000.0
}

/// The name of the server runtime's threads.
const SERVER_THREAD: &str = "ca-server";

/// CPU time in microseconds of this process's threads: (the server's, everyone else's).
fn thread_cpu_us() -> (f64, f64) {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    let mut server = 0.0;
    let mut other = 0.0;
    for tid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let us = cpu_us(&format!("self/task/{tid}"));
        let name =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if name.trim() == SERVER_THREAD {
            server += us;
        } else {
            other += us;
        }
    }
    (server, other)
}

/// CPU time of every process named `postgres` (the server and its backends), in microseconds.
fn postgres_cpu_us() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "postgres")
                .unwrap_or(false)
        })
        .map(|pid| cpu_us(&pid))
        .sum()
}

fn rss_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

impl RunResult {
    fn from_latencies(mut latencies: Vec<Duration>, elapsed: f64) -> RunResult {
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0)
        };
        RunResult {
            rate: latencies.len() as f64 / elapsed,
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            max_ms: latencies
                .last()
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0),
            ..RunResult::default()
        }
    }
}

fn make_csrs(key_type: KeyType, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..count)
        .map(|_| Ok(ca_client::csr::generate(key_type, None)?.csr_der))
        .collect()
}

fn make_csr_pems(key_type: KeyType, count: usize) -> anyhow::Result<Vec<String>> {
    (0..count)
        .map(|_| Ok(ca_client::csr::generate(key_type, None)?.csr_pem))
        .collect()
}

/// A runtime that may be dropped from async code (on any return path): it is shut down in the
/// background.
struct BackgroundRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl BackgroundRuntime {
    fn new(runtime: tokio::runtime::Runtime) -> BackgroundRuntime {
        BackgroundRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }
    }
}

impl std::ops::Deref for BackgroundRuntime {
    type Target = tokio::runtime::Handle;
    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The server under test.
enum Sut {
    /// In this process on its own runtime (two workers, threads named [`SERVER_THREAD`]), so its
    /// CPU time can be told apart from the load generator's.
    InProcess {
        runtime: BackgroundRuntime,
        server: Box<ca_tests::TestServer>,
    },
    /// The release `ca-server` binary beside `ca-bench`, with a generated config: what users run,
    /// logging included, and its CPU time and memory are its own.
    Process {
        child: std::process::Child,
        database_url: String,
        target: Target,
        _dir: tempfile::TempDir,
    },
}

impl Sut {
    async fn start(
        mode: ServerMode,
        backend: ca_tests::Backend,
        kube: &Arc<ca_tests::kube::FakeKube>,
    ) -> anyhow::Result<Sut> {
        match mode {
            ServerMode::InProcess => {
                let runtime = BackgroundRuntime::new(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name(SERVER_THREAD)
                        .enable_all()
                        .build()?,
                );
                let kube = kube.clone();
                let server =
                    runtime
                        .spawn(async move {
                            ca_tests::TestServer::start_with_cluster(backend, &kube).await
                        })
                        .await?;
                Ok(Sut::InProcess {
                    runtime,
                    server: Box::new(server),
                })
            }
            ServerMode::Process => {
                let dir = tempfile::tempdir()?;
                let database_url = ca_tests::fresh_database(backend, dir.path()).await;
                let jwks = dir.path().join("jwks.json");
                kube.write_jwks(&jwks);
                let port = || -> anyhow::Result<u16> {
                    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                        .local_addr()?
                        .port())
                };
                let (grpc, http, admin) = (port()?, port()?, port()?);
                let data = dir.path().join("data");
                let config = format!(
                    r#"
database_url = "{database_url}"
data_dir = "{data}"
[listen]
grpc = "127.0.0.1:{grpc}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
[keys]
kek_file = "{data}/kek"
[admin]
bootstrap_token_file = "{data}/admin.token"
[[trust_domains]]
name = "cluster.local"
[[clusters]]
name = "Kubernetes"
trust_domain = "cluster.local"
issuer = "{issuer}"
jwks_file = "{jwks}"
trusted_node_accounts = ["istio-system/ztunnel"]
"#,
                    data = data.display(),
                    issuer = ca_tests::kube::ISSUER,
                    jwks = jwks.display(),
                );
                let config_file = dir.path().join("ca.toml");
                std::fs::write(&config_file, config)?;
                let binary = std::env::current_exe()?.with_file_name("ca-server");
                anyhow::ensure!(
                    binary.exists(),
                    "{} is missing: cargo build --release --bin ca-server",
                    binary.display()
                );
                let log = std::fs::File::create(dir.path().join("server.log"))?;
                let child = std::process::Command::new(binary)
                    .arg("--config")
                    .arg(&config_file)
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .spawn()?;
                let base = format!("http://127.0.0.1:{http}");
                let client = reqwest::Client::new();
                let mut child = child;
                let mut ready = false;
                for _ in 0..300 {
                    if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                        && r.status().is_success()
                    {
                        ready = true;
                        break;
                    }
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !ready {
                    let _ = child.kill();
                    let log =
                        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                    anyhow::bail!("ca-server did not become ready:\n{log}");
                }
                let ca_pem = client
                    .get(format!("{base}/v1/bundles/cluster.local.pem"))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?
                    .to_vec();
                Ok(Sut::Process {
                    child,
                    database_url,
                    target: Target {
                        address: std::net::SocketAddr::from(([127, 0, 0, 1], grpc)),
                        ca_pem,
                    },
                    _dir: dir,
                })
            }
        }
    }

    fn target(&self) -> Target {
        match self {
            Sut::InProcess { server, .. } => Target {
                address: server.server.grpc_addr,
                ca_pem: server.serving_root_pem(),
            },
            Sut::Process { target, .. } => target.clone(),
        }
    }

    fn database_url(&self) -> &str {
        match self {
            Sut::InProcess { server, .. } => &server.config.database_url,
            Sut::Process { database_url, .. } => database_url,
        }
    }

    /// The server's CPU time so far, in microseconds.
    fn cpu_us(&self) -> f64 {
        match self {
            Sut::InProcess { .. } => thread_cpu_us().0,
            Sut::Process { child, .. } => cpu_us(&child.id().to_string()),
        }
    }

    /// Resident memory: the server's own, or (in-process) this whole process's.
    fn rss_mb(&self) -> f64 {
        match self {
            Sut::InProcess { .. } => rss_mb("self"),
            Sut::Process { child, .. } => rss_mb(&child.id().to_string()),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Sut::InProcess { runtime, server } => {
                runtime.spawn(server.stop()).await?;
            }
            Sut::Process { mut child, .. } => {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServerMode {
    /// The release `ca-server` binary in its own process (the default).
    Process,
    /// In the `ca-bench` process, on its own runtime.
    InProcess,
}

/// How the load is generated.
#[derive(Debug, Clone, Copy)]
struct LoadShape {
    server: ServerMode,
    client: ClientKind,
    /// Load threads, each a current-thread runtime with its share of the connections.
    threads: usize,
    reconnect: Reconnect,
    /// Requests in flight per connection.
    streams: usize,
    /// Clients are ztunnels impersonating workloads.
    ztunnel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Reconnect {
    /// One long-lived connection per client (the default).
    No,
    /// A new connection with a full TLS handshake for every request.
    Full,
    /// A new connection for every request, resuming the client's previous TLS session.
    Resume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientKind {
    /// `ca_tests::h2load`: hand-framed HTTP/2, pre-encoded requests, HPACK-indexed headers as
    /// grpc-go sends them (the default).
    H2,
    /// `ca_client::WorkloadClient` (tonic), as a Rust workload would call us.
    Tonic,
}

/// The name the test server's gRPC certificate carries.
const SERVER_NAME: &str = "localhost";

/// Where the load goes.
#[derive(Debug, Clone)]
struct Target {
    address: std::net::SocketAddr,
    ca_pem: Vec<u8>,
}

/// One client connection of either kind.
enum Conn {
    H2(ca_tests::h2load::H2Client),
    Tonic(ca_client::WorkloadClient, ca_client::TokenAuth),
}

impl Conn {
    /// A connection; the `h2` client encodes its headers in `style`.
    async fn connect(
        kind: ClientKind,
        target: &Target,
        token: &str,
        style: ca_tests::h2load::HeaderStyle,
    ) -> anyhow::Result<Conn> {
        Ok(match kind {
            ClientKind::H2 => Conn::H2(
                ca_tests::h2load::H2Client::connect_with(
                    target.address,
                    &ca_tests::h2load::client_config(&target.ca_pem)?,
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

    /// One `CreateCertificate`; the serial of the leaf received.
    async fn call(&self, request: &BenchRequest) -> Result<String, ()> {
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
        ca_tests::h2load::leaf_serial(leaf).map_err(|_| ())
    }
}

/// (latency, serial received or error)
type Outcome = (Duration, Result<String, ()>);

/// One pre-generated request: the CSR, the `metadata` it goes with (`ImpersonatedIdentity` for
/// a ztunnel), and both encoded as the `h2` client sends them.
struct BenchRequest {
    csr_pem: String,
    metadata: std::collections::BTreeMap<String, String>,
    body: Bytes,
}

/// One connection's load: closed loop (next request when the last is answered) or, with an
/// `interval`, open loop (one request every `interval`, whether or not earlier ones are done,
/// each connection's schedule offset so that together they send evenly).
async fn drive(
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
async fn drive_reconnecting(
    target: Target,
    token: String,
    reconnect: Reconnect,
    requests: Arc<Vec<BenchRequest>>,
    (first, stride): (usize, usize),
    deadline: Instant,
) -> anyhow::Result<Vec<Outcome>> {
    let mut config = (*ca_tests::h2load::client_config(&target.ca_pem)?).clone();
    if reconnect == Reconnect::Full {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let config = Arc::new(config);
    let mut outcomes = Vec::new();
    let mut n = first;
    while Instant::now() < deadline {
        let request = &requests[n % requests.len()];
        let t = Instant::now();
        let outcome = match ca_tests::h2load::H2Client::connect_with(
            target.address,
            &config,
            SERVER_NAME,
            &token,
            "Kubernetes",
            ca_tests::h2load::HeaderStyle::GrpcGo,
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

async fn run_grpc(
    backend: &str,
    csrs: &[String],
    clients: usize,
    duration: Duration,
    rate: Option<f64>,
    load: LoadShape,
) -> anyhow::Result<RunResult> {
    let kube = Arc::new(ca_tests::kube::FakeKube::new());
    let backend = match backend {
        "sqlite" => ca_tests::Backend::Sqlite,
        "postgres" => ca_tests::Backend::Postgres,
        other => anyhow::bail!("unknown backend {other}"),
    };
    // A port picked for the server process can be taken in between; one more try then.
    let server = match Sut::start(load.server, backend, &kube).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("the server did not start ({e}); trying once more");
            Sut::start(load.server, backend, &kube).await?
        }
    };
    // Each load thread runs a current-thread runtime with its share of the connections (like
    // `wrk -t`), so a request's frames are queued and flushed together.
    // A ztunnel asks for a different workload identity with each CSR.
    let requests: Arc<Vec<BenchRequest>> = Arc::new(
        csrs.iter()
            .enumerate()
            .map(|(k, pem)| {
                let mut metadata = std::collections::BTreeMap::new();
                if load.ztunnel {
                    metadata.insert(
                        "ImpersonatedIdentity".to_owned(),
                        format!("spiffe://cluster.local/ns/bench/sa/pod{k}"),
                    );
                }
                BenchRequest {
                    body: ca_tests::h2load::encode_request_for(pem, 0, &metadata),
                    csr_pem: pem.clone(),
                    metadata,
                }
            })
            .collect(),
    );
    let target = server.target();
    let threads = load.threads.clamp(1, clients.max(1));
    // A ztunnel encodes its headers as its HTTP/2 stack (the `h2` crate) does.
    let style = match load.ztunnel {
        true => ca_tests::h2load::HeaderStyle::H2,
        false => ca_tests::h2load::HeaderStyle::GrpcGo,
    };
    let ready = Arc::new(std::sync::Barrier::new(threads + 1));
    // Every (connection, stream) pair is one closed or open loop; loop `i + k * clients` is
    // stream `k` of connection `i`.
    let loops = clients * load.streams;
    let interval = rate.map(|r| Duration::from_secs_f64(loops as f64 / r));
    let mut handles = Vec::new();
    for t in 0..threads {
        let specs: Vec<(usize, String)> = (t..clients)
            .step_by(threads)
            .map(|i| match load.ztunnel {
                true => (i, kube.token("istio-system", "ztunnel")),
                false => (i, kube.token("bench", &format!("w{i}"))),
            })
            .collect();
        let (requests, target, ready, kind) =
            (requests.clone(), target.clone(), ready.clone(), load.client);
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || -> anyhow::Result<(Vec<Outcome>, f64)> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        if load.reconnect != Reconnect::No {
                            ready.wait();
                            let cpu_start = cpu_us("thread-self");
                            let deadline = Instant::now() + duration;
                            let mut tasks = Vec::new();
                            for (i, token) in specs {
                                tasks.push(tokio::spawn(drive_reconnecting(
                                    target.clone(),
                                    token,
                                    load.reconnect,
                                    requests.clone(),
                                    (i, clients),
                                    deadline,
                                )));
                            }
                            let mut outcomes = Vec::new();
                            for task in tasks {
                                outcomes.extend(task.await??);
                            }
                            return Ok((outcomes, cpu_us("thread-self") - cpu_start));
                        }
                        let mut connections = Vec::new();
                        for (i, token) in specs {
                            connections
                                .push((i, Conn::connect(kind, &target, &token, style).await));
                        }
                        ready.wait();
                        // This thread's CPU time; it is gone from /proc once the thread ends.
                        let cpu_start = cpu_us("thread-self");
                        let deadline = Instant::now() + duration;
                        let mut tasks = Vec::new();
                        for (i, connection) in connections {
                            let connection = Arc::new(connection?);
                            for stream in 0..load.streams {
                                tasks.push(tokio::spawn(drive(
                                    connection.clone(),
                                    requests.clone(),
                                    i + stream * clients,
                                    loops,
                                    deadline,
                                    interval,
                                )));
                            }
                        }
                        let mut outcomes = Vec::new();
                        for task in tasks {
                            outcomes.extend(task.await?);
                        }
                        Ok((outcomes, cpu_us("thread-self") - cpu_start))
                    })
                })?,
        );
    }
    let barrier = ready.clone();
    tokio::task::spawn_blocking(move || barrier.wait()).await?;
    let rss_start = server.rss_mb();
    let cpu_before = (server.cpu_us(), thread_cpu_us().1, postgres_cpu_us());
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut error_latencies = Vec::new();
    let mut serials = Vec::new();
    let mut load_cpu = 0.0;
    for handle in handles {
        let (outcomes, cpu) = tokio::task::spawn_blocking(move || handle.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        load_cpu += cpu;
        for (latency, outcome) in outcomes {
            match outcome {
                Ok(serial) => {
                    latencies.push(latency);
                    serials.push(serial);
                }
                Err(()) => error_latencies.push(latency),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let issued = serials.len().max(1) as f64;
    let cpu = (
        (server.cpu_us() - cpu_before.0) / issued,
        (thread_cpu_us().1 - cpu_before.1 + load_cpu) / issued,
        (postgres_cpu_us() - cpu_before.2) / issued,
    );
    // Every certificate a client received is in the database: count and every serial.
    let recorded: std::collections::HashSet<String> = match backend {
        ca_tests::Backend::Postgres => {
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(server.database_url()).await?;
            sqlx::query_scalar("SELECT serial FROM certificates WHERE api = 'istio'")
                .fetch_all(&mut db)
                .await?
                .into_iter()
                .collect()
        }
        _ => {
            use sqlx::Connection;
            let mut db = sqlx::SqliteConnection::connect(server.database_url()).await?;
            sqlx::query_scalar("SELECT serial FROM certificates WHERE api = 'istio'")
                .fetch_all(&mut db)
                .await?
                .into_iter()
                .collect()
        }
    };
    anyhow::ensure!(
        recorded.len() == serials.len(),
        "recorded {}, received {}",
        recorded.len(),
        serials.len()
    );
    let missing = serials.iter().filter(|s| !recorded.contains(*s)).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} received serials are not in the database"
    );
    let rss = server.rss_mb();
    let database_url = server.database_url().to_owned();
    server.stop().await?;
    if backend == ca_tests::Backend::Postgres {
        ca_tests::drop_postgres_database(&database_url).await?;
    }
    error_latencies.sort();
    let mut result = RunResult::from_latencies(latencies, elapsed);
    result.errors = error_latencies.len();
    result.error_p99_ms = error_latencies
        .get(
            ((error_latencies.len() as f64 * 0.99) as usize)
                .min(error_latencies.len().saturating_sub(1)),
        )
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    result.rss_mb = rss;
    result.rss_start_mb = rss_start;
    (result.server_us, result.client_us, result.pg_us) = cpu;
    Ok(result)
}

async fn fresh_pg(base: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
    let name = format!("ca_bench_{}", ca_tests::random_hex(6));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(format!("{base}/{name}"))
}

/// The CA engine over its own store (no listeners), and that store to check and close it.
async fn open_ca(
    dir: &std::path::Path,
    url: &str,
    connections: u32,
) -> anyhow::Result<(Ca, Store)> {
    let config = Config::ephemeral(dir, url);
    let mut options = StoreOptions::new(url);
    options.max_connections = connections;
    let store = Store::open(&options).await?;
    let kek = Kek::from_bytes([9; 32]);
    let authorities = ca_server::ca::load_or_create_authorities(
        &store,
        &kek,
        &config.trust_domains,
        None,
        OffsetDateTime::now_utc(),
    )
    .await?;
    let ca = Ca::new(config, store.clone(), authorities, Metrics::new());
    Ok((ca, store))
}

async fn run_engine(
    ca: &Ca,
    store: &Store,
    csrs: &[Vec<u8>],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let csrs = Arc::new(csrs.to_vec());
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let ca = ca.clone();
        let csrs = csrs.clone();
        tasks.push(tokio::spawn(async move {
            let id = SpiffeId::parse(&format!("spiffe://cluster.local/ns/bench/sa/w{worker}"))
                .unwrap_or_else(|_| unreachable!());
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < deadline {
                let request = Request {
                    csr: &csrs[i % csrs.len()],
                    spiffe_id: &id,
                    ttl: None,
                    requested_by: "bench",
                    request_id: "bench",
                    api: Api::CaV1,
                };
                let t = Instant::now();
                ca.enroll(&request, OffsetDateTime::now_utc()).await?;
                latencies.push(t.elapsed());
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let recorded = store.count_certificates().await?;
    anyhow::ensure!(
        recorded as usize == latencies.len(),
        "recorded {recorded} != issued {}",
        latencies.len()
    );
    Ok(RunResult::from_latencies(latencies, elapsed))
}

async fn bench_crl(entries: i64, runs: usize) -> anyhow::Result<()> {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Postgres).await;
    let ca = &server.server.ca;
    let td = ca_server::spiffe::TrustDomain::parse("cluster.local")?;
    let authority = ca.authorities().get(&td).context("no authority")?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut db = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&server.config.database_url).await?
    };
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO certificates (issuer_key_id, serial, trust_domain, spiffe_id, not_before, not_after, \
         spki_sha256, der, requested_by, request_id, api, created_at, revoked_at, revocation_reason) \
         SELECT $1, '7f' || lpad(to_hex(i), 30, '0'), 'cluster.local', 'spiffe://cluster.local/ns/b/sa/b', \
         $2, $2 + 40 * 86400, '', ''::bytea, 'bench', 'b', 'bench', $2, $2, 'keyCompromise' \
         FROM generate_series(1, $3) AS i",
    )
    .bind(&authority.issuer_key_id)
    .bind(now)
    .bind(entries)
    .execute(&mut db)
    .await?;
    println!(
        "inserted {entries} revoked rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for run in 0..runs {
        // Each run past the previous CRL's half-life, so it is rebuilt.
        let at = OffsetDateTime::now_utc() + time::Duration::hours(13 * (run as i64 + 1));
        let t = Instant::now();
        let crl = ca.crl(&td, at).await?;
        times.push(t.elapsed().as_secs_f64());
        println!(
            "run {run}: {:.3}s, {} bytes, CRL number {}",
            times[run],
            crl.der.len(),
            crl.number
        );
    }
    times.sort_by(f64::total_cmp);
    println!(
        "CRL with {entries} entries: median {:.3}s to query, build and sign",
        times[times.len() / 2]
    );
    server.stop().await;
    Ok(())
}

/// Runs `request` in a closed loop from `concurrency` HTTP clients for `duration`, `runs` times;
/// returns the median run.
async fn http_load<F, Fut>(
    concurrency: usize,
    duration: Duration,
    runs: usize,
    request: F,
) -> anyhow::Result<RunResult>
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut results = Vec::new();
    for _ in 0..runs {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    request(client.clone()).await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        results.push(RunResult::from_latencies(
            latencies,
            started.elapsed().as_secs_f64(),
        ));
    }
    results.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    Ok(results.swap_remove(results.len() / 2))
}

async fn bench_ocsp(concurrency: usize, duration: Duration, runs: usize) -> anyhow::Result<()> {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Postgres).await;
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None)?;
    let issued = server
        .admin_client()
        .issue(
            &csr.csr_pem,
            "spiffe://cluster.local/ns/bench/sa/ocsp",
            None,
        )
        .await?;
    let td = ca_server::spiffe::TrustDomain::parse("cluster.local")?;
    let authority = server
        .server
        .ca
        .authorities()
        .get(&td)
        .context("no authority")?;
    let request = Arc::new(ca_tests::ocsp::request(
        &authority.intermediate_der,
        &issued.serial,
    ));
    let url = Arc::new(format!("{}/v1/ocsp/cluster.local", server.http_url()));
    let m = http_load(concurrency, duration, runs, move |client| {
        let request = request.clone();
        let url = url.clone();
        async move {
            let body = client
                .post(url.as_str())
                .header("content-type", "application/ocsp-request")
                .body(request.as_ref().clone())
                .send()
                .await?
                .bytes()
                .await?;
            anyhow::ensure!(
                ca_tests::ocsp::answer(&body) == ca_tests::ocsp::Answer::Good,
                "not good"
            );
            Ok(())
        }
    })
    .await?;
    println!(
        "OCSP (Postgres, {concurrency} clients): {:.0} responses/s, p50 {:.2} ms, p99 {:.2} ms (median of {runs})",
        m.rate, m.p50_ms, m.p99_ms
    );
    server.stop().await;
    Ok(())
}

async fn bench_bundle(concurrency: usize, duration: Duration, runs: usize) -> anyhow::Result<()> {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Sqlite).await;
    let url = Arc::new(format!("{}/v1/bundles/cluster.local", server.http_url()));
    let m = http_load(concurrency, duration, runs, move |client| {
        let url = url.clone();
        async move {
            let response = client.get(url.as_str()).send().await?;
            anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
            response.bytes().await?;
            Ok(())
        }
    })
    .await?;
    println!(
        "GET /v1/bundles/{{td}} ({concurrency} clients): {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms (median of {runs})",
        m.rate, m.p50_ms, m.p99_ms
    );
    server.stop().await;
    Ok(())
}
