//! The obligations a node holds, with their history: every record, change
//! and end is a new [`Version`] of the obligation, effective for windows
//! starting at or after its `effective_ms`, so a past window is judged
//! under the version in force then. Pure: which windows are obliged, under
//! which version; the store rows live in the parent module.

use super::deliveries::HOUR_MS;
use serde::{Deserialize, Serialize};

/// How often an obligation asks for a delivery. Only UTC hours are
/// obliged so far; a day would be a window of 24 hours starting at UTC
/// midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cadence {
    /// One window per UTC hour.
    Hour,
}

impl Cadence {
    /// The spelling in the CLI, JSON and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Cadence::Hour => "hour",
        }
    }

    /// Length of one window in milliseconds.
    pub fn window_ms(self) -> i64 {
        match self {
            Cadence::Hour => HOUR_MS,
        }
    }

    /// The start of the window holding `ms`.
    pub fn floor(self, ms: i64) -> i64 {
        ms - ms.rem_euclid(self.window_ms())
    }

    /// The first window start at or after `ms`.
    pub fn ceil(self, ms: i64) -> i64 {
        let f = self.floor(ms);
        if f == ms {
            ms
        } else {
            f.saturating_add(self.window_ms())
        }
    }
}

/// One version of an obligation: organisation `organisation` delivers
/// `dataset` for every window from `from_ms` (until `until_ms`, exclusive)
/// by the window's end plus `grace_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: String,
    /// 1 for the record, one more for each change or end.
    pub version: u32,
    pub organisation: String,
    pub dataset: String,
    pub cadence: Cadence,
    pub grace_ms: i64,
    /// Start of the first obliged window.
    pub from_ms: i64,
    /// Windows starting at or after it are not obliged.
    pub until_ms: Option<i64>,
    /// Windows starting at or after it (up to the next version's) are
    /// judged under this version.
    pub effective_ms: i64,
    /// Who recorded this version: organisation and the audit pseudonym of
    /// the person.
    pub recorded_by: String,
    pub recorded_at_ms: i64,
    /// Whether this version ended the obligation (`until_ms` set by an end).
    pub ended: bool,
}

impl Version {
    /// Whether the window starting at `w` is obliged under this version.
    pub fn covers(&self, w: i64) -> bool {
        w >= self.from_ms && self.until_ms.is_none_or(|u| w < u)
    }
}

/// An obligation with all its versions, oldest first (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obligation {
    pub versions: Vec<Version>,
}

impl Obligation {
    /// The newest version.
    pub fn current(&self) -> Option<&Version> {
        self.versions.last()
    }

    /// The version a window starting at `w` is judged under, if the window
    /// is obliged at all.
    pub fn in_force(&self, w: i64) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.effective_ms <= w)
            .filter(|v| v.covers(w))
    }

    /// The obliged windows starting in `[from_ms, to_ms)`, at most `max`,
    /// each with the version it is judged under.
    pub fn windows(&self, from_ms: i64, to_ms: i64, max: usize) -> Vec<(i64, &Version)> {
        let Some(first) = self.versions.first() else {
            return Vec::new();
        };
        let cadence = first.cadence;
        let mut w = cadence.ceil(from_ms.max(first.from_ms));
        let mut out = Vec::new();
        while w < to_ms && out.len() < max {
            if let Some(v) = self.in_force(w) {
                out.push((w, v));
            } else if self
                .versions
                .last()
                .is_some_and(|l| w >= l.effective_ms && l.until_ms.is_some_and(|u| w >= u))
            {
                // After the newest version's end nothing is obliged again.
                break;
            }
            w = w.saturating_add(cadence.window_ms());
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    const W: i64 = 1_796_032_800_000; // 2026-11-30T10:00Z

    fn v1() -> Version {
        Version {
            id: "obl-1".into(),
            version: 1,
            organisation: "scooter-co".into(),
            dataset: "scooter-trips".into(),
            cadence: Cadence::Hour,
            grace_ms: 15 * 60_000,
            from_ms: W,
            until_ms: None,
            effective_ms: W,
            recorded_by: "stadt/p".into(),
            recorded_at_ms: W - 1,
            ended: false,
        }
    }

    #[test]
    fn windows_before_from_and_from_until_on_are_not_obliged() {
        let mut v = v1();
        v.until_ms = Some(W + 3 * HOUR_MS);
        let o = Obligation { versions: vec![v] };
        assert!(o.in_force(W - HOUR_MS).is_none());
        assert!(o.in_force(W).is_some());
        assert!(o.in_force(W + 2 * HOUR_MS).is_some());
        assert!(o.in_force(W + 3 * HOUR_MS).is_none());
        let ws: Vec<i64> = o
            .windows(W - 5 * HOUR_MS, W + 10 * HOUR_MS, 100)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(ws, vec![W, W + HOUR_MS, W + 2 * HOUR_MS]);
    }

    #[test]
    fn a_change_applies_to_later_windows_only_and_an_end_stops_them() {
        let mut v2 = v1();
        v2.version = 2;
        v2.grace_ms = 0;
        v2.effective_ms = W + 2 * HOUR_MS;
        let mut v3 = v2.clone();
        v3.version = 3;
        v3.until_ms = Some(W + 4 * HOUR_MS);
        v3.effective_ms = W + 3 * HOUR_MS;
        v3.ended = true;
        let o = Obligation {
            versions: vec![v1(), v2, v3],
        };
        let got: Vec<(i64, u32)> = o
            .windows(W, W + 10 * HOUR_MS, 100)
            .into_iter()
            .map(|(w, v)| (w, v.version))
            .collect();
        assert_eq!(
            got,
            vec![
                (W, 1),
                (W + HOUR_MS, 1),
                (W + 2 * HOUR_MS, 2),
                (W + 3 * HOUR_MS, 3)
            ]
        );
        assert_eq!(o.current().unwrap().version, 3);
    }

    #[test]
    fn windows_are_bounded_and_aligned() {
        let o = Obligation {
            versions: vec![v1()],
        };
        assert_eq!(o.windows(W + 1, W + 100 * HOUR_MS, 5).len(), 5);
        assert_eq!(o.windows(W + 1, W + 100 * HOUR_MS, 5)[0].0, W + HOUR_MS);
        assert_eq!(Cadence::Hour.ceil(W), W);
        assert_eq!(Cadence::Hour.ceil(W + 1), W + HOUR_MS);
        assert_eq!(Cadence::Hour.floor(W - 1), W - HOUR_MS);
    }
}
