//! The flags: global options (from the command line or the environment) and the subcommands, and
//! what they turn into (an admin client, gRPC connect options, a TTL in seconds).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use ca_client::{AdminClient, ConnectOptions, files};

#[derive(Debug, Parser)]
#[command(name = "cactl", version, about = "Command line for the mesh CA")]
pub struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "CA_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin: String,
    /// File holding the admin bearer token.
    #[arg(
        long,
        global = true,
        env = "CA_ADMIN_TOKEN_FILE",
        default_value = "ca-data/admin.token"
    )]
    pub admin_token_file: PathBuf,
    /// Public HTTP base URL (bundles, CRL).
    #[arg(
        long,
        global = true,
        env = "CA_HTTP",
        default_value = "http://127.0.0.1:8080"
    )]
    pub http: String,
    /// gRPC address (`host:port`) for workload requests.
    #[arg(long, global = true, env = "CA_GRPC", default_value = "127.0.0.1:8443")]
    pub grpc: String,
    /// PEM roots that verify the gRPC server.
    #[arg(long, global = true, env = "CA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name to expect in the gRPC server's certificate (default: the host of --grpc).
    #[arg(long, global = true, env = "CA_SERVER_NAME")]
    pub server_name: Option<String>,
    /// A Kubernetes service-account token file: request over gRPC like istio-agent.
    #[arg(long, global = true, env = "CA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Cluster id sent in the `clusterid` header.
    #[arg(
        long,
        global = true,
        env = "CA_CLUSTER_ID",
        default_value = "Kubernetes"
    )]
    pub cluster_id: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a key and CSR, have the CA sign it, write key.pem (0600), cert-chain.pem, root-cert.pem.
    ///
    /// With --token-file: over gRPC, exactly like istio-agent (bearer JWT + clusterid, CSR with an
    /// `O=` subject and one critical URI SAN). Without: operator-issued through the admin API.
    Issue {
        /// The SPIFFE ID. Admin path: required. Token path: the CSR's SAN (default: derived from
        /// the token's subject and --trust-domain).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Trust domain for the SAN derived from the token (token path).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Directory to write the files into.
        #[arg(long)]
        out: PathBuf,
        /// Key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096.
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
        /// Requested lifetime, e.g. 1h (default: the trust domain's default_ttl).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Trust domains: CA certificates, states, expiries, bundle sequence.
    TrustDomains,
    /// A trust domain's CA: its generations as a timeline, and rotating it.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Trust bundles from the public listener (get) or the gRPC API (watch).
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Admin tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Decode a certificate, chain, CSR, CRL (PEM or DER) or SPIFFE bundle (JSON).
    Inspect { file: PathBuf },
    /// Certificates in the issuance record.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Federation with other trust domains' bundle endpoints.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Denied identities: they get nothing on any path.
    Deny {
        #[command(subcommand)]
        command: DenyCommand,
    },
    /// Verify a certificate chain: chain to --bundle, SPIFFE ID, expiry, revocation (CRL).
    /// Exit code 0: valid; 1: not valid; 2: could not check.
    Verify {
        /// PEM file: the leaf, then intermediates (cert-chain.pem).
        file: PathBuf,
        /// PEM roots to verify against (root-cert.pem).
        #[arg(long)]
        bundle: PathBuf,
        /// The SPIFFE ID the certificate must carry.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// A DER CRL file; default: fetch `/v1/crl/{trust domain}` from --http.
        #[arg(long)]
        crl_file: Option<PathBuf>,
        /// Skip the revocation check.
        #[arg(long)]
        no_revocation: bool,
    },
    /// Renew the certificate in a directory over mutual TLS with that certificate.
    Renew {
        /// Directory with key.pem, cert-chain.pem (and root-cert.pem, the default --ca-file).
        #[arg(long)]
        dir: PathBuf,
        /// Key type of the new key.
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
        /// Keep renewing (at about half-life, and at once when a trust bundle changes), rewriting
        /// the files each time, until interrupted; built on `ca_client::svid::SvidSource`.
        #[arg(long)]
        watch: bool,
        /// With --watch: a service-account token file to fall back to when renewal over mutual
        /// TLS is refused (for example after an emergency revocation of the CA generation).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// With --watch: the `clusterid` sent with the token.
        #[arg(long)]
        cluster_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// The generations of a trust domain as a timeline: activated, retired, removed, and the
    /// next rotation.
    Status { trust_domain: String },
    /// Rotate now: a new intermediate under the same root becomes active at once, the current
    /// one is retired (still answering for its leaves until they expire).
    Rotate {
        trust_domain: String,
        /// `intermediate` (done at once) or `root` (published now, activated once converged).
        #[arg(long, default_value = "intermediate")]
        scope: String,
    },
    /// Emergency: revoke a CA generation. Its leaves answer `revoked` in OCSP, may not renew
    /// over mutual TLS (workloads fall back to their tokens), and its intermediate goes on the
    /// root-signed CRL. Revoking the active generation activates a fresh one first.
    Revoke {
        trust_domain: String,
        generation: i64,
        /// RFC 5280 reason name.
        #[arg(long, default_value = "cACompromise")]
        reason: String,
    },
    /// Plug-in CA: import an intermediate signed outside, with its key (Istio's `cacerts`
    /// files). Under the active root it is active at once; under a new root it is published now
    /// and activated once converged, as a root rotation.
    Import {
        trust_domain: String,
        /// A directory with ca-cert.pem, ca-key.pem, root-cert.pem and (optional)
        /// cert-chain.pem; the file options below override its files.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        #[arg(long)]
        ca_key: Option<PathBuf>,
        #[arg(long)]
        cert_chain: Option<PathBuf>,
        #[arg(long)]
        root_cert: Option<PathBuf>,
    },
    /// Plug-in CA: make the next intermediate's key in the CA (it never leaves) and print its
    /// CSR, to be signed as a CA outside and installed with `cactl ca install`. Asking again
    /// returns the same CSR unless --replace.
    Csr {
        trust_domain: String,
        #[arg(long)]
        replace: bool,
        /// Write the CSR here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Plug-in CA: install the certificate signed for the CSR of `cactl ca csr`.
    Install {
        trust_domain: String,
        /// The signed intermediate certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The intermediates above it up to the root, if any (PEM).
        #[arg(long)]
        chain: Option<PathBuf>,
        /// The root that signed the chain (PEM).
        #[arg(long)]
        root: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Forget a federated peer's stored bundle and fetch it again now, whatever its
    /// spiffe_sequence (admin role; audited).
    Reset { trust_domain: String },
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print a trust domain's bundle (`GET /v1/bundles/{td}`), as a SPIFFE bundle or PEM.
    Get {
        trust_domain: String,
        #[arg(long, default_value = "spiffe")]
        format: String,
    },
    /// Follow bundle changes over gRPC (`WatchBundles`); one line per update. Stops after
    /// --count updates when given.
    Watch {
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; the secret is printed once.
    Create {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// e.g. 30d; default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Newest events first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Fetch the whole log and check its hash chain. Exit code 0: intact; 1: broken.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Search certificates, newest first (follows pagination with --all).
    List {
        #[arg(long)]
        trust_domain: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        /// valid, revoked or expired.
        #[arg(long)]
        status: Option<String>,
        /// RFC 3339 or unix seconds.
        #[arg(long)]
        expiring_before: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// One certificate with its status (and PEM with --pem).
    Show {
        serial: String,
        #[arg(long)]
        pem: bool,
    },
    /// Revoke a certificate by serial (hex).
    Revoke {
        serial: String,
        /// RFC 5280 reason name: unspecified, keyCompromise, cACompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn, aACompromise.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DenyCommand {
    /// Deny a SPIFFE ID.
    Add {
        spiffe_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Also revoke its live certificates.
        #[arg(long)]
        revoke_existing: bool,
    },
    /// List denied identities.
    List,
    /// Lift a deny by its id.
    Remove { id: String },
}

impl Cli {
    /// An admin API client with the token read from `--admin-token-file`.
    pub fn admin_client(&self) -> anyhow::Result<AdminClient> {
        let token = std::fs::read_to_string(&self.admin_token_file).with_context(|| {
            format!(
                "cannot read admin token file {}",
                self.admin_token_file.display()
            )
        })?;
        // An https admin listener is verified with --ca-file when given (the CA's serving root).
        let roots = match (&self.ca_file, self.admin.starts_with("https://")) {
            (Some(file), true) => Some(
                std::fs::read(file)
                    .with_context(|| format!("cannot read --ca-file {}", file.display()))?,
            ),
            _ => None,
        };
        Ok(AdminClient::with_roots(
            &self.admin,
            &token,
            roots.as_deref(),
        )?)
    }

    /// How to reach the gRPC port: `--ca-file` (or `default_ca_file`) verifies the server.
    pub fn connect_options(
        &self,
        default_ca_file: Option<&Path>,
        client_identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> anyhow::Result<ConnectOptions> {
        let ca_file = self
            .ca_file
            .as_deref()
            .or(default_ca_file)
            .context("--ca-file (the root that verifies the CA's gRPC port) is required")?;
        Ok(ConnectOptions {
            address: self.grpc.clone(),
            ca_pem: files::read(ca_file)?,
            server_name: self.server_name.clone(),
            client_identity,
        })
    }
}

/// Why a `--ttl` does not parse.
#[derive(Debug, thiserror::Error)]
pub enum TtlError {
    #[error("--ttl is like 30m, 1h, 24h")]
    Number(#[source] std::num::ParseIntError),
    #[error("unknown --ttl unit {0}")]
    Unit(String),
    #[error("--ttl out of range")]
    Range,
}

/// Seconds of a `--ttl` like `90`, `30m`, `1h` or `2d`; 0 (the server's default) when absent.
pub fn ttl_seconds(ttl: Option<&str>) -> Result<i64, TtlError> {
    let Some(ttl) = ttl else { return Ok(0) };
    let (number, unit) = ttl.split_at(ttl.find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.len()));
    let number: i64 = number.parse().map_err(TtlError::Number)?;
    let unit = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(TtlError::Unit(other.to_owned())),
    };
    number.checked_mul(unit).ok_or(TtlError::Range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(ttl_seconds(None).unwrap(), 0);
        assert_eq!(ttl_seconds(Some("90")).unwrap(), 90);
        assert_eq!(ttl_seconds(Some("30m")).unwrap(), 1800);
        assert_eq!(ttl_seconds(Some("2h")).unwrap(), 7200);
        assert_eq!(ttl_seconds(Some("1d")).unwrap(), 86_400);
    }

    /// The messages `cactl` prints (`{:#}`: the error, then its causes).
    #[test]
    fn ttl_errors_read_as_before() {
        let chain = |ttl| {
            format!(
                "{:#}",
                anyhow::Error::from(ttl_seconds(Some(ttl)).unwrap_err())
            )
        };
        assert_eq!(
            chain("h"),
            "--ttl is like 30m, 1h, 24h: cannot parse integer from empty string"
        );
        assert_eq!(chain("1w"), "unknown --ttl unit w");
        assert_eq!(chain("9999999999999999d"), "--ttl out of range");
    }
}
