//! `deny add|list|remove`: denied identities get nothing on any path.

use ca_client::admin::{DeniedIdentity, Page};

use crate::args::{Cli, DenyCommand};
use crate::output;

pub async fn run(cli: &Cli, command: &DenyCommand) -> anyhow::Result<()> {
    let admin = cli.admin_client()?;
    match command {
        DenyCommand::Add {
            spiffe_id,
            reason,
            revoke_existing,
        } => {
            let answer = admin.deny(spiffe_id, reason, *revoke_existing).await?;
            output::answer(cli.output, &answer, added);
        }
        DenyCommand::List => {
            let answer = admin.denied().await?;
            output::answer(cli.output, &answer, list);
        }
        DenyCommand::Remove { id } => {
            admin.lift_deny(id).await?;
            let json = serde_json::json!({"lifted": id});
            output::either(cli.output, json, || format!("lifted deny {id}\n"));
        }
    }
    Ok(())
}

fn added(d: &DeniedIdentity) -> String {
    output::fields(
        22,
        &[
            ("id", Some(d.id.clone())),
            ("spiffe_id", Some(d.spiffe_id.clone())),
            ("reason", Some(d.reason.clone())),
            ("created_at", Some(d.created_at.clone())),
            (
                "revoked_certificates",
                d.revoked_certificates.map(|n| n.to_string()),
            ),
        ],
    )
}

fn list(page: &Page<DeniedIdentity>) -> String {
    let rows = page.items.iter().map(|d| {
        vec![
            d.id.clone(),
            d.spiffe_id.clone(),
            d.created_at.clone(),
            d.reason.clone(),
        ]
    });
    output::table(
        &[("ID", 6), ("SPIFFE ID", 60), ("CREATED", 22), ("REASON", 0)],
        rows,
    )
}
