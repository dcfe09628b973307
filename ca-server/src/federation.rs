//! Fetching peers' trust bundles (SPIFFE federation): for each `[[federation]]` entry, on the
//! peer's refresh hint (default 5 min) with jitter, backing off after failures. The endpoint is
//! authenticated per profile:
//!
//! - `https_spiffe`: the server's certificate must chain (rustls-webpki, serverAuth) to the
//!   bootstrap bundle for the first fetch and to the last accepted bundle afterwards, and carry
//!   exactly the configured `endpoint_spiffe_id` as its URI SAN; host names are not checked.
//! - `https_web`: ordinary web PKI against `ca_file` (or the built-in web roots).
//!
//! An accepted bundle is stored (every replica and restart sees it) and served as the last good
//! copy. A refused one changes nothing; refusals are logged and counted. Refused: transport or
//! HTTP errors, a body over 1 MiB, non-JSON, a bundle map naming a trust domain twice, keys whose
//! certificate is not a CA, and a sequence lower than or equal to the stored one with different
//! content. A bundle without `spiffe_sequence` counts as sequence 0.

use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use time::OffsetDateTime;
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::Ca;
use crate::config::{FederationConfig, FederationProfile};
use crate::spiffe::SpiffeId;
use crate::store::BundleRecord;
use crate::trust::bundle::{self, BundleError};
use crate::trust::{Bundle, Source};

/// Why a fetch was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("trust anchors: {0}")]
    Anchors(String),
    #[error("fetch failed")]
    Transport(#[source] reqwest::Error),
    #[error("HTTP {0}")]
    Status(u16),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("spiffe_sequence {got} is not above the stored {stored}, but the content differs")]
    StaleSequence { got: u64, stored: u64 },
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
}

impl FetchError {
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Anchors(_) => "anchors",
            FetchError::Transport(_) => "transport",
            FetchError::Status(_) => "http_status",
            FetchError::Bundle(e) => e.reason(),
            FetchError::StaleSequence { .. } => "stale_sequence",
            FetchError::Store(_) => "store",
        }
    }
}

/// What a successful fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Updated { sequence: u64 },
    Unchanged { sequence: u64 },
}

/// Fetches one peer's bundle now, and stores it if it is acceptable.
pub async fn fetch_once(
    ca: &Ca,
    entry: &FederationConfig,
    now: i64,
) -> Result<FetchOutcome, FetchError> {
    fetch_with_hint(ca, entry, now)
        .await
        .map(|(outcome, _)| outcome)
}

/// [`fetch_once`], also returning the peer's `spiffe_refresh_hint` (seconds), if it sent one.
async fn fetch_with_hint(
    ca: &Ca,
    entry: &FederationConfig,
    now: i64,
) -> Result<(FetchOutcome, Option<u64>), FetchError> {
    let result = fetch_and_apply(ca, entry, now).await;
    let td = entry.trust_domain.as_str();
    match &result {
        Ok((outcome, hint)) => {
            let sequence = match outcome {
                FetchOutcome::Updated { sequence } | FetchOutcome::Unchanged { sequence } => {
                    *sequence
                }
            };
            ca.metrics().federation_success(td, sequence, now);
            // The interval the fetch loop will wait (as `run` bounds it): "stale" is 3 of them.
            let hint = hint
                .map(Duration::from_secs)
                .unwrap_or(entry.refresh_hint)
                .clamp(Duration::from_secs(10), Duration::from_secs(86_400));
            ca.metrics()
                .federation_refresh_hint
                .get_or_create(&crate::metrics::TrustDomainLabels {
                    trust_domain: td.to_owned(),
                })
                .set(i64::try_from(hint.as_secs()).unwrap_or(i64::MAX));
        }
        Err(e) => {
            tracing::warn!(trust_domain = td, reason = e.reason(), error = %crate::report::Chain(e), "federated bundle refused; keeping the last good one");
            ca.metrics().federation_error(td);
        }
    }
    result
}

