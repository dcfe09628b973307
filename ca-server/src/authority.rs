//! Per-trust-domain certificate authorities: a self-signed root and an issuing intermediate
//! (one generation), created on first start, sealed into the store, and on every later start
//! decrypted and checked against their certificates. A key that cannot be read or decrypted stops
//! the server: we never generate a replacement root over an existing one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SigningKey,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::TrustDomainConfig;
use crate::issuance;
use crate::keys::{self, CaKey, Kek, KeyAlgorithm};
use crate::serial::Serial;
use crate::spiffe::TrustDomain;

/// Why a trust domain's CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("trust domain {trust_domain}: CA key")]
    Key {
        trust_domain: String,
        source: keys::Error,
    },
    #[error("trust domain {trust_domain}: stored CA generation is inconsistent: {message}")]
    Inconsistent {
        trust_domain: String,
        message: String,
    },
    #[error("trust domain {trust_domain}: cannot build CA certificate")]
    Build {
        trust_domain: String,
        source: rcgen::Error,
    },
    #[error("trust domain {trust_domain}: cannot issue the intermediate")]
    Issue {
        trust_domain: String,
        source: issuance::Error,
    },
    #[error("trust domain {trust_domain}: no random serial")]
    Serial {
        trust_domain: String,
        source: crate::serial::RngError,
    },
}

/// A CA generation of one trust domain as it is stored: certificates, and keys sealed under
/// the KEK (open it with [`open_generation`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedGeneration {
    pub trust_domain: String,
    pub generation: i32,
    pub state: String,
    pub key_algorithm: String,
    pub root_cert: Vec<u8>,
    pub root_key: Vec<u8>,
    pub intermediate_cert: Vec<u8>,
    pub intermediate_key: Vec<u8>,
    pub issuer_key_id: String,
    pub not_after: i64,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    /// When it was removed or revoked.
    pub removed_at: Option<i64>,
    /// The reason of an emergency revocation (RFC 5280 name).
    pub revocation_reason: Option<String>,
    /// A plug-in CA's intermediates between the issuing one and the root (DER, concatenated,
    /// the issuing one's issuer first); `None` when the root signed the intermediate.
    pub chain: Option<Vec<u8>>,
}

impl SealedGeneration {
    /// The root's key is not here (a plug-in CA's external root): no intermediate can be made
    /// under it, and no root-signed CRL.
    pub fn external_root(&self) -> bool {
        self.root_key.is_empty()
    }
}

/// The issuing CA of one trust domain, ready to sign.
pub struct Authority {
    pub trust_domain: TrustDomain,
    pub generation: i32,
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    /// The chain a leaf is sent with: `intermediate_der`, then a plug-in CA's intermediates above
    /// it, up to (not including) the root.
    pub chain_der: Vec<Vec<u8>>,
    /// The same, one PEM per certificate, encoded once (every Istio answer carries them, one
    /// element each).
    pub chain_pem: Vec<String>,
    pub root_pem: String,
    /// The root's key is not here (a plug-in CA): no automatic rotation under it.
    pub external_root: bool,
    /// Hex of the intermediate's subject key identifier: names the issuer in the store.
    pub issuer_key_id: String,
    /// The intermediate's notAfter (unix seconds): no leaf outlives it.
    pub intermediate_not_after: i64,
    pub intermediate_not_before: i64,
    pub root_not_after: i64,
    /// CRL distribution point and OCSP URL to put in issued certificates (when `public_url` is
    /// configured).
    pub crl_url: Option<String>,
    pub ocsp_url: Option<String>,
    /// The intermediate's subject (DER) and subject key identifier, parsed once for the
    /// per-certificate self-check.
    pub intermediate_subject_der: Vec<u8>,
    pub intermediate_ski: Vec<u8>,
    pub issuer: Issuer<'static, CaKey>,
    /// An emergency revocation of this generation: when, and the RFC 5280 reason.
    pub revoked: Option<(i64, String)>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("generation", &self.generation)
            .field("issuer_key_id", &self.issuer_key_id)
            .field("key", self.issuer.key())
            .finish()
    }
}

