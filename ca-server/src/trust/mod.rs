//! What relying parties trust: each trust domain's bundle (ours, and the last good copy of each
//! federated peer's), with a `spiffe_sequence` kept in the store so it survives restarts and only
//! grows. Workloads of a trust domain trust its own roots plus the roots of every trust domain in
//! its `federates_with`.
//!
//! `bundle.rs` renders and parses SPIFFE bundles (no I/O); `federation.rs` (crate root) fetches.

pub mod bundle;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::spiffe::TrustDomain;
use crate::store::BundleRecord;

/// Whose bundle it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Federated,
}

/// One trust domain's current bundle. Build it with [`Bundle::new`], which also encodes
/// `roots_pem` once: every issuance in a federating trust domain hands out the peers' roots as
/// PEM, and the `/v1/bundles` PEM form serves the same text.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub sequence: u64,
    pub roots: Vec<Vec<u8>>,
    /// `roots` as concatenated PEM (private, so it cannot disagree with `roots`).
    roots_pem: String,
    pub source: Source,
    pub content_sha256: String,
}

impl Bundle {
    pub fn new(sequence: u64, roots: Vec<Vec<u8>>, source: Source, content_sha256: String) -> Self {
        let roots_pem = roots
            .iter()
            .map(|der| crate::pem::certificate(der))
            .collect();
        Bundle {
            sequence,
            roots,
            roots_pem,
            source,
            content_sha256,
        }
    }

    /// The roots as concatenated PEM, encoded once when the bundle was built.
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }
}

/// Every known bundle, with a change counter that `WatchBundles` follows.
#[derive(Debug)]
pub struct Bundles {
    by_td: RwLock<BTreeMap<TrustDomain, Arc<Bundle>>>,
    changes: watch::Sender<u64>,
}

impl Default for Bundles {
    fn default() -> Self {
        Bundles {
            by_td: RwLock::new(BTreeMap::new()),
            changes: watch::channel(0).0,
        }
    }
}

impl Bundles {
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<Arc<Bundle>> {
        self.by_td.read().ok()?.get(trust_domain).cloned()
    }

    pub fn all(&self) -> Vec<(TrustDomain, Arc<Bundle>)> {
        self.by_td
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Subscribes to changes (the value is a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Forgets a trust domain's bundle; notifies watchers if there was one.
    pub fn remove(&self, trust_domain: &TrustDomain) {
        let removed = self
            .by_td
            .write()
            .map(|mut map| map.remove(trust_domain).is_some())
            .unwrap_or(false);
        if removed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Sets a bundle; notifies watchers if the content or sequence changed.
    pub fn set(&self, trust_domain: TrustDomain, bundle: Bundle) {
        let changed = match self.by_td.write() {
            Ok(mut map) => {
                let changed = map.get(&trust_domain).is_none_or(|old| {
                    old.sequence != bundle.sequence || old.content_sha256 != bundle.content_sha256
                });
                map.insert(trust_domain, Arc::new(bundle));
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }
}

/// A stored bundle as served (roots re-read from its PEM).
pub fn from_record(record: &BundleRecord) -> Bundle {
    let roots = pem::parse_many(&record.roots_pem)
        .map(|blocks| blocks.into_iter().map(pem::Pem::into_contents).collect())
        .unwrap_or_default();
    Bundle::new(
        u64::try_from(record.sequence).unwrap_or(0),
        roots,
        if record.source == "local" {
            Source::Local
        } else {
            Source::Federated
        },
        record.content_sha256.clone(),
    )
}
