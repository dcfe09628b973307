//! Fuzz target: a cluster's JWKS document (`authn::jwt::Jwks::parse`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ca_server::fuzzing::jwks(data);
});
