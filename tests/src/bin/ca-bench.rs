//! `ca-bench`: the project's load tool.
//!
//! `ca-bench engine`: the issuance engine end to end in-process (CSR -> signed, self-checked,
//! *recorded* certificate) on SQLite and Postgres, for ECDSA P-256 and RSA-2048 CSRs, with N
//! concurrent tasks for a bounded time; prints issuances/s and latency percentiles, median of R
//! runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use ca_client::KeyType;
use ca_server::authn::jwt::Clusters;
use ca_server::authority::Authorities;
use ca_server::config::Config;
use ca_server::enrollment::{Api, Ca, Request};
use ca_server::keys::Kek;
use ca_server::metrics::Metrics;
use ca_server::spiffe::SpiffeId;
use ca_server::store::{Store, StoreOptions};

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
                        let ca = open_ca(dir.path(), &url, concurrency as u32 + 2).await?;
                        results.push(
                            run_engine(&ca, &csrs, concurrency, Duration::from_secs(seconds))
                                .await?,
                        );
                        ca.store.close().await;
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

struct RunResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn make_csrs(key_type: KeyType, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..count)
        .map(|_| Ok(ca_client::csr::generate(key_type, None)?.csr_der))
        .collect()
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

async fn open_ca(dir: &std::path::Path, url: &str, connections: u32) -> anyhow::Result<Ca> {
    let config = Config::ephemeral(dir, url);
    let mut options = StoreOptions::new(url);
    options.max_connections = connections;
    let store = Store::open(&options).await?;
    let kek = Kek::from_bytes([9; 32]);
    let authorities = Authorities::load_or_create(
        &store,
        &kek,
        &config.trust_domains,
        OffsetDateTime::now_utc(),
    )
    .await?;
    Ok(Ca {
        clusters: Clusters::new(&config.clusters),
        config: Arc::new(config),
        store,
        authorities,
        metrics: Metrics::new(),
    })
}

async fn run_engine(
    ca: &Ca,
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
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let recorded = ca.store.count_certificates().await?;
    anyhow::ensure!(
        recorded as usize == latencies.len(),
        "recorded {recorded} != issued {}",
        latencies.len()
    );
    Ok(RunResult {
        rate: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}
