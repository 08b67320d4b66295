//! Checkpoints (<https://c2sp.org/tlog-checkpoint>) and timestamped Ed25519
//! cosignatures (<https://c2sp.org/tlog-cosignature>, signature type `0x04`).
//!
//! A checkpoint's note text is three lines: origin, tree size (decimal, no
//! leading zeros), base64 root hash; optional extension lines follow (this
//! crate never writes any). The log signs it with a plain Ed25519 note
//! signature (`0x01`). A witness cosigns it with a `0x04` signature whose bytes
//! are `timestamp (u64 BE, unix seconds) ‖ Ed25519 signature` over
//!
//! ```text
//! cosignature/v1
//! time <timestamp>
//! <the whole checkpoint note text>
//! ```

use crate::hash::{Hash, empty_root};
use crate::note::{
    Ed25519Signer, KeyError, NoteError, NoteSignature, SignatureType, SignedNote, VerifierKey,
    is_valid_key_name,
};

/// Size and root of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TreeHead {
    /// Number of leaves.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

/// The body of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log identity, e.g. `stadt.allmende.example/audit`.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// Extension lines (opaque, non-empty).
    pub extensions: Vec<String>,
}

/// A checkpoint is malformed or not validly signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The signed note is malformed.
    #[error("malformed checkpoint note: {0}")]
    Note(#[from] NoteError),
    /// The text does not have origin, size and root lines.
    #[error("checkpoint text has fewer than three lines")]
    TooFewLines,
    /// The origin is empty or contains whitespace or `+`.
    #[error("checkpoint origin `{0}` is empty or contains whitespace or `+`")]
    BadOrigin(String),
    /// The size line is not a canonical decimal u64.
    #[error("checkpoint size `{0}` is not a decimal number without leading zeros")]
    BadSize(String),
    /// The root line is not base64 of 32 bytes.
    #[error("checkpoint root `{0}` is not the base64 encoding of 32 bytes")]
    BadRoot(String),
    /// An extension line is empty.
    #[error("checkpoint has an empty extension line")]
    EmptyExtension,
    /// A size-0 checkpoint with a root other than the empty-tree hash.
    #[error("checkpoint of size 0 must have the empty-tree root")]
    BadEmptyRoot,
    /// A signature from a trusted key does not verify.
    #[error("signature of trusted key `{name}` ({key_id:08x}) does not verify")]
    SignatureInvalid {
        /// Key name.
        name: String,
        /// Key id.
        key_id: u32,
    },
    /// No signature from a trusted key.
    #[error("checkpoint for `{origin}` carries no signature from a trusted log key")]
    NoTrustedSignature {
        /// Origin.
        origin: String,
    },
    /// A cosignature timestamp above 2^63 - 1.
    #[error("cosignature timestamp {0} exceeds 2^63 - 1")]
    BadTimestamp(u64),
    /// A key has the wrong type.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        if !is_valid_key_name(origin) {
            return Err(CheckpointError::BadOrigin(origin.to_owned()));
        }
        if size == 0 && root != empty_root() {
            return Err(CheckpointError::BadEmptyRoot);
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions: Vec::new(),
        })
    }

    /// Size and root.
    pub fn tree_head(&self) -> TreeHead {
        TreeHead {
            size: self.size,
            root: self.root,
        }
    }

    /// The note text (ends with a newline).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint note text.
    pub fn parse_text(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::TooFewLines)?;
        let mut lines = body.split('\n');
        let origin = lines.next().ok_or(CheckpointError::TooFewLines)?;
        let size_s = lines.next().ok_or(CheckpointError::TooFewLines)?;
        let root_s = lines.next().ok_or(CheckpointError::TooFewLines)?;
        // The spec only recommends key-name syntax for origins; we require it
        // because our origins double as key names and trust-file keys.
        if !is_valid_key_name(origin) {
            return Err(CheckpointError::BadOrigin(short(origin)));
        }
        let size = parse_size(size_s)?;
        let root =
            Hash::from_base64(root_s).map_err(|_| CheckpointError::BadRoot(short(root_s)))?;
        let mut extensions = Vec::new();
        for l in lines {
            if l.is_empty() {
                return Err(CheckpointError::EmptyExtension);
            }
            extensions.push(l.to_owned());
        }
        if size == 0 && root != empty_root() {
            return Err(CheckpointError::BadEmptyRoot);
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

fn parse_size(s: &str) -> Result<u64, CheckpointError> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(CheckpointError::BadSize(short(s)));
    }
    s.parse::<u64>()
        .map_err(|_| CheckpointError::BadSize(short(s)))
}

/// Signs a checkpoint with the log key (`0x01`); returns the signed note.
pub fn sign_checkpoint(
    signer: &Ed25519Signer,
    checkpoint: &Checkpoint,
) -> Result<String, CheckpointError> {
    let text = checkpoint.to_text();
    let mut note = SignedNote::new(&text)?;
    note.add_signature(signer.sign_note(&text)?)?;
    Ok(note.encode())
}

/// A checkpoint whose log signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The whole note (with all signature lines, incl. cosignatures).
    pub note: SignedNote,
    /// Name of the log key that verified.
    pub log_key_name: String,
    /// Key id of the log key that verified.
    pub log_key_id: u32,
}

