//! The Allmende wire contract: package `allmende.v1`, generated from the
//! `.proto` files in `proto/allmende/v1/` by protox and tonic-prost-build.
//!
//! Only the broker's `rpc` layer uses these types; the broker's domain types
//! are plain Rust and convert from and to these in `rpc::convert` (one file
//! per area).

#![allow(
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "generated code"
)]

/// Generated code for `allmende.v1`.
pub mod v1 {
    tonic::include_proto!("allmende.v1");
}

/// Encoded `FileDescriptorSet` of every `allmende.v1` file, for gRPC server
/// reflection and the wire-contract test.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/allmende_descriptor.bin"));
