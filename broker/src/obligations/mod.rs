//! Obligations: datasets that organisations must deliver to this node on a
//! schedule, and what was delivered. `deliveries` records each attempt to
//! take a batch; `book` holds the obligations with their history (every
//! record, change and end a new version); `compliance` judges a window
//! from its attempts; [`Obligations`] keeps both durable in the
//! `obligations` table and flags every window that became non-compliant
//! (late, missing, invalid) exactly once in the audit log, remembering the
//! flags durably so a restart does not flag again.
//!
//! Who may record, change, end or read obligations is decided by the
//! policies before anything here is called (`rpc::obligations`).
//!
//! Rows of the `obligations` table, keyed by prefix:
//! - `v/<id>/<version, 10 digits>`: a [`Version`];
//! - `f/<id>/<window start, 16 hex digits>`: a [`Flag`];
//! - `j/<id>`: the last window start whose deadline the monitor judged.

pub mod book;
pub mod compliance;
pub mod deliveries;

pub use book::{Cadence, Obligation, Version};
pub use compliance::{Judgement, Status};
pub use deliveries::{Deliveries, Delivery, DeliveryError, HOUR_MS, Outcome};

use crate::audit::{AuditError, AuditLog, Draft};
use crate::clock::SharedClock;
use crate::pki::{OrgKind, Principal, Subject};
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_audit::EntryKind;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest grace period an obligation may give.
pub const MAX_GRACE_MS: i64 = 7 * 24 * HOUR_MS;
/// How far back the first window of a new obligation may lie.
pub const MAX_BACKDATE_MS: i64 = 31 * 24 * HOUR_MS;
/// Most windows one status answer holds per obligation.
pub const MAX_STATUS_WINDOWS: usize = 31 * 24;
/// Longest organisation or dataset name.
pub const MAX_NAME_CHARS: usize = 128;
/// Reasons of one rejection kept in a flag and shown in a status row.
pub const MAX_REASONS: usize = 3;
/// Characters of one reason shown.
pub const REASON_CHARS: usize = 120;
/// How long the monitor waits before it retries a failed pass.
pub const MONITOR_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// The audit action of a flag.
pub const FLAG_ACTION: &str = "flag_obligation";

/// Why an obligation could not be recorded, changed, ended or read.
#[derive(Debug, thiserror::Error)]
pub enum ObligationsError {
    /// The organisation is not a member of kind company or utility.
    #[error(
        "organisation `{0}` is not a company or utility in the signed membership, so it cannot be obliged"
    )]
    NotObligable(String),
    /// A name is empty, too long or holds a control character.
    #[error("{what} `{value}` is not a valid name")]
    BadName { what: &'static str, value: String },
    /// A time or period is not acceptable.
    #[error("{0}")]
    BadTime(String),
    /// No obligation has this id.
    #[error("no obligation `{0}`")]
    Unknown(String),
    /// The obligation has ended already.
    #[error("obligation `{0}` has ended already")]
    Ended(String),
    /// The same organisation already has an obligation for this dataset.
    #[error("organisation `{organisation}` already has obligation `{id}` for dataset `{dataset}`")]
    Duplicate {
        id: String,
        organisation: String,
        dataset: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// A window flagged non-compliant, remembered so it is flagged once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    pub id: String,
    pub version: u32,
    pub organisation: String,
    pub dataset: String,
    pub window_start_ms: i64,
    /// The status when it was flagged (a missing window can become late).
    pub status: Status,
    pub reasons: Vec<String>,
    pub flagged_at_ms: i64,
    /// The audit entry of the flag.
    pub audit_sequence: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "row", rename_all = "snake_case")]
enum Row {
    Version(Version),
    Flag(Flag),
    Judged { up_to_ms: i64 },
}

fn version_key(id: &str, version: u32) -> String {
    format!("v/{id}/{version:010}")
}
fn flag_key(id: &str, window_start_ms: i64) -> String {
    format!("f/{id}/{:016x}", (window_start_ms as u64) ^ (1 << 63))
}
fn judged_key(id: &str) -> String {
    format!("j/{id}")
}
/// The keys starting with `prefix` (none of ours holds a byte above `~`).
fn upper(prefix: &str) -> String {
    format!("{prefix}\u{7f}")
}

