//! The Postgres backend: connecting and migrating (`migrations/postgres`), and which SQLSTATEs
//! are transient.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::store::{Error, StoreOptions};

pub(super) async fn open(options: &StoreOptions) -> Result<PgPool, Error> {
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect(&options.url)
        .await?;
    // sqlx holds a Postgres advisory lock while migrating, so concurrent starts are safe.
    sqlx::migrate!("../migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| Error::Migrate(e.to_string()))?;
    Ok(pool)
}

/// Connection exceptions (08xxx), operator intervention such as admin shutdown (57Pxx),
/// insufficient resources (53xxx) and serialization failures (40001) are worth a retry.
pub(super) fn is_transient(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "40001"
    })
}
