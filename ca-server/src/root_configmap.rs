//! The root ConfigMap writer: keeps `istio-ca-root-cert` (key `root-cert.pem`, label
//! `istio.io/config=true`) current in every namespace of a cluster (or those matching
//! `root_configmap_namespace_selector`), as istiod does when it is the CA. istio-agent verifies
//! our gRPC port with it, and it must follow every trust change: the content is the trust set
//! a workload of the cluster's trust domain gets in the last element of a CA response (own
//! roots, rotation overlap, `federates_with` roots).
//!
//! Every replica watches namespaces and these ConfigMaps; the replica holding the cluster's
//! Lease (`writers`) reconciles once a second: it creates the ConfigMap in namespaces that lack
//! it (new namespaces included), and repairs ones whose `root-cert.pem` or label differs
//! (manual edits included), keeping any other keys and labels. Writes carry the
//! `resourceVersion` we saw, so a concurrent edit makes them 409 and the next round reconciles
//! against the fresh object. A failing API server is retried with backoff (1 s doubling to
//! 30 s). Namespaces being deleted are skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::watcher;

use crate::ca::Ca;
use crate::config::RootConfigMapConfig;
use crate::spiffe::TrustDomain;

/// The key istio-agent reads.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Longest wait between two tries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The writer of one cluster.
pub struct RootConfigMaps {
    trust_domain: TrustDomain,
    config: RootConfigMapConfig,
    client: kube::Client,
    /// Namespace -> whether it is active (not terminating).
    namespaces: HashMap<String, bool>,
    /// Namespace -> our ConfigMap there, as last seen or written.
    maps: HashMap<String, ConfigMap>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl RootConfigMaps {
    pub fn new(
        client: kube::Client,
        trust_domain: TrustDomain,
        config: RootConfigMapConfig,
    ) -> RootConfigMaps {
        RootConfigMaps {
            trust_domain,
            config,
            client,
            namespaces: HashMap::new(),
            maps: HashMap::new(),
            backoff: Duration::from_secs(1),
            retry_at: None,
        }
    }

    /// What to watch for namespaces (the selector, if any).
    pub fn namespace_watch(&self) -> (Api<Namespace>, watcher::Config) {
        let mut config = watcher::Config::default();
        if let Some(selector) = &self.config.namespace_selector {
            config = config.labels(selector);
        }
        (Api::all(self.client.clone()), config)
    }

    /// What to watch for our ConfigMaps (by name, in every namespace).
    pub fn configmap_watch(&self) -> (Api<ConfigMap>, watcher::Config) {
        (
            Api::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.name)),
        )
    }

    pub fn observe_namespace(&mut self, namespace: Namespace, deleted: bool) {
        let Some(name) = namespace.metadata.name.clone() else {
            return;
        };
        if deleted {
            self.namespaces.remove(&name);
            return;
        }
        let terminating = namespace.metadata.deletion_timestamp.is_some()
            || namespace
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Terminating");
        self.namespaces.insert(name, !terminating);
    }

    pub fn observe_configmap(&mut self, map: ConfigMap, deleted: bool) {
        let (Some(namespace), Some(name)) = (&map.metadata.namespace, &map.metadata.name) else {
            return;
        };
        if *name != self.config.name {
            return;
        }
        if deleted {
            self.maps.remove(namespace);
        } else {
            self.maps.insert(namespace.clone(), map);
        }
    }

    pub fn reset_namespaces(&mut self) {
        self.namespaces.clear();
    }

    pub fn reset_configmaps(&mut self) {
        self.maps.clear();
    }

    /// Reconciles every namespace. Called by the Lease holder only. Returns how many
    /// ConfigMaps it wrote.
    pub async fn tick(&mut self, ca: &Ca) -> usize {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return 0;
        }
        let authorities = ca.authorities();
        let Some(authority) = authorities.get(&self.trust_domain) else {
            return 0;
        };
        let desired = ca.roots_pem_for(authority);
        let mut namespaces: Vec<String> = self
            .namespaces
            .iter()
            .filter(|(_, active)| **active)
            .map(|(name, _)| name.clone())
            .collect();
        namespaces.sort();
        let mut written = 0;
        let mut failed = false;
        for namespace in namespaces {
            let current = self.maps.get(&namespace);
            if current.is_some_and(|map| is_current(map, &desired)) {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
            let result = match current {
                None => {
                    let map = ConfigMap {
                        metadata: kube::api::ObjectMeta {
                            name: Some(self.config.name.clone()),
                            namespace: Some(namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                "istio.io/config".to_owned(),
                                "true".to_owned(),
                            )])),
                            ..kube::api::ObjectMeta::default()
                        },
                        data: Some(BTreeMap::from([(
                            ROOT_CERT_KEY.to_owned(),
                            desired.clone(),
                        )])),
                        ..ConfigMap::default()
                    };
                    api.create(&PostParams::default(), &map).await
                }
                Some(existing) => {
                    let mut map = existing.clone();
                    map.metadata
                        .labels
                        .get_or_insert_default()
                        .insert("istio.io/config".to_owned(), "true".to_owned());
                    map.data
                        .get_or_insert_default()
                        .insert(ROOT_CERT_KEY.to_owned(), desired.clone());
                    api.replace(&self.config.name, &PostParams::default(), &map)
                        .await
                }
            };
            match result {
                Ok(map) => {
                    written += 1;
                    self.maps.insert(namespace, map);
                }
                // Someone else wrote it first (or it appeared): the watch brings the fresh
                // object, and the next round compares again.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => {
                    tracing::warn!(namespace = %namespace, error = %crate::report::Chain(&e), "cannot write the root ConfigMap; backing off");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        } else {
            self.retry_at = None;
            self.backoff = Duration::from_secs(1);
        }
        if written > 0 {
            tracing::info!(trust_domain = %self.trust_domain, written, "root ConfigMaps updated");
        }
        written
    }
}

impl std::fmt::Debug for RootConfigMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootConfigMaps")
            .field("trust_domain", &self.trust_domain)
            .field("namespaces", &self.namespaces.len())
            .field("maps", &self.maps.len())
            .finish()
    }
}

fn is_current(map: &ConfigMap, desired: &str) -> bool {
    let data_ok = map
        .data
        .as_ref()
        .and_then(|d| d.get(ROOT_CERT_KEY))
        .is_some_and(|v| v == desired);
    let label_ok = map
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("istio.io/config"))
        .is_some_and(|v| v == "true");
    data_ok && label_ok
}
