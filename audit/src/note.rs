//! C2SP signed notes (<https://c2sp.org/signed-note>): parsing, formatting,
//! key ids, verifier keys (`vkey`s) and Ed25519 signers.
//!
//! Two signature types are supported:
//!
//! * `0x01` plain Ed25519 over the note text (the log's checkpoint signature),
//! * `0x04` timestamped Ed25519 cosignatures (<https://c2sp.org/tlog-cosignature>),
//!   see [`crate::checkpoint`].
//!
//! Key id = first 4 bytes (big-endian) of `SHA-256(name ‖ 0x0A ‖ type ‖ public key)`.
//! A verifier key is `<name>+<8 hex digits key id>+<base64(type ‖ public key)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

use crate::hash::sha256;

/// Maximum accepted size of a signed note in bytes.
pub const MAX_NOTE_LEN: usize = 256 * 1024;
/// Maximum accepted number of signature lines (the spec requires at least 16).
pub const MAX_SIGNATURES: usize = 256;

const SIG_PREFIX: &str = "\u{2014} ";

/// Note signature types this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureType {
    /// `0x01`: Ed25519 over the note text.
    Ed25519,
    /// `0x04`: timestamped Ed25519 cosignature (`cosignature/v1`).
    CosignatureV1,
}

impl SignatureType {
    /// The type byte.
    pub fn byte(self) -> u8 {
        match self {
            SignatureType::Ed25519 => 0x01,
            SignatureType::CosignatureV1 => 0x04,
        }
    }

    /// From the type byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(SignatureType::Ed25519),
            0x04 => Some(SignatureType::CosignatureV1),
            _ => None,
        }
    }
}

/// A signed note could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Longer than [`MAX_NOTE_LEN`].
    #[error("note has {len} bytes, at most {max} are accepted")]
    TooLong {
        /// Length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// Not valid UTF-8.
    #[error("note is not valid utf-8")]
    NotUtf8,
    /// Contains an ASCII control character other than newline.
    #[error("note contains control character {code:#04x} at byte {offset}")]
    ControlCharacter {
        /// The character.
        code: u32,
        /// Byte offset.
        offset: usize,
    },
    /// Does not end with a newline.
    #[error("note does not end with a newline")]
    NoFinalNewline,
    /// No blank line separating text and signatures.
    #[error("note has no blank line before its signatures")]
    NoSignatureBlock,
    /// No signature lines.
    #[error("note has no signatures")]
    NoSignatures,
    /// More signature lines than [`MAX_SIGNATURES`].
    #[error("note has more than {max} signatures")]
    TooManySignatures {
        /// Maximum.
        max: usize,
    },
    /// A signature line is malformed.
    #[error("signature line {line} is malformed: {reason}")]
    BadSignatureLine {
        /// 1-based line number within the signature block.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A key or verifier key is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key name is invalid.
    #[error("key name `{0}` is empty or contains whitespace or `+`")]
    BadName(String),
    /// The vkey does not have the form `name+keyid+base64`.
    #[error("verifier key `{0}` is not of the form `name+keyid+base64`")]
    BadFormat(String),
    /// The key id field is not 8 hex digits.
    #[error("verifier key `{0}` has a key id that is not 8 hex digits")]
    BadKeyId(String),
    /// The key id does not match the key.
    #[error("verifier key `{vkey}` declares key id {declared:08x}, the key has {computed:08x}")]
    KeyIdMismatch {
        /// The vkey.
        vkey: String,
        /// Declared.
        declared: u32,
        /// Computed.
        computed: u32,
    },
    /// Unsupported signature type byte.
    #[error("verifier key `{vkey}` has unsupported signature type {alg:#04x}")]
    UnsupportedType {
        /// The vkey.
        vkey: String,
        /// Type byte.
        alg: u8,
    },
    /// Wrong public key length.
    #[error("verifier key `{0}` does not hold a 32-byte ed25519 public key")]
    BadPublicKey(String),
    /// The private key was rejected.
    #[error("ed25519 private key rejected: {0}")]
    BadPrivateKey(String),
    /// Random generation failed.
    #[error("key generation failed")]
    Generation,
    /// The key has the wrong signature type for this use.
    #[error("key `{name}` has signature type {got:#04x}, {expected:#04x} is required here")]
    WrongType {
        /// Key name.
        name: String,
        /// Required.
        expected: u8,
        /// Found.
        got: u8,
    },
}

/// Validates a key name: non-empty, no Unicode whitespace, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Key id = `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]` as big-endian u32.
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8]) -> u32 {
    let mut buf = Vec::with_capacity(name.len() + 2 + public_key.len());
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.push(sig_type);
    buf.extend_from_slice(public_key);
    let h = sha256(&buf);
    u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]])
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key id.
    pub key_id: u32,
    /// Signature bytes after the key id (for `0x04`: timestamp ‖ signature).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// `— <name> <base64(key id ‖ signature)>\n`
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }
}

