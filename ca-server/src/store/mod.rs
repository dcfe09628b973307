//! Persistence: one `Store` with domain verbs over two backends (Postgres for production, SQLite
//! as the embedded default). Only this module knows SQL.
//!
//! Design: the SQL is written once, in a dialect both backends accept (`$N` parameters, `ON
//! CONFLICT`, `RETURNING`, timestamps as unix seconds); the `on_pool!` macro runs the same query
//! code against whichever pool is open. What differs per backend (connecting, migrations, error
//! codes) lives in `postgres.rs` and `sqlite.rs`. Dispatch is a closed enum rather than a trait
//! object: two backends, no `async-trait`. The conformance suite that runs every verb on both
//! backends is `tests/tests/e2e/store_conformance.rs`.

mod batch;
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

use crate::audit::{AuditEvent, AuditRecord};
use crate::authority::SealedGeneration;

/// A store failure, already given its domain meaning; the database's own error is its
/// `source()`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached or answered with an I/O or pool error: transient.
    #[error("store unavailable")]
    Unavailable(#[source] Cause),
    /// A unique constraint said no (duplicate serial, second CA generation, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid database URL")]
    Url(#[source] Cause),
    #[error("migration failed")]
    Migrate(#[source] Cause),
    #[error("store error")]
    Other(#[source] Cause),
}

/// The cause of a store error. Shared (`Arc`): one failed group commit fails every request in
/// it with the same cause.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A cause from any error, or from a message of ours (`std::io::Error::other`).
pub(crate) fn cause(error: impl std::error::Error + Send + Sync + 'static) -> Cause {
    Arc::new(error)
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict(db.message().to_owned())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => Error::Unavailable(cause(error)),
            sqlx::Error::Database(db) if postgres::is_transient(db.code().as_deref()) => {
                Error::Unavailable(cause(error))
            }
            sqlx::Error::Database(db) if sqlite::is_transient(db.code().as_deref()) => {
                Error::Unavailable(cause(error))
            }
            _ => Error::Other(cause(error)),
        }
    }
}

/// The open store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Group commit of issuance records (see `batch.rs`).
    batcher: batch::Batcher,
    /// Batched, non-blocking audit appends for the workload paths.
    audit_batcher: batch::AuditBatcher,
}

#[derive(Debug, Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the open pool, whichever backend it is.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// Takes the next CRL number of a key (an issuer key id, or `root:<serial>`), locking its row
/// until the transaction ends.
const NEXT_CRL_NUMBER: &str = "INSERT INTO crl_numbers (issuer_key_id, last_number) VALUES ($1, 1) \
     ON CONFLICT (issuer_key_id) DO UPDATE SET last_number = crl_numbers.last_number + 1 \
     RETURNING last_number";

/// An issuer's revoked certificates that have not expired at `$2`, by serial: a CRL's entries.
const REVOKED_UNEXPIRED: &str = "SELECT serial, revoked_at, revocation_reason FROM certificates \
     WHERE issuer_key_id = $1 AND revoked_at IS NOT NULL AND not_after > $2 ORDER BY serial";

/// Every generation of the trust domain `$1`, oldest first.
fn generations_sql() -> String {
    format!(
        "SELECT {GENERATION_COLUMNS} FROM ca_generations WHERE trust_domain = $1 ORDER BY generation"
    )
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before failing `Unavailable`.
    pub acquire_timeout: Duration,
}

