//! `trust-domains`: each trust domain's CA generations, their states and expiries.

use ca_client::admin::{Page, RevokedGeneration, Rotation, TrustDomain};

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
    }
    Ok(())
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
        if let Some(due) = &g.rotation_due_at {
            out.push_str(&format!(
                "    {:<10} {due} (planned: next intermediate)\n",
                "rotates"
            ));
        }
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
