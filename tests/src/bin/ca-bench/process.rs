//! The server under test, started and stopped by `ca-bench grpc`: the release `ca-server` binary
//! as a child process with a generated config (the default), or the test kit's server on its own
//! runtime inside this process.

use std::sync::Arc;
use std::time::Duration;

use crate::sampling::{SERVER_THREAD, cpu_us, rss_anon_mb, rss_mb, thread_cpu_us};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerMode {
    /// The release `ca-server` binary in its own process (the default).
    Process,
    /// In the `ca-bench` process, on its own runtime.
    InProcess,
}

/// The name the test server's gRPC certificate carries.
pub const SERVER_NAME: &str = "localhost";

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: std::net::SocketAddr,
    pub ca_pem: Vec<u8>,
}

/// A runtime that may be dropped from async code (on any return path): it is shut down in the
/// background.
pub struct BackgroundRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl BackgroundRuntime {
    fn new(runtime: tokio::runtime::Runtime) -> BackgroundRuntime {
        BackgroundRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }
    }
}

impl std::ops::Deref for BackgroundRuntime {
    type Target = tokio::runtime::Handle;
    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The server under test.
pub enum Sut {
    /// In this process on its own runtime (two workers, threads named [`SERVER_THREAD`]), so its
    /// CPU time can be told apart from the load generator's.
    InProcess {
        runtime: BackgroundRuntime,
        server: Box<ca_tests::TestServer>,
    },
    /// The release `ca-server` binary beside `ca-bench`, with a generated config: what users run,
    /// logging included, and its CPU time and memory are its own.
    Process {
        child: std::process::Child,
        database_url: String,
        target: Target,
        _dir: tempfile::TempDir,
    },
}

impl Sut {
    pub async fn start(
        mode: ServerMode,
        backend: ca_tests::Backend,
        kube: &Arc<ca_tests::kube::FakeKube>,
    ) -> anyhow::Result<Sut> {
        match mode {
            ServerMode::InProcess => {
                let runtime = BackgroundRuntime::new(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name(SERVER_THREAD)
                        .enable_all()
                        .build()?,
                );
                let kube = kube.clone();
                let server = runtime
                    .spawn(async move {
                        // A load generator is not a workload: no per-identity limit.
                        ca_tests::TestServer::start_with_cluster_and(backend, &kube, |c| {
                            for td in &mut c.trust_domains {
                                td.identity_burst = 0;
                            }
                        })
                        .await
                    })
                    .await?;
                Ok(Sut::InProcess {
                    runtime,
                    server: Box::new(server),
                })
            }
            ServerMode::Process => {
                let dir = tempfile::tempdir()?;
                let database_url = ca_tests::fresh_database(backend, dir.path()).await;
                Self::process(dir, database_url, kube).await
            }
        }
    }

    /// The release `ca-server` on a fresh database of the Postgres server at `base`
    /// (`postgres://user@host:port`).
    pub async fn process_on_postgres(
        base: &str,
        kube: &Arc<ca_tests::kube::FakeKube>,
    ) -> anyhow::Result<Sut> {
        let dir = tempfile::tempdir()?;
        let database_url = ca_tests::fresh_postgres_database_at(base).await;
        Self::process(dir, database_url, kube).await
    }

    async fn process(
        dir: tempfile::TempDir,
        database_url: String,
        kube: &Arc<ca_tests::kube::FakeKube>,
    ) -> anyhow::Result<Sut> {
        let jwks = dir.path().join("jwks.json");
        kube.write_jwks(&jwks);
        let port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (grpc, http, admin) = (port()?, port()?, port()?);
        let data = dir.path().join("data");
        let config = format!(
            r#"
database_url = "{database_url}"
data_dir = "{data}"
[listen]
grpc = "127.0.0.1:{grpc}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
[keys]
kek_file = "{data}/kek"
[admin]
bootstrap_token_file = "{data}/admin.token"
[[trust_domains]]
name = "cluster.local"
# A load generator is not a workload: each client asks for its identity hundreds of times a
# second, so the per-identity rate limit is off here.
identity_burst = 0
[[clusters]]
name = "Kubernetes"
trust_domain = "cluster.local"
issuer = "{issuer}"
jwks_file = "{jwks}"
trusted_node_accounts = ["istio-system/ztunnel"]
"#,
            data = data.display(),
            issuer = ca_tests::kube::ISSUER,
            jwks = jwks.display(),
        );
        let config_file = dir.path().join("ca.toml");
        std::fs::write(&config_file, config)?;
        let binary = std::env::current_exe()?.with_file_name("ca-server");
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: cargo build --release --bin ca-server",
            binary.display()
        );
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = std::process::Command::new(binary)
            .arg("--config")
            .arg(&config_file)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?;
        let base = format!("http://127.0.0.1:{http}");
        let client = reqwest::Client::new();
        let mut child = child;
        let mut ready = false;
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                ready = true;
                break;
            }
            if child.try_wait()?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            anyhow::bail!("ca-server did not become ready:\n{log}");
        }
        let ca_pem = client
            .get(format!("{base}/v1/bundles/cluster.local.pem"))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?
            .to_vec();
        Ok(Sut::Process {
            child,
            database_url,
            target: Target {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], grpc)),
                ca_pem,
            },
            _dir: dir,
        })
    }

    pub fn target(&self) -> Target {
        match self {
            Sut::InProcess { server, .. } => Target {
                address: server.server.grpc_addr,
                ca_pem: server.serving_root_pem(),
            },
            Sut::Process { target, .. } => target.clone(),
        }
    }

    /// The in-process server and the runtime it runs on (`None` for a server process).
    pub fn in_process(&self) -> Option<(&BackgroundRuntime, &ca_tests::TestServer)> {
        match self {
            Sut::InProcess { runtime, server } => Some((runtime, server)),
            Sut::Process { .. } => None,
        }
    }

    pub fn database_url(&self) -> &str {
        match self {
            Sut::InProcess { server, .. } => &server.config.database_url,
            Sut::Process { database_url, .. } => database_url,
        }
    }

    /// The server's CPU time so far, in microseconds.
    pub fn cpu_us(&self) -> f64 {
        match self {
            Sut::InProcess { .. } => thread_cpu_us().0,
            Sut::Process { child, .. } => cpu_us(&child.id().to_string()),
        }
    }

    /// Resident memory: the server's own, or (in-process) this whole process's.
    pub fn rss_mb(&self) -> f64 {
        match self {
            Sut::InProcess { .. } => rss_mb("self"),
            Sut::Process { child, .. } => rss_mb(&child.id().to_string()),
        }
    }

    /// The anonymous part of [`Sut::rss_mb`] (heap and stacks).
    pub fn rss_anon_mb(&self) -> f64 {
        match self {
            Sut::InProcess { .. } => rss_anon_mb("self"),
            Sut::Process { child, .. } => rss_anon_mb(&child.id().to_string()),
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Sut::InProcess { runtime, server } => {
                runtime.spawn(server.stop()).await?;
            }
            Sut::Process { mut child, .. } => {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }
}
