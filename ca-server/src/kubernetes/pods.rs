//! The pods of one cluster, by node: what node-bound impersonation asks ("does a pod of
//! service account `ns/sa` run on node N?", "which node is pod `ns/name` (uid U) on?").
//!
//! Filled by a kube-rs watcher (list, then watch from the list's `resourceVersion`; on 410 Gone
//! or a cut it relists, with backoff). Until the first list has completed the index is *not
//! synced* and every question fails closed. While a relist is running, the previous state keeps
//! answering, as client-go informers do; the new list replaces it whole when complete.
//!
//! A pod counts while it has not finished (phase `Pending` or `Running`, not `Succeeded` or
//! `Failed`): ztunnel fetches a pod's certificate while the pod is still starting (the CNI adds
//! it to the mesh before its containers run), so "running" in Istio's sense means "scheduled to
//! the node and not finished".

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// What we keep of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    uid: String,
    service_account: String,
    node: String,
    live: bool,
}

/// The pods, by `namespace/name`, and a count of live pods by (node, namespace, service
/// account) so the impersonation check is one lookup.
#[derive(Debug, Default)]
struct Pods {
    by_name: HashMap<(String, String), PodEntry>,
    live_by_node: HashMap<(String, String, String), usize>,
}

impl Pods {
    fn insert(&mut self, key: (String, String), pod: PodEntry) {
        self.remove(&key);
        if pod.live {
            *self
                .live_by_node
                .entry((pod.node.clone(), key.0.clone(), pod.service_account.clone()))
                .or_default() += 1;
        }
        self.by_name.insert(key, pod);
    }

    fn remove(&mut self, key: &(String, String)) {
        let Some(old) = self.by_name.remove(key) else {
            return;
        };
        if old.live {
            let index = (old.node, key.0.clone(), old.service_account);
            if let Some(count) = self.live_by_node.get_mut(&index) {
                *count -= 1;
                if *count == 0 {
                    self.live_by_node.remove(&index);
                }
            }
        }
    }
}

/// The pod index of one cluster.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: RwLock<Pods>,
    /// The list being built during a (re)list.
    pending: RwLock<Option<Pods>>,
    synced: AtomicBool,
}

impl PodIndex {
    /// Whether the first full list has completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The node of pod `namespace/name`, if it is known, live and (when given) has this uid.
    pub fn node_of(&self, namespace: &str, name: &str, uid: Option<&str>) -> Option<String> {
        let pods = self.pods.read().ok()?;
        let pod = pods.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        if !pod.live || uid.is_some_and(|u| u != pod.uid) || pod.node.is_empty() {
            return None;
        }
        Some(pod.node.clone())
    }

    /// Whether a live pod of service account `namespace/service_account` is on `node`.
    pub fn has_pod_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let key = (
            node.to_owned(),
            namespace.to_owned(),
            service_account.to_owned(),
        );
        self.pods
            .read()
            .is_ok_and(|pods| pods.live_by_node.contains_key(&key))
    }

    /// Number of pods known (for logs and tests).
    pub fn len(&self) -> usize {
        self.pods.read().map(|p| p.by_name.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, event: Event<Pod>) {
        match event {
            Event::Init => {
                if let Ok(mut pending) = self.pending.write() {
                    *pending = Some(Pods::default());
                }
            }
            Event::InitApply(pod) => {
                if let (Some(key), Ok(mut pending)) = (key(&pod), self.pending.write())
                    && let Some(pending) = pending.as_mut()
                {
                    pending.insert(key, entry(&pod));
                }
            }
            Event::InitDone => {
                let fresh = self.pending.write().ok().and_then(|mut p| p.take());
                if let (Some(fresh), Ok(mut pods)) = (fresh, self.pods.write()) {
                    *pods = fresh;
                }
                self.synced.store(true, Ordering::Release);
            }
            Event::Apply(pod) => {
                if let (Some(key), Ok(mut pods)) = (key(&pod), self.pods.write()) {
                    pods.insert(key, entry(&pod));
                }
            }
            Event::Delete(pod) => {
                if let (Some(key), Ok(mut pods)) = (key(&pod), self.pods.write()) {
                    pods.remove(&key);
                }
            }
        }
    }

    /// Watches the cluster's pods until `stop` turns true. Errors are logged and retried with
    /// kube-rs's default backoff (the watcher relists after 410 Gone or a cut).
    pub async fn run(
        self: std::sync::Arc<Self>,
        client: kube::Client,
        cluster: String,
        mut stop: watch::Receiver<bool>,
    ) {
        let api: Api<Pod> = Api::all(client);
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        loop {
            tokio::select! {
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                next = stream.next() => match next {
                    Some(Ok(event)) => {
                        let done = matches!(event, Event::InitDone);
                        self.apply(event);
                        if done {
                            tracing::debug!(cluster = %cluster, pods = self.len(), "pod index synced");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(cluster = %cluster, error = %crate::report::Chain(&e), "pod watch failed; retrying");
                    }
                    None => return,
                },
            }
        }
    }
}

fn key(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

fn entry(pod: &Pod) -> PodEntry {
    let spec = pod.spec.as_ref();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    PodEntry {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        live: !matches!(phase, "Succeeded" | "Failed"),
    }
}
