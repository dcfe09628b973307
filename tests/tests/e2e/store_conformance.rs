//! The store conformance suite: the same verbs and constraints on Postgres and SQLite.

use ca_server::audit::AuditEvent;
use ca_server::authority::SealedGeneration;
use ca_server::store::{CertificateRecord, Error, PendingKey, Store, StoreOptions};
use ca_tests::{Backend, both_backends, fresh_database};

async fn open(backend: Backend, dir: &std::path::Path) -> (Store, String) {
    let url = fresh_database(backend, dir).await;
    (Store::open(&StoreOptions::new(&url)).await.unwrap(), url)
}

fn certificate(issuer: &str, serial: &str) -> CertificateRecord {
    CertificateRecord {
        issuer_key_id: issuer.to_owned(),
        serial: serial.to_owned(),
        trust_domain: "td".to_owned(),
        spiffe_id: "spiffe://td/ns/a/sa/b".to_owned(),
        not_before: 1_000,
        not_after: 2_000,
        spki_sha256: "00".repeat(32),
        der: vec![1, 2, 3],
        requested_by: "test".to_owned(),
        request_id: "r1".to_owned(),
        api: "admin".to_owned(),
        created_at: 1_000,
        revoked_at: None,
        revocation_reason: None,
    }
}

fn generation(td: &str, number: i32, key_id: &str) -> SealedGeneration {
    SealedGeneration {
        trust_domain: td.to_owned(),
        generation: number,
        state: "active".to_owned(),
        key_algorithm: "ecdsa-p256".to_owned(),
        root_cert: vec![1],
        root_key: vec![2],
        intermediate_cert: vec![3],
        intermediate_key: vec![4],
        issuer_key_id: key_id.to_owned(),
        not_after: 9_999,
        created_at: 1,
        activated_at: Some(1),
        retired_at: None,
        removed_at: None,
        revocation_reason: None,
        chain: None,
    }
}

async fn migrations_are_idempotent_and_concurrent(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::open(&StoreOptions::new(&url)).await })
    });
    for open in opens {
        open.await.unwrap().unwrap().close().await;
    }
    let store = Store::open(&StoreOptions::new(&url)).await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.count_certificates().await.unwrap(), 0);
    store.close().await;
}
both_backends!(migrations_on, migrations_are_idempotent_and_concurrent);

async fn generations_one_active_per_trust_domain(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(backend, dir.path()).await;
    store.ensure_trust_domain("td", 1).await.unwrap();
    store.ensure_trust_domain("td", 2).await.unwrap();
    assert!(store.active_generation("td").await.unwrap().is_none());
    store
        .insert_generation(&generation("td", 1, "k1"))
        .await
        .unwrap();
    // The same generation number again, or a second active one: conflicts.
    assert!(matches!(
        store.insert_generation(&generation("td", 1, "k2")).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.insert_generation(&generation("td", 2, "k3")).await,
        Err(Error::Conflict(_))
    ));
    let mut prepared = generation("td", 2, "k4");
    prepared.state = "prepared".to_owned();
    store.insert_generation(&prepared).await.unwrap();
    let active = store.active_generation("td").await.unwrap().unwrap();
    assert_eq!(active.issuer_key_id, "k1");
    assert_eq!(active.root_key, vec![2]);
    let all = store.generations("td").await.unwrap();
    assert_eq!(
        all.iter().map(|g| g.generation).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // A generation of an unknown trust domain violates the foreign key.
    assert!(
        store
            .insert_generation(&generation("nope", 1, "k5"))
            .await
            .is_err()
    );
    store.close().await;
}
both_backends!(generations_on, generations_one_active_per_trust_domain);

async fn rotation_is_a_compare_and_set(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let store = Store::open(&StoreOptions::new(&url)).await.unwrap();
    store.ensure_trust_domain("td", 1).await.unwrap();
    store
        .insert_generation(&generation("td", 1, "k1"))
        .await
        .unwrap();
    // Eight replicas race to replace generation 1: exactly one wins, the rest change nothing.
    let racers = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .rotate_generation(1, &generation("td", 2, &format!("k2-{i}")), 50)
                .await
                .unwrap()
        })
    });
    let mut wins = 0;
    for racer in racers {
        wins += usize::from(racer.await.unwrap());
    }
    assert_eq!(wins, 1);
    let all = store.generations("td").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].state, "retired");
    assert_eq!(all[0].retired_at, Some(50));
    assert_eq!(all[1].state, "active");
    assert_eq!(store.active_generation_number("td").await.unwrap(), Some(2));
    // Replacing a generation that is no longer active changes nothing.
    assert!(
        !store
            .rotate_generation(1, &generation("td", 3, "k3"), 60)
            .await
            .unwrap()
    );
    // Only a state-checked transition moves a generation; the states are the database's rule.
    assert!(
        store
            .transition_generation("td", 1, "retired", "removed", 70)
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_generation("td", 1, "retired", "removed", 80)
            .await
            .unwrap()
    );
    assert!(
        store
            .transition_generation("td", 2, "active", "bogus", 80)
            .await
            .is_err()
    );
    let removed = &store.generations("td").await.unwrap()[0];
    assert_eq!(
        (removed.state.as_str(), removed.removed_at),
        ("removed", Some(70))
    );
    assert_eq!(store.last_leaf_not_after("k1").await.unwrap(), None);
    store.record_issued(&certificate("k1", "01")).await.unwrap();
    assert_eq!(store.last_leaf_not_after("k1").await.unwrap(), Some(2_000));
    store.close().await;
}
both_backends!(rotation_cas_on, rotation_is_a_compare_and_set);

