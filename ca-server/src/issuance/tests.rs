//! Engine tests with a real CA (a root and an intermediate made by rcgen, as
//! `authority::create_generation` makes them) and rcgen-made CSRs; no store, fixed clocks.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::issuance::template::{ExtendedKeyUsage, KeyUsage, Kind, SubjectKey, Template};
use crate::issuance::{
    Error, Issuer, KeyKind, Lifetime, TtlPolicy, Validity, VerifiedCsr, check, csr, issue, serving,
    writer,
};
use crate::keys::{CaKey, KeyAlgorithm};
use crate::serial::Serial;
use crate::spiffe::{SpiffeId, TrustDomain};

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const TRUST_DOMAIN: &str = "cluster.local";
const DAY: i64 = 86_400;

/// A trust domain's root and issuing intermediate, with the parts issuance needs parsed once.
struct TestCa {
    trust_domain: TrustDomain,
    root: rcgen::Issuer<'static, CaKey>,
    root_der: Vec<u8>,
    intermediate: rcgen::Issuer<'static, CaKey>,
    intermediate_der: Vec<u8>,
    crl_url: Option<String>,
    ocsp_url: Option<String>,
}

/// The subject, subject key identifier and validity of a CA certificate.
struct CaParts {
    subject_der: Vec<u8>,
    key_identifier: Vec<u8>,
    validity: Validity,
}

impl TestCa {
    /// A CA made at `created`: a 10-year root and a 1-year intermediate.
    fn new(algorithm: KeyAlgorithm, created: OffsetDateTime) -> TestCa {
        let root_key = CaKey::generate(algorithm).unwrap();
        let intermediate_key = CaKey::generate(algorithm).unwrap();
        let not_before = created - time::Duration::seconds(60);
        let mut root_params = ca_params(&format!("{TRUST_DOMAIN} Root CA 1"), 1);
        root_params.not_before = not_before;
        root_params.not_after = created + time::Duration::days(3650);
        let root_der = root_params.self_signed(&root_key).unwrap().der().to_vec();
        let mut intermediate_params = ca_params(&format!("{TRUST_DOMAIN} Intermediate CA 1"), 0);
        intermediate_params.not_before = not_before;
        intermediate_params.not_after = created + time::Duration::days(365);
        intermediate_params.use_authority_key_identifier_extension = true;
        let root = rcgen::Issuer::new(root_params, root_key);
        let intermediate_der = intermediate_params
            .signed_by(&intermediate_key, &root)
            .unwrap()
            .der()
            .to_vec();
        let intermediate =
            rcgen::Issuer::from_ca_cert_der(&intermediate_der.as_slice().into(), intermediate_key)
                .unwrap();
        TestCa {
            trust_domain: TrustDomain::parse(TRUST_DOMAIN).unwrap(),
            root,
            root_der,
            intermediate,
            intermediate_der,
            crl_url: None,
            ocsp_url: None,
        }
    }

    /// Gives the CA a CRL and an OCSP URL (their extensions are then in every leaf).
    fn publish_urls(&mut self) {
        self.crl_url = Some("https://ca.example/v1/crl/cluster.local".to_owned());
        self.ocsp_url = Some("https://ca.example/v1/ocsp/cluster.local".to_owned());
    }

    fn intermediate_parts(&self) -> CaParts {
        ca_parts(&self.intermediate_der)
    }

    fn root_parts(&self) -> CaParts {
        ca_parts(&self.root_der)
    }

    /// The intermediate as issuance sees it (what `Authority::as_issuer` gives).
    fn issuer<'a>(&'a self, parts: &'a CaParts) -> Issuer<'a> {
        Issuer {
            trust_domain: &self.trust_domain,
            subject_der: &parts.subject_der,
            key_identifier: &parts.key_identifier,
            validity: parts.validity,
            key: self.intermediate.key(),
            crl_url: self.crl_url.as_deref(),
            ocsp_url: self.ocsp_url.as_deref(),
        }
    }

