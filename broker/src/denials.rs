//! Denied requests, rate-limited per caller and audited in aggregate (like
//! refused authentications): per caller and interval, the first
//! `audited` denials are written one by one (a DPO sees each of them);
//! further ones are counted and written as one aggregate entry per
//! (caller, interval); beyond `refused_after` the caller gets
//! `RESOURCE_EXHAUSTED` instead of a decision. A caller that keeps
//! hammering thus costs the node one durable write per interval.
//!
//! Fail closed: a denial that cannot be counted (a poisoned table) is
//! written one by one; an aggregate that cannot be written stays queued
//! and is written by the next flush; nothing here ever allows.

use crate::audit::{AuditLog, Draft};
use crate::locks;
use allmende_audit::{Decision, EntryKind};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Policy id an aggregate entry names.
pub const AGGREGATE_POLICY: &str = "denials-aggregated";

/// Most callers tracked at once; beyond that new callers share one slot.
const MAX_CALLERS: usize = 4096;
/// Most queued aggregates (e.g. while the log cannot be written).
const MAX_PENDING: usize = 4096;
/// Most distinct actions named in one aggregate.
const MAX_ACTIONS: usize = 16;
/// Key of the shared slot for callers beyond [`MAX_CALLERS`].
const OVERFLOW: &str = "*";

/// A caller over its denial budget: the request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many denied requests; the denials of the last `{interval_secs}` s are audited in aggregate, retry later"
)]
pub struct OverBudget {
    pub interval_secs: i64,
}

/// The names the lock helpers log for the denial state.
const LIMITS: &str = "denial budget";
const STATE: &str = "denial counts";

/// The budget per caller and interval (node config `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialLimits {
    /// Denials written one by one per caller and interval.
    pub audited: u32,
    /// Denials per caller and interval after which the caller is refused.
    pub refused_after: u32,
    /// The interval, ms.
    pub interval_ms: i64,
}

impl Default for DenialLimits {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        Self::from(&l)
    }
}

impl From<&crate::config::Limits> for DenialLimits {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            audited: l.denials_audited,
            refused_after: l.denials_refused_after,
            interval_ms: i64::try_from(l.denials_interval_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }
}

/// What to do with one denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the audit log as usual.
    Audit,
    /// Counted into the caller's aggregate entry; answer the denial.
    Aggregate,
    /// Counted; answer `RESOURCE_EXHAUSTED` (the caller keeps hammering).
    Refuse,
}

/// Who was denied, as the audit log records a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub org: String,
    pub user: Option<String>,
    pub peer_node: Option<String>,
}

#[derive(Debug)]
struct Slot {
    caller: Caller,
    window_start_ms: i64,
    denials: u64,
    suppressed: u64,
    first_suppressed_ms: i64,
    last_ms: i64,
    actions: BTreeSet<String>,
}

impl Slot {
    fn new(caller: Caller, now_ms: i64) -> Self {
        Self {
            caller,
            window_start_ms: now_ms,
            denials: 0,
            suppressed: 0,
            first_suppressed_ms: now_ms,
            last_ms: now_ms,
            actions: BTreeSet::new(),
        }
    }

    /// The aggregate of the window, if anything was suppressed.
    fn aggregate(&self, end_ms: i64) -> Option<Aggregate> {
        (self.suppressed > 0).then(|| Aggregate {
            caller: self.caller.clone(),
            count: self.suppressed,
            start_ms: self.first_suppressed_ms,
            end_ms: end_ms.max(self.last_ms),
            actions: self.actions.iter().cloned().collect(),
        })
    }
}

/// Denials of one caller in one interval that were not written one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub caller: Caller,
    pub count: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub actions: Vec<String>,
}

impl Aggregate {
    /// The audit entry of this aggregate: a deny decision by the caller,
    /// naming [`AGGREGATE_POLICY`], the count and interval in the resource.
    pub fn draft(&self) -> Draft {
        let mut d = Draft::new(
            &self.caller.org,
            &self.actions.join(","),
            &format!("denials/{}/{}..{}", self.count, self.start_ms, self.end_ms),
            EntryKind::Decision,
        );
        d.user = self.caller.user.clone();
        d.peer_node = self.caller.peer_node.clone();
        d.decision = Some(Decision::Deny);
        d.policy_ids = vec![AGGREGATE_POLICY.to_owned()];
        d
    }
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Slot>,
    pending: Vec<Aggregate>,
}

