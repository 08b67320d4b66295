//! Sealed streams: chunks encrypted under a key exported from the group's
//! current epoch, one key per (group, dataset, stream id).
//!
//! Chunk format (all integers big-endian):
//!
//! ```text
//! version u8 = 1 | epoch u64 | salt [16] | index u64 | flags u8 (1 = last) | ChaCha20-Poly1305 ciphertext and tag
//! ```
//!
//! The chunk key is HKDF-SHA256 of the exported secret with a random salt
//! the sealer draws per stream, so a stream id used again in the same epoch
//! (a node restarted mid-stream starting the stream over) never reuses a
//! key and nonce. The nonce is the chunk index (4 zero bytes, then the
//! index); the additional data is a domain label, the group id, dataset and
//! stream id (length-prefixed), the epoch, the salt, the index and the
//! flags. The receiver
//! expects indexes 0, 1, 2 … in order and a chunk flagged last before
//! [`Opener::finish`]: a dropped end (truncation), a reordered or repeated
//! chunk, a chunk of another stream or epoch, or a chunk after the last all
//! fail. The key is derived with MLS's exporter
//! (`MLS-Exporter("allmende stream v1", context, 32)`), so only members of
//! the epoch can derive it; a member removed by a commit cannot derive the
//! keys of later epochs.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// The exporter label of stream keys.
pub(crate) const EXPORT_LABEL: &str = "allmende stream v1";
const AAD_DOMAIN: &[u8] = b"allmende sealed chunk v1\0";
const VERSION: u8 = 1;
const LAST: u8 = 1;
const KEY_INFO: &[u8] = b"allmende stream key v1";
const SALT: usize = 16;
const HEADER: usize = 1 + 8 + SALT + 8 + 1;

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("malformed sealed chunk")]
    Malformed,
    #[error("chunk sealed in epoch {chunk}, the stream is open in epoch {stream}")]
    Epoch { chunk: u64, stream: u64 },
    #[error("chunk {got} out of order, expected chunk {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("chunk after the end of the stream")]
    AfterEnd,
    #[error("chunk belongs to another stream")]
    OtherStream,
    #[error("chunk failed authentication")]
    Authentication,
    #[error("stream ended without its authenticated last chunk")]
    Truncated,
    #[error("stream already finished")]
    Finished,
    #[error("chunk too large to seal")]
    TooLarge,
    #[error("cannot set up the stream key")]
    Key,
}

/// What identifies one stream's key and additional data.
#[derive(Debug, Clone)]
pub(crate) struct StreamIds {
    pub(crate) group: Vec<u8>,
    pub(crate) dataset: String,
    pub(crate) stream: String,
}

impl StreamIds {
    /// The exporter context.
    pub(crate) fn context(&self) -> Vec<u8> {
        let mut c = Vec::new();
        for part in [
            self.group.as_slice(),
            self.dataset.as_bytes(),
            self.stream.as_bytes(),
        ] {
            c.extend_from_slice(&(part.len() as u64).to_be_bytes());
            c.extend_from_slice(part);
        }
        c
    }

    fn aad(&self, epoch: u64, salt: &[u8; SALT], index: u64, flags: u8) -> Vec<u8> {
        let mut a = AAD_DOMAIN.to_vec();
        a.extend_from_slice(&self.context());
        a.extend_from_slice(&epoch.to_be_bytes());
        a.extend_from_slice(salt);
        a.extend_from_slice(&index.to_be_bytes());
        a.push(flags);
        a
    }
}

/// The stream's chunk key: HKDF-SHA256(salt, exported secret).
fn key(secret: &[u8], salt: &[u8; SALT]) -> Result<LessSafeKey, SealError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    let okm = prk
        .expand(&[KEY_INFO], &CHACHA20_POLY1305)
        .map_err(|_| SealError::Key)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sending side of a stream.
