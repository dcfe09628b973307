//! Background jobs, one loop: renew the gRPC serving certificate at two thirds of its life, and
//! reload every cluster's JWKS periodically. Errors are logged and retried on the next tick; the
//! loop ends with the server.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::enrollment::Ca;
use crate::tls::ServingIdentity;

const TICK: Duration = Duration::from_secs(30);
const JWKS_EVERY_TICKS: u32 = 10;

pub async fn run(ca: Ca, serving: Arc<ServingIdentity>, mut shutdown: watch::Receiver<bool>) {
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        ticks = ticks.wrapping_add(1);
        match serving.renew_if_due(&ca, OffsetDateTime::now_utc()).await {
            Ok(true) => tracing::info!(
                not_after = serving.not_after(),
                "serving certificate renewed"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "serving certificate renewal failed; will retry"),
        }
        if ticks.is_multiple_of(JWKS_EVERY_TICKS) {
            ca.clusters.load_all().await;
        }
    }
}
