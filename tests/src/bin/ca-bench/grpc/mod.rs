//! `ca-bench grpc`: `CreateCertificate` throughput and latency against a real server (the
//! release `ca-server` process, or in-process) on loopback, from load threads that each drive
//! their share of the connections; afterwards every received serial is looked up in the database.

pub mod load;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_client::KeyType;

use crate::process::{ServerMode, Sut};
use crate::report::{RunResult, percentile_ms};
use crate::sampling::{cpu_us, postgres_cpu_us, thread_cpu_us};
use load::{BenchRequest, Conn, Outcome, drive, drive_reconnecting};

/// How the load is generated.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub server: ServerMode,
    pub client: ClientKind,
    /// Load threads, each a current-thread runtime with its share of the connections.
    pub threads: usize,
    pub reconnect: Reconnect,
    /// Requests in flight per connection.
    pub streams: usize,
    /// Clients are ztunnels impersonating workloads.
    pub ztunnel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reconnect {
    /// One long-lived connection per client (the default).
    No,
    /// A new connection with a full TLS handshake for every request.
    Full,
    /// A new connection for every request, resuming the client's previous TLS session.
    Resume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// `h2load`: hand-framed HTTP/2, pre-encoded requests, HPACK-indexed headers as
    /// grpc-go sends them (the default).
    H2,
    /// `ca_client::WorkloadClient` (tonic), as a Rust workload would call us.
    Tonic,
}

/// Runs every (backend, key) combination `runs` times and prints the median run of each.
pub async fn bench(
    backends: &str,
    keys: &str,
    clients: usize,
    seconds: u64,
    runs: usize,
    rate: Option<f64>,
    load: LoadShape,
) -> anyhow::Result<()> {
    let LoadShape {
        client,
        reconnect,
        streams,
        ztunnel,
        ..
    } = load;
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
                        load,
                    )
                    .await?,
                );
            }
            let m = crate::report::median(results);
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
    Ok(())
}

fn make_csr_pems(key_type: KeyType, count: usize) -> anyhow::Result<Vec<String>> {
    (0..count)
        .map(|_| Ok(ca_client::csr::generate(key_type, None)?.csr_pem))
        .collect()
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
                    body: crate::h2load::encode_request_for(pem, 0, &metadata),
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
        true => crate::h2load::HeaderStyle::H2,
        false => crate::h2load::HeaderStyle::GrpcGo,
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
    result.error_p99_ms = percentile_ms(&error_latencies, 0.99);
    result.rss_mb = rss;
    result.rss_start_mb = rss_start;
    (result.server_us, result.client_us, result.pg_us) = cpu;
    Ok(result)
}
