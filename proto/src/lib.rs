//! Wire types generated from the `.proto` files beside this crate; no hand-written logic.
//!
//! - [`istio`]: `istio.v1.auth.IstioCertificateService`, field for field as Istio defines it.
//! - [`ca_v1`]: our own `ca.v1.CertificateAuthority` API.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

#![allow(unreachable_pub, unused_qualifications, clippy::all, missing_docs)]

/// `istio.v1.auth`: Istio's certificate service.
pub mod istio {
    tonic::include_proto!("istio.v1.auth");
}

/// `ca.v1`: the CA's own API.
pub mod ca_v1 {
    tonic::include_proto!("ca.v1");
}

/// Encoded `FileDescriptorSet` of both files (for `tonic-reflection`).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