async fn fetch_and_apply(
    ca: &Ca,
    entry: &FederationConfig,
    now: i64,
) -> Result<(FetchOutcome, Option<u64>), FetchError> {
    let client = http_client(ca, entry)?;
    let response = client
        .get(&entry.url)
        .send()
        .await
        .map_err(FetchError::Transport)?;
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|l| l > bundle::MAX_BUNDLE_BYTES as u64)
    {
        return Err(BundleError::TooLarge.into());
    }
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(FetchError::Transport)? {
        body.extend_from_slice(&chunk);
        if body.len() > bundle::MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge.into());
        }
    }
    let parsed = bundle::parse(&body, &entry.trust_domain)?;
    let hint = parsed.refresh_hint;
    let sequence = parsed.sequence.unwrap_or(0);
    let content = bundle::content_hash(&parsed.roots);
    if let Some(current) = ca.bundles().get(&entry.trust_domain) {
        if current.content_sha256 == content && sequence <= current.sequence {
            return Ok((
                FetchOutcome::Unchanged {
                    sequence: current.sequence,
                },
                hint,
            ));
        }
        if sequence <= current.sequence {
            return Err(FetchError::StaleSequence {
                got: sequence,
                stored: current.sequence,
            });
        }
    }
    let record = BundleRecord {
        trust_domain: entry.trust_domain.to_string(),
        sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
        content_sha256: content.clone(),
        roots_pem: parsed
            .roots
            .iter()
            .map(|der| crate::pem::certificate(der))
            .collect(),
        source: "federated".to_owned(),
        updated_at: now,
    };
    ca.store().put_federated_bundle(&record).await?;
    // Another replica may have stored a newer one; take whatever the store now holds.
    ca.reload_federated_bundles().await?;
    if ca
        .bundles()
        .get(&entry.trust_domain)
        .is_none_or(|b| b.sequence < sequence)
    {
        ca.bundles().set(
            entry.trust_domain.clone(),
            Bundle::new(sequence, parsed.roots, Source::Federated, content),
        );
    }
    tracing::info!(trust_domain = %entry.trust_domain, sequence, "federated bundle updated");
    Ok((FetchOutcome::Updated { sequence }, hint))
}

fn http_client(ca: &Ca, entry: &FederationConfig) -> Result<reqwest::Client, FetchError> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    let builder = match &entry.profile {
        FederationProfile::HttpsSpiffe {
            endpoint_spiffe_id,
            bootstrap_bundle_file,
        } => {
            let roots = match ca.bundles().get(&entry.trust_domain) {
                Some(bundle) if !bundle.roots.is_empty() => bundle.roots.clone(),
                _ => read_pem_certs(bootstrap_bundle_file)?,
            };
            let verifier = SpiffeServerVerifier::new(roots, endpoint_spiffe_id.clone())?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| FetchError::Anchors(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            builder.use_preconfigured_tls(config)
        }
        FederationProfile::HttpsWeb {
            ca_file: Some(file),
        } => {
            let mut builder = builder.tls_built_in_root_certs(false);
            for der in read_pem_certs(file)? {
                let certificate = reqwest::Certificate::from_der(&der)
                    .map_err(|e| FetchError::Anchors(e.to_string()))?;
                builder = builder.add_root_certificate(certificate);
            }
            builder
        }
        FederationProfile::HttpsWeb { ca_file: None } => builder,
    };
    builder
        .build()
        .map_err(|e| FetchError::Anchors(e.to_string()))
}

fn read_pem_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, FetchError> {
    let text =
        std::fs::read(path).map_err(|e| FetchError::Anchors(format!("{}: {e}", path.display())))?;
    let certs: Vec<Vec<u8>> = pem::parse_many(&text)
        .map_err(|e| FetchError::Anchors(format!("{}: {e}", path.display())))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(FetchError::Anchors(format!(
            "{}: no certificates",
            path.display()
        )));
    }
    Ok(certs)
}

/// The https_spiffe server check: chain to the peer's bundle, and the expected SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    expected: SpiffeId,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SpiffeServerVerifier {
    fn new(roots: Vec<Vec<u8>>, expected: SpiffeId) -> Result<SpiffeServerVerifier, FetchError> {
        let anchors = roots
            .into_iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der))
                    .map(|a| a.to_owned())
                    .map_err(|e| FetchError::Anchors(format!("{e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SpiffeServerVerifier {
            anchors,
            expected,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("endpoint certificate: {e:?}")))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::General(format!(
                "endpoint certificate does not chain to the bundle: {e:?}"
            ))
        })?;
        let (_, parsed) = X509Certificate::from_der(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let uris: Vec<&str> = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if uris != [self.expected.as_str()] {
            return Err(rustls::Error::General(format!(
                "endpoint SPIFFE ID is {uris:?}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
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

    fn verify_tls13_signature(
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Fetches one peer forever: on its refresh hint (the peer's `spiffe_refresh_hint` is not
/// trusted beyond [10 s, 1 day]), ±10 % jitter, exponential backoff from 5 s after failures.
pub async fn run(ca: Ca, entry: FederationConfig, mut shutdown: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let wait = match fetch_with_hint(&ca, &entry, now).await {
            Ok((_, hint)) => {
                failures = 0;
                hint.map(Duration::from_secs).unwrap_or(entry.refresh_hint)
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                (Duration::from_secs(5) * 2u32.saturating_pow(failures.min(8) - 1))
                    .min(entry.refresh_hint)
            }
        };
        let wait = jitter(wait.clamp(Duration::from_secs(10), Duration::from_secs(86_400)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let spread = if SystemRandom::new().fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0
    } else {
        0.5
    };
    base.mul_f64(0.9 + 0.2 * spread)
}
