//! Client-side verification of the admin audit log's hash chain, independent of the server's
//! code: `hash = hex(SHA-256(prev_hash || "\n" || JSON [at, actor, action, target, outcome,
//! request_id, detail]))`, each event's `prev_hash` equal to the previous event's `hash`.

use ring::digest::{SHA256, digest};
use serde_json::Value;

/// Verifies events given newest first (as the API lists them). Returns how many were checked,
/// or the id of the first event (oldest first) where the chain breaks and why.
pub fn verify_newest_first(events: &[Value]) -> Result<usize, (i64, &'static str)> {
    let mut prev = String::new();
    for (i, event) in events.iter().rev().enumerate() {
        let id = event["id"].as_i64().unwrap_or(-1);
        let prev_hash = event["prev_hash"].as_str().unwrap_or_default();
        if i > 0 && prev_hash != prev {
            return Err((
                id,
                "prev_hash does not match the previous event (a row was removed or reordered)",
            ));
        }
        let canonical = serde_json::json!([
            event["at"],
            event["actor"],
            event["action"],
            event["target"],
            event["outcome"],
            event["request_id"],
            event["detail"],
        ])
        .to_string();
        let mut input = prev_hash.as_bytes().to_vec();
        input.push(b'\n');
        input.extend_from_slice(canonical.as_bytes());
        let hash = hex::encode(digest(&SHA256, &input));
        if Some(hash.as_str()) != event["hash"].as_str() {
            return Err((id, "hash does not match the event (the row was altered)"));
        }
        prev = hash;
    }
    Ok(events.len())
}
