//! `ca-bench soak`: a long run at a fixed rate against the release `ca-server` on Postgres, to
//! show that nothing grows that should not (memory above all) and that latency holds.
//!
//! An open loop offers `rate` `CreateCertificate` requests/s spread evenly over `clients`
//! long-lived connections. Every `sample` seconds one CSV row is written (and printed): the
//! issuance rate, errors, requests skipped because `max_in_flight` were already waiting, p50,
//! p99 and max latency of that window, the server's resident memory (all of it, and its
//! anonymous part: heap and stacks) and CPU, the Postgres database's size and the server's
//! connections to it. At the end every certificate a client received must have its record (the
//! count of `api = 'istio'` rows equals the count received), and the memory verdict is printed:
//! the growth of the server's RSS level, from the median of the first quarter of the samples
//! after the warm-up to the median of the last quarter (flat: under 10 %), with the trend and
//! the highest single sample beside it. The level, not the highest sample: a sample taken
//! while Postgres stalls (a checkpoint) catches the requests admitted and waiting, bounded by
//! `max_in_flight` and the client's own limit, which hold a few MiB for those seconds and give
//! them back; that is load, not growth, and a leak moves the level.
//! `scripts/soak-plot` draws the CSV as PNG plots.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ca_client::KeyType;

use crate::grpc::ClientKind;
use crate::grpc::load::{BenchRequest, Conn};
use crate::process::Sut;
use crate::report::percentile_ms;
use ca_tests::private_postgres::PrivatePostgres;

/// What `ca-bench soak` was asked for.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub rate: f64,
    pub duration: Duration,
    pub clients: usize,
    pub sample: Duration,
    /// Samples before this point are warm-up: not part of the memory verdict.
    pub warmup: Duration,
    pub max_in_flight: usize,
    pub key: KeyType,
    /// Where the CSV and the summary go.
    pub out: PathBuf,
    pub postgres: SoakPostgres,
    /// How long the server and its database stay up after the summary (`--linger-seconds`):
    /// a server under heaptrack is killed in that time, so the profile ends on a live heap and
    /// not on the failed writes of a server whose database is gone.
    pub linger: Duration,
}

/// Which Postgres the soak's server writes to.
#[derive(Debug, Clone)]
pub enum SoakPostgres {
    /// A cluster of its own ([`PrivatePostgres`]), configured for the load by [`PRIVATE_CONF`]:
    /// the run then measures our server, not the settings of whatever Postgres the machine runs.
    Private,
    /// An existing server (`postgres://user@host:port`); a fresh database is made on it.
    At(String),
}

/// The private cluster's settings, sized for a few thousand issuances a second (4,000/s wrote
/// about 7 MB of WAL a second, 8 GB per 20-minute checkpoint), durable as in production
/// (`fsync` and `synchronous_commit` on): checkpoints come from the timer and are spread over
/// it, not requested about every 25 s by a full `max_wal_size` (1 GB by default, each one
/// slowing commits); a larger `shared_buffers` than the default 128 MB for a table that grows
/// by 20 GB an hour. Checkpoints and autovacuum runs are logged, and the log is copied to the
/// output directory.
const PRIVATE_CONF: &str = "fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 2GB
wal_buffers = 64MB
max_wal_size = 32GB
min_wal_size = 2GB
checkpoint_timeout = 20min
checkpoint_completion_target = 0.9
max_connections = 200
log_checkpoints = on
log_autovacuum_min_duration = 0
";

/// The answers of one sampling window.
#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    errors: u64,
}

/// One CSV row.
#[derive(Debug, Clone)]
struct Sample {
    elapsed_s: f64,
    issued_per_s: f64,
    errors: u64,
    skipped: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rss_mb: f64,
    rss_anon_mb: f64,
    server_cpu_pct: f64,
    pg_size_mb: f64,
    /// The server's connections to its database (its pool's size), at the sample.
    pg_connections: i64,
}

