//! `tokens create|list|delete`: admin tokens (the secret is printed once, at creation).

use ca_client::admin::{CreatedToken, Page, Token};

use crate::args::{Cli, TokensCommand};
use crate::output;

pub async fn run(cli: &Cli, command: &TokensCommand) -> anyhow::Result<()> {
    let admin = cli.admin_client()?;
    match command {
        TokensCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let answer = admin
                .create_token(name, role, expires_in.as_deref())
                .await?;
            output::answer(cli.output, &answer, created);
        }
        TokensCommand::List => {
            let answer = admin.tokens().await?;
            output::answer(cli.output, &answer, list);
        }
        TokensCommand::Delete { name } => {
            admin.delete_token(name).await?;
            let json = serde_json::json!({"deleted": name});
            output::either(cli.output, json, || format!("deleted token {name}\n"));
        }
    }
    Ok(())
}

fn created(t: &CreatedToken) -> String {
    output::fields(
        22,
        &[
            ("name", Some(t.name.clone())),
            ("role", Some(t.role.clone())),
            ("expires_at", t.expires_at.clone()),
            ("token", Some(t.token.clone())),
        ],
    )
}

fn list(page: &Page<Token>) -> String {
    let rows = page.items.iter().map(|t| {
        vec![
            t.name.clone(),
            t.role.clone(),
            t.created_at.clone(),
            t.expires_at.clone().unwrap_or_default(),
        ]
    });
    output::table(
        &[("NAME", 24), ("ROLE", 9), ("CREATED", 22), ("EXPIRES", 0)],
        rows,
    )
}
