//! Fuzz target: an admin API request body or query through the admin router (first byte: route).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ca_server::fuzzing::admin_json(data);
});