const CSV_HEADER: &str = "elapsed_s,issued_per_s,errors,skipped,p50_ms,p99_ms,max_ms,rss_mb,rss_anon_mb,server_cpu_pct,pg_size_mb,pg_connections";

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{:.0},{:.1},{},{},{:.3},{:.3},{:.3},{:.1},{:.1},{:.1},{:.1},{}",
            self.elapsed_s,
            self.issued_per_s,
            self.errors,
            self.skipped,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.rss_mb,
            self.rss_anon_mb,
            self.server_cpu_pct,
            self.pg_size_mb,
            self.pg_connections
        )
    }
}

/// Shared by the load and the sampler.
struct Counters {
    window: std::sync::Mutex<Window>,
    issued: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicUsize,
    /// Connections dialled again after the server recycled them, and requests sent again on
    /// the new connection because the old one refused them.
    redials: AtomicU64,
    resent: AtomicU64,
}

/// One of the soak's client connections. The server recycles its connections at
/// `grpc_max_connection_age` (GOAWAY, then the requests in flight finish); like istio-agent and
/// ztunnel, the client then dials a new one, and sends a request the old one refused again
/// there.
struct Redial {
    target: crate::process::Target,
    token: String,
    current: tokio::sync::Mutex<Arc<Conn>>,
}

impl Redial {
    async fn dial(target: &crate::process::Target, token: &str) -> anyhow::Result<Conn> {
        Conn::connect(
            ClientKind::H2,
            target,
            token,
            crate::h2load::HeaderStyle::GrpcGo,
        )
        .await
    }

    /// The connection to send on: the current one, or a new one if it takes no more requests.
    async fn connection(&self, counters: &Counters) -> Result<Arc<Conn>, ()> {
        let mut current = self.current.lock().await;
        if current.is_closed() {
            *current = Arc::new(
                Redial::dial(&self.target, &self.token)
                    .await
                    .map_err(|_| ())?,
            );
            counters.redials.fetch_add(1, Ordering::Relaxed);
        }
        Ok(current.clone())
    }

    async fn call(&self, request: &BenchRequest, counters: &Counters) -> Result<String, ()> {
        let connection = self.connection(counters).await?;
        match connection.call(request).await {
            Err(()) if connection.is_closed() => {
                counters.resent.fetch_add(1, Ordering::Relaxed);
                self.connection(counters).await?.call(request).await
            }
            answer => answer,
        }
    }
}

pub async fn soak(plan: SoakPlan) -> anyhow::Result<()> {
    anyhow::ensure!(
        plan.rate > 0.0 && plan.clients > 0,
        "--rate and --clients are positive"
    );
    anyhow::ensure!(
        plan.sample >= Duration::from_secs(1) && plan.warmup < plan.duration,
        "--sample-seconds is at least 1 and the warm-up shorter than the run"
    );
    std::fs::create_dir_all(&plan.out)?;
    let kube = Arc::new(ca_tests::kube::FakeKube::new());
    let (private, base) = match &plan.postgres {
        SoakPostgres::Private => {
            let postgres =
                tokio::task::spawn_blocking(|| PrivatePostgres::start_configured(PRIVATE_CONF))
                    .await?;
            let base = format!("postgres://postgres@127.0.0.1:{}", postgres.port);
            println!(
                "soak: a private Postgres on port {} ({}), configured:\n{PRIVATE_CONF}",
                postgres.port,
                postgres.data.display()
            );
            (Some(postgres), base)
        }
        SoakPostgres::At(base) => (None, base.trim_end_matches('/').to_owned()),
    };
    let server = Sut::process_on_postgres(&base, &kube).await?;
    let result = run(&plan, &server, &kube).await;
    if !plan.linger.is_zero() {
        println!(
            "soak: the server and its database stay up for {} s",
            plan.linger.as_secs()
        );
        tokio::time::sleep(plan.linger).await;
    }
    let database_url = server.database_url().to_owned();
    server.stop().await?;
    ca_tests::drop_postgres_database(&database_url).await?;
    if let Some(postgres) = private {
        std::fs::copy(postgres.log_path(), plan.out.join("postgres.log"))?;
        tokio::task::spawn_blocking(move || drop(postgres)).await?;
    }
    result
}

