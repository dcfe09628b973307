//! Configuration: `RawConfig` mirrors the TOML file (unknown keys rejected, every key defaulted as
//! SPEC section 3 says), `Config::from_raw` turns it into typed, validated values once. Nothing
//! downstream re-validates.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::KeyAlgorithm;
use crate::spiffe::{SpiffeId, TrustDomain};

/// A configuration problem; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The validated configuration of one `ca-server` process.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    /// A file holding the database URL (a mounted Secret), read at start; when set it takes the
    /// place of `database_url`, which must then be absent.
    pub database_url_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub kek_file: PathBuf,
    pub bootstrap_token_file: PathBuf,
    pub trust_domains: Vec<TrustDomainConfig>,
    pub clusters: Vec<ClusterConfig>,
    pub federation: Vec<FederationConfig>,
    /// Store connection pool size (Postgres); sized to the expected concurrency.
    pub db_max_connections: u32,
    /// Issuances admitted at once; more wait up to 100 ms, then get RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// How long a gRPC connection lives (`grpc_max_connection_age`, default 30 minutes, as
    /// istiod's): then the server sends GOAWAY, lets the requests in flight finish and closes
    /// it, and the client reconnects. That spreads long-lived clients (ztunnel, istio-agent)
    /// over the replicas again, and gives back what a connection's HTTP/2 buffers grew to in
    /// its busiest moment, which they keep until it closes.
    pub grpc_max_connection_age: Duration,
    /// `text` (default) or `json`; `--log-format` overrides it.
    pub log_format: LogFormat,
    /// istiod's serving certificate, when `[istiod]` is present.
    pub istiod: Option<IstiodConfig>,
}

/// `[istiod]`: the CA issues istiod's xDS serving certificate and writes it to files.
#[derive(Debug, Clone)]
pub struct IstiodConfig {
    /// Whose CA signs it (default `tls.serving_trust_domain`).
    pub trust_domain: TrustDomain,
    /// DNS names (default `istiod.istio-system.svc`; add the revisions',
    /// `istiod-<rev>.istio-system.svc`).
    pub dns_names: Vec<String>,
    /// Lifetime (default the trust domain's `max_ttl`); renewed at two thirds.
    pub ttl: Option<Duration>,
    /// Where `tls.crt`, `tls.key` and `ca.crt` are written (optional when `secret_cluster` is
    /// set; at least one of the two is required).
    pub output_dir: Option<PathBuf>,
    /// The `[[clusters]]` entry (it needs `[clusters.kubernetes]`) whose API server receives the
    /// certificate as the Secret `secret_namespace/secret_name` (`tls.crt`, `tls.key`, `ca.crt`).
    pub secret_cluster: Option<String>,
    /// Default `istio-system`.
    pub secret_namespace: String,
    /// Default `istiod-tls`.
    pub secret_name: String,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Base URL of the public listener as clients reach it (for CRL/OCSP URLs in certificates).
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub serving_dns_names: Vec<String>,
    pub serving_trust_domain: TrustDomain,
    /// Serve the public listener over TLS: with operator-provided files (https_web) or, without
    /// them, with our own certificate carrying `spiffe://<serving td>/ca` (https_spiffe).
    pub http_tls: bool,
    pub http_cert_file: Option<PathBuf>,
    pub http_key_file: Option<PathBuf>,
    /// Serve the admin listener over TLS: with operator-provided files, or without them with the
    /// gRPC port's own serving certificate (`serving_dns_names`, our serving root).
    pub admin_tls: bool,
    pub admin_cert_file: Option<PathBuf>,
    pub admin_key_file: Option<PathBuf>,
    /// The operator's explicit consent to a plain-HTTP admin listener off loopback (bearer
    /// tokens then cross the network in clear). Without it such a config is refused.
    pub admin_plaintext_off_loopback: bool,
}

/// One trust domain this CA issues for.
#[derive(Debug, Clone)]
pub struct TrustDomainConfig {
    pub name: TrustDomain,
    pub key_algorithm: KeyAlgorithm,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Requests for less are raised to it (logged, `ca_ttl_raised_total`): clients that renew at
    /// a fraction of the lifetime would otherwise renew in a loop. Default 10 minutes.
    pub min_ttl: Duration,
    /// Per-identity issuance rate limit (token bucket): a burst of this many, then
    /// `identity_rate_per_second`; 0 turns it off. Generous by default (1000, 10/s): it stops
    /// a client renewing in a loop, not a deployment of many replicas starting at once.
    pub identity_burst: u32,
    pub identity_rate_per_second: f64,
    pub root_ttl: Duration,
    pub intermediate_ttl: Duration,
    pub refresh_hint: Duration,
    pub federates_with: Vec<TrustDomain>,
    /// How long a CRL is valid (nextUpdate - thisUpdate); it is rebuilt at half that.
    pub crl_validity: Duration,
    /// Root rotation: the longest a published new root waits for convergence before it is
    /// activated anyway (default twice `max_ttl`: by then every old leaf has expired).
    pub root_activation_max_wait: Duration,
    /// Plug-in CA at the first start: a directory with Istio's `cacerts` files (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, optional `cert-chain.pem`) that becomes generation 1
    /// instead of a root made here. Read only while the trust domain has no generation; later
    /// changes go through `cactl ca import`.
    pub cacerts_dir: Option<PathBuf>,
}

