//! The shared test kit: fresh databases on both backends, a real server on 127.0.0.1:0,
//! CSR makers (rcgen, and openssl for keys rcgen/ring refuse to make), the independent checkers
//! (openssl, pkilint), and a TCP proxy that can cut a database connection.

// This crate is test code: a panic here is a test failure with its message, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod kube;
pub mod kube_api;
pub mod ocsp;
pub mod private_postgres;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;

use ca_server::config::Config;
use ca_server::server::Server;

/// PEM of one DER certificate (LF line ends), as the server writes it.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// An error and all its causes, `outer: cause: root` (the server's own `report::Chain`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    ca_server::report::Chain(error).to_string()
}

/// The two store backends every storage-touching test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend: `both_backends!(name, body_fn)` makes
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(ca_tests::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(ca_tests::Backend::Postgres).await
            }
        }
    };
}

/// Base URL of the test Postgres server (`CA_TEST_POSTGRES`, default the local trust-auth one).
pub fn postgres_base_url() -> String {
    std::env::var("CA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Creates an empty Postgres database for one test and returns its URL.
pub async fn fresh_postgres_database() -> String {
    fresh_postgres_database_at(&postgres_base_url()).await
}

/// Creates an empty database on the Postgres server at `base` (`postgres://user@host:port`)
/// and returns its URL.
pub async fn fresh_postgres_database_at(base: &str) -> String {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("Postgres must be running on 127.0.0.1:5432 (scripts/test starts it)");
    let name = format!("ca_test_{}", random_hex(8));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("{base}/{name}")
}

/// Drops the Postgres database `url` names (a bench run's, once it has been checked): a
/// 30 s run leaves hundreds of megabytes behind. Connections still open to it are ended
/// (`WITH (FORCE)`); only `ca_test_*` and `ca_bench_*` names are accepted.
pub async fn drop_postgres_database(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let (base, name) = url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("no database name in {url}"))?;
    anyhow::ensure!(
        name.starts_with("ca_test_") || name.starts_with("ca_bench_"),
        "refusing to drop {name}: not a test database"
    );
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// A database URL of `backend` for one test; SQLite files go under `dir`.
pub async fn fresh_database(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("ca.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    }
}

pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf).unwrap();
    hex::encode(buf)
}

/// A server running on 127.0.0.1:0 listeners over a fresh database, with its data directory.
pub struct TestServer {
    pub server: Server,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
}

impl TestServer {
    /// A server with the embedded default's trust domain (`cluster.local`) on `backend`.
    pub async fn start(backend: Backend) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database(backend, dir.path()).await;
        let config = Config::ephemeral(dir.path(), &url);
        TestServer::start_with(config, dir).await
    }

    /// A server with a given config (its data directory is `dir`).
    pub async fn start_with(config: Config, dir: tempfile::TempDir) -> TestServer {
        let server = Server::start(config.clone()).await.expect("server starts");
        let admin_token = std::fs::read_to_string(&config.bootstrap_token_file).unwrap();
        TestServer {
            server,
            config,
            dir,
            admin_token,
        }
    }

    /// A server with two trust domains (`cluster.local`, the serving one, and
    /// `eu.cluster.local`) and a cluster `Kubernetes` (trust domain `cluster.local`, trusted
    /// node account `istio-system/ztunnel`) whose tokens `kube` signs.
    pub async fn start_with_cluster(backend: Backend, kube: &kube::FakeKube) -> TestServer {
        TestServer::start_with_cluster_and(backend, kube, |_| {}).await
    }

    /// [`TestServer::start_with_cluster`] with the config changed by `tweak` before the start.
    pub async fn start_with_cluster_and(
        backend: Backend,
        kube: &kube::FakeKube,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database(backend, dir.path()).await;
        let jwks = dir.path().join("jwks.json");
        kube.write_jwks(&jwks);
        let toml = format!(
            r#"
            [[trust_domains]]
            name = "cluster.local"
            [[trust_domains]]
            name = "eu.cluster.local"
            [[clusters]]
            name = "Kubernetes"
            trust_domain = "cluster.local"
            issuer = "{issuer}"
            jwks_file = "{jwks}"
            trusted_node_accounts = ["istio-system/ztunnel"]
            "#,
            issuer = kube::ISSUER,
            jwks = jwks.display(),
        );
        let parsed = Config::from_toml(&toml).unwrap();
        let mut config = Config::ephemeral(dir.path(), &url);
        config.trust_domains = parsed.trust_domains;
        config.clusters = parsed.clusters;
        tweak(&mut config);
        TestServer::start_with(config, dir).await
    }

    /// The root of the serving trust domain (what verifies the gRPC port), PEM.
    pub fn serving_root_pem(&self) -> Vec<u8> {
        let td = &self.config.tls.serving_trust_domain;
        let authority = self.server.ca.authorities().get(td).unwrap().clone();
        cert_pem(&authority.root_der).into_bytes()
    }

    /// Every root a client of the serving trust domain trusts now (during a root rotation, old
    /// and new), PEM: what the test kit's gRPC clients verify the port with.
    pub fn serving_trust_pem(&self) -> Vec<u8> {
        let td = &self.config.tls.serving_trust_domain;
        let authority = self.server.ca.authorities().get(td).unwrap().clone();
        self.server.ca.roots_pem_for(&authority).into_bytes()
    }

    /// The server's database, opened separately (its own pool): what a test reads to check what
    /// was recorded.
    pub async fn store(&self) -> ca_server::store::Store {
        let mut options = ca_server::store::StoreOptions::new(&self.config.database_url);
        options.max_connections = 2;
        ca_server::store::Store::open(&options)
            .await
            .expect("open the test server's store")
    }

    /// A gRPC client of this server, optionally with a client identity (chain PEM, key PEM).
    pub async fn grpc_client(
        &self,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> ca_client::WorkloadClient {
        ca_client::WorkloadClient::connect(&ca_client::ConnectOptions {
            address: self.server.grpc_addr.to_string(),
            ca_pem: self.serving_trust_pem(),
            server_name: Some("localhost".to_owned()),
            client_identity: identity,
        })
        .await
        .unwrap()
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.server.admin_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.server.http_addr)
    }

    /// The Prometheus exposition from the public port.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn admin_client(&self) -> ca_client::AdminClient {
        ca_client::AdminClient::new(&self.admin_url(), &self.admin_token).unwrap()
    }

    /// Stops the server but keeps its data directory and database for a restart.
    pub async fn stop(self) -> (Config, tempfile::TempDir) {
        self.server.shutdown().await;
        (self.config, self.dir)
    }
}

