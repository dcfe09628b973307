//! The end-to-end test binary: real servers on 127.0.0.1:0, real Postgres and SQLite, real HTTP
//! clients and the real `cactl` and `ca-server` binaries. One binary, one module per area.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod chaos;
mod cli;
mod deploy;
mod federation;
mod grpc;
mod hardening;
mod interop;
mod issuance;
mod istiod;
mod kubernetes;
mod lifecycle;
mod ocsp_hardening;
mod plug_in;
mod postgres_tls;
mod profile;
mod renewal;
mod revocation;
mod revocation_property;
mod rotation;
mod slow_clients;
mod start_errors;
mod store_conformance;
mod svid;
mod tidy;
