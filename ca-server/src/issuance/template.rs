//! Certificate templates: everything that decides the content of one certificate, built field by
//! field from policy, identity and the issuer, never from a CSR (SPEC section 8 invariant 2).
//! One constructor per kind (after SPIRE's `credtemplate`):
//!
//! - [`Template::leaf`], the X509-SVID: empty subject; exactly one URI SAN, critical; KU
//!   digitalSignature (+keyEncipherment for RSA keys), critical; EKU serverAuth + clientAuth;
//!   basicConstraints cA=false, critical; AKI and SKI; CRL distribution point and OCSP URL when
//!   the issuer publishes them.
//! - [`Template::serving`], the CA's own TLS certificate: empty subject; DNS names (and a URI)
//!   in a critical SAN; KU digitalSignature; EKU serverAuth; cA=false; AKI and SKI.
//! - [`Template::intermediate`], an issuing CA: subject O=<trust domain>, CN=<name>; KU
//!   keyCertSign, cRLSign and digitalSignature (the CA signs its own OCSP answers), critical;
//!   cA=true with pathLen 0, critical; AKI and SKI.
//!
//! The writer writes exactly what [`Template::extensions`] lists, and the check expects exactly
//! that, so the two cannot disagree about which extensions a kind carries.

use der::oid::ObjectIdentifier;
use der::oid::db::rfc5280;
use ring::digest;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::issuance::csr::key_policy;
use crate::issuance::lifetime::{Lifetime, Validity};
use crate::issuance::{Error, Issuer, KeyKind, VerifiedCsr};
use crate::serial::Serial;
use crate::spiffe::SpiffeId;

/// What is being certified: decides the subject and the subject alternative names.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// An X509-SVID: empty subject, exactly one URI SAN.
    Leaf { spiffe_id: &'a SpiffeId },
    /// The CA's TLS serving certificate: empty subject, the DNS names and then the URI, if any.
    Serving {
        dns_names: &'a [String],
        uri: Option<&'a str>,
    },
    /// An issuing CA: subject `O=<organization>, CN=<common_name>`, no SAN.
    Intermediate {
        organization: &'a str,
        common_name: &'a str,
    },
}

/// The certified public key.
#[derive(Debug, Clone, Copy)]
pub struct SubjectKey<'a> {
    /// The key's kind; the writer re-encodes the SPKI from it and `bits`, never copying it.
    pub kind: KeyKind,
    /// The subjectPublicKey bits (the check holds the written key to this kind and these bits).
    pub bits: &'a [u8],
}

/// Key usage bits, numbered as in RFC 5280 section 4.2.1.3 (bit `n` is `1 << n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage(u16);

/// Extended key usages a template can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedKeyUsage {
    pub server_auth: bool,
    pub client_auth: bool,
}

/// The `basicConstraints` extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicConstraints {
    /// `cA` FALSE (written as an empty SEQUENCE, the DEFAULT).
    EndEntity,
    /// `cA` TRUE with a path length constraint.
    Ca { path_len: u8 },
}

/// Everything that decides the content of one certificate; the check holds the result to it.
/// The issuer (name, key, key identifier) is passed beside it.
#[derive(Debug, Clone, Copy)]
pub struct Template<'a> {
    pub kind: Kind<'a>,
    pub serial: &'a Serial,
    pub validity: Validity,
    pub public_key: SubjectKey<'a>,
    pub key_usage: KeyUsage,
    pub extended_key_usage: ExtendedKeyUsage,
    pub basic_constraints: BasicConstraints,
    /// CRL distribution point and OCSP URL to name, if any.
    pub crl_url: Option<&'a str>,
    pub ocsp_url: Option<&'a str>,
}

/// The extensions a template may carry, in the order they are written (rcgen's order, so the
/// differential tests can compare bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    AuthorityKeyIdentifier,
    SubjectAltName,
    KeyUsage,
    ExtendedKeyUsage,
    CrlDistributionPoints,
    SubjectKeyIdentifier,
    BasicConstraints,
    AuthorityInfoAccess,
}