/// A Kubernetes cluster whose service-account tokens may call the gRPC API.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub trust_domain: TrustDomain,
    pub issuer: String,
    /// Where token-checking keys come from; `None` only when `auth = "tokenreview"`.
    pub jwks: Option<JwksSource>,
    /// How tokens are checked: against the JWKS, by the API server's TokenReview, or both.
    pub auth: ClusterAuth,
    pub audiences: Vec<String>,
    /// `<namespace>/<service account>` entries that may send `ImpersonatedIdentity`.
    pub trusted_node_accounts: Vec<String>,
    /// PEM roots that verify `jwks_url` (for example the API server's CA,
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`); default the web roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// The shortest time between two JWKS reloads an unknown `kid` may trigger (default 60 s;
    /// anyone can present an unknown `kid`).
    pub jwks_reload_min_interval: Duration,
    /// The cluster's Kubernetes API (`[clusters.kubernetes]`); every feature using it is off
    /// unless turned on there.
    pub kubernetes: Option<KubernetesConfig>,
}

/// `auth` of a `[[clusters]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterAuth {
    /// The token's signature against the cluster's JWKS (no API call).
    #[default]
    Jwks,
    /// The API server's TokenReview (sees deleted pods and revoked tokens; one API call per
    /// token, cached for `token_review_cache_ttl`).
    Tokenreview,
    /// Both must accept the token.
    Both,
}

impl ClusterAuth {
    pub fn uses_jwks(self) -> bool {
        matches!(self, ClusterAuth::Jwks | ClusterAuth::Both)
    }
    pub fn uses_token_review(self) -> bool {
        matches!(self, ClusterAuth::Tokenreview | ClusterAuth::Both)
    }
}

/// `[clusters.kubernetes]`: how to reach a cluster's API server and which features use it.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Default `https://kubernetes.default.svc` (in-cluster).
    pub api_server: String,
    /// Roots that verify the API server; default the in-cluster service-account `ca.crt`.
    pub ca_file: PathBuf,
    /// Our bearer token, re-read as the kubelet rotates it; default the in-cluster one.
    pub token_file: PathBuf,
    /// Honour `ImpersonatedIdentity` only for a running pod of that service account on the
    /// caller's node (a watch of the cluster's pods). Default false.
    pub node_authorization: bool,
    /// Take the JWKS from the API server's OIDC discovery instead of `jwks_file`/`jwks_url`.
    pub jwks_discovery: bool,
    /// How long a positive TokenReview answer is reused for the same token (default 60 s).
    pub token_review_cache_ttl: Duration,
    /// Sign `certificates.k8s.io/v1` CSRs addressed to this signer, when set.
    pub csr_signer: Option<CsrSignerConfig>,
    /// Keep the root ConfigMap current in every (selected) namespace, when set.
    pub root_configmap: Option<RootConfigMapConfig>,
    /// Where the Lease that elects one replica for the writers (signer, ConfigMaps, Secret)
    /// lives (default `istio-system`).
    pub lease_namespace: String,
}

/// The Kubernetes CSR signer of one cluster.
#[derive(Debug, Clone)]
pub struct CsrSignerConfig {
    /// `spec.signerName` we answer for, e.g. `mesh-ca.io/spiffe`.
    pub signer_name: String,
    /// `spec.username`s whose CSRs we sign (default istiod's,
    /// `system:serviceaccount:istio-system:istiod`).
    pub allowed_requesters: Vec<String>,
}

/// The root ConfigMap writer of one cluster.
#[derive(Debug, Clone)]
pub struct RootConfigMapConfig {
    /// Default `istio-ca-root-cert` (key `root-cert.pem`).
    pub name: String,
    /// A label selector (`k=v,k2`) choosing namespaces; default every namespace.
    pub namespace_selector: Option<String>,
}

/// A remote trust domain whose bundle we fetch.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    pub trust_domain: TrustDomain,
    pub url: String,
    pub profile: FederationProfile,
    /// How often to fetch when the peer gives no `spiffe_refresh_hint` (default 5m).
    pub refresh_hint: Duration,
}

/// How the bundle endpoint is authenticated (SPIFFE federation profiles).
#[derive(Debug, Clone)]
pub enum FederationProfile {
    /// The endpoint presents an SVID `endpoint_spiffe_id`, chaining to the bootstrap bundle for
    /// the first fetch and to the last fetched bundle afterwards.
    HttpsSpiffe {
        endpoint_spiffe_id: SpiffeId,
        bootstrap_bundle_file: PathBuf,
    },
    /// Ordinary web PKI: `ca_file` roots, or the built-in web roots when absent.
    HttpsWeb { ca_file: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
    /// The cluster's API server: `/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        Config::from_raw(raw)
    }

