//! Compliance of one obliged window, judged from the attempts recorded in
//! `deliveries`: a pure function of the window, the grace period, the
//! node's time and the attempts — no store, no clock.
//!
//! - `delivered`: an accepted attempt at or before the deadline (window end
//!   plus grace);
//! - `late`: the first accepted attempt came after the deadline;
//! - `invalid`: the deadline passed, attempts were rejected and none was
//!   accepted (the reasons of the last rejection are kept);
//! - `missing`: the deadline passed, nothing accepted and nothing rejected
//!   (only unavailable attempts, or none at all);
//! - `pending`: the deadline has not passed and nothing was accepted yet.

use super::deliveries::{Delivery, HOUR_MS, Outcome};
use serde::{Deserialize, Serialize};

/// How a window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Delivered,
    Late,
    Invalid,
    Missing,
    Pending,
}

impl Status {
    /// The spelling used in tables, JSON and audit labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Late => "late",
            Status::Invalid => "invalid",
            Status::Missing => "missing",
            Status::Pending => "pending",
        }
    }

    /// Late, missing and invalid windows are flagged.
    pub fn non_compliant(self) -> bool {
        matches!(self, Status::Late | Status::Invalid | Status::Missing)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The judgement of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub window_start_ms: i64,
    /// Window end plus grace: an acceptance at or before it is on time.
    pub deadline_ms: i64,
    pub status: Status,
    /// When the first accepted attempt was made, if any.
    pub accepted_at_ms: Option<i64>,
    /// When the last rejected attempt was made, if any.
    pub rejected_at_ms: Option<i64>,
    /// Attempts seen (accepted, rejected, unavailable).
    pub attempts: usize,
    /// Reasons of the last rejection (invalid or pending windows) or of the
    /// last unavailable attempt (missing windows).
    pub reasons: Vec<String>,
}

/// The deadline of the hour window starting at `window_start_ms`.
pub fn deadline(window_start_ms: i64, grace_ms: i64) -> i64 {
    window_start_ms
        .saturating_add(HOUR_MS)
        .saturating_add(grace_ms)
}

