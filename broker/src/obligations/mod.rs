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
        Subject::User(u) => format!("{}/{}", by.organisation, audit.pseudonym(&by.organisation, u)),
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
        if let Some(o) = all.iter().filter_map(Obligation::current).find(|v| {
            v.organisation == new.organisation && v.dataset == new.dataset && !v.ended
        }) {
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

    /// The windows of the obligations matching `filter`, judged at the
    /// node's time.
    pub fn status(&self, filter: &StatusFilter) -> Result<Vec<WindowStatus>, ObligationsError> {
        let now = self.clock.now_unix_ms();
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
        let mut out = Vec::new();
        for o in self.list()? {
            let Some(cur) = o.current() else { continue };
            if filter
                .organisation
                .as_ref()
                .is_some_and(|x| *x != cur.organisation)
                || filter.dataset.as_ref().is_some_and(|x| *x != cur.dataset)
            {
                continue;
            }
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
        self.put(vec![(flag_key(&v.id, f.window_start_ms), Row::Flag(f.clone()))])
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
            let sleep = async move {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests;
