//! The offline verifier for export bundles ([`verify_bundle`]) and the
//! tamper check for a node's own store ([`StoreAudit`], [`verify_store`]).
//!
//! Both name exactly what failed: the sequence number of a modified entry,
//! the key of a failing signature, the subtree whose stored hash is wrong.

use std::fmt;

use crate::bundle::{Bundle, BundleSlot};
use crate::checkpoint::{
    Checkpoint, CheckpointError, CosignatureCheck, CosignatureStatus, TreeHead, check_cosignatures,
    open_checkpoint,
};
use crate::entry::Entry;
use crate::hash::{Hash, leaf_hash, node_hash};
use crate::merkle::{HashStore, TreeError, verify_consistency, verify_range};
use crate::note::SignedNote;
use crate::trust::TrustFile;

/// One named problem found by [`verify_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The bundle bytes are not a well-formed bundle.
    MalformedBundle(String),
    /// The checkpoint note or text is malformed.
    MalformedCheckpoint(String),
    /// The trust file has no log with this origin.
    UnknownLog {
        /// Origin.
        origin: String,
    },
    /// A trusted log key's signature does not verify.
    LogSignatureInvalid {
        /// Key name.
        key: String,
        /// Key id.
        key_id: u32,
    },
    /// No signature by a trusted log key.
    NoTrustedLogSignature {
        /// Origin.
        origin: String,
    },
    /// A trusted witness's cosignature does not verify.
    CosignatureInvalid {
        /// Witness key name.
        witness: String,
        /// Key id.
        key_id: u32,
    },
    /// Fewer valid cosignatures than the trust file requires.
    WitnessQuorumNotMet {
        /// Valid cosignatures.
        valid: usize,
        /// Required.
        required: usize,
        /// Trusted witnesses without a valid cosignature.
        missing: Vec<String>,
    },
    /// The range lies outside the checkpoint's tree.
    RangeOutsideTree {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// Tree size.
        size: u64,
    },
    /// The leaf hashes of the bundle do not lead to the checkpoint root.
    RangeProofInvalid {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// Why.
        reason: String,
    },
    /// The entry body does not match its leaf hash: it was modified.
    EntryModified {
        /// Sequence number (leaf index) of the entry.
        sequence: u64,
    },
    /// The entry body matches its leaf hash but cannot be decoded.
    EntryUndecodable {
        /// Sequence number (leaf index).
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// The entry's sequence field differs from its position in the log.
    EntrySequenceMismatch {
        /// Leaf index.
        index: u64,
        /// Value of the sequence field.
        claimed: u64,
    },
    /// The earlier checkpoint is malformed, untrusted or for another log.
    EarlierCheckpointInvalid {
        /// Why.
        reason: String,
    },
    /// The earlier checkpoint is not proven consistent with the bundle's.
    ConsistencyProofInvalid {
        /// Earlier size.
        old_size: u64,
        /// Bundle checkpoint size.
        new_size: u64,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::MalformedBundle(r) => write!(f, "bundle is malformed: {r}"),
            Failure::MalformedCheckpoint(r) => write!(f, "checkpoint is malformed: {r}"),
            Failure::UnknownLog { origin } => {
                write!(f, "trust file has no keys for log `{origin}`")
            }
            Failure::LogSignatureInvalid { key, key_id } => {
                write!(f, "log signature by `{key}` ({key_id:08x}) does not verify")
            }
            Failure::NoTrustedLogSignature { origin } => {
                write!(
                    f,
                    "checkpoint of `{origin}` is not signed by any trusted log key"
                )
            }
            Failure::CosignatureInvalid { witness, key_id } => {
                write!(
                    f,
                    "cosignature by witness `{witness}` ({key_id:08x}) does not verify"
                )
            }
            Failure::WitnessQuorumNotMet {
                valid,
                required,
                missing,
            } => write!(
                f,
                "{valid} valid cosignatures, {required} required; missing: {}",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Failure::RangeOutsideTree { start, end, size } => {
                write!(
                    f,
                    "entries {start}..{end} lie outside the checkpoint's tree of size {size}"
                )
            }
            Failure::RangeProofInvalid { start, end, reason } => write!(
                f,
                "leaf hashes of entries {start}..{end} do not match the checkpoint root: {reason}"
            ),
            Failure::EntryModified { sequence } => {
                write!(
                    f,
                    "entry {sequence} was modified: its bytes do not match its leaf hash"
                )
            }
            Failure::EntryUndecodable { sequence, reason } => {
                write!(f, "entry {sequence} cannot be decoded: {reason}")
            }
            Failure::EntrySequenceMismatch { index, claimed } => {
                write!(
                    f,
                    "entry at position {index} claims sequence number {claimed}"
                )
            }
            Failure::EarlierCheckpointInvalid { reason } => {
                write!(f, "earlier checkpoint is invalid: {reason}")
            }
            Failure::ConsistencyProofInvalid {
                old_size,
                new_size,
                reason,
            } => write!(
                f,
                "checkpoint of size {new_size} is not proven consistent with earlier size {old_size}: {reason}"
            ),
        }
    }
}

