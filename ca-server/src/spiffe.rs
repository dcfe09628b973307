//! SPIFFE names: [`TrustDomain`] and [`SpiffeId`], parsed once and then trusted (SPIFFE-ID spec:
//! lower-case trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]`, no empty, `.` or
//! `..` segments, no query, fragment, port or user info, at most 2048 bytes).

use std::fmt;

/// Longest SPIFFE ID we accept, in bytes (SPIFFE-ID spec section 2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name we accept, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain may only contain lower-case letters, digits, '.', '-' and '_'")]
    TrustDomainCharacters,
    #[error("SPIFFE ID must start with spiffe://")]
    Scheme,
    #[error("SPIFFE ID longer than {MAX_SPIFFE_ID_LEN} bytes")]
    IdTooLong,
    #[error("SPIFFE ID path segments must be non-empty, not '.' or '..', and use [A-Za-z0-9.-_]")]
    PathSegment,
    #[error("SPIFFE ID needs a path")]
    MissingPath,
    #[error("a namespace must be a Kubernetes name (DNS-1123 label: a-z, 0-9, '-', at most 63)")]
    Namespace,
    #[error(
        "a service account must be a Kubernetes name (DNS-1123 subdomain: a-z, 0-9, '-', '.', at most 253)"
    )]
    ServiceAccount,
}

/// A DNS-1123 label, as Kubernetes names namespaces: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most
/// 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A DNS-1123 subdomain, as Kubernetes names service accounts: dot-separated labels, at most
/// 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A SPIFFE trust domain name, e.g. `us.cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(text: &str) -> Result<TrustDomain, Error> {
        if text.is_empty() {
            return Err(Error::EmptyTrustDomain);
        }
        if text.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(Error::TrustDomainTooLong);
        }
        let ok = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !ok {
            return Err(Error::TrustDomainCharacters);
        }
        Ok(TrustDomain(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload identity `spiffe://<trust domain>/<path>`. The path is never empty: we only issue
/// to workloads, never to a bare trust domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: String,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    pub fn parse(text: &str) -> Result<SpiffeId, Error> {
        if text.len() > MAX_SPIFFE_ID_LEN {
            return Err(Error::IdTooLong);
        }
        let rest = text.strip_prefix("spiffe://").ok_or(Error::Scheme)?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => return Err(Error::MissingPath),
        };
        let trust_domain = TrustDomain::parse(domain)?;
        let path = &path[1..];
        if path.is_empty() {
            return Err(Error::MissingPath);
        }
        for segment in path.split('/') {
            let ok = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return Err(Error::PathSegment);
            }
        }
        Ok(SpiffeId {
            uri: text.to_owned(),
            trust_domain,
        })
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service account>`, as Istio names workloads.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, Error> {
        if !is_dns_label(namespace) {
            return Err(Error::Namespace);
        }
        if !is_dns_subdomain(service_account) {
            return Err(Error::ServiceAccount);
        }
        SpiffeId::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let id = SpiffeId::parse("spiffe://us.cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain().as_str(), "us.cluster.local");
        assert!(SpiffeId::parse("spiffe://td/a.b-c_d/E9").is_ok());
    }

    #[test]
    fn service_account_ids_take_kubernetes_names_only() {
        let td = TrustDomain::parse("td").unwrap();
        let ok = SpiffeId::for_service_account(&td, "kube-system", "istio.reader-1").unwrap();
        assert_eq!(ok.as_str(), "spiffe://td/ns/kube-system/sa/istio.reader-1");
        for (ns, sa, error) in [
            ("a/b", "web", Error::Namespace),
            ("default", "web/sa/admin", Error::ServiceAccount),
            ("Default", "web", Error::Namespace),
            ("-x", "web", Error::Namespace),
            ("x-", "web", Error::Namespace),
            ("", "web", Error::Namespace),
            (&"n".repeat(64), "web", Error::Namespace),
            ("ns.dotted", "web", Error::Namespace),
            ("default", "", Error::ServiceAccount),
            ("default", "a..b", Error::ServiceAccount),
            ("default", "UPPER", Error::ServiceAccount),
            ("default", "under_score", Error::ServiceAccount),
            ("default", &"s".repeat(254), Error::ServiceAccount),
            ("default", "..", Error::ServiceAccount),
            ("default", "web%2fx", Error::ServiceAccount),
        ] {
            assert_eq!(
                SpiffeId::for_service_account(&td, ns, sa),
                Err(error),
                "{ns} {sa}"
            );
        }
    }

    #[test]
    fn invalid_ids() {
        let cases = [
            ("", Error::Scheme),
            ("https://td/x", Error::Scheme),
            ("SPIFFE://td/x", Error::Scheme),
            ("spiffe://td", Error::MissingPath),
            ("spiffe://td/", Error::MissingPath),
            ("spiffe:///x", Error::EmptyTrustDomain),
            ("spiffe://TD/x", Error::TrustDomainCharacters),
            ("spiffe://td:443/x", Error::TrustDomainCharacters),
            ("spiffe://user@td/x", Error::TrustDomainCharacters),
            ("spiffe://td/a//b", Error::PathSegment),
            ("spiffe://td/a/../b", Error::PathSegment),
            ("spiffe://td/./b", Error::PathSegment),
            ("spiffe://td/a?q=1", Error::PathSegment),
            ("spiffe://td/a#f", Error::PathSegment),
            ("spiffe://td/a%2Fb", Error::PathSegment),
            ("spiffe://td/a/", Error::PathSegment),
        ];
        for (text, expected) in cases {
            assert_eq!(SpiffeId::parse(text).unwrap_err(), expected, "{text}");
        }
    }

    #[test]
    fn length_limits_at_the_boundary() {
        let prefix = "spiffe://td/";
        let at_max = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_LEN - prefix.len()));
        assert!(SpiffeId::parse(&at_max).is_ok());
        let over = format!("{at_max}a");
        assert_eq!(SpiffeId::parse(&over).unwrap_err(), Error::IdTooLong);
        assert!(TrustDomain::parse(&"a".repeat(MAX_TRUST_DOMAIN_LEN)).is_ok());
        assert_eq!(
            TrustDomain::parse(&"a".repeat(MAX_TRUST_DOMAIN_LEN + 1)).unwrap_err(),
            Error::TrustDomainTooLong
        );
    }
}