/// Every trust domain's loaded generations: the active one (which signs), and the retired ones
/// that still answer for the leaves they signed (OCSP, CRL, mTLS renewal), newest first.
#[derive(Debug, Clone, Default)]
pub struct Authorities {
    by_name: BTreeMap<TrustDomain, Arc<Authority>>,
    retired: BTreeMap<TrustDomain, Vec<Arc<Authority>>>,
    /// Generations revoked in an emergency: kept only so OCSP can say `revoked` for their
    /// leaves; they sign nothing and renew nothing.
    revoked: BTreeMap<TrustDomain, Vec<Arc<Authority>>>,
    /// A generation with a new root, published (in every trust set) but not yet signing.
    prepared: BTreeMap<TrustDomain, Arc<Authority>>,
}

impl Authorities {
    /// The active generation of a trust domain.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&Arc<Authority>> {
        self.by_name.get(trust_domain)
    }

    /// Every trust domain's active generation.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Authority>> {
        self.by_name.values()
    }

    /// Every loaded generation of a trust domain: the active one first, then the retired ones,
    /// newest first.
    pub fn generations<'a>(
        &'a self,
        trust_domain: &TrustDomain,
    ) -> impl Iterator<Item = &'a Arc<Authority>> + 'a {
        self.by_name
            .get(trust_domain)
            .into_iter()
            .chain(self.retired.get(trust_domain).into_iter().flatten())
    }

    /// A loaded generation of a trust domain by number.
    pub fn generation(&self, trust_domain: &TrustDomain, number: i32) -> Option<&Arc<Authority>> {
        self.generations(trust_domain)
            .find(|a| a.generation == number)
    }

    /// Adds a trust domain's active generation (a later one of the same name replaces it).
    pub fn insert(&mut self, authority: Authority) {
        self.by_name
            .insert(authority.trust_domain.clone(), Arc::new(authority));
    }

    /// Adds a retired generation that still answers for its leaves.
    pub fn insert_retired(&mut self, authority: Authority) {
        let list = self
            .retired
            .entry(authority.trust_domain.clone())
            .or_default();
        list.push(Arc::new(authority));
        list.sort_by_key(|a| std::cmp::Reverse(a.generation));
    }

    /// Adds the prepared generation (a root rotation in flight).
    pub fn insert_prepared(&mut self, authority: Authority) {
        self.prepared
            .insert(authority.trust_domain.clone(), Arc::new(authority));
    }

    /// The prepared generation of a trust domain, if a root rotation is in flight.
    pub fn prepared(&self, trust_domain: &TrustDomain) -> Option<&Arc<Authority>> {
        self.prepared.get(trust_domain)
    }

    /// Every root a workload of this trust domain must trust: the active generation's, then
    /// the others still in use (a published new root, retired generations' roots while their
    /// leaves live), each once.
    pub fn trust_roots(&self, trust_domain: &TrustDomain) -> Vec<Vec<u8>> {
        let mut roots: Vec<Vec<u8>> = Vec::new();
        for authority in self
            .generations(trust_domain)
            .chain(self.prepared.get(trust_domain))
        {
            if !roots.contains(&authority.root_der) {
                roots.push(authority.root_der.clone());
            }
        }
        roots
    }

    /// Adds a generation revoked in an emergency (OCSP only).
    pub fn insert_revoked(&mut self, authority: Authority) {
        self.revoked
            .entry(authority.trust_domain.clone())
            .or_default()
            .push(Arc::new(authority));
    }

    /// The revoked generations of a trust domain.
    pub fn revoked<'a>(
        &'a self,
        trust_domain: &TrustDomain,
    ) -> impl Iterator<Item = &'a Arc<Authority>> + 'a {
        self.revoked.get(trust_domain).into_iter().flatten()
    }

    /// Replaces everything loaded for one trust domain.
    pub fn replace_trust_domain(&mut self, trust_domain: &TrustDomain, from: Authorities) {
        self.by_name.remove(trust_domain);
        self.retired.remove(trust_domain);
        self.revoked.remove(trust_domain);
        self.prepared.remove(trust_domain);
        if let Some(prepared) = from.prepared.get(trust_domain) {
            self.prepared.insert(trust_domain.clone(), prepared.clone());
        }
        if let Some(revoked) = from.revoked.get(trust_domain) {
            self.revoked.insert(trust_domain.clone(), revoked.clone());
        }
        if let Some(active) = from.by_name.get(trust_domain) {
            self.by_name.insert(trust_domain.clone(), active.clone());
        }
        if let Some(retired) = from.retired.get(trust_domain) {
            self.retired.insert(trust_domain.clone(), retired.clone());
        }
    }
}

