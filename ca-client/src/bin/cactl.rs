//! `cactl`: the mesh CA's command line. Thin glue over the `ca_client` library; anyhow only here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use ca_client::{AdminClient, ConnectOptions, KeyType, TokenAuth, WorkloadClient, files};

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
    /// Public HTTP base URL (bundles, CRL).
    #[arg(
        long,
        global = true,
        env = "CA_HTTP",
        default_value = "http://127.0.0.1:8080"
    )]
    http: String,
    /// gRPC address (`host:port`) for workload requests.
    #[arg(long, global = true, env = "CA_GRPC", default_value = "127.0.0.1:8443")]
    grpc: String,
    /// PEM roots that verify the gRPC server.
    #[arg(long, global = true, env = "CA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Name to expect in the gRPC server's certificate (default: the host of --grpc).
    #[arg(long, global = true, env = "CA_SERVER_NAME")]
    server_name: Option<String>,
    /// A Kubernetes service-account token file: request over gRPC like istio-agent.
    #[arg(long, global = true, env = "CA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Cluster id sent in the `clusterid` header.
    #[arg(
        long,
        global = true,
        env = "CA_CLUSTER_ID",
        default_value = "Kubernetes"
    )]
    cluster_id: String,
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
    ///
    /// With --token-file: over gRPC, exactly like istio-agent (bearer JWT + clusterid, CSR with an
    /// `O=` subject and one critical URI SAN). Without: operator-issued through the admin API.
    Issue {
        /// The SPIFFE ID. Admin path: required. Token path: the CSR's SAN (default: derived from
        /// the token's subject and --trust-domain).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Trust domain for the SAN derived from the token (token path).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
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
    /// Trust domains: CA certificates, states, expiries, bundle sequence.
    TrustDomains,
    /// Trust bundles from the public listener (get) or the gRPC API (watch).
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Admin tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Decode a certificate, chain, CSR, CRL (PEM or DER) or SPIFFE bundle (JSON).
    Inspect { file: PathBuf },
    /// Certificates in the issuance record.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Denied identities: they get nothing on any path.
    Deny {
        #[command(subcommand)]
        command: DenyCommand,
    },
    /// Verify a certificate chain: chain to --bundle, SPIFFE ID, expiry, revocation (CRL).
    /// Exit code 0: valid; 1: not valid; 2: could not check.
    Verify {
        /// PEM file: the leaf, then intermediates (cert-chain.pem).
        file: PathBuf,
        /// PEM roots to verify against (root-cert.pem).
        #[arg(long)]
        bundle: PathBuf,
        /// The SPIFFE ID the certificate must carry.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// A DER CRL file; default: fetch `/v1/crl/{trust domain}` from --http.
        #[arg(long)]
        crl_file: Option<PathBuf>,
        /// Skip the revocation check.
        #[arg(long)]
        no_revocation: bool,
    },
    /// Renew the certificate in a directory over mutual TLS with that certificate.
    Renew {
        /// Directory with key.pem, cert-chain.pem (and root-cert.pem, the default --ca-file).
        #[arg(long)]
        dir: PathBuf,
        /// Key type of the new key.
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Print a trust domain's bundle (`GET /v1/bundles/{td}`), as a SPIFFE bundle or PEM.
    Get {
        trust_domain: String,
        #[arg(long, default_value = "spiffe")]
        format: String,
    },
    /// Follow bundle changes over gRPC (`WatchBundles`); one line per update. Stops after
    /// --count updates when given.
    Watch {
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a token; the secret is printed once.
    Create {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// e.g. 30d; default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Newest events first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Fetch the whole log and check its hash chain. Exit code 0: intact; 1: broken.
    Verify,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Search certificates, newest first (follows pagination with --all).
    List {
        #[arg(long)]
        trust_domain: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        /// valid, revoked or expired.
        #[arg(long)]
        status: Option<String>,
        /// RFC 3339 or unix seconds.
        #[arg(long)]
        expiring_before: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// One certificate with its status (and PEM with --pem).
    Show {
        serial: String,
        #[arg(long)]
        pem: bool,
    },
    /// Revoke a certificate by serial (hex).
    Revoke {
        serial: String,
        /// RFC 5280 reason name: unspecified, keyCompromise, cACompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn, aACompromise.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum DenyCommand {
    /// Deny a SPIFFE ID.
    Add {
        spiffe_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Also revoke its live certificates.
        #[arg(long)]
        revoke_existing: bool,
    },
    /// List denied identities.
    List,
    /// Lift a deny by its id.
    Remove { id: String },
}

/// Exit code for "checked, and it is not valid".
const EXIT_INVALID: u8 = 1;
/// Exit code for "could not run" (bad arguments, unreachable server, ...).
const EXIT_ERROR: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Verify {
        file,
        bundle,
        spiffe_id,
        crl_file,
        no_revocation,
    } = &cli.command
    {
        return verify(
            &cli,
            file,
            bundle,
            spiffe_id.as_deref(),
            crl_file.as_deref(),
            *no_revocation,
        )
        .await;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Issue {
            spiffe_id,
            trust_domain,
            out,
            key,
            ttl,
        } => {
            let key_type = KeyType::parse(key)?;
            match &cli.token_file {
                Some(token_file) => {
                    issue_with_token(
                        &cli,
                        token_file,
                        spiffe_id.as_deref(),
                        trust_domain,
                        out,
                        key_type,
                        ttl.as_deref(),
                    )
                    .await
                }
                None => {
                    let spiffe_id = spiffe_id.as_deref().context(
                        "--spiffe-id is required (or --token-file for the workload path)",
                    )?;
                    issue_with_admin(&cli, spiffe_id, out, key_type, ttl.as_deref()).await
                }
            }
        }
        Command::Renew { dir, key } => renew(&cli, dir, KeyType::parse(key)?).await,
        Command::Certs {
            command: CertsCommand::Revoke { serial, reason },
        } => {
            let answer = admin_client(&cli)?.revoke(serial, reason).await?;
            print_value(
                &cli,
                &answer,
                &[
                    "serial",
                    "spiffe_id",
                    "revoked_at",
                    "reason",
                    "newly_revoked",
                ],
            );
            Ok(())
        }
        Command::Deny { command } => {
            let admin = admin_client(&cli)?;
            match command {
                DenyCommand::Add {
                    spiffe_id,
                    reason,
                    revoke_existing,
                } => {
                    let answer = admin.deny(spiffe_id, reason, *revoke_existing).await?;
                    print_value(
                        &cli,
                        &answer,
                        &[
                            "id",
                            "spiffe_id",
                            "reason",
                            "created_at",
                            "revoked_certificates",
                        ],
                    );
                }
                DenyCommand::List => {
                    let answer = admin.denied().await?;
                    match cli.output {
                        Output::Json => println!("{answer}"),
                        Output::Human => {
                            print_table(
                                &items_of(&answer),
                                &[
                                    ("ID", 6, "id"),
                                    ("SPIFFE ID", 60, "spiffe_id"),
                                    ("CREATED", 22, "created_at"),
                                    ("REASON", 0, "reason"),
                                ],
                            );
                        }
                    }
                }
                DenyCommand::Remove { id } => {
                    admin.lift_deny(id).await?;
                    match cli.output {
                        Output::Json => println!("{}", serde_json::json!({"lifted": id})),
                        Output::Human => println!("lifted deny {id}"),
                    }
                }
            }
            Ok(())
        }
        Command::Verify { .. } => unreachable!("handled in main"),
        Command::Bundle {
            command:
                BundleCommand::Get {
                    trust_domain,
                    format,
                },
        } => {
            let suffix = match format.as_str() {
                "spiffe" => "",
                "pem" => ".pem",
                other => anyhow::bail!("--format is spiffe or pem, not {other}"),
            };
            let url = format!(
                "{}/v1/bundles/{trust_domain}{suffix}",
                cli.http.trim_end_matches('/')
            );
            let mut builder = reqwest::Client::builder();
            if let Some(ca_file) = &cli.ca_file {
                builder = builder
                    .add_root_certificate(reqwest::Certificate::from_pem(&files::read(ca_file)?)?);
            }
            let response = builder
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: HTTP {}",
                response.status()
            );
            let body = response.text().await?;
            if suffix.is_empty() && cli.output == Output::Human {
                let value: serde_json::Value = serde_json::from_str(&body)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{body}");
            }
            Ok(())
        }
        Command::Bundle {
            command: BundleCommand::Watch { count },
        } => {
            let client = WorkloadClient::connect(&connect_options(&cli, None, None)?).await?;
            let mut stream = client.watch_bundles().await?;
            let mut seen = 0;
            while let Some(update) = stream.message().await? {
                for bundle in &update.bundles {
                    match cli.output {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"trust_domain": bundle.trust_domain, "sequence": bundle.sequence, "roots": bundle.roots.len()})
                        ),
                        Output::Human => println!(
                            "{:<30} sequence {:<6} {} root(s)",
                            bundle.trust_domain,
                            bundle.sequence,
                            bundle.roots.len()
                        ),
                    }
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            Ok(())
        }
        Command::TrustDomains => {
            let answer = admin_client(&cli)?.get("/admin/v1/trust-domains").await?;
            match cli.output {
                Output::Json => println!("{answer}"),
                Output::Human => {
                    println!(
                        "{:<28} {:<5} {:<4} {:<8} {:<13} {:<22} {:<22}",
                        "TRUST DOMAIN",
                        "SEQ",
                        "GEN",
                        "STATE",
                        "KEY",
                        "INTERMEDIATE EXPIRES",
                        "ROOT EXPIRES"
                    );
                    for td in answer["items"].as_array().into_iter().flatten() {
                        for generation in td["generations"].as_array().into_iter().flatten() {
                            println!(
                                "{:<28} {:<5} {:<4} {:<8} {:<13} {:<22} {:<22}",
                                text(&td["name"]),
                                text(&td["bundle_sequence"]),
                                text(&generation["generation"]),
                                text(&generation["state"]),
                                text(&generation["key_algorithm"]),
                                text(&generation["intermediate"]["not_after"]),
                                text(&generation["root"]["not_after"])
                            );
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Certs {
            command:
                CertsCommand::List {
                    trust_domain,
                    spiffe_id,
                    status,
                    expiring_before,
                    limit,
                    all,
                },
        } => {
            let admin = admin_client(&cli)?;
            let mut query: Vec<(&str, String)> = Vec::new();
            for (key, value) in [
                ("trust_domain", trust_domain),
                ("spiffe_id", spiffe_id),
                ("status", status),
                ("expiring_before", expiring_before),
            ] {
                if let Some(v) = value {
                    query.push((key, v.clone()));
                }
            }
            let items = if *all {
                admin.get_all("/admin/v1/certificates", &query).await?
            } else {
                query.push(("limit", limit.to_string()));
                let encoded: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", urlencode(v)))
                    .collect();
                let page = admin
                    .get(&format!("/admin/v1/certificates?{}", encoded.join("&")))
                    .await?;
                page["items"].as_array().cloned().unwrap_or_default()
            };
            match cli.output {
                Output::Json => println!("{}", serde_json::json!({"items": items})),
                Output::Human => {
                    print_table(
                        &items,
                        &[
                            ("SERIAL", 34, "serial"),
                            ("STATUS", 8, "status"),
                            ("NOT AFTER", 22, "not_after"),
                            ("SPIFFE ID", 0, "spiffe_id"),
                        ],
                    );
                    println!("{} certificate(s)", items.len());
                }
            }
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Show { serial, pem },
        } => {
            let answer = admin_client(&cli)?
                .get(&format!("/admin/v1/certificates/{}", urlencode(serial)))
                .await?;
            match cli.output {
                Output::Json => println!("{answer}"),
                Output::Human => {
                    for key in [
                        "serial",
                        "spiffe_id",
                        "trust_domain",
                        "status",
                        "not_before",
                        "not_after",
                        "issuer_key_id",
                        "requested_by",
                        "api",
                        "revoked_at",
                        "revocation_reason",
                    ] {
                        if !answer[key].is_null() {
                            println!("{key:<18} {}", text(&answer[key]));
                        }
                    }
                    if *pem {
                        print!("{}", text(&answer["certificate_pem"]));
                    }
                }
            }
            Ok(())
        }
        Command::Tokens { command } => {
            let admin = admin_client(&cli)?;
            match command {
                TokensCommand::Create {
                    name,
                    role,
                    expires_in,
                } => {
                    let mut body = serde_json::json!({"name": name, "role": role});
                    if let Some(e) = expires_in {
                        body["expires_in"] = serde_json::Value::String(e.clone());
                    }
                    let answer = admin.post_json("/admin/v1/tokens", &body).await?;
                    print_value(&cli, &answer, &["name", "role", "expires_at", "token"]);
                }
                TokensCommand::List => {
                    let answer = admin.get("/admin/v1/tokens").await?;
                    match cli.output {
                        Output::Json => println!("{answer}"),
                        Output::Human => {
                            print_table(
                                &items_of(&answer),
                                &[
                                    ("NAME", 24, "name"),
                                    ("ROLE", 9, "role"),
                                    ("CREATED", 22, "created_at"),
                                    ("EXPIRES", 0, "expires_at"),
                                ],
                            );
                        }
                    }
                }
                TokensCommand::Delete { name } => {
                    admin
                        .delete(&format!("/admin/v1/tokens/{}", urlencode(name)))
                        .await?;
                    match cli.output {
                        Output::Json => println!("{}", serde_json::json!({"deleted": name})),
                        Output::Human => println!("deleted token {name}"),
                    }
                }
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::List { limit },
        } => {
            let answer = admin_client(&cli)?
                .get(&format!("/admin/v1/audit?limit={limit}"))
                .await?;
            match cli.output {
                Output::Json => println!("{answer}"),
                Output::Human => {
                    let mut items = items_of(&answer);
                    for item in &mut items {
                        let at = item["at"].as_i64().unwrap_or(0);
                        item["at"] =
                            serde_json::Value::String(ca_client::inspect::rfc3339_public(at));
                    }
                    print_table(
                        &items,
                        &[
                            ("ID", 6, "id"),
                            ("AT", 22, "at"),
                            ("ACTOR", 12, "actor"),
                            ("ACTION", 22, "action"),
                            ("OUTCOME", 10, "outcome"),
                            ("TARGET", 0, "target"),
                        ],
                    );
                }
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let events = admin_client(&cli)?.get_all("/admin/v1/audit", &[]).await?;
            match ca_client::audit::verify_newest_first(&events) {
                Ok(count) => {
                    match cli.output {
                        Output::Json => {
                            println!("{}", serde_json::json!({"intact": true, "events": count}))
                        }
                        Output::Human => println!("audit chain intact: {count} events"),
                    }
                    Ok(())
                }
                Err((id, reason)) => {
                    match cli.output {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"intact": false, "event": id, "reason": reason})
                        ),
                        Output::Human => println!("audit chain BROKEN at event {id}: {reason}"),
                    }
                    std::process::exit(i32::from(EXIT_INVALID));
                }
            }
        }
        Command::Inspect { file } => {
            let bytes = files::read(file)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let items = ca_client::inspect::describe(&bytes, now)?;
            match cli.output {
                Output::Json => println!("{}", serde_json::Value::Array(items)),
                Output::Human => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            println!();
                        }
                        print_human(item, 0);
                    }
                }
            }
            Ok(())
        }
    }
}

/// Indented `key  value` lines of a JSON object, for people.
fn print_human(value: &serde_json::Value, indent: usize) {
    let pad = " ".repeat(indent);
    if let Some(map) = value.as_object() {
        for (key, v) in map {
            match v {
                serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                    println!("{pad}{key}:");
                    for item in items {
                        print_human(item, indent + 2);
                        println!();
                    }
                }
                serde_json::Value::Array(items) => println!(
                    "{pad}{key:<16} {}",
                    items.iter().map(text).collect::<Vec<_>>().join(", ")
                ),
                other => println!("{pad}{key:<16} {}", text(other)),
            }
        }
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The `items` of a list answer.
fn items_of(answer: &serde_json::Value) -> Vec<serde_json::Value> {
    answer["items"].as_array().cloned().unwrap_or_default()
}

/// A table for people: columns are (header, width, JSON key); a width of 0 is not padded.
fn print_table(items: &[serde_json::Value], columns: &[(&str, usize, &str)]) {
    let row = |cells: Vec<String>| {
        let line: Vec<String> = cells
            .iter()
            .zip(columns)
            .map(|(cell, (_, width, _))| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join(" ").trim_end());
    };
    row(columns
        .iter()
        .map(|(header, _, _)| (*header).to_owned())
        .collect());
    for item in items {
        row(columns
            .iter()
            .map(|(_, _, key)| text(&item[*key]))
            .collect());
    }
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// JSON as is, or `key  value` lines for people.
fn print_value(cli: &Cli, value: &serde_json::Value, keys: &[&str]) {
    match cli.output {
        Output::Json => println!("{value}"),
        Output::Human => {
            for key in keys {
                if !value[key].is_null() {
                    println!("{key:<22} {}", text(&value[key]));
                }
            }
        }
    }
}

async fn verify(
    cli: &Cli,
    file: &Path,
    bundle: &Path,
    spiffe_id: Option<&str>,
    crl_file: Option<&Path>,
    no_revocation: bool,
) -> ExitCode {
    let prepared = async {
        let chain = files::read(file)?;
        let roots = files::read(bundle)?;
        let crl = if no_revocation {
            None
        } else if let Some(path) = crl_file {
            Some(files::read(path)?)
        } else {
            let leaf = pem::parse(&chain).context("the chain is not PEM")?;
            let id = ca_client::inspect::first_uri(leaf.contents())
                .context("the leaf has no URI SAN")?;
            let td = id
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split('/').next())
                .context("the leaf's URI is not a SPIFFE ID")?;
            let url = format!("{}/v1/crl/{td}", cli.http.trim_end_matches('/'));
            let response = reqwest::get(&url)
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: HTTP {}",
                response.status()
            );
            Some(response.bytes().await?.to_vec())
        };
        Ok::<_, anyhow::Error>((chain, roots, crl))
    }
    .await;
    let (chain, roots, crl) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match ca_client::verify::verify(&chain, &roots, crl.as_deref(), spiffe_id, now) {
        Ok(verified) => {
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"valid": true, "certificate": verified})
                ),
                Output::Human => {
                    println!("valid     yes");
                    println!("spiffe_id {}", verified.leaf.spiffe_id);
                    println!("serial    {}", verified.leaf.serial);
                    println!(
                        "expires   {} ({}s left)",
                        verified.leaf.not_after, verified.seconds_left
                    );
                    println!("revoked   {:?}", verified.revocation);
                }
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"valid": false, "reason": failure.to_string()})
                ),
                Output::Human => println!("valid     no: {failure}"),
            }
            ExitCode::from(EXIT_INVALID)
        }
    }
}

