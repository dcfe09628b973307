//! The service layer: [`Ca`], the one value every front door (gRPC, HTTP, jobs) holds, and its
//! verbs, one file per verb group. Domain modules (`issuance`, `authority`, `revocation`,
//! `trust`, `audit`) never import this module; it composes them with the store.
//!
//! - `enroll`: the one path from an authorised request to a recorded certificate.
//! - `admission`: bounds the issuances in flight and the queue in front of them.
//! - `rate`: the per-identity issuance rate limit.
//! - `revoke`: revoke by serial, deny and lift, reload the deny list.
//! - `status`: OCSP answers and the cached CRLs.
//! - `bundles`: publish our roots, take in federated bundles, the trust set per trust domain.
//! - `authorities`: load each trust domain's CA from the store, or create the first one.

mod admission;
mod authorities;
mod bundles;
mod enroll;
pub mod lifecycle;
pub mod plug_in;
mod rate;
mod revoke;
mod status;

use std::sync::Arc;

pub use admission::Admission;
pub use authorities::{LoadError, load_or_create_authorities};
pub use enroll::{Api, Enrolled, Error, Request};

use crate::audit::{AuditEvent, RefusalThrottle, Throttled};
use crate::authn::jwt::Clusters;
use crate::authority::{Authorities, Authority};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::revocation::{CrlCache, DenyList};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::store::Store;
use crate::trust::Bundles;

/// Repeated refusals of one caller for one reason are written once per this window, then
/// counted (`crate::audit::RefusalThrottle`).
const REFUSAL_WINDOW_SECONDS: i64 = 60;

/// The CA's core state: configuration, store, the loaded authorities and what is cached from
/// the store (deny list, CRLs, bundles). Cheap to clone; every clone shares the same state.
#[derive(Debug, Clone)]
pub struct Ca {
    config: Arc<Config>,
    store: Store,
    /// Swapped whole when a generation changes (rotation, or another replica's rotation seen
    /// by the lifecycle tick); readers take a snapshot.
    authorities: Arc<std::sync::RwLock<Arc<Authorities>>>,
    /// Kubernetes clusters whose tokens we accept, with their cached JWKS.
    clusters: Clusters,
    metrics: Arc<Metrics>,
    deny_list: Arc<DenyList>,
    crls: Arc<CrlCache>,
    bundles: Arc<Bundles>,
    admission: Arc<Admission>,
    refusals: Arc<RefusalThrottle>,
    rate: Arc<rate::RateLimiter>,
}

impl Ca {
    /// The one constructor: the deny list, CRLs and bundles start empty (load them with
    /// [`Ca::reload_deny_list`] and [`Ca::load_bundles`]), so do the clusters' JWKS
    /// ([`Ca::load_jwks`]); admission allows the config's `max_in_flight`.
    pub fn new(
        config: Config,
        store: Store,
        authorities: Authorities,
        metrics: Arc<Metrics>,
    ) -> Ca {
        let admission = Arc::new(Admission::new(config.max_in_flight));
        let clusters = Clusters::new(&config.clusters);
        Ca {
            config: Arc::new(config),
            store,
            authorities: Arc::new(std::sync::RwLock::new(Arc::new(authorities))),
            clusters,
            metrics,
            deny_list: Arc::default(),
            crls: Arc::default(),
            bundles: Arc::default(),
            admission,
            refusals: Arc::new(RefusalThrottle::new(REFUSAL_WINDOW_SECONDS, 10_000)),
            rate: Arc::default(),
        }
    }

