//! The audit log's hash chain: every event carries the hash of the one before it, so a changed,
//! removed or reordered row is detectable. `hash = SHA-256(prev_hash || "\n" || canonical JSON of
//! the event's fields)`, hex. The first event's `prev_hash` is empty.

use ring::digest::{SHA256, digest};

/// An audit event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
}

/// One stored audit event, with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub prev_hash: String,
    pub hash: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
}

/// The hash of `event` chained after `prev_hash`.
pub fn chain_hash(prev_hash: &str, event: &AuditEvent) -> String {
    let canonical = serde_json::json!([
        event.at,
        event.actor,
        event.action,
        event.target,
        event.outcome,
        event.request_id,
        event.detail,
    ])
    .to_string();
    let mut input = Vec::with_capacity(prev_hash.len() + 1 + canonical.len());
    input.extend_from_slice(prev_hash.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(canonical.as_bytes());
    hex::encode(digest(&SHA256, &input))
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit event {id}: {reason}")]
pub struct ChainBreak {
    pub id: i64,
    pub reason: String,
}

/// Verifies events given oldest first; returns how many were checked.
pub fn verify(oldest_first: &[AuditRecord]) -> Result<usize, ChainBreak> {
    let mut prev = String::new();
    for (i, record) in oldest_first.iter().enumerate() {
        if i > 0 && record.prev_hash != prev {
            return Err(ChainBreak {
                id: record.id,
                reason:
                    "prev_hash does not match the previous event (a row was removed or reordered)"
                        .to_owned(),
            });
        }
        let event = AuditEvent {
            at: record.at,
            actor: record.actor.clone(),
            action: record.action.clone(),
            target: record.target.clone(),
            outcome: record.outcome.clone(),
            request_id: record.request_id.clone(),
            detail: record.detail.clone(),
        };
        if chain_hash(&record.prev_hash, &event) != record.hash {
            return Err(ChainBreak {
                id: record.id,
                reason: "hash does not match the event (the row was altered)".to_owned(),
            });
        }
        prev = record.hash.clone();
    }
    Ok(oldest_first.len())
}
