//! `trust-domains`: each trust domain's CA generations, their states and expiries.

use ca_client::admin::{Page, TrustDomain};

use crate::args::Cli;
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