impl Authority {
    /// The intermediate as the issuance engine sees it: what every certificate it signs is
    /// written and checked against.
    pub(crate) fn as_issuer(&self) -> issuance::Issuer<'_> {
        issuance::Issuer {
            trust_domain: &self.trust_domain,
            subject_der: &self.intermediate_subject_der,
            key_identifier: &self.intermediate_ski,
            validity: issuance::Validity {
                not_before: self.intermediate_not_before,
                not_after: self.intermediate_not_after,
            },
            key: self.issuer.key(),
            crl_url: self.crl_url.as_deref(),
            ocsp_url: self.ocsp_url.as_deref(),
        }
    }

    /// Names `public_url`'s CRL and OCSP endpoints of this trust domain in the certificates it
    /// issues.
    pub fn publish_at(&mut self, public_url: &str) {
        let name = &self.trust_domain;
        // Each generation names its own CRL (a CRL is signed by the intermediate that issued
        // the certificates it lists); OCSP finds the generation from the request's CertID.
        self.crl_url = Some(format!("{public_url}/v1/crl/{name}/{}", self.generation));
        self.ocsp_url = Some(format!("{public_url}/v1/ocsp/{name}"));
    }
}

/// The sealing context of a key: binds the ciphertext to its trust domain, generation and role,
/// so a sealed key copied into another row does not decrypt.
fn seal_context(trust_domain: &str, generation: i32, role: &str) -> Vec<u8> {
    format!("ca-key/v1/{trust_domain}/{generation}/{role}").into_bytes()
}

/// Builds a new root and intermediate for a trust domain, keys sealed under the KEK.
pub fn create_generation(
    config: &TrustDomainConfig,
    kek: &Kek,
    generation: i32,
    now: OffsetDateTime,
) -> Result<SealedGeneration, Error> {
    let name = config.name.as_str();
    let key_err = |source| Error::Key {
        trust_domain: name.to_owned(),
        source,
    };
    let build_err = |source: rcgen::Error| Error::Build {
        trust_domain: name.to_owned(),
        source,
    };
    let root_key = CaKey::generate(config.key_algorithm).map_err(key_err)?;
    let intermediate_key = CaKey::generate(config.key_algorithm).map_err(key_err)?;

    let not_before = now - time::Duration::seconds(60);
    let root_not_after = now + to_time(config.root_ttl);
    let mut root_params = ca_params(
        &dn_value(name),
        &dn_value(&format!("{name} Root CA {generation}")),
        1,
    )?;
    root_params.not_before = not_before;
    root_params.not_after = root_not_after;
    let root_cert = root_params.self_signed(&root_key).map_err(build_err)?;

    let made = issue_intermediate(
        config,
        root_cert.der(),
        &root_key,
        &intermediate_key,
        generation,
        now,
    )?;
    seal_generation(
        name,
        generation,
        root_cert.der(),
        &root_key,
        &intermediate_key,
        made,
        kek,
        now,
    )
}

