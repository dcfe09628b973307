//! The CA lifecycle of each trust domain (SPEC 10), as far as it is built: **intermediate
//! rotation under the same root**, automatic and on demand, with every replica converging on
//! the store's state.
//!
//! - A generation is an intermediate and its root; the store keeps every generation with its
//!   state (`active`, exactly one per trust domain by a unique index; `retired`; `removed`).
//! - **Due**: half of the active intermediate's life has passed, or less than twice `max_ttl`
//!   of it is left (a leaf always gets its full TTL). The new intermediate is signed by the same
//!   root and activated at once: the root, hence every trust set and bundle, is unchanged, so no
//!   relying party needs to learn anything first.
//! - **One replica performs it**: the store's rotation is a compare-and-set (retire `n` only if
//!   it is still active, insert `n + 1`), in one transaction; the loser changes nothing and
//!   loads the winner's generation. Every replica compares the store's active generation with
//!   its own on each job tick (5 s) and reloads when they differ.
//! - A **retired** generation keeps answering for its leaves (OCSP, its CRL at
//!   `/v1/crl/{td}/{n}`, mTLS renewal) until its last leaf has expired plus [`REMOVAL_MARGIN`];
//!   then it is `removed` and unloaded.
//! - Every transition is an audit event and counted (`ca_rotations_total`,
//!   `ca_generation_state`).
//!
//! - **Emergency revocation** of a generation ([`Ca::revoke_generation`]): an active one is
//!   replaced first (a fresh intermediate under the same root becomes active at once); the
//!   generation becomes `revoked`: it signs and renews nothing (mTLS renewal with its leaves is
//!   refused; the workload falls back to its token), OCSP answers `revoked` (`cACompromise`
//!   unless another reason is given) for its leaves, and its intermediate is listed on the
//!   root-signed CRL at `/v1/crl/{td}/root`. The root, hence every trust set, is unchanged:
//!   this is an intermediate compromise; a root compromise needs root rotation.
//!
//! - **Root rotation** (`scope = root`, or when less than twice `intermediate_ttl` of the
//!   root's life remains): a new root and intermediate are made as generation n+1, `prepared`:
//!   they sign nothing, but the new root is **published** at once in every trust set (our
//!   bundle's sequence bumps; Istio answers, `ca.v1`, WatchBundles, root ConfigMaps and
//!   federated peers carry old + new roots). It is **activated** (n+1 active, n retired) once
//!   **converged**: every live leaf of the trust domain was issued after the publication (its
//!   holder received the new trust set with it) and at least three refresh hints have passed
//!   (federated peers fetched it); or anyway after `root_activation_max_wait` (default twice
//!   `max_ttl`, by when every old leaf has expired). `ca_rotation_convergence_ratio` reports the
//!   share. The old root stays in every trust set while a generation under it is loaded
//!   (retired, until its last leaf expired + margin), then drops out (sequence bumps again).
//!   **Decision: no cross-signing.** The new intermediate is signed by the new root only:
//!   publish-first gives every relying party the new root before any leaf chains to it, so a
//!   cross-certificate would add nothing but a second chain shape, which Istio's agents
//!   (last element = roots) and ztunnel would have to handle; and an old-root cross-signature
//!   would extend the old root's reach past its retirement.
//!
//! - **Plug-in CAs** (`plug_in`): an intermediate signed outside joins as the next generation,
//!   active at once under the same root, or `prepared` under a new root and activated as above.
//!   An external root's key is not here: nothing under it rotates on its own (the lifecycle
//!   warns when the intermediate is due), and `scope = intermediate` is refused (409
//!   `external_root`).
//!
//! When the root would not let a new intermediate outlive the current one, the rotation is
//! refused and logged: the root must be rotated (automatic when it is due).

