//! Fuzz target: a DER OCSP request (`revocation::ocsp::parse_request`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ca_server::fuzzing::ocsp_request(data);
});
