//! The mesh CA service: issues short-lived SPIFFE X.509 workload certificates per trust domain.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! - `config`: TOML to a validated [`config::Config`]; the embedded default.
//! - `spiffe`: trust domain and SPIFFE ID parsing.
//! - `keys`: CA key algorithms, generation, the KEK and sealing of keys at rest.
//! - `serial`: random positive 128-bit serials.
//! - `authority`: each trust domain's root and intermediate, created once, loaded and checked.
//! - `issuance`: the engine (no I/O): CSR checks, the SVID profile, the self-check.
//! - `enrollment`: the one path from an authorised request to a recorded certificate.
//! - `store`: Postgres and SQLite persistence.
//! - `http`: the public and admin HTTP listeners.
//! - `server`: start everything on its listeners; shut it down.

pub mod audit;
pub mod authn;
pub mod authority;
pub mod authz;
pub mod config;
pub mod enrollment;
pub mod federation;
pub mod grpc;
pub mod http;
pub mod issuance;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod request_id;
pub mod revocation;
pub mod serial;
pub mod server;
pub mod spiffe;
pub mod store;
pub mod tls;
pub mod trust;