/// The denial budget of one node.
#[derive(Debug)]
pub struct Denials {
    limits: Mutex<DenialLimits>,
    state: Mutex<State>,
}

impl Default for Denials {
    fn default() -> Self {
        Self::new(DenialLimits::default())
    }
}

impl Denials {
    pub fn new(limits: DenialLimits) -> Self {
        Self {
            limits: Mutex::new(limits),
            state: Mutex::new(State::default()),
        }
    }

    /// Changes the budget (node start-up, from the config).
    pub fn configure(&self, limits: DenialLimits) {
        if let Ok(mut l) = locks::lock(&self.limits, LIMITS) {
            *l = limits;
        }
    }

    /// The budget in force.
    pub fn limits(&self) -> DenialLimits {
        locks::lock(&self.limits, LIMITS)
            .map(|l| *l)
            .unwrap_or_default()
    }

    /// Notes one denial of `action` for caller `key` at `now_ms`.
    pub fn note(&self, key: &str, caller: &Caller, action: &str, now_ms: i64) -> Verdict {
        let limits = self.limits();
        let Ok(mut st) = locks::lock(&self.state, STATE) else {
            // Cannot count: write it one by one.
            return Verdict::Audit;
        };
        let st = &mut *st;
        if !st.slots.contains_key(key) && st.slots.len() >= MAX_CALLERS {
            roll_expired(st, now_ms, limits.interval_ms, true);
        }
        let key = if st.slots.contains_key(key) || st.slots.len() < MAX_CALLERS {
            key
        } else {
            OVERFLOW
        };
        let slot = st.slots.entry(key.to_owned()).or_insert_with(|| {
            let c = if key == OVERFLOW {
                Caller {
                    org: OVERFLOW.into(),
                    user: None,
                    peer_node: None,
                }
            } else {
                caller.clone()
            };
            Slot::new(c, now_ms)
        });
        if now_ms.saturating_sub(slot.window_start_ms) >= limits.interval_ms {
            if let Some(a) = slot.aggregate(now_ms) {
                push_pending(&mut st.pending, a);
            }
            let c = slot.caller.clone();
            *slot = Slot::new(c, now_ms);
        }
        slot.denials += 1;
        slot.last_ms = now_ms;
        if slot.denials <= u64::from(limits.audited) {
            return Verdict::Audit;
        }
        if slot.suppressed == 0 {
            slot.first_suppressed_ms = now_ms;
        }
        slot.suppressed += 1;
        if slot.actions.len() < MAX_ACTIONS {
            slot.actions.insert(action.to_owned());
        }
        if slot.denials > u64::from(limits.refused_after) {
            Verdict::Refuse
        } else {
            Verdict::Aggregate
        }
    }

    /// The hook in `PolicyPoint::authorize`'s deny branch: `Ok(true)` when
    /// this denial is written one by one, `Ok(false)` when it is counted
    /// into the caller's aggregate, `RESOURCE_EXHAUSTED` when the caller is
    /// over its budget.
    pub fn on_deny(
        &self,
        caller: &crate::pki::Principal,
        action: &str,
        now_ms: i64,
    ) -> Result<bool, OverBudget> {
        use crate::pki::Subject;
        let (key, c) = match &caller.subject {
            Subject::User(u) => (
                format!("user:{}/{u}", caller.organisation),
                Caller {
                    org: caller.organisation.clone(),
                    user: Some(u.clone()),
                    peer_node: None,
                },
            ),
            Subject::Node(n) => (
                format!("node:{}/{n}", caller.organisation),
                Caller {
                    org: caller.organisation.clone(),
                    user: None,
                    peer_node: Some(n.clone()),
                },
            ),
        };
        self.verdict(&key, &c, action, now_ms)
    }

