//! Certificate serial numbers: 128 bits from the system CSPRNG with the top bit cleared, so the
//! DER INTEGER is positive and at most 17 octets (RFC 5280 4.1.2.2 allows 20), and never zero.
//!
//! The CSPRNG is read a page at a time ([`Entropy`]): one `getrandom` call per 256 serials
//! rather than one per certificate (a system call on the issuance path). Serials are public, so
//! holding not-yet-used random bytes in memory discloses nothing; each byte is handed out once.

use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};

/// The system CSPRNG failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngError;

/// A serial number as the big-endian bytes of a positive integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial([u8; 16]);

/// Bytes read from the system CSPRNG and not yet handed out.
struct Entropy {
    bytes: [u8; 4096],
    /// How many of `bytes` are used up; a refill happens when fewer than 16 are left.
    used: usize,
}

static ENTROPY: Mutex<Entropy> = Mutex::new(Entropy {
    bytes: [0; 4096],
    used: 4096,
});

impl Entropy {
    fn take16(&mut self) -> Result<[u8; 16], RngError> {
        if self.bytes.len() - self.used < 16 {
            SystemRandom::new()
                .fill(&mut self.bytes)
                .map_err(|_| RngError)?;
            self.used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.bytes[self.used..self.used + 16]);
        self.used += 16;
        Ok(out)
    }
}

impl Serial {
    /// Draws a fresh serial; fails only if the operating system's RNG does, and then nothing
    /// may be issued at all.
    pub fn random() -> Result<Serial, RngError> {
        // A panic while holding the lock cannot leave `Entropy` inconsistent (`used` moves only
        // after a successful fill or copy), so a poisoned lock is used as it is.
        let mut entropy = ENTROPY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let mut bytes = entropy.take16()?;
            bytes[0] &= 0x7f;
            // Keep a stable width: the top byte is never zero (still 127 bits of entropy less
            // one byte value).
            if bytes[0] != 0 {
                return Ok(Serial(bytes));
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex, as the store and the admin API name certificates.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn serials_are_positive_short_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let serial = Serial::random().unwrap();
            assert!(serial.as_bytes()[0] & 0x80 == 0, "positive");
            assert!(serial.as_bytes()[0] != 0, "no leading zero byte");
            assert!(seen.insert(serial.to_hex()), "distinct");
        }
    }
}
