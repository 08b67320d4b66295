//! Export bundles: a contiguous range of log entries with everything needed
//! to verify them offline (see `BUNDLE.md` for the format).
//!
//! A bundle holds the signed (and cosigned) checkpoint, the leaf hashes of
//! the range, the entry bodies (or a marker for pruned / omitted entries), a
//! range proof tying the leaf hashes to the checkpoint root, and optionally
//! an earlier checkpoint with a consistency proof to the bundle's checkpoint.

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::hash::{HASH_LEN, Hash};
use crate::merkle::{HashStore, TreeError, consistency_proof, range_proof};
use crate::note::SignedNote;

/// Magic prefix of a bundle.
pub const BUNDLE_MAGIC: &[u8; 8] = b"ALMAUDIT";
/// Version byte of the bundle format produced by this crate.
pub const BUNDLE_VERSION: u8 = 1;

/// One position of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSlot {
    /// The canonical entry encoding.
    Entry(Vec<u8>),
    /// The entry body was deleted by retention; only its leaf hash remains.
    Pruned,
    /// The exporter left the entry out (e.g. a filtered export); only its
    /// leaf hash is included.
    Omitted,
}

/// An earlier checkpoint and the consistency proof from it to the bundle's
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierCheckpoint {
    /// Signed note of the earlier checkpoint.
    pub note: String,
    /// Consistency proof from its size to the bundle checkpoint's size.
    pub consistency_proof: Vec<Hash>,
}

/// A decoded export bundle (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Signed checkpoint note including cosignature lines.
    pub checkpoint: String,
    /// Leaf index of the first slot.
    pub start: u64,
    /// Leaf hashes of `[start, start + len)`.
    pub leaf_hashes: Vec<Hash>,
    /// Entry bodies (same length as `leaf_hashes`).
    pub slots: Vec<BundleSlot>,
    /// Range proof for the leaf hashes at the checkpoint's size.
    pub range_proof: Vec<Hash>,
    /// Optional earlier checkpoint.
    pub earlier: Option<EarlierCheckpoint>,
}

/// A bundle could not be built or decoded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError<E: std::error::Error + 'static> {
    /// Malformed bytes.
    #[error("malformed bundle: {0}")]
    Decode(#[from] DecodeError),
    /// A field too long to encode.
    #[error("bundle cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    /// A checkpoint is malformed.
    #[error("bundle checkpoint is malformed: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// Tree access failed.
    #[error("bundle cannot be built: {0}")]
    Tree(#[from] TreeError<E>),
    /// Mismatched lengths or ranges.
    #[error("bundle is inconsistent: {0}")]
    Inconsistent(String),
}

impl Bundle {
    /// Exclusive end of the range.
    pub fn end(&self) -> u64 {
        self.start
            .saturating_add(u64::try_from(self.leaf_hashes.len()).unwrap_or(u64::MAX))
    }

    /// Encodes the bundle.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::with_capacity(
            64 + self.checkpoint.len()
                + self.leaf_hashes.len() * (HASH_LEN + 8)
                + self
                    .slots
                    .iter()
                    .map(|s| match s {
                        BundleSlot::Entry(b) => b.len(),
                        _ => 0,
                    })
                    .sum::<usize>(),
        );
        w.raw(BUNDLE_MAGIC);
        w.u8(BUNDLE_VERSION);
        w.bytes32("checkpoint", self.checkpoint.as_bytes())?;
        w.u64(self.start);
        if self.slots.len() != self.leaf_hashes.len() {
            return Err(EncodeError::TooLong {
                field: "slots",
                len: self.slots.len(),
                max: self.leaf_hashes.len(),
            });
        }
        w.u64(u64::try_from(self.leaf_hashes.len()).unwrap_or(u64::MAX));
        for h in &self.leaf_hashes {
            w.hash(h);
        }
        for s in &self.slots {
            match s {
                BundleSlot::Entry(b) => {
                    w.u8(0);
                    w.bytes32("entry", b)?;
                }
                BundleSlot::Pruned => w.u8(1),
                BundleSlot::Omitted => w.u8(2),
            }
        }
        w.count16("range_proof", self.range_proof.len())?;
        for h in &self.range_proof {
            w.hash(h);
        }
        match &self.earlier {
            None => w.u8(0),
            Some(e) => {
                w.u8(1);
                w.bytes32("earlier.checkpoint", e.note.as_bytes())?;
                w.count16("earlier.consistency_proof", e.consistency_proof.len())?;
                for h in &e.consistency_proof {
                    w.hash(h);
                }
            }
        }
        Ok(w.into_inner())
    }

    /// Strictly decodes a bundle (structure only; see [`crate::verify_bundle`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let magic = r.take("magic", BUNDLE_MAGIC.len())?;
        if magic != BUNDLE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8("version")?;
        if version != BUNDLE_VERSION {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let checkpoint = utf8(r.bytes32("checkpoint")?, "checkpoint")?;
        let start = r.u64("start")?;
        let count = r.u64("count")?;
        // Each position needs a hash and at least one slot tag byte.
        let n = r.check_count("count", count, HASH_LEN + 1)?;
        let mut leaf_hashes = Vec::with_capacity(n);
        for _ in 0..n {
            leaf_hashes.push(r.hash("leaf_hashes")?);
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = r.u8("slot")?;
            slots.push(match tag {
                0 => BundleSlot::Entry(r.bytes32("entry")?.to_vec()),
                1 => BundleSlot::Pruned,
                2 => BundleSlot::Omitted,
                v => {
                    return Err(DecodeError::InvalidTag {
                        field: "slot",
                        value: u64::from(v),
                    });
                }
            });
        }
        let range_proof = read_hashes(&mut r, "range_proof")?;
        let earlier = if r.flag("earlier")? {
            let note = utf8(r.bytes32("earlier.checkpoint")?, "earlier.checkpoint")?;
            let consistency_proof = read_hashes(&mut r, "earlier.consistency_proof")?;
            Some(EarlierCheckpoint {
                note,
                consistency_proof,
            })
        } else {
            None
        };
        r.finish()?;
        Ok(Bundle {
            checkpoint,
            start,
            leaf_hashes,
            slots,
            range_proof,
            earlier,
        })
    }
}

