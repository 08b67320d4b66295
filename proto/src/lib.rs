//! The Allmende wire contract: package `allmende.v1`, generated from the
//! `.proto` files in `proto/allmende/v1/` by protox and tonic-prost-build.
//!
//! In the broker only the wire layers name these types: the gRPC server
//! (`rpc`, whose messages are built in `rpc::convert`, one file per area),
//! node-to-node clients (`federation`), the server assembly and the user
//! side (CLI, demo, sandbox). Domain modules are plain Rust and name none
//! of them (`broker/tests/tidy.rs` checks both).

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
