//! Enrollment: the one path from an authorised request to a recorded certificate, shared by every
//! front door (admin HTTP now, gRPC next). Order: parse and check the CSR, sign, self-check,
//! **commit the record**, and only then hand the certificate out. If the store fails, the
//! certificate is dropped and the caller gets `Unavailable` (SPEC invariant 1).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::authn::jwt::Clusters;
use crate::authority::{Authorities, Authority};
use crate::config::Config;
use crate::issuance::{self, IssuedCert, TtlPolicy};
use crate::metrics::{IssuedLabels, Metrics, OpLabels, TrustDomainLabels};
use crate::revocation::{CrlCache, DenyList};
use crate::spiffe::SpiffeId;
use crate::store::{self, AuditEvent, CertificateRecord, Store};
use crate::trust::Bundles;

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
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Admin => "admin",
            Api::Istio => "istio",
            Api::CaV1 => "ca.v1",
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
}

/// A recorded certificate with what the caller needs to use it.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub cert: IssuedCert,
    /// The issuing intermediate (DER); the chain is `[cert, intermediate]`.
    pub intermediate_der: Vec<u8>,
    /// The same as PEM.
    pub intermediate_pem: String,
    /// Every root the workload must trust (DER).
    pub roots: Vec<Vec<u8>>,
    /// The same, concatenated PEM.
    pub roots_pem: String,
    pub issuer_key_id: String,
}

/// The CA's core state: configuration, store and the loaded authorities.
#[derive(Debug, Clone)]
pub struct Ca {
    pub config: Arc<Config>,
    pub store: Store,
    pub authorities: Authorities,
    /// Kubernetes clusters whose tokens we accept, with their cached JWKS.
    pub clusters: Clusters,
    pub metrics: Arc<Metrics>,
    pub deny_list: Arc<DenyList>,
    pub crls: Arc<CrlCache>,
    pub bundles: Arc<Bundles>,
    pub admission: Arc<Admission>,
}

/// Bounds the issuances in flight and the queue in front of them.
///
/// A request takes a free slot at once if there is one. Otherwise it may wait, at most
/// [`Admission::WAIT`], and only if fewer than `max` others are already waiting; beyond that it
/// is shed at once. So under overload the server answers `RESOURCE_EXHAUSTED` quickly instead
/// of queueing without limit, an accepted request waits at most 100 ms for its slot, and no
/// single burst can build a backlog the server would still be working through seconds later.
#[derive(Debug)]
pub struct Admission {
    slots: tokio::sync::Semaphore,
    max: usize,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Admission {
    pub const WAIT: Duration = Duration::from_millis(100);

    pub fn new(max: usize) -> Admission {
        Admission {
            slots: tokio::sync::Semaphore::new(max),
            max,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Issuances currently admitted.
    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A slot, or `None` when the request is to be shed.
    async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Some(permit);
        }
        let queued = Queued::join(&self.waiting, self.max)?;
        let permit = tokio::time::timeout(Admission::WAIT, self.slots.acquire()).await;
        drop(queued);
        permit.ok()?.ok()
    }
}

/// A place in the admission queue, given back when dropped (also when the request is cancelled).
struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Queued<'a> {
    fn join(waiting: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<Queued<'a>> {
        use std::sync::atomic::Ordering;
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(waiting))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(256)
    }
}

impl Ca {
    pub fn authority_for(&self, spiffe_id: &SpiffeId) -> Result<&Arc<Authority>, Error> {
        self.authorities
            .get(spiffe_id.trust_domain())
            .ok_or_else(|| Error::UnknownTrustDomain(spiffe_id.trust_domain().to_string()))
    }