    /// The root as the issuer of the next intermediate.
    fn root_issuer<'a>(&'a self, parts: &'a CaParts) -> Issuer<'a> {
        Issuer {
            trust_domain: &self.trust_domain,
            subject_der: &parts.subject_der,
            key_identifier: &parts.key_identifier,
            validity: parts.validity,
            key: self.root.key(),
            crl_url: None,
            ocsp_url: None,
        }
    }
}

/// `authority::ca_params`: O=<trust domain>, CN=<name>, cA with a path length, keyCertSign,
/// cRLSign and digitalSignature, SHA-256 key identifiers.
fn ca_params(common_name: &str, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, TRUST_DOMAIN);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(
        Serial::random().unwrap().as_bytes(),
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

fn ca_parts(der: &[u8]) -> CaParts {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let key_identifier = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                Some(ski.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    CaParts {
        subject_der: cert.subject().as_raw().to_vec(),
        key_identifier,
        validity: Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        },
    }
}

fn policy() -> TtlPolicy {
    TtlPolicy {
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(86_400),
        min_ttl: Duration::ZERO,
    }
}

fn csr_with(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

fn plain_csr(key: &KeyPair, uri: Option<&str>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    csr_with(params, key)
}

fn id() -> SpiffeId {
    SpiffeId::parse(ID).unwrap()
}

/// A one-hour leaf template for `csr` from `now`.
fn template_for<'a>(
    spiffe_id: &'a SpiffeId,
    serial: &'a Serial,
    csr: &'a VerifiedCsr,
    issuer: &Issuer<'a>,
    now: OffsetDateTime,
) -> Template<'a> {
    let lifetime = Lifetime {
        validity: Validity {
            not_before: now.unix_timestamp() - 60,
            not_after: now.unix_timestamp() + 3600,
        },
        ttl_clamped: false,
        ttl_raised: false,
        capped_by_issuer: false,
    };
    Template::leaf(spiffe_id, serial, &lifetime, SubjectKey::of(csr), issuer)
}

