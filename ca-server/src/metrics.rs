//! Prometheus metrics (names fixed by SPEC section 9), registered once at start on a registry the
//! state owns (no globals), rendered by `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    pub trust_domain: String,
    pub api: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub trust_domain: String,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrustDomainLabels {
    pub trust_domain: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub trust_domain: String,
    pub kind: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabels {
    pub trust_domain: String,
    pub generation: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub trust_domain: String,
    pub scope: String,
    pub trigger: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub issued: Family<IssuedLabels, Counter>,
    pub issuance_failures: Family<FailureLabels, Counter>,
    pub issuance_duration: Family<IssuedLabels, Histogram, fn() -> Histogram>,
    pub authn_failures: Family<ReasonLabels, Counter>,
    pub ttl_clamped: Family<TrustDomainLabels, Counter>,
    pub ttl_raised: Family<TrustDomainLabels, Counter>,
    pub cert_not_after: Family<CertLabels, Gauge>,
    pub store_errors: Family<OpLabels, Counter>,
    pub revoked: Family<TrustDomainLabels, Gauge>,
    pub denied: Family<TrustDomainLabels, Gauge>,
    pub crl_next_update: Family<TrustDomainLabels, Gauge>,
    pub federation_sequence: Family<TrustDomainLabels, Gauge>,
    pub federation_last_success: Family<TrustDomainLabels, Gauge>,
    pub federation_errors: Family<TrustDomainLabels, Counter>,
    pub in_flight: Gauge,
    pub waiting: Gauge,
    pub shed: Counter,
    pub federation_refresh_hint: Family<TrustDomainLabels, Gauge>,
    pub workload_expiring: Family<TrustDomainLabels, Gauge>,
    /// 1 for each generation's current state (SPEC 10), 0 for the states it left.
    pub generation_state: Family<GenerationLabels, Gauge>,
    pub rotations: Family<RotationLabels, Counter>,
    /// Root rotation: the share of live leaves issued since the new root was published (1 when
    /// no root rotation is in flight).
    pub rotation_convergence: Family<TrustDomainLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// Issuance latency buckets (seconds).
fn issuance_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

/// The `api` label values of issuance metrics.
pub const APIS: [&str; 4] = ["istio", "ca.v1", "admin", "k8s-csr"];
/// The `op` label values of `ca_store_errors_total`.
pub const STORE_OPS: [&str; 3] = ["record_issued", "append_audit", "audit_queue_full"];
/// "Renewal is failing": an identity whose newest certificate expires within this window.
pub const EXPIRING_WITHIN_SECONDS: i64 = 6 * 3600;

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let issued = Family::<IssuedLabels, Counter>::default();
        registry.register(
            "ca_certificates_issued",
            "Certificates issued",
            issued.clone(),
        );
        let issuance_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "ca_issuance_failures",
            "Issuance requests refused or failed, by reason",
            issuance_failures.clone(),
        );
        let issuance_duration: Family<IssuedLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(issuance_histogram);
        registry.register(
            "ca_issuance_duration_seconds",
            "Time from request to recorded certificate",
            issuance_duration.clone(),
        );
        let authn_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ca_authn_failures",
            "Authentication failures, by reason",
            authn_failures.clone(),
        );
        let ttl_clamped = Family::<TrustDomainLabels, Counter>::default();
        registry.register(
            "ca_ttl_clamped",
            "Requests whose TTL was shortened to max_ttl",
            ttl_clamped.clone(),
        );
        let ttl_raised = Family::<TrustDomainLabels, Counter>::default();
        registry.register(
            "ca_ttl_raised",
            "Requests whose TTL was raised to min_ttl",
            ttl_raised.clone(),
        );
        let cert_not_after = Family::<CertLabels, Gauge>::default();
        registry.register(
            "ca_cert_not_after_timestamp_seconds",
            "notAfter of the CA and serving certificates",
            cert_not_after.clone(),
        );
        let generation_state = Family::<GenerationLabels, Gauge>::default();
        registry.register(
            "ca_generation_state",
            "1 for the state each CA generation is in",
            generation_state.clone(),
        );
        let rotations = Family::<RotationLabels, Counter>::default();
        registry.register(
            "ca_rotations",
            "CA rotations performed by this replica, by scope and trigger",
            rotations.clone(),
        );
        let rotation_convergence =
            Family::<TrustDomainLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "ca_rotation_convergence_ratio",
            "Root rotation: share of live leaves issued since the new root was published",
            rotation_convergence.clone(),
        );
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "ca_store_errors",
            "Store operations that failed",
            store_errors.clone(),
        );
        let revoked = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_revoked_certificates",
            "Revoked, unexpired certificates",
            revoked.clone(),
        );
        let denied = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_denied_identities",
            "Identities on the deny list",
            denied.clone(),
        );
        let crl_next_update = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_crl_next_update_timestamp_seconds",
            "nextUpdate of the current CRL",
            crl_next_update.clone(),
        );
        let federation_sequence = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_federation_bundle_sequence",
            "spiffe_sequence of the last accepted federated bundle",
            federation_sequence.clone(),
        );
        let federation_last_success = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_federation_last_success_timestamp_seconds",
            "When a federated bundle was last fetched successfully",
            federation_last_success.clone(),
        );
        let federation_errors = Family::<TrustDomainLabels, Counter>::default();
        registry.register(
            "ca_federation_fetch_errors",
            "Federated bundle fetches that failed or were refused",
            federation_errors.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "ca_issuance_in_flight",
            "Issuances admitted and not yet answered (queue depth)",
            in_flight.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "ca_issuance_waiting",
            "Issuances waiting for an admission slot (at most max_in_flight, for at most 100 ms)",
            waiting.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "ca_issuance_shed",
            "Issuances refused with RESOURCE_EXHAUSTED under overload",
            shed.clone(),
        );
        let federation_refresh_hint = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_federation_refresh_hint_seconds",
            "The refresh hint of a federated peer (its spiffe_refresh_hint, else ours): stale after 3",
            federation_refresh_hint.clone(),
        );
        let workload_expiring = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "ca_workload_identities_expiring",
            "Workload identities whose newest live certificate expires within 6 h (renewal failing)",
            workload_expiring.clone(),
        );
        Arc::new(Metrics {
            registry,
            issued,
            issuance_failures,
            issuance_duration,
            authn_failures,
            ttl_clamped,
            ttl_raised,
            cert_not_after,
            generation_state,
            rotations,
            rotation_convergence,
            store_errors,
            revoked,
            denied,
            crl_next_update,
            federation_sequence,
            federation_last_success,
            federation_errors,
            in_flight,
            waiting,
            shed,
            federation_refresh_hint,
            workload_expiring,
        })
    }

    /// Creates every label set known from the configuration at 0, so dashboards and alerts see
    /// zeros instead of absent series (a family is printed only once it has a sample).
    pub fn initialise(&self, config: &crate::config::Config) {
        for td in &config.trust_domains {
            let trust_domain = td.name.to_string();
            for api in APIS {
                let labels = IssuedLabels {
                    trust_domain: trust_domain.clone(),
                    api: api.to_owned(),
                };
                let _ = self.issued.get_or_create(&labels);
                let _ = self.issuance_duration.get_or_create(&labels);
            }
            self.rotation_convergence
                .get_or_create(&TrustDomainLabels {
                    trust_domain: trust_domain.clone(),
                })
                .set(1.0);
            for (scope, trigger) in [
                ("intermediate", "schedule"),
                ("intermediate", "admin"),
                ("intermediate", "emergency"),
                ("root", "schedule"),
                ("root", "admin"),
            ] {
                let _ = self.rotations.get_or_create(&RotationLabels {
                    trust_domain: trust_domain.clone(),
                    scope: scope.to_owned(),
                    trigger: trigger.to_owned(),
                });
            }
            let labels = TrustDomainLabels { trust_domain };
            let _ = self.ttl_clamped.get_or_create(&labels);
            let _ = self.ttl_raised.get_or_create(&labels);
            let _ = self.revoked.get_or_create(&labels);
            let _ = self.denied.get_or_create(&labels);
            let _ = self.workload_expiring.get_or_create(&labels);
        }
        for op in STORE_OPS {
            let _ = self
                .store_errors
                .get_or_create(&OpLabels { op: op.to_owned() });
        }
        for peer in &config.federation {
            let labels = TrustDomainLabels {
                trust_domain: peer.trust_domain.to_string(),
            };
            let _ = self.federation_errors.get_or_create(&labels);
            let _ = self.federation_last_success.get_or_create(&labels);
            let _ = self.federation_sequence.get_or_create(&labels);
            self.federation_refresh_hint
                .get_or_create(&labels)
                .set(i64::try_from(peer.refresh_hint.as_secs()).unwrap_or(i64::MAX));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out
    }

    pub fn authn_failure(&self, reason: &str) {
        self.authn_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a failed store operation (`op` is one of [`STORE_OPS`]).
    pub fn store_error(&self, op: &str) {
        self.store_errors
            .get_or_create(&OpLabels { op: op.to_owned() })
            .inc();
    }

    pub fn issuance_failure(&self, trust_domain: &str, reason: &str) {
        self.issuance_failures
            .get_or_create(&FailureLabels {
                trust_domain: trust_domain.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn federation_success(&self, trust_domain: &str, sequence: u64, now: i64) {
        let labels = TrustDomainLabels {
            trust_domain: trust_domain.to_owned(),
        };
        self.federation_sequence
            .get_or_create(&labels)
            .set(i64::try_from(sequence).unwrap_or(i64::MAX));
        self.federation_last_success.get_or_create(&labels).set(now);
    }

    pub fn federation_error(&self, trust_domain: &str) {
        self.federation_errors
            .get_or_create(&TrustDomainLabels {
                trust_domain: trust_domain.to_owned(),
            })
            .inc();
    }

    pub fn crl_next_update(&self, trust_domain: &str, next_update: i64) {
        self.crl_next_update
            .get_or_create(&TrustDomainLabels {
                trust_domain: trust_domain.to_owned(),
            })
            .set(next_update);
    }

    pub fn cert_expiry(&self, trust_domain: &str, kind: &str, key_id: &str, not_after: i64) {
        self.cert_not_after
            .get_or_create(&CertLabels {
                trust_domain: trust_domain.to_owned(),
                kind: kind.to_owned(),
                key_id: key_id.to_owned(),
            })
            .set(not_after);
    }

    /// Records each generation's state: 1 for the state it is in, 0 for the others it may have
    /// been in (so a dashboard sees a transition as one series going to 0 and another to 1).
    pub fn generation_state(&self, trust_domain: &str, generation: i32, state: &str) {
        for known in ["prepared", "active", "retired", "removed", "revoked"] {
            self.generation_state
                .get_or_create(&GenerationLabels {
                    trust_domain: trust_domain.to_owned(),
                    generation: generation.to_string(),
                    state: known.to_owned(),
                })
                .set(i64::from(known == state));
        }
    }
}
