//! Renewal safety: a client that renews at the midpoint of notBefore..notAfter (as ztunnel does)
//! and asks for 30 s does not renew in a loop (the TTL is raised to `min_ttl`, the backdate is a
//! tenth of the TTL at most), and the per-identity rate limit answers a looping client with
//! `RESOURCE_EXHAUSTED` and a retry hint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ca_client::{Error, KeyType, TokenAuth};
use ca_tests::kube::FakeKube;
use ca_tests::{Backend, TestServer};
use x509_parser::prelude::{FromDer, X509Certificate};

fn token_auth(token: &str) -> TokenAuth {
    TokenAuth {
        token: Some(token.to_owned()),
        cluster_id: Some("Kubernetes".to_owned()),
    }
}

/// (notBefore, notAfter) of the leaf of an Istio answer.
fn validity(chain: &[String]) -> (i64, i64) {
    let der = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

/// Renews whenever the midpoint of the current certificate has passed, for `window`; returns
/// how many certificates it got.
async fn midpoint_renewer(
    client: &ca_client::WorkloadClient,
    auth: &TokenAuth,
    ttl: i64,
    window: Duration,
) -> (usize, Vec<(i64, i64)>) {
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let started = Instant::now();
    let mut issued = Vec::new();
    let mut renew_at = 0;
    while started.elapsed() < window && issued.len() < 500 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if now >= renew_at {
            let chain = client
                .create_certificate(&csr.csr_pem, ttl, auth, &BTreeMap::new())
                .await
                .unwrap();
            let (not_before, not_after) = validity(&chain);
            renew_at = not_before + (not_after - not_before) / 2;
            issued.push((not_before, not_after));
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (issued.len(), issued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_midpoint_renewer_asking_30s_does_not_loop() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster(Backend::Sqlite, &kube).await;
    let client = server.grpc_client(None).await;
    let auth = token_auth(&kube.token("default", "web"));
    let (count, issued) = midpoint_renewer(&client, &auth, 30, Duration::from_secs(5)).await;
    assert_eq!(count, 1, "{issued:?}");
    let (not_before, not_after) = issued[0];
    // Raised to min_ttl (10 minutes by default), backdated a minute (a tenth of that).
    assert_eq!(not_after - not_before, 600 + 60, "{issued:?}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("ca_ttl_raised_total{trust_domain=\"cluster.local\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// With no minimum TTL, a 30 s certificate is backdated 3 s (a tenth), so the midpoint is still
/// ahead of the client: a handful of renewals in 5 s, not thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backdate_is_a_fraction_of_the_ttl() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        for td in &mut config.trust_domains {
            td.min_ttl = Duration::ZERO;
        }
    })
    .await;
    let client = server.grpc_client(None).await;
    let auth = token_auth(&kube.token("default", "web"));
    let (count, issued) = midpoint_renewer(&client, &auth, 30, Duration::from_secs(5)).await;
    assert!(count <= 2, "{count} renewals in 5 s: {issued:?}");
    let (not_before, not_after) = issued[0];
    assert_eq!(not_after - not_before, 30 + 3, "{issued:?}");
    server.stop().await;
}

/// A client that ignores everything and asks again at once meets the per-identity limit: a
/// burst, then `RESOURCE_EXHAUSTED` with a `retry-after` hint; another identity is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_identity_is_rate_limited() {
    let kube = FakeKube::new();
    let server = TestServer::start_with_cluster_and(Backend::Sqlite, &kube, |config| {
        for td in &mut config.trust_domains {
            td.identity_burst = 5;
            td.identity_rate_per_second = 0.5;
        }
    })
    .await;
    let client = server.grpc_client(None).await;
    let web = token_auth(&kube.token("default", "web"));
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let mut granted = 0;
    let mut limited = 0;
    for _ in 0..20 {
        match client
            .create_certificate(&csr.csr_pem, 0, &web, &BTreeMap::new())
            .await
        {
            Ok(_) => granted += 1,
            Err(Error::Server {
                status, message, ..
            }) => {
                assert_eq!(status, 8, "RESOURCE_EXHAUSTED: {message}");
                assert!(message.contains("retry in"), "{message}");
                limited += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((granted, limited), (5, 15));
    let other = token_auth(&kube.token("default", "other"));
    client
        .create_certificate(&csr.csr_pem, 0, &other, &BTreeMap::new())
        .await
        .unwrap();
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "ca_issuance_failures_total{trust_domain=\"cluster.local\",reason=\"rate_limited\"} 15"
        ),
        "{metrics}"
    );
    server.stop().await;
}