/// The test keys: P-256, P-384 and RSA-2048.
fn workload_keys() -> [KeyPair; 3] {
    let rsa_pkcs8 = {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        key.to_pkcs8_der().unwrap().as_bytes().to_vec()
    };
    let rsa_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(rsa_pkcs8.as_slice()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    [
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        rsa_key,
    ]
}

#[test]
fn not_after_never_passes_the_intermediate() {
    let now = OffsetDateTime::now_utc();
    // The intermediate (1y) was made long ago: 30 minutes of it are left.
    let created = now - time::Duration::days(365) + time::Duration::minutes(30);
    let ca = TestCa::new(KeyAlgorithm::EcdsaP256, created);
    let parts = ca.intermediate_parts();
    let issuer = ca.issuer(&parts);
    let key = KeyPair::generate().unwrap();
    let verified = csr::parse(&plain_csr(&key, None)).unwrap();
    let cert = issue(
        &issuer,
        policy(),
        &verified,
        &id(),
        Some(Duration::from_secs(7200)),
        now,
    )
    .unwrap();
    assert_eq!(cert.not_after, issuer.validity.not_after);
    assert!(cert.capped_by_issuer);
    // Once the intermediate has expired nothing is issued.
    let later = OffsetDateTime::from_unix_timestamp(issuer.validity.not_after).unwrap();
    assert_eq!(
        issue(&issuer, policy(), &verified, &id(), None, later).unwrap_err(),
        Error::IssuerNotValid
    );
}

#[test]
fn ttl_rules() {
    let now = OffsetDateTime::now_utc();
    let ca = TestCa::new(KeyAlgorithm::EcdsaP256, now);
    let parts = ca.intermediate_parts();
    let issuer = ca.issuer(&parts);
    let key = KeyPair::generate().unwrap();
    let verified = csr::parse(&plain_csr(&key, Some(ID))).unwrap();
    let cases = [
        (None, 3600, false),
        (Some(0), 3600, false),
        (Some(60), 60, false),
        (Some(86_400), 86_400, false),
        (Some(86_401), 86_400, true),
        (Some(u64::MAX), 86_400, true),
    ];
    for (requested, expected, clamped) in cases {
        let cert = issue(
            &issuer,
            policy(),
            &verified,
            &id(),
            requested.map(Duration::from_secs),
            now,
        )
        .unwrap();
        assert_eq!(
            cert.not_after - now.unix_timestamp(),
            expected,
            "{requested:?}"
        );
        // Backdated a minute, but never more than a tenth of the TTL.
        assert_eq!(
            cert.not_before,
            now.unix_timestamp() - 60.min(expected / 10),
            "{requested:?}"
        );
        assert_eq!(cert.ttl_clamped, clamped);
    }
}

#[test]
fn csr_identity_rules() {
    let now = OffsetDateTime::now_utc();
    let ca = TestCa::new(KeyAlgorithm::EcdsaP256, now);
    let parts = ca.intermediate_parts();
    let issuer = ca.issuer(&parts);
    let key = KeyPair::generate().unwrap();

    let mut dns = CertificateParams::new(vec!["web.default.svc".to_owned()]).unwrap();
    dns.distinguished_name = DistinguishedName::new();
    let mut cn = CertificateParams::default();
    cn.distinguished_name = DistinguishedName::new();
    cn.distinguished_name.push(DnType::CommonName, "admin");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut two_uris = CertificateParams::default();
    two_uris.distinguished_name = DistinguishedName::new();
    two_uris.subject_alt_names = vec![
        SanType::URI(ID.try_into().unwrap()),
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
    ];
    // An O= subject (istio-agent's shape) is fine.
    let mut org = CertificateParams::default();
    org.distinguished_name = DistinguishedName::new();
    org.distinguished_name.push(DnType::OrganizationName, "");
    org.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    // An unknown extension in the request is ignored (never copied).
    let mut custom = CertificateParams::default();
    custom.distinguished_name = DistinguishedName::new();
    custom.custom_extensions = vec![CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![5, 0])];

    let cases: Vec<(&str, CertificateParams, Result<(), Error>)> = vec![
        (
            "dns",
            dns,
            Err(Error::CsrClaimsOtherIdentity(String::new())),
        ),
        ("cn", cn, Err(Error::CsrClaimsOtherIdentity(String::new()))),
        ("ca", ca, Err(Error::CsrRequestsCaPowers)),
        (
            "two uris",
            two_uris,
            Err(Error::CsrClaimsOtherIdentity(String::new())),
        ),
        ("O= subject", org, Ok(())),
    ];
    for (name, params, expected) in cases {
        let verified = csr::parse(&csr_with(params, &key)).unwrap();
        let result = issue(&issuer, policy(), &verified, &id(), None, now).map(|_| ());
        match (result, expected) {
            (Ok(()), Ok(())) => {}
            (Err(Error::CsrClaimsOtherIdentity(_)), Err(Error::CsrClaimsOtherIdentity(_))) => {}
            (Err(got), Err(want)) => assert_eq!(got, want, "{name}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
    // An extension outside the identity and usage set is refused at parsing (security.md D4).
    assert_eq!(
        csr::parse(&csr_with(custom, &key)).unwrap_err(),
        Error::ForbiddenExtension("1.2.3.4".to_owned())
    );
    let other_td = SpiffeId::parse("spiffe://eu.cluster.local/ns/default/sa/web").unwrap();
    let verified = csr::parse(&plain_csr(&key, None)).unwrap();
    assert!(matches!(
        issue(&issuer, policy(), &verified, &other_td, None, now),
        Err(Error::WrongTrustDomain(_))
    ));
}

/// Two very different CSRs (names, subject, extensions) over keys of one type produce
/// certificates identical in everything but serial, validity, key and signature: the CSR
/// contributes its public key and nothing else (CFSSL provenance review, security.md #26).
#[test]
fn only_the_public_key_comes_from_the_csr() {
    let now = OffsetDateTime::now_utc();
    let ca = TestCa::new(KeyAlgorithm::EcdsaP256, now);
    let parts = ca.intermediate_parts();
    let issuer = ca.issuer(&parts);
    let plain_key = KeyPair::generate().unwrap();
    let busy_key = KeyPair::generate().unwrap();
    let plain = csr::parse(&plain_csr(&plain_key, None)).unwrap();
    let mut busy = CertificateParams::default();
    busy.distinguished_name = DistinguishedName::new();
    busy.distinguished_name
        .push(DnType::OrganizationName, "Evil Corp");
    busy.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    busy.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    busy.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let busy = csr::parse(&csr_with(busy, &busy_key)).unwrap();
    let a = issue(&issuer, policy(), &plain, &id(), None, now).unwrap();
    let b = issue(&issuer, policy(), &busy, &id(), None, now).unwrap();
    let (_, ca) = X509Certificate::from_der(&a.der).unwrap();
    let (_, cb) = X509Certificate::from_der(&b.der).unwrap();
    assert_eq!(ca.subject().as_raw(), cb.subject().as_raw());
    assert_eq!(ca.issuer().as_raw(), cb.issuer().as_raw());
    let strip = |c: &X509Certificate<'_>| {
        c.extensions()
            .iter()
            .filter(|e| e.oid.to_id_string() != "2.5.29.14")
            .map(|e| (e.oid.to_id_string(), e.critical, e.value.to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&ca), strip(&cb));
    assert_eq!(ca.validity().not_after, cb.validity().not_after);
}

#[test]
fn tampered_csr_signature_is_refused() {
    let key = KeyPair::generate().unwrap();
    let mut der = plain_csr(&key, Some(ID));
    let last = der.len() - 1;
    der[last] ^= 1;
    assert_eq!(csr::parse(&der).unwrap_err(), Error::BadCsrSignature);
    let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", plain_csr(&key, None)));
    assert!(csr::parse(pem_text.as_bytes()).is_ok());
}

#[test]
fn self_check_refuses_whatever_differs_from_the_template() {
    let now = OffsetDateTime::now_utc();
    let mut ca = TestCa::new(KeyAlgorithm::EcdsaP256, now);
    ca.publish_urls();
    let parts = ca.intermediate_parts();
    let issuer = ca.issuer(&parts);
    let key = KeyPair::generate().unwrap();
    let verified = csr::parse(&plain_csr(&key, None)).unwrap();
    let spiffe_id = id();
    let serial = Serial::random().unwrap();
    let template = template_for(&spiffe_id, &serial, &verified, &issuer, now);
    let der = writer::sign(&template, &issuer).unwrap();
    check::check(&der, &template, &issuer).unwrap();

    let expect = |result: Result<(), Error>, words: &str| match result {
        Err(Error::SelfCheck(message)) => assert!(message.contains(words), "{message}"),
        other => panic!("expected a self-check failure about {words}, got {other:?}"),
    };
    let other_id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/other").unwrap();
    let other = Template {
        kind: Kind::Leaf {
            spiffe_id: &other_id,
        },
        ..template
    };
    expect(check::check(&der, &other, &issuer), "SAN");
    let other_serial = Serial::random().unwrap();
    let other = Template {
        serial: &other_serial,
        ..template
    };
    expect(check::check(&der, &other, &issuer), "serial");
    let other = Template {
        validity: Validity {
            not_after: template.validity.not_after + 1,
            ..template.validity
        },
        ..template
    };
    expect(check::check(&der, &other, &issuer), "validity");
    let other = Template {
        key_usage: KeyUsage::DIGITAL_SIGNATURE.with(KeyUsage::KEY_ENCIPHERMENT),
        ..template
    };
    expect(check::check(&der, &other, &issuer), "key usage");
    let other_key = KeyPair::generate().unwrap();
    let other_csr = csr::parse(&plain_csr(&other_key, None)).unwrap();
    let other = Template {
        public_key: SubjectKey::of(&other_csr),
        ..template
    };
    expect(check::check(&der, &other, &issuer), "public key");

    // A template without a CRL URL does not expect that extension...
    let without_crl_url = Template {
        crl_url: None,
        ..template
    };
    expect(
        check::check(&der, &without_crl_url, &issuer),
        "unexpected extension",
    );
    let without_crl = writer::sign(&without_crl_url, &issuer).unwrap();
    check::check(&without_crl, &without_crl_url, &issuer).unwrap();
    // ...and one with it refuses a certificate that lacks it.
    expect(check::check(&without_crl, &template, &issuer), "missing");
    // A byte changed inside the signed certificate is caught (here: the SAN's path).
    let mut tampered = der;
    let at = tampered.windows(3).position(|w| w == b"web").unwrap();
    tampered[at] = b'x';
    check::check(&tampered, &template, &issuer).unwrap_err();
}

/// The leaf as rcgen's general builder writes it: the reference the writer must match byte for
/// byte (the to-be-signed part; ECDSA signatures differ per run).
fn rcgen_reference(template: &Template<'_>, csr: &VerifiedCsr, ca: &TestCa) -> Vec<u8> {
    let Kind::Leaf { spiffe_id } = template.kind else {
        panic!("not a leaf template");
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(template.serial.as_bytes()));
    params.not_before = OffsetDateTime::from_unix_timestamp(template.validity.not_before).unwrap();
    params.not_after = OffsetDateTime::from_unix_timestamp(template.validity.not_after).unwrap();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.as_str().try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = if csr.key_kind.is_rsa() {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    if let Some(url) = &ca.crl_url {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![url.clone()],
        }];
    }
    if let Some(url) = &ca.ocsp_url {
        // AuthorityInfoAccessSyntax with one id-ad-ocsp accessLocation, spelled out here so the
        // reference does not share the writer's code.
        let mut location = vec![0x86, url.len() as u8];
        location.extend_from_slice(url.as_bytes());
        let mut description = vec![0x30, (10 + location.len()) as u8];
        description
            .extend_from_slice(&[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01]);
        description.extend_from_slice(&location);
        let mut access = vec![0x30, description.len() as u8];
        access.extend_from_slice(&description);
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            access,
        )];
    }
    params
        .signed_by(
            &csr_key(csr.key_kind, &csr.public_key_bits),
            &ca.intermediate,
        )
        .unwrap()
        .der()
        .to_vec()
}

