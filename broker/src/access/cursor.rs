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

use super::seal::{Format, SealError, Sealer};
use allmende_connectors::Cursor;

/// Format version: the token's prefix (before the dot) and part of the
/// authenticated data.
pub const VERSION: &str = "c1";
/// The plaintext is padded to a multiple of this many bytes.
pub const PAD: usize = 256;
/// Longest token accepted (characters), checked before anything is decoded.
pub const MAX_TOKEN_LEN: usize = 4096;
const AAD_DOMAIN: &[u8] = b"allmende resume cursor\n";
const FORMAT: Format = Format {
    version: VERSION,
    domain: AAD_DOMAIN,
    pad: PAD,
    max_len: MAX_TOKEN_LEN,
};

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
    fn fields(&self) -> [(u8, Option<&str>); 4] {
        [
            (b'c', Some(self.caller)),
            (b'd', Some(self.dataset)),
            (b'p', self.purpose),
            (b'g', self.grant),
        ]
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

impl From<SealError> for CursorError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::TooLong => CursorError::TooLong,
            SealError::UnknownVersion => CursorError::UnknownVersion,
            SealError::Malformed => CursorError::Malformed,
            SealError::NotValid => CursorError::NotValid,
            SealError::Seal => CursorError::Seal,
        }
    }
}

/// Seals and opens resume cursors with one node key.
#[derive(Debug)]
pub struct CursorSealer {
    sealer: Sealer,
}

impl CursorSealer {
    /// A sealer with a 32-byte key (derived from the node secret).
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            sealer: Sealer::new(key, FORMAT),
        }
    }

    /// The token for a source position, bound to `binding`.
    pub fn seal(&self, position: &Cursor, binding: &Binding<'_>) -> Result<String, CursorError> {
        let json = position.to_string();
        Ok(self.sealer.seal(json.as_bytes(), &binding.fields())?)
    }

    /// The source position of a token, if it opens under `binding`.
    pub fn open(&self, token: &str, binding: &Binding<'_>) -> Result<Cursor, CursorError> {
        let plain = self.sealer.open(token, &binding.fields())?;
        std::str::from_utf8(&plain)
            .ok()
            .and_then(|json| json.parse::<Cursor>().ok())
            .ok_or(CursorError::NotValid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::access::seal::b64;
    use base64::Engine;
    use ring::aead::NONCE_LEN;

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
