//! `cactl`: the mesh CA's command line. Thin glue over the `ca_client` library; anyhow only here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use ca_client::{AdminClient, KeyType, files};

#[derive(Debug, Parser)]
#[command(name = "cactl", version, about = "Command line for the mesh CA")]
struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "CA_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    admin: String,
    /// File holding the admin bearer token.
    #[arg(
        long,
        global = true,
        env = "CA_ADMIN_TOKEN_FILE",
        default_value = "ca-data/admin.token"
    )]
    admin_token_file: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a key and CSR, have the CA sign it, write key.pem (0600), cert-chain.pem, root-cert.pem.
    Issue {
        /// The SPIFFE ID to issue for (operator-issued through the admin API).
        #[arg(long)]
        spiffe_id: String,
        /// Directory to write the files into.
        #[arg(long)]
        out: PathBuf,
        /// Key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096.
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
        /// Requested lifetime, e.g. 1h (default: the trust domain's default_ttl).
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Issue {
            spiffe_id,
            out,
            key,
            ttl,
        } => issue(&cli, spiffe_id, out, key, ttl.as_deref()).await,
    }
}

async fn issue(
    cli: &Cli,
    spiffe_id: &str,
    out: &Path,
    key: &str,
    ttl: Option<&str>,
) -> anyhow::Result<()> {
    let key_type = KeyType::parse(key)?;
    let admin = admin_client(cli)?;
    let generated = ca_client::csr::generate(key_type, Some(spiffe_id))?;
    let issued = admin.issue(&generated.csr_pem, spiffe_id, ttl).await?;
    files::write_identity(out, &generated.key_pem, &issued.chain_pem, &issued.root_pem)?;
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "serial": issued.serial,
                "spiffe_id": issued.spiffe_id,
                "not_after": issued.not_after,
                "dir": out.display().to_string(),
            })
        ),
        Output::Human => {
            println!("issued   {}", issued.spiffe_id);
            println!("serial   {}", issued.serial);
            println!("expires  {}", issued.not_after);
            println!(
                "wrote    {}/{{{}, {}, {}}}",
                out.display(),
                files::KEY_FILE,
                files::CHAIN_FILE,
                files::ROOT_FILE
            );
        }
    }
    Ok(())
}

fn admin_client(cli: &Cli) -> anyhow::Result<AdminClient> {
    let token = std::fs::read_to_string(&cli.admin_token_file).with_context(|| {
        format!(
            "cannot read admin token file {}",
            cli.admin_token_file.display()
        )
    })?;
    Ok(AdminClient::new(&cli.admin, &token)?)
}