impl Failure {
    /// The entry sequence number this failure names, if any.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Failure::EntryModified { sequence } | Failure::EntryUndecodable { sequence, .. } => {
                Some(*sequence)
            }
            Failure::EntrySequenceMismatch { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Result of [`verify_bundle`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Log origin from the checkpoint.
    pub origin: Option<String>,
    /// Checkpoint size and root.
    pub tree_head: Option<TreeHead>,
    /// Range `[start, end)` of the bundle.
    pub range: Option<(u64, u64)>,
    /// The log key that verified the checkpoint (name, key id).
    pub log_key: Option<(String, u32)>,
    /// Status of each trusted witness.
    pub cosignatures: Vec<CosignatureCheck>,
    /// Size of the earlier checkpoint proven consistent, if any.
    pub consistent_with: Option<TreeHead>,
    /// Entries whose bytes matched their leaf hash.
    pub entries_matched: u64,
    /// Pruned positions (leaf hash only).
    pub entries_pruned: u64,
    /// Omitted positions (leaf hash only).
    pub entries_omitted: u64,
    /// Every problem found; empty means the bundle verified.
    pub failures: Vec<Failure>,
    /// Decoded entries, filled only if the whole bundle verified.
    pub entries: Vec<Entry>,
}

impl VerifyReport {
    /// Whether everything verified.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Sequence numbers of entries named by failures.
    pub fn failed_sequences(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.failures.iter().filter_map(Failure::sequence).collect();
        v.dedup();
        v
    }
}

/// Verifies an export bundle offline against the verifier's trust file.
///
/// Checks the checkpoint's log signature (keys from the trust file only),
/// the cosignatures and the witness quorum, the range proof from the leaf
/// hashes to the checkpoint root, every entry body against its leaf hash, the
/// entries' sequence fields, and the consistency proof to an earlier
/// checkpoint if present. Every failure is listed; nothing short-circuits
/// after the bundle structure decoded.
pub fn verify_bundle(bytes: &[u8], trust: &TrustFile) -> VerifyReport {
    let mut report = VerifyReport::default();
    let bundle = match Bundle::decode(bytes) {
        Ok(b) => b,
        Err(e) => {
            report
                .failures
                .push(Failure::MalformedBundle(e.to_string()));
            return report;
        }
    };
    let start = bundle.start;
    let end = bundle.end();
    report.range = Some((start, end));

    // 1. Checkpoint and its log signature.
    let parsed = SignedNote::parse(bundle.checkpoint.as_bytes())
        .map_err(CheckpointError::from)
        .and_then(|n| Checkpoint::parse_text(n.text()).map(|c| (n, c)));
    let (note, cp) = match parsed {
        Ok(x) => x,
        Err(e) => {
            report
                .failures
                .push(Failure::MalformedCheckpoint(e.to_string()));
            check_entries(&bundle, &mut report);
            return report;
        }
    };
    report.origin = Some(cp.origin.clone());
    report.tree_head = Some(cp.tree_head());
    let log = trust.log(&cp.origin);
    let mut checkpoint_trusted = false;
    match log {
        None => report.failures.push(Failure::UnknownLog {
            origin: cp.origin.clone(),
        }),
        Some(log) => match open_checkpoint(bundle.checkpoint.as_bytes(), &log.keys) {
            Ok(v) => {
                checkpoint_trusted = true;
                report.log_key = Some((v.log_key_name, v.log_key_id));
            }
            Err(CheckpointError::SignatureInvalid { name, key_id }) => {
                report
                    .failures
                    .push(Failure::LogSignatureInvalid { key: name, key_id });
            }
            Err(CheckpointError::NoTrustedSignature { origin }) => {
                report
                    .failures
                    .push(Failure::NoTrustedLogSignature { origin });
            }
            Err(e) => report
                .failures
                .push(Failure::MalformedCheckpoint(e.to_string())),
        },
    }

    // 2. Cosignatures.
    report.cosignatures = check_cosignatures(&note, trust.witnesses());
    let mut valid = 0usize;
    let mut missing = Vec::new();
    for c in &report.cosignatures {
        match c.status {
            CosignatureStatus::Valid { .. } => valid += 1,
            CosignatureStatus::Invalid => {
                report.failures.push(Failure::CosignatureInvalid {
                    witness: c.witness.clone(),
                    key_id: c.key_id,
                });
                missing.push(c.witness.clone());
            }
            CosignatureStatus::Missing => missing.push(c.witness.clone()),
        }
    }
    if valid < trust.quorum() {
        report.failures.push(Failure::WitnessQuorumNotMet {
            valid,
            required: trust.quorum(),
            missing,
        });
    }

    // 3. Range proof: leaf hashes → root.
    let mut range_ok = false;
    if end > cp.size || bundle.leaf_hashes.is_empty() {
        report.failures.push(Failure::RangeOutsideTree {
            start,
            end,
            size: cp.size,
        });
    } else {
        match verify_range(
            start,
            &bundle.leaf_hashes,
            cp.size,
            &bundle.range_proof,
            &cp.root,
        ) {
            Ok(()) => range_ok = true,
            Err(e) => report.failures.push(Failure::RangeProofInvalid {
                start,
                end,
                reason: e.to_string(),
            }),
        }
    }

    // 4. Entries against their leaf hashes.
    let decoded = check_entries(&bundle, &mut report);

    // 5. Earlier checkpoint.
    if let (Some(earlier), Some(log)) = (&bundle.earlier, log) {
        match open_checkpoint(earlier.note.as_bytes(), &log.keys) {
            Err(e) => report.failures.push(Failure::EarlierCheckpointInvalid {
                reason: e.to_string(),
            }),
            Ok(old) if old.checkpoint.origin != cp.origin => {
                report.failures.push(Failure::EarlierCheckpointInvalid {
                    reason: format!("it is for log `{}`", old.checkpoint.origin),
                });
            }
            Ok(old) => match verify_consistency(
                old.checkpoint.size,
                cp.size,
                &old.checkpoint.root,
                &cp.root,
                &earlier.consistency_proof,
            ) {
                Ok(()) => report.consistent_with = Some(old.checkpoint.tree_head()),
                Err(e) => report.failures.push(Failure::ConsistencyProofInvalid {
                    old_size: old.checkpoint.size,
                    new_size: cp.size,
                    reason: e.to_string(),
                }),
            },
        }
    } else if bundle.earlier.is_some() {
        report.failures.push(Failure::EarlierCheckpointInvalid {
            reason: "no trusted keys for its log".to_owned(),
        });
    }

    if report.failures.is_empty() && checkpoint_trusted && range_ok {
        report.entries = decoded;
    }
    report
}

/// Checks each entry body against its leaf hash; returns decoded entries.
fn check_entries(bundle: &Bundle, report: &mut VerifyReport) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, (slot, h)) in bundle.slots.iter().zip(&bundle.leaf_hashes).enumerate() {
        let index = bundle
            .start
            .saturating_add(u64::try_from(i).unwrap_or(u64::MAX));
        match slot {
            BundleSlot::Pruned => report.entries_pruned += 1,
            BundleSlot::Omitted => report.entries_omitted += 1,
            BundleSlot::Entry(bytes) => {
                if leaf_hash(bytes) != *h {
                    report
                        .failures
                        .push(Failure::EntryModified { sequence: index });
                    continue;
                }
                report.entries_matched += 1;
                match Entry::decode(bytes) {
                    Err(e) => report.failures.push(Failure::EntryUndecodable {
                        sequence: index,
                        reason: e.to_string(),
                    }),
                    Ok(e) if e.sequence != index => {
                        report.failures.push(Failure::EntrySequenceMismatch {
                            index,
                            claimed: e.sequence,
                        });
                    }
                    Ok(e) => out.push(e),
                }
            }
        }
    }
    out
}