impl<'a> Template<'a> {
    /// An X509-SVID for `spiffe_id`, naming the issuer's CRL and OCSP URLs.
    pub fn leaf(
        spiffe_id: &'a SpiffeId,
        serial: &'a Serial,
        lifetime: &Lifetime,
        public_key: SubjectKey<'a>,
        issuer: &Issuer<'a>,
    ) -> Template<'a> {
        // keyEncipherment only where it means something: RSA key transport.
        let key_usage = if public_key.kind.is_rsa() {
            KeyUsage::DIGITAL_SIGNATURE.with(KeyUsage::KEY_ENCIPHERMENT)
        } else {
            KeyUsage::DIGITAL_SIGNATURE
        };
        Template {
            kind: Kind::Leaf { spiffe_id },
            serial,
            validity: lifetime.validity,
            public_key,
            key_usage,
            extended_key_usage: ExtendedKeyUsage {
                server_auth: true,
                client_auth: true,
            },
            basic_constraints: BasicConstraints::EndEntity,
            crl_url: issuer.crl_url,
            ocsp_url: issuer.ocsp_url,
        }
    }

    /// The CA's TLS serving certificate for `dns_names` (and `uri`, for https_spiffe).
    pub fn serving(
        dns_names: &'a [String],
        uri: Option<&'a str>,
        serial: &'a Serial,
        lifetime: &Lifetime,
        public_key: SubjectKey<'a>,
    ) -> Template<'a> {
        Template {
            kind: Kind::Serving { dns_names, uri },
            serial,
            validity: lifetime.validity,
            public_key,
            key_usage: KeyUsage::DIGITAL_SIGNATURE,
            extended_key_usage: ExtendedKeyUsage {
                server_auth: true,
                client_auth: false,
            },
            basic_constraints: BasicConstraints::EndEntity,
            crl_url: None,
            ocsp_url: None,
        }
    }

    /// An issuing intermediate of `trust_domain`, signed by its root: it may sign leaves and
    /// CRLs, and no further CA (pathLen 0).
    pub fn intermediate(
        trust_domain: &'a str,
        common_name: &'a str,
        serial: &'a Serial,
        lifetime: &Lifetime,
        public_key: SubjectKey<'a>,
    ) -> Template<'a> {
        Template {
            kind: Kind::Intermediate {
                organization: trust_domain,
                common_name,
            },
            serial,
            validity: lifetime.validity,
            public_key,
            // digitalSignature lets the CA sign OCSP responses itself.
            key_usage: KeyUsage::KEY_CERT_SIGN
                .with(KeyUsage::CRL_SIGN)
                .with(KeyUsage::DIGITAL_SIGNATURE),
            extended_key_usage: ExtendedKeyUsage {
                server_auth: false,
                client_auth: false,
            },
            basic_constraints: BasicConstraints::Ca { path_len: 0 },
            crl_url: None,
            ocsp_url: None,
        }
    }

    /// The extensions this certificate carries, in the order they are written.
    pub fn extensions(&self) -> impl Iterator<Item = Extension> + '_ {
        Extension::ALL.into_iter().filter(|e| self.carries(*e))
    }

    /// Whether the certificate carries `extension`.
    pub fn carries(&self, extension: Extension) -> bool {
        match extension {
            Extension::AuthorityKeyIdentifier
            | Extension::SubjectKeyIdentifier
            | Extension::BasicConstraints => true,
            Extension::SubjectAltName => match self.kind {
                Kind::Leaf { .. } => true,
                Kind::Serving { dns_names, uri } => !dns_names.is_empty() || uri.is_some(),
                Kind::Intermediate { .. } => false,
            },
            Extension::KeyUsage => self.key_usage != KeyUsage::NONE,
            Extension::ExtendedKeyUsage => {
                self.extended_key_usage.server_auth || self.extended_key_usage.client_auth
            }
            Extension::CrlDistributionPoints => self.crl_url.is_some(),
            Extension::AuthorityInfoAccess => self.ocsp_url.is_some(),
        }
    }

    /// Whether `extension` is marked critical: key usage and basic constraints always (RFC 5280
    /// says they SHOULD and MUST be for CAs), the SAN when the subject is empty (RFC 5280
    /// section 4.2.1.6 says it MUST be then).
    pub fn is_critical(&self, extension: Extension) -> bool {
        match extension {
            Extension::KeyUsage | Extension::BasicConstraints => true,
            Extension::SubjectAltName => self.has_empty_subject(),
            _ => false,
        }
    }

    /// Leaves and serving certificates name their subject in the SAN only.
    pub fn has_empty_subject(&self) -> bool {
        !matches!(self.kind, Kind::Intermediate { .. })
    }
}

