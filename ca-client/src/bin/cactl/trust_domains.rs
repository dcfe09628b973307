//! `trust-domains`: each trust domain's CA generations, their states and expiries.

use ca_client::admin::{
    CaFiles, Imported, IntermediateCsr, Page, RevokedGeneration, Rotation, TrustDomain,
};

use crate::args::{CaCommand, Cli};
use crate::output;

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let answer = cli.admin_client()?.trust_domains().await?;
    output::answer(cli.output, &answer, human);
    Ok(())
}

/// One row per generation; every column padded (this table keeps its trailing blanks).
fn human(page: &Page<TrustDomain>) -> String {
    let row = |cells: [&str; 7]| {
        let [td, seq, generation, state, key, intermediate, root] = cells;
        format!(
            "{td:<28} {seq:<5} {generation:<4} {state:<8} {key:<13} {intermediate:<22} {root:<22}\n"
        )
    };
    let mut out = row([
        "TRUST DOMAIN",
        "SEQ",
        "GEN",
        "STATE",
        "KEY",
        "INTERMEDIATE EXPIRES",
        "ROOT EXPIRES",
    ]);
    for td in &page.items {
        for generation in &td.generations {
            out.push_str(&row([
                &td.name,
                &td.bundle_sequence.to_string(),
                &generation.generation.to_string(),
                &generation.state,
                &generation.key_algorithm,
                &generation.intermediate.not_after,
                &generation.root.not_after,
            ]));
        }
    }
    out
}

/// `cactl ca status TD` and `cactl ca rotate TD`.
pub async fn ca(cli: &Cli, command: &CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Status { trust_domain } => {
            let answer = cli.admin_client()?.trust_domains().await?;
            let Some(td) = answer
                .body
                .items
                .iter()
                .find(|td| td.name == *trust_domain)
                .cloned()
            else {
                anyhow::bail!("this CA does not serve trust domain {trust_domain}");
            };
            let json = answer
                .json
                .get("items")
                .and_then(|items| items.as_array())
                .and_then(|items| items.iter().find(|i| i["name"] == *trust_domain))
                .cloned()
                .unwrap_or_default();
            let one = ca_client::admin::Answer { json, body: td };
            output::answer(cli.output, &one, timeline);
        }
        CaCommand::Rotate {
            trust_domain,
            scope,
        } => {
            let answer = cli.admin_client()?.rotate(trust_domain, scope).await?;
            output::answer(cli.output, &answer, rotated);
        }
        CaCommand::Revoke {
            trust_domain,
            generation,
            reason,
        } => {
            let answer = cli
                .admin_client()?
                .revoke_generation(trust_domain, *generation, reason)
                .await?;
            output::answer(cli.output, &answer, revoked_generation);
        }
        CaCommand::Import {
            trust_domain,
            dir,
            ca_cert,
            ca_key,
            cert_chain,
            root_cert,
        } => {
            let pick = |given: &Option<std::path::PathBuf>, name: &str| {
                given.clone().or_else(|| dir.as_ref().map(|d| d.join(name)))
            };
            let required = |path: Option<std::path::PathBuf>, name: &str| {
                path.ok_or_else(|| anyhow::anyhow!("{name}: give --dir or its own option"))
                    .and_then(|p| read_pem(&p))
            };
            let chain = pick(cert_chain, "cert-chain.pem");
            let files = CaFiles {
                ca_cert_pem: required(pick(ca_cert, "ca-cert.pem"), "ca-cert.pem")?,
                ca_key_pem: Some(required(pick(ca_key, "ca-key.pem"), "ca-key.pem")?),
                // In a directory the chain file is optional; named on its own it must exist.
                cert_chain_pem: match chain {
                    Some(path) if cert_chain.is_some() || path.exists() => Some(read_pem(&path)?),
                    _ => None,
                },
                root_cert_pem: required(pick(root_cert, "root-cert.pem"), "root-cert.pem")?,
            };
            let answer = cli.admin_client()?.import_ca(trust_domain, &files).await?;
            output::answer(cli.output, &answer, imported);
        }
        CaCommand::Csr {
            trust_domain,
            replace,
            out,
        } => {
            let answer = cli
                .admin_client()?
                .intermediate_csr(trust_domain, *replace)
                .await?;
            match out {
                Some(path) => {
                    std::fs::write(path, &answer.body.csr_pem)?;
                    output::answer(cli.output, &answer, |c: &IntermediateCsr| {
                        format!(
                            "{}: CSR of a {} key made {} written to {}; sign it as a CA and run cactl ca install\n",
                            c.trust_domain,
                            c.key_algorithm,
                            c.created_at,
                            path.display()
                        )
                    });
                }
                None => {
                    output::answer(cli.output, &answer, |c: &IntermediateCsr| c.csr_pem.clone())
                }
            }
        }
        CaCommand::Install {
            trust_domain,
            cert,
            chain,
            root,
        } => {
            let files = CaFiles {
                ca_cert_pem: read_pem(cert)?,
                ca_key_pem: None,
                cert_chain_pem: chain.as_deref().map(read_pem).transpose()?,
                root_cert_pem: read_pem(root)?,
            };
            let answer = cli.admin_client()?.import_ca(trust_domain, &files).await?;
            output::answer(cli.output, &answer, imported);
        }
    }
    Ok(())
}

