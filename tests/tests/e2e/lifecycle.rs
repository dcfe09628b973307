//! Start, restart and failure: the root survives restarts, a wrong KEK stops the server without
//! touching the stored keys, and issuance with the store gone returns an error and no certificate.

use std::net::SocketAddr;

use ca_client::{Error, KeyType};
use ca_server::config::Config;
use ca_server::server::{Server, StartError};
use ca_server::store::{Store, StoreOptions};
use ca_tests::proxy::Proxy;
use ca_tests::{Backend, TestServer, both_backends};

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

async fn root_pem(server: &TestServer) -> String {
    reqwest::get(format!(
        "{}/v1/bundles/cluster.local.pem",
        server.http_url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

async fn restart_keeps_the_root(backend: Backend) {
    let server = TestServer::start(backend).await;
    let before = root_pem(&server).await;
    assert!(before.starts_with("-----BEGIN CERTIFICATE-----"));
    let (config, dir) = server.stop().await;
    let server = TestServer::start_with(config, dir).await;
    assert_eq!(root_pem(&server).await, before);
    let generations = server
        .store()
        .await
        .generations("cluster.local")
        .await
        .unwrap();
    assert_eq!(generations.len(), 1, "no second generation was created");
    // And it still issues.
    let generated = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    server
        .admin_client()
        .issue(&generated.csr_pem, ID, None)
        .await
        .unwrap();
    server.stop().await;
}
both_backends!(restart_keeps_the_root_on, restart_keeps_the_root);

async fn wrong_kek_refuses_to_start(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (config, dir) = server.stop().await;
    let store = Store::open(&StoreOptions::new(&config.database_url))
        .await
        .unwrap();
    let before = store.generations("cluster.local").await.unwrap();
    store.close().await;

    std::fs::write(&config.kek_file, [0x42u8; 32]).unwrap();
    let err = Server::start(config.clone()).await.unwrap_err();
    assert!(matches!(err, StartError::Authority(_)), "{err}");
    let chain = ca_tests::error_chain(&err);
    assert!(chain.contains("cannot be decrypted"), "{chain}");

    // A KEK file of the wrong size is refused too.
    std::fs::write(&config.kek_file, [0x42u8; 16]).unwrap();
    let err = Server::start(config.clone()).await.unwrap_err();
    assert!(matches!(err, StartError::Keys(_)), "{err}");

    let store = Store::open(&StoreOptions::new(&config.database_url))
        .await
        .unwrap();
    let after = store.generations("cluster.local").await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].root_cert, before[0].root_cert);
    assert_eq!(after[0].root_key, before[0].root_key);
    assert_eq!(after[0].intermediate_key, before[0].intermediate_key);
    store.close().await;
    drop(dir);
}
both_backends!(wrong_kek_refuses_to_start_on, wrong_kek_refuses_to_start);

/// Postgres reached through a proxy that is then cut: the issuance fails `unavailable` (503) and
/// nothing is handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_postgres_fails_closed() {
    let url = ca_tests::fresh_postgres_database().await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], 5432))).await;
    let proxied = url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::ephemeral(dir.path(), &proxied);
    config.db_max_connections = 2;
    let server = TestServer::start_with(config, dir).await;
    let admin = server.admin_client();
    let generated = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    admin.issue(&generated.csr_pem, ID, None).await.unwrap();

    proxy.cut();
    let err = admin.issue(&generated.csr_pem, ID, None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { status: 503, code, .. } if code == "unavailable"),
        "{err:?}"
    );
    let ready = reqwest::get(format!("{}/readyz", server.http_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // The direct connection still sees exactly one certificate.
    let store = Store::open(&StoreOptions::new(&url)).await.unwrap();
    assert_eq!(
        store.count_certificates().await.unwrap(),
        2,
        "the serving certificate and one issued"
    );
    store.close().await;
    server.stop().await;
}

/// SQLite cannot be unplugged; a closed pool is the same failure from the engine's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_closed_sqlite_fails_closed() {
    let server = TestServer::start(Backend::Sqlite).await;
    let admin = server.admin_client();
    let generated = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    server.server.close_store_for_tests().await;
    let err = admin.issue(&generated.csr_pem, ID, None).await.unwrap_err();
    assert!(matches!(&err, Error::Server { status: 503, .. }), "{err:?}");
    let url = server.config.database_url.clone();
    let (_config, _dir) = server.stop().await; // keep the SQLite file
    let store = Store::open(&StoreOptions::new(&url)).await.unwrap();
    assert_eq!(
        store.count_certificates().await.unwrap(),
        1,
        "only the serving certificate"
    );
}

/// Two servers starting at once on one empty database agree on one root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_agree_on_one_root() {
    let url = ca_tests::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let a = Config::ephemeral(dir.path(), &url);
    let (sa, sb) = tokio::join!(Server::start(a.clone()), Server::start(a.clone()));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let ra = sa.ca.authorities().iter().next().unwrap().root_der.clone();
    let rb = sb.ca.authorities().iter().next().unwrap().root_der.clone();
    assert_eq!(ra, rb);
    let store = Store::open(&StoreOptions::new(&url)).await.unwrap();
    assert_eq!(store.generations("cluster.local").await.unwrap().len(), 1);
    sa.shutdown().await;
    sb.shutdown().await;
}

/// SQLite is one process's store: a second server on the same database file refuses to start
/// and says why; once the first stops, a new one starts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let server = TestServer::start(Backend::Sqlite).await;
    let second = Server::start(server.config.clone()).await.unwrap_err();
    assert!(matches!(second, StartError::SqliteInUse { .. }), "{second}");
    let chain = ca_tests::error_chain(&second);
    assert!(
        chain.contains("another ca-server") && chain.contains("Postgres"),
        "{chain}"
    );
    let (config, dir) = server.stop().await;
    let again = TestServer::start_with(config, dir).await;
    again.stop().await;
}
