//! Allmende audit log core: pure, I/O-free building blocks of the
//! tamper-evident audit log.
//!
//! * [`entry`]: audit entries, their canonical versioned encoding and
//!   keyed data-subject hashes ([`SubjectHasher`]).
//! * [`merkle`]: the RFC 6962 Merkle tree over hashes persisted in a
//!   [`HashStore`] (never held in memory), inclusion, consistency and range
//!   proofs and their verification.
//! * [`note`] and [`checkpoint`]: C2SP signed notes, checkpoints signed with
//!   the node's Ed25519 key, and `cosignature/v1` witness cosignatures.
//! * [`witness`]: cosign-or-report logic, split-view and rollback detection.
//! * [`bundle`] and [`verify`]: export bundles, the offline verifier
//!   ([`verify_bundle`]) and the store tamper check ([`verify_store`]).
//! * [`retention`]: summaries and prunable entries.
//! * [`trust`]: the verifier's `keys.toml`.
//!
//! This crate knows nothing about the broker's storage, transport or
//! runtime; the broker implements [`HashStore`] over its store and persists
//! the [`NodeWrite`]s returned by appends in the same batch as the entry.

pub mod bundle;
pub mod checkpoint;
mod codec;
pub mod entry;
pub mod hash;
pub mod merkle;
pub mod note;
pub mod retention;
pub mod trust;
pub mod verify;
pub mod witness;

pub use bundle::{
    BUNDLE_VERSION, Bundle, BundleError, BundleSlot, EarlierCheckpoint, build_bundle,
};
pub use checkpoint::{
    Checkpoint, CheckpointError, CosignatureCheck, CosignatureStatus, TreeHead, VerifiedCheckpoint,
    add_cosignatures, check_cosignatures, cosign, open_checkpoint, sign_checkpoint,
    verify_cosignature,
};
pub use codec::{DecodeError, EncodeError};
pub use entry::{
    ConsentStatus, Decision, ENTRY_VERSION, Entry, EntryError, EntryKind, FederationOp, GrantOp,
    PolicyOp, Principal, ReleaseOutcome, SubjectHash, SubjectHasher, SubjectSecretError,
};
pub use hash::{Hash, empty_root, leaf_hash, node_hash};
pub use merkle::{
    Frontier, HashStore, MemoryHashStore, MemoryTree, NodeKey, NodeWrite, ProofError, TreeError,
    consistency_proof, inclusion_proof, range_proof, root_at, root_from_leaves, verify_consistency,
    verify_inclusion, verify_range,
};
pub use note::{
    Ed25519Signer, KeyError, NoteError, NoteSignature, SignatureType, SignedNote, VerifierKey,
    generate_pkcs8, key_id,
};
pub use retention::{GroupCounts, RetentionPlan, RetentionSummary, plan_retention};
pub use trust::{TrustError, TrustFile, TrustedLog};
pub use verify::{
    Failure, StoreAudit, StoreFinding, StoreReport, VerifyReport, verify_bundle, verify_store,
};
pub use witness::{
    Comparison, Cosigned, RollbackFinding, SplitViewEvidence, WitnessError, WitnessState,
    check_rollback, compare_checkpoints, witness_checkpoint,
};