/// A parsed (not yet verified) signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    text: String,
    signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// A note with text (must end in a newline) and no signatures yet.
    pub fn new(text: &str) -> Result<Self, NoteError> {
        check_chars(text)?;
        if !text.ends_with('\n') {
            return Err(NoteError::NoFinalNewline);
        }
        Ok(SignedNote {
            text: text.to_owned(),
            signatures: Vec::new(),
        })
    }

    /// Parses a signed note. Hostile input yields an error, never a panic.
    pub fn parse(input: &[u8]) -> Result<Self, NoteError> {
        if input.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLong {
                len: input.len(),
                max: MAX_NOTE_LEN,
            });
        }
        let s = std::str::from_utf8(input).map_err(|_| NoteError::NotUtf8)?;
        check_chars(s)?;
        if !s.ends_with('\n') {
            return Err(NoteError::NoFinalNewline);
        }
        let split = s.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let text = s.get(..=split).ok_or(NoteError::NoSignatureBlock)?;
        let sigs = s.get(split + 2..).ok_or(NoteError::NoSignatureBlock)?;
        if sigs.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let mut signatures = Vec::new();
        // `sigs` ends with '\n' and contains no empty line.
        for (i, line) in sigs.split_terminator('\n').enumerate() {
            if signatures.len() >= MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures {
                    max: MAX_SIGNATURES,
                });
            }
            signatures.push(parse_sig_line(line, i + 1)?);
        }
        Ok(SignedNote {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed text, including its final newline.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// All signature lines, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds a signature line unless an identical one is already present.
    pub fn add_signature(&mut self, sig: NoteSignature) -> Result<(), NoteError> {
        if self.signatures.contains(&sig) {
            return Ok(());
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        self.signatures.push(sig);
        Ok(())
    }

    /// The full note: text, blank line, signature lines.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 1 + 100 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.to_line());
        }
        out
    }
}

fn check_chars(s: &str) -> Result<(), NoteError> {
    for (offset, b) in s.bytes().enumerate() {
        if b < 0x20 && b != b'\n' {
            return Err(NoteError::ControlCharacter {
                code: u32::from(b),
                offset,
            });
        }
    }
    Ok(())
}

fn parse_sig_line(line: &str, n: usize) -> Result<NoteSignature, NoteError> {
    let bad = |reason| NoteError::BadSignatureLine { line: n, reason };
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or(bad("it does not start with an em dash and a space"))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(bad("it has no space between key name and signature"))?;
    if !is_valid_key_name(name) {
        return Err(bad("the key name is empty or contains whitespace or `+`"));
    }
    let raw = B64
        .decode(b64)
        .map_err(|_| bad("the signature is not valid base64"))?;
    if raw.len() < 5 {
        return Err(bad("the signature is shorter than 5 bytes"));
    }
    let (id, sig) = raw.split_at(4);
    let key_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id,
        signature: sig.to_vec(),
    })
}

/// A verifier key: name, key id, signature type and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    sig_type: SignatureType,
    public_key: [u8; 32],
}

