//! The serial of a received leaf certificate, read cheaply: only the DER headers down to the
//! serial, so checking every response costs the load generator little.

use anyhow::Context;

/// The serial (lower-case hex) of the certificate in a PEM chain element. Only the first two
/// base64 lines are decoded (72 bytes reach past any serial) and only the DER headers down to
/// the serial are read: a full decode and X.509 parse per response would be load generator CPU
/// taken from the server.
pub fn leaf_serial(pem: &str) -> anyhow::Result<String> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let body = pem
        .trim_start()
        .strip_prefix(BEGIN)
        .context("not a PEM certificate")?;
    let mut lines = body.lines().map(str::trim).filter(|line| !line.is_empty());
    let mut head = String::with_capacity(128);
    for line in lines.by_ref().take(2) {
        anyhow::ensure!(!line.starts_with("-----"), "certificate too short");
        head.push_str(line);
    }
    let der = base64::engine::general_purpose::STANDARD.decode(&head)?;
    let mut at = 0;
    // Certificate SEQUENCE, then tbsCertificate SEQUENCE: step into both.
    for _ in 0..2 {
        let (tag, _, content) = der_header(&der, at)?;
        anyhow::ensure!(tag == 0x30, "not a SEQUENCE");
        at = content;
    }
    let (mut tag, mut len, mut content) = der_header(&der, at)?;
    if tag == 0xa0 {
        // [0] version; the serial follows.
        (tag, len, content) = der_header(&der, content + len)?;
    }
    anyhow::ensure!(tag == 0x02, "no serial number");
    let serial = der
        .get(content..content + len)
        .context("serial cut short")?;
    Ok(hex::encode(serial))
}

/// Tag, content length and content offset of the DER TLV at `at`.
fn der_header(der: &[u8], at: usize) -> anyhow::Result<(u8, usize, usize)> {
    let short = || anyhow::anyhow!("DER cut short");
    let tag = *der.get(at).ok_or_else(short)?;
    let first = *der.get(at + 1).ok_or_else(short)?;
    if first < 0x80 {
        return Ok((tag, usize::from(first), at + 2));
    }
    let count = usize::from(first & 0x7f);
    anyhow::ensure!((1..=4).contains(&count), "DER length");
    let bytes = der.get(at + 2..at + 2 + count).ok_or_else(short)?;
    let len = bytes.iter().fold(0usize, |n, b| n << 8 | usize::from(*b));
    Ok((tag, len, at + 2 + count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_serial_agrees_with_a_full_parse() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        for serial in [
            vec![0x01],
            vec![0x7f, 0xff, 0x00, 0x12],
            vec![0x5a; 16],
            vec![0x7a; 20],
        ] {
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let cert = params.self_signed(&key).unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
            assert_eq!(
                leaf_serial(&cert.pem()).unwrap(),
                hex::encode(parsed.raw_serial())
            );
        }
        assert!(leaf_serial("not PEM").is_err());
        assert!(
            leaf_serial("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
