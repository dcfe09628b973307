//! The per-identity issuance rate limit: a token bucket per SPIFFE ID (a burst, then a steady
//! rate, both per trust domain). It stops a client renewing in a loop (one ztunnel made 4,309
//! issuances in 4.4 s against a 60 s TTL) without getting in the way of a deployment's replicas
//! starting together. Time is passed in (milliseconds).

use std::collections::HashMap;
use std::sync::Mutex;

/// Identities tracked at most; beyond it, idle (full) buckets are dropped, and if none is idle
/// the request is let through untracked (a flood of distinct identities is not a renewal loop).
const MAX_TRACKED: usize = 100_000;

/// One trust domain's limit.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub burst: u32,
    pub per_second: f64,
}

/// Token buckets by SPIFFE ID: (tokens left, when they were counted).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, i64)>>,
}

impl RateLimiter {
    /// Takes one issuance for `identity` at `now_ms`, or says how many seconds until one is
    /// available.
    pub fn take(&self, identity: &str, limit: Limit, now_ms: i64) -> Result<(), u64> {
        if limit.burst == 0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let burst = f64::from(limit.burst);
        let refill = |(tokens, at): (f64, i64)| {
            let elapsed = (now_ms - at).max(0) as f64 / 1000.0;
            (tokens + elapsed * limit.per_second).min(burst)
        };
        if !buckets.contains_key(identity) && buckets.len() >= MAX_TRACKED {
            buckets.retain(|_, bucket| refill(*bucket) < burst);
            if buckets.len() >= MAX_TRACKED {
                return Ok(());
            }
        }
        let bucket = buckets
            .entry(identity.to_owned())
            .or_insert((burst, now_ms));
        let tokens = refill(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now_ms);
            let wait = ((1.0 - tokens) / limit.per_second).ceil();
            return Err(wait.max(1.0) as u64);
        }
        *bucket = (tokens - 1.0, now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Limit, RateLimiter};

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limiter = RateLimiter::default();
        let limit = Limit {
            burst: 3,
            per_second: 0.5,
        };
        for _ in 0..3 {
            limiter.take("a", limit, 0).unwrap();
        }
        assert_eq!(limiter.take("a", limit, 0), Err(2));
        // Another identity has its own bucket.
        limiter.take("b", limit, 0).unwrap();
        // One token back after 2 s, not before.
        assert!(limiter.take("a", limit, 1_500).is_err());
        limiter.take("a", limit, 2_100).unwrap();
        assert!(limiter.take("a", limit, 2_200).is_err());
        // Off when the burst is 0.
        let off = Limit {
            burst: 0,
            per_second: 1.0,
        };
        for _ in 0..100 {
            limiter.take("c", off, 0).unwrap();
        }
    }
}
