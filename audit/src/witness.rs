//! Witness logic as pure functions: cosign a peer's checkpoint if it is
//! consistent with the last one seen, otherwise report a split view or an
//! unproven (inconsistent) checkpoint; compare two checkpoints; detect a
//! rolled-back log against checkpoints witnesses have cosigned.
//!
//! The witness state per log is a [`WitnessState`]: the last checkpoint it
//! cosigned, with the signed note kept as evidence. The caller persists it
//! (compare-and-swap against concurrent updates) before returning the
//! cosignature.

use crate::checkpoint::{CheckpointError, TreeHead, VerifiedCheckpoint, cosign, open_checkpoint};
use crate::hash::Hash;
use crate::merkle::{HashStore, ProofError, TreeError, root_at, verify_consistency};
use crate::note::{Ed25519Signer, NoteSignature, VerifierKey};

/// What a witness remembers about a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessState {
    /// Log origin.
    pub origin: String,
    /// Last cosigned size and root.
    pub head: TreeHead,
    /// The signed checkpoint note it cosigned (evidence).
    pub note: String,
}

/// Two checkpoints signed by the same log that cannot both be honest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitViewEvidence {
    /// Log origin.
    pub origin: String,
    /// The earlier-seen checkpoint.
    pub seen: TreeHead,
    /// Its signed note.
    pub seen_note: String,
    /// The conflicting checkpoint.
    pub presented: TreeHead,
    /// Its signed note.
    pub presented_note: String,
}

/// The witness refuses to cosign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The presented checkpoint is malformed or not signed by the log.
    #[error("checkpoint rejected: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint is for another log.
    #[error("checkpoint origin `{got}` differs from the witnessed origin `{expected}`")]
    OriginMismatch {
        /// Expected origin.
        expected: String,
        /// Presented origin.
        got: String,
    },
    /// The log presented a smaller tree than the witness already cosigned.
    #[error("log presented tree size {presented}, the witness already cosigned size {seen}")]
    Stale {
        /// Size already cosigned.
        seen: u64,
        /// Size presented.
        presented: u64,
    },
    /// Same size, different root: proof that the log shows different views.
    #[error("split view: log `{}` signed two different roots for tree size {}", .0.origin, .0.seen.size)]
    SplitView(Box<SplitViewEvidence>),
    /// The consistency proof to the last cosigned checkpoint does not verify.
    #[error(
        "checkpoint of size {new_size} is not proven consistent with cosigned size {old_size}: {reason}"
    )]
    Inconsistent {
        /// Cosigned size.
        old_size: u64,
        /// Presented size.
        new_size: u64,
        /// Why the proof failed.
        reason: ProofError,
        /// Both signed checkpoints.
        evidence: Box<SplitViewEvidence>,
    },
}

/// A cosignature plus the new witness state to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    /// The cosignature line to return to the log.
    pub cosignature: NoteSignature,
    /// The new state (persist before releasing the cosignature).
    pub state: WitnessState,
}

/// Witnesses a checkpoint: verifies the log signature, checks consistency
/// with `last` (if any) and cosigns at `now_unix_s`.
///
/// With no previous state the first checkpoint is trusted on first use and
/// the proof is ignored.
pub fn witness_checkpoint(
    cosigner: &Ed25519Signer,
    log_keys: &[VerifierKey],
    last: Option<&WitnessState>,
    presented_note: &[u8],
    consistency_proof: &[Hash],
    now_unix_s: u64,
) -> Result<Cosigned, WitnessError> {
    let v = open_checkpoint(presented_note, log_keys)?;
    let presented = v.checkpoint.tree_head();
    let note = v.note.encode();
    if let Some(last) = last {
        if last.origin != v.checkpoint.origin {
            return Err(WitnessError::OriginMismatch {
                expected: last.origin.clone(),
                got: v.checkpoint.origin.clone(),
            });
        }
        let evidence = || {
            Box::new(SplitViewEvidence {
                origin: last.origin.clone(),
                seen: last.head,
                seen_note: last.note.clone(),
                presented,
                presented_note: note.clone(),
            })
        };
        if presented.size < last.head.size {
            return Err(WitnessError::Stale {
                seen: last.head.size,
                presented: presented.size,
            });
        }
        if presented.size == last.head.size {
            if presented.root != last.head.root {
                return Err(WitnessError::SplitView(evidence()));
            }
        } else if let Err(reason) = verify_consistency(
            last.head.size,
            presented.size,
            &last.head.root,
            &presented.root,
            consistency_proof,
        ) {
            return Err(WitnessError::Inconsistent {
                old_size: last.head.size,
                new_size: presented.size,
                reason,
                evidence: evidence(),
            });
        }
    }
    let cosignature = cosign(cosigner, v.note.text(), now_unix_s)?;
    Ok(Cosigned {
        cosignature,
        state: WitnessState {
            origin: v.checkpoint.origin,
            head: presented,
            note,
        },
    })
}