/// A PEM file of the `cacerts` set (at most 256 KiB: the server takes 64 KiB per file).
fn read_pem(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= 256 * 1024,
        "{} is larger than 256 KiB",
        path.display()
    );
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn imported(i: &Imported) -> String {
    let mut out = rotated(&i.rotation);
    for warning in &i.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

/// A trust domain's generations as a timeline, oldest first.
fn timeline(td: &TrustDomain) -> String {
    let mut out = format!("{} (bundle sequence {})\n", td.name, td.bundle_sequence);
    for g in &td.generations {
        out.push_str(&format!(
            "  generation {} [{}] {} intermediate {} (expires {}), root expires {}\n",
            g.generation,
            g.state,
            g.key_algorithm,
            g.issuer_key_id,
            g.intermediate.not_after,
            g.root.not_after
        ));
        for (what, at) in [
            ("activated", &g.activated_at),
            ("retired", &g.retired_at),
            ("removed", &g.removed_at),
        ] {
            if let Some(at) = at {
                out.push_str(&format!("    {what:<10} {at}\n"));
            }
        }
        if let Some(published) = &g.published_at {
            out.push_str(&format!(
                "    {:<10} {published} (new root in every trust set)\n",
                "published"
            ));
        }
        if let (Some(earliest), Some(latest)) = (&g.activation_earliest, &g.activation_latest) {
            out.push_str(&format!(
                "    {:<10} between {earliest} (once converged) and {latest} (planned)\n",
                "activates"
            ));
        }
        if g.external_root {
            out.push_str(&format!(
                "    {:<10} external (plug-in CA{}): no automatic rotation under it\n",
                "root",
                if g.chain.is_empty() {
                    String::new()
                } else {
                    format!(", {} intermediate(s) above", g.chain.len())
                }
            ));
        }
        if let Some(due) = &g.rotation_due_at {
            out.push_str(&format!(
                "    {:<10} {due} (planned: next intermediate)\n",
                "rotates"
            ));
        }
    }
    if let Some(since) = &td.pending_csr_since {
        out.push_str(&format!(
            "  a CSR for the next intermediate waits for its certificate since {since} (cactl ca install)\n"
        ));
    }
    out
}

fn rotated(r: &Rotation) -> String {
    if r.state == "prepared" {
        return format!(
            "{td}: root rotation started: generation {generation} (new root) published {published}; \
             it activates between {earliest} (once every live leaf was issued after publication) \
             and {latest}; generation {retired} is retired then\n",
            td = r.trust_domain,
            generation = r.generation,
            published = r.published_at,
            earliest = r.activated_at,
            latest = r.activation_latest,
            retired = r.retired_generation,
        );
    }
    format!(
        "{td}: {scope} rotated: generation {generation} active since {activated} (expires {not_after}); \
         generation {retired} retired, answers for its leaves until {removal} at the latest; \
         next rotation {next}\n",
        td = r.trust_domain,
        scope = r.scope,
        generation = r.generation,
        activated = r.activated_at,
        not_after = r.not_after,
        retired = r.retired_generation,
        removal = r.retired_removal_at,
        next = r.next_rotation_at,
    )
}

fn revoked_generation(r: &RevokedGeneration) -> String {
    let what = if r.newly_revoked {
        "revoked"
    } else {
        "was already revoked"
    };
    format!(
        "{td}: generation {generation} {what} ({reason}, {at}); generation {active} is active\n",
        td = r.trust_domain,
        generation = r.generation,
        reason = r.reason,
        at = r.revoked_at,
        active = r.active_generation,
    )
}