impl StoreOptions {
    pub fn new(url: &str) -> StoreOptions {
        StoreOptions {
            url: url.to_owned(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CertificateRecord {
    pub issuer_key_id: String,
    /// Lower-case hex, no leading zero bytes beyond DER's sign byte.
    pub serial: String,
    pub trust_domain: String,
    pub spiffe_id: String,
    pub not_before: i64,
    pub not_after: i64,
    pub spki_sha256: String,
    pub der: Vec<u8>,
    pub requested_by: String,
    pub request_id: String,
    pub api: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
}

/// A revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RevokedRecord {
    pub serial: String,
    pub revoked_at: i64,
    pub revocation_reason: Option<String>,
}

/// A denied identity.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeniedRecord {
    pub id: i64,
    pub spiffe_id: String,
    pub trust_domain: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
}

/// A certificate with its row id (the pagination key: newest first).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CertificateRow {
    pub id: i64,
    #[sqlx(flatten)]
    pub record: CertificateRecord,
}

/// Filters of a certificate search; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct CertificateFilter {
    pub trust_domain: Option<String>,
    pub spiffe_id: Option<String>,
    /// "valid", "revoked" or "expired" (as of `now`).
    pub status: Option<String>,
    pub expiring_before: Option<i64>,
    pub now: i64,
}

/// An admin token (its secret is only stored hashed).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRecord {
    pub name: String,
    pub role: String,
    pub token_sha256: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// A stored trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BundleRecord {
    pub trust_domain: String,
    pub sequence: i64,
    pub content_sha256: String,
    pub roots_pem: String,
    /// `local` (ours) or `federated` (fetched from a peer).
    pub source: String,
    pub updated_at: i64,
}

const BUNDLE_COLUMNS: &str =
    "trust_domain, sequence, content_sha256, roots_pem, source, updated_at";

const AUDIT_COLUMNS: &str =
    "id, prev_hash, hash, at, actor, action, target, outcome, request_id, detail";

pub(crate) const CERTIFICATE_COLUMNS: &str = "issuer_key_id, serial, trust_domain, spiffe_id, not_before, \
     not_after, spki_sha256, der, requested_by, request_id, api, created_at, revoked_at, \
     revocation_reason";

const GENERATION_COLUMNS: &str = "trust_domain, generation, state, key_algorithm, root_cert, \
     root_key, intermediate_cert, intermediate_key, issuer_key_id, not_after, created_at, \
     activated_at, retired_at, removed_at, revocation_reason, chain";

/// The key of a plug-in intermediate made here for a CSR, sealed under the KEK, until its
/// certificate is installed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingKey {
    pub trust_domain: String,
    pub key_algorithm: String,
    pub sealed_key: Vec<u8>,
    pub csr_pem: String,
    pub created_at: i64,
}

impl Store {
    /// Connects (creating a SQLite file when missing) and applies the migrations. Safe to run from
    /// several processes at once: Postgres migrations take an advisory lock; SQLite locks the file.
    pub async fn open(options: &StoreOptions) -> Result<Store, Error> {
        let pool =
            if options.url.starts_with("postgres://") || options.url.starts_with("postgresql://") {
                Pool::Postgres(postgres::open(options).await?)
            } else if options.url.starts_with("sqlite:") {
                Pool::Sqlite(sqlite::open(options).await?)
            } else {
                return Err(Error::Url(cause(std::io::Error::other(
                    "expected postgres://... or sqlite://...",
                ))));
            };
        let batcher = batch::Batcher::start(pool.clone());
        let audit_batcher = batch::AuditBatcher::start(pool.clone());
        Ok(Store {
            pool,
            batcher,
            audit_batcher,
        })
    }

    /// Which backend this is: "postgres" or "sqlite".
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// Closes every connection; later calls fail `Unavailable`.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), Error> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn ensure_trust_domain(&self, name: &str, now: i64) -> Result<(), Error> {
        let sql = "INSERT INTO trust_domains (name, created_at) VALUES ($1, $2) \
                   ON CONFLICT (name) DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql).bind(name).bind(now).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// The active CA generation of a trust domain, if one exists.
    pub async fn active_generation(
        &self,
        trust_domain: &str,
    ) -> Result<Option<SealedGeneration>, Error> {
        let sql = format!(
            "SELECT {GENERATION_COLUMNS} FROM ca_generations \
             WHERE trust_domain = $1 AND state = 'active'"
        );
        let record = on_pool!(self, pool => sqlx::query_as(&sql).bind(trust_domain).fetch_optional(pool).await)?;
        Ok(record)
    }

