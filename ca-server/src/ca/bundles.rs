//! Trust verbs: publish our roots, take in federated bundles other replicas stored, and the
//! trust set a workload of each trust domain is handed.

use std::sync::Arc;

use crate::authority::Authority;
use crate::ca::Ca;
use crate::spiffe::TrustDomain;
use crate::store;
use crate::trust::{self, Bundle};

impl Ca {
    /// Publishes our own trust domains' roots (bumping the stored sequence when they changed) and
    /// loads the last good federated bundles.
    pub async fn load_bundles(&self, now: i64) -> Result<(), store::Error> {
        let authorities = self.authorities();
        for authority in authorities.iter() {
            let roots = authorities.trust_roots(&authority.trust_domain);
            self.publish_own_bundle(&authority.trust_domain, &roots, now)
                .await?;
        }
        self.reload_federated_bundles().await
    }

    /// Publishes a trust domain's own roots (every root its workloads must trust: during a root
    /// rotation, old and new); the stored sequence goes up only when they changed.
    pub async fn publish_own_bundle(
        &self,
        trust_domain: &TrustDomain,
        roots: &[Vec<u8>],
        now: i64,
    ) -> Result<(), store::Error> {
        let pem_text: String = roots
            .iter()
            .map(|der| crate::pem::certificate(der))
            .collect();
        let record = self
            .store
            .put_local_bundle(
                trust_domain.as_str(),
                &pem_text,
                &trust::bundle::content_hash(roots),
                now,
            )
            .await?;
        self.bundles
            .set(trust_domain.clone(), trust::from_record(&record));
        Ok(())
    }

    /// Mirrors the federated bundles the store holds (another replica's fetch, an earlier run,
    /// an operator's reset): the store is the truth, memory follows it.
    pub async fn reload_federated_bundles(&self) -> Result<(), store::Error> {
        let records = self.store.bundles().await?;
        for peer in &self.config.federation {
            let stored = records
                .iter()
                .any(|r| r.source == "federated" && r.trust_domain == peer.trust_domain.as_str());
            if !stored {
                self.bundles.remove(&peer.trust_domain);
            }
        }
        for record in records {
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
            let differs = self.bundles.get(&trust_domain).is_none_or(|b| {
                b.sequence != u64::try_from(record.sequence).unwrap_or(0)
                    || b.content_sha256 != record.content_sha256
            });
            if differs {
                self.bundles.set(trust_domain, trust::from_record(&record));
            }
        }
        Ok(())
    }

    /// Forgets a federated peer's last good bundle, in the store and here (other replicas follow
    /// within a job tick); the next fetch takes whatever the peer serves, whatever its sequence.
    /// The way out when a peer's sequence was pushed beyond anything real. Returns whether a
    /// bundle was stored; `None` when the trust domain is not a federation peer.
    pub async fn reset_federated_bundle(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Option<bool>, store::Error> {
        if !self
            .config
            .federation
            .iter()
            .any(|f| f.trust_domain == *trust_domain)
        {
            return Ok(None);
        }
        let removed = self
            .store
            .delete_federated_bundle(trust_domain.as_str())
            .await?;
        self.bundles.remove(trust_domain);
        Ok(Some(removed))
    }

    /// The `spiffe_refresh_hint` we publish for a trust domain (seconds).
    pub fn refresh_hint(&self, trust_domain: &TrustDomain) -> Option<u64> {
        self.config
            .trust_domain(trust_domain)
            .map(|td| td.refresh_hint.as_secs())
    }

    /// The `spiffe_sequence` of a trust domain's bundle.
    pub fn bundle_sequence(&self, trust_domain: &TrustDomain) -> u64 {
        self.bundles
            .get(trust_domain)
            .map(|b| b.sequence)
            .unwrap_or(0)
    }

    /// The roots a workload of this authority's trust domain must trust.
    ///
    /// Its own roots, then the last good roots of every trust domain in its `federates_with`.
    pub fn roots_for(&self, authority: &Authority) -> Vec<Vec<u8>> {
        let mut roots = match self.bundles.get(&authority.trust_domain) {
            Some(own) => own.roots.clone(),
            None => vec![authority.root_der.clone()],
        };
        for bundle in self.federated_bundles(authority) {
            roots.extend(bundle.roots.iter().cloned());
        }
        roots
    }

    /// [`Ca::roots_for`] as concatenated PEM; every root is encoded once (the trust domain's own
    /// at load, a bundle's when it is taken in).
    pub fn roots_pem_for(&self, authority: &Authority) -> String {
        let mut pem = match self.bundles.get(&authority.trust_domain) {
            Some(own) => own.roots_pem().to_owned(),
            None => authority.root_pem.clone(),
        };
        for bundle in self.federated_bundles(authority) {
            pem.push_str(bundle.roots_pem());
        }
        pem
    }

    /// The last good bundle of every trust domain this authority's trust domain federates with.
    fn federated_bundles(&self, authority: &Authority) -> impl Iterator<Item = Arc<Bundle>> + '_ {
        self.config
            .trust_domain(&authority.trust_domain)
            .into_iter()
            .flat_map(|config| config.federates_with.iter())
            .filter_map(|peer| self.bundles.get(peer))
    }
}
