//! Fuzz target: a plug-in CA's `cacerts` files (`external_ca::validate`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ca_server::fuzzing::cacerts(data);
});