pub struct Sealer {
    ids: StreamIds,
    epoch: u64,
    salt: [u8; SALT],
    key: LessSafeKey,
    next: u64,
    finished: bool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("epoch", &self.epoch)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub(crate) fn new(ids: StreamIds, epoch: u64, mut secret: Vec<u8>) -> Result<Self, SealError> {
        let mut salt = [0u8; SALT];
        let drawn = SystemRandom::new().fill(&mut salt);
        let k = drawn
            .map_err(|_| SealError::Key)
            .and_then(|()| key(&secret, &salt));
        secret.fill(0);
        Ok(Self {
            key: k?,
            ids,
            epoch,
            salt,
            next: 0,
            finished: false,
        })
    }

    /// The epoch whose key seals this stream.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seals the next chunk.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_flagged(plaintext, 0)
    }

    /// Seals the last chunk (may be empty); the stream takes no chunk after
    /// it.
    pub fn finish(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let out = self.seal_flagged(plaintext, LAST)?;
        self.finished = true;
        Ok(out)
    }

    fn seal_flagged(&mut self, plaintext: &[u8], flags: u8) -> Result<Vec<u8>, SealError> {
        if self.finished {
            return Err(SealError::Finished);
        }
        let index = self.next;
        self.next = index.checked_add(1).ok_or(SealError::TooLarge)?;
        let mut out = Vec::with_capacity(HEADER + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&index.to_be_bytes());
        out.push(flags);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                nonce(index),
                Aad::from(self.ids.aad(self.epoch, &self.salt, index, flags)),
                &mut body,
            )
            .map_err(|_| SealError::TooLarge)?;
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// One opened chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The plaintext.
    pub data: Vec<u8>,
    /// True for the stream's authenticated last chunk.
    pub last: bool,
}

/// The receiving side of a stream.
pub struct Opener {
    ids: StreamIds,
    epoch: u64,
    secret: Vec<u8>,
    /// The stream's salt and key, from its first chunk.
    keyed: Option<([u8; SALT], LessSafeKey)>,
    next: u64,
    ended: bool,
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.secret.fill(0);
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("epoch", &self.epoch)
            .field("next", &self.next)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub(crate) fn new(ids: StreamIds, epoch: u64, secret: Vec<u8>) -> Result<Self, SealError> {
        Ok(Self {
            secret,
            keyed: None,
            ids,
            epoch,
            next: 0,
            ended: false,
        })
    }

    /// The epoch this stream is opened in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Opens the next chunk; any chunk but the expected one fails.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Chunk, SealError> {
        if sealed.len() < HEADER + 16 || sealed[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let epoch = u64::from_be_bytes(array8(&sealed[1..9])?);
        let salt: [u8; SALT] = sealed[9..9 + SALT]
            .try_into()
            .map_err(|_| SealError::Malformed)?;
        let index = u64::from_be_bytes(array8(&sealed[9 + SALT..17 + SALT])?);
        let flags = sealed[HEADER - 1];
        if flags & !LAST != 0 {
            return Err(SealError::Malformed);
        }
        if self.ended {
            return Err(SealError::AfterEnd);
        }
        if epoch != self.epoch {
            return Err(SealError::Epoch {
                chunk: epoch,
                stream: self.epoch,
            });
        }
        if index != self.next {
            return Err(SealError::OutOfOrder {
                expected: self.next,
                got: index,
            });
        }
        let k = match &self.keyed {
            Some((s, k)) if *s == salt => k,
            Some(_) => return Err(SealError::OtherStream),
            None => &self.keyed.insert((salt, key(&self.secret, &salt)?)).1,
        };
        let mut body = sealed[HEADER..].to_vec();
        let plain = k
            .open_in_place(
                nonce(index),
                Aad::from(self.ids.aad(epoch, &salt, index, flags)),
                &mut body,
            )
            .map_err(|_| SealError::Authentication)?;
        let data = plain.to_vec();
        self.next += 1;
        let last = flags & LAST != 0;
        self.ended = last;
        Ok(Chunk { data, last })
    }

    /// Ends the stream: fails unless the authenticated last chunk was
    /// opened, so a stream cut short is never taken as complete.
    pub fn finish(self) -> Result<(), SealError> {
        if self.ended {
            Ok(())
        } else {
            Err(SealError::Truncated)
        }
    }
}

fn array8(b: &[u8]) -> Result<[u8; 8], SealError> {
    b.try_into().map_err(|_| SealError::Malformed)
}