/// One problem found in a node's store by [`StoreAudit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFinding {
    /// The stored entry body does not match the stored leaf hash.
    EntryModified {
        /// Sequence number.
        sequence: u64,
    },
    /// The stored entry cannot be decoded.
    EntryUndecodable {
        /// Sequence number.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// The entry's sequence field differs from its key.
    EntrySequenceMismatch {
        /// Leaf index.
        index: u64,
        /// Field value.
        claimed: u64,
    },
    /// No entry (not even a pruned marker) at this index.
    EntryMissing {
        /// Sequence number.
        sequence: u64,
    },
    /// An entry exists beyond the log size.
    EntryBeyondSize {
        /// Index found.
        index: u64,
        /// Log size.
        size: u64,
    },
    /// An index was fed twice or out of order.
    EntryOutOfOrder {
        /// Index fed.
        index: u64,
        /// Index expected.
        expected: u64,
    },
    /// No stored leaf hash for this entry.
    LeafHashMissing {
        /// Sequence number.
        sequence: u64,
    },
    /// A stored interior hash differs from the one recomputed from the leaves.
    NodeMismatch {
        /// Level.
        level: u8,
        /// Index.
        index: u64,
        /// First entry under it.
        first_sequence: u64,
        /// Last entry under it.
        last_sequence: u64,
    },
    /// A stored interior hash is missing.
    NodeMissing {
        /// Level.
        level: u8,
        /// Index.
        index: u64,
    },
    /// The recomputed root at a signed checkpoint's size differs from it.
    CheckpointRootMismatch {
        /// Size.
        size: u64,
        /// Root in the checkpoint.
        checkpoint_root: Hash,
        /// Root recomputed from the store.
        computed_root: Hash,
    },
    /// The log is shorter than a signed checkpoint.
    LogShorterThanCheckpoint {
        /// Log size.
        log_size: u64,
        /// Checkpoint size.
        checkpoint_size: u64,
    },
}

