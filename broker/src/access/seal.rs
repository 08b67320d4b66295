//! Tokens sealed by the node: what resume cursors and Arrow Flight tickets
//! share.
//!
//! A token is `<version>.` followed by base64url of a random 96-bit nonce
//! and the ChaCha20-Poly1305 encryption of a length-prefixed plaintext,
//! padded to a multiple of the format's padding so that the token's length
//! does not vary with what it holds. The key is derived from the node secret
//! under a label of the token kind's own; the associated data starts with
//! the kind's domain, binds the version and whatever fields the kind binds
//! the token to. A token is checked against the length cap before anything
//! is decoded; altered in any byte, truncated or made by another node it
//! does not open.

use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const TAG_LEN: usize = 16;

/// One kind of sealed token.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// The prefix before the dot, also bound in the associated data.
    pub version: &'static str,
    /// The start of the associated data: separates the kinds of token.
    pub domain: &'static [u8],
    /// The plaintext is padded to a multiple of this many bytes.
    pub pad: usize,
    /// Longest token accepted (characters), checked before decoding.
    pub max_len: usize,
}

/// Why a token does not open (or could not be sealed). Each kind of token
/// turns it into its own error with its own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    TooLong,
    UnknownVersion,
    Malformed,
    NotValid,
    Seal,
}

/// Seals and opens tokens of one [`Format`] with one node key.
pub struct Sealer {
    key: [u8; 32],
    rng: SystemRandom,
    format: Format,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("version", &self.format.version)
            .finish_non_exhaustive()
    }
}

/// The token text's encoding.
pub(super) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Sealer {
    /// A sealer with a 32-byte key (derived from the node secret).
    pub fn new(key: [u8; 32], format: Format) -> Self {
        Self {
            key,
            rng: SystemRandom::new(),
            format,
        }
    }

    /// The associated data: the domain, the version and `fields` (a tag and
    /// an optional value each, length-prefixed).
    fn aad(&self, fields: &[(u8, Option<&str>)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(self.format.domain);
        let mut field = |tag: u8, v: Option<&str>| {
            out.push(tag);
            match v {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        };
        field(b'v', Some(self.format.version));
        for (tag, v) in fields {
            field(*tag, *v);
        }
        out
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, &self.key).map_err(|_| SealError::Seal)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// The token for `plain`, bound to `fields`.
    pub fn seal(&self, plain: &[u8], fields: &[(u8, Option<&str>)]) -> Result<String, SealError> {
        let len = u32::try_from(plain.len()).map_err(|_| SealError::Seal)?;
        let pad = self.format.pad.max(1);
        let mut buf = Vec::with_capacity(4 + plain.len() + pad);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(plain);
        let padded = buf.len().div_ceil(pad) * pad;
        buf.resize(padded, 0);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Seal)?;
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(fields)),
                &mut buf,
            )
            .map_err(|_| SealError::Seal)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + buf.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&buf);
        let token = format!("{}.{}", self.format.version, b64().encode(raw));
        if token.len() > self.format.max_len {
            return Err(SealError::Seal);
        }
        Ok(token)
    }

    /// The plaintext of a token, if it opens under `fields`.
    pub fn open(&self, token: &str, fields: &[(u8, Option<&str>)]) -> Result<Vec<u8>, SealError> {
        if token.len() > self.format.max_len {
            return Err(SealError::TooLong);
        }
        let Some((version, body)) = token.split_once('.') else {
            return Err(SealError::UnknownVersion);
        };
        if version != self.format.version {
            return Err(SealError::UnknownVersion);
        }
        let mut raw = b64().decode(body).map_err(|_| SealError::Malformed)?;
        let pad = self.format.pad.max(1);
        if raw.len() < NONCE_LEN + TAG_LEN + pad
            || !(raw.len() - NONCE_LEN - TAG_LEN).is_multiple_of(pad)
        {
            return Err(SealError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let key = self.aead().map_err(|_| SealError::NotValid)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(fields)),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| SealError::NotValid)?;
        // Authenticated: from here on a failure is our own format's.
        let len = plain
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(SealError::NotValid)? as usize;
        plain
            .get(4..4 + len)
            .map(<[u8]>::to_vec)
            .ok_or(SealError::NotValid)
    }
}