/// A new obligation.
#[derive(Debug, Clone)]
pub struct NewObligation {
    pub organisation: String,
    pub dataset: String,
    pub grace_ms: i64,
    /// First window; the next window start if absent.
    pub from_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// A change of an obligation (from the next window on).
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub grace_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// Which windows a status answer holds.
#[derive(Debug, Clone, Default)]
pub struct StatusFilter {
    pub organisation: Option<String>,
    pub dataset: Option<String>,
    /// Window starts in `[from_ms, to_ms)`; the last 24 windows up to the
    /// current one if absent.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// One window of one obligation as a status answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStatus {
    pub id: String,
    pub version: u32,
    pub organisation: String,
    pub dataset: String,
    pub judgement: Judgement,
    /// Whether (and as what) the window was flagged.
    pub flagged: Option<Status>,
}

/// The obligations this node holds and their compliance monitor.
#[derive(Debug)]
pub struct Obligations {
    store: Store,
    table: Table<String, Row>,
    deliveries: Deliveries,
    clock: SharedClock,
    own_org: String,
    write: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
}

fn check_name(what: &'static str, v: &str) -> Result<(), ObligationsError> {
    if v.is_empty() || v.chars().count() > MAX_NAME_CHARS || v.chars().any(char::is_control) {
        return Err(ObligationsError::BadName {
            what,
            value: crate::text::shown(v, 64),
        });
    }
    Ok(())
}

fn check_grace(grace_ms: i64) -> Result<(), ObligationsError> {
    if !(0..=MAX_GRACE_MS).contains(&grace_ms) {
        return Err(ObligationsError::BadTime(format!(
            "grace period of {}s is outside 0s..{}s",
            grace_ms / 1000,
            MAX_GRACE_MS / 1000
        )));
    }
    Ok(())
}

fn check_hour(what: &str, ms: i64) -> Result<(), ObligationsError> {
    if Cadence::Hour.floor(ms) != ms {
        return Err(ObligationsError::BadTime(format!(
            "{what} `{}` is not the start of a UTC hour",
            crate::timefmt::format_unix_ms(ms)
        )));
    }
    Ok(())
}

/// How a recorder is named in a version: organisation and the audit
/// pseudonym of the person (or the node's name).
fn recorder(audit: &AuditLog, by: &Principal) -> String {
    match &by.subject {
        Subject::User(u) => format!(
            "{}/{}",
            by.organisation,
            audit.pseudonym(&by.organisation, u)
        ),
        Subject::Node(n) => format!("{}/node/{n}", by.organisation),
    }
}

impl Obligations {
    /// The obligations in `store`, judged against `deliveries` by the node
    /// of organisation `own_org`.
    pub fn open(
        store: Store,
        deliveries: Deliveries,
        clock: SharedClock,
        own_org: &str,
    ) -> Result<Self, StoreError> {
        let table = store.table(TableName::Obligations)?;
        Ok(Self {
            store,
            table,
            deliveries,
            clock,
            own_org: own_org.to_owned(),
            write: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The deliveries the obligations are judged from (the one handle the
    /// takers record through, so the monitor hears of them).
    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }

    /// Every obligation with its versions, by id.
    pub fn list(&self) -> Result<Vec<Obligation>, ObligationsError> {
        let mut out: Vec<Obligation> = Vec::new();
        for (_, row) in self.table.range(&"v/".to_owned(), &upper("v/"))? {
            let Row::Version(v) = row else { continue };
            match out.last_mut() {
                Some(o) if o.versions.first().is_some_and(|f| f.id == v.id) => o.versions.push(v),
                _ => out.push(Obligation { versions: vec![v] }),
            }
        }
        Ok(out)
    }

    /// One obligation.
    pub fn get(&self, id: &str) -> Result<Option<Obligation>, ObligationsError> {
        let prefix = format!("v/{id}/");
        let versions: Vec<Version> = self
            .table
            .range(&prefix, &upper(&prefix))?
            .into_iter()
            .filter_map(|(_, r)| match r {
                Row::Version(v) => Some(v),
                _ => None,
            })
            .collect();
        Ok((!versions.is_empty()).then_some(Obligation { versions }))
    }

    async fn put(&self, rows: Vec<(String, Row)>) -> Result<(), ObligationsError> {
        let mut b = WriteBatch::new();
        for (k, r) in rows {
            b.put(&self.table, &k, &r)?;
        }
        self.store.commit_durable(b).await?;
        Ok(())
    }

    /// Records a new obligation for `organisation`, whose kind in the
    /// signed membership is `kind` (`None`: not a member). The caller was
    /// allowed to by the policies and the decision audited.
    pub async fn record(
        &self,
        audit: &AuditLog,
        by: &Principal,
        kind: Option<OrgKind>,
        new: NewObligation,
    ) -> Result<Version, ObligationsError> {
        check_name("organisation", &new.organisation)?;
        check_name("dataset", &new.dataset)?;
        if !matches!(kind, Some(OrgKind::Company | OrgKind::Utility)) {
            return Err(ObligationsError::NotObligable(crate::text::shown(
                &new.organisation,
                64,
            )));
        }
        check_grace(new.grace_ms)?;
        let now = self.clock.now_unix_ms();
        let from_ms = new.from_ms.unwrap_or_else(|| Cadence::Hour.ceil(now));
        check_hour("first window", from_ms)?;
        if from_ms < now.saturating_sub(MAX_BACKDATE_MS) {
            return Err(ObligationsError::BadTime(format!(
                "first window `{}` lies more than 31 days back",
                crate::timefmt::format_unix_ms(from_ms)
            )));
        }
        if let Some(u) = new.until_ms {
            check_hour("end", u)?;
            if u <= from_ms {
                return Err(ObligationsError::BadTime(format!(
                    "end `{}` is not after the first window",
                    crate::timefmt::format_unix_ms(u)
                )));
            }
        }
        let _w = self.write.lock().await;
        let all = self.list()?;
        if let Some(o) = all
            .iter()
            .filter_map(Obligation::current)
            .find(|v| v.organisation == new.organisation && v.dataset == new.dataset && !v.ended)
        {
            return Err(ObligationsError::Duplicate {
                id: o.id.clone(),
                organisation: crate::text::shown(&new.organisation, 64),
                dataset: crate::text::shown(&new.dataset, 64),
            });
        }
        let v = Version {
            id: format!("obl-{}", all.len() + 1),
            version: 1,
            organisation: new.organisation,
            dataset: new.dataset,
            cadence: Cadence::Hour,
            grace_ms: new.grace_ms,
            from_ms,
            until_ms: new.until_ms,
            effective_ms: from_ms,
            recorded_by: recorder(audit, by),
            recorded_at_ms: now,
            ended: false,
        };
        self.put(vec![(version_key(&v.id, 1), Row::Version(v.clone()))])
            .await?;
        self.wake.notify_one();
        Ok(v)
    }

    /// Changes obligation `id` from the next window on (`end`: ends it at
    /// `change.until_ms`, or at the next window start). Windows that
    /// started before keep the version in force then.
    pub async fn change(
        &self,
        audit: &AuditLog,
        by: &Principal,
        id: &str,
        change: Change,
        end: bool,
    ) -> Result<Version, ObligationsError> {
        let _w = self.write.lock().await;
        let o = self
            .get(id)?
            .ok_or_else(|| ObligationsError::Unknown(crate::text::shown(id, 64)))?;
        let Some(cur) = o.current() else {
            return Err(ObligationsError::Unknown(crate::text::shown(id, 64)));
        };
        if cur.ended {
            return Err(ObligationsError::Ended(cur.id.clone()));
        }
        let now = self.clock.now_unix_ms();
        let effective = Cadence::Hour.ceil(now).max(cur.effective_ms);
        let mut v = cur.clone();
        v.version = cur.version.saturating_add(1);
        v.effective_ms = effective;
        v.recorded_by = recorder(audit, by);
        v.recorded_at_ms = now;
        if let Some(g) = change.grace_ms {
            check_grace(g)?;
            v.grace_ms = g;
        }
        if end {
            v.ended = true;
            v.until_ms = Some(change.until_ms.unwrap_or(effective));
        } else if let Some(u) = change.until_ms {
            v.until_ms = Some(u);
        }
        if let Some(u) = v.until_ms {
            check_hour("end", u)?;
            // Ending before the next window would rewrite windows judged
            // under the old version.
            if u < effective.max(v.from_ms) {
                return Err(ObligationsError::BadTime(format!(
                    "end `{}` lies before the next window `{}`; past windows keep their obligation",
                    crate::timefmt::format_unix_ms(u),
                    crate::timefmt::format_unix_ms(effective.max(v.from_ms))
                )));
            }
        }
        self.put(vec![(version_key(id, v.version), Row::Version(v.clone()))])
            .await?;
        self.wake.notify_one();
        Ok(v)
    }

    /// The window range `filter` asks for, at the node's time `now`:
    /// `[from, to)`, by default the last 24 windows up to the current one.
    fn range_of(filter: &StatusFilter, now: i64) -> Result<(i64, i64), ObligationsError> {
        let to = filter
            .to_ms
            .unwrap_or_else(|| Cadence::Hour.floor(now).saturating_add(HOUR_MS));
        let from = filter
            .from_ms
            .unwrap_or_else(|| to.saturating_sub(24 * HOUR_MS));
        if from > to {
            return Err(ObligationsError::BadTime(format!(
                "`{}` is after `{}`",
                crate::timefmt::format_unix_ms(from),
                crate::timefmt::format_unix_ms(to)
            )));
        }
        Ok((from, to))
    }

    /// The obligations `filter` names (by their current version).
    fn matching(&self, filter: &StatusFilter) -> Result<Vec<Obligation>, ObligationsError> {
        let mut all = self.list()?;
        all.retain(|o| {
            o.current().is_some_and(|cur| {
                filter
                    .organisation
                    .as_ref()
                    .is_none_or(|x| *x == cur.organisation)
                    && filter.dataset.as_ref().is_none_or(|x| *x == cur.dataset)
            })
        });
        Ok(all)
    }

    /// The rejected attempts at the windows `filter` names (as
    /// [`Obligations::status`] would show them), oldest window first: each
    /// with the id its batch is kept under, if it was kept.
    pub fn rejected(&self, filter: &StatusFilter) -> Result<Vec<Delivery>, ObligationsError> {
        let (from, to) = Self::range_of(filter, self.clock.now_unix_ms())?;
        let mut out = Vec::new();
        for o in self.matching(filter)? {
            let Some(cur) = o.current() else { continue };
            out.extend(
                self.deliveries
                    .range(&cur.organisation, &cur.dataset, from, to)?
                    .into_iter()
                    .filter(|d| matches!(d.outcome, Outcome::Rejected { .. })),
            );
        }
        out.sort_by_key(|d| (d.window_start_ms, d.at_ms));
        Ok(out)
    }

    /// The windows of the obligations matching `filter`, judged at the
    /// node's time.
    pub fn status(&self, filter: &StatusFilter) -> Result<Vec<WindowStatus>, ObligationsError> {
        let now = self.clock.now_unix_ms();
        let (from, to) = Self::range_of(filter, now)?;
        let mut out = Vec::new();
        for o in self.matching(filter)? {
            let Some(cur) = o.current() else { continue };
            let windows = o.windows(from, to, MAX_STATUS_WINDOWS);
            let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
                continue;
            };
            let attempts = self.deliveries.range(
                &cur.organisation,
                &cur.dataset,
                first.0,
                last.0.saturating_add(1),
            )?;
            let flags = self.flags(&cur.id)?;
            for (w, v) in windows {
                let mut judgement = compliance::judge(w, v.grace_ms, now, &attempts);
                shorten(&mut judgement.reasons);
                out.push(WindowStatus {
                    id: v.id.clone(),
                    version: v.version,
                    organisation: v.organisation.clone(),
                    dataset: v.dataset.clone(),
                    judgement,
                    flagged: flags
                        .iter()
                        .find(|f| f.window_start_ms == w)
                        .map(|f| f.status),
                });
            }
        }
        Ok(out)
    }

    /// The flags of obligation `id`, oldest window first.
    pub fn flags(&self, id: &str) -> Result<Vec<Flag>, ObligationsError> {
        let prefix = format!("f/{id}/");
        Ok(self
            .table
            .range(&prefix, &upper(&prefix))?
            .into_iter()
            .filter_map(|(_, r)| match r {
                Row::Flag(f) => Some(f),
                _ => None,
            })
            .collect())
    }

    fn judged(&self, id: &str) -> Result<Option<i64>, ObligationsError> {
        Ok(match self.table.get(&judged_key(id))? {
            Some(Row::Judged { up_to_ms }) => Some(up_to_ms),
            _ => None,
        })
    }

    /// Judges every window whose deadline has passed since the last pass
    /// and flags each non-compliant one that is not flagged yet: audited
    /// (durable), then remembered. Returns the flags written and when the
    /// next deadline passes (unix ms), if any.
    pub async fn flag_due(
        &self,
        audit: &AuditLog,
    ) -> Result<(Vec<Flag>, Option<i64>), ObligationsError> {
        let _w = self.write.lock().await;
        let now = self.clock.now_unix_ms();
        let mut written = Vec::new();
        let mut next: Option<i64> = None;
        for o in self.list()? {
            let (Some(first), Some(cur)) = (o.versions.first(), o.current()) else {
                continue;
            };
            let start = match self.judged(&cur.id)? {
                Some(j) => j.saturating_add(HOUR_MS),
                None => first.from_ms,
            };
            // Windows whose deadline passed: start + hour + grace < now.
            let mut judged_up_to = None;
            let windows = o.windows(start, now, usize::MAX);
            let mut attempts: Option<Vec<Delivery>> = None;
            for (w, v) in windows {
                let deadline = compliance::deadline(w, v.grace_ms);
                if deadline >= now {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    break;
                }
                if attempts.is_none() {
                    attempts = Some(self.deliveries.range(
                        &cur.organisation,
                        &cur.dataset,
                        w,
                        Cadence::Hour.floor(now).saturating_add(1),
                    )?);
                }
                let j = compliance::judge(w, v.grace_ms, now, attempts.as_deref().unwrap_or(&[]));
                if j.status.non_compliant() && self.table.get(&flag_key(&v.id, w))?.is_none() {
                    written.push(self.flag(audit, v, j, now).await?);
                }
                judged_up_to = Some(w);
            }
            if let Some(w) = judged_up_to {
                let mut b = WriteBatch::new();
                b.put(
                    &self.table,
                    &judged_key(&cur.id),
                    &Row::Judged { up_to_ms: w },
                )?;
                self.store.commit_durable(b).await?;
            }
            // The next window's deadline, if none is waiting in this pass.
            if let Some(after) = judged_up_to.or(start.checked_sub(HOUR_MS))
                && let Some((w, v)) = o
                    .windows(after.saturating_add(HOUR_MS), i64::MAX, 1)
                    .first()
            {
                let d = compliance::deadline(*w, v.grace_ms);
                if d >= now {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        Ok((written, next))
    }

    /// Audits one flag, then remembers it.
    async fn flag(
        &self,
        audit: &AuditLog,
        v: &Version,
        j: Judgement,
        now: i64,
    ) -> Result<Flag, ObligationsError> {
        let mut reasons = j.reasons;
        shorten(&mut reasons);
        let resource = format!(
            "{}@{}/{}",
            v.dataset,
            v.organisation,
            crate::timefmt::format_unix_ms(j.window_start_ms)
        );
        let mut d = Draft::new(&self.own_org, FLAG_ACTION, &resource, EntryKind::Decision);
        d.request_id = Some(format!("{}/v{}", v.id, v.version));
        d.policy_ids = std::iter::once(format!("status:{}", j.status))
            .chain(reasons.iter().map(|r| format!("reason:{r}")))
            .collect();
        let audit_sequence = audit.append(d).await?;
        let f = Flag {
            id: v.id.clone(),
            version: v.version,
            organisation: v.organisation.clone(),
            dataset: v.dataset.clone(),
            window_start_ms: j.window_start_ms,
            status: j.status,
            reasons,
            flagged_at_ms: now,
            audit_sequence,
        };
        self.put(vec![(
            flag_key(&v.id, f.window_start_ms),
            Row::Flag(f.clone()),
        )])
        .await?;
        tracing::info!(
            obligation = %v.id,
            organisation = %v.organisation,
            dataset = %v.dataset,
            window = %crate::timefmt::format_unix_ms(f.window_start_ms),
            status = %f.status,
            "window flagged non-compliant"
        );
        Ok(f)
    }

    /// Wakes the monitor (after the node clock jumped: a manual clock in
    /// the demo's stories and the tests).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// The compliance monitor: sleeps until the next window's deadline
    /// passes (or an obligation changes, or a delivery is recorded), then
    /// flags what became non-compliant, until `shutdown`. No polling:
    /// without obligations it waits for a change. A failed pass is retried
    /// after [`MONITOR_RETRY`].
    pub async fn run(
        self: Arc<Self>,
        audit: AuditLog,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let wait = match self.flag_due(&audit).await {
                Ok((_, next)) => next.map(|at| {
                    // Just past the deadline: a window is late only after it.
                    let ms = at
                        .saturating_add(1)
                        .saturating_sub(self.clock.now_unix_ms())
                        .max(0);
                    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "obligations not judged; retrying");
                    Some(MONITOR_RETRY)
                }
            };
            let sleep = crate::clock::sleep_or_forever(wait);
            tokio::select! {
                () = sleep => {}
                () = self.wake.notified() => {}
                () = self.deliveries.recorded().notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// At most [`MAX_REASONS`] reasons of at most [`REASON_CHARS`] characters.
fn shorten(reasons: &mut Vec<String>) {
    reasons.truncate(MAX_REASONS);
    for r in reasons.iter_mut() {
        *r = crate::text::shown(r, REASON_CHARS);
    }
}

/// Records with history, flags once (also after a reopen), the monitor
/// driven by a manual clock.
#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::pki::Role;
    use crate::store::StoreOptions;

    const W: i64 = 1_796_032_800_000; // 2026-11-30T10:00Z
    const GRACE: i64 = 15 * 60_000;

    fn operator() -> Principal {
        Principal {
            federation: "munich".into(),
            organisation: "stadt".into(),
            organisation_kind: OrgKind::City,
            subject: Subject::User("olga".into()),
            role: Some(Role::Operator),
            certificate_sha256: "stadt-olga".into(),
            not_after: i64::MAX,
            issuer_ca_spki_sha256: "stadt-ca".into(),
        }
    }

    fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> Obligations {
        let store = Store::open(
            path,
            &StoreOptions {
                cache_bytes: 1 << 20,
            },
        )
        .unwrap();
        let d = Deliveries::open(store.clone()).unwrap();
        Obligations::open(store, d, clock, "stadt").unwrap()
    }

    /// Records `n` for an organisation of `kind` by the city's operator.
    async fn rec(
        o: &Obligations,
        audit: &AuditLog,
        kind: Option<OrgKind>,
        n: NewObligation,
    ) -> Result<Version, ObligationsError> {
        o.record(audit, &operator(), kind, n).await
    }

    fn new(org: &str) -> NewObligation {
        NewObligation {
            organisation: org.into(),
            dataset: "scooter-trips".into(),
            grace_ms: GRACE,
            from_ms: Some(W),
            until_ms: None,
        }
    }

    async fn deliver(o: &Obligations, window: i64, at: i64, outcome: Outcome) {
        o.deliveries()
            .record(&Delivery {
                organisation: "scooter-co".into(),
                dataset: "scooter-trips".into(),
                window_start_ms: window,
                at_ms: at,
                outcome,
            })
            .await
            .unwrap();
    }

    fn accepted() -> Outcome {
        Outcome::Accepted {
            rows: vec![("trips".into(), 2)],
        }
    }

    #[tokio::test]
    async fn only_companies_and_utilities_are_obliged_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(W - 60_000);
        let (audit, _s, _tx) =
            crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
        let o = open(&dir.path().join("o"), clock);
        for kind in [
            None,
            Some(OrgKind::City),
            Some(OrgKind::University),
            Some(OrgKind::Public),
        ] {
            let e = o
                .record(&audit, &operator(), kind, new("x"))
                .await
                .unwrap_err();
            assert!(matches!(e, ObligationsError::NotObligable(_)), "{e}");
        }
        let mut bad = new("scooter-co");
        bad.dataset = "a\nb".into();
        assert!(matches!(
            rec(&o, &audit, Some(OrgKind::Company), bad)
                .await
                .unwrap_err(),
            ObligationsError::BadName { .. }
        ));
        let mut off = new("scooter-co");
        off.from_ms = Some(W + 1);
        assert!(matches!(
            rec(&o, &audit, Some(OrgKind::Company), off)
                .await
                .unwrap_err(),
            ObligationsError::BadTime(_)
        ));
        let v = rec(&o, &audit, Some(OrgKind::Company), new("scooter-co"))
            .await
            .unwrap();
        assert_eq!((v.id.as_str(), v.version, v.from_ms), ("obl-1", 1, W));
        assert!(v.recorded_by.starts_with("stadt/") && !v.recorded_by.contains("olga"));
        let dup = rec(&o, &audit, Some(OrgKind::Company), new("scooter-co"))
            .await
            .unwrap_err();
        assert!(matches!(dup, ObligationsError::Duplicate { .. }), "{dup}");
        assert!(
            rec(&o, &audit, Some(OrgKind::Utility), new("swm"))
                .await
                .is_ok()
        );
        assert_eq!(o.list().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn each_non_compliant_window_is_flagged_once_also_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(W - 60_000);
        let (audit, _s, _tx) =
            crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
        let path = dir.path().join("o");
        {
            let o = open(&path, clock.clone());
            rec(&o, &audit, Some(OrgKind::Company), new("scooter-co"))
                .await
                .unwrap();
            // 10:00 delivered on time, 11:00 rejected, 12:00 nothing, 13:00
            // accepted late.
            deliver(&o, W, W + HOUR_MS + 60_000, accepted()).await;
            deliver(
                &o,
                W + HOUR_MS,
                W + 2 * HOUR_MS + 1,
                Outcome::Rejected {
                    reasons: vec!["trip `t1` ends before it starts".into()],
                    kept_as: Some("b1".into()),
                },
            )
            .await;
            // Nothing is due yet: the first deadline is 11:15.
            let (flags, next) = o.flag_due(&audit).await.unwrap();
            assert!(flags.is_empty());
            assert_eq!(next, Some(W + HOUR_MS + GRACE));
            clock.set_unix_ms(W + 3 * HOUR_MS + GRACE + 1); // past 12:00's deadline
            let before = audit.size();
            let (flags, next) = o.flag_due(&audit).await.unwrap();
            let got: Vec<(i64, Status)> = flags
                .iter()
                .map(|f| (f.window_start_ms, f.status))
                .collect();
            assert_eq!(
                got,
                vec![
                    (W + HOUR_MS, Status::Invalid),
                    (W + 2 * HOUR_MS, Status::Missing)
                ]
            );
            assert_eq!(flags[0].reasons, vec!["trip `t1` ends before it starts"]);
            assert_eq!(audit.size(), before + 2, "one entry per flag");
            assert_eq!(next, Some(W + 4 * HOUR_MS + GRACE));
            // Again: nothing new.
            assert!(o.flag_due(&audit).await.unwrap().0.is_empty());
            // 13:00 delivered late.
            deliver(&o, W + 3 * HOUR_MS, W + 4 * HOUR_MS + GRACE + 5, accepted()).await;
        }
        clock.set_unix_ms(W + 4 * HOUR_MS + GRACE + 10);
        let o = open(&path, clock.clone());
        let before = audit.size();
        let (flags, _) = o.flag_due(&audit).await.unwrap();
        assert_eq!(
            flags
                .iter()
                .map(|f| (f.window_start_ms, f.status))
                .collect::<Vec<_>>(),
            vec![(W + 3 * HOUR_MS, Status::Late)]
        );
        assert_eq!(audit.size(), before + 1);
        // The flags are remembered: forgetting the judged mark does not flag
        // again.
        let mut b = WriteBatch::new();
        b.remove(&o.table, &judged_key("obl-1"));
        o.store.commit_durable(b).await.unwrap();
        assert!(o.flag_due(&audit).await.unwrap().0.is_empty());
        assert_eq!(audit.size(), before + 1);
        let entry = allmende_audit::Entry::decode(
            &audit.entry_bytes(flags[0].audit_sequence).unwrap().unwrap(),
        )
        .unwrap();
        assert_eq!(entry.action, FLAG_ACTION);
        assert_eq!(
            entry.resource,
            "scooter-trips@scooter-co/2026-11-30T13:00:00Z"
        );
        assert_eq!(entry.policy_ids, vec!["status:late".to_owned()]);
        // Status shows all four windows (and the running one as pending).
        let rows = o
            .status(&StatusFilter {
                from_ms: Some(W),
                to_ms: Some(W + 5 * HOUR_MS),
                ..StatusFilter::default()
            })
            .unwrap();
        let got: Vec<(Status, Option<Status>)> = rows
            .iter()
            .map(|r| (r.judgement.status, r.flagged))
            .collect();
        assert_eq!(
            got,
            vec![
                (Status::Delivered, None),
                (Status::Invalid, Some(Status::Invalid)),
                (Status::Missing, Some(Status::Missing)),
                (Status::Late, Some(Status::Late)),
                (Status::Pending, None),
            ]
        );
    }

    #[tokio::test]
    async fn a_change_keeps_past_windows_under_the_old_version_and_an_end_stops_flags() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(W - 60_000);
        let (audit, _s, _tx) =
            crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
        let o = open(&dir.path().join("o"), clock.clone());
        rec(&o, &audit, Some(OrgKind::Company), new("scooter-co"))
            .await
            .unwrap();
        // Accepted at 11:10: on time under 15 minutes of grace.
        deliver(&o, W, W + HOUR_MS + 10 * 60_000, accepted()).await;
        clock.set_unix_ms(W + HOUR_MS + 20 * 60_000);
        let v2 = o
            .change(
                &audit,
                &operator(),
                "obl-1",
                Change {
                    grace_ms: Some(0),
                    until_ms: None,
                },
                false,
            )
            .await
            .unwrap();
        assert_eq!((v2.version, v2.effective_ms), (2, W + 2 * HOUR_MS));
        // Ending before the next window would rewrite the past: refused.
        let e = o
            .change(
                &audit,
                &operator(),
                "obl-1",
                Change {
                    grace_ms: None,
                    until_ms: Some(W + HOUR_MS),
                },
                true,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ObligationsError::BadTime(_)), "{e}");
        let v3 = o
            .change(&audit, &operator(), "obl-1", Change::default(), true)
            .await
            .unwrap();
        assert_eq!(
            (v3.version, v3.until_ms, v3.ended),
            (3, Some(W + 2 * HOUR_MS), true)
        );
        assert!(matches!(
            o.change(&audit, &operator(), "obl-1", Change::default(), true)
                .await
                .unwrap_err(),
            ObligationsError::Ended(_)
        ));
        clock.set_unix_ms(W + 10 * HOUR_MS);
        let (flags, next) = o.flag_due(&audit).await.unwrap();
        // 10:00 delivered under the old grace; 11:00 missing; nothing after the end.
        assert_eq!(
            flags
                .iter()
                .map(|f| (f.window_start_ms, f.version))
                .collect::<Vec<_>>(),
            vec![(W + HOUR_MS, 1)]
        );
        assert_eq!(next, None);
        assert_eq!(o.get("obl-1").unwrap().unwrap().versions.len(), 3);
    }

    /// The monitor flags at the deadline when the manual clock moves and the
    /// node nudges it, without polling.
    #[tokio::test]
    async fn the_monitor_flags_when_the_clock_passes_a_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(W - 60_000);
        let (audit, _s, _tx) =
            crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
        let o = Arc::new(open(&dir.path().join("o"), clock.clone()));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(o.clone().run(audit.clone(), rx));
        rec(&o, &audit, Some(OrgKind::Company), new("scooter-co"))
            .await
            .unwrap();
        clock.set_unix_ms(W + HOUR_MS + GRACE + 1);
        o.nudge();
        let mut flagged = Vec::new();
        for _ in 0..200 {
            flagged = o.flags("obl-1").unwrap();
            if !flagged.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged[0].status, Status::Missing);
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
