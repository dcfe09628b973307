//! The HTTP benchmarks on an in-process server: `ca-bench ocsp` (OCSP responses/s, POSTs to the
//! responder) and `ca-bench bundle` (`GET /v1/bundles/{td}` requests/s), both closed loops of
//! reqwest clients.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use ca_client::KeyType;

use crate::report::RunResult;

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
    Ok(crate::report::median(results))
}

pub async fn ocsp(concurrency: usize, duration: Duration, runs: usize) -> anyhow::Result<()> {
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
        .cloned()
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

pub async fn bundle(concurrency: usize, duration: Duration, runs: usize) -> anyhow::Result<()> {
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