/// A public key as rcgen wants one: its signature algorithm (which names the key type) and bits.
struct CsrKey<'a>(&'static rcgen::SignatureAlgorithm, &'a [u8]);

impl rcgen::PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.1
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0
    }
}

fn csr_key(kind: KeyKind, bits: &[u8]) -> CsrKey<'_> {
    let algorithm = match kind {
        KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
    };
    CsrKey(algorithm, bits)
}

fn tbs_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.tbs_certificate.as_ref().to_vec()
}

/// The outer signature algorithm is rcgen's, and the signature verifies under `signer`.
fn assert_signed_like(ours: &[u8], reference: &[u8], signer: &[u8]) {
    let (_, parsed) = X509Certificate::from_der(ours).unwrap();
    let (_, expected) = X509Certificate::from_der(reference).unwrap();
    assert_eq!(parsed.signature_algorithm, expected.signature_algorithm);
    let (_, signer) = X509Certificate::from_der(signer).unwrap();
    parsed.verify_signature(Some(signer.public_key())).unwrap();
}

const CA_ALGORITHMS: [KeyAlgorithm; 3] = [
    KeyAlgorithm::EcdsaP256,
    KeyAlgorithm::EcdsaP384,
    KeyAlgorithm::Rsa2048,
];

#[test]
fn rcgen_writes_the_same_certificate() {
    let now = OffsetDateTime::now_utc();
    let keys = workload_keys();
    for algorithm in CA_ALGORITHMS {
        let mut ca = TestCa::new(algorithm, now);
        for urls in [false, true] {
            if urls {
                ca.publish_urls();
            }
            let parts = ca.intermediate_parts();
            let issuer = ca.issuer(&parts);
            for key in &keys {
                let verified = csr::parse(&plain_csr(key, None)).unwrap();
                let spiffe_id = id();
                let serial = Serial::random().unwrap();
                let mut template = template_for(&spiffe_id, &serial, &verified, &issuer, now);
                if urls {
                    // Past 2049: GeneralizedTime.
                    template.validity.not_after = 2_600_000_000;
                }
                let ours = writer::sign(&template, &issuer).unwrap();
                let reference = rcgen_reference(&template, &verified, &ca);
                assert_eq!(
                    tbs_of(&ours),
                    tbs_of(&reference),
                    "{algorithm} {:?} urls {urls}",
                    verified.key_kind
                );
                assert_signed_like(&ours, &reference, &ca.intermediate_der);
                if template.validity.not_after < issuer.validity.not_after {
                    check::check(&ours, &template, &issuer).unwrap();
                }
            }
        }
    }
}

