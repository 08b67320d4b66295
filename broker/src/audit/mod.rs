//! The node's tamper-evident audit log, on top of the I/O-free
//! `allmende-audit` core: durable appends with group commit, the fail-closed
//! release guard, signed checkpoints within a second, derived query indexes,
//! store verification, witnessing of peers' logs.
//!
//! Architecture invariant: data-releasing code cannot obtain a
//! [`ReleaseGuard`] without a durable intent entry; if the log cannot be
//! written, [`AuditLog::begin_release`] fails and nothing may be sent.

mod log;
mod tree;
pub mod witness;

pub use log::{
    AuditError, AuditLog, AuditStatus, CheckpointRecord, Draft, MAX_LABEL_BYTES, QueryFilter,
    QueryPage, ReleaseGuard, ReleaseStats, bound_label,
};
pub use tree::SledHashStore;
pub(crate) use tree::encode_node_group;
