//! The audit log's hash chain: every event carries the hash of the one before it, so a changed,
//! removed or reordered row is detectable. `hash = SHA-256(prev_hash || "\n" || canonical JSON of
//! the event's fields)`, hex. The first event's `prev_hash` is empty.

use std::collections::HashMap;
use std::sync::Mutex;

use ring::digest::{SHA256, digest};

use crate::untrusted::bounded;

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

impl AuditEvent {
    /// Longest actor, target and request id stored, in characters.
    pub const FIELD_CHARS: usize = 256;
    /// Longest action and outcome (our own words), in characters.
    pub const WORD_CHARS: usize = 64;
    /// Longest detail stored, in characters.
    pub const DETAIL_CHARS: usize = 1024;

    /// The event with every field bounded and escaped (`crate::untrusted`): what is stored and
    /// hashed. Our own text passes unchanged; a caller's cannot grow a row or forge a line.
    pub fn bounded(self) -> AuditEvent {
        AuditEvent {
            at: self.at,
            actor: bounded(&self.actor, Self::FIELD_CHARS),
            action: bounded(&self.action, Self::WORD_CHARS),
            target: bounded(&self.target, Self::FIELD_CHARS),
            outcome: bounded(&self.outcome, Self::WORD_CHARS),
            request_id: bounded(&self.request_id, Self::FIELD_CHARS),
            detail: bounded(&self.detail, Self::DETAIL_CHARS),
        }
    }
}

/// (caller, action, detail) of a refusal.
type RefusalKey = (String, String, String);

/// Aggregates repeated refusals: the first refusal of a (caller, action, detail) key in a
/// window is written; the rest of that window are counted, and the count is written as one
/// `<action>.suppressed` event when the window ends. So refusals cannot grow the audit log
/// faster than one row per key per window, and none goes uncounted.
#[derive(Debug)]
pub struct RefusalThrottle {
    window: i64,
    max_keys: usize,
    /// key -> (window start, refusals left out since)
    keys: Mutex<HashMap<RefusalKey, (i64, u64)>>,
}

/// What to do with one refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Throttled {
    /// Write it (the first of its window).
    Write,
    /// Count it, write nothing now.
    Counted,
}

impl RefusalThrottle {
    pub fn new(window_seconds: i64, max_keys: usize) -> RefusalThrottle {
        RefusalThrottle {
            window: window_seconds,
            max_keys,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Decides for one (already bounded) refusal at `now`.
    pub fn admit(&self, event: &AuditEvent, now: i64) -> Throttled {
        let Ok(mut keys) = self.keys.lock() else {
            return Throttled::Write;
        };
        let key = (
            event.actor.clone(),
            event.action.clone(),
            event.detail.clone(),
        );
        if let Some((start, suppressed)) = keys.get_mut(&key) {
            if now < *start + self.window {
                *suppressed += 1;
                return Throttled::Counted;
            }
            // A new window; what the last one left out is still reported by `expire`.
            *start = now;
            return Throttled::Write;
        }
        if keys.len() >= self.max_keys {
            // Full: count under one shared key rather than grow without bound.
            let overflow = (String::new(), event.action.clone(), String::new());
            keys.entry(overflow).or_insert((now, 0)).1 += 1;
            return Throttled::Counted;
        }
        keys.insert(key, (now, 0));
        Throttled::Write
    }

    /// Ends every window that is over: one summary event per key that left refusals out
    /// (to be written), and the key forgotten.
    pub fn expire(&self, now: i64) -> Vec<AuditEvent> {
        let Ok(mut keys) = self.keys.lock() else {
            return Vec::new();
        };
        let mut summaries = Vec::new();
        keys.retain(|(actor, action, detail), (start, suppressed)| {
            if now < *start + self.window {
                return true;
            }
            if *suppressed > 0 {
                summaries.push(AuditEvent {
                    at: now,
                    actor: if actor.is_empty() {
                        "(many callers)".to_owned()
                    } else {
                        actor.clone()
                    },
                    action: format!("{action}.suppressed"),
                    target: String::new(),
                    outcome: "rejected".to_owned(),
                    request_id: String::new(),
                    detail: format!("{suppressed} more refusals like \"{detail}\""),
                });
            }
            false
        });
        summaries
    }
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

#[cfg(test)]
mod tests {
    use super::{AuditEvent, RefusalThrottle, Throttled};

    fn refusal(actor: &str, target: &str) -> AuditEvent {
        AuditEvent {
            at: 0,
            actor: actor.to_owned(),
            action: "certificate.issue".to_owned(),
            target: target.to_owned(),
            outcome: "rejected".to_owned(),
            request_id: "r".to_owned(),
            detail: "istio impersonation_malformed".to_owned(),
        }
        .bounded()
    }

    #[test]
    fn a_forged_target_is_bounded_and_escaped() {
        let forged = format!("x\n{}", "y\n".repeat(100_000));
        let event = refusal("ns/sa", &forged);
        assert!(event.target.len() < 400, "{}", event.target.len());
        assert!(!event.target.contains('\n'));
    }

    #[test]
    fn repeated_refusals_are_one_row_and_a_count_per_window() {
        let throttle = RefusalThrottle::new(60, 100);
        let e = refusal("ns/sa", "t1");
        assert_eq!(throttle.admit(&e, 0), Throttled::Write);
        for t in 1..400 {
            // Another target, same caller and reason: still the same refusal.
            let other = refusal("ns/sa", &format!("t{t}"));
            assert_eq!(throttle.admit(&other, t / 10), Throttled::Counted);
        }
        assert_eq!(
            throttle.admit(&refusal("other/sa", "t"), 5),
            Throttled::Write
        );
        assert!(throttle.expire(59).is_empty());
        let summaries = throttle.expire(60);
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert!(summaries[0].detail.starts_with("399 more refusals"));
        assert_eq!(summaries[0].action, "certificate.issue.suppressed");
        assert_eq!(throttle.admit(&e, 61), Throttled::Write);
    }

    #[test]
    fn many_callers_share_one_overflow_count() {
        let throttle = RefusalThrottle::new(60, 2);
        assert_eq!(throttle.admit(&refusal("a", "t"), 0), Throttled::Write);
        assert_eq!(throttle.admit(&refusal("b", "t"), 0), Throttled::Write);
        for i in 0..1000 {
            assert_eq!(
                throttle.admit(&refusal(&format!("c{i}"), "t"), 0),
                Throttled::Counted
            );
        }
        let summaries = throttle.expire(60);
        assert_eq!(summaries.len(), 1);
        assert!(summaries[0].detail.starts_with("1000 more"));
    }
}