async fn plug_in_chains_and_pending_keys(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(backend, dir.path()).await;
    store.ensure_trust_domain("td", 1).await.unwrap();
    // A plug-in generation: no root key, a chain of intermediates above its own.
    let mut plugged = generation("td", 1, "k1");
    plugged.root_key = Vec::new();
    plugged.chain = Some(vec![5, 6, 7]);
    store.insert_generation(&plugged).await.unwrap();
    let read = store.active_generation("td").await.unwrap().unwrap();
    assert_eq!(read.chain, Some(vec![5, 6, 7]));
    assert!(read.external_root());

    // One pending key per trust domain: put replaces, delete only the one made at that time.
    assert!(store.pending_key("td").await.unwrap().is_none());
    let pending = |at: i64| PendingKey {
        trust_domain: "td".to_owned(),
        key_algorithm: "ecdsa-p256".to_owned(),
        sealed_key: vec![at as u8],
        csr_pem: format!("csr {at}"),
        created_at: at,
    };
    store.put_pending_key(&pending(10)).await.unwrap();
    store.put_pending_key(&pending(20)).await.unwrap();
    let read = store.pending_key("td").await.unwrap().unwrap();
    assert_eq!(
        (read.created_at, read.csr_pem.as_str(), read.sealed_key),
        (20, "csr 20", vec![20])
    );
    assert!(
        !store.delete_pending_key("td", 10).await.unwrap(),
        "the replaced one is gone"
    );
    assert!(store.delete_pending_key("td", 20).await.unwrap());
    assert!(store.pending_key("td").await.unwrap().is_none());
    store.close().await;
}
both_backends!(plug_in_on, plug_in_chains_and_pending_keys);

async fn certificates_are_unique_per_issuer(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(backend, dir.path()).await;
    store
        .record_issued(&certificate("issuer-a", "0a"))
        .await
        .unwrap();
    assert!(matches!(
        store.record_issued(&certificate("issuer-a", "0a")).await,
        Err(Error::Conflict(_))
    ));
    // The same serial from another issuer is a different certificate.
    store
        .record_issued(&certificate("issuer-b", "0a"))
        .await
        .unwrap();
    assert_eq!(store.count_certificates().await.unwrap(), 2);
    assert_eq!(store.certificates_by_serial("0a").await.unwrap().len(), 2);
    let found = store.certificate("issuer-a", "0a").await.unwrap().unwrap();
    assert_eq!(found, certificate("issuer-a", "0a"));
    assert!(store.certificate("issuer-a", "0b").await.unwrap().is_none());

    // Revocation: the first one wins; unknown serials change nothing.
    assert!(
        store
            .revoke("issuer-a", "0a", "keyCompromise", 1_500)
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke("issuer-a", "0a", "superseded", 1_600)
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke("issuer-a", "ff", "superseded", 1_600)
            .await
            .unwrap()
    );
    let revoked = store.certificate("issuer-a", "0a").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(1_500));
    assert_eq!(revoked.revocation_reason.as_deref(), Some("keyCompromise"));
    assert!(
        store
            .certificate("issuer-b", "0a")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    store.close().await;
}
both_backends!(certificates_on, certificates_are_unique_per_issuer);