/// The serving certificate as rcgen wrote it before it went through the writer.
fn rcgen_serving_reference(
    dns_names: &[String],
    uri: Option<&str>,
    cert: &serving::ServingCert,
    key: &KeyPair,
    ca: &TestCa,
) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(cert.serial.as_bytes()));
    params.not_before = OffsetDateTime::from_unix_timestamp(cert.not_before).unwrap();
    params.not_after = OffsetDateTime::from_unix_timestamp(cert.not_after).unwrap();
    params.subject_alt_names = dns_names
        .iter()
        .map(|name| SanType::DnsName(name.as_str().try_into().unwrap()))
        .collect();
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
        .signed_by(key, &ca.intermediate)
        .unwrap()
        .der()
        .to_vec()
}

#[test]
fn rcgen_writes_the_same_serving_certificate() {
    let now = OffsetDateTime::now_utc();
    let dns_names = vec!["localhost".to_owned(), "ca.istio-system.svc".to_owned()];
    let keys = workload_keys();
    for algorithm in CA_ALGORITHMS {
        let mut ca = TestCa::new(algorithm, now);
        // The CA's URLs are for leaves: serving certificates never carry them.
        ca.publish_urls();
        let parts = ca.intermediate_parts();
        let issuer = ca.issuer(&parts);
        for key in &keys {
            for uri in [None, Some("spiffe://cluster.local/ca")] {
                let spki = rcgen::PublicKeyData::subject_public_key_info(key);
                let ttl = Duration::from_secs(86_400);
                let cert = serving::issue(&issuer, &dns_names, uri, &spki, ttl, now).unwrap();
                assert_eq!(cert.not_before, now.unix_timestamp() - 60);
                assert_eq!(cert.not_after, now.unix_timestamp() + 86_400);
                let reference = rcgen_serving_reference(&dns_names, uri, &cert, key, &ca);
                assert_eq!(
                    tbs_of(&cert.der),
                    tbs_of(&reference),
                    "{algorithm} {:?} {uri:?}",
                    key.algorithm()
                );
                assert_signed_like(&cert.der, &reference, &ca.intermediate_der);
            }
        }
    }
}

