//! `verify`: a certificate chain against a bundle of roots, its SPIFFE ID, its expiry, and
//! revocation (a CRL file, or the issuer's CRL fetched from `--http`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use ca_client::files;

use crate::args::Cli;
use crate::{EXIT_INVALID, output};

/// Exit code 0 when valid, 1 when not; an error (exit 2) when it could not check.
pub async fn run(
    cli: &Cli,
    file: &Path,
    bundle: &Path,
    spiffe_id: Option<&str>,
    crl_file: Option<&Path>,
    no_revocation: bool,
) -> anyhow::Result<ExitCode> {
    let chain = files::read(file)?;
    let roots = files::read(bundle)?;
    let crl = if no_revocation {
        None
    } else if let Some(path) = crl_file {
        Some(files::read(path)?)
    } else {
        Some(fetch_crl(cli, &chain).await?)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match ca_client::verify::verify(&chain, &roots, crl.as_deref(), spiffe_id, now) {
        Ok(verified) => {
            let human = || {
                format!(
                    "valid     yes\nspiffe_id {}\nserial    {}\nexpires   {} ({}s left)\nrevoked   {:?}\n",
                    verified.leaf.spiffe_id,
                    verified.leaf.serial,
                    verified.leaf.not_after,
                    verified.seconds_left,
                    verified.revocation
                )
            };
            let json = serde_json::json!({"valid": true, "certificate": verified});
            output::either(cli.output, json, human);
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            let json = serde_json::json!({"valid": false, "reason": failure.to_string()});
            output::either(cli.output, json, || format!("valid     no: {failure}\n"));
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// The CRL of the leaf's trust domain, from `{--http}/v1/crl/{trust domain}`.
async fn fetch_crl(cli: &Cli, chain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let leaf = pem::parse(chain).context("the chain is not PEM")?;
    let id = ca_client::inspect::first_uri(leaf.contents()).context("the leaf has no URI SAN")?;
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
    Ok(response.bytes().await?.to_vec())
}
