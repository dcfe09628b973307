//! What a run measured ([`RunResult`]) and the statistics drawn from its latencies: percentiles,
//! and the median of several runs.

use std::time::Duration;

/// One run's figures; the benchmarks print the median run's.
#[derive(Debug, Default)]
pub struct RunResult {
    pub rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests answered with an error (e.g. RESOURCE_EXHAUSTED when overloaded).
    pub errors: usize,
    pub error_p99_ms: f64,
    /// Resident memory of this process (server and load generator) at the start and the end.
    pub rss_start_mb: f64,
    pub rss_mb: f64,
    /// CPU time (user + system) of the server's threads per successful issuance, in microseconds.
    pub server_us: f64,
    /// CPU time of the load generator (every other thread of this process) per issuance.
    pub client_us: f64,
    /// CPU time of every `postgres` process on the machine per successful issuance.
    pub pg_us: f64,
}

impl RunResult {
    /// Rate and percentiles of the successful requests' `latencies` over `elapsed` seconds.
    pub fn from_latencies(mut latencies: Vec<Duration>, elapsed: f64) -> RunResult {
        latencies.sort();
        RunResult {
            rate: latencies.len() as f64 / elapsed,
            p50_ms: percentile_ms(&latencies, 0.5),
            p90_ms: percentile_ms(&latencies, 0.9),
            p99_ms: percentile_ms(&latencies, 0.99),
            max_ms: latencies
                .last()
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0),
            ..RunResult::default()
        }
    }
}

/// The `p` percentile of `sorted` latencies in milliseconds (0 without any).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The run with the median rate (the upper one of an even number). `runs` is never empty: a
/// benchmark with `--runs 0` stops here, as it always has.
pub fn median(mut runs: Vec<RunResult>) -> RunResult {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}