/// `target/debug` (or whichever profile runs the tests): where the workspace binaries are.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// Path of a workspace binary (`cactl`, `ca-server`); built by the test command first.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with scripts/test (it builds the binaries first)",
        path.display()
    );
    path
}

/// Runs a command, returning (success, stdout, stderr).
pub fn run(command: &mut Command) -> (bool, String, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A CSR made by openssl (for keys ring refuses to make: RSA-1024, P-224). `key_args` are the
/// `-newkey` arguments, e.g. `["rsa:1024"]` or `["ec", "-pkeyopt", "ec_paramgen_curve:P-224"]`.
pub fn openssl_csr(key_args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let csr = dir.path().join("csr.pem");
    let mut command = Command::new("openssl");
    command
        .args(["req", "-new", "-nodes", "-subj", "/", "-newkey"])
        .args(key_args)
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(&csr);
    let (ok, _, stderr) = run(&mut command);
    assert!(ok, "openssl req failed: {stderr}");
    std::fs::read_to_string(csr).unwrap()
}

/// The Python virtualenv with pkilint (made by scripts/test).
pub fn python_tool(name: &str) -> PathBuf {
    let root = bin_dir()
        .parent()
        .unwrap()
        .join("pyenv")
        .join("bin")
        .join(name);
    assert!(
        root.exists(),
        "{} is missing: scripts/test installs pkilint into target/pyenv",
        root.display()
    );
    root
}

/// Runs a pkilint linter (`lint_pkix_cert`, `lint_crl`, ...) on a PEM/DER file and returns the
/// finding codes at WARNING or above.
pub fn pkilint(tool: &str, extra_args: &[&str], file: &Path) -> Vec<String> {
    pkilint_at(tool, extra_args, file, "WARNING")
}

/// `pkilint` with a minimum severity (`WARNING`, `ERROR`, ...).
pub fn pkilint_at(tool: &str, extra_args: &[&str], file: &Path, severity: &str) -> Vec<String> {
    let mut command = Command::new(python_tool(tool));
    command
        .arg("lint")
        .args(extra_args)
        .args(["-s", severity, "-f", "JSON"])
        .arg(file);
    let (_, stdout, stderr) = run(&mut command);
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("pkilint output is not JSON ({e}): {stdout} {stderr}"));
    let mut codes = Vec::new();
    collect_codes(&json, &mut codes);
    codes
}

fn collect_codes(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(code)) = map.get("code") {
                out.push(code.clone());
            }
            for v in map.values() {
                collect_codes(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_codes(v, out)),
        _ => {}
    }
}