/// The subject key identifier of a public key: the first 20 bytes of the SHA-256 of its SPKI
/// (rcgen's `KeyIdMethod::Sha256`), for every kind of certificate.
pub fn key_identifier(spki_der: &[u8]) -> [u8; 20] {
    let hash = digest::digest(&digest::SHA256, spki_der);
    let mut identifier = [0; 20];
    identifier.copy_from_slice(&hash.as_ref()[..20]);
    identifier
}

impl<'a> SubjectKey<'a> {
    /// The public key of a verified CSR.
    pub fn of(csr: &'a VerifiedCsr) -> SubjectKey<'a> {
        SubjectKey {
            kind: csr.key_kind,
            bits: &csr.public_key_bits,
        }
    }

    /// A public key of our own (a serving or CA key), held to the same key policy as a CSR's.
    pub fn parse(spki_der: &'a [u8]) -> Result<SubjectKey<'a>, Error> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| Error::UnsupportedKey(format!("public key does not parse: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::UnsupportedKey(
                "trailing bytes after the public key".to_owned(),
            ));
        }
        let kind = key_policy(&spki)?;
        let bits_at = spki_der.len() - spki.subject_public_key.data.len();
        Ok(SubjectKey {
            kind,
            bits: &spki_der[bits_at..],
        })
    }
}

impl KeyUsage {
    pub const NONE: KeyUsage = KeyUsage(0);
    pub const DIGITAL_SIGNATURE: KeyUsage = KeyUsage(1);
    pub const KEY_ENCIPHERMENT: KeyUsage = KeyUsage(1 << 2);
    pub const KEY_CERT_SIGN: KeyUsage = KeyUsage(1 << 5);
    pub const CRL_SIGN: KeyUsage = KeyUsage(1 << 6);

    /// These usages and `other`.
    pub const fn with(self, other: KeyUsage) -> KeyUsage {
        KeyUsage(self.0 | other.0)
    }

    /// The bits, numbered as x509-parser's `KeyUsage::flags` numbers them.
    pub fn bits(self) -> u16 {
        self.0
    }
}

impl Extension {
    /// Every extension, in the order written.
    pub const ALL: [Extension; 8] = [
        Extension::AuthorityKeyIdentifier,
        Extension::SubjectAltName,
        Extension::KeyUsage,
        Extension::ExtendedKeyUsage,
        Extension::CrlDistributionPoints,
        Extension::SubjectKeyIdentifier,
        Extension::BasicConstraints,
        Extension::AuthorityInfoAccess,
    ];

    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Extension::AuthorityKeyIdentifier => rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            Extension::SubjectAltName => rfc5280::ID_CE_SUBJECT_ALT_NAME,
            Extension::KeyUsage => rfc5280::ID_CE_KEY_USAGE,
            Extension::ExtendedKeyUsage => rfc5280::ID_CE_EXT_KEY_USAGE,
            Extension::CrlDistributionPoints => rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS,
            Extension::SubjectKeyIdentifier => rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            Extension::BasicConstraints => rfc5280::ID_CE_BASIC_CONSTRAINTS,
            Extension::AuthorityInfoAccess => rfc5280::ID_PE_AUTHORITY_INFO_ACCESS,
        }
    }

    /// The extension with this encoded OID (the contents octets), if it is one of ours.
    pub fn from_oid_bytes(oid: &[u8]) -> Option<Extension> {
        Extension::ALL
            .into_iter()
            .find(|e| e.oid().as_bytes() == oid)
    }
}
