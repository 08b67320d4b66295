//! The node's tamper-evident audit log, on top of the I/O-free
//! `allmende-audit` core: durable appends with group commit, the fail-closed
//! release guard, signed checkpoints within a second, derived query indexes,
//! store verification, witnessing of peers' logs.
//!
//! Architecture invariant: data-releasing code cannot obtain a
//! [`ReleaseGuard`] without a durable intent entry; if the log cannot be
//! written, [`AuditLog::begin_release`] fails and nothing may be sent.

mod checkpoint;
mod export;
mod index;
mod log;
mod query;
mod retention;
mod tree;
pub mod witness;

pub use checkpoint::{CheckpointRecord, parse_sig_line};
pub use export::Export;
/// Opens a log on a fresh store in `dir` with `clock` (tests).
#[cfg(test)]
pub(crate) use log::tests::open_with_clock as open_test_log;
pub use log::{
    AuditError, AuditLog, AuditStatus, Draft, MAX_LABEL_BYTES, ReleaseGuard, ReleaseStats,
    bound_label,
};
pub use query::{QueryFilter, QueryPage};
#[cfg(test)]
pub(crate) use tree::MIGRATION_CHUNK;
pub use tree::SledHashStore;

/// The store migrations of the audit log's formats; every store the node
/// opens is opened with them (`Store::open_with`).
pub const STORE_MIGRATIONS: &[crate::store::MigrationStep] = &[tree::MIGRATE_TREE_V1];