    /// The database URL: `database_url`, or the trimmed content of `database_url_file`.
    pub fn resolve_database_url(&self) -> Result<String, Error> {
        let Some(path) = &self.database_url_file else {
            return Ok(self.database_url.clone());
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let url = text.trim();
        if url.is_empty() {
            return Err(invalid("database_url_file", "the file is empty"));
        }
        Ok(url.to_owned())
    }

    /// The embedded default: SQLite under `ca-data/`, trust domain `cluster.local`, loopback.
    pub fn embedded_default() -> Config {
        // The raw defaults are valid by construction; `from_raw` cannot fail on them.
        Config::from_raw(RawConfig::default()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Every listener on 127.0.0.1:0 and everything under `data_dir`; used by tests and tools.
    pub fn ephemeral(data_dir: &Path, database_url: &str) -> Config {
        let mut config = Config::embedded_default();
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.listen.grpc = any;
        config.listen.http = any;
        config.listen.admin = any;
        config.data_dir = data_dir.to_owned();
        config.kek_file = data_dir.join("kek");
        config.bootstrap_token_file = data_dir.join("admin.token");
        config.database_url = database_url.to_owned();
        config
    }

    /// The configuration of one trust domain, if we issue for it.
    pub fn trust_domain(&self, name: &TrustDomain) -> Option<&TrustDomainConfig> {
        self.trust_domains.iter().find(|td| &td.name == name)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, Error> {
        let listen = Listen {
            grpc: parse_addr("listen.grpc", &raw.listen.grpc)?,
            http: parse_addr("listen.http", &raw.listen.http)?,
            admin: parse_addr("listen.admin", &raw.listen.admin)?,
            public_url: raw
                .listen
                .public_url
                .map(|url| public_url(&url))
                .transpose()?,
        };
        if raw.database_url.is_some() && raw.database_url_file.is_some() {
            return Err(invalid(
                "database_url_file",
                "give database_url or database_url_file, not both",
            ));
        }
        if raw.trust_domains.is_empty() {
            return Err(invalid(
                "trust_domains",
                "at least one trust domain is required",
            ));
        }
        let mut trust_domains = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, td) in raw.trust_domains.into_iter().enumerate() {
            let key = |field: &str| format!("trust_domains[{i}].{field}");
            let name = TrustDomain::parse(&td.name).map_err(|e| invalid(&key("name"), e))?;
            if !seen.insert(name.clone()) {
                return Err(invalid(&key("name"), "duplicate trust domain"));
            }
            let key_algorithm = KeyAlgorithm::parse(&td.key_algorithm).ok_or_else(|| {
                invalid(
                    &key("key_algorithm"),
                    "expected ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096",
                )
            })?;
            let default_ttl = parse_duration(&key("default_ttl"), &td.default_ttl)?;
            let max_ttl = parse_duration(&key("max_ttl"), &td.max_ttl)?;
            let min_ttl = parse_duration(&key("min_ttl"), &td.min_ttl)?;
            if min_ttl > default_ttl {
                return Err(invalid(&key("min_ttl"), "must not exceed default_ttl"));
            }
            if !(td.identity_rate_per_second.is_finite() && td.identity_rate_per_second > 0.0) {
                return Err(invalid(
                    &key("identity_rate_per_second"),
                    "must be a positive number",
                ));
            }
            let root_ttl = parse_duration(&key("root_ttl"), &td.root_ttl)?;
            let intermediate_ttl = parse_duration(&key("intermediate_ttl"), &td.intermediate_ttl)?;
            let refresh_hint = parse_duration(&key("refresh_hint"), &td.refresh_hint)?;
            let crl_validity = parse_duration(&key("crl_validity"), &td.crl_validity)?;
            if crl_validity < Duration::from_secs(120) {
                return Err(invalid(&key("crl_validity"), "must be at least 2m"));
            }
            if default_ttl > max_ttl {
                return Err(invalid(&key("default_ttl"), "must not exceed max_ttl"));
            }
            if max_ttl >= intermediate_ttl {
                return Err(invalid(
                    &key("max_ttl"),
                    "must be shorter than intermediate_ttl",
                ));
            }
            if intermediate_ttl > root_ttl {
                return Err(invalid(
                    &key("intermediate_ttl"),
                    "must not exceed root_ttl",
                ));
            }
            let federates_with = td
                .federates_with
                .iter()
                .map(|f| TrustDomain::parse(f).map_err(|e| invalid(&key("federates_with"), e)))
                .collect::<Result<Vec<_>, _>>()?;
            let root_activation_max_wait = match &td.root_activation_max_wait {
                Some(text) => parse_duration(&key("root_activation_max_wait"), text)?,
                None => max_ttl * 2,
            };
            if root_activation_max_wait < refresh_hint * 3 {
                return Err(invalid(
                    &key("root_activation_max_wait"),
                    "must be at least 3 x refresh_hint (federated peers must see the new root)",
                ));
            }
            trust_domains.push(TrustDomainConfig {
                name,
                key_algorithm,
                default_ttl,
                max_ttl,
                min_ttl,
                identity_burst: td.identity_burst,
                identity_rate_per_second: td.identity_rate_per_second,
                root_ttl,
                intermediate_ttl,
                refresh_hint,
                federates_with,
                crl_validity,
                root_activation_max_wait,
                cacerts_dir: td.cacerts_dir.clone(),
            });
        }
        let serving_trust_domain = TrustDomain::parse(&raw.tls.serving_trust_domain)
            .map_err(|e| invalid("tls.serving_trust_domain", e))?;
        if !trust_domains
            .iter()
            .any(|td| td.name == serving_trust_domain)
        {
            return Err(invalid(
                "tls.serving_trust_domain",
                "must name one of [[trust_domains]]",
            ));
        }
        check_dns_names("tls.serving_dns_names", &raw.tls.serving_dns_names)?;
        let mut clusters = Vec::new();
        for (i, c) in raw.clusters.into_iter().enumerate() {
            let key = |field: &str| format!("clusters[{i}].{field}");
            if c.name.is_empty() {
                return Err(invalid(&key("name"), "must not be empty"));
            }
            if clusters
                .iter()
                .any(|known: &ClusterConfig| known.name == c.name)
            {
                return Err(invalid(
                    &key("name"),
                    format!("cluster {:?} is listed twice", c.name),
                ));
            }
            let trust_domain = TrustDomain::parse(&c.trust_domain)
                .map_err(|e| invalid(&key("trust_domain"), e))?;
            if !trust_domains.iter().any(|td| td.name == trust_domain) {
                return Err(invalid(
                    &key("trust_domain"),
                    "must name one of [[trust_domains]]",
                ));
            }
            let kubernetes = c
                .kubernetes
                .map(|k| kubernetes_config(&key("kubernetes"), k))
                .transpose()?;
            let discovery = kubernetes.as_ref().is_some_and(|k| k.jwks_discovery);
            let jwks = match (c.jwks_file, c.jwks_url, discovery) {
                (Some(file), None, false) => Some(JwksSource::File(file)),
                (None, Some(url), false) => {
                    let parsed = reqwest::Url::parse(&url)
                        .map_err(|e| invalid(&key("jwks_url"), e.to_string()))?;
                    if parsed.scheme() != "https" || parsed.host_str().is_none() {
                        return Err(invalid(
                            &key("jwks_url"),
                            "must be an https:// URL (the JWKS decides which tokens we trust)",
                        ));
                    }
                    Some(JwksSource::Url(url))
                }
                (None, None, true) => Some(JwksSource::Discovery),
                (None, None, false) if c.auth == ClusterAuth::Tokenreview => None,
                _ => {
                    return Err(invalid(
                        &key("jwks_file"),
                        "exactly one of jwks_file, jwks_url and kubernetes.jwks_discovery = true \
                         is required (none with auth = \"tokenreview\")",
                    ));
                }
            };
            if c.auth.uses_token_review() && kubernetes.is_none() {
                return Err(invalid(
                    &key("auth"),
                    "tokenreview needs the cluster's API server: add [clusters.kubernetes]",
                ));
            }
            if c.auth.uses_token_review() && c.audiences.is_empty() {
                return Err(invalid(
                    &key("audiences"),
                    "TokenReview without audiences accepts any service-account token",
                ));
            }
            if c.issuer.is_empty() {
                return Err(invalid(&key("issuer"), "must not be empty"));
            }
            for account in &c.trusted_node_accounts {
                let ok = account
                    .split_once('/')
                    .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'));
                if !ok {
                    return Err(invalid(
                        &key("trusted_node_accounts"),
                        "entries are `<namespace>/<service account>`",
                    ));
                }
            }
            if c.jwks_ca_file.is_some() && !matches!(jwks, Some(JwksSource::Url(_))) {
                return Err(invalid(
                    &key("jwks_ca_file"),
                    "verifies jwks_url; there is no jwks_url",
                ));
            }
            let jwks_reload_min_interval = match &c.jwks_reload_min_interval {
                Some(text) => parse_duration(&key("jwks_reload_min_interval"), text)?,
                None => Duration::from_secs(60),
            };
            clusters.push(ClusterConfig {
                name: c.name,
                trust_domain,
                issuer: c.issuer,
                jwks,
                auth: c.auth,
                audiences: c.audiences,
                trusted_node_accounts: c.trusted_node_accounts,
                jwks_ca_file: c.jwks_ca_file,
                jwks_reload_min_interval,
                kubernetes,
            });
        }
        let mut federation = Vec::new();
        for (i, f) in raw.federation.into_iter().enumerate() {
            let key = |field: &str| format!("federation[{i}].{field}");
            let trust_domain = TrustDomain::parse(&f.trust_domain)
                .map_err(|e| invalid(&key("trust_domain"), e))?;
            if trust_domains.iter().any(|td| td.name == trust_domain) {
                return Err(invalid(
                    &key("trust_domain"),
                    "is one of our own trust domains",
                ));
            }
            if !f.url.starts_with("https://") {
                return Err(invalid(&key("url"), "bundle endpoints are https://"));
            }
            let profile = match f.profile.as_str() {
                "https_spiffe" => {
                    let id = f.endpoint_spiffe_id.ok_or_else(|| {
                        invalid(&key("endpoint_spiffe_id"), "required for https_spiffe")
                    })?;
                    let endpoint_spiffe_id =
                        SpiffeId::parse(&id).map_err(|e| invalid(&key("endpoint_spiffe_id"), e))?;
                    let bootstrap_bundle_file = f.bootstrap_bundle_file.ok_or_else(|| {
                        invalid(
                            &key("bootstrap_bundle_file"),
                            "required for https_spiffe (no trust on first use)",
                        )
                    })?;
                    FederationProfile::HttpsSpiffe {
                        endpoint_spiffe_id,
                        bootstrap_bundle_file,
                    }
                }
                "https_web" => FederationProfile::HttpsWeb { ca_file: f.ca_file },
                _ => return Err(invalid(&key("profile"), "https_spiffe or https_web")),
            };
            let refresh_hint = match &f.refresh_hint {
                Some(text) => parse_duration(&key("refresh_hint"), text)?,
                None => Duration::from_secs(300),
            };
            federation.push(FederationConfig {
                trust_domain,
                url: f.url,
                profile,
                refresh_hint,
            });
        }
        for td in &trust_domains {
            for peer in &td.federates_with {
                if !federation.iter().any(|f| &f.trust_domain == peer) {
                    return Err(invalid(
                        "trust_domains.federates_with",
                        format!("{peer} has no [[federation]] entry"),
                    ));
                }
            }
        }
        if raw.tls.http_cert_file.is_some() != raw.tls.http_key_file.is_some() {
            return Err(invalid(
                "tls.http_cert_file",
                "http_cert_file and http_key_file go together",
            ));
        }
        if raw.tls.admin_cert_file.is_some() != raw.tls.admin_key_file.is_some() {
            return Err(invalid(
                "tls.admin_cert_file",
                "admin_cert_file and admin_key_file go together",
            ));
        }
        if raw.tls.admin_cert_file.is_some() && !raw.tls.admin_tls {
            return Err(invalid(
                "tls.admin_cert_file",
                "set tls.admin_tls = true to serve the admin listener with these files",
            ));
        }
        if !listen.admin.ip().is_loopback()
            && !raw.tls.admin_tls
            && !raw.tls.admin_plaintext_off_loopback
        {
            return Err(invalid(
                "listen.admin",
                "the admin listener binds off loopback without TLS (bearer tokens would cross \
                 the network in clear): set tls.admin_tls = true, or accept it explicitly with \
                 tls.admin_plaintext_off_loopback = true",
            ));
        }
        let istiod = match raw.istiod {
            None => None,
            Some(i) => {
                let trust_domain = match &i.trust_domain {
                    Some(name) => {
                        TrustDomain::parse(name).map_err(|e| invalid("istiod.trust_domain", e))?
                    }
                    None => serving_trust_domain.clone(),
                };
                if !trust_domains.iter().any(|td| td.name == trust_domain) {
                    return Err(invalid(
                        "istiod.trust_domain",
                        "must name one of [[trust_domains]]",
                    ));
                }
                let dns_names = i
                    .dns_names
                    .unwrap_or_else(|| vec!["istiod.istio-system.svc".to_owned()]);
                check_dns_names("istiod.dns_names", &dns_names)?;
                let ttl = i
                    .ttl
                    .as_deref()
                    .map(|t| parse_duration("istiod.ttl", t))
                    .transpose()?;
                if i.output_dir.is_none() && i.secret_cluster.is_none() {
                    return Err(invalid(
                        "istiod.output_dir",
                        "give output_dir, secret_cluster or both",
                    ));
                }
                if let Some(name) = &i.secret_cluster
                    && !clusters
                        .iter()
                        .any(|c: &ClusterConfig| c.name == *name && c.kubernetes.is_some())
                {
                    return Err(invalid(
                        "istiod.secret_cluster",
                        "must name a [[clusters]] entry that has [clusters.kubernetes]",
                    ));
                }
                let secret_namespace = i
                    .secret_namespace
                    .unwrap_or_else(|| "istio-system".to_owned());
                let secret_name = i.secret_name.unwrap_or_else(|| "istiod-tls".to_owned());
                check_kubernetes_name("istiod.secret_namespace", &secret_namespace)?;
                check_kubernetes_name("istiod.secret_name", &secret_name)?;
                Some(IstiodConfig {
                    trust_domain,
                    dns_names,
                    ttl,
                    output_dir: i.output_dir,
                    secret_cluster: i.secret_cluster,
                    secret_namespace,
                    secret_name,
                })
            }
        };
        if raw.max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        if raw.db_max_connections == 0 {
            return Err(invalid("db_max_connections", "must be at least 1"));
        }
        let grpc_max_connection_age =
            parse_duration("grpc_max_connection_age", &raw.grpc_max_connection_age)?;
        Ok(Config {
            database_url: raw
                .database_url
                .unwrap_or_else(|| "sqlite://ca-data/ca.db".to_owned()),
            database_url_file: raw.database_url_file,
            data_dir: raw.data_dir,
            listen,
            tls: Tls {
                serving_dns_names: raw.tls.serving_dns_names,
                serving_trust_domain,
                http_tls: raw.tls.http_tls,
                http_cert_file: raw.tls.http_cert_file,
                http_key_file: raw.tls.http_key_file,
                admin_tls: raw.tls.admin_tls,
                admin_cert_file: raw.tls.admin_cert_file,
                admin_key_file: raw.tls.admin_key_file,
                admin_plaintext_off_loopback: raw.tls.admin_plaintext_off_loopback,
            },
            kek_file: raw.keys.kek_file,
            bootstrap_token_file: raw.admin.bootstrap_token_file,
            trust_domains,
            clusters,
            federation,
            db_max_connections: raw.db_max_connections,
            max_in_flight: raw.max_in_flight,
            grpc_max_connection_age,
            log_format: raw.log_format,
            istiod,
        })
    }
}

/// Parses `30s`, `5m`, `24h`, `30d`, `10y` (a year is 365 days). Zero is rejected.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, Error> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| invalid(key, "duration needs a unit: s, m, h, d or y"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}` is not a duration like 30s, 5m, 24h, 30d, 10y"),
        )
    })?;
    let unit_seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(invalid(
                key,
                format!("unknown unit `{unit}`; use s, m, h, d or y"),
            ));
        }
    };
    let seconds = number
        .checked_mul(unit_seconds)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(|| invalid(key, "duration out of range (at most 100y)"))?;
    if seconds == 0 {
        return Err(invalid(key, "duration must be positive"));
    }
    Ok(Duration::from_secs(seconds))
}

