//! A private PostgreSQL cluster for one test (Debian's `initdb`/`pg_ctl`, run as the `postgres`
//! user when the tests run as root): its own temporary directory and free port on 127.0.0.1,
//! optionally TLS-only with a certificate made at test time, so a test can require TLS, stop or
//! kill it without touching the machine's shared server. Stopped (immediate mode) on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the server binaries.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// TLS material of a private cluster: its CA (PEM) verifies the server certificate (SANs
/// `127.0.0.1` and `localhost`).
pub struct ServerTls {
    pub ca_pem: String,
}

/// A running private cluster.
pub struct PrivatePostgres {
    pub port: u16,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
    pub tls: Option<ServerTls>,
}

fn as_postgres(program: &str) -> Command {
    let path = format!("{BIN}/{program}");
    if rustix_is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &path]);
        command
    } else {
        Command::new(path)
    }
}

fn rustix_is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chown_postgres(path: &Path) {
    if rustix_is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

impl PrivatePostgres {
    /// Starts a cluster; with `tls`, it accepts TLS connections only (`hostssl` in pg_hba.conf,
    /// plain TCP rejected).
    pub fn start(tls: bool) -> PrivatePostgres {
        Self::start_with(tls, "")
    }

    /// A cluster with `conf` appended to its `postgresql.conf` (later lines win, so `conf` can
    /// undo this module's test settings, `fsync = off` among them).
    pub fn start_configured(conf: &str) -> PrivatePostgres {
        Self::start_with(false, conf)
    }

    /// The server's log (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.data.join("server.log")
    }

    /// A primary that commits only once a synchronous standby has the WAL
    /// (`synchronous_standby_names = '*'`), accepting replication connections.
    pub fn start_primary() -> PrivatePostgres {
        Self::start_with(
            false,
            "synchronous_standby_names = '*'\nwal_level = replica\n",
        )
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started; promote it with
    /// [`PrivatePostgres::promote`].
    pub fn start_standby(primary: &PrivatePostgres) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("mesh-ca-pg-standby-")
            .tempdir_in("/tmp")
            .unwrap();
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let out = as_postgres("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(&data)
            .args(["-R", "-X", "stream", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nsynchronous_standby_names = ''\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'\n",
            dir.path().display(),
            primary.port
        ));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        chown_postgres(dir.path());
        let standby = PrivatePostgres {
            port,
            data,
            _dir: dir,
            tls: None,
        };
        standby.pg_ctl_start();
        standby
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        let out = as_postgres("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-w", "promote"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_with(tls: bool, extra_conf: &str) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("mesh-ca-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // The postgres user must be able to reach the directory.
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        chown_postgres(dir.path());
        let out = as_postgres("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 100\n",
            dir.path().display()
        );
        let mut server_tls = None;
        conf.push_str(extra_conf);
        let mut hba =
            String::from("local all all trust\nhost replication all 127.0.0.1/32 trust\n");
        if tls {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test postgres CA");
            let ca_cert = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let server_key = rcgen::KeyPair::generate().unwrap();
            let mut server_params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            server_params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
            std::fs::write(data.join("server.crt"), server_cert.pem()).unwrap();
            std::fs::write(data.join("server.key"), server_key.serialize_pem()).unwrap();
            let _ = Command::new("chmod")
                .arg("600")
                .arg(data.join("server.key"))
                .status();
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            hba.push_str("hostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n");
            server_tls = Some(ServerTls {
                ca_pem: ca_cert.pem(),
            });
        } else {
            hba.push_str("host all all 127.0.0.1/32 trust\n");
        }
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        chown_postgres(dir.path());
        let postgres = PrivatePostgres {
            port,
            data,
            _dir: dir,
            tls: server_tls,
        };
        postgres.pg_ctl_start();
        postgres
    }

    fn pg_ctl_start(&self) {
        let out = as_postgres("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-w", "-t", "30", "-l"])
            .arg(self.data.join("server.log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
        );
    }

    /// A URL of its `postgres` database (add TLS parameters as the test needs).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Kills it as a crash would: SIGKILL to the postmaster and every backend.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::trim).map(str::to_owned))
            .unwrap_or_default();
        if pid.is_empty() {
            return;
        }
        // The postmaster first (so it cannot restart its children), then every backend.
        let _ = Command::new("kill").args(["-9", &pid]).status();
        let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
        // Wait for the port to close.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // A killed postmaster may linger as a zombie nobody reaps here (no init in this
        // sandbox), which Postgres would take for a live one: drop its lock file, as a restarted
        // container's fresh PID namespace would.
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
        if let Some(sockets) = self.data.parent() {
            let _ = std::fs::remove_file(sockets.join(format!(".s.PGSQL.{}.lock", self.port)));
            let _ = std::fs::remove_file(sockets.join(format!(".s.PGSQL.{}", self.port)));
        }
    }

    /// Starts it again after a stop or a kill (crash recovery runs first).
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// Stops it at once (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let _ = as_postgres("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