/// Parses a signed checkpoint and verifies it against the log's keys
/// (`0x01`). Signatures from unknown keys are ignored (they may be
/// cosignatures or rotated-out keys); a signature from a known key that fails
/// rejects the note; at least one known key must have signed.
pub fn open_checkpoint(
    note: &[u8],
    log_keys: &[VerifierKey],
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let note = SignedNote::parse(note)?;
    let checkpoint = Checkpoint::parse_text(note.text())?;
    let mut verified: Option<(String, u32)> = None;
    for sig in note.signatures() {
        for key in log_keys
            .iter()
            .filter(|k| k.signature_type() == SignatureType::Ed25519)
        {
            if !key.matches(sig) {
                continue;
            }
            if !key.verify_note_signature(note.text(), sig) {
                return Err(CheckpointError::SignatureInvalid {
                    name: sig.name.clone(),
                    key_id: sig.key_id,
                });
            }
            verified.get_or_insert_with(|| (key.name().to_owned(), key.key_id()));
        }
    }
    let (log_key_name, log_key_id) =
        verified.ok_or_else(|| CheckpointError::NoTrustedSignature {
            origin: checkpoint.origin.clone(),
        })?;
    Ok(VerifiedCheckpoint {
        checkpoint,
        note,
        log_key_name,
        log_key_id,
    })
}

/// The message a `cosignature/v1` Ed25519 cosignature signs.
pub fn cosignature_message(note_text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{note_text}")
}

/// Largest timestamp the cosignature format allows (2^63 - 1).
pub const MAX_COSIGNATURE_TIMESTAMP: u64 = i64::MAX as u64;

/// Creates a timestamped Ed25519 cosignature (`0x04`) over a checkpoint text.
pub fn cosign(
    cosigner: &Ed25519Signer,
    checkpoint_text: &str,
    timestamp: u64,
) -> Result<NoteSignature, CheckpointError> {
    if cosigner.signature_type() != SignatureType::CosignatureV1 {
        return Err(KeyError::WrongType {
            name: cosigner.name().to_owned(),
            expected: SignatureType::CosignatureV1.byte(),
            got: cosigner.signature_type().byte(),
        }
        .into());
    }
    Checkpoint::parse_text(checkpoint_text)?;
    if timestamp > MAX_COSIGNATURE_TIMESTAMP {
        return Err(CheckpointError::BadTimestamp(timestamp));
    }
    let msg = cosignature_message(checkpoint_text, timestamp);
    let mut sig = Vec::with_capacity(72);
    sig.extend_from_slice(&timestamp.to_be_bytes());
    sig.extend_from_slice(&cosigner.sign_raw(msg.as_bytes()));
    Ok(NoteSignature {
        name: cosigner.name().to_owned(),
        key_id: cosigner.key_id(),
        signature: sig,
    })
}

/// Verifies a `0x04` cosignature; returns its timestamp.
pub fn verify_cosignature(key: &VerifierKey, note_text: &str, sig: &NoteSignature) -> Option<u64> {
    if key.signature_type() != SignatureType::CosignatureV1 || !key.matches(sig) {
        return None;
    }
    if sig.signature.len() != 8 + 64 {
        return None;
    }
    let (ts, ed) = sig.signature.split_at(8);
    let ts: [u8; 8] = ts.try_into().ok()?;
    let timestamp = u64::from_be_bytes(ts);
    if timestamp > MAX_COSIGNATURE_TIMESTAMP {
        return None;
    }
    let msg = cosignature_message(note_text, timestamp);
    key.verify_ed25519(msg.as_bytes(), ed).then_some(timestamp)
}

/// Result of checking one trusted witness against a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CosignatureStatus {
    /// A valid cosignature, made at `timestamp` (unix seconds).
    Valid {
        /// Cosignature time.
        timestamp: u64,
    },
    /// A signature line claims to be from this witness but does not verify.
    Invalid,
    /// The note has no signature line from this witness.
    Missing,
}

/// One trusted witness's cosignature status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureCheck {
    /// Witness key name.
    pub witness: String,
    /// Witness key id.
    pub key_id: u32,
    /// Status.
    pub status: CosignatureStatus,
}

/// Checks the note's cosignatures against each trusted witness key.
pub fn check_cosignatures(note: &SignedNote, witnesses: &[VerifierKey]) -> Vec<CosignatureCheck> {
    witnesses
        .iter()
        .map(|w| {
            let mut status = CosignatureStatus::Missing;
            for sig in note.signatures().iter().filter(|s| w.matches(s)) {
                match verify_cosignature(w, note.text(), sig) {
                    Some(timestamp) => {
                        if status == CosignatureStatus::Missing {
                            status = CosignatureStatus::Valid { timestamp };
                        }
                    }
                    None => {
                        status = CosignatureStatus::Invalid;
                        break;
                    }
                }
            }
            CosignatureCheck {
                witness: w.name().to_owned(),
                key_id: w.key_id(),
                status,
            }
        })
        .collect()
}

/// Adds cosignature lines to a signed checkpoint note.
pub fn add_cosignatures(
    note: &str,
    cosignatures: &[NoteSignature],
) -> Result<String, CheckpointError> {
    let mut n = SignedNote::parse(note.as_bytes())?;
    for c in cosignatures {
        n.add_signature(c.clone())?;
    }
    Ok(n.encode())
}
