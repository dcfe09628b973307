//! `ca-server`: reads the config (`--config PATH` or `CA_CONFIG`; none = the embedded default),
//! starts the service, and stops it on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use ca_server::config::Config;
use ca_server::server::Server;

/// mimalloc: the issuance path allocates many small, short-lived buffers (DER, PEM, protobuf,
/// HTTP/2 frames) across two worker threads; glibc malloc spent about 8 % of the CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ca-server",
    version,
    about = "Mesh CA: SPIFFE workload certificates for Istio"
)]
struct Args {
    /// TOML config file; without one the embedded default runs (SQLite under ca-data/).
    #[arg(long, env = "CA_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => {
            tracing::info!("no config given: running the embedded default (SQLite in ca-data/)");
            Config::embedded_default()
        }
    };
    let server = Server::start(config).await.context("start failed")?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
