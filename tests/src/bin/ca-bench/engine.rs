//! `ca-bench engine`: the issuance engine end to end in-process (CSR -> signed, self-checked,
//! *recorded* certificate) on SQLite and Postgres, with N concurrent tasks for a bounded time; no
//! listeners, no wire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use ca_client::KeyType;
use ca_server::ca::{Api, Ca, Request};
use ca_server::config::Config;
use ca_server::keys::Kek;
use ca_server::metrics::Metrics;
use ca_server::spiffe::SpiffeId;
use ca_server::store::{Store, StoreOptions};

use crate::report::RunResult;

/// Runs every (backend, key) combination `runs` times and prints the median run of each; a
/// Postgres run gets a fresh database on the server at `postgres`, dropped afterwards.
pub async fn bench(
    backends: &str,
    keys: &str,
    concurrency: usize,
    seconds: u64,
    runs: usize,
    postgres: &str,
) -> anyhow::Result<()> {
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
                    "postgres" => fresh_pg(postgres).await?,
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
            let median = crate::report::median(results);
            println!(
                "{backend:<9} {key:<12} {concurrency:>4}  {:>11.0}  {:>6.2}  {:>6.2}",
                median.rate, median.p50_ms, median.p99_ms
            );
        }
    }
    Ok(())
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

/// The CA engine over its own store (no listeners), and that store to check and close it.
async fn open_ca(
    dir: &std::path::Path,
    url: &str,
    connections: u32,
) -> anyhow::Result<(Ca, Store)> {
    let mut config = Config::ephemeral(dir, url);
    // Each worker asks for one identity as fast as it can: no per-identity rate limit here.
    for td in &mut config.trust_domains {
        td.identity_burst = 0;
    }
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
                    authenticated_by: "admin_token",
                    impersonated: false,
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
