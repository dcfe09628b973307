//! The Kubernetes CSR signer: signs `certificates.k8s.io/v1` CertificateSigningRequests
//! addressed to a cluster's `csr_signer_name`, for istiod in RA mode
//! (`EXTERNAL_CA=ISTIOD_RA_KUBERNETES_API`, `K8S_SIGNER=<signer name>`) and any other requester
//! the operator allows.
//!
//! A CSR is signed only when all of these hold; otherwise it is left alone (not yet approved) or
//! marked `Failed` with a reason:
//! - it is Approved, and neither Denied nor Failed, and has no certificate yet;
//! - its `spec.username` (set by the API server from the creator's credentials, so it cannot be
//!   forged) is one of `csr_allowed_requesters`;
//! - its request parses under the same rules as every CSR (`issuance::csr`), and carries exactly
//!   one URI SAN, `spiffe://<the cluster's trust domain>/ns/<ns>/sa/<sa>` with valid Kubernetes
//!   names: in RA mode the identity is what the *authenticated requester* (istiod) vouches for,
//!   which is why only listed requesters are served;
//! - its usages are a subset of istiod's (digital signature, key encipherment, server auth,
//!   client auth);
//! - the identity is not denied, and the usual issuance rules pass (rate limit, reserved IDs).
//!
//! `expirationSeconds` is honoured within `[600 s, max_ttl]` (longer is clamped, as every path
//! clamps; shorter is raised to 600 s, the Kubernetes minimum). The certificate goes through
//! the same profile, record and audit as every other path, then into `status.certificate` (leaf,
//! then intermediate) with the status subresource. Transient failures (store down, overload)
//! leave the CSR for a later try; istiod waits up to 60 s.
//!
//! Only the replica holding the cluster's Lease signs (`writers`); every replica keeps the
//! watch, so a takeover starts at once.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;
use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::ca::{self, Ca};
use crate::config::CsrSignerConfig;
use crate::spiffe::{SpiffeId, TrustDomain};

/// Largest `spec.request` read (before parsing).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Kubernetes' shortest `expirationSeconds`.
pub const MIN_EXPIRATION_SECONDS: u64 = 600;
/// The usages istiod asks for; any other is refused.
const ALLOWED_USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];

/// What to do with one CSR.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not ours to act on now (not approved, already decided or signed).
    Wait,
    /// Sign it for this identity and TTL.
    Sign {
        spiffe_id: SpiffeId,
        ttl: Option<Duration>,
    },
    /// Refuse it: a `Failed` condition with this reason and message.
    Fail {
        reason: &'static str,
        message: String,
    },
}

/// The signer of one cluster.
#[derive(Debug)]
pub struct Signer {
    cluster: String,
    trust_domain: TrustDomain,
    config: CsrSignerConfig,
    api: Api<CertificateSigningRequest>,
    /// The CSRs addressed to us, by name, as the watch last saw them.
    known: HashMap<String, CertificateSigningRequest>,
    /// name -> the resourceVersion we last acted on (signed or failed), so an event and a tick
    /// for the same version do not sign twice.
    handled: HashMap<String, String>,
}

impl Signer {
    pub fn new(
        client: kube::Client,
        cluster: &str,
        trust_domain: TrustDomain,
        config: CsrSignerConfig,
    ) -> Signer {
        Signer {
            cluster: cluster.to_owned(),
            trust_domain,
            config,
            api: Api::all(client),
            known: HashMap::new(),
            handled: HashMap::new(),
        }
    }

    /// The API the watch runs on, and its field selector (our signer name only).
    pub fn watch_target(&self) -> (Api<CertificateSigningRequest>, String) {
        (
            self.api.clone(),
            format!("spec.signerName={}", self.config.signer_name),
        )
    }

    /// Takes a watched CSR in (or drops a deleted one).
    pub fn observe(&mut self, csr: CertificateSigningRequest, deleted: bool) {
        let Some(name) = csr.metadata.name.clone() else {
            return;
        };
        if deleted {
            self.known.remove(&name);
            self.handled.remove(&name);
        } else if csr.spec.signer_name == self.config.signer_name {
            self.known.insert(name, csr);
        }
    }

    /// Forgets everything (a relist starts).
    pub fn reset(&mut self) {
        self.known.clear();
    }

