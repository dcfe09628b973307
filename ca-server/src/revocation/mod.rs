//! Revocation state and its signed artefacts.
//!
//! - Revoke by serial, deny an identity (optionally revoking its live certificates), lift a deny.
//! - [`DenyList`]: the denied identities in memory, checked on every issuance path without a
//!   database round trip. The replica that takes a deny updates its copy before the call returns;
//!   other replicas reload every few seconds (`jobs.rs`).
//! - [`CrlCache`]: the current CRL of each trust domain's issuer, rebuilt at half-life, at once
//!   on the replica that revoked, and within one job tick on the others (the store's revocation
//!   marker changed).
//! - `crl.rs` and `ocsp.rs` build the signed artefacts; they do no I/O.

pub mod crl;
pub mod ocsp;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use time::OffsetDateTime;

use crate::authority::Authority;
use crate::enrollment::Ca;
use crate::revocation::ocsp::{IssuerHashes, Refusal, Status};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::store::{self, DeniedRecord};

/// RFC 5280 reason codes, by their RFC names. `removeFromCRL` and `certificateHold` are not
/// accepted: we do not support holds, a revocation is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];

    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "cACompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aACompromise",
        }
    }

    /// The CRLReason code (RFC 5280 5.3.1).
    pub fn code(self) -> u8 {
        match self {
            Reason::Unspecified => 0,
            Reason::KeyCompromise => 1,
            Reason::CaCompromise => 2,
            Reason::AffiliationChanged => 3,
            Reason::Superseded => 4,
            Reason::CessationOfOperation => 5,
            Reason::PrivilegeWithdrawn => 9,
            Reason::AaCompromise => 10,
        }
    }
}

/// The denied identities, in memory.
#[derive(Debug, Default)]
pub struct DenyList {
    /// The map and a version bumped by every local change, under one lock: a reload that read
    /// the store before a local change must not overwrite it.
    inner: RwLock<(HashMap<String, DeniedRecord>, u64)>,
}

impl DenyList {
    pub fn is_denied(&self, spiffe_id: &SpiffeId) -> bool {
        self.inner
            .read()
            .map(|inner| inner.0.contains_key(spiffe_id.as_str()))
            // A poisoned lock means a writer panicked: fail closed.
            .unwrap_or(true)
    }

    /// The version to pass to [`DenyList::replace_if_unchanged`].
    pub fn version(&self) -> u64 {
        self.inner.read().map(|inner| inner.1).unwrap_or(0)
    }

    /// Replaces the whole list with what the store said, unless a local change happened since
    /// `version` was read (the next reload will catch up).
    pub fn replace_if_unchanged(&self, records: Vec<DeniedRecord>, version: u64) -> bool {
        match self.inner.write() {
            Ok(mut inner) if inner.1 == version => {
                inner.0 = records
                    .into_iter()
                    .map(|r| (r.spiffe_id.clone(), r))
                    .collect();
                true
            }
            _ => false,
        }
    }

    fn insert(&self, record: DeniedRecord) {
        if let Ok(mut inner) = self.inner.write() {
            inner.0.insert(record.spiffe_id.clone(), record);
            inner.1 += 1;
        }
    }

    fn remove(&self, spiffe_id: &str) {
        if let Ok(mut inner) = self.inner.write() {
            inner.0.remove(spiffe_id);
            inner.1 += 1;
        }
    }