/// A new active generation as the store keeps it: both keys sealed for it under the KEK.
#[allow(clippy::too_many_arguments)]
fn seal_generation(
    name: &str,
    generation: i32,
    root_cert: &[u8],
    root_key: &CaKey,
    intermediate_key: &CaKey,
    made: MadeIntermediate,
    kek: &Kek,
    now: OffsetDateTime,
) -> Result<SealedGeneration, Error> {
    let key_err = |source| Error::Key {
        trust_domain: name.to_owned(),
        source,
    };
    Ok(SealedGeneration {
        trust_domain: name.to_owned(),
        generation,
        state: "active".to_owned(),
        key_algorithm: root_key.algorithm().as_str().to_owned(),
        root_cert: root_cert.to_vec(),
        root_key: root_key
            .seal(kek, &seal_context(name, generation, "root"))
            .map_err(key_err)?,
        intermediate_cert: made.der,
        intermediate_key: intermediate_key
            .seal(kek, &seal_context(name, generation, "intermediate"))
            .map_err(key_err)?,
        issuer_key_id: made.issuer_key_id,
        not_after: made.not_after,
        created_at: now.unix_timestamp(),
        activated_at: Some(now.unix_timestamp()),
        retired_at: None,
        removed_at: None,
        revocation_reason: None,
        chain: None,
    })
}

/// A plug-in intermediate as a generation: its key sealed for it under the KEK, the root's key
/// absent (or, when the external CA's root is one of ours, `root_key` re-sealed for it).
pub fn seal_imported(
    name: &str,
    generation: i32,
    imported: &crate::external_ca::Validated,
    root_key: Option<&CaKey>,
    kek: &Kek,
    now: OffsetDateTime,
) -> Result<SealedGeneration, Error> {
    let key_err = |source| Error::Key {
        trust_domain: name.to_owned(),
        source,
    };
    let chain: Vec<u8> = imported.upper_chain.concat();
    Ok(SealedGeneration {
        trust_domain: name.to_owned(),
        generation,
        state: "active".to_owned(),
        key_algorithm: imported.key.algorithm().as_str().to_owned(),
        root_cert: imported.root_der.clone(),
        root_key: match root_key {
            Some(key) => key
                .seal(kek, &seal_context(name, generation, "root"))
                .map_err(key_err)?,
            None => Vec::new(),
        },
        intermediate_cert: imported.intermediate_der.clone(),
        intermediate_key: imported
            .key
            .seal(kek, &seal_context(name, generation, "intermediate"))
            .map_err(key_err)?,
        issuer_key_id: imported.issuer_key_id.clone(),
        not_after: imported.not_after,
        created_at: now.unix_timestamp(),
        activated_at: Some(now.unix_timestamp()),
        retired_at: None,
        removed_at: None,
        revocation_reason: None,
        chain: (!chain.is_empty()).then_some(chain),
    })
}

/// Seals the key made for a plug-in intermediate's CSR (bound to the trust domain and the time
/// it was made).
pub fn seal_pending_key(
    name: &str,
    key: &CaKey,
    created_at: i64,
    kek: &Kek,
) -> Result<Vec<u8>, keys::Error> {
    key.seal(kek, &pending_context(name, created_at))
}

/// Opens the key made for a CSR (`sealed` at `created_at` by [`seal_pending_key`]).
pub fn open_pending_key(
    name: &str,
    key_algorithm: &str,
    sealed: &[u8],
    created_at: i64,
    kek: &Kek,
) -> Result<CaKey, Error> {
    let algorithm = KeyAlgorithm::parse(key_algorithm).ok_or_else(|| Error::Inconsistent {
        trust_domain: name.to_owned(),
        message: format!("unknown key algorithm {key_algorithm}"),
    })?;
    CaKey::open(kek, algorithm, sealed, &pending_context(name, created_at)).map_err(|source| {
        Error::Key {
            trust_domain: name.to_owned(),
            source,
        }
    })
}

fn pending_context(trust_domain: &str, created_at: i64) -> Vec<u8> {
    format!("ca-key/v1/{trust_domain}/pending/{created_at}").into_bytes()
}