async fn run(plan: &SoakPlan, server: &Sut, kube: &ca_tests::kube::FakeKube) -> anyhow::Result<()> {
    use sqlx::Connection;
    let requests = Arc::new(BenchRequest::workload_requests(plan.key, 64)?);
    let target = server.target();
    let mut connections = Vec::new();
    for i in 0..plan.clients {
        let token = kube.token("bench", &format!("w{i}"));
        let connection = Redial::dial(&target, &token).await?;
        connections.push(Arc::new(Redial {
            target: target.clone(),
            token,
            current: tokio::sync::Mutex::new(Arc::new(connection)),
        }));
    }
    let counters = Arc::new(Counters {
        window: Default::default(),
        issued: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        redials: AtomicU64::new(0),
        resent: AtomicU64::new(0),
    });
    let mut db = sqlx::PgConnection::connect(server.database_url()).await?;
    let csv_path = plan.out.join("soak.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path)?);
    writeln!(csv, "{CSV_HEADER}")?;
    csv.flush()?;
    println!(
        "soak: {:.0}/s offered over {} connections for {} s, a sample every {} s, into {}",
        plan.rate,
        plan.clients,
        plan.duration.as_secs(),
        plan.sample.as_secs(),
        csv_path.display()
    );
    println!("{CSV_HEADER}");

    let started = Instant::now();
    let deadline = started + plan.duration;
    let load = tokio::spawn(offer(
        connections,
        requests,
        counters.clone(),
        plan.rate,
        plan.max_in_flight,
        deadline,
    ));
    let mut samples: Vec<Sample> = Vec::new();
    let mut last = (started, server.cpu_us(), 0u64);
    let mut next = started + plan.sample;
    while next <= deadline {
        tokio::time::sleep_until(next.into()).await;
        next += plan.sample;
        let now = Instant::now();
        let window = std::mem::take(
            &mut *counters
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut latencies = window.latencies;
        latencies.sort();
        let seconds = now.duration_since(last.0).as_secs_f64();
        let cpu = server.cpu_us();
        let skipped = counters.skipped.load(Ordering::Relaxed);
        let pg_size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut db)
            .await?;
        let pg_connections: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut db)
        .await?;
        let sample = Sample {
            elapsed_s: now.duration_since(started).as_secs_f64(),
            issued_per_s: latencies.len() as f64 / seconds,
            errors: window.errors,
            skipped: skipped - last.2,
            p50_ms: percentile_ms(&latencies, 0.5),
            p99_ms: percentile_ms(&latencies, 0.99),
            max_ms: latencies
                .last()
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0),
            rss_mb: server.rss_mb(),
            rss_anon_mb: server.rss_anon_mb(),
            server_cpu_pct: (cpu - last.1) / (seconds * 1e6) * 100.0,
            pg_size_mb: pg_size as f64 / (1024.0 * 1024.0),
            pg_connections,
        };
        last = (now, cpu, skipped);
        println!("{}", sample.csv());
        writeln!(csv, "{}", sample.csv())?;
        csv.flush()?;
        samples.push(sample);
    }
    load.await??;

    // Every certificate a client received has its record.
    let issued = counters.issued.load(Ordering::Relaxed);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM certificates WHERE api = 'istio'")
        .fetch_one(&mut db)
        .await?;
    // Checkpoints since the server started: requested ones (a full `max_wal_size`) are the
    // ones that stall commits. Columns of Postgres 15 (17 moved them to pg_stat_checkpointer).
    let checkpoints: Option<(i64, i64)> =
        sqlx::query_as("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter")
            .fetch_one(&mut db)
            .await
            .ok();
    let mut summary = summarize(plan, &samples, &counters, recorded)?;
    if let Some((timed, requested)) = checkpoints {
        summary.push_str(&format!(
            "Postgres checkpoints since it started: {timed} timed, {requested} requested\n"
        ));
    }
    print!("{summary}");
    std::fs::write(plan.out.join("summary.txt"), &summary)?;
    anyhow::ensure!(
        recorded as u64 == issued,
        "{issued} certificates received, {recorded} recorded"
    );
    Ok(())
}

