//! TLS for the gRPC port: a serving certificate the CA issues to itself (renewed before it
//! expires, swapped in without a restart) and an optional client-certificate verifier over the
//! roots our trust domains' workloads trust now (following root rotations). A client that presents a certificate that does not verify fails the
//! handshake; a client that presents none goes on to bearer-token authentication.

use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::ca::Ca;
use crate::issuance::serving;
use crate::store::CertificateRecord;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving trust domain {0} has no CA")]
    NoServingAuthority(String),
    #[error("serving certificate")]
    Issue(#[from] crate::issuance::Error),
    #[error("serving key: {0}")]
    Key(String),
    #[error("recording the serving certificate")]
    Store(#[from] crate::store::Error),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// The current serving certificate; the resolver hands it to every handshake.
#[derive(Debug)]
pub struct ServingIdentity {
    current: RwLock<(Arc<CertifiedKey>, i64, i64)>,
    /// The URI SAN this identity carries, if any (the public listener's SVID).
    uri: Option<String>,
}

impl ResolvesServerCert for ServingIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

impl ServingIdentity {
    /// Issues (and records) the first serving certificate.
    pub async fn new(ca: &Ca, now: OffsetDateTime) -> Result<Arc<ServingIdentity>, Error> {
        ServingIdentity::with_uri(ca, now, None).await
    }

    /// A serving identity that also carries a SPIFFE URI (`spiffe://<serving td>/ca`).
    pub async fn with_uri(
        ca: &Ca,
        now: OffsetDateTime,
        uri: Option<String>,
    ) -> Result<Arc<ServingIdentity>, Error> {
        let (key, not_before, not_after) = issue_serving(ca, now, uri.as_deref()).await?;
        Ok(Arc::new(ServingIdentity {
            current: RwLock::new((key, not_before, not_after)),
            uri,
        }))
    }

    /// Renews when two thirds of the lifetime have passed; returns whether it renewed.
    pub async fn renew_if_due(&self, ca: &Ca, now: OffsetDateTime) -> Result<bool, Error> {
        let (not_before, not_after) = match self.current.read() {
            Ok(c) => (c.1, c.2),
            Err(_) => (0, 0),
        };
        let due = not_before + (not_after - not_before) * 2 / 3;
        if now.unix_timestamp() < due {
            return Ok(false);
        }
        let renewed = issue_serving(ca, now, self.uri.as_deref()).await?;
        if let Ok(mut current) = self.current.write() {
            *current = renewed;
        }
        Ok(true)
    }

    /// notAfter of the certificate in use.
    pub fn not_after(&self) -> i64 {
        self.current.read().map(|c| c.2).unwrap_or(0)
    }
}

async fn issue_serving(
    ca: &Ca,
    now: OffsetDateTime,
    uri: Option<&str>,
) -> Result<(Arc<CertifiedKey>, i64, i64), Error> {
    let issued = issue_dns_certificate(
        ca,
        &ServingRequest {
            trust_domain: &ca.config().tls.serving_trust_domain,
            dns_names: &ca.config().tls.serving_dns_names,
            uri,
            ttl: None,
            api: "serving",
        },
        now,
    )
    .await?;
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pkcs8.clone()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)?;
    let chain = issued
        .chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    Ok((
        Arc::new(CertifiedKey::new(chain, signing_key)),
        issued.not_before,
        issued.not_after,
    ))
}

/// What a DNS serving certificate is for: names, optional URI, issuing trust domain, lifetime
/// (`None`: the trust domain's `max_ttl`) and the `api` it is recorded under.
#[derive(Debug, Clone, Copy)]
pub struct ServingRequest<'a> {
    pub trust_domain: &'a crate::spiffe::TrustDomain,
    pub dns_names: &'a [String],
    pub uri: Option<&'a str>,
    pub ttl: Option<std::time::Duration>,
    pub api: &'a str,
}