/// A fresh key for the next intermediate and a CSR for it, to be signed outside (the key never
/// leaves the CA). The CSR asks for a CA with `keyCertSign`, `cRLSign` and `digitalSignature`.
pub fn intermediate_csr(
    trust_domain: &TrustDomain,
    algorithm: KeyAlgorithm,
) -> Result<(CaKey, String), String> {
    let key = CaKey::generate(algorithm).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, dn_value(trust_domain.as_str()));
    name.push(
        DnType::CommonName,
        dn_value(&format!("{trust_domain} Intermediate CA")),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| e.to_string())?
        .pem()
        .map_err(|e| e.to_string())?;
    Ok((key, csr))
}

/// Decrypts one of a stored generation's keys (`root` or `intermediate`).
pub(crate) fn open_key(record: &SealedGeneration, kek: &Kek, role: &str) -> Result<CaKey, Error> {
    let name = record.trust_domain.as_str();
    let algorithm =
        KeyAlgorithm::parse(&record.key_algorithm).ok_or_else(|| Error::Inconsistent {
            trust_domain: name.to_owned(),
            message: format!("unknown key algorithm {}", record.key_algorithm),
        })?;
    let sealed = if role == "root" {
        &record.root_key
    } else {
        &record.intermediate_key
    };
    CaKey::open(
        kek,
        algorithm,
        sealed,
        &seal_context(name, record.generation, role),
    )
    .map_err(|source| Error::Key {
        trust_domain: name.to_owned(),
        source,
    })
}

/// An intermediate made under a root.
struct MadeIntermediate {
    der: Vec<u8>,
    issuer_key_id: String,
    not_after: i64,
}

/// Makes an intermediate the way every other certificate is made: its template, the writer and
/// the self-check, under the root as issuer. Its life is `intermediate_ttl`, within the root's.
fn issue_intermediate(
    config: &TrustDomainConfig,
    root_der: &[u8],
    root_key: &CaKey,
    intermediate_key: &CaKey,
    generation: i32,
    now: OffsetDateTime,
) -> Result<MadeIntermediate, Error> {
    let name = config.name.as_str();
    let inconsistent = |message: String| Error::Inconsistent {
        trust_domain: name.to_owned(),
        message,
    };
    let (_, root) = X509Certificate::from_der(root_der)
        .map_err(|e| inconsistent(format!("the root certificate does not parse: {e}")))?;
    let root_key_identifier = root
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                Some(ski.0.to_vec())
            }
            _ => None,
        })
        .ok_or_else(|| inconsistent("the root has no subject key identifier".to_owned()))?;
    let root_issuer = issuance::Issuer {
        trust_domain: &config.name,
        subject_der: root.subject().as_raw(),
        key_identifier: &root_key_identifier,
        validity: issuance::Validity {
            not_before: root.validity().not_before.timestamp(),
            not_after: root.validity().not_after.timestamp(),
        },
        key: root_key,
        crl_url: None,
        ocsp_url: None,
    };
    let issue_err = |source| Error::Issue {
        trust_domain: name.to_owned(),
        source,
    };
    let intermediate_spki = intermediate_key.spki_der();
    let public_key = issuance::SubjectKey::parse(&intermediate_spki).map_err(issue_err)?;
    let intermediate_ttl = issuance::TtlPolicy {
        default_ttl: config.intermediate_ttl,
        max_ttl: config.intermediate_ttl,
        min_ttl: Duration::ZERO,
    };
    let lifetime = issuance::Lifetime::new(now, None, intermediate_ttl, root_issuer.validity)
        .map_err(issue_err)?;
    let serial = Serial::random().map_err(|source| Error::Serial {
        trust_domain: name.to_owned(),
        source,
    })?;
    let organization = dn_value(name);
    let common_name = dn_value(&format!("{name} Intermediate CA {generation}"));
    let template = issuance::Template::intermediate(
        &organization,
        &common_name,
        &serial,
        &lifetime,
        public_key,
    );
    let der = issuance::writer::sign(&template, &root_issuer).map_err(issue_err)?;
    issuance::check::check(&der, &template, &root_issuer).map_err(issue_err)?;
    Ok(MadeIntermediate {
        der,
        issuer_key_id: hex::encode(issuance::template::key_identifier(&intermediate_spki)),
        not_after: lifetime.validity.not_after,
    })
}