    /// [`Denials::on_deny`] for a public caller, counted under its
    /// pseudonym (its aggregate names `public` and the pseudonym's keyed
    /// hash, never an address or a certificate).
    pub fn on_deny_public(
        &self,
        caller: &crate::access::PublicCaller,
        action: &str,
        now_ms: i64,
    ) -> Result<bool, OverBudget> {
        let c = Caller {
            org: allmende_policies::PUBLIC_ORG_ID.to_owned(),
            user: Some(caller.pseudonym().to_owned()),
            peer_node: None,
        };
        self.verdict(
            &format!("public:{}", caller.pseudonym()),
            &c,
            action,
            now_ms,
        )
    }

    fn verdict(
        &self,
        key: &str,
        c: &Caller,
        action: &str,
        now_ms: i64,
    ) -> Result<bool, OverBudget> {
        match self.note(key, c, action, now_ms) {
            Verdict::Audit => Ok(true),
            Verdict::Aggregate => Ok(false),
            Verdict::Refuse => Err(OverBudget {
                interval_secs: self.limits().interval_ms / 1000,
            }),
        }
    }

    /// Takes the aggregates of every interval that ended by `now_ms`
    /// (`all`: also of the running ones, e.g. at shutdown).
    pub fn take_due(&self, now_ms: i64, all: bool) -> Vec<Aggregate> {
        let interval = self.limits().interval_ms;
        let Ok(mut st) = locks::lock(&self.state, STATE) else {
            return Vec::new();
        };
        let st = &mut *st;
        roll_expired(st, now_ms, if all { 0 } else { interval }, false);
        std::mem::take(&mut st.pending)
    }

    /// Puts aggregates that could not be written back in the queue.
    pub fn requeue(&self, aggs: Vec<Aggregate>) {
        if let Ok(mut st) = locks::lock(&self.state, STATE) {
            for a in aggs {
                push_pending(&mut st.pending, a);
            }
        }
    }

    /// Writes the due aggregates to `audit`; those that cannot be written
    /// stay queued for the next flush. Returns how many denials the
    /// written aggregates count.
    pub async fn flush(&self, audit: &AuditLog, now_ms: i64, all: bool) -> u64 {
        let due = self.take_due(now_ms, all);
        let mut written = 0;
        let mut failed = Vec::new();
        for a in due {
            if !failed.is_empty() {
                failed.push(a);
                continue;
            }
            match audit.append(a.draft()).await {
                Ok(_) => written += a.count,
                Err(e) => {
                    tracing::warn!(error = %e, "denial aggregate not audited; kept for the next flush");
                    failed.push(a);
                }
            }
        }
        self.requeue(failed);
        written
    }
}

/// Moves the aggregates of slots whose window ended to `pending`; with
/// `remove`, forgets those slots (to make room), else resets them.
fn roll_expired(st: &mut State, now_ms: i64, interval_ms: i64, remove: bool) {
    let mut gone = Vec::new();
    for (k, slot) in &mut st.slots {
        if now_ms.saturating_sub(slot.window_start_ms) < interval_ms {
            continue;
        }
        if let Some(a) = slot.aggregate(now_ms) {
            push_pending(&mut st.pending, a);
        }
        if remove || slot.denials == 0 {
            gone.push(k.clone());
        } else {
            let c = slot.caller.clone();
            *slot = Slot::new(c, now_ms);
            // A fresh window with nothing in it is dropped on the next roll.
        }
    }
    for k in gone {
        st.slots.remove(&k);
    }
}

