//! Fuzz target: the configuration TOML (`config::Config::from_toml`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        ca_server::fuzzing::config(text);
    }
});