/// The next generation of a trust domain under the same root: a fresh intermediate key and
/// certificate signed by `current`'s root (whose key is re-sealed for the new generation). The
/// root's key algorithm is kept (a changed `key_algorithm` takes effect with a new root).
pub fn next_intermediate_generation(
    config: &TrustDomainConfig,
    kek: &Kek,
    current: &SealedGeneration,
    now: OffsetDateTime,
) -> Result<SealedGeneration, Error> {
    let root_key = open_key(current, kek, "root")?;
    let generation = current.generation + 1;
    let intermediate_key = CaKey::generate(root_key.algorithm()).map_err(|source| Error::Key {
        trust_domain: config.name.to_string(),
        source,
    })?;
    let made = issue_intermediate(
        config,
        &current.root_cert,
        &root_key,
        &intermediate_key,
        generation,
        now,
    )?;
    seal_generation(
        config.name.as_str(),
        generation,
        &current.root_cert,
        &root_key,
        &intermediate_key,
        made,
        kek,
        now,
    )
}

/// Opens a generation's root key (checked against the root certificate) as a signer: for the
/// root-signed CRL that lists revoked intermediates. Opened on demand, not kept loaded.
pub fn open_root(record: &SealedGeneration, kek: &Kek) -> Result<Issuer<'static, CaKey>, Error> {
    let name = record.trust_domain.as_str();
    let inconsistent = |message: String| Error::Inconsistent {
        trust_domain: name.to_owned(),
        message,
    };
    let root_key = open_key(record, kek, "root")?;
    let (_, root) = X509Certificate::from_der(&record.root_cert)
        .map_err(|e| inconsistent(format!("root certificate does not parse: {e}")))?;
    if root.public_key().raw != root_key.spki_der().as_slice() {
        return Err(inconsistent(
            "root key does not match the root certificate".to_owned(),
        ));
    }
    Issuer::from_ca_cert_der(&record.root_cert.as_slice().into(), root_key)
        .map_err(|e| inconsistent(format!("root certificate: {e}")))
}

