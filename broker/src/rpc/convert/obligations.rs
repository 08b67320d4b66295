//! `allmende.v1.Obligations` messages from obligations and window
//! judgements, and the request times parsed into unix milliseconds.

use crate::error::ApiError;
use crate::mds::Kept;
use crate::obligations::{Delivery, Obligation, Outcome, Version, WindowStatus};
use crate::timefmt::format_unix_ms;
use allmende_proto::v1 as pb;

/// An optional RFC 3339 time of a request (`field` names it in the error).
pub fn time(field: &str, s: &str) -> Result<Option<i64>, ApiError> {
    if s.is_empty() {
        return Ok(None);
    }
    let t =
        crate::timefmt::parse(s).map_err(|e| ApiError::InvalidArgument(format!("{field}: {e}")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(Some)
        .map_err(|_| ApiError::InvalidArgument(format!("{field}: out of range")))
}

/// Seconds to milliseconds, refusing what does not fit.
pub fn seconds(field: &str, s: u64) -> Result<i64, ApiError> {
    i64::try_from(s)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .ok_or_else(|| ApiError::InvalidArgument(format!("{field}: {s} seconds is out of range")))
}

fn secs(ms: i64) -> u64 {
    u64::try_from(ms / 1000).unwrap_or(0)
}

/// One version on the wire.
pub fn version(v: &Version) -> pb::ObligationVersion {
    pb::ObligationVersion {
        id: v.id.clone(),
        version: v.version,
        organisation: v.organisation.clone(),
        dataset: v.dataset.clone(),
        cadence: v.cadence.as_str().to_owned(),
        grace_seconds: secs(v.grace_ms),
        from: format_unix_ms(v.from_ms),
        until: v.until_ms.map(format_unix_ms).unwrap_or_default(),
        effective_from: format_unix_ms(v.effective_ms),
        recorded_by: v.recorded_by.clone(),
        recorded_at: format_unix_ms(v.recorded_at_ms),
        ended: v.ended,
    }
}

/// An obligation with its history.
pub fn info(o: &Obligation) -> pb::ObligationInfo {
    pb::ObligationInfo {
        current: o.current().map(version),
        history: o.versions.iter().map(version).collect(),
    }
}

/// A just recorded or changed version and the obligation it belongs to.
pub fn changed(o: Option<&Obligation>, v: &Version) -> pb::ObligationInfo {
    match o {
        Some(o) => info(o),
        None => pb::ObligationInfo {
            current: Some(version(v)),
            history: vec![version(v)],
        },
    }
}

/// The obligations listed.
pub fn list(all: &[Obligation]) -> pb::ListObligationsResponse {
    pb::ListObligationsResponse {
        obligations: all.iter().map(info).collect(),
    }
}

/// The windows judged at `now_ms`.
pub fn status(rows: &[WindowStatus], now_ms: i64) -> pb::ObligationStatusResponse {
    pb::ObligationStatusResponse {
        windows: rows
            .iter()
            .map(|r| pb::ObligationWindow {
                obligation_id: r.id.clone(),
                version: r.version,
                organisation: r.organisation.clone(),
                dataset: r.dataset.clone(),
                window_start: format_unix_ms(r.judgement.window_start_ms),
                deadline: format_unix_ms(r.judgement.deadline_ms),
                status: r.judgement.status.as_str().to_owned(),
                accepted_at: r
                    .judgement
                    .accepted_at_ms
                    .map(format_unix_ms)
                    .unwrap_or_default(),
                rejected_at: r
                    .judgement
                    .rejected_at_ms
                    .map(format_unix_ms)
                    .unwrap_or_default(),
                attempts: u32::try_from(r.judgement.attempts).unwrap_or(u32::MAX),
                reasons: r.judgement.reasons.clone(),
                flagged: r.flagged.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            })
            .collect(),
        judged_at: format_unix_ms(now_ms),
    }
}

/// Rejected attempts, each with the batch kept for it: its answers' sizes,
/// and their bodies when `bodies`.
pub fn rejected(found: &[(Delivery, Option<Kept>)], bodies: bool) -> pb::RejectedBatchesResponse {
    pb::RejectedBatchesResponse {
        batches: found
            .iter()
            .map(|(d, kept)| rejected_batch(d, kept.as_ref(), bodies))
            .collect(),
    }
}

fn rejected_batch(d: &Delivery, kept: Option<&Kept>, bodies: bool) -> pb::RejectedBatch {
    let (reasons, id) = match &d.outcome {
        Outcome::Rejected { reasons, kept_as } => (reasons.clone(), kept_as.clone()),
        Outcome::Accepted { .. } | Outcome::Unavailable { .. } => (Vec::new(), None),
    };
    pb::RejectedBatch {
        id: id.unwrap_or_default(),
        organisation: d.organisation.clone(),
        dataset: d.dataset.clone(),
        window_start: format_unix_ms(d.window_start_ms),
        attempted_at: format_unix_ms(d.at_ms),
        reasons: kept.map_or(reasons, |k| k.reasons.clone()),
        answers: kept
            .map(|k| {
                k.answers
                    .iter()
                    .map(|(part, body)| pb::RawAnswer {
                        part: part.clone(),
                        bytes: body.len() as u64,
                        body: if bodies { body.clone() } else { String::new() },
                    })
                    .collect()
            })
            .unwrap_or_default(),
        truncated: kept.is_some_and(|k| k.truncated),
    }
}