/// The open loop: one request every `1/rate` seconds, round robin over the connections, each in
/// its own task; a request that would exceed `max_in_flight` is skipped and counted.
async fn offer(
    connections: Vec<Arc<Redial>>,
    requests: Arc<Vec<BenchRequest>>,
    counters: Arc<Counters>,
    rate: f64,
    max_in_flight: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Sleeping per request would cost a timer wake-up each; requests due by now go out together
    // every millisecond instead, which at these rates is the same stream.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = (now.duration_since(started).as_secs_f64() / interval.as_secs_f64()) as u64;
        while sent < due {
            let n = sent as usize;
            sent += 1;
            if counters.in_flight.load(Ordering::Relaxed) >= max_in_flight {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let connection = connections[n % connections.len()].clone();
            let (requests, counters) = (requests.clone(), counters.clone());
            tasks.spawn(async move {
                let t = Instant::now();
                let outcome = connection
                    .call(&requests[n % requests.len()], &counters)
                    .await;
                let latency = t.elapsed();
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                let mut window = counters
                    .window
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match outcome {
                    Ok(_) => {
                        counters.issued.fetch_add(1, Ordering::Relaxed);
                        window.latencies.push(latency);
                    }
                    Err(()) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        window.errors += 1;
                    }
                }
            });
        }
        // Finished tasks are reaped as we go, so the set stays the size of what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How a memory column moved after the warm-up (see the module's docs).
struct MemoryGrowth<'a> {
    /// Median of the first quarter of the samples, and of the last quarter.
    start: f64,
    end: f64,
    /// From `start` to `end`, in percent: the verdict's figure.
    growth_pct: f64,
    /// Least-squares slope over every sample, in MiB per hour.
    trend_per_hour: f64,
    /// The highest single sample, and its value.
    peak: (&'a Sample, f64),
}

/// The median of one column over `samples` (not empty).
fn median(samples: &[&Sample], f: fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|s| f(s)).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn memory_growth<'a>(after: &[&'a Sample], f: fn(&Sample) -> f64) -> MemoryGrowth<'a> {
    let quarter = (after.len() / 4).max(1);
    let start = median(&after[..quarter], f);
    let end = median(&after[after.len() - quarter..], f);
    let n = after.len() as f64;
    let mean_t = after.iter().map(|s| s.elapsed_s).sum::<f64>() / n;
    let mean_v = after.iter().map(|s| f(s)).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for s in after {
        covariance += (s.elapsed_s - mean_t) * (f(s) - mean_v);
        variance += (s.elapsed_s - mean_t).powi(2);
    }
    let trend_per_hour = if variance > 0.0 {
        covariance / variance * 3600.0
    } else {
        0.0
    };
    let mut peak = (after[0], f(after[0]));
    for s in after {
        if f(s) > peak.1 {
            peak = (s, f(s));
        }
    }
    MemoryGrowth {
        start,
        end,
        growth_pct: (end - start) / start * 100.0,
        trend_per_hour,
        peak,
    }
}

