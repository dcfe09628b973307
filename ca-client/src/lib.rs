//! Client library for the mesh CA, and the `cactl` CLI.
//!
//! The simplest complete use: make a key and CSR, have an operator-issued certificate signed
//! through the admin API, and write it out the way istio-agent does:
//!
//! ```no_run
//! # async fn demo() -> Result<(), ca_client::Error> {
//! use ca_client::{AdminClient, KeyType};
//! let key = ca_client::csr::generate(KeyType::EcdsaP256, Some("spiffe://cluster.local/ns/default/sa/web"))?;
//! let admin = AdminClient::new("http://127.0.0.1:9090", "token")?;
//! let issued = admin.issue(&key.csr_pem, "spiffe://cluster.local/ns/default/sa/web", None).await?;
//! ca_client::files::write_identity(std::path::Path::new("out"), &key.key_pem, &issued.chain_pem, &issued.root_pem)?;
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - `csr`: key pair and CSR generation (the private key never leaves this process).
//! - `admin`: the admin HTTP API, typed answers that keep the server's JSON.
//! - `workload`: the gRPC API as a workload calls it (Istio's and ours).
//! - `svid`: the SVID source: a workload's certificate kept renewed, trust followed through
//!   `WatchBundles`, and rustls configs that change without a restart.
//! - `token`: the SPIFFE ID a service-account token names (read, not verified).
//! - `audit`: checking the admin audit log's hash chain.
//! - `inspect`, `verify`: reading and verifying certificates, CSRs, CRLs and bundles.
//! - `files`: writing key (0600), chain and root files atomically.
//! - `error`: the one error type.

pub mod admin;
pub mod audit;
pub mod csr;
pub mod error;
pub mod files;
pub mod inspect;
pub mod svid;
pub mod token;
pub mod verify;
pub mod workload;

pub use admin::{AdminClient, Answer};
pub use csr::KeyType;
pub use error::Error;
pub use workload::{ConnectOptions, TokenAuth, WorkloadClient};
