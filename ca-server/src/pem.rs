//! PEM encoding of certificates (RFC 7468), a leaf helper: every answer that carries a chain
//! uses it, so it is written in one pass into one buffer.

/// PEM of one DER certificate (RFC 7468: base64 in lines of 64, LF line ends), newline-
/// terminated. Written in one pass into one buffer: it is on every issuance's answer.
pub fn certificate(der: &[u8]) -> String {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----\n";
    const END: &str = "-----END CERTIFICATE-----\n";
    const LINE: usize = 64;
    let encoded_len = der.len().div_ceil(3) * 4;
    let mut out =
        String::with_capacity(BEGIN.len() + encoded_len + encoded_len.div_ceil(LINE) + END.len());
    out.push_str(BEGIN);
    // 48 input bytes are exactly one 64-character line.
    for chunk in der.chunks(LINE / 4 * 3) {
        base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut out);
        out.push('\n');
    }
    out.push_str(END);
    out
}

#[cfg(test)]
mod tests {
    use super::certificate;

    #[test]
    fn certificate_matches_the_pem_crate_for_every_line_remainder() {
        for len in [1, 2, 3, 47, 48, 49, 95, 96, 97, 500, 1023] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let expected = pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(certificate(&der), expected, "length {len}");
            assert_eq!(
                pem::parse(certificate(&der)).unwrap().contents(),
                der.as_slice()
            );
        }
    }
}