fn utf8(b: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
}

fn read_hashes(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<Hash>, DecodeError> {
    let n = r.u16(field)?;
    let n = r.check_count(field, u64::from(n), HASH_LEN)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.hash(field)?);
    }
    Ok(v)
}

/// Builds a bundle from the store.
///
/// * `checkpoint_note`: the signed checkpoint (with cosignatures) to export
///   against; the range must lie within its tree size.
/// * `start` and `slots`: the range `[start, start + slots.len())` and its
///   bodies exactly as stored (the exporter must not "repair" anything: a
///   tampered body is exactly what the verifier has to find).
/// * `earlier_note`: an earlier signed checkpoint to prove consistency with.
///
/// Leaf hashes come from the store (level 0).
pub fn build_bundle<S: HashStore>(
    store: &S,
    checkpoint_note: &str,
    start: u64,
    slots: Vec<BundleSlot>,
    earlier_note: Option<&str>,
) -> Result<Bundle, BundleError<S::Error>> {
    let cp = Checkpoint::parse_text(
        SignedNote::parse(checkpoint_note.as_bytes())
            .map_err(CheckpointError::from)?
            .text(),
    )?;
    let count = u64::try_from(slots.len()).unwrap_or(u64::MAX);
    let end = start
        .checked_add(count)
        .ok_or_else(|| BundleError::Inconsistent("range end overflows".to_owned()))?;
    let proof = range_proof(store, start, end, cp.size)?;
    let mut leaf_hashes = Vec::with_capacity(slots.len());
    for i in start..end {
        let h = store
            .node(0, i)
            .map_err(|e| BundleError::Tree(TreeError::Store(e)))?
            .ok_or(BundleError::Tree(TreeError::MissingNode {
                level: 0,
                index: i,
            }))?;
        leaf_hashes.push(h);
    }
    let earlier = match earlier_note {
        None => None,
        Some(note) => {
            let old = Checkpoint::parse_text(
                SignedNote::parse(note.as_bytes())
                    .map_err(CheckpointError::from)?
                    .text(),
            )?;
            if old.origin != cp.origin {
                return Err(BundleError::Inconsistent(format!(
                    "earlier checkpoint is for `{}`, not `{}`",
                    old.origin, cp.origin
                )));
            }
            Some(EarlierCheckpoint {
                note: note.to_owned(),
                consistency_proof: consistency_proof(store, old.size, cp.size)?,
            })
        }
    };
    Ok(Bundle {
        checkpoint: checkpoint_note.to_owned(),
        start,
        leaf_hashes,
        slots,
        range_proof: proof,
        earlier,
    })
}
