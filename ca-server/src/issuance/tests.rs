//! Engine tests with a real authority and rcgen-made CSRs; no store, fixed clocks.

use std::time::Duration;

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::{Authority, create_generation, open_generation};
use crate::config::Config;
use crate::issuance::{Error, TtlPolicy, csr, issue};
use crate::keys::Kek;
use crate::spiffe::SpiffeId;

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

fn authority_at(created: OffsetDateTime) -> Authority {
    let config = Config::embedded_default();
    let kek = Kek::from_bytes([1; 32]);
    let record = create_generation(&config.trust_domains[0], &kek, 1, created).unwrap();
    open_generation(&record, &kek).unwrap()
}

fn policy() -> TtlPolicy {
    TtlPolicy {
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(86_400),
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

/// A one-hour template for `csr` from `now`, with the given names.
fn template_for<'a>(
    spiffe_id: &'a SpiffeId,
    serial: &'a crate::serial::Serial,
    csr: &crate::issuance::VerifiedCsr,
    now: OffsetDateTime,
) -> crate::issuance::profile::Template<'a> {
    crate::issuance::profile::Template {
        spiffe_id,
        serial,
        not_before: now.unix_timestamp() - 60,
        not_after: now.unix_timestamp() + 3600,
        rsa_key: csr.key_kind.is_rsa(),
    }
}

/// Gives `authority` a CRL and an OCSP URL (their extensions are then in every leaf).
fn publish_urls(authority: &mut Authority) {
    authority.crl_url = Some("https://ca.example/v1/crl/cluster.local".to_owned());
    authority.ocsp_url = Some("https://ca.example/v1/ocsp/cluster.local".to_owned());
}

#[test]
fn not_after_never_passes_the_intermediate() {
    let now = OffsetDateTime::now_utc();
    // The intermediate (1y) was made long ago: 30 minutes of it are left.
    let created = now - time::Duration::days(365) + time::Duration::minutes(30);
    let authority = authority_at(created);
    let key = KeyPair::generate().unwrap();
    let verified = csr::parse(&plain_csr(&key, None)).unwrap();
    let cert = issue(
        &authority,
        policy(),
        &verified,
        &id(),
        Some(Duration::from_secs(7200)),
        now,
    )
    .unwrap();
    assert_eq!(cert.not_after, authority.intermediate_not_after);
    assert!(cert.capped_by_issuer);
    // Once the intermediate has expired nothing is issued.
    let later = OffsetDateTime::from_unix_timestamp(authority.intermediate_not_after).unwrap();
    assert_eq!(
        issue(&authority, policy(), &verified, &id(), None, later).unwrap_err(),
        Error::IssuerNotValid
    );
}

#[test]
fn ttl_rules() {
    let now = OffsetDateTime::now_utc();
    let authority = authority_at(now);
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
            &authority,
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
        assert_eq!(cert.not_before, now.unix_timestamp() - 60);
        assert_eq!(cert.ttl_clamped, clamped);
    }
}

