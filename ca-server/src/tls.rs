//! TLS for the gRPC port: a serving certificate the CA issues to itself (renewed before it
//! expires, swapped in without a restart) and an optional client-certificate verifier over our
//! own trust domains' roots. A client that presents a certificate that does not verify fails the
//! handshake; a client that presents none goes on to bearer-token authentication.

use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::enrollment::Ca;
use crate::issuance::serving;
use crate::store::CertificateRecord;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving trust domain {0} has no CA")]
    NoServingAuthority(String),
    #[error("serving certificate: {0}")]
    Issue(#[from] crate::issuance::Error),
    #[error("serving key: {0}")]
    Key(String),
    #[error("recording the serving certificate: {0}")]
    Store(#[from] crate::store::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// The current serving certificate; the resolver hands it to every handshake.
#[derive(Debug)]
pub struct ServingIdentity {
    current: RwLock<(Arc<CertifiedKey>, i64, i64)>,
}

impl ResolvesServerCert for ServingIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

impl ServingIdentity {
    /// Issues (and records) the first serving certificate.
    pub async fn new(ca: &Ca, now: OffsetDateTime) -> Result<Arc<ServingIdentity>, Error> {
        let (key, not_before, not_after) = issue_serving(ca, now).await?;
        Ok(Arc::new(ServingIdentity {
            current: RwLock::new((key, not_before, not_after)),
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
        let renewed = issue_serving(ca, now).await?;
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
) -> Result<(Arc<CertifiedKey>, i64, i64), Error> {
    let td = &ca.config.tls.serving_trust_domain;
    let authority = ca
        .authorities
        .get(td)
        .ok_or_else(|| Error::NoServingAuthority(td.to_string()))?;
    let td_config = ca
        .config
        .trust_domain(td)
        .ok_or_else(|| Error::NoServingAuthority(td.to_string()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Key(e.to_string()))?;
    let ttl = i64::try_from(td_config.max_ttl.as_secs()).unwrap_or(86_400);
    let cert = serving::issue(
        authority,
        &ca.config.tls.serving_dns_names,
        &rcgen::PublicKeyData::subject_public_key_info(&key),
        ttl,
        now,
    )?;
    // The serving certificate leaves the server in every handshake: record it first.
    ca.store
        .record_issued(&CertificateRecord {
            issuer_key_id: authority.issuer_key_id.clone(),
            serial: cert.serial.to_hex(),
            trust_domain: td.to_string(),
            spiffe_id: format!("dns:{}", ca.config.tls.serving_dns_names.join(",")),
            not_before: cert.not_before,
            not_after: cert.not_after,
            spki_sha256: String::new(),
            der: cert.der.clone(),
            requested_by: "server".to_owned(),
            request_id: String::new(),
            api: "serving".to_owned(),
            created_at: now.unix_timestamp(),
            revoked_at: None,
            revocation_reason: None,
        })
        .await?;
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)?;
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(authority.intermediate_der.clone()),
    ];
    tracing::info!(not_after = cert.not_after, names = ?ca.config.tls.serving_dns_names, "serving certificate issued");
    ca.metrics.cert_expiry(
        td.as_str(),
        "serving",
        &cert.serial.to_hex(),
        cert.not_after,
    );
    Ok((
        Arc::new(CertifiedKey::new(chain, signing_key)),
        cert.not_before,
        cert.not_after,
    ))
}

/// The rustls server configuration of the gRPC port.
pub fn server_config(
    ca: &Ca,
    serving: Arc<ServingIdentity>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for authority in ca.authorities.iter() {
        roots
            .add(CertificateDer::from(authority.root_der.clone()))
            .map_err(|e| Error::Verifier(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