/// A recorded DNS serving certificate and the key made for it.
#[derive(Debug, Clone)]
pub struct IssuedServing {
    /// PKCS #8 DER of the private key (never logged).
    pub key_pkcs8: Vec<u8>,
    /// Leaf, then intermediate (DER).
    pub chain: Vec<Vec<u8>>,
    /// Every root a client of this certificate must trust, PEM.
    pub roots_pem: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Issues a serving certificate (the serving profile: DNS names, serverAuth) over a key made
/// here, through the same writer, check and record as every other certificate: it is recorded
/// before anyone sees it.
pub async fn issue_dns_certificate(
    ca: &Ca,
    request: &ServingRequest<'_>,
    now: OffsetDateTime,
) -> Result<IssuedServing, Error> {
    let td = request.trust_domain;
    let uri = request.uri;
    let authority = ca
        .authorities()
        .get(td)
        .cloned()
        .ok_or_else(|| Error::NoServingAuthority(td.to_string()))?;
    let td_config = ca
        .config()
        .trust_domain(td)
        .ok_or_else(|| Error::NoServingAuthority(td.to_string()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Key(e.to_string()))?;
    let cert = serving::issue(
        &authority.as_issuer(),
        request.dns_names,
        uri,
        &rcgen::PublicKeyData::subject_public_key_info(&key),
        request.ttl.unwrap_or(td_config.max_ttl),
        now,
    )?;
    // The serving certificate leaves the server in every handshake: record it first.
    ca.store()
        .record_issued(&CertificateRecord {
            issuer_key_id: authority.issuer_key_id.clone(),
            serial: cert.serial.to_hex(),
            trust_domain: td.to_string(),
            spiffe_id: uri
                .map(str::to_owned)
                .unwrap_or_else(|| format!("dns:{}", request.dns_names.join(","))),
            not_before: cert.not_before,
            not_after: cert.not_after,
            spki_sha256: String::new(),
            der: cert.der.clone(),
            requested_by: "server".to_owned(),
            request_id: String::new(),
            api: request.api.to_owned(),
            created_at: now.unix_timestamp(),
            revoked_at: None,
            revocation_reason: None,
        })
        .await?;
    tracing::info!(not_after = cert.not_after, names = ?request.dns_names, api = request.api, "serving certificate issued");
    ca.metrics().cert_expiry(
        td.as_str(),
        request.api,
        &cert.serial.to_hex(),
        cert.not_after,
    );
    Ok(IssuedServing {
        key_pkcs8: key.serialize_der(),
        chain: std::iter::once(cert.der)
            .chain(authority.chain_der.iter().cloned())
            .collect(),
        roots_pem: ca.roots_pem_for(&authority),
        serial: cert.serial.to_hex(),
        not_before: cert.not_before,
        not_after: cert.not_after,
    })
}

/// The rustls server configuration of the public listener (`tls.http_tls`): operator-provided
/// certificate files, or our own serving identity. No client certificates.
pub fn public_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    enable_resumption(&mut config)?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// ring with AES-128-GCM first and the server's order deciding (`ignore_client_order`).
/// AES-128-GCM is TLS 1.3's mandatory suite and matches the 128-bit strength of P-256 and
/// X25519; Go's servers prefer it on AES-NI hardware too. Some clients (rustls among them) list
/// AES-256-GCM-SHA384 first, whose SHA-384 key schedule cost about 7 % of the server's CPU in a
/// reconnect storm (`ca-bench grpc --reconnect`). Every default suite stays available.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Session resumption with stateless TLS 1.3 tickets (rustls' ring ticketer: a random key that
/// rotates every 6 hours and lives only in this process). A mesh restart reconnects every
/// workload at once; a resumed handshake skips the server's certificate signature and the
/// client-chain verification, and the server keeps no per-client cache (rustls' default is a
/// 256-entry in-memory cache, too small for a mesh). Resuming never skips authorization:
/// every request is authenticated again (`authn`), and an mTLS renewal re-checks the client
/// certificate's issuer, validity and revocation against the current state.
///
/// One ticket per handshake (rustls sends 2 by default): a reconnecting workload uses one
/// ticket per connection and gets a fresh one each time, as Go's servers do. Each ticket costs
/// the server an encryption and three `getrandom` calls, about 5 us of the ~360 us a new
/// connection costs in a reconnect storm (`ca-bench grpc --reconnect full`). A client that asks
/// for a number with RFC 9149's `ticket_request` gets up to 4; one that asks for none gets none.
fn enable_resumption(config: &mut rustls::ServerConfig) -> Result<(), Error> {
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.send_tls13_tickets = 1;
    config.max_tls13_tickets = 4;
    Ok(())
}

/// A fixed certificate from operator-provided PEM files (https_web).
pub fn certified_key_from_files(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<Arc<rustls::sign::SingleCertAndKey>, Error> {
    use rustls_pki_types::pem::PemObject;
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Key(format!("{}: {e}", cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| Error::Key(format!("{}: {e}", key_file.display())))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(rustls::sign::SingleCertAndKey::from(
        CertifiedKey::new(chain, signing_key),
    )))
}

/// Client certificates are verified against the roots every trust domain's workloads trust
/// *now*: they change with a root rotation (a published new root, a dropped old one), so the
/// webpki verifier is rebuilt whenever that set differs from the one it was built over. No
/// root hints are sent (clients present their certificate without them).
#[derive(Debug)]
struct CurrentRootsVerifier {
    ca: Ca,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<BuiltVerifier>,
}

/// A webpki client verifier and the roots (DER) it was built over.
type BuiltVerifier = (Vec<Vec<u8>>, Arc<dyn ClientCertVerifier>);

impl CurrentRootsVerifier {
    fn new(ca: &Ca, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self, Error> {
        let roots = current_roots(ca);
        let verifier = build_client_verifier(&roots, &provider)?;
        Ok(CurrentRootsVerifier {
            ca: ca.clone(),
            provider,
            current: RwLock::new((roots, verifier)),
        })
    }

    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots = current_roots(&self.ca);
        if let Ok(current) = self.current.read()
            && current.0 == roots
        {
            return Ok(current.1.clone());
        }
        let verifier = build_client_verifier(&roots, &self.provider)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if let Ok(mut current) = self.current.write() {
            *current = (roots, verifier.clone());
        }
        Ok(verifier)
    }
}

fn current_roots(ca: &Ca) -> Vec<Vec<u8>> {
    let authorities = ca.authorities();
    let mut roots = Vec::new();
    for authority in authorities.iter() {
        for root in authorities.trust_roots(&authority.trust_domain) {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    roots
}

fn build_client_verifier(
    roots: &[Vec<u8>],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.clone()))
            .map_err(|e| Error::Verifier(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Verifier(e.to_string()))
}

impl ClientCertVerifier for CurrentRootsVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls server configuration of the gRPC port.
pub fn server_config(
    ca: &Ca,
    serving: Arc<ServingIdentity>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = server_provider();
    let verifier: Arc<dyn ClientCertVerifier> =
        Arc::new(CurrentRootsVerifier::new(ca, provider.clone())?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    enable_resumption(&mut config)?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
