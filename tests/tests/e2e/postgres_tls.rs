//! TLS to Postgres: `database_url` with `sslmode=verify-full` and `sslrootcert` against a private
//! cluster that accepts TLS connections only, with a certificate made at test time.

use ca_server::config::Config;
use ca_server::server::Server;
use ca_tests::private_postgres::PrivatePostgres;
use ca_tests::{TestServer, error_chain};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls_only() {
    let postgres = PrivatePostgres::start(true);
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("postgres-ca.pem");
    std::fs::write(&ca_file, &postgres.tls.as_ref().unwrap().ca_pem).unwrap();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        postgres.url(),
        ca_file.display()
    );

    // Verified TLS: the server starts, issues, and its connections are encrypted.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Config::ephemeral(dir.path(), &url), dir).await;
    let key = ca_client::csr::generate(
        ca_client::KeyType::EcdsaP256,
        Some("spiffe://cluster.local/ns/default/sa/web"),
    )
    .unwrap();
    server
        .admin_client()
        .issue(
            &key.csr_pem,
            "spiffe://cluster.local/ns/default/sa/web",
            None,
        )
        .await
        .unwrap();
    assert!(server.store().await.count_certificates().await.unwrap() >= 2);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (total, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(total >= 2, "the CA's and this test's connections");
    assert_eq!(total, encrypted, "every TCP connection is TLS");
    pool.close().await;
    server.server.shutdown().await;

    // A CA file that does not verify the server: the start fails and says why.
    let other = files.path().join("other-ca.pem");
    let stranger = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other, params.self_signed(&stranger).unwrap().pem()).unwrap();
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        postgres.url(),
        other.display()
    );
    for (url, expected) in [
        (wrong, "certificate"),
        (format!("{}?sslmode=disable", postgres.url()), "pg_hba.conf"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::ephemeral(dir.path(), &url);
        config.database_url = url.clone();
        let error = Server::start(config)
            .await
            .expect_err("must not start without verified TLS");
        let text = error_chain(&error);
        assert!(text.contains(expected), "{url}: {text}");
    }
}
