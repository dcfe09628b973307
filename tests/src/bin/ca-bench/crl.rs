//! `ca-bench crl`: the time to query, build and sign a CRL with N revoked entries (Postgres; the
//! entries are inserted in SQL, not issued).

use std::time::Instant;

use anyhow::Context;
use time::OffsetDateTime;

/// Inserts `entries` revoked rows for the serving trust domain's issuer, then builds and signs
/// its CRL `runs` times (each past the previous CRL's half-life, so it is rebuilt) and prints the median.
pub async fn bench(entries: i64, runs: usize) -> anyhow::Result<()> {
    let server = ca_tests::TestServer::start(ca_tests::Backend::Postgres).await;
    let ca = &server.server.ca;
    let td = ca_server::spiffe::TrustDomain::parse("cluster.local")?;
    let authority = ca.authorities().get(&td).cloned().context("no authority")?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut db = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&server.config.database_url).await?
    };
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO certificates (issuer_key_id, serial, trust_domain, spiffe_id, not_before, not_after, \
         spki_sha256, der, requested_by, request_id, api, created_at, revoked_at, revocation_reason) \
         SELECT $1, '7f' || lpad(to_hex(i), 30, '0'), 'cluster.local', 'spiffe://cluster.local/ns/b/sa/b', \
         $2, $2 + 40 * 86400, '', ''::bytea, 'bench', 'b', 'bench', $2, $2, 'keyCompromise' \
         FROM generate_series(1, $3) AS i",
    )
    .bind(&authority.issuer_key_id)
    .bind(now)
    .bind(entries)
    .execute(&mut db)
    .await?;
    println!(
        "inserted {entries} revoked rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for run in 0..runs {
        // Each run past the previous CRL's half-life, so it is rebuilt.
        let at = OffsetDateTime::now_utc() + time::Duration::hours(13 * (run as i64 + 1));
        let t = Instant::now();
        let crl = ca.crl(&td, at).await?;
        times.push(t.elapsed().as_secs_f64());
        println!(
            "run {run}: {:.3}s, {} bytes, CRL number {}",
            times[run],
            crl.der.len(),
            crl.number
        );
    }
    times.sort_by(f64::total_cmp);
    println!(
        "CRL with {entries} entries: median {:.3}s to query, build and sign",
        times[times.len() / 2]
    );
    server.stop().await;
    Ok(())
}