    /// Acts on every known CSR that waits for us. Called by the Lease holder only.
    pub async fn tick(&mut self, ca: &Ca, now: OffsetDateTime) {
        // Only those not yet settled at the version the watch last saw.
        let waiting: Vec<CertificateSigningRequest> = self
            .known
            .iter()
            .filter(|(name, csr)| self.handled.get(*name) != csr.metadata.resource_version.as_ref())
            .map(|(_, csr)| csr.clone())
            .collect();
        for csr in waiting {
            let name = csr.metadata.name.clone().unwrap_or_default();
            let version = csr.metadata.resource_version.clone().unwrap_or_default();
            if self.act(ca, csr, now).await {
                self.handled.insert(name, version);
            }
        }
    }

    /// Returns whether the CSR is settled for this resourceVersion.
    async fn act(&self, ca: &Ca, mut csr: CertificateSigningRequest, now: OffsetDateTime) -> bool {
        let name = csr.metadata.name.clone().unwrap_or_default();
        let requester = csr.spec.username.clone().unwrap_or_default();
        let max_ttl = ca
            .config()
            .trust_domain(&self.trust_domain)
            .map(|td| td.max_ttl)
            .unwrap_or(Duration::from_secs(3600));
        let verdict = judge(&csr, &self.config, &self.trust_domain, max_ttl);
        let (spiffe_id, ttl) = match verdict {
            Verdict::Wait => return true,
            Verdict::Fail { reason, message } => {
                self.audit(ca, &name, &requester, "-", "rejected", reason, now);
                return self.fail(&mut csr, reason, &message, now).await;
            }
            Verdict::Sign { spiffe_id, ttl } => (spiffe_id, ttl),
        };
        let requested_by = format!(
            "k8s-csr:{}/{} by {}",
            self.cluster,
            name,
            crate::untrusted::bounded(&requester, 128)
        );
        let request_id = crate::untrusted::bounded(
            &format!("k8s-csr-{}", csr.metadata.uid.clone().unwrap_or_default()),
            128,
        );
        let request = ca::Request {
            csr: &csr.spec.request.0,
            spiffe_id: &spiffe_id,
            ttl,
            requested_by: &requested_by,
            request_id: &request_id,
            api: ca::Api::KubernetesCsr,
            authenticated_by: "k8s_csr",
            impersonated: false,
        };
        let enrolled = match ca.enroll(&request, now).await {
            Ok(enrolled) => enrolled,
            Err(e) if is_transient(&e) => {
                tracing::info!(csr = %name, error = %crate::report::Chain(&e), "CSR signing deferred; retrying");
                return false;
            }
            Err(e) => {
                let reason = e.reason();
                self.audit(
                    ca,
                    &name,
                    &requester,
                    spiffe_id.as_str(),
                    "rejected",
                    reason,
                    now,
                );
                return self
                    .fail(&mut csr, "SignerValidationFailure", &e.to_string(), now)
                    .await;
            }
        };
        let serial = enrolled.cert.serial.to_hex();
        let chain = format!(
            "{}{}",
            crate::pem::certificate(&enrolled.cert.der),
            enrolled.chain_pem.concat()
        );
        csr.status.get_or_insert_default().certificate = Some(ByteString(chain.into_bytes()));
        match self.write_status(&csr).await {
            Ok(()) => {
                self.audit(
                    ca,
                    &name,
                    &requester,
                    spiffe_id.as_str(),
                    "success",
                    &serial,
                    now,
                );
                tracing::info!(csr = %name, spiffe_id = %spiffe_id, serial = %serial, "Kubernetes CSR signed");
                true
            }
            Err(e) => {
                // The certificate is recorded but not delivered; the next try signs afresh.
                tracing::warn!(csr = %name, error = %crate::report::Chain(&e), "cannot write the CSR's certificate; retrying");
                false
            }
        }
    }

    async fn fail(
        &self,
        csr: &mut CertificateSigningRequest,
        reason: &str,
        message: &str,
        now: OffsetDateTime,
    ) -> bool {
        let at = jiff::Timestamp::from_second(now.unix_timestamp())
            .ok()
            .map(Time);
        csr.status
            .get_or_insert_default()
            .conditions
            .get_or_insert_default()
            .push(CertificateSigningRequestCondition {
                type_: "Failed".to_owned(),
                status: "True".to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(crate::untrusted::bounded(message, 256)),
                last_update_time: at.clone(),
                last_transition_time: at,
            });
        let name = csr.metadata.name.clone().unwrap_or_default();
        match self.write_status(csr).await {
            Ok(()) => {
                tracing::info!(csr = %name, reason, message = %crate::untrusted::Bounded(message, 256), "Kubernetes CSR refused");
                true
            }
            Err(e) => {
                tracing::warn!(csr = %name, error = %crate::report::Chain(&e), "cannot mark the CSR failed; retrying");
                false
            }
        }
    }

