//! Plug-in CAs (SPEC 10), the service verbs: import an externally signed intermediate with its
//! key (Istio's `cacerts`), or make the next intermediate's key here with a CSR and install the
//! certificate signed outside (the key never leaves the CA).
//!
//! An accepted intermediate becomes the next generation:
//! - **same root** as the active generation: it is active at once (the trust set does not
//!   change), the active one is retired, exactly as an intermediate rotation;
//! - **another root**: it is `prepared` and its root published at once; the lifecycle activates
//!   it once converged, exactly as a root rotation (SPEC 10: a new root signs nothing until
//!   relying parties hold it). While a root rotation is in flight an import is refused (409).
//!
//! With an external root the CA holds no root key, so it cannot rotate on its own: no automatic
//! intermediate or root rotation (the lifecycle warns when a rotation is due: install the next
//! intermediate), no root-signed CRL (the external CA publishes its own), and an emergency
//! revocation of the active generation needs its replacement imported first. A manual
//! `scope = root` rotation leaves the plug-in CA for a root made here.

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::authority;
use crate::ca::Ca;
use crate::ca::lifecycle::{
    Error, REMOVAL_MARGIN, Rotated, Scope, activation_window, rotation_due_at,
};
use crate::external_ca::{self, CaFiles};
use crate::keys::Kek;
use crate::metrics::RotationLabels;
use crate::spiffe::TrustDomain;
use crate::store::PendingKey;

/// An import's outcome: the generation it became, and what the admission check noticed.
#[derive(Debug, Clone)]
pub struct Imported {
    pub rotated: Rotated,
    pub warnings: Vec<String>,
}

/// The CSR of the next intermediate, whose key waits here.
#[derive(Debug, Clone)]
pub struct PendingCsr {
    pub trust_domain: String,
    pub csr_pem: String,
    pub key_algorithm: String,
    pub created_at: i64,
    /// False when an earlier CSR was returned unchanged.
    pub new: bool,
}