/// `listen.public_url`: an http(s) base URL with a host and nothing that could not go verbatim
/// into a certificate's CRL and OCSP URLs (no userinfo, query, fragment, spaces, quotes,
/// control characters or percent-escapes). A trailing `/` is dropped.
fn public_url(url: &str) -> Result<String, Error> {
    let bad = |why: &str| invalid("listen.public_url", why);
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/[]".contains(c);
    if !url.chars().all(allowed) {
        return Err(bad(
            "only letters, digits and - . _ ~ : / [ ] (no spaces, quotes, ?, #, @ or %)",
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("must be an http:// or https:// URL with a host"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// DNS names for a serving certificate: at least one, each a lower-case DNS name (labels of
/// a-z, 0-9 and '-'), as Kubernetes names Services.
fn check_dns_names(key: &str, names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(invalid(key, "at least one name is required"));
    }
    if let Some(bad) = names.iter().find(|n| !crate::spiffe::is_dns_subdomain(n)) {
        return Err(invalid(
            key,
            format!(
                "{:?} is not a lower-case DNS name",
                crate::untrusted::bounded(bad, 64)
            ),
        ));
    }
    Ok(())
}

/// A Kubernetes object or namespace name: a lower-case DNS subdomain.
fn check_kubernetes_name(key: &str, name: &str) -> Result<(), Error> {
    if !crate::spiffe::is_dns_subdomain(name) {
        return Err(invalid(
            key,
            format!(
                "{:?} is not a Kubernetes name (lower-case DNS subdomain)",
                crate::untrusted::bounded(name, 64)
            ),
        ));
    }
    Ok(())
}

/// `[clusters.kubernetes]`, with the in-cluster defaults.
fn kubernetes_config(prefix: &str, raw: RawKubernetes) -> Result<KubernetesConfig, Error> {
    let key = |field: &str| format!("{prefix}.{field}");
    let api_server = raw
        .api_server
        .unwrap_or_else(|| "https://kubernetes.default.svc".to_owned());
    let parsed =
        reqwest::Url::parse(&api_server).map_err(|e| invalid(&key("api_server"), e.to_string()))?;
    if parsed.scheme() != "https" || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            &key("api_server"),
            "must be an https:// URL (our token and the cluster's answers cross it)",
        ));
    }
    const IN_CLUSTER: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let token_review_cache_ttl = match &raw.token_review_cache_ttl {
        Some(text) => parse_duration(&key("token_review_cache_ttl"), text)?,
        None => Duration::from_secs(60),
    };
    if token_review_cache_ttl > Duration::from_secs(600) {
        return Err(invalid(
            &key("token_review_cache_ttl"),
            "at most 10m (a deleted pod's token keeps working that long)",
        ));
    }
    let csr_signer = match raw.csr_signer_name {
        None => {
            if raw.csr_allowed_requesters.is_some() {
                return Err(invalid(
                    &key("csr_allowed_requesters"),
                    "needs csr_signer_name",
                ));
            }
            None
        }
        Some(signer_name) => {
            // `<domain>/<path>`, as Kubernetes requires of signer names.
            let valid = signer_name.split_once('/').is_some_and(|(domain, path)| {
                crate::spiffe::is_dns_subdomain(domain)
                    && !path.is_empty()
                    && path.len() <= 253
                    && path
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c))
            });
            if !valid {
                return Err(invalid(
                    &key("csr_signer_name"),
                    "must be `<dns domain>/<name>`, e.g. mesh-ca.io/spiffe",
                ));
            }
            let allowed_requesters = raw
                .csr_allowed_requesters
                .unwrap_or_else(|| vec!["system:serviceaccount:istio-system:istiod".to_owned()]);
            if allowed_requesters.is_empty() || allowed_requesters.iter().any(String::is_empty) {
                return Err(invalid(
                    &key("csr_allowed_requesters"),
                    "list at least one requester (a CSR's spec.username), none empty",
                ));
            }
            Some(CsrSignerConfig {
                signer_name,
                allowed_requesters,
            })
        }
    };
    let root_configmap = if raw.root_configmap {
        let name = raw
            .root_configmap_name
            .unwrap_or_else(|| "istio-ca-root-cert".to_owned());
        check_kubernetes_name(&key("root_configmap_name"), &name)?;
        let namespace_selector = raw
            .root_configmap_namespace_selector
            .filter(|s| !s.trim().is_empty());
        if let Some(selector) = &namespace_selector
            && !selector
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/=!,".contains(c))
        {
            return Err(invalid(
                &key("root_configmap_namespace_selector"),
                "a label selector like `istio-injection=enabled,team`",
            ));
        }
        Some(RootConfigMapConfig {
            name,
            namespace_selector,
        })
    } else {
        if raw.root_configmap_name.is_some() || raw.root_configmap_namespace_selector.is_some() {
            return Err(invalid(
                &key("root_configmap"),
                "root_configmap_name and root_configmap_namespace_selector need root_configmap = true",
            ));
        }
        None
    };
    let lease_namespace = raw
        .lease_namespace
        .unwrap_or_else(|| "istio-system".to_owned());
    check_kubernetes_name(&key("lease_namespace"), &lease_namespace)?;
    Ok(KubernetesConfig {
        api_server: api_server.trim_end_matches('/').to_owned(),
        ca_file: raw
            .ca_file
            .unwrap_or_else(|| PathBuf::from(format!("{IN_CLUSTER}/ca.crt"))),
        token_file: raw
            .token_file
            .unwrap_or_else(|| PathBuf::from(format!("{IN_CLUSTER}/token"))),
        node_authorization: raw.node_authorization,
        jwks_discovery: raw.jwks_discovery,
        token_review_cache_ttl,
        csr_signer,
        root_configmap,
        lease_namespace,
    })
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, Error> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}` is not an address like 127.0.0.1:8080"),
        )
    })
}

fn invalid(key: &str, message: impl ToString) -> Error {
    Error::Invalid {
        key: key.to_owned(),
        message: message.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    log_format: LogFormat,
    data_dir: PathBuf,
    db_max_connections: u32,
    max_in_flight: usize,
    grpc_max_connection_age: String,
    listen: RawListen,
    tls: RawTls,
    keys: RawKeys,
    admin: RawAdmin,
    trust_domains: Vec<RawTrustDomain>,
    clusters: Vec<RawCluster>,
    federation: Vec<RawFederation>,
    istiod: Option<RawIstiod>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIstiod {
    trust_domain: Option<String>,
    dns_names: Option<Vec<String>>,
    ttl: Option<String>,
    output_dir: Option<PathBuf>,
    secret_cluster: Option<String>,
    secret_namespace: Option<String>,
    secret_name: Option<String>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            database_url: None,
            database_url_file: None,
            log_format: LogFormat::Text,
            data_dir: PathBuf::from("ca-data"),
            db_max_connections: 16,
            max_in_flight: 256,
            grpc_max_connection_age: "30m".to_owned(),
            listen: RawListen::default(),
            tls: RawTls::default(),
            keys: RawKeys::default(),
            admin: RawAdmin::default(),
            trust_domains: vec![RawTrustDomain {
                name: "cluster.local".to_owned(),
                ..RawTrustDomain::default()
            }],
            clusters: Vec::new(),
            federation: Vec::new(),
            istiod: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    trust_domain: String,
    url: String,
    profile: String,
    endpoint_spiffe_id: Option<String>,
    bootstrap_bundle_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    refresh_hint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    grpc: String,
    http: String,
    admin: String,
    public_url: Option<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            grpc: "127.0.0.1:8443".to_owned(),
            http: "127.0.0.1:8080".to_owned(),
            admin: "127.0.0.1:9090".to_owned(),
            public_url: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    serving_dns_names: Vec<String>,
    serving_trust_domain: String,
    http_tls: bool,
    http_cert_file: Option<PathBuf>,
    http_key_file: Option<PathBuf>,
    admin_tls: bool,
    admin_cert_file: Option<PathBuf>,
    admin_key_file: Option<PathBuf>,
    admin_plaintext_off_loopback: bool,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            serving_dns_names: vec!["localhost".to_owned(), "ca.istio-system.svc".to_owned()],
            serving_trust_domain: "cluster.local".to_owned(),
            http_tls: false,
            http_cert_file: None,
            http_key_file: None,
            admin_tls: false,
            admin_cert_file: None,
            admin_key_file: None,
            admin_plaintext_off_loopback: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    kek_file: PathBuf,
}

impl Default for RawKeys {
    fn default() -> Self {
        RawKeys {
            kek_file: PathBuf::from("ca-data/kek"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    bootstrap_token_file: PathBuf,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            bootstrap_token_file: PathBuf::from("ca-data/admin.token"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTrustDomain {
    name: String,
    key_algorithm: String,
    default_ttl: String,
    max_ttl: String,
    min_ttl: String,
    identity_burst: u32,
    identity_rate_per_second: f64,
    root_ttl: String,
    intermediate_ttl: String,
    refresh_hint: String,
    federates_with: Vec<String>,
    crl_validity: String,
    root_activation_max_wait: Option<String>,
    cacerts_dir: Option<PathBuf>,
}

impl Default for RawTrustDomain {
    fn default() -> Self {
        RawTrustDomain {
            name: String::new(),
            key_algorithm: "ecdsa-p256".to_owned(),
            default_ttl: "24h".to_owned(),
            max_ttl: "24h".to_owned(),
            min_ttl: "10m".to_owned(),
            identity_burst: 1000,
            identity_rate_per_second: 10.0,
            root_ttl: "10y".to_owned(),
            intermediate_ttl: "1y".to_owned(),
            refresh_hint: "5m".to_owned(),
            federates_with: Vec::new(),
            crl_validity: "24h".to_owned(),
            root_activation_max_wait: None,
            cacerts_dir: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    trust_domain: String,
    issuer: String,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    #[serde(default = "default_audiences")]
    audiences: Vec<String>,
    #[serde(default)]
    trusted_node_accounts: Vec<String>,
    jwks_ca_file: Option<PathBuf>,
    jwks_reload_min_interval: Option<String>,
    #[serde(default)]
    auth: ClusterAuth,
    kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    api_server: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    node_authorization: bool,
    #[serde(default)]
    jwks_discovery: bool,
    token_review_cache_ttl: Option<String>,
    csr_signer_name: Option<String>,
    csr_allowed_requesters: Option<Vec<String>>,
    #[serde(default)]
    root_configmap: bool,
    root_configmap_name: Option<String>,
    root_configmap_namespace_selector: Option<String>,
    lease_namespace: Option<String>,
}

fn default_audiences() -> Vec<String> {
    vec!["istio-ca".to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.database_url, "sqlite://ca-data/ca.db");
        assert_eq!(config.trust_domains.len(), 1);
        assert_eq!(config.trust_domains[0].name.as_str(), "cluster.local");
        assert_eq!(
            config.trust_domains[0].default_ttl,
            Duration::from_secs(86_400)
        );
        assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:8443");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("databse_url = \"x\"").unwrap_err();
        assert!(err.to_string().contains("databse_url"), "{err}");
        let err = Config::from_toml("[listen]\ngrcp = \"1.2.3.4:1\"").unwrap_err();
        assert!(err.to_string().contains("grcp"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[[trust_domains]]\nname = \"td\"\nmax_ttl = \"1w\"",
                "trust_domains[0].max_ttl",
            ),
            (
                "[[trust_domains]]\nname = \"Bad_TD\"",
                "trust_domains[0].name",
            ),
            (
                "[[trust_domains]]\nname = \"td\"\nkey_algorithm = \"ed25519\"",
                "trust_domains[0].key_algorithm",
            ),
            ("[listen]\nadmin = \"nowhere\"", "listen.admin"),
            (
                "[[trust_domains]]\nname = \"td\"\ndefault_ttl = \"48h\"",
                "trust_domains[0].default_ttl",
            ),
            (
                "[tls]\nserving_trust_domain = \"other.td\"",
                "tls.serving_trust_domain",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("k", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("k", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("k", "30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("k", "10y").unwrap(),
            Duration::from_secs(3650 * 86_400)
        );
        for bad in [
            "",
            "5",
            "h",
            "0s",
            "-1h",
            "1.5h",
            "99999999999999999999y",
            "101y",
        ] {
            assert!(parse_duration("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_url_is_a_plain_base_url() {
        let with = |url: &str| Config::from_toml(&format!("[listen]\npublic_url = {url:?}\n"));
        assert_eq!(
            with("https://ca.example:8080/")
                .unwrap()
                .listen
                .public_url
                .as_deref(),
            Some("https://ca.example:8080")
        );
        assert_eq!(
            with("http://ca.example/pki")
                .unwrap()
                .listen
                .public_url
                .as_deref(),
            Some("http://ca.example/pki")
        );
        for bad in [
            "ftp://ca.example",
            "https://ca example",
            "https://ca.example/\"x",
            "https://ca.example/a b",
            "https://user:pw@ca.example",
            "https://ca.example/?q=1",
            "https://ca.example/#f",
            "https://",
            "https://ca.example/\n",
            "https://ca.example/%20",
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("listen.public_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn serving_names_are_dns_names() {
        for (section, key) in [("tls", "serving_dns_names"), ("istiod", "dns_names")] {
            let with = |names: &str| {
                let extra = if section == "istiod" {
                    "output_dir = \"/x\"\n"
                } else {
                    ""
                };
                Config::from_toml(&format!("[{section}]\n{key} = {names}\n{extra}"))
            };
            with("[\"istiod.istio-system.svc\", \"localhost\"]").unwrap();
            for bad in [
                "[]",
                "[\"\"]",
                "[\"a..b\"]",
                "[\"Upper.svc\"]",
                "[\"a b\"]",
                "[\"*.svc\"]",
                "[\"x\\ny\"]",
            ] {
                let err = with(bad).unwrap_err().to_string();
                assert!(err.contains(&format!("{section}.{key}")), "{bad}: {err}");
                assert!(!err.contains('\n'), "{err}");
            }
        }
    }

    #[test]
    fn a_cluster_name_is_listed_once() {
        let one = "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"https://k\"\njwks_file = \"/x\"\n";
        Config::from_toml(one).unwrap();
        let err = Config::from_toml(&format!("{one}{one}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clusters[1].name"), "{err}");
    }

    #[test]
    fn jwks_urls_are_https() {
        let base = "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"https://k\"\n";
        Config::from_toml(&format!("{base}jwks_url = \"https://k/openid/v1/jwks\"")).unwrap();
        for bad in ["http://k/jwks", "file:///etc/jwks", "k/jwks", "https://"] {
            let err = Config::from_toml(&format!("{base}jwks_url = {bad:?}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("jwks_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn clusters_need_exactly_one_jwks_source() {
        let base = "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"https://k\"\n";
        assert!(Config::from_toml(base).is_err());
        let ok = Config::from_toml(&format!("{base}jwks_file = \"/x\"")).unwrap();
        assert_eq!(ok.clusters[0].audiences, vec!["istio-ca".to_owned()]);
        assert!(
            Config::from_toml(&format!(
                "{base}jwks_file = \"/x\"\njwks_url = \"https://x\""
            ))
            .is_err()
        );
    }

    #[test]
    fn kubernetes_features_are_off_by_default_and_checked_when_on() {
        let base = "[[clusters]]\nname = \"Kubernetes\"\ntrust_domain = \"cluster.local\"\nissuer = \"https://k\"\n";
        let plain = Config::from_toml(&format!("{base}jwks_file = \"/x\"")).unwrap();
        assert!(plain.clusters[0].kubernetes.is_none());
        assert_eq!(plain.clusters[0].auth, ClusterAuth::Jwks);

        // Defaults: in-cluster paths, every feature off.
        let on = Config::from_toml(&format!(
            "{base}jwks_file = \"/x\"\n[clusters.kubernetes]\n"
        ))
        .unwrap();
        let k = on.clusters[0].kubernetes.as_ref().unwrap();
        assert_eq!(k.api_server, "https://kubernetes.default.svc");
        assert!(k.ca_file.ends_with("serviceaccount/ca.crt"));
        assert!(!k.node_authorization && !k.jwks_discovery);
        assert!(k.csr_signer.is_none() && k.root_configmap.is_none());
        assert_eq!(k.lease_namespace, "istio-system");

        // TokenReview alone needs no JWKS but needs the API server and audiences.
        let review = Config::from_toml(&format!(
            "{base}auth = \"tokenreview\"\n[clusters.kubernetes]\n"
        ))
        .unwrap();
        assert!(review.clusters[0].jwks.is_none());
        let message = |toml: String| Config::from_toml(&toml).unwrap_err().to_string();
        assert!(message(format!("{base}auth = \"tokenreview\"\n")).contains("clusters[0].auth"));
        assert!(
            message(format!(
                "{base}auth = \"tokenreview\"\naudiences = []\n[clusters.kubernetes]\n"
            ))
            .contains("clusters[0].audiences")
        );
        // `both` still needs a JWKS source; discovery is one, and excludes the others.
        assert!(
            Config::from_toml(&format!("{base}auth = \"both\"\n[clusters.kubernetes]\n")).is_err()
        );
        let discovered = Config::from_toml(&format!(
            "{base}auth = \"both\"\n[clusters.kubernetes]\njwks_discovery = true\n"
        ))
        .unwrap();
        assert!(matches!(
            discovered.clusters[0].jwks,
            Some(JwksSource::Discovery)
        ));
        assert!(
            Config::from_toml(&format!(
                "{base}jwks_file = \"/x\"\n[clusters.kubernetes]\njwks_discovery = true\n"
            ))
            .is_err()
        );

        // Bad values name their key.
        for (extra, key) in [
            ("api_server = \"http://k\"", "kubernetes.api_server"),
            (
                "csr_signer_name = \"nodomain\"",
                "kubernetes.csr_signer_name",
            ),
            (
                "csr_signer_name = \"Bad_Domain/x\"",
                "kubernetes.csr_signer_name",
            ),
            (
                "csr_allowed_requesters = [\"x\"]",
                "kubernetes.csr_allowed_requesters",
            ),
            (
                "csr_signer_name = \"mesh-ca.io/spiffe\"\ncsr_allowed_requesters = []",
                "kubernetes.csr_allowed_requesters",
            ),
            ("root_configmap_name = \"x\"", "kubernetes.root_configmap"),
            (
                "root_configmap = true\nroot_configmap_name = \"Bad Name\"",
                "kubernetes.root_configmap_name",
            ),
            (
                "root_configmap = true\nroot_configmap_namespace_selector = \"a in (b)\"",
                "kubernetes.root_configmap_namespace_selector",
            ),
            ("lease_namespace = \"../x\"", "kubernetes.lease_namespace"),
            (
                "token_review_cache_ttl = \"1h\"",
                "kubernetes.token_review_cache_ttl",
            ),
            ("unknown_key = 1", "unknown"),
        ] {
            let text = message(format!(
                "{base}jwks_file = \"/x\"\n[clusters.kubernetes]\n{extra}\n"
            ));
            assert!(text.contains(key), "{extra}: {text}");
        }
        let signer = Config::from_toml(&format!(
            "{base}jwks_file = \"/x\"\n[clusters.kubernetes]\ncsr_signer_name = \"mesh-ca.io/spiffe\"\n"
        ))
        .unwrap();
        let signer = signer.clusters[0]
            .kubernetes
            .as_ref()
            .unwrap()
            .csr_signer
            .as_ref()
            .unwrap();
        assert_eq!(
            signer.allowed_requesters,
            vec!["system:serviceaccount:istio-system:istiod".to_owned()]
        );
    }

    #[test]
    fn istiod_secret_needs_a_cluster_with_the_kubernetes_api() {
        let cluster = "[[clusters]]\nname = \"c1\"\ntrust_domain = \"cluster.local\"\nissuer = \"https://k\"\njwks_file = \"/x\"\n";
        let message = |toml: String| Config::from_toml(&toml).unwrap_err().to_string();
        assert!(message(format!("{cluster}[istiod]\n")).contains("istiod.output_dir"));
        assert!(
            message(format!("{cluster}[istiod]\nsecret_cluster = \"c1\"\n"))
                .contains("istiod.secret_cluster")
        );
        let ok = Config::from_toml(&format!(
            "{cluster}[clusters.kubernetes]\n[istiod]\nsecret_cluster = \"c1\"\n"
        ))
        .unwrap();
        let istiod = ok.istiod.unwrap();
        assert_eq!(istiod.secret_namespace, "istio-system");
        assert_eq!(istiod.secret_name, "istiod-tls");
        assert!(istiod.output_dir.is_none());
    }
}
