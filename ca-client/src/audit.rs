//! Client-side verification of the admin audit log's hash chain, independent of the server's
//! code: `hash = hex(SHA-256(prev_hash || "\n" || JSON [at, actor, action, target, outcome,
//! request_id, detail]))`, each event's `prev_hash` equal to the previous event's `hash`.

use ring::digest::{SHA256, digest};

use crate::admin::AuditEvent;

/// Where and why the chain breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Break {
    /// The id of the first event (oldest first) that does not fit.
    pub event: i64,
    pub reason: &'static str,
}

/// Verifies events given newest first (as the API lists them). Returns how many were checked,
/// or where the chain first breaks, oldest first.
pub fn verify_newest_first(events: &[AuditEvent]) -> Result<usize, Break> {
    let mut prev = String::new();
    for (i, event) in events.iter().rev().enumerate() {
        if i > 0 && event.prev_hash != prev {
            return Err(Break {
                event: event.id,
                reason: "prev_hash does not match the previous event (a row was removed or reordered)",
            });
        }
        let hash = hash(event);
        if hash != event.hash {
            return Err(Break {
                event: event.id,
                reason: "hash does not match the event (the row was altered)",
            });
        }
        prev = hash;
    }
    Ok(events.len())
}

/// The hash an event should carry, from its own `prev_hash` and fields.
fn hash(event: &AuditEvent) -> String {
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
    let mut input = event.prev_hash.as_bytes().to_vec();
    input.push(b'\n');
    input.extend_from_slice(canonical.as_bytes());
    hex::encode(digest(&SHA256, &input))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` events, newest first.
    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        let mut prev = String::new();
        for id in 1..=n {
            let mut event = AuditEvent {
                id,
                at: 1_700_000_000 + id,
                actor: "bootstrap".to_owned(),
                action: "token.create".to_owned(),
                target: format!("t{id}"),
                outcome: "success".to_owned(),
                request_id: format!("r{id}"),
                detail: String::new(),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            event.hash = hash(&event);
            prev = event.hash.clone();
            events.push(event);
        }
        events.reverse();
        events
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_newest_first(&chain(3)), Ok(3));
        assert_eq!(verify_newest_first(&[]), Ok(0));
    }

    #[test]
    fn an_altered_event_breaks_the_chain_there() {
        let mut events = chain(3);
        events[1].detail = "edited".to_owned();
        assert_eq!(verify_newest_first(&events).map_err(|b| b.event), Err(2));
    }

    #[test]
    fn a_removed_event_breaks_the_chain_after_it() {
        let mut events = chain(3);
        events.remove(1);
        let broken = verify_newest_first(&events).unwrap_err();
        assert_eq!(broken.event, 3);
        assert!(broken.reason.starts_with("prev_hash"));
    }
}
