//! Resume cursors as the caller sees them: opaque tokens, encrypted and
//! authenticated by the node, bound to the request they continue.
//!
//! A connector's cursor is a raw source position (file and record number, or
//! the value of the cursor column). Shown to a caller it would tell where each
//! released row sits in the source, and hence which positions were withheld;
//! accepted from a caller it would let them jump to positions of their choice.
//! So the node seals it: `c1.` followed by base64url of a random 96-bit nonce
//! and the ChaCha20-Poly1305 encryption of the position (padded to a multiple
//! of [`PAD`] bytes so that the token's length does not vary with the
//! position). The key is derived from the node secret of the audit log; the
//! associated data binds the token to the format version, the caller's
//! identity URI (organisation and user or node, from the certificate), the
//! dataset, the purpose and the grant. A token altered in any byte, truncated,
//! made by another node or presented by another caller or for another
//! dataset, purpose or grant does not open.

use allmende_connectors::Cursor;
use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Format version: the token's prefix (before the dot) and part of the
/// authenticated data.
pub const VERSION: &str = "c1";
/// The plaintext is padded to a multiple of this many bytes.
pub const PAD: usize = 256;
/// Longest token accepted (characters), checked before anything is decoded.
pub const MAX_TOKEN_LEN: usize = 4096;
const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"allmende resume cursor\n";

/// What a token is bound to besides the node's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The caller's identity URI (`allmende://<federation>/<org>/user/<id>`).
    pub caller: &'a str,
    pub dataset: &'a str,
    pub purpose: Option<&'a str>,
    pub grant: Option<&'a str>,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(AAD_DOMAIN);
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
        field(b'v', Some(VERSION));
        field(b'c', Some(self.caller));
        field(b'd', Some(self.dataset));
        field(b'p', self.purpose);
        field(b'g', self.grant);
        out
    }
}

/// Why a presented token is refused. The messages name no secret and no
/// position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("resume cursor is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error(
        "resume cursor has an unknown format (expected a token starting with `{VERSION}.` from a previous fetch); fetch again without a cursor"
    )]
    UnknownVersion,
    #[error("resume cursor is malformed or truncated; pass `next_cursor` exactly as received")]
    Malformed,
    #[error(
        "resume cursor is not valid for this request: it was altered, made by another node, or issued for another caller, dataset, purpose or grant"
    )]
    NotValid,
    #[error("resume cursor could not be sealed")]
    Seal,
}

/// Refuses a source whose resume cursor would follow an identifying column
/// (the data-subject column or an identifier column, of the dataset or of the
/// connector): pages ordered by it would reveal the order of the raw ids.
pub fn identifying_cursor_column(
    cursor_column: Option<&str>,
    identifying: &[&str],
) -> Result<(), String> {
    match cursor_column {
        Some(c) if identifying.contains(&c) => Err(format!(
            "cursor column `{c}` is identifying (the data-subject or an identifier column); a resume cursor must follow a column that names no one, such as a timestamp"
        )),
        _ => Ok(()),
    }
}

/// Seals and opens resume cursors with one node key.
pub struct CursorSealer {
    key: [u8; 32],
    rng: SystemRandom,
}