async fn issue_with_admin(
    cli: &Cli,
    spiffe_id: &str,
    out: &Path,
    key_type: KeyType,
    ttl: Option<&str>,
) -> anyhow::Result<()> {
    let admin = admin_client(cli)?;
    let generated = ca_client::csr::generate(key_type, Some(spiffe_id))?;
    let issued = admin.issue(&generated.csr_pem, spiffe_id, ttl).await?;
    files::write_identity(out, &generated.key_pem, &issued.chain_pem, &issued.root_pem)?;
    report(cli, &issued.chain_pem, out)
}

async fn issue_with_token(
    cli: &Cli,
    token_file: &Path,
    spiffe_id: Option<&str>,
    trust_domain: &str,
    out: &Path,
    key_type: KeyType,
    ttl: Option<&str>,
) -> anyhow::Result<()> {
    // Re-read on every call: projected tokens rotate.
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read token file {}", token_file.display()))?;
    let identity = match spiffe_id {
        Some(id) => id.to_owned(),
        None => identity_from_token(token.trim(), trust_domain)?,
    };
    let client = WorkloadClient::connect(&connect_options(cli, None, None)?).await?;
    let generated = ca_client::csr::generate_istio_style(key_type, &identity)?;
    let auth = TokenAuth {
        token: Some(token),
        cluster_id: Some(cli.cluster_id.clone()),
    };
    let chain = client
        .create_certificate(
            &generated.csr_pem,
            ttl_seconds(ttl)?,
            &auth,
            &Default::default(),
        )
        .await?;
    write_istio_chain(out, &generated.key_pem, &chain)?;
    report(cli, &chain[..chain.len() - 1].concat(), out)
}

