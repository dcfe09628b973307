//! The service layer: [`Ca`], the one value every front door (gRPC, HTTP, jobs) holds, and its
//! verbs, one file per verb group. Domain modules (`issuance`, `authority`, `revocation`,
//! `trust`, `audit`) never import this module; it composes them with the store.
//!
//! - `enroll`: the one path from an authorised request to a recorded certificate.
//! - `admission`: bounds the issuances in flight and the queue in front of them.
//! - `revoke`: revoke by serial, deny and lift, reload the deny list.
//! - `status`: OCSP answers and the cached CRLs.
//! - `bundles`: publish our roots, take in federated bundles, the trust set per trust domain.
//! - `authorities`: load each trust domain's CA from the store, or create the first one.

mod admission;
mod authorities;
mod bundles;
mod enroll;
mod revoke;
mod status;

use std::sync::Arc;

pub use admission::Admission;
pub use authorities::{LoadError, load_or_create_authorities};
pub use enroll::{Api, Enrolled, Error, Request};

use crate::audit::AuditEvent;
use crate::authn::jwt::Clusters;
use crate::authority::{Authorities, Authority};
use crate::config::Config;
use crate::metrics::{Metrics, OpLabels};
use crate::revocation::{CrlCache, DenyList};
use crate::spiffe::SpiffeId;
use crate::store::Store;
use crate::trust::Bundles;

/// The CA's core state: configuration, store, the loaded authorities and what is cached from
/// the store (deny list, CRLs, bundles). Cheap to clone; every clone shares the same state.
#[derive(Debug, Clone)]
pub struct Ca {
    config: Arc<Config>,
    store: Store,
    authorities: Authorities,
    /// Kubernetes clusters whose tokens we accept, with their cached JWKS.
    clusters: Clusters,
    metrics: Arc<Metrics>,
    deny_list: Arc<DenyList>,
    crls: Arc<CrlCache>,
    bundles: Arc<Bundles>,
    admission: Arc<Admission>,
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
            authorities,
            clusters,
            metrics,
            deny_list: Arc::default(),
            crls: Arc::default(),
            bundles: Arc::default(),
            admission,
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

    pub fn authorities(&self) -> &Authorities {
        &self.authorities
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

    /// The authority that issues for `spiffe_id`'s trust domain.
    pub fn authority_for(&self, spiffe_id: &SpiffeId) -> Result<&Arc<Authority>, Error> {
        self.authorities
            .get(spiffe_id.trust_domain())
            .ok_or_else(|| Error::UnknownTrustDomain(spiffe_id.trust_domain().to_string()))
    }

    /// Appends an audit event to the chain. A failure to audit is logged (and counted), never
    /// silently dropped; it does not undo the action it records.
    pub async fn audit(&self, event: AuditEvent) {
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %crate::report::Chain(&e), action = %event.action, "could not write audit event");
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
}
