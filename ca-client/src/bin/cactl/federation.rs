//! `federation reset TD`: forget a federated peer's stored bundle and fetch it again.

use ca_client::admin::FederationReset;

use crate::args::{Cli, FederationCommand};
use crate::output;

pub async fn run(cli: &Cli, command: &FederationCommand) -> anyhow::Result<()> {
    let admin = cli.admin_client()?;
    match command {
        FederationCommand::Reset { trust_domain } => {
            let answer = admin.reset_federation(trust_domain).await?;
            output::answer(cli.output, &answer, reset);
        }
    }
    Ok(())
}

fn reset(r: &FederationReset) -> String {
    output::fields(
        14,
        &[
            ("trust_domain", Some(r.trust_domain.clone())),
            ("removed", Some(r.removed.to_string())),
            ("fetch", Some(r.fetch.clone())),
            ("sequence", r.sequence.map(|s| s.to_string())),
            ("reason", r.reason.clone()),
        ],
    )
}
