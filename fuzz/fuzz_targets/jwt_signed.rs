//! Fuzz target: a JWT header and claims (split at the first newline), signed with the fixed
//! cluster's key so that claims decoding and every claim check run.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (header, claims) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    ca_server::fuzzing::jwt_signed(header, claims);
});
