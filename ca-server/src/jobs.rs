//! Background jobs, one loop ticking every few seconds: reload the deny list (other replicas'
//! changes), mark CRLs stale when the store's revocation state moved, refresh gauges, renew the
//! gRPC serving certificate at two thirds of its life, reload every cluster's JWKS, and run the
//! CA lifecycle (`ca::lifecycle`: take other replicas' rotations, rotate what is due, remove
//! retired generations whose leaves expired). Errors are
//! logged and retried on the next tick; the loop ends with the server.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::Ca;
use crate::keys::Kek;
use crate::metrics::TrustDomainLabels;
use crate::tls::ServingIdentity;

/// How often the deny list and revocation markers are re-read: the bound on how long another
/// replica's deny or revocation takes to reach this one.
pub const TICK: Duration = Duration::from_secs(5);
const SLOW_EVERY_TICKS: u32 = 6;
const JWKS_EVERY_TICKS: u32 = 60;

pub async fn run(
    ca: Ca,
    kek: Arc<Kek>,
    serving: Vec<Arc<ServingIdentity>>,
    istiod: Option<Arc<crate::istiod::IstiodCertificate>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        ticks = ticks.wrapping_add(1);
        // First: a generation another replica activated is taken within one tick.
        ca.lifecycle_tick(
            &kek,
            OffsetDateTime::now_utc(),
            ticks.is_multiple_of(SLOW_EVERY_TICKS),
        )
        .await;
        ca.flush_refusal_counts(OffsetDateTime::now_utc().unix_timestamp());
        if let Err(e) = ca.reload_deny_list().await {
            tracing::warn!(error = %crate::report::Chain(&e), "deny list reload failed; keeping the previous list");
        }
        if let Err(e) = ca.reload_federated_bundles().await {
            tracing::warn!(error = %crate::report::Chain(&e), "federated bundle reload failed");
        }
        for authority in ca.authorities().iter() {
            if let Err(e) = ca.refresh_crl_if_changed(&authority.trust_domain).await {
                tracing::warn!(error = %crate::report::Chain(&e), "CRL freshness check failed");
            }
        }
        if ticks.is_multiple_of(SLOW_EVERY_TICKS) {
            let now = OffsetDateTime::now_utc();
            for identity in &serving {
                match identity.renew_if_due(&ca, now).await {
                    Ok(true) => tracing::info!(
                        not_after = identity.not_after(),
                        "serving certificate renewed"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %crate::report::Chain(&e), "serving certificate renewal failed; will retry")
                    }
                }
            }
            if let Some(istiod) = &istiod {
                match istiod.renew_if_due(&ca, now).await {
                    Ok(true) => {
                        tracing::info!(not_after = istiod.not_after(), "istiod certificate renewed")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %crate::report::Chain(&e), "istiod certificate renewal failed; will retry")
                    }
                }
            }
            refresh_gauges(&ca, now).await;
        }
        if ticks.is_multiple_of(JWKS_EVERY_TICKS) {
            ca.clusters().load_all().await;
        }
    }
}

/// Sets the revocation and expiry gauges and keeps each CRL built (run every 30 s by the
/// loop).
pub async fn refresh_gauges(ca: &Ca, now: OffsetDateTime) {
    let denied = ca.deny_list().counts();
    let now_s = now.unix_timestamp();
    match ca
        .store()
        .count_identities_expiring(now_s, now_s + crate::metrics::EXPIRING_WITHIN_SECONDS)
        .await
    {
        Ok(rows) => {
            for authority in ca.authorities().iter() {
                let td = authority.trust_domain.as_str();
                let count = rows
                    .iter()
                    .find(|(name, _)| name == td)
                    .map_or(0, |(_, n)| *n);
                ca.metrics()
                    .workload_expiring
                    .get_or_create(&TrustDomainLabels {
                        trust_domain: td.to_owned(),
                    })
                    .set(count);
            }
        }
        Err(e) => {
            tracing::warn!(error = %crate::report::Chain(&e), "expiring identities: store query failed");
        }
    }
    for authority in ca.authorities().iter() {
        let td = authority.trust_domain.to_string();
        if let Ok(count) = ca
            .store()
            .count_revoked_unexpired(&td, now.unix_timestamp())
            .await
        {
            ca.metrics()
                .revoked
                .get_or_create(&TrustDomainLabels {
                    trust_domain: td.clone(),
                })
                .set(count);
        }
        ca.metrics()
            .denied
            .get_or_create(&TrustDomainLabels {
                trust_domain: td.clone(),
            })
            .set(denied.get(&td).copied().unwrap_or(0));
        // Keep the CRL (and its nextUpdate gauge) built even when nobody fetches it.
        if let Err(e) = ca.crl(&authority.trust_domain, now).await {
            tracing::warn!(trust_domain = %td, error = %crate::report::Chain(&e), "CRL rebuild failed");
        }
    }
}
