//! `ca-server`: reads the config (`--config PATH` or `CA_CONFIG`; none = the embedded default),
//! starts the service, and stops it on Ctrl-C or SIGTERM. `--check-config FILE` validates a
//! config and exits. A start failure prints its whole chain of causes on one line and exits 1.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use ca_server::config::{Config, LogFormat};
use ca_server::report::Chain;
use ca_server::server::Server;

/// mimalloc: the issuance path allocates many small, short-lived buffers (DER, PEM, protobuf,
/// HTTP/2 frames) across two worker threads; glibc malloc spent about 8 % of the CPU on them.
///
/// Without transparent huge pages: mimalloc (v3) asks for them on its 1 GiB arena by default
/// (`MADV_HUGEPAGE`), and the kernel then backs a 2 MiB range with a huge page even when a few
/// KiB of it are in use, on a fault or later when khugepaged collapses the range. This heap is
/// tens of MiB, so their TLB gain is small (no CPU difference seen at 4,000 issuances/s), but
/// they made the resident size drift: in the soak, about 11 minutes in, khugepaged turned the
/// arena's 4 KiB pages into 12.3 MiB more `AnonHugePages` (8.4 MiB more resident), a step the
/// level never came back from. The `no_thp` feature stops the advice, and [`no_huge_pages`]
/// turns them off for the whole process, also where the host's THP mode is `always`.
///
/// The `mimalloc` feature (default) selects it; without it the system allocator is used, for
/// heap profilers that follow `malloc` (heaptrack).
#[cfg(feature = "mimalloc")]
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
    /// Validate this config file and exit: 0 if it is valid, 2 with the offending key named if
    /// not. Opens no file it names and binds nothing.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Log format (overrides the config's `log_format`): `text` (ANSI colours only on a
    /// terminal) or `json` (one object per line, for a log pipeline).
    #[arg(long, value_enum, env = "CA_LOG_FORMAT")]
    log_format: Option<Format>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    no_huge_pages();
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match Config::load(path) {
            Ok(_) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {}", path.display(), Chain(&e));
                ExitCode::from(2)
            }
        };
    }
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: config {}: {}", path.display(), Chain(&e));
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let format = match (args.log_format, &config) {
        (Some(Format::Json), _) => LogFormat::Json,
        (Some(Format::Text), _) => LogFormat::Text,
        (None, Some(config)) => config.log_format,
        (None, None) => LogFormat::Text,
    };
    init_logs(format);
    let config = config.unwrap_or_else(|| {
        tracing::info!("no config given: running the embedded default (SQLite in ca-data/)");
        Config::embedded_default()
    });
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "start failed");
            eprintln!("error: start failed: {}", Chain(&e));
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`; see [`ALLOCATOR`]).
/// A kernel that refuses only costs memory: a warning on stderr, not a failed start.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: could not turn off transparent huge pages: {e}");
    }
}

/// Logs to stderr: `RUST_LOG` filters (default `info,sqlx=warn`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
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