    /// Every generation of a trust domain, oldest first.
    pub async fn generations(&self, trust_domain: &str) -> Result<Vec<SealedGeneration>, Error> {
        let sql = generations_sql();
        let records =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(trust_domain).fetch_all(pool).await)?;
        Ok(records)
    }

    /// Inserts a generation; `Conflict` when another process inserted the same one first.
    pub async fn insert_generation(&self, record: &SealedGeneration) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO ca_generations ({GENERATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        on_pool!(self, pool => sqlx::query(&sql)
            .bind(&record.trust_domain)
            .bind(record.generation)
            .bind(&record.state)
            .bind(&record.key_algorithm)
            .bind(&record.root_cert)
            .bind(&record.root_key)
            .bind(&record.intermediate_cert)
            .bind(&record.intermediate_key)
            .bind(&record.issuer_key_id)
            .bind(record.not_after)
            .bind(record.created_at)
            .bind(record.activated_at)
            .bind(record.retired_at)
            .bind(record.removed_at)
            .bind(&record.revocation_reason)
            .bind(&record.chain)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Keeps the key made for a plug-in intermediate's CSR, replacing an earlier one.
    pub async fn put_pending_key(&self, record: &PendingKey) -> Result<(), Error> {
        let sql = "INSERT INTO ca_pending_keys (trust_domain, key_algorithm, sealed_key, csr_pem, \
                   created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (trust_domain) DO UPDATE \
                   SET key_algorithm = excluded.key_algorithm, sealed_key = excluded.sealed_key, \
                   csr_pem = excluded.csr_pem, created_at = excluded.created_at";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&record.trust_domain)
            .bind(&record.key_algorithm)
            .bind(&record.sealed_key)
            .bind(&record.csr_pem)
            .bind(record.created_at)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// The key waiting for its externally signed certificate, if one was made.
    pub async fn pending_key(&self, trust_domain: &str) -> Result<Option<PendingKey>, Error> {
        let sql = "SELECT trust_domain, key_algorithm, sealed_key, csr_pem, created_at \
                   FROM ca_pending_keys WHERE trust_domain = $1";
        let record = on_pool!(self, pool => sqlx::query_as(sql).bind(trust_domain).fetch_optional(pool).await)?;
        Ok(record)
    }

    /// Forgets the pending key made at `created_at` (installed); false when it was replaced or
    /// already gone.
    pub async fn delete_pending_key(
        &self,
        trust_domain: &str,
        created_at: i64,
    ) -> Result<bool, Error> {
        let sql = "DELETE FROM ca_pending_keys WHERE trust_domain = $1 AND created_at = $2";
        let deleted = on_pool!(self, pool => sqlx::query(sql).bind(trust_domain).bind(created_at).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(deleted == 1)
    }

    /// Replaces the active generation `from` of a trust domain with `next` (state `active`), in
    /// one transaction: `from` becomes `retired` only if it is still the active one (a
    /// compare-and-set), and `next` is inserted. Returns false, changing nothing, when another
    /// replica got there first (`from` no longer active, or `next`'s number taken).
    pub async fn rotate_generation(
        &self,
        from: i32,
        next: &SealedGeneration,
        now: i64,
    ) -> Result<bool, Error> {
        let retire = "UPDATE ca_generations SET state = 'retired', retired_at = $3 \
                      WHERE trust_domain = $1 AND generation = $2 AND state = 'active'";
        let insert = format!(
            "INSERT INTO ca_generations ({GENERATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        let done: Result<bool, sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let retired = sqlx::query(retire)
                .bind(&next.trust_domain)
                .bind(from)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if retired != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            let inserted = sqlx::query(&insert)
                .bind(&next.trust_domain)
                .bind(next.generation)
                .bind(&next.state)
                .bind(&next.key_algorithm)
                .bind(&next.root_cert)
                .bind(&next.root_key)
                .bind(&next.intermediate_cert)
                .bind(&next.intermediate_key)
                .bind(&next.issuer_key_id)
                .bind(next.not_after)
                .bind(next.created_at)
                .bind(next.activated_at)
                .bind(next.retired_at)
                .bind(next.removed_at)
                .bind(&next.revocation_reason)
                .bind(&next.chain)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tx.rollback().await?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
            tx.commit().await?;
            Ok(true)
        }.await);
        Ok(done?)
    }

    /// Moves a generation from state `from` to `to`, stamping `removed_at` for `removed` and
    /// `revoked`; false when it was no longer in `from` (another replica moved it).
    pub async fn transition_generation(
        &self,
        trust_domain: &str,
        generation: i32,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let sql = "UPDATE ca_generations SET state = $4, removed_at = $5 \
                   WHERE trust_domain = $1 AND generation = $2 AND state = $3";
        let changed = on_pool!(self, pool => sqlx::query(sql)
            .bind(trust_domain)
            .bind(generation)
            .bind(from)
            .bind(to)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Activates the prepared generation `prepared` in place of the active `active`, in one
    /// transaction; false, changing nothing, when either is no longer in that state (another
    /// replica activated it first).
    pub async fn activate_prepared(
        &self,
        trust_domain: &str,
        active: i32,
        prepared: i32,
        now: i64,
    ) -> Result<bool, Error> {
        let retire = "UPDATE ca_generations SET state = 'retired', retired_at = $3 \
                      WHERE trust_domain = $1 AND generation = $2 AND state = 'active'";
        let activate = "UPDATE ca_generations SET state = 'active', activated_at = $3 \
                        WHERE trust_domain = $1 AND generation = $2 AND state = 'prepared'";
        let done: Result<bool, sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let retired = sqlx::query(retire)
                .bind(trust_domain)
                .bind(active)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if retired != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            let activated = sqlx::query(activate)
                .bind(trust_domain)
                .bind(prepared)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if activated != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        }.await);
        Ok(done?)
    }

    /// Live (unexpired, unrevoked) leaves of a trust domain's issuers at `now`: how many, and
    /// how many of them were issued after `since` (root rotation's convergence; a leaf of the
    /// very second of the publication counts as not converged, as it may predate it). Our own
    /// serving certificates (`api` `serving`, `istiod`) are not workloads' and do not count:
    /// their relying parties take the trust set from the root ConfigMap or bundle.
    pub async fn live_leaves_since(
        &self,
        issuer_key_ids: &[String],
        since: i64,
        now: i64,
    ) -> Result<(i64, i64), Error> {
        let mut total = 0;
        let mut fresh = 0;
        let sql = "SELECT COUNT(*), COALESCE(SUM(CASE WHEN created_at > $2 THEN 1 ELSE 0 END), 0) \
                   FROM certificates WHERE issuer_key_id = $1 AND revoked_at IS NULL AND not_after > $3 \
                   AND api NOT IN ('serving', 'istiod')";
        for issuer in issuer_key_ids {
            let (all, new): (i64, i64) = on_pool!(self, pool => sqlx::query_as(sql)
                .bind(issuer)
                .bind(since)
                .bind(now)
                .fetch_one(pool)
                .await)?;
            total += all;
            fresh += new;
        }
        Ok((total, fresh))
    }

    /// Marks a retired or removed generation `revoked` (an emergency) with its reason; false
    /// when it is in neither state (active, already revoked, unknown).
    pub async fn revoke_generation(
        &self,
        trust_domain: &str,
        generation: i32,
        reason: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let sql = "UPDATE ca_generations SET state = 'revoked', removed_at = $3, \
                   revocation_reason = $4 \
                   WHERE trust_domain = $1 AND generation = $2 AND state IN ('retired', 'removed')";
        let changed = on_pool!(self, pool => sqlx::query(sql)
            .bind(trust_domain)
            .bind(generation)
            .bind(now)
            .bind(reason)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }

    /// The number of a trust domain's active generation (cheap: every replica asks each tick).
    pub async fn active_generation_number(&self, trust_domain: &str) -> Result<Option<i32>, Error> {
        let sql =
            "SELECT generation FROM ca_generations WHERE trust_domain = $1 AND state = 'active'";
        let number: Option<i32> = on_pool!(self, pool => sqlx::query_scalar(sql).bind(trust_domain).fetch_optional(pool).await)?;
        Ok(number)
    }

    /// The latest notAfter of any certificate an issuer signed (`None` if it signed none).
    pub async fn last_leaf_not_after(&self, issuer_key_id: &str) -> Result<Option<i64>, Error> {
        let sql = "SELECT MAX(not_after) FROM certificates WHERE issuer_key_id = $1";
        let last: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(sql).bind(issuer_key_id).fetch_one(pool).await)?;
        Ok(last)
    }

    /// Records an issued certificate; returns once the row is committed (group-committed with
    /// concurrent callers). A duplicate (issuer, serial) is `Conflict`.
    pub async fn record_issued(&self, record: &CertificateRecord) -> Result<(), Error> {
        self.batcher.submit(record.clone()).await
    }

    /// The certificate with this serial from this issuer.
    pub async fn certificate(
        &self,
        issuer_key_id: &str,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, Error> {
        let sql = format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates \
             WHERE issuer_key_id = $1 AND serial = $2"
        );
        let record = on_pool!(self, pool => sqlx::query_as(&sql).bind(issuer_key_id).bind(serial).fetch_optional(pool).await)?;
        Ok(record)
    }

    /// Certificates with this serial from any issuer (serials are unique only per issuer).
    pub async fn certificates_by_serial(
        &self,
        serial: &str,
    ) -> Result<Vec<CertificateRecord>, Error> {
        let sql = format!("SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE serial = $1");
        let records =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(serial).fetch_all(pool).await)?;
        Ok(records)
    }

    /// Marks a certificate revoked (first revocation wins). Returns whether a row changed.
    pub async fn revoke(
        &self,
        issuer_key_id: &str,
        serial: &str,
        reason: &str,
        at: i64,
    ) -> Result<bool, Error> {
        let sql = "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
                   WHERE issuer_key_id = $3 AND serial = $4 AND revoked_at IS NULL";
        let result = on_pool!(self, pool => sqlx::query(sql)
            .bind(at)
            .bind(reason)
            .bind(issuer_key_id)
            .bind(serial)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(result == 1)
    }

    pub async fn count_certificates(&self) -> Result<i64, Error> {
        let sql = "SELECT COUNT(*) FROM certificates";
        let count: i64 = on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await)?;
        Ok(count)
    }

    /// Appends an audit event to the hash chain and returns once it is committed (the chain is
    /// computed under a lock on its head row; see `batch::append_chained`).
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<(), Error> {
        batch::append_chained(&self.pool, std::slice::from_ref(event)).await
    }

    /// Queues an audit event to be chained and written shortly, without waiting (false when the
    /// queue is full and the event was dropped).
    pub fn append_audit_soon(&self, event: AuditEvent) -> bool {
        self.audit_batcher.submit(event)
    }

    /// Returns once every audit event queued by [`Store::append_audit_soon`] so far is written
    /// (a graceful shutdown calls it before closing the pool).
    pub async fn flush_audit(&self) {
        self.audit_batcher.flush().await;
    }

    /// The newest audit events, newest first.
    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditRecord>, Error> {
        self.audit_page(None, limit).await
    }

    /// Audit events with an id below `before` (all when `None`), newest first.
    pub async fn audit_page(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, Error> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
        );
        let records = on_pool!(self, pool => sqlx::query_as(&sql).bind(before).bind(limit).fetch_all(pool).await)?;
        Ok(records)
    }

    /// Certificates matching `filter` with an id below `before`, newest first.
    pub async fn search_certificates(
        &self,
        filter: &CertificateFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CertificateRow>, Error> {
        let sql = format!(
            "SELECT id, {CERTIFICATE_COLUMNS} FROM certificates \
             WHERE ($1 IS NULL OR id < $1) \
             AND ($2 IS NULL OR trust_domain = $2) \
             AND ($3 IS NULL OR spiffe_id = $3) \
             AND ($4 IS NULL OR not_after < $4) \
             AND ($5 IS NULL \
                  OR ($5 = 'revoked' AND revoked_at IS NOT NULL) \
                  OR ($5 = 'valid' AND revoked_at IS NULL AND not_after > $6) \
                  OR ($5 = 'expired' AND revoked_at IS NULL AND not_after <= $6)) \
             ORDER BY id DESC LIMIT $7"
        );
        let rows = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(before)
            .bind(&filter.trust_domain)
            .bind(&filter.spiffe_id)
            .bind(filter.expiring_before)
            .bind(&filter.status)
            .bind(filter.now)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    pub async fn create_token(&self, token: &TokenRecord) -> Result<(), Error> {
        let sql = "INSERT INTO admin_tokens (name, role, token_sha256, created_by, created_at, expires_at) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&token.name)
            .bind(&token.role)
            .bind(&token.token_sha256)
            .bind(&token.created_by)
            .bind(token.created_at)
            .bind(token.expires_at)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let sql = "SELECT name, role, token_sha256, created_by, created_at, expires_at FROM admin_tokens ORDER BY name";
        let records = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(records)
    }

    pub async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRecord>, Error> {
        let sql = "SELECT name, role, token_sha256, created_by, created_at, expires_at FROM admin_tokens \
                   WHERE token_sha256 = $1";
        let record = on_pool!(self, pool => sqlx::query_as(sql).bind(token_sha256).fetch_optional(pool).await)?;
        Ok(record)
    }

    pub async fn delete_token(&self, name: &str) -> Result<bool, Error> {
        let sql = "DELETE FROM admin_tokens WHERE name = $1";
        let count = on_pool!(self, pool => sqlx::query(sql).bind(name).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(count == 1)
    }

    /// A cheap fingerprint of an issuer's revocation state (count and latest time): when it
    /// changes, CRLs built from the old state are stale.
    pub async fn revocation_marker(&self, issuer_key_id: &str) -> Result<(i64, i64), Error> {
        let sql = "SELECT COUNT(*), COALESCE(MAX(revoked_at), 0) FROM certificates \
                   WHERE issuer_key_id = $1 AND revoked_at IS NOT NULL";
        let marker: (i64, i64) =
            on_pool!(self, pool => sqlx::query_as(sql).bind(issuer_key_id).fetch_one(pool).await)?;
        Ok(marker)
    }

    /// The next number of an issuer's CRL (1, 2, ...) and the revoked, unexpired certificates
    /// that CRL lists, read in one transaction that holds the number's row lock.
    ///
    /// Numbers are handed out in the order the lists are read, so a CRL never lacks a
    /// revocation that a lower-numbered one lists (RFC 5280 5.2.3: the higher number
    /// supersedes). Replicas building at once queue on the row, and each one's list is read
    /// after the previous one committed (READ COMMITTED reads the latest committed state per
    /// statement; SQLite has one writer). Reading the list first and taking the number after,
    /// as this once did, let a replica that read before a revocation take its number after
    /// one that read after it: the newer number published the older list.
    pub async fn next_crl(
        &self,
        issuer_key_id: &str,
        now: i64,
    ) -> Result<(i64, Vec<RevokedRecord>), Error> {
        let done: Result<_, sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let number: i64 = sqlx::query_scalar(NEXT_CRL_NUMBER)
                .bind(issuer_key_id)
                .fetch_one(&mut *tx)
                .await?;
            let entries: Vec<RevokedRecord> = sqlx::query_as(REVOKED_UNEXPIRED)
                .bind(issuer_key_id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok((number, entries))
        }.await);
        Ok(done?)
    }

    /// The next number of a root's CRL (`number_key`, e.g. `root:<serial>`) and the trust
    /// domain's generations it is built from (the revoked intermediates), read in one
    /// transaction that holds the number's row lock, for the reason given at
    /// [`Store::next_crl`].
    pub async fn next_root_crl(
        &self,
        number_key: &str,
        trust_domain: &str,
    ) -> Result<(i64, Vec<SealedGeneration>), Error> {
        let generations = generations_sql();
        let done: Result<_, sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let number: i64 = sqlx::query_scalar(NEXT_CRL_NUMBER)
                .bind(number_key)
                .fetch_one(&mut *tx)
                .await?;
            let records: Vec<SealedGeneration> = sqlx::query_as(&generations)
                .bind(trust_domain)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok((number, records))
        }.await);
        Ok(done?)
    }

    /// Revokes every live (unrevoked, unexpired) certificate of an identity; returns how many.
    pub async fn revoke_identity(
        &self,
        spiffe_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<u64, Error> {
        let sql = "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
                   WHERE spiffe_id = $3 AND revoked_at IS NULL AND not_after > $1";
        let count = on_pool!(self, pool => sqlx::query(sql)
            .bind(at)
            .bind(reason)
            .bind(spiffe_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(count)
    }

    /// Revoked, unexpired certificates of a trust domain (for the gauge).
    pub async fn count_revoked_unexpired(
        &self,
        trust_domain: &str,
        now: i64,
    ) -> Result<i64, Error> {
        let sql = "SELECT COUNT(*) FROM certificates WHERE trust_domain = $1 \
                   AND revoked_at IS NOT NULL AND not_after > $2";
        let count: i64 = on_pool!(self, pool => sqlx::query_scalar(sql).bind(trust_domain).bind(now).fetch_one(pool).await)?;
        Ok(count)
    }

    /// Per trust domain, the workload identities whose newest live (unrevoked, unexpired)
    /// certificate expires before `before`: renewal is failing somewhere for them. The CA's own
    /// serving certificates are not workloads.
    ///
    /// Read as "has a live certificate expiring in (`now`, `before`) and none expiring later",
    /// so only the rows of that window are read (the `not_after` BRIN index), each checked
    /// against its identity's other rows (the `spiffe_id` index): not every live certificate,
    /// which at a high issuance rate is millions of rows every 30 s (found by the soak).
    pub async fn count_identities_expiring(
        &self,
        now: i64,
        before: i64,
    ) -> Result<Vec<(String, i64)>, Error> {
        let sql = "SELECT c.trust_domain, COUNT(DISTINCT c.spiffe_id) FROM certificates c \
                   WHERE c.not_after > $1 AND c.not_after < $2 AND c.revoked_at IS NULL \
                   AND c.api <> 'serving' AND NOT EXISTS ( \
                     SELECT 1 FROM certificates d WHERE d.spiffe_id = c.spiffe_id \
                     AND d.not_after >= $2 AND d.revoked_at IS NULL AND d.api <> 'serving') \
                   GROUP BY c.trust_domain";
        let rows: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(sql).bind(now).bind(before).fetch_all(pool).await)?;
        Ok(rows)
    }

    /// Denies an identity; if it is already denied, returns the existing entry.
    pub async fn deny(&self, record: &DeniedRecord) -> Result<DeniedRecord, Error> {
        let sql = "INSERT INTO denied_identities (spiffe_id, trust_domain, reason, created_by, created_at) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (spiffe_id) DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&record.spiffe_id)
            .bind(&record.trust_domain)
            .bind(&record.reason)
            .bind(&record.created_by)
            .bind(record.created_at)
            .execute(pool)
            .await
            .map(|_| ()))?;
        let sql = "SELECT id, spiffe_id, trust_domain, reason, created_by, created_at \
                   FROM denied_identities WHERE spiffe_id = $1";
        let stored = on_pool!(self, pool => sqlx::query_as(sql).bind(&record.spiffe_id).fetch_one(pool).await)?;
        Ok(stored)
    }

    /// Every denied identity, oldest first.
    pub async fn denied(&self) -> Result<Vec<DeniedRecord>, Error> {
        let sql = "SELECT id, spiffe_id, trust_domain, reason, created_by, created_at \
                   FROM denied_identities ORDER BY id";
        let records = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(records)
    }

    /// Lifts a deny; returns the lifted entry, if there was one.
    pub async fn lift_deny(&self, id: i64) -> Result<Option<DeniedRecord>, Error> {
        let sql = "DELETE FROM denied_identities WHERE id = $1 \
                   RETURNING id, spiffe_id, trust_domain, reason, created_by, created_at";
        let record =
            on_pool!(self, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?;
        Ok(record)
    }

    /// Records our own trust domain's roots; the sequence goes up by one whenever the content
    /// changes (and only then). Returns the stored bundle.
    pub async fn put_local_bundle(
        &self,
        trust_domain: &str,
        roots_pem: &str,
        content_sha256: &str,
        now: i64,
    ) -> Result<BundleRecord, Error> {
        let upsert = "INSERT INTO bundles (trust_domain, sequence, content_sha256, roots_pem, source, updated_at) \
                      VALUES ($1, 1, $2, $3, 'local', $4) \
                      ON CONFLICT (trust_domain) DO UPDATE SET sequence = bundles.sequence + 1, \
                      content_sha256 = excluded.content_sha256, roots_pem = excluded.roots_pem, \
                      source = 'local', updated_at = excluded.updated_at \
                      WHERE bundles.content_sha256 <> excluded.content_sha256";
        on_pool!(self, pool => sqlx::query(upsert)
            .bind(trust_domain)
            .bind(content_sha256)
            .bind(roots_pem)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ()))?;
        self.bundle(trust_domain).await?.ok_or_else(|| {
            Error::Other(cause(std::io::Error::other("bundle vanished after upsert")))
        })
    }

    /// Records a federated bundle if its sequence is higher than the stored one (or none is
    /// stored). Returns whether it was stored.
    pub async fn put_federated_bundle(&self, record: &BundleRecord) -> Result<bool, Error> {
        let upsert = "INSERT INTO bundles (trust_domain, sequence, content_sha256, roots_pem, source, updated_at) \
                      VALUES ($1, $2, $3, $4, 'federated', $5) \
                      ON CONFLICT (trust_domain) DO UPDATE SET sequence = excluded.sequence, \
                      content_sha256 = excluded.content_sha256, roots_pem = excluded.roots_pem, \
                      updated_at = excluded.updated_at \
                      WHERE bundles.source = 'federated' AND bundles.sequence < excluded.sequence";
        let changed = on_pool!(self, pool => sqlx::query(upsert)
            .bind(&record.trust_domain)
            .bind(record.sequence)
            .bind(&record.content_sha256)
            .bind(&record.roots_pem)
            .bind(record.updated_at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Forgets a federated peer's stored bundle (an operator's reset); our own bundles are
    /// never removed. Returns whether one was stored.
    pub async fn delete_federated_bundle(&self, trust_domain: &str) -> Result<bool, Error> {
        let sql = "DELETE FROM bundles WHERE trust_domain = $1 AND source = 'federated'";
        let deleted = on_pool!(self, pool => sqlx::query(sql)
            .bind(trust_domain)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(deleted > 0)
    }

    pub async fn bundle(&self, trust_domain: &str) -> Result<Option<BundleRecord>, Error> {
        let sql = format!("SELECT {BUNDLE_COLUMNS} FROM bundles WHERE trust_domain = $1");
        let record = on_pool!(self, pool => sqlx::query_as(&sql).bind(trust_domain).fetch_optional(pool).await)?;
        Ok(record)
    }

    pub async fn bundles(&self) -> Result<Vec<BundleRecord>, Error> {
        let sql = format!("SELECT {BUNDLE_COLUMNS} FROM bundles ORDER BY trust_domain");
        let records = on_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await)?;
        Ok(records)
    }
}
