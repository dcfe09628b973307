//! The mesh CA service: issues short-lived SPIFFE X.509 workload certificates per trust domain.
//!
//! Layers, each importing only from the ones below it (`tests/tests/e2e/tidy.rs` holds this):
//! - leaves: `spiffe` (trust domain and SPIFFE ID parsing), `serial`, `keys` (CA key algorithms,
//!   the KEK, sealing), `pem`, `config` (TOML to a validated [`config::Config`]), `metrics`,
//!   `request_id`.
//! - domain (no I/O): `issuance` (CSR checks, certificate templates, the writer and the
//!   self-check), `authority` (a trust domain's loaded CA generation), `audit` (events and the
//!   hash chain), `revocation` (reasons, deny list, CRL and OCSP artefacts), `trust` (bundles).
//! - persistence and outside systems: `store` (Postgres and SQLite), `kubernetes` (a cluster's
//!   API server: client, pod index, TokenReview, JWKS discovery, the writers' Lease).
//! - authentication: `authn` (tokens, client certificates), `authz` (who may be which identity).
//! - service: `ca` ([`ca::Ca`] and its verbs: enroll, revoke, deny, bundles, CRL, OCSP).
//! - around the service: `federation` (fetching peers' bundles), `jobs` (periodic work), `tls`
//!   (serving certificates and TLS configs), `istiod` (istiod's serving certificate), and the
//!   Kubernetes writers run by one replica per cluster (`writers`): `csr_signer`,
//!   `root_configmap`.
//! - front doors: `grpc`, `http`; and `server`, which starts everything.

pub mod audit;
mod authn;
pub mod authority;
mod authz;
pub mod ca;
pub mod config;
pub mod csr_signer;
pub mod external_ca;
pub mod federation;
pub mod fuzzing;
mod grpc;
pub mod http;
mod issuance;
pub mod istiod;
pub mod jobs;
pub mod keys;
pub mod kubernetes;
mod limits;
pub mod metrics;
mod pem;
pub mod report;
mod request_id;
pub mod revocation;
pub mod root_configmap;
mod serial;
pub mod server;
pub mod spiffe;
pub mod store;
pub mod tls;
pub mod trust;
mod untrusted;
pub mod writers;