    /// Issues and records a certificate for an already authorised identity, and counts it.
    pub async fn enroll(
        &self,
        request: &Request<'_>,
        now: OffsetDateTime,
    ) -> Result<Enrolled, Error> {
        let started = std::time::Instant::now();
        let trust_domain = request.spiffe_id.trust_domain().as_str();
        let permit = self.admission.admit().await;
        self.metrics
            .in_flight
            .set(i64::try_from(self.admission.in_flight()).unwrap_or(i64::MAX));
        self.metrics
            .waiting
            .set(i64::try_from(self.admission.waiting()).unwrap_or(i64::MAX));
        let result = if permit.is_none() {
            self.metrics.shed.inc();
            Err(Error::Overloaded)
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
                    .observe(started.elapsed().as_secs_f64());
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
                    self.metrics
                        .store_errors
                        .get_or_create(&OpLabels {
                            op: "record_issued".to_owned(),
                        })
                        .inc();
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
        };
        let csr = issuance::csr::parse(request.csr)?;
        // A serial collision (the unique key on (issuer, serial) said no) means: sign again with
        // a fresh serial. Anything else from the store fails the request.
        let mut attempts = 0;
        let cert = loop {
            attempts += 1;
            let cert =
                issuance::issue(authority, policy, &csr, request.spiffe_id, request.ttl, now)?;
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
        Ok(Enrolled {
            cert,
            intermediate_der: authority.intermediate_der.clone(),
            intermediate_pem: authority.intermediate_pem.clone(),
            roots: self.roots_for(authority),
            roots_pem: self.roots_pem_for(authority),
            issuer_key_id: authority.issuer_key_id.clone(),
        })
    }

    /// Appends an audit event to the chain. A failure to audit is logged (and counted), never
    /// silently dropped; it does not undo the action it records.
    pub async fn audit(&self, event: AuditEvent) {
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %e, action = %event.action, "could not write audit event");
            self.metrics
                .store_errors
                .get_or_create(&OpLabels {
                    op: "append_audit".to_owned(),
                })
                .inc();
        }
    }

    /// Queues an audit event from a workload path (never waits; a full queue drops the event
    /// and counts it in `ca_store_errors_total{op="audit_queue_full"}`).
    pub fn audit_soon(&self, event: AuditEvent) {
        if !self.store.append_audit_soon(event) {
            self.metrics
                .store_errors
                .get_or_create(&OpLabels {
                    op: "audit_queue_full".to_owned(),
                })
                .inc();
        }
    }

    /// The `spiffe_sequence` of a trust domain's bundle.
    pub fn bundle_sequence(&self, trust_domain: &crate::spiffe::TrustDomain) -> u64 {
        self.bundles
            .get(trust_domain)
            .map(|b| b.sequence)
            .unwrap_or(0)
    }

    /// The roots a workload of this authority's trust domain must trust.
    ///
    /// Its own roots, then the last good roots of every trust domain in its `federates_with`.
    pub fn roots_for(&self, authority: &Authority) -> Vec<Vec<u8>> {
        let mut roots = vec![authority.root_der.clone()];
        for bundle in self.federated_bundles(authority) {
            roots.extend(bundle.roots.iter().cloned());
        }
        roots
    }

    /// [`Ca::roots_for`] as concatenated PEM; every root is encoded once (the trust domain's own
    /// at load, a bundle's when it is taken in).
    pub fn roots_pem_for(&self, authority: &Authority) -> String {
        let mut pem = authority.root_pem.clone();
        for bundle in self.federated_bundles(authority) {
            pem.push_str(bundle.roots_pem());
        }
        pem
    }

    /// The last good bundle of every trust domain this authority's trust domain federates with.
    fn federated_bundles(
        &self,
        authority: &Authority,
    ) -> impl Iterator<Item = Arc<crate::trust::Bundle>> + '_ {
        self.config
            .trust_domain(&authority.trust_domain)
            .into_iter()
            .flat_map(|config| config.federates_with.iter())
            .filter_map(|peer| self.bundles.get(peer))
    }
}

/// PEM of one DER certificate (RFC 7468: base64 in lines of 64, LF line ends), newline-
/// terminated. Written in one pass into one buffer: it is on every issuance's answer.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----\n";
    const END: &str = "-----END CERTIFICATE-----\n";
    const LINE: usize = 64;
    let encoded_len = der.len().div_ceil(3) * 4;
    let mut out =
        String::with_capacity(BEGIN.len() + encoded_len + encoded_len.div_ceil(LINE) + END.len());
    out.push_str(BEGIN);
    // 48 input bytes are exactly one 64-character line.
    for chunk in der.chunks(LINE / 4 * 3) {
        base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut out);
        out.push('\n');
    }
    out.push_str(END);
    out
}

#[cfg(test)]
mod tests {
    use super::to_pem;

    #[test]
    fn to_pem_matches_the_pem_crate_for_every_line_remainder() {
        for len in [1, 2, 3, 47, 48, 49, 95, 96, 97, 500, 1023] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let expected = pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(to_pem(&der), expected, "length {len}");
            assert_eq!(pem::parse(to_pem(&der)).unwrap().contents(), der.as_slice());
        }
    }
}
