//! `cactl`: the mesh CA's command line. Thin glue over the `ca_client` library; anyhow only here.
//!
//! Layout (one module per command group, as in rustls' `ci-bench`):
//! - `args`: the flags and environment variables, and the clients they make.
//! - `output`: `--output json` (the server's JSON as it came) or human lines and tables.
//! - `workload`: `issue` and `renew` (files written like istio-agent's).
//! - `bundle`, `verify`, `inspect`: trust bundles, and checking or decoding local files.
//! - `trust_domains`, `certs`, `deny`, `federation`, `tokens`, `audit`: the admin API.
//!
//! Exit codes: 0 done (or valid), 1 checked and not valid (`verify`, `audit verify`), 2 could not
//! run (bad arguments, unreachable server, refused request).

mod args;
mod audit;
mod bundle;
mod certs;
mod deny;
mod federation;
mod inspect;
mod output;
mod tokens;
mod trust_domains;
mod verify;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// Exit code for "checked, and it is not valid".
const EXIT_INVALID: u8 = 1;
/// Exit code for "could not run" (bad arguments, unreachable server, ...).
const EXIT_ERROR: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Issue {
            spiffe_id,
            trust_domain,
            out,
            key,
            ttl,
        } => {
            workload::issue(
                cli,
                spiffe_id.as_deref(),
                trust_domain,
                out,
                key,
                ttl.as_deref(),
            )
            .await?
        }
        Command::Renew {
            dir,
            key,
            watch,
            token_file,
            cluster_id,
        } => {
            if *watch {
                workload::renew_watch(cli, dir, key, token_file.as_deref(), cluster_id.clone())
                    .await?
            } else {
                workload::renew(cli, dir, key).await?
            }
        }
        Command::Bundle { command } => bundle::run(cli, command).await?,
        Command::Verify {
            file,
            bundle,
            spiffe_id,
            crl_file,
            no_revocation,
        } => {
            return verify::run(
                cli,
                file,
                bundle,
                spiffe_id.as_deref(),
                crl_file.as_deref(),
                *no_revocation,
            )
            .await;
        }
        Command::Inspect { file } => inspect::run(cli, file)?,
        Command::TrustDomains => trust_domains::run(cli).await?,
        Command::Ca { command } => trust_domains::ca(cli, command).await?,
        Command::Certs { command } => certs::run(cli, command).await?,
        Command::Deny { command } => deny::run(cli, command).await?,
        Command::Federation { command } => federation::run(cli, command).await?,
        Command::Tokens { command } => tokens::run(cli, command).await?,
        Command::Audit { command } => return audit::run(cli, command).await,
    }
    Ok(ExitCode::SUCCESS)
}
