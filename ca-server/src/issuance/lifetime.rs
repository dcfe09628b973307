//! Validity periods: the one place that backdates `notBefore` and clamps `notAfter`, for every
//! kind of certificate (leaf, serving, intermediate). SPEC section 8 invariant 4: `notBefore`
//! is backdated about a minute, and `notAfter` never passes the issuer's `notAfter`. The
//! backdate is never more than a tenth of the TTL, and a TTL under the policy's minimum is
//! raised to it: clients renew at a fraction of notBefore..notAfter (ztunnel at half,
//! istio-agent at about 80 %), so a backdate close to the TTL made them renew in a loop.

use std::time::Duration;

use time::OffsetDateTime;

use crate::issuance::Error;

/// How far `notBefore` is backdated at most, for relying parties with slow clocks.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// The backdate is never more than this fraction of the TTL.
const BACKDATE_TTL_DIVISOR: i64 = 10;

/// TTL policy: what a request gets when it names no TTL, and the most it may get.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Shorter requests are raised to it (zero: no minimum).
    pub min_ttl: Duration,
}

/// A `notBefore`..`notAfter` window in unix seconds (a certificate's, or its issuer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// The validity of a certificate about to be issued, and how it was arrived at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub validity: Validity,
    /// The request asked for more than `max_ttl` and was shortened to it.
    pub ttl_clamped: bool,
    /// The request asked for less than `min_ttl` and was raised to it.
    pub ttl_raised: bool,
    /// `notAfter` was cut to the issuer's `notAfter`.
    pub capped_by_issuer: bool,
}

impl Lifetime {
    /// The validity of a certificate issued at `now` under an issuer valid for `issuer`.
    ///
    /// `requested` of `None` or zero means `policy.default_ttl`; longer than `policy.max_ttl` is
    /// clamped to it. Nothing is issued outside the issuer's own validity, and neither end of the
    /// result leaves it: a backdated `notBefore` would otherwise predate the issuer, and a leaf
    /// that outlives its issuer stops verifying early anyway.
    pub fn new(
        now: OffsetDateTime,
        requested: Option<Duration>,
        policy: TtlPolicy,
        issuer: Validity,
    ) -> Result<Lifetime, Error> {
        let now = now.unix_timestamp();
        if now < issuer.not_before || now >= issuer.not_after {
            return Err(Error::IssuerNotValid);
        }
        let ttl = requested
            .filter(|ttl| !ttl.is_zero())
            .unwrap_or(policy.default_ttl);
        let ttl_clamped = ttl > policy.max_ttl;
        let ttl_raised = ttl < policy.min_ttl;
        let ttl = ttl.max(policy.min_ttl).min(policy.max_ttl);
        let ttl = i64::try_from(ttl.as_secs()).map_err(|_| Error::TtlOutOfRange)?;
        let wanted_not_after = now.checked_add(ttl).ok_or(Error::TtlOutOfRange)?;
        let backdate = BACKDATE
            .as_secs()
            .cast_signed()
            .min(ttl / BACKDATE_TTL_DIVISOR);
        Ok(Lifetime {
            validity: Validity {
                not_before: (now - backdate).max(issuer.not_before),
                not_after: wanted_not_after.min(issuer.not_after),
            },
            ttl_clamped,
            ttl_raised,
            capped_by_issuer: wanted_not_after > issuer.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    fn policy() -> TtlPolicy {
        TtlPolicy {
            default_ttl: Duration::from_secs(HOUR),
            max_ttl: Duration::from_secs(DAY),
            min_ttl: Duration::ZERO,
        }
    }

    fn lifetime(requested: Option<u64>, issuer: Validity) -> Result<Lifetime, Error> {
        let now = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        Lifetime::new(now, requested.map(Duration::from_secs), policy(), issuer)
    }

    #[test]
    fn short_requests_are_raised_to_the_minimum() {
        let roomy = Validity {
            not_before: NOW - 365 * DAY as i64,
            not_after: NOW + 365 * DAY as i64,
        };
        let now = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let with_minimum = TtlPolicy {
            min_ttl: Duration::from_secs(600),
            ..policy()
        };
        let raised =
            Lifetime::new(now, Some(Duration::from_secs(30)), with_minimum, roomy).unwrap();
        assert!(raised.ttl_raised && !raised.ttl_clamped);
        assert_eq!(raised.validity.not_after, NOW + 600);
        assert_eq!(raised.validity.not_before, NOW - 60);
        let kept = Lifetime::new(now, Some(Duration::from_secs(601)), with_minimum, roomy).unwrap();
        assert!(!kept.ttl_raised);
        // Without a minimum, a 30 s certificate is backdated 3 s: its midpoint is still ahead.
        let tiny = Lifetime::new(now, Some(Duration::from_secs(30)), policy(), roomy).unwrap();
        assert_eq!(tiny.validity.not_before, NOW - 3);
        assert!(tiny.validity.not_before + 33 / 2 > NOW);
    }

    #[test]
    fn backdates_defaults_and_clamps() {
        let roomy = Validity {
            not_before: NOW - 365 * DAY as i64,
            not_after: NOW + 365 * DAY as i64,
        };
        // (requested, expected TTL, clamped)
        let cases = [
            (None, HOUR, false),
            (Some(0), HOUR, false),
            (Some(60), 60, false),
            (Some(DAY), DAY, false),
            (Some(DAY + 1), DAY, true),
            (Some(u64::MAX), DAY, true),
        ];
        for (requested, ttl, clamped) in cases {
            let got = lifetime(requested, roomy).unwrap();
            let want = Lifetime {
                validity: Validity {
                    not_before: NOW - 60.min(ttl as i64 / 10),
                    not_after: NOW + ttl as i64,
                },
                ttl_clamped: clamped,
                ttl_raised: false,
                capped_by_issuer: false,
            };
            assert_eq!(got, want, "{requested:?}");
        }
    }

    #[test]
    fn never_leaves_the_issuer() {
        // Issuer made 10 seconds ago, with 30 minutes left.
        let young_and_ending = Validity {
            not_before: NOW - 10,
            not_after: NOW + 1800,
        };
        let got = lifetime(Some(2 * HOUR), young_and_ending).unwrap();
        assert_eq!(got.validity, young_and_ending);
        assert!(got.capped_by_issuer);
        assert!(!got.ttl_clamped);

        let expired = Validity {
            not_before: NOW - 100,
            not_after: NOW,
        };
        assert_eq!(lifetime(None, expired), Err(Error::IssuerNotValid));
        let not_yet = Validity {
            not_before: NOW + 1,
            not_after: NOW + 100,
        };
        assert_eq!(lifetime(None, not_yet), Err(Error::IssuerNotValid));
    }

    #[test]
    fn an_unrepresentable_ttl_is_refused() {
        let forever = Validity {
            not_before: 0,
            not_after: i64::MAX,
        };
        let now = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let huge = TtlPolicy {
            default_ttl: Duration::MAX,
            max_ttl: Duration::MAX,
            min_ttl: Duration::ZERO,
        };
        assert_eq!(
            Lifetime::new(now, None, huge, forever),
            Err(Error::TtlOutOfRange)
        );
    }
}