use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::audit::AuditEvent;
use crate::authority::{self, Authorities, Authority};
use crate::ca::Ca;
use crate::config::TrustDomainConfig;
use crate::keys::Kek;
use crate::metrics::RotationLabels;
use crate::revocation::{CachedCrl, Reason, crl};
use crate::spiffe::TrustDomain;
use crate::store;
use crate::store::RevokedRecord;

/// A retired generation stays loaded this long after its last leaf expired.
pub const REMOVAL_MARGIN: Duration = Duration::from_secs(3600);

/// What a rotation replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Intermediate,
    Root,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "intermediate" => Some(Scope::Intermediate),
            "root" => Some(Scope::Root),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Intermediate => "intermediate",
            Scope::Root => "root",
        }
    }
}

/// Why a lifecycle operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CA for trust domain {0}")]
    UnknownTrustDomain(String),
    /// Another replica (or request) changed the generation first.
    #[error("a rotation of {0} is in flight or just happened; look again")]
    InFlight(String),
    #[error(
        "the root of {trust_domain} expires before a new intermediate would outlive the current one; rotate the root"
    )]
    RootTooShort { trust_domain: String },
    #[error("trust domain {trust_domain} has no CA generation {generation}")]
    UnknownGeneration {
        trust_domain: String,
        generation: i32,
    },
    #[error("cannot build the root-signed CRL: {0}")]
    Crl(String),
    /// The generation's root key is not here (a plug-in CA).
    #[error(
        "the root of {0} is external: the CA cannot make an intermediate under it; import or install the next one (cactl ca import, or cactl ca csr and install)"
    )]
    ExternalRoot(String),
    #[error(
        "no key waits for a certificate in {0}: make one with cactl ca csr first, or import the key too"
    )]
    NoPendingKey(String),
    #[error("this intermediate is already generation {generation} of {trust_domain}")]
    AlreadyInstalled {
        trust_domain: String,
        generation: i32,
    },
    #[error("cannot make the CSR: {0}")]
    Csr(String),
    #[error(transparent)]
    Import(#[from] crate::external_ca::ImportError),
    #[error(transparent)]
    Authority(#[from] authority::Error),
    #[error("cannot read or write the CA generations")]
    Store(#[from] store::Error),
}

/// A rotation performed (intermediate: the new generation is active) or started (root: the new
/// generation is published, `prepared`, and activated by the lifecycle once converged).
#[derive(Debug, Clone)]
pub struct Rotated {
    pub trust_domain: String,
    pub scope: Scope,
    /// The generation that was active (retired now, or at the root's activation).
    pub retired_generation: i32,
    pub generation: i32,
    /// `active` or `prepared`.
    pub state: &'static str,
    /// When the new generation was published (its root in every trust set).
    pub published_at: i64,
    /// When it became active, or the earliest it can (root: 3 refresh hints after publishing,
    /// once converged) and the latest (`root_activation_max_wait`).
    pub activated_at: i64,
    pub activation_latest: i64,
    /// The new intermediate's notAfter.
    pub not_after: i64,
    /// When the next automatic rotation is due.
    pub next_rotation_at: i64,
    /// When the retired generation will be removed at the latest (its leaves' last notAfter,
    /// bounded by `max_ttl` from now, plus the margin).
    pub retired_removal_at: i64,
}

/// When a root rotation starts on its own: when less than twice `intermediate_ttl` of the root's
/// life remains (intermediates would soon be cut short by it).
pub fn root_rotation_due_at(authority: &Authority, config: &TrustDomainConfig) -> i64 {
    let lead = i64::try_from(config.intermediate_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    authority
        .root_not_after
        .saturating_sub(lead.saturating_mul(2))
}

/// The earliest and latest activation of a root published at `published`: 3 refresh hints
/// after it (federated peers have fetched it), and `root_activation_max_wait` after it.
pub fn activation_window(config: &TrustDomainConfig, published: i64) -> (i64, i64) {
    let hints = i64::try_from(config.refresh_hint.as_secs()).unwrap_or(0) * 3;
    let max_wait = i64::try_from(config.root_activation_max_wait.as_secs()).unwrap_or(i64::MAX / 4);
    (published + hints, published + max_wait.max(hints))
}

/// When the active intermediate of a trust domain is due for replacement: at half its life, or
/// when less than twice `max_ttl` remains, whichever comes first.
pub fn rotation_due_at(authority: &Authority, config: &TrustDomainConfig) -> i64 {
    let life = authority.intermediate_not_after - authority.intermediate_not_before;
    let half = authority.intermediate_not_before + life / 2;
    let max_ttl = i64::try_from(config.max_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    half.min(authority.intermediate_not_after - 2 * max_ttl)
}

/// A generation revoked in an emergency.
#[derive(Debug, Clone)]
pub struct RevokedGeneration {
    pub trust_domain: String,
    pub generation: i32,
    pub reason: Reason,
    pub revoked_at: i64,
    /// False when it was already revoked (nothing changed).
    pub newly_revoked: bool,
    /// The generation active afterwards.
    pub active_generation: i32,
}

impl Ca {
    /// Revokes a CA generation in an emergency (see the module docs). Revoking the active one
    /// activates a fresh one first. Idempotent: an already revoked generation is reported as such.
    pub async fn revoke_generation(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        generation: i32,
        reason: Reason,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokedGeneration, Error> {
        if self.config.trust_domain(trust_domain).is_none() {
            return Err(Error::UnknownTrustDomain(trust_domain.to_string()));
        }
        let unknown = || Error::UnknownGeneration {
            trust_domain: trust_domain.to_string(),
            generation,
        };
        let record = self
            .store
            .generations(trust_domain.as_str())
            .await?
            .into_iter()
            .find(|g| g.generation == generation)
            .ok_or_else(unknown)?;
        let now_s = now.unix_timestamp();
        if record.state == "revoked" {
            let active = self
                .store
                .active_generation_number(trust_domain.as_str())
                .await?;
            return Ok(RevokedGeneration {
                trust_domain: trust_domain.to_string(),
                generation,
                reason: record
                    .revocation_reason
                    .as_deref()
                    .and_then(Reason::parse)
                    .unwrap_or(reason),
                revoked_at: record.removed_at.unwrap_or(now_s),
                newly_revoked: false,
                active_generation: active.unwrap_or(0),
            });
        }
        if record.state == "active" {
            // Never leave the trust domain without a signer: a fresh generation first.
            self.rotate(
                kek,
                trust_domain,
                Scope::Intermediate,
                "emergency",
                actor,
                now,
            )
            .await?;
        }
        if !self
            .store
            .revoke_generation(trust_domain.as_str(), generation, reason.as_str(), now_s)
            .await?
        {
            self.reload_trust_domain(kek, trust_domain).await?;
            return Err(Error::InFlight(trust_domain.to_string()));
        }
        self.audit(AuditEvent {
            at: now_s,
            actor: actor.to_owned(),
            action: "ca.generation.revoke".to_owned(),
            target: trust_domain.to_string(),
            outcome: "success".to_owned(),
            request_id: String::new(),
            detail: format!(
                "generation {generation} (intermediate {}) revoked: {}",
                record.issuer_key_id,
                reason.as_str()
            ),
        })
        .await;
        tracing::warn!(trust_domain = %trust_domain, generation, reason = reason.as_str(), "CA generation revoked");
        self.reload_trust_domain(kek, trust_domain).await?;
        // Cached OCSP answers are keyed by status, which is read afresh on every request: a
        // cached `good` for one of its leaves is simply not used any more.
        let active = self
            .authorities()
            .get(trust_domain)
            .map(|a| a.generation)
            .unwrap_or(0);
        Ok(RevokedGeneration {
            trust_domain: trust_domain.to_string(),
            generation,
            reason,
            revoked_at: now_s,
            newly_revoked: true,
            active_generation: active,
        })
    }

    /// The CRL signed by the trust domain's root, listing the intermediates revoked in an
    /// emergency (`/v1/crl/{td}/root`). Cached like the others; the root key is opened only to
    /// build it.
    pub async fn root_crl(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
    ) -> Result<CachedCrl, Error> {
        let key = format!("root:{trust_domain}");
        if let Some(cached) = self.crls.fresh(&key, now.unix_timestamp()) {
            return Ok(cached);
        }
        let _building = self.crls.building().await;
        if let Some(cached) = self.crls.fresh(&key, now.unix_timestamp()) {
            return Ok(cached);
        }
        let config = self
            .config
            .trust_domain(trust_domain)
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?;
        let generations = self.store.generations(trust_domain.as_str()).await?;
        let active = generations
            .iter()
            .find(|g| g.state == "active")
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?;
        if active.external_root() {
            return Err(Error::ExternalRoot(trust_domain.to_string()));
        }
        let root = authority::open_root(active, kek)?;
        let marker = self.store.revocation_marker(&active.issuer_key_id).await?;
        let root_serial = {
            let (_, cert) = x509_parser::prelude::X509Certificate::from_der(&active.root_cert)
                .map_err(|e| Error::Crl(e.to_string()))?;
            hex::encode(cert.raw_serial())
        };
        // The number and the generations it lists in one transaction: a higher number never
        // lists less (`Store::next_root_crl`).
        let (number, listed) = self
            .store
            .next_root_crl(&format!("root:{root_serial}"), trust_domain.as_str())
            .await?;
        let mut entries = Vec::new();
        for g in listed
            .iter()
            .filter(|g| g.state == "revoked" && g.root_cert == active.root_cert)
        {
            let (_, cert) = x509_parser::prelude::X509Certificate::from_der(&g.intermediate_cert)
                .map_err(|e| Error::Crl(e.to_string()))?;
            entries.push(RevokedRecord {
                serial: hex::encode(cert.raw_serial()),
                revoked_at: g.removed_at.unwrap_or(g.created_at),
                revocation_reason: g.revocation_reason.clone(),
            });
        }
        entries.sort_by(|a, b| a.serial.cmp(&b.serial));
        let built = crl::build_by(
            &root,
            &active.root_cert,
            &entries,
            number,
            now,
            config.crl_validity,
        )
        .map_err(Error::Crl)?;
        let cached = CachedCrl {
            der: std::sync::Arc::new(built.der),
            number,
            this_update: built.this_update,
            next_update: built.next_update,
            marker,
        };
        self.crls.insert(&key, trust_domain.clone(), cached.clone());
        Ok(cached)
    }

    /// Replaces the active intermediate of `trust_domain` now (same root).
    pub async fn rotate(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        scope: Scope,
        trigger: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Rotated, Error> {
        if scope == Scope::Root {
            return self
                .publish_root(kek, trust_domain, trigger, actor, now)
                .await;
        }
        if self.authorities().prepared(trust_domain).is_some() {
            // A root rotation is in flight: its activation replaces the intermediate anyway.
            return Err(Error::InFlight(trust_domain.to_string()));
        }
        let config = self
            .config
            .trust_domain(trust_domain)
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?
            .clone();
        let current = self
            .store
            .active_generation(trust_domain.as_str())
            .await?
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?;
        if current.external_root() {
            return Err(Error::ExternalRoot(trust_domain.to_string()));
        }
        let loaded = self.authorities().get(trust_domain).cloned();
        if loaded.as_ref().map(|a| a.generation) != Some(current.generation) {
            // Another replica rotated since we loaded: take its generation, do not rotate again.
            self.reload_trust_domain(kek, trust_domain).await?;
            return Err(Error::InFlight(trust_domain.to_string()));
        }
        let next = authority::next_intermediate_generation(&config, kek, &current, now)?;
        let now_s = now.unix_timestamp();
        // A new intermediate that would itself be due at once (the root ends too soon to give
        // it a useful life) would rotate on every tick: refuse, the root must be rotated.
        let max_ttl = i64::try_from(config.max_ttl.as_secs()).unwrap_or(i64::MAX / 4);
        let next_due = (now_s + (next.not_after - now_s) / 2).min(next.not_after - 2 * max_ttl);
        if next_due <= now_s {
            return Err(Error::RootTooShort {
                trust_domain: trust_domain.to_string(),
            });
        }
        if !self
            .store
            .rotate_generation(current.generation, &next, now_s)
            .await?
        {
            self.reload_trust_domain(kek, trust_domain).await?;
            return Err(Error::InFlight(trust_domain.to_string()));
        }
        self.metrics
            .rotations
            .get_or_create(&RotationLabels {
                trust_domain: trust_domain.to_string(),
                scope: scope.as_str().to_owned(),
                trigger: trigger.to_owned(),
            })
            .inc();
        self.audit(AuditEvent {
            at: now_s,
            actor: actor.to_owned(),
            action: "ca.rotate".to_owned(),
            target: trust_domain.to_string(),
            outcome: "success".to_owned(),
            request_id: String::new(),
            detail: format!(
                "{} by {trigger}: generation {} active (intermediate {}), generation {} retired",
                scope.as_str(),
                next.generation,
                next.issuer_key_id,
                current.generation
            ),
        })
        .await;
        tracing::info!(
            trust_domain = %trust_domain,
            trigger,
            generation = next.generation,
            retired = current.generation,
            "intermediate rotated"
        );
        self.reload_trust_domain(kek, trust_domain).await?;
        let last_leaf = self
            .store
            .last_leaf_not_after(&current.issuer_key_id)
            .await?
            .unwrap_or(now_s)
            .min(now_s + max_ttl);
        let next_rotation_at = self
            .authorities()
            .get(trust_domain)
            .map(|a| rotation_due_at(a, &config))
            .unwrap_or(next.not_after);
        Ok(Rotated {
            trust_domain: trust_domain.to_string(),
            scope,
            retired_generation: current.generation,
            generation: next.generation,
            state: "active",
            published_at: now_s,
            activated_at: now_s,
            activation_latest: now_s,
            not_after: next.not_after,
            next_rotation_at,
            retired_removal_at: last_leaf + REMOVAL_MARGIN.as_secs() as i64,
        })
    }

    /// Starts a root rotation: a new root and intermediate, `prepared` (signing nothing) and
    /// published at once in every trust set (bundle sequence bump, every Istio answer's last
    /// element, `ca.v1` bundles, WatchBundles, the root ConfigMaps, federated peers' next fetch).
    /// The lifecycle activates it once converged (see [`Ca::lifecycle_tick`]).
    async fn publish_root(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        trigger: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Rotated, Error> {
        let config = self
            .config
            .trust_domain(trust_domain)
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?
            .clone();
        let generations = self.store.generations(trust_domain.as_str()).await?;
        if generations.iter().any(|g| g.state == "prepared") {
            return Err(Error::InFlight(trust_domain.to_string()));
        }
        let active = generations
            .iter()
            .find(|g| g.state == "active")
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?;
        let number = generations.iter().map(|g| g.generation).max().unwrap_or(0) + 1;
        let mut next = authority::create_generation(&config, kek, number, now)?;
        self.insert_prepared(kek, trust_domain, &mut next).await?;
        let now_s = now.unix_timestamp();
        self.metrics
            .rotations
            .get_or_create(&RotationLabels {
                trust_domain: trust_domain.to_string(),
                scope: Scope::Root.as_str().to_owned(),
                trigger: trigger.to_owned(),
            })
            .inc();
        self.audit(AuditEvent {
            at: now_s,
            actor: actor.to_owned(),
            action: "ca.root.publish".to_owned(),
            target: trust_domain.to_string(),
            outcome: "success".to_owned(),
            request_id: String::new(),
            detail: format!(
                "root rotation by {trigger}: generation {number} (new root, intermediate {}) published, prepared",
                next.issuer_key_id
            ),
        })
        .await;
        tracing::info!(trust_domain = %trust_domain, trigger, generation = number, "new root published; activation waits for convergence");
        self.reload_trust_domain(kek, trust_domain).await?;
        let (earliest, latest) = activation_window(&config, now_s);
        let next_rotation_at = self
            .authorities()
            .prepared(trust_domain)
            .map(|a| rotation_due_at(a, &config))
            .unwrap_or(next.not_after);
        Ok(Rotated {
            trust_domain: trust_domain.to_string(),
            scope: Scope::Root,
            retired_generation: active.generation,
            generation: number,
            state: "prepared",
            published_at: now_s,
            activated_at: earliest,
            activation_latest: latest,
            not_after: next.not_after,
            next_rotation_at,
            retired_removal_at: latest
                + i64::try_from(config.max_ttl.as_secs()).unwrap_or(0)
                + REMOVAL_MARGIN.as_secs() as i64,
        })
    }

    /// Stores `next` as the trust domain's `prepared` generation (its root published from now
    /// on); `InFlight` when another one got there first (that one is loaded instead).
    pub(crate) async fn insert_prepared(
        &self,
        kek: &Kek,
        trust_domain: &TrustDomain,
        next: &mut authority::SealedGeneration,
    ) -> Result<(), Error> {
        next.state = "prepared".to_owned();
        next.activated_at = None;
        match self.store.insert_generation(next).await {
            Ok(()) => Ok(()),
            Err(store::Error::Conflict(_)) => {
                self.reload_trust_domain(kek, trust_domain).await?;
                Err(Error::InFlight(trust_domain.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Activates a prepared root when converged: every live leaf was issued after the new root
    /// was published (their holders received the new trust set with them) and at least three
    /// refresh hints have passed (federated peers fetched it), or anyway once
    /// `root_activation_max_wait` has passed. Reports the convergence in
    /// `ca_rotation_convergence_ratio`. Returns whether it activated.
    async fn activate_root_if_converged(
        &self,
        kek: &Kek,
        config: &TrustDomainConfig,
        now: OffsetDateTime,
    ) -> Result<bool, Error> {
        let td = &config.name;
        let generations = self.store.generations(td.as_str()).await?;
        let (Some(prepared), Some(active)) = (
            generations.iter().find(|g| g.state == "prepared"),
            generations.iter().find(|g| g.state == "active"),
        ) else {
            self.metrics
                .rotation_convergence
                .get_or_create(&crate::metrics::TrustDomainLabels {
                    trust_domain: td.to_string(),
                })
                .set(1.0);
            return Ok(false);
        };
        let now_s = now.unix_timestamp();
        let published = prepared.created_at;
        let issuers: Vec<String> = generations
            .iter()
            .filter(|g| matches!(g.state.as_str(), "active" | "retired"))
            .map(|g| g.issuer_key_id.clone())
            .collect();
        let (total, fresh) = self
            .store
            .live_leaves_since(&issuers, published, now_s)
            .await?;
        let ratio = if total == 0 {
            1.0
        } else {
            fresh as f64 / total as f64
        };
        self.metrics
            .rotation_convergence
            .get_or_create(&crate::metrics::TrustDomainLabels {
                trust_domain: td.to_string(),
            })
            .set(ratio);
        let (earliest, latest) = activation_window(config, published);
        let converged = fresh == total && now_s >= earliest;
        if !converged && now_s < latest {
            return Ok(false);
        }
        if !self
            .store
            .activate_prepared(td.as_str(), active.generation, prepared.generation, now_s)
            .await?
        {
            self.reload_trust_domain(kek, td).await?;
            return Ok(false);
        }
        let why = if converged {
            format!("converged ({fresh}/{total} live leaves issued since the root was published)")
        } else {
            format!("maximum wait reached ({fresh}/{total} converged)")
        };
        self.audit(AuditEvent {
            at: now_s,
            actor: "server".to_owned(),
            action: "ca.root.activate".to_owned(),
            target: td.to_string(),
            outcome: "success".to_owned(),
            request_id: String::new(),
            detail: format!(
                "generation {} (new root) active, generation {} retired: {why}",
                prepared.generation, active.generation
            ),
        })
        .await;
        tracing::info!(trust_domain = %td, generation = prepared.generation, why = %why, "new root activated");
        self.reload_trust_domain(kek, td).await?;
        Ok(true)
    }

    /// One pass of the lifecycle for every trust domain (the job tick runs it on every
    /// replica): take another replica's transition, rotate what is due, remove retired
    /// generations whose leaves have all expired. Errors are logged; the next tick retries.
    ///
    /// `with_removal`: also look for retired generations to remove (reads every generation row;
    /// the job runs it on its slow tick).
    pub async fn lifecycle_tick(&self, kek: &Kek, now: OffsetDateTime, with_removal: bool) {
        let trust_domains: Vec<TrustDomainConfig> = self.config.trust_domains.clone();
        for config in &trust_domains {
            let td = &config.name;
            if let Err(e) = self.lifecycle_of(kek, config, now, with_removal).await {
                match e {
                    Error::InFlight(_) => {
                        tracing::debug!(trust_domain = %td, "another replica rotated first")
                    }
                    other => {
                        tracing::warn!(trust_domain = %td, error = %crate::report::Chain(&other), "CA lifecycle step failed; will retry")
                    }
                }
            }
        }
    }

    async fn lifecycle_of(
        &self,
        kek: &Kek,
        config: &TrustDomainConfig,
        now: OffsetDateTime,
        with_removal: bool,
    ) -> Result<(), Error> {
        let td = &config.name;
        let stored = self.store.active_generation_number(td.as_str()).await?;
        let loaded = self.authorities().get(td).map(|a| a.generation);
        if stored.is_some() && stored != loaded {
            self.reload_trust_domain(kek, td).await?;
        }
        let Some(active) = self.authorities().get(td).cloned() else {
            return Ok(());
        };
        let root_in_flight = self.authorities().prepared(td).is_some();
        if active.external_root {
            // Nothing to rotate with: say so (on the slow tick) once the intermediate is due.
            if with_removal
                && !root_in_flight
                && now.unix_timestamp() >= rotation_due_at(&active, config)
            {
                tracing::warn!(
                    trust_domain = %td,
                    generation = active.generation,
                    not_after = active.intermediate_not_after,
                    "the plug-in intermediate is due for replacement and its root's key is not here: install the next one (cactl ca csr / cactl ca install, or cactl ca import)"
                );
            }
            if root_in_flight && with_removal {
                self.activate_root_if_converged(kek, config, now).await?;
            }
        } else if root_in_flight {
            if with_removal {
                self.activate_root_if_converged(kek, config, now).await?;
            }
        } else if now.unix_timestamp() >= root_rotation_due_at(&active, config) {
            match self
                .rotate(kek, td, Scope::Root, "schedule", "server", now)
                .await
            {
                Ok(_) | Err(Error::InFlight(_)) => {}
                Err(e) => return Err(e),
            }
        } else if now.unix_timestamp() >= rotation_due_at(&active, config) {
            match self
                .rotate(kek, td, Scope::Intermediate, "schedule", "server", now)
                .await
            {
                Ok(_) | Err(Error::InFlight(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if with_removal {
            self.remove_expired_generations(kek, td, now).await?;
        }
        Ok(())
    }

    /// Retired generations whose last leaf expired more than [`REMOVAL_MARGIN`] ago become
    /// `removed` (one replica wins each; the others see it on their next reload).
    async fn remove_expired_generations(
        &self,
        kek: &Kek,
        td: &TrustDomain,
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        let now_s = now.unix_timestamp();
        let max_ttl = self
            .config
            .trust_domain(td)
            .map(|c| i64::try_from(c.max_ttl.as_secs()).unwrap_or(i64::MAX / 4))
            .unwrap_or(0);
        let mut changed = false;
        for generation in self.store.generations(td.as_str()).await? {
            if generation.state != "retired" {
                continue;
            }
            // A retired generation signs nothing after `retired_at`: until `max_ttl` (+ the
            // margin) has passed since, some leaf of it may be live. Skip the query over its
            // leaves until then (it reads every row of the issuer).
            let retired_at = generation.retired_at.unwrap_or(generation.created_at);
            if now_s
                < retired_at
                    .saturating_add(max_ttl)
                    .saturating_add(REMOVAL_MARGIN.as_secs() as i64)
            {
                continue;
            }
            let last = self
                .store
                .last_leaf_not_after(&generation.issuer_key_id)
                .await?
                .unwrap_or(generation.retired_at.unwrap_or(generation.created_at));
            if now_s < last + REMOVAL_MARGIN.as_secs() as i64 {
                continue;
            }
            if self
                .store
                .transition_generation(
                    td.as_str(),
                    generation.generation,
                    "retired",
                    "removed",
                    now_s,
                )
                .await?
            {
                changed = true;
                self.audit(AuditEvent {
                    at: now_s,
                    actor: "server".to_owned(),
                    action: "ca.generation.remove".to_owned(),
                    target: td.to_string(),
                    outcome: "success".to_owned(),
                    request_id: String::new(),
                    detail: format!(
                        "generation {} removed: its last leaf expired at {last}",
                        generation.generation
                    ),
                })
                .await;
                tracing::info!(trust_domain = %td, generation = generation.generation, "retired CA generation removed");
            }
        }
        if changed {
            self.reload_trust_domain(kek, td).await?;
        }
        Ok(())
    }

    /// Loads a trust domain's active and retired generations from the store and swaps them in;
    /// refreshes their metrics.
    pub async fn reload_trust_domain(&self, kek: &Kek, td: &TrustDomain) -> Result<(), Error> {
        let mut loaded = Authorities::default();
        let public_url = self.config.listen.public_url.clone();
        for record in self.store.generations(td.as_str()).await? {
            self.metrics
                .generation_state(td.as_str(), record.generation, &record.state);
            if !matches!(
                record.state.as_str(),
                "active" | "retired" | "revoked" | "prepared"
            ) {
                continue;
            }
            let mut authority = authority::open_generation(&record, kek)?;
            if let Some(base) = &public_url {
                authority.publish_at(base);
            }
            for (kind, not_after) in [
                ("intermediate", authority.intermediate_not_after),
                ("root", authority.root_not_after),
            ] {
                self.metrics
                    .cert_expiry(td.as_str(), kind, &authority.issuer_key_id, not_after);
            }
            match record.state.as_str() {
                "active" => loaded.insert(authority),
                "retired" => loaded.insert_retired(authority),
                "prepared" => loaded.insert_prepared(authority),
                _ => loaded.insert_revoked(authority),
            }
        }
        if loaded.get(td).is_none() {
            return Err(authority::Error::Inconsistent {
                trust_domain: td.to_string(),
                message: "no active generation in the store".to_owned(),
            }
            .into());
        }
        let roots = loaded.trust_roots(td);
        self.set_trust_domain_authorities(td, loaded);
        // CRLs are per generation; the next fetch builds what is now loaded.
        self.crls.mark_stale(td.as_str());
        // The trust set may have changed (a published or dropped root): publish it (the stored
        // sequence goes up only when the content changed).
        self.publish_own_bundle(td, &roots, OffsetDateTime::now_utc().unix_timestamp())
            .await?;
        Ok(())
    }
}
