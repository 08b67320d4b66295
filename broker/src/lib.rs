//! Allmende broker: the node daemon, its services and the `allmende` CLI.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and the
//! invariants the modules keep.

pub mod access;
pub mod admin;
pub mod audit;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod consent;
pub mod ctx;
pub mod demo;
pub mod denials;
pub mod directory;
pub mod error;
pub mod federation;
pub mod grants;
pub mod invitations;
pub mod locks;
pub mod mds;
pub mod metrics;
pub mod mls;
pub mod node;
pub mod obligations;
pub mod opendata;
pub mod pki;
pub mod policy;
pub mod registry;
pub mod relay;
pub mod rpc;
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod timefmt;
pub mod tls;
pub mod uplinks;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
