//! OCSP hardening (security.md H7, G5, G7): every member of each request family outside the
//! responder's profile is refused over real HTTP; nonces follow RFC 8954 and are echoed
//! non-critical; nonce-less answers are signed once and reused (identical bytes) until the
//! certificate's status changes or half their validity passes; fresh signatures are budgeted.

use ca_tests::ocsp::{
    Answer, NONCE, Parsed, SHA1, SHA256, cert_id, encode, nonce, parse, raw_extension, unsigned,
};
use ca_tests::{Backend, TestServer};
use der::Encode;
use der::asn1::{ObjectIdentifier, OctetString};
use x509_ocsp::OcspRequest;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const MALFORMED: u8 = 1;
const UNAUTHORIZED: u8 = 6;

async fn issue(server: &TestServer) -> (String, Vec<u8>) {
    let csr = ca_client::csr::generate(ca_client::KeyType::EcdsaP256, Some(WEB)).unwrap();
    let issued = server
        .admin_client()
        .issue(&csr.csr_pem, WEB, None)
        .await
        .unwrap();
    let blocks = pem::parse_many(&issued.chain_pem).unwrap();
    (issued.serial, blocks[1].contents().to_vec())
}

async fn post(server: &TestServer, body: Vec<u8>) -> Vec<u8> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/ocsp/cluster.local", server.http_url()))
        .header("content-type", "application/ocsp-request")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

fn with_extensions(
    mut request: OcspRequest,
    extensions: Vec<x509_cert::ext::Extension>,
) -> Vec<u8> {
    request.tbs_request.request_extensions = Some(extensions);
    encode(&request)
}

/// A DER TLV with a short or long definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    let bytes = u16::try_from(len).unwrap().to_be_bytes();
    if len < 0x80 {
        out.push(bytes[1]);
    } else if len < 0x100 {
        out.extend([0x81, bytes[1]]);
    } else {
        out.extend([0x82, bytes[0], bytes[1]]);
    }
    out.extend(content);
    out
}

