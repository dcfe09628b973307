//! Fuzz target: SPIFFE IDs, trust domains and `<namespace>:<service account>` pairs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        ca_server::fuzzing::spiffe_id(text);
    }
});