/// Decrypts a stored generation and checks every key against its certificate, and the chain
/// from the intermediate up to the root (a plug-in CA's root key is not here: its chain is
/// checked by signature only).
pub fn open_generation(record: &SealedGeneration, kek: &Kek) -> Result<Authority, Error> {
    let name = record.trust_domain.as_str();
    let inconsistent = |message: String| Error::Inconsistent {
        trust_domain: name.to_owned(),
        message,
    };
    let intermediate_key = open_key(record, kek, "intermediate")?;
    let (_, root) = X509Certificate::from_der(&record.root_cert)
        .map_err(|e| inconsistent(format!("root certificate does not parse: {e}")))?;
    if !record.external_root() {
        let root_key = open_key(record, kek, "root")?;
        if root.public_key().raw != root_key.spki_der().as_slice() {
            return Err(inconsistent(
                "root key does not match the root certificate".to_owned(),
            ));
        }
    }
    let (_, intermediate) = X509Certificate::from_der(&record.intermediate_cert)
        .map_err(|e| inconsistent(format!("intermediate certificate does not parse: {e}")))?;
    if intermediate.public_key().raw != intermediate_key.spki_der().as_slice() {
        return Err(inconsistent(
            "intermediate key does not match the intermediate certificate".to_owned(),
        ));
    }
    let mut chain_der = vec![record.intermediate_cert.clone()];
    let mut rest: &[u8] = record.chain.as_deref().unwrap_or_default();
    while !rest.is_empty() {
        let (next, cert) = X509Certificate::from_der(rest)
            .map_err(|e| inconsistent(format!("a chain certificate does not parse: {e}")))?;
        chain_der.push(rest[..rest.len() - next.len()].to_vec());
        drop(cert);
        rest = next;
    }
    // Each certificate of the chain is signed by the next, the last by the root.
    let parsed: Vec<X509Certificate<'_>> = chain_der
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c))
        .collect::<Result<_, _>>()
        .map_err(|e| inconsistent(format!("a chain certificate does not parse: {e}")))?;
    for (k, cert) in parsed.iter().enumerate() {
        let signer = parsed.get(k + 1).unwrap_or(&root).public_key();
        cert.verify_signature(Some(signer)).map_err(|e| {
            inconsistent(format!(
                "chain certificate {k} is not signed by the one above it: {e}"
            ))
        })?;
    }
    let intermediate_not_after = intermediate.validity().not_after.timestamp();
    let intermediate_not_before = intermediate.validity().not_before.timestamp();
    let root_not_after = root.validity().not_after.timestamp();
    let intermediate_subject_der = intermediate.subject().as_raw().to_vec();
    let intermediate_ski = intermediate
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                Some(ski.0.to_vec())
            }
            _ => None,
        })
        .ok_or_else(|| inconsistent("the intermediate has no subject key identifier".to_owned()))?;
    let trust_domain = TrustDomain::parse(name).map_err(|e| inconsistent(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_der(
        &record.intermediate_cert.as_slice().into(),
        intermediate_key,
    )
    .map_err(|e| inconsistent(format!("intermediate certificate: {e}")))?;
    Ok(Authority {
        trust_domain,
        generation: record.generation,
        root_der: record.root_cert.clone(),
        intermediate_der: record.intermediate_cert.clone(),
        chain_pem: chain_der
            .iter()
            .map(|d| crate::pem::certificate(d))
            .collect(),
        chain_der,
        root_pem: crate::pem::certificate(&record.root_cert),
        external_root: record.external_root(),
        issuer_key_id: record.issuer_key_id.clone(),
        intermediate_not_after,
        intermediate_not_before,
        root_not_after,
        crl_url: None,
        ocsp_url: None,
        intermediate_subject_der,
        intermediate_ski,
        issuer,
        revoked: record
            .removed_at
            .filter(|_| record.state == "revoked")
            .map(|at| {
                (
                    at,
                    record
                        .revocation_reason
                        .clone()
                        .unwrap_or_else(|| "cACompromise".to_owned()),
                )
            }),
    })
}

/// A CA name attribute within RFC 5280's upper bound (64 characters for O and CN): as it is
/// when it fits, else its first 55 characters, `~` and 8 hex digits of its SHA-256 (still
/// distinct per trust domain). Trust domains may be 255 characters long.
pub(crate) fn dn_value(text: &str) -> String {
    const UPPER_BOUND: usize = 64;
    if text.chars().count() <= UPPER_BOUND {
        return text.to_owned();
    }
    let hash = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let head: String = text.chars().take(UPPER_BOUND - 9).collect();
    format!("{head}~{}", &hex::encode(hash.as_ref())[..8])
}

fn ca_params(
    trust_domain: &str,
    common_name: &str,
    path_len: u8,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    let serial = Serial::random().map_err(|source| Error::Serial {
        trust_domain: trust_domain.to_owned(),
        source,
    })?;
    params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    // A root signs certificates and CRLs only (OCSP answers are the intermediate's, which keeps
    // digitalSignature for them).
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

fn to_time(duration: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2))
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.key_pair().der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.key_pair().algorithm()
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key_pair().sign(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::dn_value;

    #[test]
    fn long_names_fit_rfc_5280_and_stay_distinct() {
        assert_eq!(
            dn_value("us.cluster.local Root CA 1"),
            "us.cluster.local Root CA 1"
        );
        let a = dn_value(&format!("{} Root CA 1", "a".repeat(60)));
        let b = dn_value(&format!("{} Root CA 2", "a".repeat(60)));
        assert_eq!(a.chars().count(), 64);
        assert_ne!(a, b);
        assert_eq!(dn_value(&"x".repeat(64)), "x".repeat(64));
    }
}
