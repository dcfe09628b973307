//! One replica at a time: a `coordination.k8s.io/v1` Lease per cluster elects the replica that
//! runs that cluster's writers (CSR signer, root ConfigMaps, istiod's Secret), as Kubernetes
//! controllers do. Chosen over the Postgres coordination because the writers act on that
//! cluster's API server: if we cannot reach it we cannot hold its Lease nor write there, and
//! the SQLite deployment (one process) needs no special case.
//!
//! Acquire or renew is a read then a write carrying the read's `resourceVersion`, so two
//! replicas racing for an expired Lease cannot both win (the loser gets 409 Conflict).
//! Fencing: a holder acts only while its own monotonic clock says the Lease is still its own
//! with a margin ([`Lease::is_held`]): `LEASE_SECONDS` after the renewal *request started*,
//! minus `MARGIN`. A replica paused longer than that stops acting before another may take over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use time::OffsetDateTime;

use super::Error;

/// How long a Lease is valid after its renewal (`leaseDurationSeconds`).
pub const LEASE_SECONDS: i32 = 15;
/// The holder stops acting this long before the Lease could expire for others.
const MARGIN: Duration = Duration::from_secs(5);
/// How often a holder renews, and a candidate tries.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// This replica's view of one Lease.
pub struct Lease {
    api: Api<LeaseObject>,
    name: String,
    holder: String,
    held_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .finish()
    }
}

impl Lease {
    /// `holder` names this replica (its pod name and a random suffix).
    pub fn new(client: kube::Client, namespace: &str, name: &str, holder: &str) -> Lease {
        Lease {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            holder: holder.to_owned(),
            held_until: Mutex::new(None),
        }
    }

    /// Whether this replica may act now.
    pub fn is_held(&self) -> bool {
        self.held_until
            .lock()
            .map(|until| until.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    /// Takes the Lease if it is free or expired, renews it if ours; returns whether we hold it.
    /// An API error leaves us not holding it (we cannot prove otherwise).
    pub async fn try_acquire(&self, now: OffsetDateTime) -> Result<bool, Error> {
        let started = Instant::now();
        let result = self.acquire_once(now).await;
        let held = matches!(result, Ok(true));
        if let Ok(mut until) = self.held_until.lock() {
            *until = held.then(|| started + Duration::from_secs(LEASE_SECONDS as u64) - MARGIN);
        }
        result
    }

    async fn acquire_once(&self, now: OffsetDateTime) -> Result<bool, Error> {
        let now_micro = micro_time(now)?;
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = LeaseObject {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(now_micro.clone()),
                    renew_time: Some(now_micro),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) => {
                renewed.0.as_second().saturating_add(i64::from(seconds)) < now.unix_timestamp()
            }
            _ => true,
        };
        if !ours && !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        let mut next = spec;
        if !ours {
            next.holder_identity = Some(self.holder.clone());
            next.acquire_time = Some(now_micro.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        next.renew_time = Some(now_micro);
        next.lease_duration_seconds = Some(LEASE_SECONDS);
        lease.spec = Some(next);
        // `lease.metadata.resourceVersion` is the one we read: a concurrent writer makes this 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up (at shutdown), so another replica need not wait for it to expire.
    pub async fn release(&self) {
        let held = self.is_held();
        if let Ok(mut until) = self.held_until.lock() {
            *until = None;
        }
        if !held {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.holder.as_str())
        {
            spec.holder_identity = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}

fn micro_time(now: OffsetDateTime) -> Result<MicroTime, Error> {
    let timestamp = jiff::Timestamp::from_microsecond(
        i64::try_from(now.unix_timestamp_nanos() / 1000)
            .map_err(|_| Error::Answer("time out of range".to_owned()))?,
    )
    .map_err(|e| Error::Answer(e.to_string()))?;
    Ok(MicroTime(timestamp))
}