    async fn write_status(&self, csr: &CertificateSigningRequest) -> Result<(), kube::Error> {
        let name = csr.metadata.name.clone().unwrap_or_default();
        self.api
            .replace_status(&name, &PostParams::default(), csr)
            .await
            .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        ca: &Ca,
        name: &str,
        requester: &str,
        identity: &str,
        outcome: &str,
        detail: &str,
        now: OffsetDateTime,
    ) {
        ca.audit_soon(AuditEvent {
            at: now.unix_timestamp(),
            actor: format!(
                "k8s-csr:{}/{}",
                self.cluster,
                crate::untrusted::bounded(requester, 128)
            ),
            action: "certificate.issue".to_owned(),
            target: identity.to_owned(),
            outcome: outcome.to_owned(),
            request_id: String::new(),
            detail: format!(
                "k8s-csr {} {}",
                crate::untrusted::bounded(name, 253),
                crate::untrusted::bounded(detail, 128)
            ),
        });
    }
}

/// Failures that say nothing about the CSR: try again later.
fn is_transient(e: &ca::Error) -> bool {
    matches!(
        e,
        ca::Error::Overloaded | ca::Error::Store(_) | ca::Error::RateLimited { .. }
    )
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Decides what a CSR gets (no I/O).
fn judge(
    csr: &CertificateSigningRequest,
    config: &CsrSignerConfig,
    trust_domain: &TrustDomain,
    max_ttl: Duration,
) -> Verdict {
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if signed || condition(csr, "Denied") || condition(csr, "Failed") || !condition(csr, "Approved")
    {
        return Verdict::Wait;
    }
    let fail = |reason, message: String| Verdict::Fail { reason, message };
    let requester = csr.spec.username.clone().unwrap_or_default();
    if !config.allowed_requesters.contains(&requester) {
        return fail(
            "RequesterNotAllowed",
            format!(
                "requester {:?} may not use this signer",
                crate::untrusted::bounded(&requester, 128)
            ),
        );
    }
    if csr.spec.request.0.len() > MAX_REQUEST_BYTES {
        return fail(
            "InvalidRequest",
            format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        );
    }
    if let Some(bad) = csr
        .spec
        .usages
        .iter()
        .flatten()
        .find(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return fail(
            "UnsupportedUsage",
            format!(
                "usage {:?} is not one of {ALLOWED_USAGES:?}",
                crate::untrusted::bounded(bad, 64)
            ),
        );
    }
    let parsed = match crate::issuance::csr::parse(&csr.spec.request.0) {
        Ok(parsed) => parsed,
        Err(e) => return fail("InvalidRequest", e.to_string()),
    };
    let [uri] = parsed.requested_uris.as_slice() else {
        return fail(
            "InvalidIdentity",
            "the request must carry exactly one URI SAN (the SPIFFE ID)".to_owned(),
        );
    };
    let Ok(spiffe_id) = SpiffeId::parse(uri) else {
        return fail(
            "InvalidIdentity",
            format!(
                "{:?} is not a SPIFFE ID",
                crate::untrusted::bounded(uri, 128)
            ),
        );
    };
    if spiffe_id.trust_domain() != trust_domain {
        return fail(
            "InvalidIdentity",
            format!("{spiffe_id} is not in this cluster's trust domain {trust_domain}"),
        );
    }
    let path: Vec<&str> = spiffe_id
        .as_str()
        .trim_start_matches("spiffe://")
        .split_once('/')
        .map(|(_, path)| path.split('/').collect())
        .unwrap_or_default();
    let valid = matches!(path.as_slice(),
        ["ns", ns, "sa", sa] if crate::kubernetes::is_valid_name(ns) && crate::kubernetes::is_valid_name(sa) && crate::spiffe::is_dns_label(ns));
    if !valid {
        return fail(
            "InvalidIdentity",
            format!("{spiffe_id} is not spiffe://<td>/ns/<namespace>/sa/<service account>"),
        );
    }
    let ttl = csr.spec.expiration_seconds.map(|s| {
        let seconds = u64::try_from(s).unwrap_or(0).max(MIN_EXPIRATION_SECONDS);
        Duration::from_secs(seconds).min(max_ttl.max(Duration::from_secs(MIN_EXPIRATION_SECONDS)))
    });
    Verdict::Sign { spiffe_id, ttl }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestSpec, CertificateSigningRequestStatus,
    };

    fn csr_pem(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn csr(request: Vec<u8>, conditions: &[&str]) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(request),
                signer_name: "mesh-ca.io/spiffe".to_owned(),
                username: Some("system:serviceaccount:istio-system:istiod".to_owned()),
                usages: Some(vec![
                    "digital signature".to_owned(),
                    "client auth".to_owned(),
                ]),
                expiration_seconds: Some(3600),
                ..CertificateSigningRequestSpec::default()
            },
            status: Some(CertificateSigningRequestStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|kind| CertificateSigningRequestCondition {
                            type_: (*kind).to_owned(),
                            status: "True".to_owned(),
                            ..CertificateSigningRequestCondition::default()
                        })
                        .collect(),
                ),
                certificate: None,
            }),
            ..CertificateSigningRequest::default()
        }
    }

    fn config() -> CsrSignerConfig {
        CsrSignerConfig {
            signer_name: "mesh-ca.io/spiffe".to_owned(),
            allowed_requesters: vec!["system:serviceaccount:istio-system:istiod".to_owned()],
        }
    }

    fn verdict(csr: &CertificateSigningRequest) -> Verdict {
        judge(
            csr,
            &config(),
            &TrustDomain::parse("cluster.local").unwrap(),
            Duration::from_secs(86_400),
        )
    }

    fn reason(v: Verdict) -> &'static str {
        match v {
            Verdict::Fail { reason, .. } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

    #[test]
    fn signs_only_approved_undecided_requests() {
        let good = csr_pem(&[WEB]);
        assert_eq!(verdict(&csr(good.clone(), &[])), Verdict::Wait);
        assert_eq!(
            verdict(&csr(good.clone(), &["Approved", "Denied"])),
            Verdict::Wait
        );
        assert_eq!(
            verdict(&csr(good.clone(), &["Approved", "Failed"])),
            Verdict::Wait
        );
        let mut signed = csr(good.clone(), &["Approved"]);
        signed.status.as_mut().unwrap().certificate = Some(ByteString(b"x".to_vec()));
        assert_eq!(verdict(&signed), Verdict::Wait);
        match verdict(&csr(good, &["Approved"])) {
            Verdict::Sign { spiffe_id, ttl } => {
                assert_eq!(spiffe_id.as_str(), WEB);
                assert_eq!(ttl, Some(Duration::from_secs(3600)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiration_is_kept_within_600_seconds_and_max_ttl() {
        let mut short = csr(csr_pem(&[WEB]), &["Approved"]);
        short.spec.expiration_seconds = Some(10);
        assert!(
            matches!(verdict(&short), Verdict::Sign { ttl: Some(t), .. } if t == Duration::from_secs(600))
        );
        short.spec.expiration_seconds = Some(10 * 86_400);
        assert!(
            matches!(verdict(&short), Verdict::Sign { ttl: Some(t), .. } if t == Duration::from_secs(86_400))
        );
        short.spec.expiration_seconds = None;
        assert!(matches!(verdict(&short), Verdict::Sign { ttl: None, .. }));
    }

    #[test]
    fn refuses_every_other_shape_with_a_reason() {
        let approved = |request: Vec<u8>| csr(request, &["Approved"]);
        let mut stranger = approved(csr_pem(&[WEB]));
        stranger.spec.username = Some("system:serviceaccount:default:x".to_owned());
        assert_eq!(reason(verdict(&stranger)), "RequesterNotAllowed");
        let mut nobody = approved(csr_pem(&[WEB]));
        nobody.spec.username = None;
        assert_eq!(reason(verdict(&nobody)), "RequesterNotAllowed");
        let mut usage = approved(csr_pem(&[WEB]));
        usage.spec.usages = Some(vec!["cert sign".to_owned()]);
        assert_eq!(reason(verdict(&usage)), "UnsupportedUsage");
        assert_eq!(
            reason(verdict(&approved(vec![b'A'; MAX_REQUEST_BYTES + 1]))),
            "InvalidRequest"
        );
        assert_eq!(
            reason(verdict(&approved(b"garbage".to_vec()))),
            "InvalidRequest"
        );
        for uris in [
            vec![],
            vec![WEB, "spiffe://cluster.local/ns/default/sa/other"],
            vec!["spiffe://other.td/ns/default/sa/web"],
            vec!["spiffe://cluster.local/ca"],
            vec!["spiffe://cluster.local/ns/Default/sa/web"],
            vec!["spiffe://cluster.local/ns/default/sa/web/extra"],
            vec!["https://cluster.local/ns/default/sa/web"],
        ] {
            assert_eq!(
                reason(verdict(&approved(csr_pem(&uris)))),
                "InvalidIdentity",
                "{uris:?}"
            );
        }
    }
}
