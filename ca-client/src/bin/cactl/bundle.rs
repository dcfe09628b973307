//! `bundle get` (the public listener's SPIFFE or PEM bundle) and `bundle watch` (gRPC
//! `WatchBundles`, one line per trust domain per update).

use anyhow::Context;

use ca_client::{WorkloadClient, files};

use crate::args::{BundleCommand, Cli, Output};
use crate::output;

pub async fn run(cli: &Cli, command: &BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Get {
            trust_domain,
            format,
        } => get(cli, trust_domain, format).await,
        BundleCommand::Watch { count } => watch(cli, *count).await,
    }
}

async fn get(cli: &Cli, trust_domain: &str, format: &str) -> anyhow::Result<()> {
    let suffix = match format {
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
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(&files::read(ca_file)?)?);
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

async fn watch(cli: &Cli, count: Option<usize>) -> anyhow::Result<()> {
    let client = WorkloadClient::connect(&cli.connect_options(None, None)?).await?;
    let mut stream = client.watch_bundles().await?;
    let mut seen = 0;
    while let Some(update) = stream.message().await? {
        for bundle in &update.bundles {
            let json = serde_json::json!({
                "trust_domain": bundle.trust_domain,
                "sequence": bundle.sequence,
                "roots": bundle.roots.len(),
            });
            output::either(cli.output, json, || {
                format!(
                    "{:<30} sequence {:<6} {} root(s)\n",
                    bundle.trust_domain,
                    bundle.sequence,
                    bundle.roots.len()
                )
            });
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}
