//! HPACK (RFC 7541) request header blocks for `CreateCertificate`, encoded once per connection
//! in either client's style: grpc-go's (fields indexed after the first request) or the `h2`
//! crate's (Huffman-coded, `:path` and `authorization` never indexed).

use bytes::Bytes;

use super::{HeaderStyle, PATH};

/// The request header blocks: the first adds its fields to the server's HPACK table, the
/// later ones name them by index (or, if they would not fit the table, both repeat them as
/// literals that are not indexed). With [`HeaderStyle::H2`], `:path` and `authorization` are
/// literals without indexing in both.
pub(super) struct RequestHeaders {
    pub(super) first: Bytes,
    pub(super) later: Bytes,
    /// Dynamic table bytes the first block adds (RFC 7541 section 4.1); 0 if it adds none.
    pub(super) table_size: usize,
}

impl RequestHeaders {
    pub(super) fn new(
        authority: &str,
        authorization: &str,
        cluster_id: &str,
        style: HeaderStyle,
    ) -> anyhow::Result<RequestHeaders> {
        // (name, its index in the static table if it has one, value)
        let fields: [(&str, Option<usize>, &str); 6] = [
            (":path", Some(4), PATH),
            (":authority", Some(1), authority),
            ("content-type", Some(31), "application/grpc"),
            ("te", None, "trailers"),
            ("authorization", Some(23), authorization),
            ("clusterid", None, cluster_id),
        ];
        let huffman = style == HeaderStyle::H2;
        let never_in_table = |name: &str| huffman && matches!(name, ":path" | "authorization");
        // :method POST and :scheme https are static entries 3 and 7.
        let mut indexing = vec![0x83, 0x87];
        let mut literal = vec![0x83, 0x87];
        let mut indexed = vec![0x83, 0x87];
        let mut table_size = 0;
        let entries = fields.iter().filter(|f| !never_in_table(f.0)).count();
        let mut entry = 0;
        for (name, static_index, value) in fields {
            // Literal without indexing (RFC 7541 section 6.2.2): `literal`, and for the fields
            // that never enter the table, every block.
            let mut plain = Vec::new();
            match static_index {
                Some(index) => hpack_int(&mut plain, 4, 0x00, index),
                None => {
                    plain.push(0x00);
                    hpack_str(&mut plain, name, huffman)?;
                }
            }
            hpack_str(&mut plain, value, huffman)?;
            literal.extend_from_slice(&plain);
            if never_in_table(name) {
                indexing.extend_from_slice(&plain);
                indexed.extend_from_slice(&plain);
                continue;
            }
            match static_index {
                Some(index) => hpack_int(&mut indexing, 6, 0x40, index),
                None => {
                    indexing.push(0x40);
                    hpack_str(&mut indexing, name, huffman)?;
                }
            }
            hpack_str(&mut indexing, value, huffman)?;
            table_size += name.len() + value.len() + 32;
            // The newest entry is index 62; the first field added is the oldest.
            hpack_int(&mut indexed, 7, 0x80, 62 + entries - 1 - entry);
            entry += 1;
        }
        Ok(if table_size <= DEFAULT_TABLE_SIZE {
            RequestHeaders {
                first: indexing.into(),
                later: indexed.into(),
                table_size,
            }
        } else {
            let literal = Bytes::from(literal);
            RequestHeaders {
                first: literal.clone(),
                later: literal,
                table_size: 0,
            }
        })
    }
}

/// The server's HPACK table size unless its SETTINGS say otherwise (RFC 9113 section 6.5.2).
const DEFAULT_TABLE_SIZE: usize = 4096;

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, flags: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK string literal (RFC 7541 section 5.2), Huffman-coded if `huffman`.
fn hpack_str(out: &mut Vec<u8>, value: &str, huffman: bool) -> anyhow::Result<()> {
    if huffman {
        let mut coded = Vec::with_capacity(value.len());
        httlib_huffman::encode(value.as_bytes(), &mut coded)
            .map_err(|e| anyhow::anyhow!("Huffman coding: {e:?}"))?;
        hpack_int(out, 7, 0x80, coded.len());
        out.extend_from_slice(&coded);
    } else {
        hpack_int(out, 7, 0x00, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both header styles decode (with an independent HPACK decoder, Huffman included) to the
    /// same request on the first and on every later request of a connection; grpc-go's style
    /// sends the token once, h2's sends it Huffman-coded every time.
    #[test]
    fn header_styles_decode_to_the_same_request() {
        let token = format!("Bearer {}", "eyJhbGciOiJSUzI1NiJ9.".repeat(30));
        let expected: Vec<(Vec<u8>, Vec<u8>)> = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", PATH),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", token.as_str()),
            ("clusterid", "Kubernetes"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let mut later_len = Vec::new();
        for style in [HeaderStyle::GrpcGo, HeaderStyle::H2] {
            let headers = RequestHeaders::new("localhost", &token, "Kubernetes", style).unwrap();
            let mut decoder = hpack::Decoder::new();
            for block in [&headers.first, &headers.later, &headers.later] {
                assert_eq!(decoder.decode(block).unwrap(), expected, "{style:?}");
            }
            later_len.push(headers.later.len());
        }
        assert!(later_len[0] < 16, "grpc-go: indexes only, {later_len:?}");
        assert!(
            later_len[1] > token.len() / 2 && later_len[1] < token.len(),
            "h2: the Huffman-coded token on every request, {later_len:?}"
        );
    }
}
