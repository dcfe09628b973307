//! Starting and stopping the whole service: open the store, load or create the CAs, bind every
//! listener, serve until told to stop. `main` and the tests both go through [`Server::start`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ca::{self, Ca};
use crate::config::Config;
use crate::grpc;
use crate::http::{self, HttpState};
use crate::jobs;
use crate::keys::{self, Kek};
use crate::limits;
use crate::metrics::Metrics;
use crate::store::{self, Store, StoreOptions};
use crate::tls::{self, ServingIdentity};

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration")]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Keys(#[from] keys::Error),
    #[error(
        "another ca-server is running on the SQLite database {path} (SQLite is one process's; run replicas on Postgres)"
    )]
    SqliteInUse { path: String },
    #[error("cannot lock the SQLite database {path}")]
    SqliteLock {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create or secure the data directory {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read or create the bootstrap token file {path}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] store::Error),
    #[error("cannot load the CA")]
    Authority(#[from] ca::LoadError),
    #[error("cannot load the CA generations")]
    Lifecycle(#[source] ca::lifecycle::Error),
    #[error("cannot load the deny list")]
    DenyList(#[source] crate::revocation::Error),
    #[error("cannot issue or write istiod's certificate")]
    Istiod(#[from] crate::istiod::Error),
    #[error("cannot set up TLS")]
    Tls(#[from] tls::Error),
    #[error("cannot set up the Kubernetes API of cluster {cluster:?}")]
    Kubernetes {
        cluster: String,
        source: crate::kubernetes::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ca: Ca,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The embedded SQLite database is one process's: held for the server's life.
    _sqlite_lock: Option<std::fs::File>,
}

impl Server {
    /// Fault injection for tests: closes the store's connections, as a lost database would
    /// (SQLite cannot be unplugged). Every later store call fails `Unavailable`.
    #[doc(hidden)]
    pub async fn close_store_for_tests(&self) {
        self.ca.store().close().await;
    }

    /// Starts everything. Creates the KEK and bootstrap token files (mode 0600) when missing.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        private_data_dir(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let (kek, created) = Kek::load_or_create(&config.kek_file)?;
        let kek = Arc::new(kek);
        tracing::info!(path = %config.kek_file.display(), created, "key-encryption key");
        let token_sha256 = load_or_create_token(&config.bootstrap_token_file)?;

        let database_url = config.resolve_database_url()?;
        let sqlite_lock = lock_sqlite(&database_url)?;
        let mut options = StoreOptions::new(&database_url);
        options.max_connections = config.db_max_connections;
        let store = Store::open(&options).await?;
        tracing::info!(backend = store.backend(), "store open, migrations applied");

        let authorities = ca::load_or_create_authorities(
            &store,
            &kek,
            &config.trust_domains,
            config.listen.public_url.as_deref(),
            OffsetDateTime::now_utc(),
        )
        .await?;
        for authority in authorities.iter() {
            tracing::info!(
                trust_domain = %authority.trust_domain,
                generation = authority.generation,
                issuer_key_id = %authority.issuer_key_id,
                "CA loaded"
            );
        }

        let metrics = Metrics::new();
        metrics.initialise(&config);
        for authority in authorities.iter() {
            let td = authority.trust_domain.as_str();
            metrics.cert_expiry(
                td,
                "intermediate",
                &authority.issuer_key_id,
                authority.intermediate_not_after,
            );
            metrics.cert_expiry(
                td,
                "root",
                &authority.issuer_key_id,
                authority.root_not_after,
            );
        }
        let ca = Ca::new(config, store, authorities, metrics);
        // Every loaded generation (active and retired) with its metrics.
        for td in ca.config().trust_domains.clone() {
            ca.reload_trust_domain(&kek, &td.name)
                .await
                .map_err(StartError::Lifecycle)?;
        }
        // Before the JWKS: discovery fetches it through the cluster's API server.
        let kubernetes = ca
            .clusters()
            .connect_kubernetes()
            .map_err(|(cluster, source)| StartError::Kubernetes { cluster, source })?;
        ca.load_jwks().await;
        ca.load_bundles(OffsetDateTime::now_utc().unix_timestamp())
            .await?;
        ca.reload_deny_list().await.map_err(StartError::DenyList)?;
        let serving = ServingIdentity::new(&ca, OffsetDateTime::now_utc()).await?;
        let istiod = match ca.config().istiod.clone() {
            Some(config) => Some(Arc::new(
                crate::istiod::IstiodCertificate::start(&ca, config, OffsetDateTime::now_utc())
                    .await?,
            )),
            None => None,
        };
        let tls_config = tls::server_config(&ca, serving.clone())?;
        let state = HttpState {
            ca: ca.clone(),
            kek: kek.clone(),
            bootstrap_token_sha256: Arc::new(token_sha256),
        };
        let grpc_listener = bind(ca.config().listen.grpc).await?;
        let grpc_addr = local_addr(&grpc_listener, ca.config().listen.grpc)?;
        let http_listener = bind(ca.config().listen.http).await?;
        let admin_listener = bind(ca.config().listen.admin).await?;
        let http_addr = local_addr(&http_listener, ca.config().listen.http)?;
        let admin_addr = local_addr(&admin_listener, ca.config().listen.admin)?;

        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let grpc_identity = serving.clone();
        let mut serving_identities = vec![serving];
        // The public listener: plain HTTP, or TLS with operator files (https_web) or our own
        // certificate carrying spiffe://<serving td>/ca (https_spiffe).
        let public_tls = if ca.config().tls.http_tls {
            let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match (
                &ca.config().tls.http_cert_file,
                &ca.config().tls.http_key_file,
            ) {
                (Some(cert), Some(key)) => tls::certified_key_from_files(cert, key)?,
                _ => {
                    let uri = format!("spiffe://{}/ca", ca.config().tls.serving_trust_domain);
                    let identity =
                        ServingIdentity::with_uri(&ca, OffsetDateTime::now_utc(), Some(uri))
                            .await?;
                    serving_identities.push(identity.clone());
                    identity
                }
            };
            Some(tls::public_config(resolver)?)
        } else {
            None
        };
        // The admin listener: TLS with operator files, or with the gRPC port's certificate.
        let admin_tls = if ca.config().tls.admin_tls {
            let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match (
                &ca.config().tls.admin_cert_file,
                &ca.config().tls.admin_key_file,
            ) {
                (Some(cert), Some(key)) => tls::certified_key_from_files(cert, key)?,
                _ => grpc_identity,
            };
            Some(tls::public_config(resolver)?)
        } else {
            None
        };
        tasks.spawn(http::tls_serve::serve_with(
            http_listener,
            public_tls,
            http::public_router(state.clone()),
            shutdown.subscribe(),
            &limits::PUBLIC_HTTP,
        ));
        tasks.spawn(http::tls_serve::serve_with(
            admin_listener,
            admin_tls,
            http::admin_router(state.clone()),
            shutdown.subscribe(),
            &limits::ADMIN_HTTP,
        ));
        for entry in ca.config().federation.clone() {
            tasks.spawn(crate::federation::run(
                ca.clone(),
                entry,
                shutdown.subscribe(),
            ));
        }
        {
            let mut stop = shutdown.subscribe();
            let ca = ca.clone();
            let age = ca.config().grpc_max_connection_age;
            tasks.spawn(async move {
                let served = grpc::serve(grpc_listener, tls_config, ca, age, async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
                if let Err(e) = served {
                    tracing::error!(error = %crate::report::Chain(&e), "gRPC listener failed");
                }
            });
        }
        let holder = crate::writers::holder_identity();
        for (name, client, pods) in kubernetes {
            if let Some(index) = pods {
                tasks.spawn(index.run(client.clone(), name.clone(), shutdown.subscribe()));
            }
            let Some(cluster) = ca.config().clusters.iter().find(|c| c.name == name) else {
                continue;
            };
            let istiod_config = ca.config().istiod.clone();
            if crate::writers::has_work(cluster, istiod_config.as_ref()) {
                tasks.spawn(crate::writers::run(
                    ca.clone(),
                    cluster.clone(),
                    client,
                    istiod_config,
                    holder.clone(),
                    shutdown.subscribe(),
                ));
            }
        }
        tasks.spawn(jobs::run(
            ca.clone(),
            kek.clone(),
            serving_identities,
            istiod,
            shutdown.subscribe(),
        ));
        tracing::info!(grpc = %grpc_addr, http = %http_addr, admin = %admin_addr, "listening");
        Ok(Server {
            grpc_addr,
            http_addr,
            admin_addr,
            ca,
            shutdown,
            tasks,
            _sqlite_lock: sqlite_lock,
        })
    }

    /// Stops every listener and waits for them to finish; then closes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // The listeners are closed: no new audit events; write those still queued.
        self.ca.store().flush_audit().await;
        self.ca.store().close().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

/// Reads the bootstrap admin token, or creates one (32 random bytes, hex) with mode 0600.
/// Returns its SHA-256; the token itself is not kept.
/// SQLite is the embedded, one-process store: a second `ca-server` on the same file (whose
/// writes would interleave with ours under its own in-memory state) refuses to start. The lock
/// is an advisory `flock` on `<database>.lock`, released when the process ends, even by a crash.
fn lock_sqlite(database_url: &str) -> Result<Option<std::fs::File>, StartError> {
    let Some(path) = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.is_empty() && !p.starts_with(':') && !p.starts_with("file:"))
    else {
        return Ok(None);
    };
    let lock_path = format!("{path}.lock");
    let err = |source| StartError::SqliteLock {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = Path::new(&lock_path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::SqliteInUse {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

/// The data directory (KEK, token, SQLite files) exists and only we can enter it: created with
/// mode 0700, tightened to 0700 if it exists with more.
fn private_data_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)?;
        }
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
            tracing::info!(path = %path.display(), from = format!("{mode:04o}"), "data directory mode set to 0700");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)?;
    Ok(())
}

fn load_or_create_token(path: &Path) -> Result<[u8; 32], StartError> {
    let io_err = |source| StartError::TokenFile {
        path: path.display().to_string(),
        source,
    };
    let token = match std::fs::read_to_string(path) {
        Ok(text) => {
            keys::check_secret_file_mode(path).map_err(io_err)?;
            tracing::info!(path = %path.display(), "bootstrap admin token loaded");
            text.trim().to_owned()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| io_err(std::io::Error::other("system RNG failed")))?;
            let token = hex::encode(bytes);
            keys::write_secret_file(path, token.as_bytes()).map_err(io_err)?;
            tracing::info!(path = %path.display(), "bootstrap admin token created (mode 0600)");
            token
        }
        Err(e) => return Err(io_err(e)),
    };
    if token.is_empty() {
        return Err(io_err(std::io::Error::other("the token file is empty")));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    Ok(out)
}