/// The run's verdict, as printed and written to `summary.txt`.
fn summarize(
    plan: &SoakPlan,
    samples: &[Sample],
    counters: &Counters,
    recorded: i64,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.elapsed_s > plan.warmup.as_secs_f64())
        .collect();
    let (Some(first), Some(last)) = (after.first(), after.last()) else {
        anyhow::bail!("no sample after the warm-up: lengthen the run or shorten --warmup-seconds");
    };
    let overall = |f: fn(&Sample) -> f64| median(&after, f);
    let memory = |f: fn(&Sample) -> f64| memory_growth(&after, f);
    let verdict = |g: f64| {
        if g < 10.0 {
            "flat: under 10 %"
        } else {
            "NOT flat: 10 % or more"
        }
    };
    let worst = |f: fn(&Sample) -> f64| after.iter().map(|s| f(s)).fold(0.0, f64::max);
    let mut out = String::new();
    writeln!(
        out,
        "\nsummary ({} samples after a {} s warm-up)",
        after.len(),
        plan.warmup.as_secs()
    )?;
    writeln!(
        out,
        "issued {} (recorded {recorded}), errors {}, skipped {}",
        counters.issued.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
        counters.skipped.load(Ordering::Relaxed)
    )?;
    writeln!(
        out,
        "connections recycled by the server and dialled again: {}; requests sent again on the new connection: {}",
        counters.redials.load(Ordering::Relaxed),
        counters.resent.load(Ordering::Relaxed)
    )?;
    writeln!(
        out,
        "rate/s: median {:.0} (offered {:.0}); p50 ms: median {:.2}, worst {:.2}; p99 ms: median {:.2}, worst {:.2}; server CPU %: median {:.0}",
        overall(|s| s.issued_per_s),
        plan.rate,
        overall(|s| s.p50_ms),
        worst(|s| s.p50_ms),
        overall(|s| s.p99_ms),
        worst(|s| s.p99_ms),
        overall(|s| s.server_cpu_pct),
    )?;
    for (name, f) in [
        ("RSS", (|s: &Sample| s.rss_mb) as fn(&Sample) -> f64),
        (
            "anonymous RSS (heap and stacks, not the binary's mapped pages)",
            |s: &Sample| s.rss_anon_mb,
        ),
    ] {
        let m = memory(f);
        writeln!(
            out,
            "{name} MiB: level {:.1} in the first quarter after the warm-up, {:.1} in the last: growth {:.1} % ({}); trend {:+.1} MiB/h; first sample after the warm-up {:.1}, last {:.1}; highest sample {:.1} ({:+.1} % over the first quarter's level, at {:.0} s, {} errors in that window)",
            m.start,
            m.end,
            m.growth_pct,
            verdict(m.growth_pct),
            m.trend_per_hour,
            f(first),
            f(last),
            m.peak.1,
            (m.peak.1 - m.start) / m.start * 100.0,
            m.peak.0.elapsed_s,
            m.peak.0.errors,
        )?;
    }
    writeln!(
        out,
        "Postgres database: {:.0} MiB after the warm-up, {:.0} MiB at the end",
        first.pg_size_mb, last.pg_size_mb
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[f64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &rss_mb)| Sample {
                elapsed_s: (i as f64 + 1.0) * 60.0,
                issued_per_s: 4000.0,
                errors: 0,
                skipped: 0,
                p50_ms: 1.0,
                p99_ms: 10.0,
                max_ms: 20.0,
                rss_mb,
                rss_anon_mb: rss_mb / 2.0,
                server_cpu_pct: 50.0,
                pg_size_mb: 1.0,
                pg_connections: 16,
            })
            .collect()
    }

    #[test]
    fn a_stall_sample_is_not_growth_but_a_rising_level_is() {
        // A flat level with two samples caught in a stall: flat, the peak still reported.
        let mut level = vec![30.0; 40];
        level[10] = 39.5;
        level[35] = 39.0;
        let flat = samples(&level);
        let after: Vec<&Sample> = flat.iter().collect();
        let m = memory_growth(&after, |s| s.rss_mb);
        assert_eq!((m.start, m.end), (30.0, 30.0));
        assert!(m.growth_pct.abs() < 1e-9, "{}", m.growth_pct);
        assert_eq!(m.peak.1, 39.5);
        assert_eq!(m.peak.0.elapsed_s, 660.0);

        // A leak: +0.12 MiB a minute on 30 MiB over 40 minutes is about 12 % from the first
        // quarter's level to the last: not flat, and the trend says 7.2 MiB/h.
        let rising: Vec<f64> = (0..40).map(|i| 30.0 + 0.12 * f64::from(i)).collect();
        let leak = samples(&rising);
        let after: Vec<&Sample> = leak.iter().collect();
        let m = memory_growth(&after, |s| s.rss_mb);
        assert!(m.growth_pct >= 10.0, "{}", m.growth_pct);
        assert!(
            (m.trend_per_hour - 7.2).abs() < 1e-6,
            "{}",
            m.trend_per_hour
        );
    }
}