async fn renew(cli: &Cli, dir: &Path, key_type: KeyType) -> anyhow::Result<()> {
    let chain_pem = files::read(&dir.join(files::CHAIN_FILE))?;
    let key_pem = files::read(&dir.join(files::KEY_FILE))?;
    let identity = ca_client::inspect::leaf_spiffe_id(&chain_pem)?;
    let default_roots = dir.join(files::ROOT_FILE);
    let client = WorkloadClient::connect(&connect_options(
        cli,
        Some(&default_roots),
        Some((chain_pem, key_pem)),
    )?)
    .await?;
    let generated = ca_client::csr::generate_istio_style(key_type, &identity)?;
    let chain = client
        .create_certificate(
            &generated.csr_pem,
            0,
            &TokenAuth::default(),
            &Default::default(),
        )
        .await?;
    write_istio_chain(dir, &generated.key_pem, &chain)?;
    report(cli, &chain[..chain.len() - 1].concat(), dir)
}

/// Istio's chain: leaf and intermediates, then the roots as the last element.
fn write_istio_chain(out: &Path, key_pem: &str, chain: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        chain.len() >= 2,
        "the server answered a chain of {} elements",
        chain.len()
    );
    let (roots, certs) = chain.split_last().context("empty chain")?;
    files::write_identity(out, key_pem, &certs.concat(), roots)?;
    Ok(())
}

