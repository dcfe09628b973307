//! The HTTP surfaces (axum): the public listener (bundles, health) and the admin listener
//! (bearer-token API). Both routers are plain functions of the state, so tests can drive them.

pub mod admin;
pub mod error;
pub mod public;
pub mod revocation;
pub mod tls_serve;

use std::sync::Arc;

use crate::ca::Ca;

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub ca: Ca,
    /// Opens and seals CA keys (rotation through the admin API).
    pub kek: Arc<crate::keys::Kek>,
    /// SHA-256 of the bootstrap admin token (the token itself is not kept in memory).
    pub bootstrap_token_sha256: Arc<[u8; 32]>,
}

pub use admin::router as admin_router;
pub use public::router as public_router;