impl fmt::Display for StoreFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFinding::EntryModified { sequence } => {
                write!(
                    f,
                    "entry {sequence} was modified: its bytes do not match the stored leaf hash"
                )
            }
            StoreFinding::EntryUndecodable { sequence, reason } => {
                write!(f, "entry {sequence} cannot be decoded: {reason}")
            }
            StoreFinding::EntrySequenceMismatch { index, claimed } => {
                write!(
                    f,
                    "entry stored at {index} claims sequence number {claimed}"
                )
            }
            StoreFinding::EntryMissing { sequence } => write!(f, "entry {sequence} is missing"),
            StoreFinding::EntryBeyondSize { index, size } => {
                write!(f, "entry {index} lies beyond the log size {size}")
            }
            StoreFinding::EntryOutOfOrder { index, expected } => {
                write!(
                    f,
                    "entry {index} was read out of order, expected {expected}"
                )
            }
            StoreFinding::LeafHashMissing { sequence } => {
                write!(f, "leaf hash of entry {sequence} is missing")
            }
            StoreFinding::NodeMismatch {
                level,
                index,
                first_sequence,
                last_sequence,
            } => write!(
                f,
                "stored tree hash at level {level}, index {index} (entries {first_sequence}..={last_sequence}) does not match the entries' leaf hashes"
            ),
            StoreFinding::NodeMissing { level, index } => {
                write!(
                    f,
                    "stored tree hash at level {level}, index {index} is missing"
                )
            }
            StoreFinding::CheckpointRootMismatch {
                size,
                checkpoint_root,
                computed_root,
            } => write!(
                f,
                "root at size {size} is {computed_root}, the signed checkpoint says {checkpoint_root}"
            ),
            StoreFinding::LogShorterThanCheckpoint {
                log_size,
                checkpoint_size,
            } => write!(
                f,
                "log has {log_size} entries, a signed checkpoint covers {checkpoint_size}"
            ),
        }
    }
}

