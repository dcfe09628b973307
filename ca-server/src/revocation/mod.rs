//! Revocation state and its signed artefacts.
//!
//! - Revoke by serial, deny an identity (optionally revoking its live certificates), lift a deny.
//! - [`DenyList`]: the denied identities in memory, checked on every issuance path without a
//!   database round trip. The replica that takes a deny updates its copy before the call returns;
//!   other replicas reload every few seconds (`jobs.rs`).
//! - [`CrlCache`]: the current CRL of each trust domain's issuer, rebuilt at half-life, at once
//!   on the replica that revoked, and within one job tick on the others (the store's revocation
//!   marker changed).
//! - `crl.rs` and `ocsp.rs` build the signed artefacts; they do no I/O. The OCSP responses
//!   signed for nonce-less requests are cached in `ocsp::ResponseCache`, held by [`CrlCache`]
//!   (the one cache of signed revocation artefacts `Ca` holds), keyed by the status the store
//!   gives on every request.

pub mod crl;
pub mod ocsp;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

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

    pub fn insert(&self, record: DeniedRecord) {
        if let Ok(mut inner) = self.inner.write() {
            inner.0.insert(record.spiffe_id.clone(), record);
            inner.1 += 1;
        }
    }

    pub fn remove(&self, spiffe_id: &str) {
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

/// The current CRL per CA generation (by issuer key id: a CRL is signed by the intermediate
/// whose certificates it lists), and the signed OCSP responses ([`CrlCache::ocsp`]).
#[derive(Debug, Default)]
pub struct CrlCache {
    by_issuer: Mutex<HashMap<String, (TrustDomain, CachedCrl)>>,
    /// Serialises rebuilds so concurrent fetches do not burn CRL numbers.
    build: tokio::sync::Mutex<()>,
    /// OCSP responses to nonce-less requests and the budget of fresh OCSP signatures.
    ocsp: ocsp::ResponseCache,
}

impl CrlCache {
    /// The cached CRL of a generation while less than half its validity has passed.
    pub fn fresh(&self, issuer_key_id: &str, now: i64) -> Option<CachedCrl> {
        let map = self.by_issuer.lock().ok()?;
        let (_, cached) = map.get(issuer_key_id)?;
        let half_life = cached.this_update + (cached.next_update - cached.this_update) / 2;
        (now < half_life).then(|| cached.clone())
    }

    pub fn insert(&self, issuer_key_id: &str, trust_domain: TrustDomain, crl: CachedCrl) {
        if let Ok(mut map) = self.by_issuer.lock() {
            map.insert(issuer_key_id.to_owned(), (trust_domain, crl));
        }
    }

    /// Drops every CRL of a trust domain: the next fetch rebuilds it.
    pub fn mark_stale(&self, trust_domain: &str) {
        if let Ok(mut map) = self.by_issuer.lock() {
            map.retain(|_, (td, _)| td.as_str() != trust_domain);
        }
    }

    /// Whether the cached CRL of a generation was built before the store's revocation marker
    /// moved.
    pub fn built_before(&self, issuer_key_id: &str, marker: (i64, i64)) -> bool {
        self.by_issuer
            .lock()
            .map(|map| {
                map.get(issuer_key_id)
                    .is_some_and(|(_, c)| c.marker != marker)
            })
            .unwrap_or(false)
    }

    /// Serialises rebuilds (held while one is built).
    pub async fn building(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.build.lock().await
    }

    /// The signed OCSP responses kept for reuse (revocations drop the revoked serial's).
    pub fn ocsp(&self) -> &ocsp::ResponseCache {
        &self.ocsp
    }
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
