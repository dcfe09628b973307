//! Fuzz target: a bearer token through the whole verify path of a fixed cluster.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        ca_server::fuzzing::jwt(token);
    }
});