impl std::fmt::Debug for CursorSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorSealer").finish_non_exhaustive()
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl CursorSealer {
    /// A sealer with a 32-byte key (derived from the node secret).
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            rng: SystemRandom::new(),
        }
    }

    fn aead(&self) -> Result<LessSafeKey, CursorError> {
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, &self.key).map_err(|_| CursorError::Seal)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// The token for a source position, bound to `binding`.
    pub fn seal(&self, position: &Cursor, binding: &Binding<'_>) -> Result<String, CursorError> {
        let json = position.to_string();
        let len = u32::try_from(json.len()).map_err(|_| CursorError::Seal)?;
        let mut plain = Vec::with_capacity(4 + json.len() + PAD);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(json.as_bytes());
        let padded = plain.len().div_ceil(PAD) * PAD;
        plain.resize(padded, 0);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CursorError::Seal)?;
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding.aad()),
                &mut plain,
            )
            .map_err(|_| CursorError::Seal)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + plain.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&plain);
        let token = format!("{VERSION}.{}", b64().encode(raw));
        if token.len() > MAX_TOKEN_LEN {
            return Err(CursorError::Seal);
        }
        Ok(token)
    }

    /// The source position of a token, if it opens under `binding`.
    pub fn open(&self, token: &str, binding: &Binding<'_>) -> Result<Cursor, CursorError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(CursorError::TooLong);
        }
        let Some((version, body)) = token.split_once('.') else {
            return Err(CursorError::UnknownVersion);
        };
        if version != VERSION {
            return Err(CursorError::UnknownVersion);
        }
        let mut raw = b64().decode(body).map_err(|_| CursorError::Malformed)?;
        if raw.len() < NONCE_LEN + TAG_LEN + PAD
            || !(raw.len() - NONCE_LEN - TAG_LEN).is_multiple_of(PAD)
        {
            return Err(CursorError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let key = self.aead().map_err(|_| CursorError::NotValid)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding.aad()),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| CursorError::NotValid)?;
        // Authenticated: from here on a failure is our own format's, not the caller's.
        let len = plain
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(CursorError::NotValid)? as usize;
        let json = plain
            .get(4..4 + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(CursorError::NotValid)?;
        json.parse::<Cursor>().map_err(|_| CursorError::NotValid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;

    fn binding() -> Binding<'static> {
        Binding {
            caller: "allmende://munich/tum/user/alice",
            dataset: "smart-meter-readings",
            purpose: Some("AcademicResearch"),
            grant: Some("g-1"),
        }
    }

    fn position(row: u64) -> Cursor {
        Cursor::Position {
            file: "readings-2025-03-03.parquet".into(),
            row,
        }
    }

    #[test]
    fn a_sealed_cursor_opens_only_under_its_binding_and_key() {
        let s = CursorSealer::new([1; 32]);
        let t = s.seal(&position(12), &binding()).unwrap();
        assert!(t.starts_with("c1."), "{t}");
        assert_eq!(s.open(&t, &binding()).unwrap(), position(12));
        // The position is not visible in the token.
        let raw = b64().decode(&t[3..]).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"readings"));
        assert!(!t.contains("readings"));
        // Two seals of the same position differ (random nonce).
        assert_ne!(t, s.seal(&position(12), &binding()).unwrap());
        let others = [
            Binding {
                caller: "allmende://munich/tum/user/bob",
                ..binding()
            },
            Binding {
                caller: "allmende://munich/lmu/user/alice",
                ..binding()
            },
            Binding {
                dataset: "air-quality",
                ..binding()
            },
            Binding {
                purpose: Some("ServiceProvision"),
                ..binding()
            },
            Binding {
                purpose: None,
                ..binding()
            },
            Binding {
                grant: Some("g-2"),
                ..binding()
            },
            Binding {
                grant: None,
                ..binding()
            },
        ];
        for b in others {
            assert_eq!(s.open(&t, &b), Err(CursorError::NotValid), "{b:?}");
        }
        // Another node's key.
        let other = CursorSealer::new([2; 32]);
        assert_eq!(other.open(&t, &binding()), Err(CursorError::NotValid));
    }

    #[test]
    fn altered_truncated_and_foreign_tokens_are_refused() {
        let s = CursorSealer::new([1; 32]);
        let t = s.seal(&position(7), &binding()).unwrap();
        let mut raw = b64().decode(&t[3..]).unwrap();
        for i in [0, NONCE_LEN, raw.len() / 2, raw.len() - 1] {
            raw[i] ^= 1;
            let bad = format!("c1.{}", b64().encode(&raw));
            assert_eq!(s.open(&bad, &binding()), Err(CursorError::NotValid), "{i}");
            raw[i] ^= 1;
        }
        let truncated = &t[..t.len() - 4];
        assert!(s.open(truncated, &binding()).is_err());
        assert_eq!(s.open(&t[..40], &binding()), Err(CursorError::Malformed));
        assert_eq!(
            s.open(&format!("c2{}", &t[2..]), &binding()),
            Err(CursorError::UnknownVersion)
        );
        // Today's raw connector cursors (JSON) are not accepted.
        let raw_json = position(7).to_string();
        assert_eq!(
            s.open(&raw_json, &binding()),
            Err(CursorError::UnknownVersion)
        );
        assert_eq!(s.open("c1.!!", &binding()), Err(CursorError::Malformed));
        assert_eq!(
            s.open(&"c".repeat(MAX_TOKEN_LEN + 1), &binding()),
            Err(CursorError::TooLong)
        );
        // The error messages carry no position.
        for e in [
            CursorError::NotValid,
            CursorError::Malformed,
            CursorError::UnknownVersion,
        ] {
            assert!(!e.to_string().contains("readings"));
        }
    }

    #[test]
    fn a_cursor_may_not_follow_an_identifying_column() {
        let ids = ["household_id", "meter_id"];
        for c in ids {
            let e = identifying_cursor_column(Some(c), &ids).unwrap_err();
            assert!(e.contains(&format!("`{c}` is identifying")), "{e}");
        }
        assert!(identifying_cursor_column(Some("timestamp"), &ids).is_ok());
        assert!(identifying_cursor_column(None, &ids).is_ok());
    }

    #[test]
    fn the_token_length_does_not_depend_on_the_position() {
        let s = CursorSealer::new([1; 32]);
        let lens: std::collections::BTreeSet<usize> = [0, 9, 10, 99_999, u64::MAX]
            .into_iter()
            .map(|r| s.seal(&position(r), &binding()).unwrap().len())
            .chain(std::iter::once(
                s.seal(
                    &Cursor::Column {
                        column: "timestamp".into(),
                        value: allmende_connectors::CursorValue::Int(1_741_000_000_000_000),
                        count: 3,
                    },
                    &binding(),
                )
                .unwrap()
                .len(),
            ))
            .collect();
        assert_eq!(lens.len(), 1, "{lens:?}");
    }
}