#[test]
fn csr_identity_rules() {
    let now = OffsetDateTime::now_utc();
    let authority = authority_at(now);
    let key = KeyPair::generate().unwrap();

    let mut dns = CertificateParams::new(vec!["web.default.svc".to_owned()]).unwrap();
    dns.distinguished_name = DistinguishedName::new();
    let mut cn = CertificateParams::default();
    cn.distinguished_name = DistinguishedName::new();
    cn.distinguished_name.push(DnType::CommonName, "admin");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
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
        ("unknown extension", custom, Ok(())),
    ];
    for (name, params, expected) in cases {
        let verified = csr::parse(&csr_with(params, &key)).unwrap();
        let result = issue(&authority, policy(), &verified, &id(), None, now).map(|_| ());
        match (result, expected) {
            (Ok(()), Ok(())) => {}
            (Err(Error::CsrClaimsOtherIdentity(_)), Err(Error::CsrClaimsOtherIdentity(_))) => {}
            (Err(got), Err(want)) => assert_eq!(got, want, "{name}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
    let other_td = SpiffeId::parse("spiffe://eu.cluster.local/ns/default/sa/web").unwrap();
    let verified = csr::parse(&plain_csr(&key, None)).unwrap();
    assert!(matches!(
        issue(&authority, policy(), &verified, &other_td, None, now),
        Err(Error::WrongTrustDomain(_))
    ));
}

/// Two very different CSRs (names, subject, extensions) over keys of one type produce
/// certificates identical in everything but serial, validity, key and signature: the CSR
/// contributes its public key and nothing else (CFSSL provenance review, security.md #26).
#[test]
fn only_the_public_key_comes_from_the_csr() {
    let now = OffsetDateTime::now_utc();
    let authority = authority_at(now);
    let plain_key = KeyPair::generate().unwrap();
    let busy_key = KeyPair::generate().unwrap();
    let plain = csr::parse(&plain_csr(&plain_key, None)).unwrap();
    let mut busy = CertificateParams::default();
    busy.distinguished_name = DistinguishedName::new();
    busy.distinguished_name
        .push(DnType::OrganizationName, "Evil Corp");
    busy.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    busy.custom_extensions = vec![CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![5, 0])];
    let busy = csr::parse(&csr_with(busy, &busy_key)).unwrap();
    let a = issue(&authority, policy(), &plain, &id(), None, now).unwrap();
    let b = issue(&authority, policy(), &busy, &id(), None, now).unwrap();
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
    use crate::issuance::{check, profile};
    use crate::serial::Serial;

    let now = OffsetDateTime::now_utc();
    let mut authority = authority_at(now);
    publish_urls(&mut authority);
    let key = KeyPair::generate().unwrap();
    let verified = csr::parse(&plain_csr(&key, None)).unwrap();
    let spiffe_id = id();
    let serial = Serial::random().unwrap();
    let template = template_for(&spiffe_id, &serial, &verified, now);
    let der = profile::sign(&template, &verified, &authority).unwrap();
    check::check(&der, &template, &verified, &authority).unwrap();

    let expect = |result: Result<(), Error>, words: &str| match result {
        Err(Error::SelfCheck(message)) => assert!(message.contains(words), "{message}"),
        other => panic!("expected a self-check failure about {words}, got {other:?}"),
    };
    let other_id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/other").unwrap();
    let other = profile::Template {
        spiffe_id: &other_id,
        ..template
    };
    expect(check::check(&der, &other, &verified, &authority), "SAN");
    let other_serial = Serial::random().unwrap();
    let other = profile::Template {
        serial: &other_serial,
        ..template
    };
    expect(check::check(&der, &other, &verified, &authority), "serial");
    let other = profile::Template {
        not_after: template.not_after + 1,
        ..template
    };
    expect(
        check::check(&der, &other, &verified, &authority),
        "validity",
    );
    let other = profile::Template {
        rsa_key: true,
        ..template
    };
    expect(
        check::check(&der, &other, &verified, &authority),
        "key usage",
    );
    let other_key = KeyPair::generate().unwrap();
    let other_csr = csr::parse(&plain_csr(&other_key, None)).unwrap();
    expect(
        check::check(&der, &template, &other_csr, &authority),
        "public key",
    );

    // An authority without a CRL URL does not expect that extension...
    let crl_url = authority.crl_url.take();
    expect(
        check::check(&der, &template, &verified, &authority),
        "unexpected extension",
    );
    let without_crl = profile::sign(&template, &verified, &authority).unwrap();
    check::check(&without_crl, &template, &verified, &authority).unwrap();
    // ...and one with it refuses a certificate that lacks it.
    authority.crl_url = crl_url;
    expect(
        check::check(&without_crl, &template, &verified, &authority),
        "missing",
    );
    // A byte changed inside the signed certificate is caught (here: the SAN's path).
    let mut tampered = der;
    let at = tampered.windows(3).position(|w| w == b"web").unwrap();
    tampered[at] = b'x';
    check::check(&tampered, &template, &verified, &authority).unwrap_err();
}

/// The leaf as rcgen's general builder writes it: the reference the direct DER writer in
/// `profile` must match byte for byte (the to-be-signed part; ECDSA signatures differ per run).
fn rcgen_reference(
    template: &crate::issuance::profile::Template<'_>,
    csr: &crate::issuance::VerifiedCsr,
    authority: &Authority,
) -> Vec<u8> {
    use crate::issuance::KeyKind;
    use rcgen::{ExtendedKeyUsagePurpose, KeyIdMethod, KeyUsagePurpose, SerialNumber};

    struct CsrKey<'a>(&'static rcgen::SignatureAlgorithm, &'a [u8]);
    impl rcgen::PublicKeyData for CsrKey<'_> {
        fn der_bytes(&self) -> &[u8] {
            self.1
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            self.0
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(template.serial.as_bytes()));
    params.not_before = OffsetDateTime::from_unix_timestamp(template.not_before).unwrap();
    params.not_after = OffsetDateTime::from_unix_timestamp(template.not_after).unwrap();
    params.subject_alt_names = vec![SanType::URI(
        template.spiffe_id.as_str().try_into().unwrap(),
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = if template.rsa_key {
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
    if let Some(url) = &authority.crl_url {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![url.clone()],
        }];
    }
    if let Some(url) = &authority.ocsp_url {
        // AuthorityInfoAccessSyntax with one id-ad-ocsp accessLocation.
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
    let algorithm = match csr.key_kind {
        KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
    };
    params
        .signed_by(&CsrKey(algorithm, &csr.public_key_bits), &authority.issuer)
        .unwrap()
        .der()
        .to_vec()
}

fn tbs_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.tbs_certificate.as_ref().to_vec()
}

#[test]
fn rcgen_writes_the_same_certificate() {
    use crate::issuance::{check, profile};
    use crate::serial::Serial;

    let now = OffsetDateTime::now_utc();
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
    let keys = [
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        rsa_key,
    ];
    let mut config = Config::embedded_default();
    for algorithm in ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] {
        config.trust_domains[0].key_algorithm =
            crate::keys::KeyAlgorithm::parse(algorithm).unwrap();
        let kek = Kek::from_bytes([1; 32]);
        let record = create_generation(&config.trust_domains[0], &kek, 1, now).unwrap();
        let mut authority = open_generation(&record, &kek).unwrap();
        for urls in [false, true] {
            if urls {
                publish_urls(&mut authority);
            }
            for key in &keys {
                let verified = csr::parse(&plain_csr(key, None)).unwrap();
                let spiffe_id = id();
                let serial = Serial::random().unwrap();
                let mut template = template_for(&spiffe_id, &serial, &verified, now);
                if urls {
                    // Past 2049: GeneralizedTime.
                    template.not_after = 2_600_000_000;
                }
                let ours = profile::sign(&template, &verified, &authority).unwrap();
                let reference = rcgen_reference(&template, &verified, &authority);
                assert_eq!(
                    tbs_of(&ours),
                    tbs_of(&reference),
                    "{algorithm} {:?} urls {urls}",
                    verified.key_kind
                );
                // The outer signature algorithm is rcgen's, and the signature verifies under
                // the intermediate's key.
                let (_, parsed) = X509Certificate::from_der(&ours).unwrap();
                let (_, expected) = X509Certificate::from_der(&reference).unwrap();
                assert_eq!(parsed.signature_algorithm, expected.signature_algorithm);
                let (_, intermediate) =
                    X509Certificate::from_der(&record.intermediate_cert).unwrap();
                parsed
                    .verify_signature(Some(intermediate.public_key()))
                    .unwrap();
                if template.not_after < authority.intermediate_not_after {
                    check::check(&ours, &template, &verified, &authority).unwrap();
                }
            }
        }
    }
}