impl Ca {
    /// The CSR for the next intermediate of `trust_domain`: the pending one if there is one (a
    /// retried request gets the same CSR), else a fresh key (the trust domain's
    /// `key_algorithm`), sealed and kept. `replace` makes a fresh key even when one waits.
    pub async fn intermediate_csr(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        replace: bool,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<PendingCsr, Error> {
        let config = self
            .config
            .trust_domain(trust_domain)
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?
            .clone();
        if !replace && let Some(pending) = self.store.pending_key(trust_domain.as_str()).await? {
            return Ok(PendingCsr {
                trust_domain: pending.trust_domain,
                csr_pem: pending.csr_pem,
                key_algorithm: pending.key_algorithm,
                created_at: pending.created_at,
                new: false,
            });
        }
        let (key, csr_pem) =
            authority::intermediate_csr(trust_domain, config.key_algorithm).map_err(Error::Csr)?;
        let created_at = now.unix_timestamp();
        let sealed = authority::seal_pending_key(trust_domain.as_str(), &key, created_at, kek)
            .map_err(|source| authority::Error::Key {
                trust_domain: trust_domain.to_string(),
                source,
            })?;
        let record = PendingKey {
            trust_domain: trust_domain.to_string(),
            key_algorithm: key.algorithm().as_str().to_owned(),
            sealed_key: sealed,
            csr_pem: csr_pem.clone(),
            created_at,
        };
        self.store.put_pending_key(&record).await?;
        self.audit(AuditEvent {
            at: created_at,
            actor: actor.to_owned(),
            action: "ca.csr".to_owned(),
            target: trust_domain.to_string(),
            outcome: "success".to_owned(),
            request_id: String::new(),
            detail: format!(
                "a {} key and its CSR made for the next intermediate",
                record.key_algorithm
            ),
        })
        .await;
        Ok(PendingCsr {
            trust_domain: record.trust_domain,
            csr_pem,
            key_algorithm: record.key_algorithm,
            created_at,
            new: true,
        })
    }

    /// Imports an externally signed intermediate (see the module docs). Without `ca_key_pem`
    /// the certificate must be for the key of [`Ca::intermediate_csr`]. A refusal changes
    /// nothing.
    pub async fn import_intermediate(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        files: &CaFiles<'_>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Imported, Error> {
        let config = self
            .config
            .trust_domain(trust_domain)
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?
            .clone();
        let td = trust_domain.as_str();
        let pending = match files.ca_key_pem {
            Some(_) => None,
            None => Some(
                self.store
                    .pending_key(td)
                    .await?
                    .ok_or_else(|| Error::NoPendingKey(td.to_owned()))?,
            ),
        };
        let pending_key = pending
            .as_ref()
            .map(|p| {
                authority::open_pending_key(td, &p.key_algorithm, &p.sealed_key, p.created_at, kek)
            })
            .transpose()?;
        let now_s = now.unix_timestamp();
        let imported =
            external_ca::validate(files, pending_key, trust_domain, config.max_ttl, now_s)?;
        let generations = self.store.generations(td).await?;
        if generations.iter().any(|g| g.state == "prepared") {
            return Err(Error::InFlight(td.to_owned()));
        }
        if let Some(same) = generations
            .iter()
            .find(|g| g.issuer_key_id == imported.issuer_key_id)
        {
            return Err(Error::AlreadyInstalled {
                trust_domain: td.to_owned(),
                generation: same.generation,
            });
        }
        let active = generations
            .iter()
            .find(|g| g.state == "active")
            .ok_or_else(|| Error::UnknownTrustDomain(td.to_owned()))?;
        let number = generations.iter().map(|g| g.generation).max().unwrap_or(0) + 1;
        let same_root = active.root_cert == imported.root_der;
        // Under one of our own roots the root's key goes with it, so rotation stays automatic.
        let root_key = match same_root && !active.external_root() {
            true => Some(authority::open_key(active, kek, "root")?),
            false => None,
        };
        let mut next =
            authority::seal_imported(td, number, &imported, root_key.as_ref(), kek, now)?;
        let scope = if same_root {
            if !self
                .store
                .rotate_generation(active.generation, &next, now_s)
                .await?
            {
                self.reload_trust_domain(kek, trust_domain).await?;
                return Err(Error::InFlight(td.to_owned()));
            }
            Scope::Intermediate
        } else {
            self.insert_prepared(kek, trust_domain, &mut next).await?;
            Scope::Root
        };
        if let Some(pending) = &pending {
            self.store
                .delete_pending_key(td, pending.created_at)
                .await?;
        }
        self.metrics
            .rotations
            .get_or_create(&RotationLabels {
                trust_domain: td.to_owned(),
                scope: scope.as_str().to_owned(),
                trigger: "import".to_owned(),
            })
            .inc();
        self.audit(AuditEvent {
            at: now_s,
            actor: actor.to_owned(),
            action: "ca.import".to_owned(),
            target: td.to_owned(),
            outcome: "success".to_owned(),
            request_id: String::new(),
            detail: format!(
                "plug-in intermediate {} ({}) as generation {number}, {}",
                imported.issuer_key_id,
                if pending.is_some() {
                    "key made here"
                } else {
                    "key imported"
                },
                if same_root {
                    format!("active; generation {} retired", active.generation)
                } else {
                    "prepared: its new root is published and activates once converged".to_owned()
                }
            ),
        })
        .await;
        tracing::info!(trust_domain = %td, generation = number, same_root, "plug-in intermediate imported");
        self.reload_trust_domain(kek, trust_domain).await?;
        let max_ttl = i64::try_from(config.max_ttl.as_secs()).unwrap_or(i64::MAX / 4);
        let (activated_at, activation_latest) = match same_root {
            true => (now_s, now_s),
            false => activation_window(&config, now_s),
        };
        let next_rotation_at = self
            .authorities()
            .generation(trust_domain, number)
            .or(self.authorities().prepared(trust_domain))
            .map(|a| rotation_due_at(a, &config))
            .unwrap_or(next.not_after);
        Ok(Imported {
            rotated: Rotated {
                trust_domain: td.to_owned(),
                scope,
                retired_generation: active.generation,
                generation: number,
                state: if same_root { "active" } else { "prepared" },
                published_at: now_s,
                activated_at,
                activation_latest,
                not_after: next.not_after,
                next_rotation_at,
                retired_removal_at: activation_latest + max_ttl + REMOVAL_MARGIN.as_secs() as i64,
            },
            warnings: imported.warnings,
        })
    }
}
