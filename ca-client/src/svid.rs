//! The SVID source: a workload's X.509-SVID kept current, and rustls configurations that follow
//! it without a restart.
//!
//! [`SvidSource::start`] gets a first certificate (`ca.v1` `Issue`, with a service-account token
//! or an existing identity), then a background task keeps it renewed: at the server's
//! `renew_after` (about half-life), and at once whenever `WatchBundles` says a trust bundle
//! changed (a root rotation published or dropped a root, a federated peer's bundle moved): the
//! answer to that renewal carries the trust set the server wants this workload to hold. Renewal
//! uses the current certificate (mutual TLS) and falls back to the token (the path the CA
//! leaves open when a CA generation was revoked in an emergency); failures are retried with a
//! backoff (1 s doubling to 30 s) while the current certificate lasts. Each renewal uses a fresh
//! key pair, made in this process.
//!
//! [`SvidSource::server_config`] and [`SvidSource::client_config`] hand out rustls configs whose
//! certificate resolver and peer verifier read the current SVID and trust set on every
//! handshake: a peer is accepted if its chain verifies to the current trust set (webpki, with the
//! usage the side needs) and its one SPIFFE ID URI passes the caller's predicate. Server names
//! are not checked: SPIFFE peers are authenticated by identity.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ca_client::Error> {
//! use std::sync::Arc;
//! use ca_client::svid::{SvidSource, SvidSourceOptions};
//! let source = SvidSource::start(SvidSourceOptions {
//!     connect: ca_client::ConnectOptions {
//!         address: "mesh-ca.istio-system.svc:8443".to_owned(),
//!         ca_pem: std::fs::read("/var/run/secrets/istio/root-cert.pem")?,
//!         server_name: None,
//!         client_identity: None,
//!     },
//!     token_file: Some("/var/run/secrets/tokens/istio-token".into()),
//!     cluster_id: Some("Kubernetes".to_owned()),
//!     key_type: ca_client::KeyType::EcdsaP256,
//!     ttl_seconds: 0,
//!     follow_bundles: true,
//! })
//! .await?;
//! // Accept only the frontend of the same trust domain.
//! let allowed = Arc::new(|id: &str| id == "spiffe://cluster.local/ns/default/sa/frontend");
//! let server = source.server_config(allowed)?;
//! # let _ = server; Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::workload::{ConnectOptions, TokenAuth, WorkloadClient};
use crate::{Error, KeyType};

/// Where and how to get the SVID.
#[derive(Debug, Clone)]
pub struct SvidSourceOptions {
    /// The CA's gRPC port; `ca_pem` verifies it at first (later the current trust set does).
    /// A `client_identity` is used for the first issuance instead of a token.
    pub connect: ConnectOptions,
    /// A service-account token file, re-read at each use (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    pub cluster_id: Option<String>,
    pub key_type: KeyType,
    /// Requested lifetime; 0 for the trust domain's default.
    pub ttl_seconds: i64,
    /// Renew at once on every `WatchBundles` change (default in practice: true). Without it the
    /// trust set changes only at the half-life renewals, as istio-agent's does.
    pub follow_bundles: bool,
}

/// One X.509-SVID with the trust set it came with.
pub struct Svid {
    pub spiffe_id: String,
    /// Leaf first, then intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// Every root this workload trusts (DER).
    pub trust_roots: Vec<Vec<u8>>,
    pub not_before: i64,
    pub not_after: i64,
    pub renew_after: i64,
    certified: Arc<CertifiedKey>,
    /// PEM of the chain and the key, for renewal over mutual TLS.
    identity_pem: (Vec<u8>, Vec<u8>),
}

impl Svid {
    /// The chain (leaf, then intermediates) as PEM.
    pub fn chain_pem(&self) -> String {
        String::from_utf8_lossy(&self.identity_pem.0).into_owned()
    }

    /// The private key (PKCS #8) as PEM.
    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(String::from_utf8_lossy(&self.identity_pem.1).into_owned())
    }

    /// The trust set as PEM.
    pub fn roots_pem(&self) -> String {
        String::from_utf8_lossy(&pem_roots(&self.trust_roots)).into_owned()
    }
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("trust_roots", &self.trust_roots.len())
            .finish()
    }
}

