//! A data subject's history, for the subject (who accessed my data): every
//! audited release that included the subject's rows — when, which
//! organisation, which purpose, which grant, how many rows — and every
//! change of the subject's consent (give, withdraw, erase), in log order
//! (which is time order). Found through the audit log's keyed subject
//! index; nothing here names the subject in clear.

use super::ConsentError;
use crate::audit::{AuditLog, QueryFilter};
use allmende_audit::{EntryKind, ReleaseOutcome};

/// At most this many events are returned (the newest are kept).
pub const MAX_EVENTS: usize = 10_000;

/// One event of a subject's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Sequence in this node's audit log.
    pub sequence: u64,
    pub time_ms: u64,
    /// `release`, `give`, `withdraw` or `erase`.
    pub kind: &'static str,
    /// The organisation that received the rows, or that made the change.
    pub org: String,
    /// The dataset (`*`: every dataset).
    pub dataset: String,
    pub purpose: String,
    pub grant_id: String,
    /// Rows released (releases only).
    pub rows: u64,
    /// `completed`, `aborted` or `failed` (releases only).
    pub outcome: String,
}

fn consent_kind(action: &str) -> Option<&'static str> {
    match action {
        "give_consent" => Some("give"),
        "withdraw_consent" => Some("withdraw"),
        "erase_subject" => Some("erase"),
        _ => None,
    }
}

/// `subject`'s history at this node, oldest first.
pub fn history(audit: &AuditLog, subject: &str) -> Result<Vec<Event>, ConsentError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = audit.query(&QueryFilter {
            subject: Some(subject.to_owned()),
            after,
            limit: 1000,
            ..Default::default()
        })?;
        for e in page.entries {
            let event = |kind: &'static str, rows: u64, outcome: &str| Event {
                sequence: e.sequence,
                time_ms: e.time_ms,
                kind,
                org: e.principal.org.clone(),
                dataset: e.resource.clone(),
                purpose: e.purpose.clone().unwrap_or_default(),
                grant_id: e.grant_id.clone().unwrap_or_default(),
                rows,
                outcome: outcome.to_owned(),
            };
            match &e.kind {
                EntryKind::ReleaseCompletion {
                    rows_released,
                    outcome,
                    ..
                } if *rows_released > 0 => {
                    let outcome = match outcome {
                        ReleaseOutcome::Completed => "completed",
                        ReleaseOutcome::Aborted => "aborted",
                        ReleaseOutcome::Failed => "failed",
                    };
                    out.push(event("release", *rows_released, outcome));
                }
                EntryKind::ConsentChange { .. } => {
                    if let Some(k) = consent_kind(&e.action) {
                        out.push(event(k, 0, ""));
                    }
                }
                _ => {}
            }
        }
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if out.len() > MAX_EVENTS {
        out.drain(..out.len() - MAX_EVENTS);
    }
    Ok(out)
}