/// CRL numbers and lists: replicas building CRLs while certificates are being revoked never
/// publish a higher number with a shorter list (each number's list holds every revocation a
/// lower number's did), and no number is handed out twice. Expired entries drop out.
async fn crl_numbers_never_list_less(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = open(backend, dir.path()).await;
    for n in 0..40 {
        store
            .record_issued(&certificate("issuer-c", &format!("{n:04x}")))
            .await
            .unwrap();
    }
    let revoker = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..40 {
                let serial = format!("{n:04x}");
                assert!(
                    store
                        .revoke("issuer-c", &serial, "keyCompromise", 1_500)
                        .await
                        .unwrap()
                );
                tokio::task::yield_now().await;
            }
        })
    };
    let builders = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..20 {
                let (number, entries) = store.next_crl("issuer-c", 1_000).await.unwrap();
                let serials: std::collections::BTreeSet<String> =
                    entries.into_iter().map(|e| e.serial).collect();
                seen.push((number, serials));
            }
            seen
        })
    });
    let mut seen = Vec::new();
    for builder in builders {
        seen.extend(builder.await.unwrap());
    }
    revoker.await.unwrap();
    seen.sort_by_key(|(number, _)| *number);
    let numbers: Vec<i64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=160).collect::<Vec<_>>(), "each number once");
    for pair in seen.windows(2) {
        assert!(
            pair[1].1.is_superset(&pair[0].1),
            "CRL {} lists less than CRL {}",
            pair[1].0,
            pair[0].0
        );
    }
    let (last, all) = store.next_crl("issuer-c", 1_000).await.unwrap();
    assert_eq!((last, all.len()), (161, 40));

    // The mechanism, deterministically (Postgres; SQLite has one writer and one process): the
    // list is read once the number is granted, so a revocation committed while a build waited
    // for its number is on that build's CRL. (Reading the list before taking the number, a
    // build that waited here published a list older than its number.)
    if backend == Backend::Postgres {
        use sqlx::Connection;
        store
            .record_issued(&certificate("issuer-c", "ffff"))
            .await
            .unwrap();
        let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut lock = holder.begin().await.unwrap();
        sqlx::query(
            "UPDATE crl_numbers SET last_number = last_number WHERE issuer_key_id = 'issuer-c'",
        )
        .execute(&mut *lock)
        .await
        .unwrap();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.next_crl("issuer-c", 1_000).await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the build waits for the number's row"
        );
        assert!(
            store
                .revoke("issuer-c", "ffff", "keyCompromise", 1_500)
                .await
                .unwrap()
        );
        lock.commit().await.unwrap();
        let (number, entries) = waiting.await.unwrap();
        assert_eq!(number, 162);
        assert!(
            entries.iter().any(|e| e.serial == "ffff"),
            "the revocation committed before the number was granted is listed"
        );
    }
    // Another issuer has its own numbers; expired certificates are not listed.
    assert_eq!(
        store.next_crl("issuer-d", 1_000).await.unwrap(),
        (1, vec![])
    );
    let (_, expired) = store.next_crl("issuer-c", 2_000).await.unwrap();
    assert!(expired.is_empty());
    store.close().await;
}
both_backends!(crl_numbers_on, crl_numbers_never_list_less);

async fn audit_events_newest_first(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(backend, dir.path()).await;
    for i in 0..5 {
        store
            .append_audit(&AuditEvent {
                at: i,
                actor: "a".to_owned(),
                action: "x".to_owned(),
                target: format!("t{i}"),
                outcome: "success".to_owned(),
                request_id: "r".to_owned(),
                detail: "'; DROP TABLE audit_events; --".to_owned(),
            })
            .await
            .unwrap();
    }
    let events = store.recent_audit(3).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
        vec!["t4", "t3", "t2"]
    );
    assert_eq!(events[0].detail, "'; DROP TABLE audit_events; --");
    // The chain links and verifies; altering a row breaks it.
    let mut all = store.audit_page(None, 100).await.unwrap();
    all.reverse();
    assert_eq!(ca_server::audit::verify(&all).unwrap(), 5);
    assert_eq!(all[0].prev_hash, "");
    assert_eq!(all[1].prev_hash, all[0].hash);
    let mut tampered = all.clone();
    tampered[2].detail = "edited".to_owned();
    assert_eq!(
        ca_server::audit::verify(&tampered).unwrap_err().id,
        all[2].id
    );
    let mut removed = all.clone();
    removed.remove(1);
    assert_eq!(
        ca_server::audit::verify(&removed).unwrap_err().id,
        all[2].id
    );
    store.close().await;
}
both_backends!(audit_on, audit_events_newest_first);

#[tokio::test]
async fn unknown_url_schemes_are_refused() {
    let err = Store::open(&StoreOptions::new("mysql://x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Url(_)));
}