/// Queues an aggregate; a full queue folds it into the last one of the
/// same caller or, failing that, into the last entry (counts never vanish).
fn push_pending(pending: &mut Vec<Aggregate>, a: Aggregate) {
    if pending.len() < MAX_PENDING {
        pending.push(a);
        return;
    }
    let idx = pending
        .iter()
        .rposition(|p| p.caller == a.caller)
        .or(pending.len().checked_sub(1));
    if let Some(i) = idx {
        let p = &mut pending[i];
        p.count += a.count;
        p.start_ms = p.start_ms.min(a.start_ms);
        p.end_ms = p.end_ms.max(a.end_ms);
        if p.caller != a.caller {
            p.caller = Caller {
                org: OVERFLOW.into(),
                user: None,
                peer_node: None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    fn caller(u: &str) -> Caller {
        Caller {
            org: "tum".into(),
            user: Some(u.into()),
            peer_node: None,
        }
    }

    fn limits() -> DenialLimits {
        DenialLimits {
            audited: 3,
            refused_after: 5,
            interval_ms: 10_000,
        }
    }

    #[test]
    fn first_denials_are_audited_then_aggregated_then_refused() {
        let d = Denials::new(limits());
        let c = caller("mallory");
        let v: Vec<Verdict> = (0..8)
            .map(|i| d.note("tum/mallory", &c, "register", 1000 + i))
            .collect();
        assert_eq!(
            v,
            [
                Verdict::Audit,
                Verdict::Audit,
                Verdict::Audit,
                Verdict::Aggregate,
                Verdict::Aggregate,
                Verdict::Refuse,
                Verdict::Refuse,
                Verdict::Refuse,
            ]
        );
        // Another caller has its own budget.
        assert_eq!(
            d.note("tum/alice", &caller("alice"), "read", 1010),
            Verdict::Audit
        );
        // Nothing is due before the interval ends.
        assert!(d.take_due(5000, false).is_empty());
        // One aggregate per (caller, interval) with the count.
        let due = d.take_due(11_000, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 5);
        assert_eq!(due[0].caller, c);
        assert_eq!(due[0].actions, ["register"]);
        // A new interval: a fresh budget.
        assert_eq!(
            d.note("tum/mallory", &c, "register", 11_001),
            Verdict::Audit
        );
    }

    #[test]
    fn the_table_and_the_queue_stay_bounded() {
        let d = Denials::new(DenialLimits {
            audited: 0,
            refused_after: 1,
            interval_ms: 1_000_000,
        });
        for i in 0..(MAX_CALLERS + 500) {
            let k = format!("o/u{i}");
            d.note(&k, &caller(&k), "read", 1);
        }
        assert!(d.state.lock().unwrap().slots.len() <= MAX_CALLERS + 1);
        let due = d.take_due(2, true);
        let total: u64 = due.iter().map(|a| a.count).sum();
        assert_eq!(total, (MAX_CALLERS + 500) as u64, "no denial is lost");
        assert!(due.iter().any(|a| a.caller.org == OVERFLOW));
        let long = "x".repeat(10_000);
        d.requeue(
            (0..MAX_PENDING + 10)
                .map(|_| Aggregate {
                    caller: caller(&long),
                    count: 1,
                    start_ms: 0,
                    end_ms: 1,
                    actions: vec![],
                })
                .collect(),
        );
        let q = d.take_due(3, true);
        assert_eq!(q.len(), MAX_PENDING);
        assert_eq!(
            q.iter().map(|a| a.count).sum::<u64>(),
            (MAX_PENDING + 10) as u64
        );
    }

    #[tokio::test]
    async fn aggregates_are_written_once_and_kept_when_the_log_fails() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::ManualClock::at_unix_ms(1_800_000_000_000);
        let (log, store, _stop) = crate::audit::open_test_log(dir.path(), clock).await;
        let d = Denials::new(limits());
        let c = caller("mallory");
        for i in 0..50 {
            d.note("tum/mallory", &c, "register", 1000 + i);
        }
        // The log refuses writes: the aggregate is kept, not lost.
        store.fail_writes(true);
        assert_eq!(d.flush(&log, 20_000, false).await, 0);
        store.fail_writes(false);
        let before = log.size();
        assert_eq!(d.flush(&log, 21_000, false).await, 47);
        assert_eq!(log.size(), before + 1, "one aggregate entry for 47 denials");
        let page = log
            .query(&crate::audit::QueryFilter {
                decision: Some(Decision::Deny),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        let e = page.entries.last().unwrap();
        assert_eq!(e.policy_ids, [AGGREGATE_POLICY]);
        assert!(e.resource.starts_with("denials/47/"), "{}", e.resource);
        // Nothing left to write.
        assert_eq!(d.flush(&log, 40_000, true).await, 0);
    }
}