/// The workload's current SVID, kept renewed by a background task (stopped on drop).
pub struct SvidSource {
    current: Arc<RwLock<Arc<Svid>>>,
    updates: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for SvidSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidSource")
            .field("current", &self.current())
            .finish()
    }
}

impl Drop for SvidSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which SPIFFE IDs a peer may have.
pub type AllowedIds = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl SvidSource {
    /// Gets the first SVID and starts keeping it current.
    pub async fn start(options: SvidSourceOptions) -> Result<SvidSource, Error> {
        let first = issue(&options, None, &options.connect.ca_pem).await?;
        let current = Arc::new(RwLock::new(Arc::new(first)));
        let (sender, updates) = watch::channel(0u64);
        let task = tokio::spawn(keep_current(options, current.clone(), sender));
        Ok(SvidSource {
            current,
            updates,
            task,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The current SVID.
    pub fn current(&self) -> Arc<Svid> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Counts renewals (a test or a caller can wait for the next one).
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.updates.clone()
    }

    /// A rustls server config: our current SVID, client certificates required and accepted
    /// when they chain to the current trust set and their SPIFFE ID passes `allowed`.
    pub fn server_config(&self, allowed: AllowedIds) -> Result<Arc<rustls::ServerConfig>, Error> {
        let peer = Arc::new(PeerVerifier {
            current: self.current.clone(),
            allowed,
            provider: self.provider.clone(),
        });
        let config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Argument(e.to_string()))?
            .with_client_cert_verifier(peer)
            .with_cert_resolver(Arc::new(Resolver(self.current.clone())));
        Ok(Arc::new(config))
    }

    /// A rustls client config: our current SVID as the client certificate, the server accepted
    /// when it chains to the current trust set and its SPIFFE ID passes `allowed`.
    pub fn client_config(&self, allowed: AllowedIds) -> Result<Arc<rustls::ClientConfig>, Error> {
        let peer = Arc::new(PeerVerifier {
            current: self.current.clone(),
            allowed,
            provider: self.provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Argument(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(peer)
            .with_client_cert_resolver(Arc::new(Resolver(self.current.clone())));
        Ok(Arc::new(config))
    }
}

/// Renews at `renew_after` and on every bundle change, until aborted.
async fn keep_current(
    options: SvidSourceOptions,
    current: Arc<RwLock<Arc<Svid>>>,
    updates: watch::Sender<u64>,
) {
    let read = |current: &Arc<RwLock<Arc<Svid>>>| {
        current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    };
    let mut backoff = Duration::from_secs(1);
    let mut bundles: Option<tonic::Streaming<ca_proto::ca_v1::GetBundlesResponse>> = None;
    let mut first_bundle = true;
    loop {
        let svid = read(&current);
        if bundles.is_none() && options.follow_bundles {
            bundles = watch_bundles(&options, &svid).await.ok();
            first_bundle = true;
        }
        let wait = Duration::from_secs(
            u64::try_from(svid.renew_after - unix_now())
                .unwrap_or(0)
                .max(1),
        );
        let bundle_changed = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            next = async {
                match bundles.as_mut() {
                    Some(stream) => stream.message().await,
                    None => std::future::pending().await,
                }
            } => match next {
                // The stream's first message is the current state, not a change.
                Ok(Some(_)) if first_bundle => { first_bundle = false; continue; }
                Ok(Some(_)) => true,
                _ => { bundles = None; continue; }
            },
        };
        let trust_pem = pem_roots(&svid.trust_roots);
        match issue(&options, Some(&svid), &trust_pem).await {
            Ok(next) => {
                if let Ok(mut slot) = current.write() {
                    *slot = Arc::new(next);
                }
                updates.send_modify(|n| *n += 1);
                backoff = Duration::from_secs(1);
                if bundle_changed {
                    // Re-open the watch with the new identity (the trust set may have moved).
                    bundles = None;
                }
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn watch_bundles(
    options: &SvidSourceOptions,
    svid: &Svid,
) -> Result<tonic::Streaming<ca_proto::ca_v1::GetBundlesResponse>, Error> {
    let client = WorkloadClient::connect(&ConnectOptions {
        address: options.connect.address.clone(),
        ca_pem: pem_roots(&svid.trust_roots),
        server_name: options.connect.server_name.clone(),
        client_identity: Some(svid.identity_pem.clone()),
    })
    .await?;
    client.watch_bundles().await
}

/// One issuance: over mutual TLS with `current` when there is one, else (or when that fails)
/// with the token; the server is verified with `trust_pem`.
async fn issue(
    options: &SvidSourceOptions,
    current: Option<&Svid>,
    trust_pem: &[u8],
) -> Result<Svid, Error> {
    let key = crate::csr::generate(options.key_type, None)?;
    let mut last_error = None;
    let identity = current
        .map(|svid| svid.identity_pem.clone())
        .or_else(|| options.connect.client_identity.clone());
    if let Some(identity) = identity {
        let attempt = async {
            let client = WorkloadClient::connect(&ConnectOptions {
                address: options.connect.address.clone(),
                ca_pem: trust_pem.to_vec(),
                server_name: options.connect.server_name.clone(),
                client_identity: Some(identity),
            })
            .await?;
            client
                .issue(&key.csr_der, options.ttl_seconds, &TokenAuth::default())
                .await
        };
        match attempt.await {
            Ok(response) => return svid_from(response, &key.key_pem),
            Err(e) => last_error = Some(e),
        }
    }
    if let Some(path) = &options.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let client = WorkloadClient::connect(&ConnectOptions {
            address: options.connect.address.clone(),
            ca_pem: trust_pem.to_vec(),
            server_name: options.connect.server_name.clone(),
            client_identity: None,
        })
        .await?;
        let response = client
            .issue(
                &key.csr_der,
                options.ttl_seconds,
                &TokenAuth {
                    token: Some(token.trim().to_owned()),
                    cluster_id: options.cluster_id.clone(),
                },
            )
            .await?;
        return svid_from(response, &key.key_pem);
    }
    Err(last_error.unwrap_or_else(|| {
        Error::Argument("no way to authenticate: give a token file or an identity".to_owned())
    }))
}

fn svid_from(response: ca_proto::ca_v1::IssueResponse, key_pem: &str) -> Result<Svid, Error> {
    if response.chain.is_empty() || response.trust_bundle.is_empty() {
        return Err(Error::Argument(
            "the CA answered without a chain or trust bundle".to_owned(),
        ));
    }
    let key_der = pem::parse(key_pem)
        .map_err(|e| Error::Argument(e.to_string()))?
        .into_contents();
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        PrivatePkcs8KeyDer::from(key_der),
    ))
    .map_err(|e| Error::Argument(e.to_string()))?;
    let certified = Arc::new(CertifiedKey::new(
        response
            .chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect(),
        signing_key,
    ));
    Ok(Svid {
        spiffe_id: response.spiffe_id,
        identity_pem: (pem_roots(&response.chain), key_pem.as_bytes().to_vec()),
        chain: response.chain,
        trust_roots: response.trust_bundle,
        not_before: response.not_before,
        not_after: response.not_after,
        renew_after: response.renew_after,
        certified,
    })
}

fn pem_roots(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.iter()
        .map(|der| {
            pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Hands the current SVID to every handshake, either side.
#[derive(Debug)]
struct Resolver(Arc<RwLock<Arc<Svid>>>);

impl Resolver {
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|svid| svid.certified.clone())
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a peer's chain to the current trust set and its SPIFFE ID.
struct PeerVerifier {
    current: Arc<RwLock<Arc<Svid>>>,
    allowed: AllowedIds,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerVerifier").finish()
    }
}

impl PeerVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let roots = self
            .current
            .read()
            .map(|svid| svid.trust_roots.clone())
            .map_err(|_| rustls::Error::General("SVID state poisoned".to_owned()))?;
        let root_ders: Vec<CertificateDer<'static>> =
            roots.into_iter().map(CertificateDer::from).collect();
        let anchors: Vec<_> = root_ders
            .iter()
            .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("peer chain: {e}")))?;
        let id = spiffe_id(end_entity.as_ref())
            .ok_or_else(|| rustls::Error::General("peer has no single SPIFFE ID".to_owned()))?;
        if !(self.allowed)(&id) {
            return Err(rustls::Error::General(format!("peer {id} is not allowed")));
        }
        Ok(())
    }
}

/// The handshake-signature checks both sides share (the provider's algorithms).
impl PeerVerifier {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The one SPIFFE ID URI SAN of a certificate.
fn spiffe_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    match san.value.general_names.as_slice() {
        [GeneralName::URI(uri)] if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
