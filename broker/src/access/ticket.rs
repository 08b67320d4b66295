//! Arrow Flight tickets: opaque tokens sealed by the node, naming a request.
//!
//! A ticket names the dataset, purpose, columns, filter and grant of a
//! release (the serialised [`FetchParams`]: no resume position, no page
//! length); it is sealed exactly like a resume cursor ([`super::seal`]), with
//! a key of its own (label [`KEY_LABEL`]), its own associated-data domain and
//! version prefix `t1.`, padded to a multiple of [`PAD`] bytes and refused
//! beyond [`MAX_TOKEN_LEN`] characters before anything is decoded.
//!
//! A ticket is not a capability: it is bound to no caller, and whoever
//! presents it is decided again on their own certificate through the whole
//! release pipeline (`Fetcher::start_with`). Sealing only keeps a ticket from
//! being made up or altered, and from naming a request this node never
//! described.

use super::fetch::FetchParams;
use super::seal::{Format, SealError, Sealer};

/// Format version: the token's prefix and part of the authenticated data.
pub const VERSION: &str = "t1";
/// The plaintext is padded to a multiple of this many bytes.
pub const PAD: usize = 256;
/// Longest ticket accepted (bytes), checked before anything is decoded.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Label of the node-secret-derived key that seals tickets.
pub const KEY_LABEL: &str = "flight-ticket:t1";
const FORMAT: Format = Format {
    version: VERSION,
    domain: b"allmende flight ticket\n",
    pad: PAD,
    max_len: MAX_TOKEN_LEN,
};

/// Why a presented ticket is refused. The messages name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("flight ticket is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error(
        "flight ticket has an unknown format (expected a ticket starting with `{VERSION}.` from this node's GetFlightInfo or ListFlights)"
    )]
    UnknownVersion,
    #[error("flight ticket is malformed or truncated; pass the ticket exactly as received")]
    Malformed,
    #[error("flight ticket is not valid: it was altered or issued by another node")]
    NotValid,
    #[error("flight ticket could not be sealed")]
    Seal,
}

impl From<SealError> for TicketError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::TooLong => TicketError::TooLong,
            SealError::UnknownVersion => TicketError::UnknownVersion,
            SealError::Malformed => TicketError::Malformed,
            SealError::NotValid => TicketError::NotValid,
            SealError::Seal => TicketError::Seal,
        }
    }
}

/// Seals and opens tickets with one node key.
#[derive(Debug)]
pub struct TicketSealer {
    sealer: Sealer,
}

impl TicketSealer {
    /// A sealer with a 32-byte key (derived from the node secret under
    /// [`KEY_LABEL`]).
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            sealer: Sealer::new(key, FORMAT),
        }
    }

    /// The ticket naming `request`.
    pub fn seal(&self, request: &FetchParams) -> Result<Vec<u8>, TicketError> {
        let json = serde_json::to_vec(request).map_err(|_| TicketError::Seal)?;
        Ok(self.sealer.seal(&json, &[])?.into_bytes())
    }

    /// The request a presented ticket names, if it opens.
    pub fn open(&self, ticket: &[u8]) -> Result<FetchParams, TicketError> {
        if ticket.len() > MAX_TOKEN_LEN {
            return Err(TicketError::TooLong);
        }
        let token = std::str::from_utf8(ticket).map_err(|_| TicketError::Malformed)?;
        let plain = self.sealer.open(token, &[])?;
        // Authenticated: a failure here is our own format's.
        serde_json::from_slice(&plain).map_err(|_| TicketError::NotValid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::access::filter::{CompareOp, Filter, FilterValue};
    use crate::policy::Purpose;

    fn request() -> FetchParams {
        FetchParams {
            dataset: "smart-meter-readings".into(),
            purpose: Some(Purpose::AcademicResearch),
            columns: vec!["household_id".into(), "kwh".into()],
            filter: Some(Filter::Compare {
                column: "district".into(),
                op: CompareOp::Eq,
                value: FilterValue::String("Maxvorstadt".into()),
            }),
            grant_id: Some("g-1".into()),
            ..FetchParams::default()
        }
    }

    #[test]
    fn a_ticket_opens_to_its_request_and_hides_it() {
        let s = TicketSealer::new([1; 32]);
        let t = s.seal(&request()).unwrap();
        assert!(t.starts_with(b"t1."));
        assert_eq!(s.open(&t).unwrap(), request());
        // Where a page resumes, its length and the request id are not sealed.
        let mut paged = request();
        paged.resume_cursor = Some("c1.x".into());
        paged.max_rows = 5;
        paged.request_id = Some("r".into());
        assert_eq!(s.open(&s.seal(&paged).unwrap()).unwrap(), request());
        let text = String::from_utf8(t.clone()).unwrap();
        assert!(!text.contains("smart-meter") && !text.contains("Maxvorstadt"));
        assert_ne!(t, s.seal(&request()).unwrap());
        // Padded: the length does not follow the dataset's name.
        let mut short = request();
        short.dataset = "a".into();
        assert_eq!(s.seal(&short).unwrap().len(), t.len());
    }

    #[test]
    fn altered_truncated_foreign_and_resume_cursor_tokens_are_refused() {
        let s = TicketSealer::new([1; 32]);
        let t = s.seal(&request()).unwrap();
        for i in [3, 10, t.len() / 2, t.len() - 1] {
            let mut bad = t.clone();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(
                matches!(
                    s.open(&bad),
                    Err(TicketError::NotValid | TicketError::Malformed)
                ),
                "{i}"
            );
        }
        assert!(s.open(&t[..t.len() - 4]).is_err());
        assert_eq!(s.open(&t[..40]), Err(TicketError::Malformed));
        assert_eq!(s.open(b"no dot"), Err(TicketError::UnknownVersion));
        assert_eq!(s.open(&[0xff, b'.', 0xfe]), Err(TicketError::Malformed));
        assert_eq!(
            s.open(&vec![b't'; MAX_TOKEN_LEN + 1]),
            Err(TicketError::TooLong)
        );
        assert_eq!(
            TicketSealer::new([2; 32]).open(&t),
            Err(TicketError::NotValid)
        );
        // A resume cursor of the same node key is not a ticket.
        let cursors = crate::access::cursor::CursorSealer::new([1; 32]);
        let c = cursors
            .seal(
                &allmende_connectors::Cursor::Position {
                    file: "f".into(),
                    row: 1,
                },
                &crate::access::cursor::Binding {
                    caller: "allmende://munich/tum/user/alice",
                    dataset: "smart-meter-readings",
                    purpose: None,
                    grant: None,
                },
            )
            .unwrap();
        assert_eq!(s.open(c.as_bytes()), Err(TicketError::UnknownVersion));
        let as_ticket = format!("t1{}", &c[2..]);
        assert_eq!(s.open(as_ticket.as_bytes()), Err(TicketError::NotValid));
    }
}
