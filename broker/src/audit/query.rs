//! Queries over the log (DPO tools, citizens' own accesses): a time range
//! is a sequence range found by binary search; the most selective index
//! names the candidates, the rest is filtered on decoded entries.

use super::index::{
    FIELD_DATASET, FIELD_DECISION, FIELD_ORG, FIELD_PURPOSE, FIELD_SUBJECT, FIELD_USER, INDEX_SPAN,
    decision_term, posting_key, posting_prefix, postings_of,
};
use super::log::{AuditError, AuditLog};
use allmende_audit::{Decision, Entry, SubjectHash};
use std::sync::atomic::Ordering;

impl AuditLog {
    /// The first sequence below `end` whose entry's time is `>= time_ms`
    /// (`end` if none). Entry times never decrease along the log; entries
    /// pruned by retention (the oldest) count as older than any time.
    pub(super) fn first_at_or_after(&self, time_ms: u64, end: u64) -> Result<u64, AuditError> {
        let (mut lo, mut hi) = (0u64, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let time = match self.inner.entries.get(&mid)? {
                Some(bytes) if !bytes.is_empty() => {
                    Entry::decode(&bytes)
                        .map_err(|err| AuditError::Corrupt(format!("entry {mid}: {err}")))?
                        .time_ms
                }
                // Pruned by retention: older than any time.
                Some(_) => 0,
                None => {
                    return Err(AuditError::Corrupt(format!("entry {mid} is missing")));
                }
            };
            if time < time_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Runs a query over the log (DPO tools). Uses the most selective index
    /// and filters the rest on decoded entries; pages by sequence.
    pub fn query(&self, filter: &QueryFilter) -> Result<QueryPage, AuditError> {
        let limit = filter.limit.clamp(1, 1000);
        let mut start = filter.after.map_or(0, |a| a.saturating_add(1));
        let mut end = self.size();
        // Entry times never decrease along the log: a time range is a
        // sequence range, found by binary search.
        if let Some(from) = filter.from_ms {
            start = start.max(self.first_at_or_after(from, end)?);
        }
        if let Some(to) = filter.to_ms {
            end = end.min(self.first_at_or_after(to, end)?);
        }
        // Candidate sequences from an index, when the filter names one.
        let user_key = filter.user.as_ref().map(|(org, u)| self.pseudonym(org, u));
        let subject = filter.subject.as_ref().map(|s| self.subject_hash(s));
        let subject_key = subject.as_ref().map(SubjectHash::to_hex);
        let index_prefix = if let Some(s) = &subject {
            posting_prefix(FIELD_SUBJECT, &s.0[..1])
        } else if let Some(d) = &filter.dataset {
            posting_prefix(FIELD_DATASET, d.as_bytes())
        } else if let Some(u) = &user_key {
            posting_prefix(FIELD_USER, u.as_bytes())
        } else if let Some(o) = &filter.org {
            posting_prefix(FIELD_ORG, o.as_bytes())
        } else if let Some(p) = &filter.purpose {
            posting_prefix(FIELD_PURPOSE, p.as_bytes())
        } else {
            filter
                .decision
                .and_then(|d| posting_prefix(FIELD_DECISION, decision_term(d)))
        };
        let indexed = self.inner.indexed.load(Ordering::SeqCst).min(end);
        let mut out = Vec::new();
        let mut next_after = None;
        let mut consider = |seq: u64, bytes: &[u8]| -> Result<bool, AuditError> {
            if bytes.is_empty() {
                // Pruned by retention.
                return Ok(false);
            }
            let e = Entry::decode(bytes)
                .map_err(|err| AuditError::Corrupt(format!("entry {seq}: {err}")))?;
            if filter.matches(&e, user_key.as_deref(), subject_key.as_deref()) {
                out.push(e);
            }
            next_after = Some(seq);
            Ok(out.len() >= limit)
        };
        match index_prefix {
            Some(prefix) if indexed > start => {
                // Indexed part first (the term's posting lists in range
                // order, from the last one that can hold `start`), then the
                // unindexed tail by scan.
                const PAGE: usize = 64;
                let mut from_key = posting_key(&prefix, start.saturating_sub(INDEX_SPAN - 1));
                let to_key = posting_key(&prefix, indexed);
                let mut done = false;
                'lists: loop {
                    let lists = self.inner.index.range_limit(&from_key, &to_key, PAGE)?;
                    let Some((last, _)) = lists.last() else {
                        break;
                    };
                    let more = lists.len() == PAGE;
                    from_key = last.clone();
                    from_key.push(0);
                    for (k, v) in lists {
                        let Some(first) = k
                            .get(k.len().saturating_sub(8)..)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes))
                        else {
                            continue;
                        };
                        for seq in postings_of(first, &v, subject.as_ref().map(|s| &s.0)) {
                            if seq < start {
                                continue;
                            }
                            if seq >= indexed {
                                break;
                            }
                            if let Some(bytes) = self.inner.entries.get(&seq)?
                                && consider(seq, &bytes)?
                            {
                                done = true;
                                break 'lists;
                            }
                        }
                    }
                    if !more {
                        break;
                    }
                }
                if !done {
                    for (seq, bytes) in self.entry_range(indexed.max(start), end)? {
                        if consider(seq, &bytes)? {
                            break;
                        }
                    }
                }
            }
            _ => {
                let mut from = start;
                'scan: while from < end {
                    let to = end.min(from + 1024);
                    for (seq, bytes) in self.entry_range(from, to)? {
                        if consider(seq, &bytes)? {
                            break 'scan;
                        }
                    }
                    from = to;
                }
            }
        }
        let more = out.len() >= limit;
        Ok(QueryPage {
            entries: out,
            next_after: if more { next_after } else { None },
        })
    }
}

