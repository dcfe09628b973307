//! Certificate status verbs: OCSP answers (signatures bounded: cached without a nonce, budgeted
//! with one) and the cached CRL of each trust domain.

use std::sync::Arc;

use time::OffsetDateTime;
use x509_ocsp::CertId;

use crate::authority::Authority;
use crate::ca::Ca;
use crate::revocation::ocsp::{self, CacheKey, CachedResponse, IssuerHashes, Refusal, Status};
use crate::revocation::{CachedCrl, Error, Reason, crl};
use crate::spiffe::TrustDomain;

impl Ca {
    /// Answers a DER OCSP request for a trust domain: a signed response, or the refusal to send.
    ///
    /// The status is read from the store on every request (`tryLater` when it cannot be, never
    /// `good`). What that costs in signatures is bounded (`revocation::ocsp` module docs): a
    /// nonce of 16 to 32 octets is echoed in a fresh signature while this second's budget
    /// lasts; otherwise the answer about a certificate we issued is the cached one for its
    /// current status, signed once per half validity, and an answer about a serial we never
    /// issued takes a fresh signature from the budget or is `tryLater`.
    pub async fn ocsp_answer(
        &self,
        td: &str,
        der: &[u8],
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, Refusal> {
        let request = ocsp::parse_request(der)?;
        let trust_domain = TrustDomain::parse(td).map_err(|_| Refusal::Unauthorized)?;
        // One CertID per request (`ocsp::MAX_ITEMS`).
        let [cert_id] = <[CertId; 1]>::try_from(request.items).map_err(|_| Refusal::Malformed)?;
        // The generation (active or retired) whose intermediate the CertID names; another
        // CA's certificate is not ours to answer for.
        let authorities = self.authorities();
        let mut found = None;
        // Revoked generations too: their leaves answer `revoked` (the CA's compromise).
        for authority in authorities
            .generations(&trust_domain)
            .chain(authorities.revoked(&trust_domain))
        {
            let hashes = IssuerHashes::of(authority).map_err(|e| {
                tracing::error!(error = %e, "OCSP: issuer certificate unreadable");
                Refusal::Internal
            })?;
            if hashes.matches(&cert_id) {
                found = Some((authority.clone(), hashes));
                break;
            }
        }
        let (authority, hashes) = found.ok_or(Refusal::Unauthorized)?;
        let authority = authority.as_ref();
        let serial = ocsp::serial_hex(&cert_id);
        let mut status = self.certificate_status(authority, &serial).await?;
        // A leaf of a generation revoked in an emergency is revoked from then on (an earlier
        // revocation of the leaf itself stands).
        if let Some((at, reason)) = &authority.revoked {
            let superseded = match status {
                Status::Good => true,
                Status::Revoked { at: leaf_at, .. } => leaf_at > *at,
                Status::Unknown => false,
            };
            if superseded {
                status = Status::Revoked {
                    at: *at,
                    reason: Reason::parse(reason).or(Some(Reason::CaCompromise)),
                };
            }
        }
        let now = now.unix_timestamp();
        let responses = self.crls.ocsp();
        let sign = |nonce: Option<&[u8]>| {
            ocsp::sign_response(authority, &hashes, &[(cert_id.clone(), status)], nonce, now)
                .map_err(|e| {
                    tracing::error!(error = %crate::report::Chain(&e), "OCSP: signing failed");
                    Refusal::Internal
                })
        };
        if let Some(nonce) = request.nonce.as_deref()
            && responses.take_fresh_signature(now)
        {
            return Ok(sign(Some(nonce))?.der);
        }
        if status == Status::Unknown {
            // Requesters choose unknown serials at will: never cached, always budgeted.
            if !responses.take_fresh_signature(now) {
                return Err(Refusal::TryLater);
            }
            return Ok(sign(None)?.der);
        }
        let key = CacheKey::new(&authority.issuer_key_id, &cert_id).map_err(|e| {
            tracing::error!(error = %crate::report::Chain(&e), "OCSP: CertID re-encoding failed");
            Refusal::Internal
        })?;
        if let Some(cached) = responses.get(&key, status, now) {
            return Ok(cached.as_ref().clone());
        }
        let signed = sign(None)?;
        responses.insert(
            key,
            CachedResponse {
                status,
                serial,
                trust_domain: trust_domain.to_string(),
                der: Arc::new(signed.der.clone()),
                this_update: signed.this_update,
                next_update: signed.next_update,
            },
            now,
        );
        Ok(signed.der)
    }

    /// What the store says of a serial under an issuer; never `good` for one we did not issue.
    async fn certificate_status(
        &self,
        authority: &Authority,
        serial: &str,
    ) -> Result<Status, Refusal> {
        let record = self
            .store
            .certificate(&authority.issuer_key_id, serial)
            .await
            .map_err(|e| {
                tracing::warn!(error = %crate::report::Chain(&e), "OCSP: store unavailable");
                Refusal::TryLater
            })?;
        Ok(match record {
            None => Status::Unknown,
            Some(r) => match r.revoked_at {
                None => Status::Good,
                Some(at) => Status::Revoked {
                    at,
                    reason: r.revocation_reason.as_deref().and_then(Reason::parse),
                },
            },
        })
    }

    /// The current CRL of a trust domain's active generation: cached, rebuilt when half its
    /// validity has passed or when it was marked stale.
    pub async fn crl(
        &self,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
    ) -> Result<CachedCrl, Error> {
        let authority = self
            .authorities()
            .get(trust_domain)
            .cloned()
            .ok_or_else(|| Error::UnknownTrustDomain(trust_domain.to_string()))?;
        let built = self.crl_for(&authority, now).await?;
        self.metrics
            .crl_next_update(trust_domain.as_str(), built.next_update);
        Ok(built)
    }

    /// The current CRL of one generation (active or retired; a retired one keeps publishing
    /// its CRL until its last leaf has expired). `None`: no such loaded generation.
    pub async fn crl_of_generation(
        &self,
        trust_domain: &TrustDomain,
        generation: i32,
        now: OffsetDateTime,
    ) -> Result<Option<CachedCrl>, Error> {
        let Some(authority) = self
            .authorities()
            .generation(trust_domain, generation)
            .cloned()
        else {
            return Ok(None);
        };
        self.crl_for(&authority, now).await.map(Some)
    }

    async fn crl_for(
        &self,
        authority: &Authority,
        now: OffsetDateTime,
    ) -> Result<CachedCrl, Error> {
        let key = authority.issuer_key_id.as_str();
        if let Some(cached) = self.crls.fresh(key, now.unix_timestamp()) {
            return Ok(cached);
        }
        let _building = self.crls.building().await;
        if let Some(cached) = self.crls.fresh(key, now.unix_timestamp()) {
            return Ok(cached);
        }
        let built = self.build_crl(authority, now).await?;
        self.crls
            .insert(key, authority.trust_domain.clone(), built.clone());
        Ok(built)
    }

    /// Rebuilds a trust domain's CRLs if another replica revoked something since they were
    /// built.
    pub async fn refresh_crl_if_changed(&self, trust_domain: &TrustDomain) -> Result<(), Error> {
        for authority in self.authorities().generations(trust_domain) {
            let marker = self
                .store
                .revocation_marker(&authority.issuer_key_id)
                .await?;
            if self.crls.built_before(&authority.issuer_key_id, marker) {
                self.crls.mark_stale(trust_domain.as_str());
                break;
            }
        }
        Ok(())
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
        // The number and the list in one transaction: a higher number never lists less.
        let (number, entries) = self
            .store
            .next_crl(&authority.issuer_key_id, now.unix_timestamp())
            .await?;
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