#[test]
fn serving_certificates_are_held_to_their_template() {
    let now = OffsetDateTime::now_utc();
    let ca = TestCa::new(KeyAlgorithm::EcdsaP256, now);
    let parts = ca.intermediate_parts();
    let issuer = ca.issuer(&parts);
    let key = KeyPair::generate().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let dns_names = vec!["localhost".to_owned(), "ca.istio-system.svc".to_owned()];
    let public_key = SubjectKey::parse(&spki).unwrap();
    let serial = Serial::random().unwrap();
    let lifetime = Lifetime::new(now, None, policy(), issuer.validity).unwrap();
    let uri = Some("spiffe://cluster.local/ca");
    let template = Template::serving(&dns_names, uri, &serial, &lifetime, public_key);
    let der = writer::sign(&template, &issuer).unwrap();
    check::check(&der, &template, &issuer).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.is_ca());

    let expect = |other: &Template<'_>, words: &str| match check::check(&der, other, &issuer) {
        Err(Error::SelfCheck(message)) => assert!(message.contains(words), "{message}"),
        other => panic!("expected a self-check failure about {words}, got {other:?}"),
    };
    let fewer = vec!["localhost".to_owned()];
    let reordered = vec!["ca.istio-system.svc".to_owned(), "localhost".to_owned()];
    for names in [&fewer, &reordered] {
        let other = Template {
            kind: Kind::Serving {
                dns_names: names,
                uri,
            },
            ..template
        };
        expect(&other, "SAN");
    }
    let other = Template {
        kind: Kind::Serving {
            dns_names: &dns_names,
            uri: None,
        },
        ..template
    };
    expect(&other, "SAN");
    // A leaf's usages are not a serving certificate's.
    let other = Template {
        extended_key_usage: ExtendedKeyUsage {
            server_auth: true,
            client_auth: true,
        },
        ..template
    };
    expect(&other, "extended key usage");

    // Names that are not IA5 are refused before anything is signed.
    let unicode = vec!["bücher.example".to_owned()];
    let other = Template {
        kind: Kind::Serving {
            dns_names: &unicode,
            uri: None,
        },
        ..template
    };
    assert_eq!(
        writer::sign(&other, &issuer).unwrap_err(),
        Error::NotIa5String("bücher.example".to_owned())
    );
    // A key outside the key policy is refused, as in a CSR.
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&ed25519);
    assert!(matches!(
        SubjectKey::parse(&spki),
        Err(Error::UnsupportedKey(_))
    ));
}