/// Every family member outside the profile is refused with the status the module docs of
/// `revocation::ocsp` give; the members inside it are answered, and nothing requester-chosen
/// but the CertID and an accepted nonce comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_request_families() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (serial, issuer) = issue(&server).await;
    let id = || cert_id(&issuer, &serial, SHA1);
    let mut refused: Vec<(&str, Vec<u8>, u8)> = Vec::new();

    // Number of CertIDs: 0, 2..N (G5: 1,000 does not even fit the size cap).
    refused.push(("no CertID", encode(&unsigned(vec![])), MALFORMED));
    for n in [2, 3, 16, 200] {
        refused.push((
            "several CertIDs",
            encode(&unsigned(vec![id(); n])),
            MALFORMED,
        ));
    }
    // Hash algorithms we do not know (G7): SHA-224, SHA-384, SHA-512, MD5, a private OID.
    for oid in [
        "2.16.840.1.101.3.4.2.4",
        "2.16.840.1.101.3.4.2.2",
        "2.16.840.1.101.3.4.2.3",
        "1.2.840.113549.2.5",
        "1.3.6.1.4.1.99999.1",
    ] {
        let mut c = cert_id(&issuer, &serial, SHA256);
        c.hash_algorithm.oid = ObjectIdentifier::new_unwrap(oid);
        refused.push(("unknown hash", encode(&unsigned(vec![c])), UNAUTHORIZED));
    }
    // Known hashes with parameters that are neither absent nor NULL.
    for hash in [SHA1, SHA256] {
        for parameters in [
            der::Any::new(der::Tag::OctetString, Vec::<u8>::new()).unwrap(),
            der::Any::new(der::Tag::Integer, vec![0u8]).unwrap(),
            der::Any::new(der::Tag::Sequence, Vec::<u8>::new()).unwrap(),
            der::Any::new(der::Tag::Null, vec![0u8]).unwrap(),
        ] {
            let mut c = cert_id(&issuer, &serial, hash);
            c.hash_algorithm.parameters = Some(parameters);
            refused.push(("hash parameters", encode(&unsigned(vec![c])), MALFORMED));
        }
    }
    // Hashes not the algorithm's length.
    let mut c = id();
    c.issuer_name_hash = OctetString::new(&c.issuer_name_hash.as_bytes()[..19]).unwrap();
    refused.push(("short name hash", encode(&unsigned(vec![c])), MALFORMED));
    let mut c = id();
    let mut long = c.issuer_key_hash.as_bytes().to_vec();
    long.push(0);
    c.issuer_key_hash = OctetString::new(long).unwrap();
    refused.push(("long key hash", encode(&unsigned(vec![c])), MALFORMED));
    // SHA-256-sized hashes under SHA-1.
    let mut c = cert_id(&issuer, &serial, SHA256);
    c.hash_algorithm.oid = SHA1;
    refused.push((
        "hash length of another algorithm",
        encode(&unsigned(vec![c])),
        MALFORMED,
    ));
    // Another issuer's hashes.
    let mut c = id();
    c.issuer_key_hash = OctetString::new([7u8; 20]).unwrap();
    refused.push(("another issuer", encode(&unsigned(vec![c])), UNAUTHORIZED));
    // A negative serial (RFC 5280 serials are positive; stripped of its sign it would alias a
    // positive one): our serial's bytes with the sign bit set, in a CertID spelled by hand.
    let mut negative = hex::decode(&serial).unwrap();
    negative[0] |= 0x80;
    let c = id();
    let cert_id_der = tlv(
        0x30,
        &[
            c.hash_algorithm.to_der().unwrap(),
            c.issuer_name_hash.to_der().unwrap(),
            c.issuer_key_hash.to_der().unwrap(),
            tlv(0x02, &negative),
        ]
        .concat(),
    );
    let request = tlv(0x30, &tlv(0x30, &tlv(0x30, &tlv(0x30, &cert_id_der))));
    refused.push(("negative serial", request, MALFORMED));
    // Version v2 (only v1 exists).
    let request_list = vec![x509_ocsp::Request {
        req_cert: id(),
        single_request_extensions: None,
    }]
    .to_der()
    .unwrap();
    let tbs = tlv(
        0x30,
        &[&[0xa0, 0x03, 0x02, 0x01, 0x01][..], &request_list].concat(),
    );
    refused.push(("version 2", tlv(0x30, &tbs), MALFORMED));
    // Signed requests (RFC 5019 2.1.2).
    let mut signed = unsigned(vec![id()]);
    signed.optional_signature = Some(x509_ocsp::Signature {
        signature_algorithm: spki::AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: der::asn1::BitString::from_bytes(&[0x30, 0x00]).unwrap(),
        certs: None,
    });
    refused.push(("signed", encode(&signed), MALFORMED));
    // Nonce lengths 0 and 33..128 and beyond (RFC 8954 2.1).
    for len in [0usize, 33, 64, 128, 129, 1000] {
        for critical in [false, true] {
            refused.push((
                "nonce length",
                with_extensions(
                    unsigned(vec![id()]),
                    vec![nonce(&vec![0x5a; len], critical)],
                ),
                MALFORMED,
            ));
        }
    }
    // A nonce that is not exactly one OCTET STRING, or given twice.
    for value in [
        vec![0x5a; 16],
        [&[0x04, 0x10][..], &[0x5a; 16], &[0x00]].concat(),
        [&[0x02, 0x10][..], &[0x5a; 16]].concat(),
    ] {
        refused.push((
            "nonce encoding",
            with_extensions(
                unsigned(vec![id()]),
                vec![raw_extension(NONCE, false, &value)],
            ),
            MALFORMED,
        ));
    }
    refused.push((
        "nonce twice",
        with_extensions(
            unsigned(vec![id()]),
            vec![nonce(&[1; 32], false), nonce(&[2; 32], false)],
        ),
        MALFORMED,
    ));
    // Unknown critical extensions, an empty list, one extension twice.
    let unknown = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.2");
    refused.push((
        "unknown critical request extension",
        with_extensions(
            unsigned(vec![id()]),
            vec![raw_extension(unknown, true, &[0x05, 0x00])],
        ),
        MALFORMED,
    ));
    refused.push((
        "empty extensions",
        with_extensions(unsigned(vec![id()]), vec![]),
        MALFORMED,
    ));
    refused.push((
        "extension twice",
        with_extensions(
            unsigned(vec![id()]),
            vec![
                raw_extension(unknown, false, &[0x05, 0x00]),
                raw_extension(unknown, false, &[0x05, 0x00]),
            ],
        ),
        MALFORMED,
    ));
    let mut single = unsigned(vec![id()]);
    single.tbs_request.request_list[0].single_request_extensions =
        Some(vec![raw_extension(unknown, true, &[0x05, 0x00])]);
    refused.push((
        "unknown critical single extension",
        encode(&single),
        MALFORMED,
    ));
    // A nonce among the single-request extensions is not a nonce; critical, it is refused.
    let mut single = unsigned(vec![id()]);
    single.tbs_request.request_list[0].single_request_extensions =
        Some(vec![nonce(&[3; 32], true)]);
    refused.push((
        "critical nonce in singleRequestExtensions",
        encode(&single),
        MALFORMED,
    ));

    for (family, request, expected) in refused {
        let response = post(&server, request).await;
        assert_eq!(
            response,
            [0x30, 0x03, 0x0a, 0x01, expected],
            "{family}: {:?}",
            parse(&response)
        );
    }
    // Another trust domain's path: not a CA we serve.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/ocsp/other.example", server.http_url()))
        .body(encode(&unsigned(vec![id()])))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(response.as_ref(), [0x30, 0x03, 0x0a, 0x01, UNAUTHORIZED]);

    // Answered: absent or NULL parameters, SHA-1 or SHA-256; the CertID comes back as sent.
    for hash in [SHA1, SHA256] {
        for parameters in [None, Some(der::Any::from(der::asn1::Null))] {
            let mut c = cert_id(&issuer, &serial, hash);
            c.hash_algorithm.parameters = parameters;
            let sent = c.to_der().unwrap();
            let parsed = parse(&post(&server, encode(&unsigned(vec![c]))).await);
            assert_eq!(parsed.answers, [Answer::Good]);
            assert_eq!(parsed.cert_ids, [sent]);
            assert!(parsed.extensions.is_empty());
        }
    }
    // requestorName, unknown non-critical extensions (request and single): ignored, not echoed.
    let mut named = unsigned(vec![id()]);
    named.tbs_request.requestor_name = Some(x509_cert::ext::pkix::name::GeneralName::DnsName(
        der::asn1::Ia5String::new("requester.example").unwrap(),
    ));
    named.tbs_request.request_list[0].single_request_extensions =
        Some(vec![raw_extension(unknown, false, &[0x05, 0x00])]);
    named.tbs_request.request_extensions = Some(vec![
        raw_extension(unknown, false, &[0x04, 0x02, 0xca, 0xfe]),
        nonce(&[9; 32], false),
    ]);
    let parsed = parse(&post(&server, encode(&named)).await);
    assert_eq!(parsed.answers, [Answer::Good]);
    assert_eq!(parsed.extensions.len(), 1, "only the nonce: {parsed:?}");
    assert_eq!(parsed.nonce(), Some((vec![9; 32], false)));

    // Nonce lengths: 1..15 answered without a nonce (the cached answer), 16..32 echoed
    // non-critical whatever the request said.
    let plain = post(&server, encode(&unsigned(vec![id()]))).await;
    for len in [1usize, 8, 15] {
        for critical in [false, true] {
            let response = post(
                &server,
                with_extensions(
                    unsigned(vec![id()]),
                    vec![nonce(&vec![0x11; len], critical)],
                ),
            )
            .await;
            assert_eq!(
                response, plain,
                "nonce of {len} octets answered as without one"
            );
        }
    }
    for len in [16usize, 20, 31, 32] {
        for critical in [false, true] {
            let value: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xa5).collect();
            let parsed = parse(
                &post(
                    &server,
                    with_extensions(unsigned(vec![id()]), vec![nonce(&value, critical)]),
                )
                .await,
            );
            assert_eq!(parsed.answers, [Answer::Good]);
            assert_eq!(parsed.nonce(), Some((value, false)), "len {len}");
        }
    }
    server.stop().await;
}