/// Filters of an audit query. `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    pub dataset: Option<String>,
    pub org: Option<String>,
    /// (organisation, user id) in clear; matched through its pseudonym.
    pub user: Option<(String, String)>,
    pub purpose: Option<String>,
    pub decision: Option<Decision>,
    /// Data subject in clear; matched through its keyed hash.
    pub subject: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Page after this sequence number.
    pub after: Option<u64>,
    pub limit: usize,
}

impl QueryFilter {
    fn matches(&self, e: &Entry, user_key: Option<&str>, subject_key: Option<&str>) -> bool {
        self.dataset.as_ref().is_none_or(|d| &e.resource == d)
            && self.org.as_ref().is_none_or(|o| &e.principal.org == o)
            && user_key.is_none_or(|u| e.principal.user.as_deref() == Some(u))
            && self
                .purpose
                .as_ref()
                .is_none_or(|p| e.purpose.as_deref() == Some(p.as_str()))
            && self.decision.is_none_or(|d| e.decision == Some(d))
            && subject_key.is_none_or(|s| e.subjects.iter().any(|h| h.to_hex() == s))
            && self.from_ms.is_none_or(|f| e.time_ms >= f)
            && self.to_ms.is_none_or(|t| e.time_ms < t)
    }
}

/// One page of query results.
#[derive(Debug, Clone)]
pub struct QueryPage {
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next_after: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::audit::log::tests::{draft, open, open_with_clock};
    use crate::clock::ManualClock;
    use std::time::Duration;