/// The intermediate rotation will make, written by the writer under the root, against the one
/// rcgen makes from `authority`'s CA parameters.
#[test]
fn rcgen_writes_the_same_intermediate() {
    let now = OffsetDateTime::now_utc();
    for algorithm in CA_ALGORITHMS {
        let ca = TestCa::new(algorithm, now);
        let root_parts = ca.root_parts();
        let root = ca.root_issuer(&root_parts);
        let next_key = CaKey::generate(algorithm).unwrap();
        let spki = next_key.spki_der();
        let public_key = SubjectKey::parse(&spki).unwrap();
        let serial = Serial::random().unwrap();
        let ttl = Duration::from_secs(365 * DAY as u64);
        let intermediate_policy = TtlPolicy {
            default_ttl: ttl,
            max_ttl: ttl,
            min_ttl: Duration::ZERO,
        };
        let lifetime = Lifetime::new(now, None, intermediate_policy, root.validity).unwrap();
        let common_name = format!("{TRUST_DOMAIN} Intermediate CA 2");
        let template =
            Template::intermediate(TRUST_DOMAIN, &common_name, &serial, &lifetime, public_key);
        let ours = writer::sign(&template, &root).unwrap();
        check::check(&ours, &template, &root).unwrap();

        let mut params = ca_params(&common_name, 0);
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before =
            OffsetDateTime::from_unix_timestamp(lifetime.validity.not_before).unwrap();
        params.not_after =
            OffsetDateTime::from_unix_timestamp(lifetime.validity.not_after).unwrap();
        params.use_authority_key_identifier_extension = true;
        let reference = params
            .signed_by(&next_key, &ca.root)
            .unwrap()
            .der()
            .to_vec();
        assert_eq!(tbs_of(&ours), tbs_of(&reference), "{algorithm}");
        assert_signed_like(&ours, &reference, &ca.root_der);

        // x509-parser reads it as the issuing CA it is meant to be.
        let (_, cert) = X509Certificate::from_der(&ours).unwrap();
        assert!(cert.is_ca());
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && usage.digital_signature());
        assert_eq!(
            cert.subject().to_string(),
            format!("O={TRUST_DOMAIN}, CN={common_name}")
        );
        // And the check refuses one that is not what the template says.
        let other_name = format!("{TRUST_DOMAIN} Intermediate CA 3");
        let other = Template {
            kind: Kind::Intermediate {
                organization: TRUST_DOMAIN,
                common_name: &other_name,
            },
            ..template
        };
        match check::check(&ours, &other, &root) {
            Err(Error::SelfCheck(message)) => assert!(message.contains("subject"), "{message}"),
            other => panic!("expected a subject mismatch, got {other:?}"),
        }
        // A leaf issued by the new intermediate verifies under it.
        let next_der = ours;
        let next_parts = ca_parts(&next_der);
        let next = Issuer {
            subject_der: &next_parts.subject_der,
            key_identifier: &next_parts.key_identifier,
            validity: next_parts.validity,
            key: &next_key,
            ..root
        };
        let leaf_key = KeyPair::generate().unwrap();
        let verified = csr::parse(&plain_csr(&leaf_key, None)).unwrap();
        let leaf = issue(&next, policy(), &verified, &id(), None, now).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf.der).unwrap();
        let (_, next_cert) = X509Certificate::from_der(&next_der).unwrap();
        leaf.verify_signature(Some(next_cert.public_key())).unwrap();
    }
}
