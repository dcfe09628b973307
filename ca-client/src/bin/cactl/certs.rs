//! `certs list|show|revoke`: the issuance record.

use ca_client::admin::{Certificate, CertificateFilter, Revoked};

use crate::args::{CertsCommand, Cli};
use crate::output;

pub async fn run(cli: &Cli, command: &CertsCommand) -> anyhow::Result<()> {
    let admin = cli.admin_client()?;
    match command {
        CertsCommand::List {
            trust_domain,
            spiffe_id,
            status,
            expiring_before,
            limit,
            all,
        } => {
            let filter = CertificateFilter {
                trust_domain: trust_domain.clone(),
                spiffe_id: spiffe_id.clone(),
                status: status.clone(),
                expiring_before: expiring_before.clone(),
            };
            let items = if *all {
                admin.all_certificates(&filter).await?
            } else {
                admin
                    .certificates(&filter, *limit, None)
                    .await?
                    .into_items()
            };
            // The items of every page read, whichever pages they came from.
            let json = serde_json::json!({"items": items.json});
            output::either(cli.output, json, || list(&items.body));
        }
        CertsCommand::Show { serial, pem } => {
            let answer = admin.certificate(serial).await?;
            output::answer(cli.output, &answer, |c| show(c, *pem));
        }
        CertsCommand::Revoke { serial, reason } => {
            let answer = admin.revoke(serial, reason).await?;
            output::answer(cli.output, &answer, revoked);
        }
    }
    Ok(())
}

fn list(items: &[Certificate]) -> String {
    let rows = items.iter().map(|c| {
        vec![
            c.serial.clone(),
            c.status.clone(),
            c.not_after.clone(),
            c.spiffe_id.clone(),
        ]
    });
    let table = output::table(
        &[
            ("SERIAL", 34),
            ("STATUS", 8),
            ("NOT AFTER", 22),
            ("SPIFFE ID", 0),
        ],
        rows,
    );
    format!("{table}{} certificate(s)\n", items.len())
}

fn show(c: &Certificate, with_pem: bool) -> String {
    let mut out = output::fields(
        18,
        &[
            ("serial", Some(c.serial.clone())),
            ("spiffe_id", Some(c.spiffe_id.clone())),
            ("trust_domain", Some(c.trust_domain.clone())),
            ("status", Some(c.status.clone())),
            ("not_before", Some(c.not_before.clone())),
            ("not_after", Some(c.not_after.clone())),
            ("issuer_key_id", Some(c.issuer_key_id.clone())),
            ("requested_by", Some(c.requested_by.clone())),
            ("api", Some(c.api.clone())),
            ("revoked_at", c.revoked_at.clone()),
            ("revocation_reason", c.revocation_reason.clone()),
        ],
    );
    if with_pem {
        out.push_str(c.certificate_pem.as_deref().unwrap_or_default());
    }
    out
}

fn revoked(r: &Revoked) -> String {
    output::fields(
        22,
        &[
            ("serial", Some(r.serial.clone())),
            ("spiffe_id", Some(r.spiffe_id.clone())),
            ("revoked_at", Some(r.revoked_at.clone())),
            ("reason", Some(r.reason.clone())),
            ("newly_revoked", Some(r.newly_revoked.to_string())),
        ],
    )
}
