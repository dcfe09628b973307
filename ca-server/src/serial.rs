//! Certificate serial numbers: 128 bits from the system CSPRNG with the top bit cleared, so the
//! DER INTEGER is positive and at most 17 octets (RFC 5280 4.1.2.2 allows 20), and never zero.

use ring::rand::{SecureRandom, SystemRandom};

/// The system CSPRNG failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngError;

/// A serial number as the big-endian bytes of a positive integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial([u8; 16]);

impl Serial {
    /// Draws a fresh serial; fails only if the operating system's RNG does, and then nothing
    /// may be issued at all.
    pub fn random() -> Result<Serial, RngError> {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; 16];
        loop {
            rng.fill(&mut bytes).map_err(|_| RngError)?;
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
