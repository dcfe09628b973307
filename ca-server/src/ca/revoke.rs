//! Revocation verbs: revoke by serial, deny an identity (optionally revoking its live
//! certificates), lift a deny, reload the deny list other replicas changed.

use time::OffsetDateTime;

use crate::ca::Ca;
use crate::revocation::{Error, Reason, Revoked};
use crate::spiffe::SpiffeId;
use crate::store::DeniedRecord;

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
            self.crls.mark_stale(&first.trust_domain);
            self.crls.ocsp().forget_serial(&serial);
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
            self.crls.mark_stale(spiffe_id.trust_domain().as_str());
            self.crls
                .ocsp()
                .forget_trust_domain(spiffe_id.trust_domain().as_str());
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
}
