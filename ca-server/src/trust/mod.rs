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

use crate::enrollment::{Ca, to_pem};
use crate::spiffe::TrustDomain;
use crate::store::{self, BundleRecord};

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
        let roots_pem = roots.iter().map(|der| to_pem(der)).collect();
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

fn from_record(record: &BundleRecord) -> Bundle {
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

impl Ca {
    /// Publishes our own trust domains' roots (bumping the stored sequence when they changed) and
    /// loads the last good federated bundles.
    pub async fn load_bundles(&self, now: i64) -> Result<(), store::Error> {
        for authority in self.authorities.iter() {
            let roots = vec![authority.root_der.clone()];
            let pem_text: String = roots.iter().map(|der| to_pem(der)).collect();
            let record = self
                .store
                .put_local_bundle(
                    authority.trust_domain.as_str(),
                    &pem_text,
                    &bundle::content_hash(&roots),
                    now,
                )
                .await?;
            self.bundles
                .set(authority.trust_domain.clone(), from_record(&record));
        }
        self.reload_federated_bundles().await
    }

    /// Loads federated bundles another replica (or an earlier run) stored.
    pub async fn reload_federated_bundles(&self) -> Result<(), store::Error> {
        for record in self.store.bundles().await? {
            if record.source != "federated" {
                continue;
            }
            let Ok(trust_domain) = TrustDomain::parse(&record.trust_domain) else {
                continue;
            };
            if !self
                .config
                .federation
                .iter()
                .any(|f| f.trust_domain == trust_domain)
            {
                continue;
            }
            let newer = self
                .bundles
                .get(&trust_domain)
                .is_none_or(|b| b.sequence < u64::try_from(record.sequence).unwrap_or(0));
            if newer {
                self.bundles.set(trust_domain, from_record(&record));
            }
        }
        Ok(())
    }

    /// The `spiffe_refresh_hint` we publish for a trust domain (seconds).
    pub fn refresh_hint(&self, trust_domain: &TrustDomain) -> Option<u64> {
        self.config
            .trust_domain(trust_domain)
            .map(|td| td.refresh_hint.as_secs())
    }
}