impl StoreFinding {
    /// The entry sequence number this finding names, if any.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            StoreFinding::EntryModified { sequence }
            | StoreFinding::EntryUndecodable { sequence, .. }
            | StoreFinding::EntryMissing { sequence }
            | StoreFinding::LeafHashMissing { sequence } => Some(*sequence),
            StoreFinding::EntrySequenceMismatch { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Result of a store check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Entries read (bodies present).
    pub entries_checked: u64,
    /// Pruned entries (no body, leaf hash only).
    pub entries_pruned: u64,
    /// Log size (number of indices fed).
    pub size: u64,
    /// Root recomputed from the leaf hashes.
    pub root: Hash,
    /// Findings, in log order (capped at [`StoreAudit::MAX_FINDINGS`]).
    pub findings: Vec<StoreFinding>,
    /// Findings dropped because of the cap.
    pub findings_dropped: u64,
}

impl StoreReport {
    /// Whether the store verified.
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty() && self.findings_dropped == 0
    }

    /// The first finding that names an entry.
    pub fn first_modified_sequence(&self) -> Option<u64> {
        self.findings.iter().find_map(StoreFinding::sequence)
    }

    /// All entry sequence numbers named by findings.
    pub fn modified_sequences(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .findings
            .iter()
            .filter_map(StoreFinding::sequence)
            .collect();
        v.dedup();
        v
    }
}

/// Streaming tamper check of a node's store: feed every index in order,
/// then [`StoreAudit::finish`]. Recomputes each leaf hash from the stored
/// entry, compares it with the stored leaf hash, recomputes every complete
/// subtree hash and compares it with the stored one, and compares the root
/// at each signed checkpoint's size. Memory O(log n); one store read per
/// node.
#[derive(Debug)]
pub struct StoreAudit<'a, S: HashStore> {
    store: &'a S,
    size: u64,
    next: u64,
    stack: Vec<Hash>,
    checkpoints: Vec<TreeHead>,
    report: StoreReport,
}

impl<'a, S: HashStore> StoreAudit<'a, S> {
    /// Cap on recorded findings.
    pub const MAX_FINDINGS: usize = 10_000;

    /// Starts a check of a log of `size` entries; `checkpoints` are signed
    /// tree heads to compare with (e.g. the latest checkpoint and the ones
    /// witnesses cosigned).
    pub fn new(store: &'a S, size: u64, checkpoints: &[TreeHead]) -> Self {
        let mut cps = checkpoints.to_vec();
        cps.sort_by_key(|c| c.size);
        let mut audit = StoreAudit {
            store,
            size,
            next: 0,
            stack: Vec::new(),
            checkpoints: cps,
            report: StoreReport::default(),
        };
        audit.check_checkpoints_at_current_size();
        audit
    }

    fn find(&mut self, f: StoreFinding) {
        if self.report.findings.len() < Self::MAX_FINDINGS {
            self.report.findings.push(f);
        } else {
            self.report.findings_dropped += 1;
        }
    }

    fn stored(&self, level: u8, index: u64) -> Result<Option<Hash>, TreeError<S::Error>> {
        self.store.node(level, index).map_err(TreeError::Store)
    }

    /// Feeds the entry at `index` (`None` for a pruned entry).
    pub fn feed(&mut self, index: u64, body: Option<&[u8]>) -> Result<(), TreeError<S::Error>> {
        if index >= self.size {
            self.find(StoreFinding::EntryBeyondSize {
                index,
                size: self.size,
            });
            return Ok(());
        }
        if index < self.next {
            self.find(StoreFinding::EntryOutOfOrder {
                index,
                expected: self.next,
            });
            return Ok(());
        }
        while self.next < index {
            let missing = self.next;
            self.find(StoreFinding::EntryMissing { sequence: missing });
            self.push_leaf(missing, None)?;
        }
        self.push_leaf(index, body)
    }

