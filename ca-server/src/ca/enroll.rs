//! Enrollment: the one path from an authorised request to a recorded certificate, shared by every
//! front door (Istio gRPC, `ca.v1` gRPC, admin HTTP). Order: parse and check the CSR, sign, self-check,
//! **commit the record**, and only then hand the certificate out. If the store fails, the
//! certificate is dropped and the caller gets `Unavailable` (SPEC invariant 1).

use std::time::Duration;

use time::OffsetDateTime;

use crate::ca::Ca;
use crate::issuance::{self, IssuedCert, TtlPolicy};
use crate::metrics::{IssuedLabels, TrustDomainLabels};
use crate::spiffe::SpiffeId;
use crate::store::{self, CertificateRecord};

/// Why an enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Issuance(#[from] issuance::Error),
    #[error("no CA for trust domain {0}")]
    UnknownTrustDomain(String),
    /// Too many issuances in flight; the caller should retry (RESOURCE_EXHAUSTED).
    #[error("overloaded")]
    Overloaded,
    /// The identity is one the CA itself uses (`spiffe://<td>/ca`): never issued on any path.
    #[error("identity {0} is reserved for the CA itself")]
    Reserved(String),
    /// The identity was issued too many certificates just now (per-identity rate limit).
    #[error("too many certificates for {identity}; retry in {retry_after} s")]
    RateLimited { identity: String, retry_after: u64 },
    /// The identity is on the deny list.
    #[error("identity {0} is denied")]
    Denied(String),
    /// The record could not be committed; no certificate was handed out.
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

impl Error {
    /// The `reason` label of `ca_issuance_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Issuance(e) => e.reason(),
            Error::UnknownTrustDomain(_) => "unknown_trust_domain",
            Error::Denied(_) => "denied",
            Error::Reserved(_) => "reserved_identity",
            Error::RateLimited { .. } => "rate_limited",
            Error::Overloaded => "overloaded",
            Error::Store(_) => "store_unavailable",
        }
    }
}

/// Which front door a request came through (recorded with the certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Admin,
    Istio,
    CaV1,
    /// A Kubernetes CertificateSigningRequest (`csr_signer`).
    KubernetesCsr,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Admin => "admin",
            Api::Istio => "istio",
            Api::CaV1 => "ca.v1",
            Api::KubernetesCsr => "k8s-csr",
        }
    }
}

/// An authorised request: the identity is already decided by authentication and policy.
#[derive(Debug)]
pub struct Request<'a> {
    pub csr: &'a [u8],
    pub spiffe_id: &'a SpiffeId,
    pub ttl: Option<Duration>,
    /// Who asked (token name, service account, certificate identity), for the record.
    pub requested_by: &'a str,
    pub request_id: &'a str,
    pub api: Api,
    /// How the caller was authenticated (`token`, `mtls`, `admin_token`), for logs and audit.
    pub authenticated_by: &'static str,
    /// The identity was asked for by a node agent on a workload's behalf.
    pub impersonated: bool,
}

/// A recorded certificate with what the caller needs to use it.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub cert: IssuedCert,
    /// The issuing intermediate and (plug-in CA) the intermediates above it, DER; the chain is
    /// `[cert, chain...]`.
    pub chain_der: Vec<Vec<u8>>,
    /// The same as PEM, one certificate each.
    pub chain_pem: Vec<String>,
    /// Every root the workload must trust (DER).
    pub roots: Vec<Vec<u8>>,
    /// The same, concatenated PEM.
    pub roots_pem: String,
    pub issuer_key_id: String,
}

