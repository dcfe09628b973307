//! `ca-bench`: the project's load tool; this file holds its arguments and the dispatch to one
//! module per benchmark.
//!
//! - `grpc`: `CreateCertificate` over TLS gRPC against a real server (the release `ca-server`
//!   process by default), driven by the lean hand-framed HTTP/2 client in `h2load` or by tonic.
//! - `engine`: the issuance engine end to end in-process (CSR -> signed, self-checked,
//!   *recorded* certificate) on SQLite and Postgres, for ECDSA P-256 and RSA-2048 CSRs, with N
//!   concurrent tasks for a bounded time; prints issuances/s and latency percentiles, median of
//!   R runs.
//! - `http` (`ocsp`, `bundle`) and `crl`: the HTTP surface and CRL signing.
//! - `rotation`: the issuance rate through the CA's transitions (rotations, revocation).
//! - `soak`: an hour (by default) at a fixed rate on Postgres, sampled every minute into a CSV.
//! - `process` starts and stops the server under test, `sampling` reads CPU time and memory
//!   from `/proc`, `report` holds a run's figures and their statistics.

mod crl;
mod engine;
mod grpc;
mod h2load;
mod http;
mod process;
mod report;
mod rotation;
mod sampling;
mod soak;

use std::time::Duration;

use clap::{Parser, Subcommand};

use grpc::{ClientKind, LoadShape, Reconnect};
use process::ServerMode;

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
    /// Issuance through the CA's transitions: a closed-loop load on an in-process server
    /// (Postgres) while the CA rotates its intermediate, publishes and activates a new root and
    /// revokes the active generation, `--gap` seconds apart; prints the rate in the second after
    /// each next to the steady rate.
    Rotation {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 8)]
        gap: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// A long run at a fixed rate against the release ca-server on Postgres: every
    /// `--sample-seconds` a CSV row (rate, errors, p50/p99/max latency, the server's RSS and
    /// CPU, the database's size); at the end the memory verdict and a check that every
    /// certificate received was recorded. Plot it with `scripts/soak-plot OUT/soak.csv`.
    Soak {
        /// Offered requests/s (pick about half of `ca-bench grpc`'s Postgres P-256 figure).
        #[arg(long, default_value_t = 3000.0)]
        rate: f64,
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 60)]
        sample_seconds: u64,
        /// Samples up to this point are not part of the memory verdict.
        #[arg(long, default_value_t = 300)]
        warmup_seconds: u64,
        /// Requests waiting at once; beyond it a due request is skipped (and counted).
        #[arg(long, default_value_t = 2048)]
        max_in_flight: usize,
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
        /// Directory for soak.csv, summary.txt (and postgres.log of a private cluster).
        #[arg(long, default_value = "target/soak")]
        out: std::path::PathBuf,
        /// `private`: a Postgres cluster of the run's own, sized for the load (initdb/pg_ctl,
        /// fsync on); or the URL of an existing server (`postgres://postgres@127.0.0.1:5432`).
        #[arg(long, default_value = "private")]
        postgres: String,
        /// After the summary, keep the server and its database up this long before stopping
        /// them: time to end a heap profile of a live server (README "Benchmarks").
        #[arg(long, default_value_t = 0)]
        linger_seconds: u64,
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
        Command::Crl { entries, runs } => crl::bench(entries, runs).await,
        Command::Bundle {
            concurrency,
            seconds,
            runs,
        } => http::bundle(concurrency, Duration::from_secs(seconds), runs).await,
        Command::Ocsp {
            concurrency,
            seconds,
            runs,
        } => http::ocsp(concurrency, Duration::from_secs(seconds), runs).await,
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
            let load = LoadShape {
                server,
                client,
                threads: load_threads,
                reconnect,
                streams,
                ztunnel,
            };
            grpc::bench(&backends, &keys, clients, seconds, runs, rate, load).await
        }
        Command::Rotation { clients, gap, runs } => {
            rotation::bench(clients, Duration::from_secs(gap), runs).await
        }
        Command::Soak {
            rate,
            seconds,
            clients,
            sample_seconds,
            warmup_seconds,
            max_in_flight,
            key,
            out,
            postgres,
            linger_seconds,
        } => {
            soak::soak(soak::SoakPlan {
                linger: Duration::from_secs(linger_seconds),
                postgres: if postgres == "private" {
                    soak::SoakPostgres::Private
                } else {
                    soak::SoakPostgres::At(postgres)
                },
                rate,
                duration: Duration::from_secs(seconds),
                clients,
                sample: Duration::from_secs(sample_seconds),
                warmup: Duration::from_secs(warmup_seconds),
                max_in_flight,
                key: ca_client::KeyType::parse(&key)?,
                out,
            })
            .await
        }
        Command::Engine {
            backends,
            keys,
            concurrency,
            seconds,
            runs,
            postgres,
        } => engine::bench(&backends, &keys, concurrency, seconds, runs, &postgres).await,
    }
}