    fn push_leaf(&mut self, index: u64, body: Option<&[u8]>) -> Result<(), TreeError<S::Error>> {
        let stored = self.stored(0, index)?;
        let leaf = match (body, stored) {
            (Some(bytes), stored) => {
                self.report.entries_checked += 1;
                let computed = leaf_hash(bytes);
                match stored {
                    None => self.find(StoreFinding::LeafHashMissing { sequence: index }),
                    Some(s) if s != computed => {
                        self.find(StoreFinding::EntryModified { sequence: index });
                    }
                    Some(_) => match Entry::decode(bytes) {
                        Err(e) => self.find(StoreFinding::EntryUndecodable {
                            sequence: index,
                            reason: e.to_string(),
                        }),
                        Ok(e) if e.sequence != index => {
                            self.find(StoreFinding::EntrySequenceMismatch {
                                index,
                                claimed: e.sequence,
                            })
                        }
                        Ok(_) => {}
                    },
                }
                // Continue the tree check from the stored leaf hash so that a
                // modified body is reported once, not again for every subtree.
                stored.unwrap_or(computed)
            }
            (None, Some(s)) => {
                self.report.entries_pruned += 1;
                s
            }
            (None, None) => {
                self.find(StoreFinding::LeafHashMissing { sequence: index });
                Hash::ZERO
            }
        };
        // Recompute complete subtrees and compare with the stored ones.
        let n = index;
        let mut h = leaf;
        let mut level = 0u8;
        while (n >> level) & 1 == 1 {
            let left = self.stack.pop().unwrap_or(Hash::ZERO);
            h = node_hash(&left, &h);
            level += 1;
            let idx = n >> level;
            match self.stored(level, idx)? {
                None => self.find(StoreFinding::NodeMissing { level, index: idx }),
                Some(s) if s != h => {
                    let key = crate::merkle::NodeKey { level, index: idx };
                    self.find(StoreFinding::NodeMismatch {
                        level,
                        index: idx,
                        first_sequence: key.first_leaf(),
                        last_sequence: key.last_leaf(),
                    });
                }
                Some(_) => {}
            }
        }
        self.stack.push(h);
        self.next = index.saturating_add(1);
        self.check_checkpoints_at_current_size();
        Ok(())
    }

    fn current_root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(last) = it.next() else {
            return crate::hash::empty_root();
        };
        let mut acc = *last;
        for h in it {
            acc = node_hash(h, &acc);
        }
        acc
    }

    fn check_checkpoints_at_current_size(&mut self) {
        let size = self.next;
        let due: Vec<TreeHead> = self
            .checkpoints
            .iter()
            .filter(|c| c.size == size)
            .copied()
            .collect();
        if due.is_empty() {
            return;
        }
        let root = self.current_root();
        for c in due {
            if c.root != root {
                self.find(StoreFinding::CheckpointRootMismatch {
                    size,
                    checkpoint_root: c.root,
                    computed_root: root,
                });
            }
        }
    }

    /// Ends the check; missing trailing entries are reported.
    pub fn finish(mut self) -> Result<StoreReport, TreeError<S::Error>> {
        while self.next < self.size {
            let missing = self.next;
            self.find(StoreFinding::EntryMissing { sequence: missing });
            self.push_leaf(missing, None)?;
        }
        for c in self.checkpoints.clone() {
            if c.size > self.next {
                self.find(StoreFinding::LogShorterThanCheckpoint {
                    log_size: self.next,
                    checkpoint_size: c.size,
                });
            }
        }
        self.report.size = self.next;
        self.report.root = self.current_root();
        Ok(self.report)
    }
}

/// Convenience wrapper around [`StoreAudit`]: `entries` yields `(index,
/// body)` in index order (`None` for pruned entries).
pub fn verify_store<S, I, B>(
    store: &S,
    entries: I,
    expected_size: u64,
    checkpoints: &[TreeHead],
) -> Result<StoreReport, TreeError<S::Error>>
where
    S: HashStore,
    I: IntoIterator<Item = (u64, Option<B>)>,
    B: AsRef<[u8]>,
{
    let mut audit = StoreAudit::new(store, expected_size, checkpoints);
    for (index, body) in entries {
        audit.feed(index, body.as_ref().map(AsRef::as_ref))?;
    }
    audit.finish()
}
