//! The Kubernetes writers of one cluster, run by one replica at a time: the CSR signer
//! (`csr_signer`), the root ConfigMaps (`root_configmap`) and istiod's Secret
//! (`istiod::reconcile_secret`). Every replica runs this loop and keeps the watches (reads are
//! cheap, and a takeover then starts from a warm cache); only the holder of the cluster's Lease
//! `mesh-ca-writers` (in `lease_namespace`) acts. See `kubernetes::lease` for the election and
//! its fencing: the holder acts only while its own clock says the Lease is still its own.

use std::pin::Pin;
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, StreamMap};

use crate::ca::Ca;
use crate::config::{ClusterConfig, IstiodConfig};
use crate::csr_signer::Signer;
use crate::kubernetes::lease::{Lease, RENEW_EVERY};
use crate::root_configmap::RootConfigMaps;

/// The Lease's name in `lease_namespace`.
pub const LEASE_NAME: &str = "mesh-ca-writers";
/// How often the holder reconciles.
const TICK: Duration = Duration::from_secs(1);
/// How often the holder looks at istiod's Secret.
const SECRET_EVERY: Duration = Duration::from_secs(5);

enum Watched {
    Csr(Event<CertificateSigningRequest>),
    Namespace(Event<Namespace>),
    ConfigMap(Event<ConfigMap>),
    Failed(String),
}

type WatchStream = Pin<Box<dyn Stream<Item = Watched> + Send>>;

fn stream<K>(
    api: kube::Api<K>,
    config: watcher::Config,
    wrap: fn(Event<K>) -> Watched,
) -> WatchStream
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    Box::pin(
        watcher::watcher(api, config)
            .default_backoff()
            .map(move |item| match item {
                Ok(event) => wrap(event),
                Err(e) => Watched::Failed(crate::report::Chain(&e).to_string()),
            }),
    )
}

/// Whether a cluster has anything for the writers to do.
pub fn has_work(cluster: &ClusterConfig, istiod: Option<&IstiodConfig>) -> bool {
    cluster.kubernetes.as_ref().is_some_and(|k| {
        k.csr_signer.is_some()
            || k.root_configmap.is_some()
            || istiod.is_some_and(|i| i.secret_cluster.as_deref() == Some(cluster.name.as_str()))
    })
}

/// A name for this replica in Leases: `$POD_NAME` or `$HOSTNAME`, and a random suffix.
pub fn holder_identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|name| crate::kubernetes::is_valid_name(name))
        .unwrap_or_else(|| "mesh-ca".to_owned());
    let mut suffix = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix);
    format!("{base}-{}", hex::encode(suffix))
}

/// Runs the writers of `cluster` until `stop`; gives the Lease up on the way out.
pub async fn run(
    ca: Ca,
    cluster: ClusterConfig,
    client: kube::Client,
    istiod: Option<IstiodConfig>,
    holder: String,
    mut stop: watch::Receiver<bool>,
) {
    let Some(kubernetes) = cluster.kubernetes.clone() else {
        return;
    };
    let lease = Lease::new(
        client.clone(),
        &kubernetes.lease_namespace,
        LEASE_NAME,
        &holder,
    );
    let mut signer = kubernetes.csr_signer.clone().map(|config| {
        Signer::new(
            client.clone(),
            &cluster.name,
            cluster.trust_domain.clone(),
            config,
        )
    });
    let mut roots = kubernetes
        .root_configmap
        .clone()
        .map(|config| RootConfigMaps::new(client.clone(), cluster.trust_domain.clone(), config));
    let istiod = istiod.filter(|i| i.secret_cluster.as_deref() == Some(cluster.name.as_str()));

    let mut watches: StreamMap<&'static str, WatchStream> = StreamMap::new();
    if let Some(signer) = &signer {
        let (api, selector) = signer.watch_target();
        watches.insert(
            "csr",
            stream(
                api,
                watcher::Config::default().fields(&selector),
                Watched::Csr,
            ),
        );
    }
    if let Some(roots) = &roots {
        let (api, config) = roots.namespace_watch();
        watches.insert("namespaces", stream(api, config, Watched::Namespace));
        let (api, config) = roots.configmap_watch();
        watches.insert("configmaps", stream(api, config, Watched::ConfigMap));
    }

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renew: Option<Instant> = None;
    let mut last_secret: Option<Instant> = None;
    let mut was_leader = false;
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some((_, watched)) = watches.next(), if !watches.is_empty() => {
                match watched {
                    Watched::Csr(event) => if let Some(signer) = signer.as_mut() {
                        match change(event) {
                            Change::Reset => signer.reset(),
                            Change::Seen(csr, deleted) => signer.observe(csr, deleted),
                            Change::Nothing => {}
                        }
                    },
                    Watched::Namespace(event) => if let Some(roots) = roots.as_mut() {
                        match change(event) {
                            Change::Reset => roots.reset_namespaces(),
                            Change::Seen(ns, deleted) => roots.observe_namespace(ns, deleted),
                            Change::Nothing => {}
                        }
                    },
                    Watched::ConfigMap(event) => if let Some(roots) = roots.as_mut() {
                        match change(event) {
                            Change::Reset => roots.reset_configmaps(),
                            Change::Seen(map, deleted) => roots.observe_configmap(map, deleted),
                            Change::Nothing => {}
                        }
                    },
                    Watched::Failed(error) => {
                        tracing::warn!(cluster = %cluster.name, error = %error, "Kubernetes watch failed; retrying");
                    }
                }
            }
            _ = tick.tick() => {
                if last_renew.is_none_or(|t| t.elapsed() >= RENEW_EVERY) {
                    last_renew = Some(Instant::now());
                    if let Err(e) = lease.try_acquire(OffsetDateTime::now_utc()).await {
                        tracing::warn!(cluster = %cluster.name, error = %crate::report::Chain(&e), "cannot renew the writers' Lease");
                    }
                }
                let leader = lease.is_held();
                if leader != was_leader {
                    tracing::info!(cluster = %cluster.name, holder = %holder, leader, "Kubernetes writers' Lease");
                    was_leader = leader;
                }
                if !leader {
                    continue;
                }
                if let Some(signer) = signer.as_mut() {
                    signer.tick(&ca, OffsetDateTime::now_utc()).await;
                }
                if let Some(roots) = roots.as_mut()
                    && lease.is_held()
                {
                    roots.tick(&ca).await;
                }
                if let Some(config) = &istiod
                    && last_secret.is_none_or(|t| t.elapsed() >= SECRET_EVERY)
                    && lease.is_held()
                {
                    last_secret = Some(Instant::now());
                    if let Err(e) = crate::istiod::reconcile_secret(&ca, config, &client, OffsetDateTime::now_utc()).await {
                        tracing::warn!(cluster = %cluster.name, error = %crate::report::Chain(&e), "cannot keep istiod's Secret current");
                    }
                }
            }
        }
    }
    lease.release().await;
}

enum Change<K> {
    /// A (re)list starts: forget what was seen.
    Reset,
    /// An object was seen (`true`: deleted).
    Seen(K, bool),
    Nothing,
}

/// What one watcher event means for a cache.
fn change<K>(event: Event<K>) -> Change<K> {
    match event {
        Event::Init => Change::Reset,
        Event::InitApply(object) | Event::Apply(object) => Change::Seen(object, false),
        Event::Delete(object) => Change::Seen(object, true),
        Event::InitDone => Change::Nothing,
    }
}
