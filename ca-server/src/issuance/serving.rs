//! The CA's own TLS serving certificates (the gRPC port: DNS names; the public listener: DNS names
//! and `spiffe://<td>/ca` for https_spiffe federation), serverAuth, issued by the serving trust
//! domain's intermediate over a key the server made itself. Not a workload SVID, but made the
//! same way: [`Template::serving`], the lifetime rules, the writer and the self-check.

use std::time::Duration;

use time::OffsetDateTime;

use crate::issuance::{Error, Issuer, Lifetime, SubjectKey, Template, TtlPolicy, check, writer};
use crate::serial::Serial;

/// A signed serving certificate.
#[derive(Debug, Clone)]
pub struct ServingCert {
    pub der: Vec<u8>,
    pub serial: Serial,
    pub not_before: i64,
    pub not_after: i64,
}

/// Issues a serving certificate for `dns_names` (and `uri`) over `spki_der`, valid for `ttl`
/// (capped at the issuer's notAfter).
pub fn issue(
    issuer: &Issuer<'_>,
    dns_names: &[String],
    uri: Option<&str>,
    spki_der: &[u8],
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<ServingCert, Error> {
    let policy = TtlPolicy {
        default_ttl: ttl,
        max_ttl: ttl,
        min_ttl: Duration::ZERO,
    };
    let lifetime = Lifetime::new(now, Some(ttl), policy, issuer.validity)?;
    let public_key = SubjectKey::parse(spki_der)?;
    let serial = Serial::random()?;
    let template = Template::serving(dns_names, uri, &serial, &lifetime, public_key);
    let der = writer::sign(&template, issuer)?;
    check::check(&der, &template, issuer)?;
    Ok(ServingCert {
        der,
        serial,
        not_before: lifetime.validity.not_before,
        not_after: lifetime.validity.not_after,
    })
}