impl VerifierKey {
    /// Builds a verifier key, computing its key id.
    pub fn new(
        name: &str,
        sig_type: SignatureType,
        public_key: [u8; 32],
    ) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: key_id(name, sig_type.byte(), &public_key),
            sig_type,
            public_key,
        })
    }

    /// Parses `<name>+<hex key id>+<base64(type ‖ key)>` and checks the key id.
    pub fn parse(vkey: &str) -> Result<Self, KeyError> {
        let vkey = vkey.trim();
        let shown: String = vkey.chars().take(200).collect();
        let (name, rest) = vkey
            .split_once('+')
            .ok_or_else(|| KeyError::BadFormat(shown.clone()))?;
        let (id_hex, key_b64) = rest
            .split_once('+')
            .ok_or_else(|| KeyError::BadFormat(shown.clone()))?;
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.chars().take(200).collect()));
        }
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::BadKeyId(shown));
        }
        let declared =
            u32::from_str_radix(id_hex, 16).map_err(|_| KeyError::BadKeyId(shown.clone()))?;
        let raw = B64
            .decode(key_b64)
            .map_err(|_| KeyError::BadFormat(shown.clone()))?;
        let (&alg, key) = raw
            .split_first()
            .ok_or_else(|| KeyError::BadFormat(shown.clone()))?;
        let sig_type = SignatureType::from_byte(alg).ok_or(KeyError::UnsupportedType {
            vkey: shown.clone(),
            alg,
        })?;
        let public_key: [u8; 32] = key
            .try_into()
            .map_err(|_| KeyError::BadPublicKey(shown.clone()))?;
        let computed = key_id(name, alg, &public_key);
        if computed != declared {
            return Err(KeyError::KeyIdMismatch {
                vkey: shown,
                declared,
                computed,
            });
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: computed,
            sig_type,
            public_key,
        })
    }

    /// The vkey string (lowercase hex key id).
    pub fn to_vkey(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(self.sig_type.byte());
        raw.extend_from_slice(&self.public_key);
        format!("{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Signature type.
    pub fn signature_type(&self) -> SignatureType {
        self.sig_type
    }

    /// Raw Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Whether a signature line claims to be from this key (name and key id).
    pub fn matches(&self, sig: &NoteSignature) -> bool {
        sig.name == self.name && sig.key_id == self.key_id
    }

    /// Checks a raw Ed25519 signature over `msg`.
    pub(crate) fn verify_ed25519(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.public_key)
            .verify(msg, sig)
            .is_ok()
    }

    /// Verifies a plain Ed25519 (`0x01`) note signature over `text`.
    pub fn verify_note_signature(&self, text: &str, sig: &NoteSignature) -> bool {
        self.sig_type == SignatureType::Ed25519
            && self.matches(sig)
            && self.verify_ed25519(text.as_bytes(), &sig.signature)
    }
}

/// An Ed25519 key pair with a key name, for one signature type.
pub struct Ed25519Signer {
    name: String,
    key_pair: Ed25519KeyPair,
    public_key: [u8; 32],
    sig_type: SignatureType,
    key_id: u32,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .field("sig_type", &self.sig_type)
            .finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    /// From a 32-byte Ed25519 seed (the RFC 8032 private key).
    pub fn from_seed(
        name: &str,
        sig_type: SignatureType,
        seed: &[u8; 32],
    ) -> Result<Self, KeyError> {
        let kp = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Self::from_key_pair(name, sig_type, kp)
    }

    /// From a PKCS#8 v1 or v2 document (as produced by [`generate_pkcs8`]).
    pub fn from_pkcs8(name: &str, sig_type: SignatureType, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Self::from_key_pair(name, sig_type, kp)
    }

    fn from_key_pair(
        name: &str,
        sig_type: SignatureType,
        kp: Ed25519KeyPair,
    ) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let public_key: [u8; 32] = kp
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::BadPrivateKey("public key is not 32 bytes".to_owned()))?;
        Ok(Ed25519Signer {
            name: name.to_owned(),
            key_id: key_id(name, sig_type.byte(), &public_key),
            key_pair: kp,
            public_key,
            sig_type,
        })
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Signature type.
    pub fn signature_type(&self) -> SignatureType {
        self.sig_type
    }

    /// The matching verifier key.
    pub fn verifier_key(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            sig_type: self.sig_type,
            public_key: self.public_key,
        }
    }

    /// Raw Ed25519 signature over `msg`.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        self.key_pair.sign(msg).as_ref().to_vec()
    }

    /// Plain Ed25519 (`0x01`) note signature over `text`.
    pub fn sign_note(&self, text: &str) -> Result<NoteSignature, KeyError> {
        if self.sig_type != SignatureType::Ed25519 {
            return Err(KeyError::WrongType {
                name: self.name.clone(),
                expected: SignatureType::Ed25519.byte(),
                got: self.sig_type.byte(),
            });
        }
        Ok(NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: self.sign_raw(text.as_bytes()),
        })
    }
}

/// Generates a new Ed25519 private key as a PKCS#8 v2 document (system RNG).
pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| KeyError::Generation)
}
