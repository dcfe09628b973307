//! The Postgres backend: connecting and migrating (`migrations/postgres`), and which SQLSTATEs
//! are transient.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::store::{Error, StoreOptions};

/// A pooled connection idle longer than this is pinged before use (a Postgres restart or an
/// idle timeout in between would otherwise fail the first request on it). sqlx's default pings
/// on *every* acquire, an extra round trip per batch insert that cost about 3 % of the server's
/// CPU at full load.
const PING_IF_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn open(options: &StoreOptions) -> Result<PgPool, Error> {
    // One direct connection first: a pool that cannot connect reports only "timed out", and a
    // server that cannot start should say why (refused, TLS required, bad password, ...).
    let connect_options: PgConnectOptions = options
        .url
        .parse()
        .map_err(|e| Error::Url(super::cause(e)))?;
    match tokio::time::timeout(
        options.acquire_timeout,
        sqlx::ConnectOptions::connect(&connect_options),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = sqlx::Connection::close(connection).await;
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(elapsed) => return Err(Error::Unavailable(super::cause(elapsed))),
    }
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        // A connection's socket buffers grow to the largest message it ever carried (a full
        // group commit or audit batch, a few hundred KiB) and sqlx keeps them, so in time every
        // pooled connection holds its largest batch (`tests/tests/memory.rs`: 1.1 MB after one
        // 1,024-event batch). Back to 8 KiB on each return to the pool; a small batch regrows
        // its buffer with one or two reallocations.
        .after_release(|connection, _meta| {
            Box::pin(async move {
                sqlx::Connection::shrink_buffers(connection);
                Ok(true)
            })
        })
        .connect(&options.url)
        .await?;
    // sqlx holds a Postgres advisory lock while migrating, so concurrent starts are safe.
    sqlx::migrate!("../migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| Error::Migrate(super::cause(e)))?;
    Ok(pool)
}

/// Connection exceptions (08xxx), operator intervention such as admin shutdown (57Pxx),
/// insufficient resources (53xxx) and serialization failures (40001) are worth a retry.
pub(super) fn is_transient(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "40001"
    })
}