    /// Index-backed queries (several ranges, subjects sharing hash buckets,
    /// an unindexed tail, paging) return exactly what a scan of the log
    /// finds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexed_queries_equal_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(1_800_000_000_000);
        let (log, _s, _stop) = open_with_clock(dir.path(), clock.clone()).await;
        // Appends in rounds of 100, one second apart (entry times step).
        let append_all = |from: u64, to: u64| {
            let (log, clock) = (log.clone(), clock.clone());
            async move {
                for round in (from..to).step_by(100) {
                    let mut tasks = Vec::new();
                    for i in round..to.min(round + 100) {
                        let log = log.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut d = draft(
                                ["air-quality", "smart-meter-readings", "x"][(i % 3) as usize],
                                &format!("user-{}", i % 5),
                                &format!("HH-{}", i % 700),
                            );
                            if i % 11 == 0 {
                                // Twice the same subject, and a second one.
                                d.subjects.push(format!("HH-{}", i % 700));
                                d.subjects.push("HH-shared".into());
                            }
                            if i % 4 == 0 {
                                d.purpose = Some("PublicInterest".into());
                            }
                            if i % 6 == 0 {
                                d.decision = Some(Decision::Deny);
                            }
                            if i % 13 == 0 {
                                d.purpose = None;
                                d.decision = None;
                            }
                            log.append(d).await.unwrap()
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    clock.advance(Duration::from_secs(1));
                }
            }
        };
        let wait_indexed = |n: u64| {
            let log = log.clone();
            async move {
                for _ in 0..300 {
                    if log.status().indexed >= n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(log.status().indexed >= n, "index did not reach {n}");
            }
        };
        let filters = || {
            let mut v = vec![
                QueryFilter {
                    subject: Some("HH-shared".into()),
                    ..Default::default()
                },
                QueryFilter {
                    dataset: Some("air-quality".into()),
                    ..Default::default()
                },
                QueryFilter {
                    user: Some(("tum".into(), "user-3".into())),
                    ..Default::default()
                },
                QueryFilter {
                    org: Some("tum".into()),
                    ..Default::default()
                },
                QueryFilter {
                    subject: Some("nobody".into()),
                    ..Default::default()
                },
            ];
            for h in [0, 1, 7, 350, 699] {
                v.push(QueryFilter {
                    subject: Some(format!("HH-{h}")),
                    ..Default::default()
                });
            }
            v.push(QueryFilter {
                purpose: Some("PublicInterest".into()),
                ..Default::default()
            });
            v.push(QueryFilter {
                decision: Some(Decision::Deny),
                ..Default::default()
            });
            v.push(QueryFilter {
                purpose: Some("AcademicResearch".into()),
                decision: Some(Decision::Allow),
                ..Default::default()
            });
            // Time ranges: before everything, inside, on round boundaries,
            // after everything; alone and with an indexed filter.
            let t0 = 1_800_000_000_000u64;
            for (from, to) in [
                (None, Some(t0)),
                (Some(t0 + 3_000), Some(t0 + 5_000)),
                (Some(t0 + 2_500), None),
                (None, Some(t0 + 9_000)),
                (Some(t0 + 14_000), None),
                (Some(t0 + 60_000), None),
                // Reversed and extreme bounds: empty, no panic.
                (Some(t0 + 5_000), Some(t0 + 3_000)),
                (Some(u64::MAX), Some(0)),
                (Some(0), Some(u64::MAX)),
            ] {
                v.push(QueryFilter {
                    from_ms: from,
                    to_ms: to,
                    ..Default::default()
                });
                v.push(QueryFilter {
                    dataset: Some("air-quality".into()),
                    from_ms: from,
                    to_ms: to,
                    ..Default::default()
                });
                v.push(QueryFilter {
                    decision: Some(Decision::Deny),
                    from_ms: from,
                    to_ms: to,
                    ..Default::default()
                });
            }
            v
        };
        let check = |log: &AuditLog| {
            let mut time_filters_hit = 0;
            let size = log.size();
            let all: Vec<Entry> = log
                .entry_range(0, size)
                .unwrap()
                .iter()
                .map(|(_, b)| Entry::decode(b).unwrap())
                .collect();
            for mut f in filters() {
                let user_key = f.user.as_ref().map(|(o, u)| log.pseudonym(o, u));
                let subject_key = f.subject.as_ref().map(|s| log.subject_hash(s).to_hex());
                let want: Vec<u64> = all
                    .iter()
                    .filter(|e| f.matches(e, user_key.as_deref(), subject_key.as_deref()))
                    .map(|e| e.sequence)
                    .collect();
                if f.from_ms.is_some() || f.to_ms.is_some() {
                    time_filters_hit += usize::from(!want.is_empty());
                }
                let mut got = Vec::new();
                f.limit = 7;
                loop {
                    let page = log.query(&f).unwrap();
                    got.extend(page.entries.iter().map(|e| e.sequence));
                    match page.next_after {
                        Some(a) => f.after = Some(a),
                        None => break,
                    }
                }
                assert_eq!(got, want, "{f:?}");
            }
            assert!(time_filters_hit >= 9, "time filters matched too little");
        };
        append_all(0, 700).await;
        wait_indexed(700).await;
        append_all(700, 1500).await;
        // Part indexed, part not yet.
        check(&log);
        wait_indexed(1500).await;
        check(&log);
    }

    #[tokio::test]
    async fn queries_filter_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _s, _stop) = open(dir.path()).await;
        for i in 0..30 {
            let ds = if i % 3 == 0 {
                "air-quality"
            } else {
                "smart-meter-readings"
            };
            log.append(draft(ds, "alice", "s")).await.unwrap();
        }
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = log
                .query(&QueryFilter {
                    dataset: Some("air-quality".into()),
                    after,
                    limit: 4,
                    ..Default::default()
                })
                .unwrap();
            all.extend(page.entries.iter().map(|e| e.sequence));
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        assert_eq!(all, (0..30).step_by(3).collect::<Vec<_>>());
        let none = log
            .query(&QueryFilter {
                decision: Some(Decision::Deny),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(none.entries.is_empty());
    }
}