    /// Loads every cluster's JWKS (a cluster whose keys cannot be read yet refuses its tokens
    /// until a reload succeeds).
    pub async fn load_jwks(&self) {
        self.clusters.load_all().await;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A snapshot of every trust domain's loaded generations.
    pub fn authorities(&self) -> Arc<Authorities> {
        self.authorities
            .read()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Replaces what is loaded for one trust domain (after a generation change).
    pub(crate) fn set_trust_domain_authorities(
        &self,
        trust_domain: &TrustDomain,
        from: Authorities,
    ) {
        if let Ok(mut current) = self.authorities.write() {
            let mut next = Authorities::clone(&current);
            next.replace_trust_domain(trust_domain, from);
            *current = Arc::new(next);
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every trust domain's current bundle (read by the bundle endpoints and `WatchBundles`).
    pub fn bundles(&self) -> &Bundles {
        &self.bundles
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn clusters(&self) -> &Clusters {
        &self.clusters
    }

    pub(crate) fn deny_list(&self) -> &DenyList {
        &self.deny_list
    }

    /// Whether `spiffe_id` is an identity the CA itself uses and no request may get: the bundle
    /// endpoint's and serving certificate's `spiffe://<td>/ca`, in every trust domain we serve
    /// (https_spiffe federation peers pin it). Reserved identities are configuration.
    pub fn is_reserved(&self, spiffe_id: &SpiffeId) -> bool {
        spiffe_id.as_str() == format!("spiffe://{}/ca", spiffe_id.trust_domain())
            && self.config.trust_domain(spiffe_id.trust_domain()).is_some()
    }

    /// The `trust_domain` label for a request's trust domain: itself when configured, else
    /// `other` (labels take configured values only).
    pub(crate) fn metric_trust_domain<'a>(&self, trust_domain: &'a TrustDomain) -> &'a str {
        if self.config.trust_domain(trust_domain).is_some() {
            trust_domain.as_str()
        } else {
            "other"
        }
    }

    /// The Prometheus exposition; the admission gauges are read at scrape time, so they say
    /// what is in flight now (0 when idle), not what was at the last admission.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .in_flight
            .set(i64::try_from(self.admission.in_flight()).unwrap_or(i64::MAX));
        self.metrics
            .waiting
            .set(i64::try_from(self.admission.waiting()).unwrap_or(i64::MAX));
        self.metrics.render()
    }

    /// The authority that issues for `spiffe_id`'s trust domain.
    pub fn authority_for(&self, spiffe_id: &SpiffeId) -> Result<Arc<Authority>, Error> {
        self.authorities()
            .get(spiffe_id.trust_domain())
            .cloned()
            .ok_or_else(|| Error::UnknownTrustDomain(spiffe_id.trust_domain().to_string()))
    }

    /// Appends an audit event to the chain. A failure to audit is logged (and counted), never
    /// silently dropped; it does not undo the action it records.
    pub async fn audit(&self, event: AuditEvent) {
        let Some(event) = self.unless_repeated(event) else {
            return;
        };
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %crate::report::Chain(&e), action = %event.action, "could not write audit event");
            self.metrics.store_error("append_audit");
        }
    }

    /// Queues an audit event from a workload path (never waits; a full queue drops the event
    /// and counts it in `ca_store_errors_total{op="audit_queue_full"}`).
    pub fn audit_soon(&self, event: AuditEvent) {
        if let Some(event) = self.unless_repeated(event) {
            self.queue_audit(event);
        }
    }

    fn queue_audit(&self, event: AuditEvent) {
        if !self.store.append_audit_soon(event) {
            self.metrics.store_error("audit_queue_full");
        }
    }

    /// The event bounded and escaped, or `None` when it repeats a refusal already written in
    /// this window (it is counted instead).
    fn unless_repeated(&self, event: AuditEvent) -> Option<AuditEvent> {
        let event = event.bounded();
        if event.outcome == "success" {
            return Some(event);
        }
        match self.refusals.admit(&event, event.at) {
            Throttled::Write => Some(event),
            Throttled::Counted => None,
        }
    }

    /// Writes one summary event per refusal key whose window ended with refusals left out
    /// (run by the job tick).
    pub fn flush_refusal_counts(&self, now: i64) {
        for summary in self.refusals.expire(now) {
            self.queue_audit(summary);
        }
    }
}
