//! Why a release was refused or failed, in the release pipeline's own terms
//! ([`FetchError`]); `error.rs` classifies it into an `ApiError`. The
//! messages are the caller's: they name no source file and no secret (a
//! cause that does, such as a connector's error behind a stale cursor, is
//! kept as the `source` for the log, not shown).

use super::cursor::CursorError;
use super::filter::FilterError;
use super::pipeline::PipelineError;
use super::ticket::TicketError;
use crate::audit::AuditError;
use crate::locks::Poisoned;
use crate::policy::AuthorizeError;
use crate::registry::RegistryError;
use allmende_connectors::ConnectorError;

/// Why a fetch was refused before any row was read, or why its release
/// ended early.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The caller's fetch rate is over its budget.
    #[error("too many fetches; slow down and retry")]
    RateLimited,
    /// A public caller is over its open-data request rate.
    #[error("too many open-data requests from this caller; retry in {retry_after_secs} s")]
    PublicRateLimited { retry_after_secs: u64 },
    /// The caller runs as many fetches as one caller may.
    #[error("caller has `{0}` fetches running, the most one caller may; retry later")]
    CallerBusy(usize),
    /// The node runs as many fetches as it allows.
    #[error("node is serving `{0}` fetches, the most it allows; retry later")]
    NodeBusy(usize),
    /// The dataset is unknown or its connector unavailable.
    #[error(transparent)]
    Dataset(#[from] RegistryError),
    /// A registration from before a check the node makes now.
    #[error("dataset `{dataset}` is not served: {reason}; its owner must register it again")]
    NotServed { dataset: String, reason: String },
    /// The request names a column the dataset does not have.
    #[error("dataset `{dataset}` has no column `{column}`")]
    UnknownColumn { dataset: String, column: String },
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A filter on a quasi-identifier the owner does not allow filters on.
    #[error(
        "filter on column `{column}` refused: it is a quasi-identifier of personal dataset `{dataset}` and could single people out; its owner allows filters on {}",
        filterable(.allowed)
    )]
    QuasiIdentifier {
        column: String,
        dataset: String,
        allowed: Vec<String>,
    },
    /// The presented resume cursor is refused.
    #[error(transparent)]
    Cursor(CursorError),
    /// The presented Arrow Flight ticket is refused.
    #[error(transparent)]
    Ticket(TicketError),
    /// A ticket could not be sealed (a bug: the node's own key).
    #[error(transparent)]
    SealTicket(TicketError),
    /// The cursor was sealed for a source registered again since; the
    /// connector's detail names source files and stays in the log.
    #[error(
        "resume cursor no longer fits the dataset's source (it was registered again); fetch again without a cursor"
    )]
    StaleCursor(#[source] ConnectorError),
    /// The source could not be opened.
    #[error("source of `{dataset}` unavailable: {source}")]
    SourceUnavailable {
        dataset: String,
        #[source]
        source: ConnectorError,
    },
    /// Reading the source failed part-way.
    #[error("source read failed: {0}")]
    SourceRead(#[source] ConnectorError),
    /// The source ended without the connector's end marker.
    #[error("source read ended early")]
    EndedEarly,
    /// The rows read again to find a page's end were not the rows released.
    #[error("the source of `{0}` changed during the read; fetch this page again")]
    SourceChanged(String),
    /// The decision was a deny, over the denial budget, or not audited.
    #[error(transparent)]
    Decision(#[from] AuthorizeError),
    /// The intent or completion entry could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    /// A release stage failed (a bug or an unexpected batch).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A resume cursor could not be sealed (a bug: the node's own key).
    #[error(transparent)]
    Seal(CursorError),
    /// A state the release path never reaches unless it has a bug.
    #[error("{0}")]
    Internal(&'static str),
}

/// The quasi-identifiers a filter may name, for [`FetchError::QuasiIdentifier`].
fn filterable(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "none of its quasi-identifiers".to_owned()
    } else {
        format!(
            "these quasi-identifiers only: {}",
            allowed
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
