//! The SQLite backend (the embedded default): WAL journal with `synchronous = FULL`, so a
//! committed issuance record survives a crash; a busy timeout so concurrent writers queue.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::store::{Error, StoreOptions};

pub(super) async fn open(options: &StoreOptions) -> Result<SqlitePool, Error> {
    let connect = SqliteConnectOptions::from_str(&options.url)
        .map_err(|e| Error::Url(super::cause(e)))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        // Reads through a memory map and a 64 MiB page cache per connection rather than a
        // pread per page from a 2 MiB cache: under load the index pages of `certificates` are
        // read back on every batch.
        .pragma("cache_size", "-65536")
        .pragma("mmap_size", "268435456");
    if let Some(parent) = connect
        .get_filename()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|e| Error::Url(super::cause(e)))?;
    }
    private_database_file(connect.get_filename()).map_err(|e| Error::Url(super::cause(e)))?;
    let pool = SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        // A local file does not go stale; skip sqlx's ping on every acquire.
        .test_before_acquire(false)
        .connect_with(connect)
        .await?;
    sqlx::migrate!("../migrations/sqlite")
        .run(&pool)
        .await
        .map_err(|e| Error::Migrate(super::cause(e)))?;
    Ok(pool)
}

/// The database file holds sealed CA keys, the audit log and token hashes: created (or
/// tightened) to mode 0600 before SQLite opens it; SQLite gives its `-wal` and `-shm` files the
/// database file's permissions.
fn private_database_file(path: &std::path::Path) -> std::io::Result<()> {
    // In memory (`sqlite::memory:` becomes a shared-cache `file:sqlx-in-memory-N` name).
    if path.as_os_str().is_empty()
        || path
            .to_str()
            .is_some_and(|p| p.starts_with(':') || p.starts_with("file:"))
    {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::Path::new(&file);
            if let Ok(metadata) = std::fs::metadata(file)
                && metadata.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// SQLITE_BUSY (5) and SQLITE_LOCKED (6) clear up by themselves.
pub(super) fn is_transient(code: Option<&str>) -> bool {
    matches!(code, Some("5" | "6"))
}
