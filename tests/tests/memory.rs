//! Memory the store keeps between bursts. A pooled Postgres connection must not keep the
//! buffers of the largest message it ever carried: sqlx grows a connection's socket buffers to
//! fit a full audit batch or group commit and never shrinks them by itself, so after the first
//! database stalls every connection of the pool held a few hundred KiB (the soak's RSS step,
//! issue 17). Its own test binary, because it counts every byte the process has allocated.

use std::alloc::System;

use ca_server::audit::AuditEvent;
use ca_server::store::{Store, StoreOptions};
use ca_tests::{Backend, fresh_database};
use cap::Cap;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Queues `count` audit events and waits until they are written (one batch, one connection).
async fn audit_burst(store: &Store, count: i64) {
    for i in 0..count {
        let queued = store.append_audit_soon(AuditEvent {
            at: 1_700_000_000 + i,
            actor: "spiffe://td.example/ns/payments/sa/checkout".to_owned(),
            action: "issue".to_owned(),
            target: format!("spiffe://td.example/ns/payments/sa/checkout serial {i:040x}"),
            outcome: "success".to_owned(),
            request_id: format!("{i:032x}"),
            detail: "api=istio ttl=3600 key=ecdsa-p256 ".repeat(6),
        });
        assert!(queued, "the audit queue refused event {i}");
    }
    store.flush_audit().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_pooled_connection_gives_back_the_buffers_of_a_big_batch() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Postgres, dir.path()).await;
    let mut options = StoreOptions::new(&url);
    options.max_connections = 1;
    let store = Store::open(&options).await.unwrap();
    // First a small batch, so the statements are prepared and cached on the one connection.
    audit_burst(&store, 1).await;
    // `ping` takes the pool's only connection: it waits until the batch's connection is back.
    store.ping().await.unwrap();
    let before = ALLOCATOR.allocated();

    // About 400 KiB of bind parameters in one message.
    audit_burst(&store, 1024).await;
    store.ping().await.unwrap();
    let after = ALLOCATOR.allocated();

    let events = store.recent_audit(2000).await.unwrap();
    assert_eq!(events.len(), 1025, "every event of both bursts is written");
    let kept = after.saturating_sub(before);
    assert!(
        kept < 64 * 1024,
        "the store kept {kept} bytes after a 1,024-event batch (before: {before}, after: {after})"
    );
}