/// Outcome of comparing two verified checkpoints of the same log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Consistent (equal, or the proof verified).
    Consistent,
    /// Same size, different roots.
    SplitView(Box<SplitViewEvidence>),
    /// Different sizes and the proof from the smaller to the larger failed.
    Unproven(ProofError),
    /// Different origins: not comparable.
    DifferentLogs,
}

/// Compares two checkpoints of the same log; `proof` is the consistency
/// proof from the smaller to the larger tree.
pub fn compare_checkpoints(
    a: &VerifiedCheckpoint,
    b: &VerifiedCheckpoint,
    proof: &[Hash],
) -> Comparison {
    if a.checkpoint.origin != b.checkpoint.origin {
        return Comparison::DifferentLogs;
    }
    let (old, new) = if a.checkpoint.size <= b.checkpoint.size {
        (a, b)
    } else {
        (b, a)
    };
    if old.checkpoint.size == new.checkpoint.size && old.checkpoint.root != new.checkpoint.root {
        return Comparison::SplitView(Box::new(SplitViewEvidence {
            origin: old.checkpoint.origin.clone(),
            seen: old.checkpoint.tree_head(),
            seen_note: old.note.encode(),
            presented: new.checkpoint.tree_head(),
            presented_note: new.note.encode(),
        }));
    }
    match verify_consistency(
        old.checkpoint.size,
        new.checkpoint.size,
        &old.checkpoint.root,
        &new.checkpoint.root,
        proof,
    ) {
        Ok(()) => Comparison::Consistent,
        Err(e) => Comparison::Unproven(e),
    }
}

/// A local log contradicts a checkpoint a witness cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackFinding {
    /// The local log is shorter than a witnessed checkpoint (restored from an
    /// older backup, or truncated).
    Behind {
        /// Witness that cosigned.
        witness: String,
        /// Local size.
        local_size: u64,
        /// Witnessed size.
        witnessed_size: u64,
    },
    /// The local tree at the witnessed size has a different root (forked or
    /// rewritten history).
    Forked {
        /// Witness that cosigned.
        witness: String,
        /// Size.
        size: u64,
        /// Local root at that size.
        local_root: Hash,
        /// Witnessed root.
        witnessed_root: Hash,
    },
}

/// Checks the local log (store + size) against the checkpoints its witnesses
/// cosigned (`(witness name, tree head)`, already verified by the caller).
/// An empty result means no rollback was detected.
pub fn check_rollback<S: HashStore>(
    store: &S,
    local_size: u64,
    witnessed: &[(String, TreeHead)],
) -> Result<Vec<RollbackFinding>, TreeError<S::Error>> {
    let mut out = Vec::new();
    for (witness, head) in witnessed {
        if head.size > local_size {
            out.push(RollbackFinding::Behind {
                witness: witness.clone(),
                local_size,
                witnessed_size: head.size,
            });
            continue;
        }
        let local_root = root_at(store, head.size)?;
        if local_root != head.root {
            out.push(RollbackFinding::Forked {
                witness: witness.clone(),
                size: head.size,
                local_root,
                witnessed_root: head.root,
            });
        }
    }
    Ok(out)
}