impl Ca {
    /// Issues and records a certificate for an already authorised identity, and counts it.
    pub async fn enroll(
        &self,
        request: &Request<'_>,
        now: OffsetDateTime,
    ) -> Result<Enrolled, Error> {
        let started = std::time::Instant::now();
        // Metric labels take configured values only: a request for a trust domain we do not
        // serve counts under `other`, so callers cannot mint label series.
        let trust_domain = self.metric_trust_domain(request.spiffe_id.trust_domain());
        let permit = self.admission.admit().await;
        let result = if permit.is_none() {
            self.metrics.shed.inc();
            Err(Error::Overloaded)
        } else if self.is_reserved(request.spiffe_id) {
            Err(Error::Reserved(request.spiffe_id.to_string()))
        } else if self.deny_list.is_denied(request.spiffe_id) {
            Err(Error::Denied(request.spiffe_id.to_string()))
        } else {
            self.enroll_uncounted_checked(request, now).await
        };
        drop(permit);
        match &result {
            Ok(enrolled) => {
                self.metrics
                    .issued
                    .get_or_create(&IssuedLabels {
                        trust_domain: trust_domain.to_owned(),
                        api: request.api.as_str().to_owned(),
                    })
                    .inc();
                self.metrics
                    .issuance_duration
                    .get_or_create(&IssuedLabels {
                        trust_domain: trust_domain.to_owned(),
                        api: request.api.as_str().to_owned(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                if enrolled.cert.ttl_raised {
                    self.metrics
                        .ttl_raised
                        .get_or_create(&TrustDomainLabels {
                            trust_domain: trust_domain.to_owned(),
                        })
                        .inc();
                }
                if enrolled.cert.ttl_clamped {
                    self.metrics
                        .ttl_clamped
                        .get_or_create(&TrustDomainLabels {
                            trust_domain: trust_domain.to_owned(),
                        })
                        .inc();
                }
            }
            Err(e) => {
                self.metrics.issuance_failure(trust_domain, e.reason());
                if let Error::Store(_) = e {
                    self.metrics.store_error("record_issued");
                }
            }
        }
        result
    }

    async fn enroll_uncounted_checked(
        &self,
        request: &Request<'_>,
        now: OffsetDateTime,
    ) -> Result<Enrolled, Error> {
        let authority = self.authority_for(request.spiffe_id)?;
        let td_config = self
            .config
            .trust_domain(request.spiffe_id.trust_domain())
            .ok_or_else(|| {
                Error::UnknownTrustDomain(request.spiffe_id.trust_domain().to_string())
            })?;
        let policy = TtlPolicy {
            default_ttl: td_config.default_ttl,
            max_ttl: td_config.max_ttl,
            min_ttl: td_config.min_ttl,
        };
        let csr = issuance::csr::parse(request.csr)?;
        let limit = super::rate::Limit {
            burst: td_config.identity_burst,
            per_second: td_config.identity_rate_per_second,
        };
        let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        self.rate
            .take(request.spiffe_id.as_str(), limit, now_ms)
            .map_err(|retry_after| Error::RateLimited {
                identity: request.spiffe_id.to_string(),
                retry_after,
            })?;
        // A serial collision (the unique key on (issuer, serial) said no) means: sign again with
        // a fresh serial. Anything else from the store fails the request.
        let mut attempts = 0;
        let cert = loop {
            attempts += 1;
            let cert = issuance::issue(
                &authority.as_issuer(),
                policy,
                &csr,
                request.spiffe_id,
                request.ttl,
                now,
            )?;
            let record = CertificateRecord {
                issuer_key_id: authority.issuer_key_id.clone(),
                serial: cert.serial.to_hex(),
                trust_domain: authority.trust_domain.to_string(),
                spiffe_id: request.spiffe_id.to_string(),
                not_before: cert.not_before,
                not_after: cert.not_after,
                spki_sha256: csr.spki_sha256(),
                der: cert.der.clone(),
                requested_by: request.requested_by.to_owned(),
                request_id: request.request_id.to_owned(),
                api: request.api.as_str().to_owned(),
                created_at: now.unix_timestamp(),
                revoked_at: None,
                revocation_reason: None,
            };
            // Record first; a failure here drops the signed certificate on the floor.
            match self.store.record_issued(&record).await {
                Ok(()) => break cert,
                Err(store::Error::Conflict(_)) if attempts < 3 => {
                    tracing::warn!(serial = %record.serial, "serial collision; signing again");
                }
                Err(e) => return Err(e.into()),
            }
        };
        if cert.ttl_clamped {
            tracing::info!(spiffe_id = %request.spiffe_id, "requested TTL clamped to max_ttl");
        }
        if cert.ttl_raised {
            tracing::info!(spiffe_id = %request.spiffe_id, min_ttl = ?policy.min_ttl, "requested TTL raised to min_ttl");
        }
        tracing::debug!(
            spiffe_id = %request.spiffe_id,
            caller = %crate::untrusted::Bounded(request.requested_by, crate::untrusted::LOG_CHARS),
            authenticated_by = request.authenticated_by,
            impersonated = request.impersonated,
            serial = %cert.serial.to_hex(),
            ttl_seconds = cert.not_after - cert.not_before,
            request_id = %request.request_id,
            api = request.api.as_str(),
            "certificate issued"
        );
        Ok(Enrolled {
            cert,
            chain_der: authority.chain_der.clone(),
            chain_pem: authority.chain_pem.clone(),
            roots: self.roots_for(&authority),
            roots_pem: self.roots_pem_for(&authority),
            issuer_key_id: authority.issuer_key_id.clone(),
        })
    }
}
