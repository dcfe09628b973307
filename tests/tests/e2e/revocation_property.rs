//! Property test (Vault CVE-2021-29653 class): over random sequences of issue / revoke / time
//! passing, every revoked and unexpired certificate is on the current CRL and `revoked` in OCSP;
//! nothing unrevoked is ever listed; never-issued serials are `unknown`.

use std::collections::BTreeSet;

use ca_client::KeyType;
use ca_server::ca::{Api, Request};
use ca_server::revocation::Reason;
use ca_server::spiffe::{SpiffeId, TrustDomain};
use ca_tests::ocsp::{Answer, answer, request};
use ca_tests::{Backend, TestServer};
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Clone)]
enum Op {
    Issue { ttl_minutes: u64 },
    Revoke { pick: usize, reason: usize },
    Advance { minutes: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..180).prop_map(|ttl_minutes| Op::Issue { ttl_minutes }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(pick, reason)| Op::Revoke { pick, reason }),
        2 => (0i64..240).prop_map(|minutes| Op::Advance { minutes }),
    ]
}

struct Cert {
    serial: String,
    not_after: i64,
    revoked: bool,
}

fn crl_serials(der: &[u8]) -> BTreeSet<String> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

async fn check_sequence(ops: Vec<Op>) {
    let server = TestServer::start(Backend::Sqlite).await;
    let ca = &server.server.ca;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let authority = ca.authorities().get(&td).unwrap().clone();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/prop/sa/test").unwrap();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let mut now = OffsetDateTime::now_utc();
    let mut certs: Vec<Cert> = Vec::new();
    for op in ops {
        match op {
            Op::Issue { ttl_minutes } => {
                let enrolled = ca
                    .enroll(
                        &Request {
                            csr: csr.csr_der.as_slice(),
                            spiffe_id: &id,
                            ttl: Some(std::time::Duration::from_secs(ttl_minutes * 60)),
                            requested_by: "proptest",
                            request_id: "p",
                            api: Api::Admin,
                            authenticated_by: "admin_token",
                            impersonated: false,
                        },
                        now,
                    )
                    .await
                    .unwrap();
                certs.push(Cert {
                    serial: enrolled.cert.serial.to_hex(),
                    not_after: enrolled.cert.not_after,
                    revoked: false,
                });
            }
            Op::Revoke { pick, reason } if !certs.is_empty() => {
                let index = pick % certs.len();
                let reason = Reason::ALL[reason % Reason::ALL.len()];
                ca.revoke_serial(&certs[index].serial, reason, now)
                    .await
                    .unwrap();
                certs[index].revoked = true;
            }
            Op::Revoke { .. } => {}
            Op::Advance { minutes } => now += Duration::minutes(minutes),
        }
        // The invariant, after every step.
        let crl = ca.crl(&td, now).await.unwrap();
        let listed = crl_serials(&crl.der);
        for cert in &certs {
            let must_list = cert.revoked && cert.not_after > now.unix_timestamp();
            if must_list {
                assert!(
                    listed.contains(&cert.serial),
                    "revoked+unexpired {} missing from CRL",
                    cert.serial
                );
            }
            if !cert.revoked {
                assert!(
                    !listed.contains(&cert.serial),
                    "unrevoked {} on the CRL",
                    cert.serial
                );
            }
            let response = ca
                .ocsp_answer(
                    "cluster.local",
                    &request(&authority.intermediate_der, &cert.serial),
                    now,
                )
                .await
                .unwrap();
            let expected = if cert.revoked {
                Answer::Revoked
            } else {
                Answer::Good
            };
            assert_eq!(answer(&response), expected, "OCSP for {}", cert.serial);
        }
    }
    let never = format!("7f{}", ca_tests::random_hex(15));
    let response = ca
        .ocsp_answer(
            "cluster.local",
            &request(&authority.intermediate_der, &never),
            now,
        )
        .await
        .unwrap();
    assert_eq!(answer(&response), Answer::Unknown);
    server.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn revoked_and_unexpired_is_always_on_the_crl_and_revoked_in_ocsp(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(check_sequence(ops));
    }
}

/// Expired entries leave the CRL at the next rebuild; revoked-unexpired ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_dropped_at_rebuild() {
    let server = TestServer::start(Backend::Sqlite).await;
    let ca = &server.server.ca;
    let td = TrustDomain::parse("cluster.local").unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/prop/sa/test").unwrap();
    let csr = ca_client::csr::generate(KeyType::EcdsaP256, None).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut serials = Vec::new();
    for hours in [1u64, 20] {
        let enrolled = ca
            .enroll(
                &Request {
                    csr: csr.csr_der.as_slice(),
                    spiffe_id: &id,
                    ttl: Some(std::time::Duration::from_secs(hours * 3600)),
                    requested_by: "t",
                    request_id: "t",
                    api: Api::Admin,
                    authenticated_by: "admin_token",
                    impersonated: false,
                },
                now,
            )
            .await
            .unwrap();
        ca.revoke_serial(&enrolled.cert.serial.to_hex(), Reason::Superseded, now)
            .await
            .unwrap();
        serials.push(enrolled.cert.serial.to_hex());
    }
    let listed = crl_serials(&ca.crl(&td, now).await.unwrap().der);
    assert!(listed.contains(&serials[0]) && listed.contains(&serials[1]));
    // 13 hours later (past the CRL's half-life): the 1-hour certificate has expired.
    let later = now + Duration::hours(13);
    let crl = ca.crl(&td, later).await.unwrap();
    let listed = crl_serials(&crl.der);
    assert!(!listed.contains(&serials[0]), "expired entry dropped");
    assert!(listed.contains(&serials[1]), "unexpired entry kept");
    server.stop().await;
}