/// Nonce-less answers are signed once: the same bytes (producedAt, signature) for repeated
/// requests over POST and GET, until a revocation, after which the answer is `revoked` (and
/// cached again); with a nonce, every answer is a fresh signature. openssl agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonceless_answers_are_cached_until_revocation() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (serial, issuer) = issue(&server).await;
    let sha1 = encode(&unsigned(vec![cert_id(&issuer, &serial, SHA1)]));
    let sha256 = encode(&unsigned(vec![cert_id(&issuer, &serial, SHA256)]));

    let first = post(&server, sha1.clone()).await;
    assert_eq!(parse(&first).answers, [Answer::Good]);
    // ECDSA signatures are randomised: identical bytes mean no second signature.
    for _ in 0..5 {
        assert_eq!(post(&server, sha1.clone()).await, first);
    }
    use base64::Engine;
    let get = reqwest::get(format!(
        "{}/v1/ocsp/cluster.local/{}",
        server.http_url(),
        base64::engine::general_purpose::STANDARD
            .encode(&sha1)
            .replace('/', "%2F")
            .replace('+', "%2B")
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert_eq!(get.as_ref(), first.as_slice(), "GET shares the cache");
    // Each CertID spelling has its own cached answer (the CertID is echoed as sent).
    let other = post(&server, sha256.clone()).await;
    assert_ne!(other, first);
    assert_eq!(post(&server, sha256.clone()).await, other);

    // With a nonce: a fresh signature each time.
    let nonced = |value: u8| {
        with_extensions(
            unsigned(vec![cert_id(&issuer, &serial, SHA1)]),
            vec![nonce(&[value; 32], false)],
        )
    };
    let a = parse(&post(&server, nonced(1)).await);
    let b = parse(&post(&server, nonced(1)).await);
    assert_ne!(a.signature, b.signature);
    assert_eq!(a.nonce(), Some((vec![1; 32], false)));

    // openssl without a nonce gets the cached bytes too.
    let dir = server.dir.path().to_owned();
    let issuer_pem = dir.join("issuer.pem");
    std::fs::write(
        &issuer_pem,
        pem::encode(&pem::Pem::new("CERTIFICATE", issuer.clone())),
    )
    .unwrap();
    let respout = dir.join("resp.der");
    let (ok, out, err) = ca_tests::run(
        std::process::Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-noverify", "-issuer"])
            .arg(&issuer_pem)
            .args(["-serial", &format!("0x{serial}"), "-url"])
            .arg(format!("{}/v1/ocsp/cluster.local", server.http_url()))
            .arg("-respout")
            .arg(&respout),
    );
    assert!(ok && format!("{out}{err}").contains(": good"), "{out}{err}");
    assert_eq!(std::fs::read(&respout).unwrap(), first);

    // Revoked: the next answer says so at once, and is then cached in its turn.
    server
        .admin_client()
        .revoke(&serial, "keyCompromise")
        .await
        .unwrap();
    let revoked = post(&server, sha1.clone()).await;
    assert_eq!(parse(&revoked).answers, [Answer::Revoked]);
    assert_eq!(post(&server, sha1.clone()).await, revoked);
    let revoked256 = post(&server, sha256.clone()).await;
    assert_eq!(parse(&revoked256).answers, [Answer::Revoked]);
    server.stop().await;
}

/// Reuse ends at half the validity; fresh signatures requesters can cause (nonces, serials we
/// never issued) are budgeted per second: past the budget a nonce is answered without it (the
/// cached answer) and an unknown serial gets `tryLater`; the next second has a new budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_signatures_are_budgeted_and_reuse_ends_at_half_life() {
    use ca_server::revocation::ocsp::{FRESH_SIGNATURES_PER_SECOND, Refusal, VALIDITY_SECONDS};
    let server = TestServer::start(Backend::Sqlite).await;
    let (serial, issuer) = issue(&server).await;
    let ca = server.server.ca.clone();
    let now = time::OffsetDateTime::now_utc();
    let answer = |request: Vec<u8>, at: time::OffsetDateTime| {
        let ca = ca.clone();
        async move { ca.ocsp_answer("cluster.local", &request, at).await }
    };
    let plain = encode(&unsigned(vec![cert_id(&issuer, &serial, SHA1)]));
    let nonced = |i: u32| {
        with_extensions(
            unsigned(vec![cert_id(&issuer, &serial, SHA1)]),
            vec![nonce(&[&i.to_be_bytes()[..], &[0u8; 28]].concat(), false)],
        )
    };
    let unknown = |i: u32| {
        encode(&unsigned(vec![cert_id(
            &issuer,
            &format!("7f{:030x}", i),
            SHA1,
        )]))
    };

    let cached = answer(plain.clone(), now).await.unwrap();
    for i in 0..FRESH_SIGNATURES_PER_SECOND {
        let parsed: Parsed = parse(&answer(nonced(i), now).await.unwrap());
        assert!(parsed.nonce().is_some(), "signature {i} within the budget");
    }
    // Spent: the nonce is not echoed (the cached answer), an unknown serial must wait.
    assert_eq!(answer(nonced(1000), now).await.unwrap(), cached);
    assert_eq!(answer(unknown(1), now).await, Err(Refusal::TryLater));
    // The next second: a new budget.
    let next = now + time::Duration::seconds(1);
    let parsed = parse(&answer(nonced(1001), next).await.unwrap());
    assert!(parsed.nonce().is_some());
    assert_eq!(
        parse(&answer(unknown(2), next).await.unwrap()).answers,
        [Answer::Unknown]
    );
    // Unknown serials are never cached: each costs a fresh signature.
    let u1 = answer(unknown(3), next).await.unwrap();
    let u2 = answer(unknown(3), next).await.unwrap();
    assert_ne!(parse(&u1).signature, parse(&u2).signature);

    // Reused until half the validity, then signed again.
    let half = VALIDITY_SECONDS / 2;
    assert_eq!(
        answer(plain.clone(), now + time::Duration::seconds(half - 1))
            .await
            .unwrap(),
        cached
    );
    let renewed = answer(plain.clone(), now + time::Duration::seconds(half))
        .await
        .unwrap();
    assert_ne!(renewed, cached);
    assert_eq!(parse(&renewed).answers, [Answer::Good]);
    assert_eq!(
        answer(plain.clone(), now + time::Duration::seconds(half + 10))
            .await
            .unwrap(),
        renewed
    );
    // The clock going back before a cached thisUpdate does not serve it.
    assert_ne!(answer(plain, now).await.unwrap(), renewed);
    server.stop().await;
}
