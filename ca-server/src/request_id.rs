//! Request ids: the caller's `x-request-id` when it is sane, else a fresh one. Every issuance
//! record and audit event carries one, so operators can follow a request through logs.
//!
//! A fresh id is 32 hex digits: 64 random bits drawn once per process, then a counter. Ids only
//! need to be unique, not unpredictable, so no CSPRNG draw (a system call) is spent per request.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::{SecureRandom, SystemRandom};

/// Longest caller-supplied id kept.
const MAX_LEN: usize = 128;

static PROCESS: LazyLock<u64> = LazyLock::new(|| {
    let mut bytes = [0u8; 8];
    // Should the RNG fail, the start time still separates processes well enough for log ids.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            .to_be_bytes();
    }
    u64::from_be_bytes(bytes)
});
static NEXT: AtomicU64 = AtomicU64::new(0);

/// `header` (an `x-request-id` value) if it is 1-128 printable ASCII characters, else a fresh id.
pub fn from_header(header: Option<&str>) -> String {
    header
        .filter(|v| !v.is_empty() && v.len() <= MAX_LEN && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(fresh)
}

/// A new id, unique within this process and (with overwhelming likelihood) across processes.
pub fn fresh() -> String {
    format!(
        "{:016x}{:016x}",
        *PROCESS,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_headers_are_kept_and_others_replaced() {
        assert_eq!(from_header(Some("abc-123")), "abc-123");
        for bad in [
            None,
            Some(""),
            Some("a b"),
            Some("é"),
            Some(&"x".repeat(129)[..]),
        ] {
            let id = from_header(bad);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn fresh_ids_are_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| fresh()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
