//! Fuzz target: a peer's SPIFFE bundle or bundle map (`trust::bundle::parse`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ca_server::fuzzing::bundle(data);
});
