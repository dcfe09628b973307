//! `audit list|verify`: the admin audit log, and a check of its hash chain.

use std::process::ExitCode;

use ca_client::admin::{AuditEvent, Page};

use crate::args::{AuditCommand, Cli};
use crate::{EXIT_INVALID, output};

/// `verify` exits 1 when the chain is broken.
pub async fn run(cli: &Cli, command: &AuditCommand) -> anyhow::Result<ExitCode> {
    let admin = cli.admin_client()?;
    match command {
        AuditCommand::List { limit } => {
            let answer = admin.audit(*limit).await?;
            output::answer(cli.output, &answer, list);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify => {
            let events = admin.all_audit_events().await?;
            match ca_client::audit::verify_newest_first(&events.body) {
                Ok(count) => {
                    let json = serde_json::json!({"intact": true, "events": count});
                    output::either(cli.output, json, || {
                        format!("audit chain intact: {count} events\n")
                    });
                    Ok(ExitCode::SUCCESS)
                }
                Err(broken) => {
                    let json = serde_json::json!({
                        "intact": false,
                        "event": broken.event,
                        "reason": broken.reason,
                    });
                    output::either(cli.output, json, || {
                        format!(
                            "audit chain BROKEN at event {}: {}\n",
                            broken.event, broken.reason
                        )
                    });
                    Ok(ExitCode::from(EXIT_INVALID))
                }
            }
        }
    }
}

fn list(page: &Page<AuditEvent>) -> String {
    let rows = page.items.iter().map(|e| {
        vec![
            e.id.to_string(),
            ca_client::inspect::rfc3339_public(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.outcome.clone(),
            e.target.clone(),
        ]
    });
    output::table(
        &[
            ("ID", 6),
            ("AT", 22),
            ("ACTOR", 12),
            ("ACTION", 22),
            ("OUTCOME", 10),
            ("TARGET", 0),
        ],
        rows,
    )
}