fn connect_options(
    cli: &Cli,
    default_ca_file: Option<&Path>,
    client_identity: Option<(Vec<u8>, Vec<u8>)>,
) -> anyhow::Result<ConnectOptions> {
    let ca_file = cli
        .ca_file
        .as_deref()
        .or(default_ca_file)
        .context("--ca-file (the root that verifies the CA's gRPC port) is required")?;
    Ok(ConnectOptions {
        address: cli.grpc.clone(),
        ca_pem: files::read(ca_file)?,
        server_name: cli.server_name.clone(),
        client_identity,
    })
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` from the (unverified) `sub` of a service-account token; the
/// server derives the same from the verified token.
fn identity_from_token(token: &str, trust_domain: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1).context("the token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("the token payload is not base64url")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).context("the token payload is not JSON")?;
    let sub = claims["sub"].as_str().context("the token has no sub")?;
    match sub.split(':').collect::<Vec<_>>().as_slice() {
        ["system", "serviceaccount", ns, sa] => {
            Ok(format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
        }
        _ => anyhow::bail!("the token's sub is not a service account: {sub}"),
    }
}

fn ttl_seconds(ttl: Option<&str>) -> anyhow::Result<i64> {
    let Some(ttl) = ttl else { return Ok(0) };
    let (number, unit) = ttl.split_at(ttl.find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.len()));
    let number: i64 = number.parse().context("--ttl is like 30m, 1h, 24h")?;
    let unit = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => anyhow::bail!("unknown --ttl unit {other}"),
    };
    number.checked_mul(unit).context("--ttl out of range")
}

/// Prints what was written: the leaf's identity, serial and expiry.
fn report(cli: &Cli, chain_pem: &str, out: &Path) -> anyhow::Result<()> {
    let leaf = ca_client::inspect::leaf_summary(chain_pem.as_bytes())?;
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "serial": leaf.serial,
                "spiffe_id": leaf.spiffe_id,
                "not_after": leaf.not_after,
                "dir": out.display().to_string(),
            })
        ),
        Output::Human => {
            println!("issued   {}", leaf.spiffe_id);
            println!("serial   {}", leaf.serial);
            println!("expires  {}", leaf.not_after);
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
