//! `issue` and `renew`: make a key and CSR, have the CA sign it, and write `key.pem` (0600),
//! `cert-chain.pem` and `root-cert.pem` like istio-agent's OUTPUT_CERTS.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use ca_client::{KeyType, TokenAuth, WorkloadClient, files};

use crate::args::{Cli, ttl_seconds};
use crate::output;

/// `issue`: over gRPC with `--token-file` (like istio-agent), else through the admin API.
pub async fn issue(
    cli: &Cli,
    spiffe_id: Option<&str>,
    trust_domain: &str,
    out: &Path,
    key: &str,
    ttl: Option<&str>,
) -> anyhow::Result<()> {
    let key_type = KeyType::parse(key)?;
    match &cli.token_file {
        Some(token_file) => {
            issue_with_token(cli, token_file, spiffe_id, trust_domain, out, key_type, ttl).await
        }
        None => {
            let spiffe_id = spiffe_id
                .context("--spiffe-id is required (or --token-file for the workload path)")?;
            issue_with_admin(cli, spiffe_id, out, key_type, ttl).await
        }
    }
}

/// `renew`: a new key and certificate for the directory's identity, over mutual TLS with the
/// certificate in it.
pub async fn renew(cli: &Cli, dir: &Path, key: &str) -> anyhow::Result<()> {
    let key_type = KeyType::parse(key)?;
    let chain_pem = files::read(&dir.join(files::CHAIN_FILE))?;
    let key_pem = files::read(&dir.join(files::KEY_FILE))?;
    let identity = ca_client::inspect::leaf_spiffe_id(&chain_pem)?;
    let default_roots = dir.join(files::ROOT_FILE);
    let options = cli.connect_options(Some(&default_roots), Some((chain_pem, key_pem)))?;
    let client = WorkloadClient::connect(&options).await?;
    let generated = ca_client::csr::generate_istio_style(key_type, &identity)?;
    let chain = client
        .create_certificate(
            &generated.csr_pem,
            0,
            &TokenAuth::default(),
            &BTreeMap::new(),
        )
        .await?;
    let certs = write_istio_chain(dir, &generated.key_pem, &chain)?;
    report(cli, &certs, dir)
}

/// `renew --watch`: an SVID source started from the files in `dir`, rewriting them at every
/// renewal (key 0600, chain, roots; each atomically) until interrupted.
pub async fn renew_watch(
    cli: &Cli,
    dir: &Path,
    key: &str,
    token_file: Option<&Path>,
    cluster_id: Option<String>,
) -> anyhow::Result<()> {
    let key_type = KeyType::parse(key)?;
    let chain_pem = files::read(&dir.join(files::CHAIN_FILE))?;
    let key_pem = files::read(&dir.join(files::KEY_FILE))?;
    let default_roots = dir.join(files::ROOT_FILE);
    let options = cli.connect_options(Some(&default_roots), Some((chain_pem, key_pem)))?;
    let source = ca_client::svid::SvidSource::start(ca_client::svid::SvidSourceOptions {
        connect: options,
        token_file: token_file.map(Path::to_path_buf),
        cluster_id,
        key_type,
        ttl_seconds: 0,
        follow_bundles: true,
    })
    .await?;
    let mut updates = source.updates();
    loop {
        let svid = source.current();
        files::write_identity(dir, &svid.key_pem(), &svid.chain_pem(), &svid.roots_pem())?;
        report(cli, &svid.chain_pem(), dir)?;
        tokio::select! {
            changed = updates.changed() => changed?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
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
    let admin = cli.admin_client()?;
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
        None => ca_client::token::spiffe_id_from_token(token.trim(), trust_domain)?,
    };
    let client = WorkloadClient::connect(&cli.connect_options(None, None)?).await?;
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
            &BTreeMap::new(),
        )
        .await?;
    let certs = write_istio_chain(out, &generated.key_pem, &chain)?;
    report(cli, &certs, out)
}

/// Writes Istio's chain (leaf and intermediates, then the roots as the last element); returns
/// the certificates without the roots.
fn write_istio_chain(out: &Path, key_pem: &str, chain: &[String]) -> anyhow::Result<String> {
    anyhow::ensure!(
        chain.len() >= 2,
        "the server answered a chain of {} elements",
        chain.len()
    );
    let (roots, certs) = chain.split_last().context("empty chain")?;
    let certs = certs.concat();
    files::write_identity(out, key_pem, &certs, roots)?;
    Ok(certs)
}

/// Prints what was written: the leaf's identity, serial and expiry.
fn report(cli: &Cli, chain_pem: &str, out: &Path) -> anyhow::Result<()> {
    let leaf = ca_client::inspect::leaf_summary(chain_pem.as_bytes())?;
    let json = serde_json::json!({
        "serial": leaf.serial,
        "spiffe_id": leaf.spiffe_id,
        "not_after": leaf.not_after,
        "dir": out.display().to_string(),
    });
    output::either(cli.output, json, || {
        format!(
            "issued   {}\nserial   {}\nexpires  {}\nwrote    {}/{{{}, {}, {}}}\n",
            leaf.spiffe_id,
            leaf.serial,
            leaf.not_after,
            out.display(),
            files::KEY_FILE,
            files::CHAIN_FILE,
            files::ROOT_FILE
        )
    });
    Ok(())
}