/// Judges the window starting at `window_start_ms` at `now_ms` from its
/// `attempts` (any order; attempts of other windows are ignored).
pub fn judge(window_start_ms: i64, grace_ms: i64, now_ms: i64, attempts: &[Delivery]) -> Judgement {
    let deadline_ms = deadline(window_start_ms, grace_ms);
    let mut mine: Vec<&Delivery> = attempts
        .iter()
        .filter(|d| d.window_start_ms == window_start_ms)
        .collect();
    mine.sort_by_key(|d| d.at_ms);
    let accepted_at_ms = mine
        .iter()
        .find(|d| matches!(d.outcome, Outcome::Accepted { .. }))
        .map(|d| d.at_ms);
    let last_rejected = mine.iter().rev().find_map(|d| match &d.outcome {
        Outcome::Rejected { reasons, .. } => Some((d.at_ms, reasons.clone())),
        _ => None,
    });
    let last_unavailable = mine.iter().rev().find_map(|d| match &d.outcome {
        Outcome::Unavailable { reason } => Some(reason.clone()),
        _ => None,
    });
    let passed = now_ms > deadline_ms;
    let status = match accepted_at_ms {
        Some(at) if at <= deadline_ms => Status::Delivered,
        Some(_) => Status::Late,
        None if !passed => Status::Pending,
        None if last_rejected.is_some() => Status::Invalid,
        None => Status::Missing,
    };
    let reasons = match status {
        Status::Invalid | Status::Pending => last_rejected
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default(),
        Status::Missing => last_unavailable.into_iter().collect(),
        Status::Delivered | Status::Late => Vec::new(),
    };
    Judgement {
        window_start_ms,
        deadline_ms,
        status,
        accepted_at_ms,
        rejected_at_ms: last_rejected.map(|(at, _)| at),
        attempts: mine.len(),
        reasons,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    const W: i64 = 1_796_032_800_000; // 2026-11-30T10:00Z
    const GRACE: i64 = 15 * 60_000;
    const DEADLINE: i64 = W + HOUR_MS + GRACE;

    fn at(ms: i64, outcome: Outcome) -> Delivery {
        Delivery {
            organisation: "scooter-co".into(),
            dataset: "scooter-trips".into(),
            window_start_ms: W,
            at_ms: ms,
            outcome,
        }
    }
    fn ok() -> Outcome {
        Outcome::Accepted {
            rows: vec![("trips".into(), 3)],
        }
    }
    fn bad(r: &str) -> Outcome {
        Outcome::Rejected {
            reasons: vec![r.into()],
            kept_as: None,
        }
    }
    fn down() -> Outcome {
        Outcome::Unavailable {
            reason: "503".into(),
        }
    }

    #[test]
    fn an_acceptance_exactly_at_the_deadline_is_on_time_one_ms_later_is_late() {
        let j = judge(W, GRACE, DEADLINE + 10, &[at(DEADLINE, ok())]);
        assert_eq!(j.status, Status::Delivered);
        assert_eq!(j.accepted_at_ms, Some(DEADLINE));
        let j = judge(W, GRACE, DEADLINE + 10, &[at(DEADLINE + 1, ok())]);
        assert_eq!(j.status, Status::Late);
        // Late is known as soon as the late acceptance is recorded.
        assert!(!Status::Delivered.non_compliant() && Status::Late.non_compliant());
    }

    #[test]
    fn nothing_is_pending_up_to_the_deadline_and_missing_after_it() {
        assert_eq!(judge(W, GRACE, W, &[]).status, Status::Pending);
        assert_eq!(judge(W, GRACE, DEADLINE, &[]).status, Status::Pending);
        let j = judge(W, GRACE, DEADLINE + 1, &[]);
        assert_eq!((j.status, j.attempts), (Status::Missing, 0));
        // Unavailable attempts only: missing, with the last answer.
        let j = judge(
            W,
            GRACE,
            DEADLINE + 1,
            &[at(W + HOUR_MS, down()), at(W + HOUR_MS + 5, down())],
        );
        assert_eq!(j.status, Status::Missing);
        assert_eq!(j.reasons, vec!["503".to_owned()]);
        assert_eq!(j.attempts, 2);
    }

    #[test]
    fn rejections_without_acceptance_are_invalid_with_the_last_reasons() {
        let attempts = [
            at(W + HOUR_MS + 2, bad("second")),
            at(W + HOUR_MS + 1, bad("first")),
            at(W + HOUR_MS + 3, down()),
        ];
        let j = judge(W, GRACE, DEADLINE + 1, &attempts);
        assert_eq!(j.status, Status::Invalid);
        assert_eq!(j.reasons, vec!["second".to_owned()]);
        assert_eq!(j.rejected_at_ms, Some(W + HOUR_MS + 2));
        // Before the deadline the company can still deliver: pending, with
        // the reasons shown.
        let j = judge(W, GRACE, DEADLINE, &attempts);
        assert_eq!(j.status, Status::Pending);
        assert_eq!(j.reasons, vec!["second".to_owned()]);
    }

    #[test]
    fn an_acceptance_after_a_rejection_counts_and_its_time_decides() {
        let j = judge(
            W,
            GRACE,
            DEADLINE + 1,
            &[at(W + HOUR_MS, bad("x")), at(W + HOUR_MS + 60_000, ok())],
        );
        assert_eq!(j.status, Status::Delivered);
        assert!(j.reasons.is_empty());
        let j = judge(
            W,
            GRACE,
            DEADLINE + 1,
            &[at(W + HOUR_MS, bad("x")), at(DEADLINE + 1, ok())],
        );
        assert_eq!(j.status, Status::Late);
        // A later re-delivery does not undo an earlier on-time acceptance.
        let j = judge(
            W,
            GRACE,
            DEADLINE + HOUR_MS,
            &[at(DEADLINE + 5, ok()), at(W + HOUR_MS, ok())],
        );
        assert_eq!(j.status, Status::Delivered);
    }

    #[test]
    fn attempts_of_other_windows_are_ignored() {
        let mut other = at(W + HOUR_MS, ok());
        other.window_start_ms = W + HOUR_MS;
        let j = judge(W, GRACE, DEADLINE + 1, &[other]);
        assert_eq!((j.status, j.attempts), (Status::Missing, 0));
    }

    #[test]
    fn zero_grace_and_extreme_times_do_not_overflow() {
        assert_eq!(deadline(W, 0), W + HOUR_MS);
        assert_eq!(deadline(i64::MAX - 10, GRACE), i64::MAX);
        let j = judge(W, 0, W + HOUR_MS + 1, &[at(W + HOUR_MS, ok())]);
        assert_eq!(j.status, Status::Delivered);
    }
}