    /// Denied identities per trust domain (for the gauge).
    pub fn counts(&self) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        if let Ok(inner) = self.inner.read() {
            for record in inner.0.values() {
                *counts.entry(record.trust_domain.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// A built CRL.
#[derive(Debug, Clone)]
pub struct CachedCrl {
    pub der: Arc<Vec<u8>>,
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    /// The store's revocation marker when it was built.
    pub marker: (i64, i64),
}

/// The current CRL per trust domain.
#[derive(Debug, Default)]
pub struct CrlCache {
    by_td: Mutex<HashMap<TrustDomain, CachedCrl>>,
    /// Serialises rebuilds so concurrent fetches do not burn CRL numbers.
    build: tokio::sync::Mutex<()>,
}

/// Why a revocation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no certificate with serial {0}")]
    UnknownSerial(String),
    #[error("unknown revocation reason {0:?}")]
    UnknownReason(String),
    #[error("no CA for trust domain {0}")]
    UnknownTrustDomain(String),
    #[error("CRL: {0}")]
    Crl(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// The outcome of revoking one serial.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub serial: String,
    pub spiffe_id: String,
    pub revoked_at: i64,
    pub reason: String,
    /// False when it was already revoked (the first revocation stands).
    pub newly_revoked: bool,
}

impl Ca {
    /// Revokes a certificate by serial (every issuer's, though a 128-bit random serial names one
    /// certificate). Idempotent: a second revocation changes nothing and reports the first.
    pub async fn revoke_serial(
        &self,
        serial: &str,
        reason: Reason,
        now: OffsetDateTime,
    ) -> Result<Revoked, Error> {
        let serial = serial.to_ascii_lowercase();
        let records = self.store.certificates_by_serial(&serial).await?;
        let first = records
            .first()
            .ok_or_else(|| Error::UnknownSerial(serial.clone()))?;
        let mut newly = false;
        for record in &records {
            newly |= self
                .store
                .revoke(
                    &record.issuer_key_id,
                    &record.serial,
                    reason.as_str(),
                    now.unix_timestamp(),
                )
                .await?;
        }
        let stored = self
            .store
            .certificate(&first.issuer_key_id, &serial)
            .await?
            .ok_or_else(|| Error::UnknownSerial(serial.clone()))?;
        if newly {
            self.crl_stale(&first.trust_domain);
        }
        Ok(Revoked {
            serial,
            spiffe_id: stored.spiffe_id,
            revoked_at: stored.revoked_at.unwrap_or(now.unix_timestamp()),
            reason: stored.revocation_reason.unwrap_or_default(),
            newly_revoked: newly,
        })
    }

    /// Denies an identity on every path; with `revoke_existing`, also revokes its live
    /// certificates (reason `privilegeWithdrawn`). Returns the deny and how many were revoked.
    pub async fn deny(
        &self,
        spiffe_id: &SpiffeId,
        reason: &str,
        revoke_existing: bool,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<(DeniedRecord, u64), Error> {
        let record = self
            .store
            .deny(&DeniedRecord {
                id: 0,
                spiffe_id: spiffe_id.to_string(),
                trust_domain: spiffe_id.trust_domain().to_string(),
                reason: reason.to_owned(),
                created_by: by.to_owned(),
                created_at: now.unix_timestamp(),
            })
            .await?;
        // In memory before the call returns: this replica refuses the identity from now on.
        self.deny_list.insert(record.clone());
        let revoked = if revoke_existing {
            self.store
                .revoke_identity(
                    spiffe_id.as_str(),
                    Reason::PrivilegeWithdrawn.as_str(),
                    now.unix_timestamp(),
                )
                .await?
        } else {
            0
        };
        if revoked > 0 {
            self.crl_stale(spiffe_id.trust_domain().as_str());
        }
        Ok((record, revoked))
    }

    /// Lifts a deny by its id.
    pub async fn lift_deny(&self, id: i64) -> Result<Option<DeniedRecord>, Error> {
        let lifted = self.store.lift_deny(id).await?;
        if let Some(record) = &lifted {
            self.deny_list.remove(&record.spiffe_id);
        }
        Ok(lifted)
    }

    /// Reloads the deny list from the store (other replicas' changes).
    pub async fn reload_deny_list(&self) -> Result<(), Error> {
        let version = self.deny_list.version();
        let records = self.store.denied().await?;
        self.deny_list.replace_if_unchanged(records, version);
        Ok(())
    }

    /// Answers a DER OCSP request for a trust domain: a signed response, or the refusal to send.
    pub async fn ocsp_answer(
        &self,
        td: &str,
        der: &[u8],
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, Refusal> {
        let request = ocsp::parse_request(der)?;
        let trust_domain = TrustDomain::parse(td).map_err(|_| Refusal::Unauthorized)?;
        let authority = self
            .authorities
            .get(&trust_domain)
            .ok_or(Refusal::Unauthorized)?;
        let hashes = IssuerHashes::of(authority).map_err(|_| Refusal::Internal)?;
        let mut items = Vec::with_capacity(request.items.len());
        for cert_id in request.items {
            // Another CA's certificate: not ours to answer for.
            if !hashes.matches(&cert_id) {
                return Err(Refusal::Unauthorized);
            }
            let serial = ocsp::serial_hex(&cert_id);
            let record = self
                .store
                .certificate(&authority.issuer_key_id, &serial)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "OCSP: store unavailable");
                    Refusal::TryLater
                })?;
            // Never "good" for a serial we did not issue.
            let status = match record {
                None => Status::Unknown,
                Some(r) => match r.revoked_at {
                    None => Status::Good,
                    Some(at) => Status::Revoked {
                        at,
                        reason: r.revocation_reason.as_deref().and_then(Reason::parse),
                    },
                },
            };
            items.push((cert_id, status));
        }
        ocsp::sign_response(
            authority,
            &hashes,
            &items,
            request.nonce,
            now.unix_timestamp(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "OCSP: signing failed");
            Refusal::Internal
        })
    }

    fn crl_stale(&self, trust_domain: &str) {
        if let Ok(mut map) = self.crls.by_td.lock() {
            map.retain(|td, _| td.as_str() != trust_domain);
        }
    }

    /// The current CRL of a trust domain: cached, rebuilt when half its validity has passed or
    /// when it was marked stale.
    pub async fn crl(
        &self,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
    ) -> Result<CachedCrl, Error> {
        if let Some(cached) = self.cached_crl(trust_domain, now) {
            return Ok(cached);
        }
        let _building = self.crls.build.lock().await;
        if let Some(cached) = self.cached_crl(trust_domain, now) {
            return Ok(cached);
        }
        let authority = self
            .authorities
            .get(trust_domain)
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?;
        let built = self.build_crl(authority, now).await?;
        if let Ok(mut map) = self.crls.by_td.lock() {
            map.insert(trust_domain.clone(), built.clone());
        }
        self.metrics
            .crl_next_update(trust_domain.as_str(), built.next_update);
        Ok(built)
    }

    /// Rebuilds a trust domain's CRL if another replica revoked something since it was built.
    pub async fn refresh_crl_if_changed(&self, trust_domain: &TrustDomain) -> Result<(), Error> {
        let Some(authority) = self.authorities.get(trust_domain) else {
            return Ok(());
        };
        let marker = self
            .store
            .revocation_marker(&authority.issuer_key_id)
            .await?;
        let stale = self
            .crls
            .by_td
            .lock()
            .map(|map| map.get(trust_domain).is_some_and(|c| c.marker != marker))
            .unwrap_or(false);
        if stale {
            self.crl_stale(trust_domain.as_str());
        }
        Ok(())
    }

    fn cached_crl(&self, trust_domain: &TrustDomain, now: OffsetDateTime) -> Option<CachedCrl> {
        let map = self.crls.by_td.lock().ok()?;
        let cached = map.get(trust_domain)?;
        let half_life = cached.this_update + (cached.next_update - cached.this_update) / 2;
        (now.unix_timestamp() < half_life).then(|| cached.clone())
    }

    async fn build_crl(
        &self,
        authority: &Authority,
        now: OffsetDateTime,
    ) -> Result<CachedCrl, Error> {
        let validity = self
            .config
            .trust_domain(&authority.trust_domain)
            .map(|c| c.crl_validity)
            .unwrap_or(std::time::Duration::from_secs(86_400));
        // Marker first: a revocation racing with the build makes the marker differ next time.
        let marker = self
            .store
            .revocation_marker(&authority.issuer_key_id)
            .await?;
        let entries = self
            .store
            .revoked_unexpired(&authority.issuer_key_id, now.unix_timestamp())
            .await?;
        let number = self.store.next_crl_number(&authority.issuer_key_id).await?;
        let built = crl::build(authority, &entries, number, now, validity).map_err(Error::Crl)?;
        Ok(CachedCrl {
            der: Arc::new(built.der),
            number,
            this_update: built.this_update,
            next_update: built.next_update,
            marker,
        })
    }
}
