//! The consent store: consent records per data subject, dataset and purpose,
//! kept at the controller's own node, and the queries the release pipeline
//! asks before any row leaves.
//!
//! - Records are keyed by (dataset, subject id). The subject id is stored as
//!   the controller knows it (the owner's connector filters rows by it); only
//!   the audit log uses keyed hashes of it.
//! - Purposes parse strictly as [`allmende_policies::Purpose`].
//! - [`ConsentStore::import_csv`] takes a utility's CSV, all rows or none
//!   ([`import`]).
//! - [`ConsentStore::withdraw`] is durable before it returns, and the very
//!   next query sees it.
//! - A change a caller asks for is audited before it is applied
//!   ([`apply`]: validate, write the consent-change entry, then change the
//!   store; no entry, no change).
//!
//! Times are Unix seconds, like the policy model's. See `docs/consent.md`.

pub mod apply;
pub mod erasure;
pub mod history;
pub mod import;
pub mod receipt;

pub use import::{
    CSV_COLUMNS, GIVEN_AT_SKEW_SECS, ImportReport, MAX_IMPORT_BYTES, MAX_IMPORT_ROWS, RowError,
};

use crate::clock::SharedClock;
use crate::locks::{self, Poisoned};
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_policies::{ConsentCoverage, Purpose};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How a record reached the controller (defined in `allmende-vocab`).
pub use allmende_vocab::CollectionMethod;
/// A subject's decision (the one definition is in `allmende-vocab`).
pub use allmende_vocab::ConsentStatus;
pub use receipt::{Receipt, ReceiptError, ReceiptSigner, VerifiedReceipt};

/// A fresh record id: 128 random bits, hex (unguessable).
pub fn new_record_id() -> Result<String, ConsentError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ConsentError::Invalid("no randomness for a consent record id".into()))?;
    Ok(hex::encode(bytes))
}

fn csv_import() -> CollectionMethod {
    CollectionMethod::CsvImport
}

/// One subject's consent decision for one dataset, shaped after ISO/IEC
/// TS 27560 (record id, subject, controller, dataset, purposes, status,
/// given-at, expiry, collection method; the legal basis is always consent,
/// `dpv:Consent`).
///
/// Records stored before record ids and collection methods existed read
/// with an empty id (the next change gives them one) and `csv-import` (the
/// only way records came in then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// 128 random bits, hex; stable for this subject and dataset across
    /// changes. Empty only in a record stored before ids existed.
    #[serde(default)]
    pub record_id: String,
    /// How the latest decision reached the controller.
    #[serde(default = "csv_import")]
    pub collection_method: CollectionMethod,
    pub subject_id: String,
    /// The controller organisation (this node's organisation).
    pub controller: String,
    pub dataset: String,
    /// Purposes consented to (or refused, for a refusal). Purposes withdrawn
    /// one by one are moved to `withdrawn_purposes`.
    pub purposes: BTreeSet<Purpose>,
    pub status: ConsentStatus,
    /// When the decision was made.
    pub given_at: i64,
    pub withdrawn_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// Purposes withdrawn individually while others stay given, with when.
    #[serde(default)]
    pub withdrawn_purposes: BTreeMap<Purpose, i64>,
    /// When this node stored this state (ms since the epoch).
    pub stored_at_ms: i64,
    /// `import` or `withdraw by <principal>`.
    pub source: String,
}

impl ConsentRecord {
    /// Whether rows of this subject may be released for `purpose` at `now`.
    pub fn permits(&self, purpose: Purpose, now: i64) -> bool {
        self.status == ConsentStatus::Given
            && self.purposes.contains(&purpose)
            && self.given_at <= now
            && self.expires_at.is_none_or(|e| now < e)
    }

    /// The time of the latest decision this record reflects.
    pub fn decided_at(&self) -> i64 {
        let mut t = self.given_at;
        if let Some(w) = self.withdrawn_at {
            t = t.max(w);
        }
        if let Some(w) = self.withdrawn_purposes.values().max() {
            t = t.max(*w);
        }
        t
    }

    fn same_decision(&self, other: &ConsentRecord) -> bool {
        self.subject_id == other.subject_id
            && self.controller == other.controller
            && self.dataset == other.dataset
            && self.purposes == other.purposes
            && self.status == other.status
            && self.given_at == other.given_at
            && self.withdrawn_at == other.withdrawn_at
            && self.expires_at == other.expires_at
            && self.withdrawn_purposes == other.withdrawn_purposes
    }
}

/// Errors of the consent store.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("consent import refused, nothing was stored: {} bad row(s):\n{}", .0.len(), import::join_rows(.0, usize::MAX))]
    Rows(Vec<RowError>),
    #[error("{0}")]
    Invalid(String),
    #[error("consent file of {bytes} bytes exceeds {MAX_IMPORT_BYTES} bytes; split it")]
    TooLarge { bytes: usize },
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consent change could not be audited; nothing was changed.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A receipt could not be signed.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// The subject was erased for the dataset; the erasure stands.
    #[error(
        "the data subject was erased for `{dataset}`; an erasure is permanent, no consent is recorded for it"
    )]
    Erased { dataset: String },
}

impl ConsentError {
    /// The message with at most `max_rows` bad rows spelled out (for
    /// transports with a size limit).
    pub fn summary(&self, max_rows: usize) -> String {
        match self {
            ConsentError::Rows(rows) => format!(
                "consent import refused, nothing was stored: {} bad row(s):\n{}",
                rows.len(),
                import::join_rows(rows, max_rows)
            ),
            other => other.to_string(),
        }
    }
}

/// What a withdrawal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawReport {
    /// Records changed.
    pub changed: usize,
    /// When it took effect (Unix seconds).
    pub withdrawn_at: i64,
    /// The changed records, as stored.
    pub records: Vec<ConsentRecord>,
}

/// A consent a subject gives for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Give {
    pub subject: String,
    pub dataset: String,
    /// Every purpose the subject consents to for the dataset (the record
    /// holds exactly these afterwards).
    pub purposes: BTreeSet<Purpose>,
    /// Unix seconds; none: until withdrawn.
    pub expires_at: Option<i64>,
    pub method: CollectionMethod,
}

type Records = HashMap<String, HashMap<String, ConsentRecord>>;

/// Erased subjects: subject → (erasure record id, dataset; none: every
/// dataset).
type Erased = HashMap<String, Vec<(String, Option<String>)>>;

/// The name the lock helpers log for the records.
const RECORDS: &str = "consent records";

/// The name the lock helpers log for the erased subjects.
const ERASED: &str = "erased subjects";

/// The node's consent store.
#[derive(Debug)]
pub struct ConsentStore {
    store: Store,
    table: Table<(String, String), ConsentRecord>,
    clock: SharedClock,
    controller: String,
    /// Serialises writers (each awaits a durable commit).
    write: tokio::sync::Mutex<()>,
    /// dataset → subject → record.
    records: RwLock<Records>,
    /// Erasures by (subject, record id).
    erasures: Table<(String, String), erasure::Erasure>,
    /// Erased subjects, excluded from every answer below.
    erased: RwLock<Erased>,
}

/// Formats Unix seconds as RFC 3339.
pub fn format_time(unix: i64) -> String {
    crate::timefmt::format_unix_secs(unix)
}

/// Checks a subject id. Subject ids double as the user id of the subject's
/// citizen certificate, so they follow the same rule: `[A-Za-z0-9._-]{1,64}`,
/// not starting with a dot.
pub fn valid_subject_id(s: &str) -> bool {
    crate::pki::identity::valid_leaf_name(s)
}

impl ConsentStore {
    /// Opens the store of `controller` (this node's organisation).
    pub fn open(store: Store, clock: SharedClock, controller: &str) -> Result<Self, ConsentError> {
        let table: Table<(String, String), ConsentRecord> = store.table(TableName::Consent)?;
        let mut records: Records = HashMap::new();
        for ((dataset, subject), rec) in table.entries()? {
            records.entry(dataset).or_default().insert(subject, rec);
        }
        let erasures: Table<(String, String), erasure::Erasure> =
            store.table(TableName::ConsentErasures)?;
        let mut erased: Erased = HashMap::new();
        for ((subject, id), e) in erasures.entries()? {
            erased.entry(subject).or_default().push((id, e.dataset));
        }
        Ok(Self {
            store,
            table,
            clock,
            controller: controller.to_owned(),
            write: tokio::sync::Mutex::new(()),
            records: RwLock::new(records),
            erasures,
            erased: RwLock::new(erased),
        })
    }

    /// Erased subjects (poisoned: none readable, the caller fails closed).
    fn erased(&self) -> Result<RwLockReadGuard<'_, Erased>, Poisoned> {
        locks::read(&self.erased, ERASED)
    }

    /// Whether `subject` is erased for `dataset` in `erased`.
    fn is_erased(erased: &Erased, dataset: &str, subject: &str) -> bool {
        erased.get(subject).is_some_and(|v| {
            v.iter()
                .any(|(_, d)| d.as_deref().is_none_or(|d| d == dataset))
        })
    }

    fn held(&self) -> Result<RwLockReadGuard<'_, Records>, Poisoned> {
        locks::read(&self.records, RECORDS)
    }

    fn held_mut(&self) -> Result<RwLockWriteGuard<'_, Records>, Poisoned> {
        locks::write(&self.records, RECORDS)
    }

    /// The store's clock reading (Unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.now_unix_secs()
    }

    /// The controller organisation.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    /// Subjects whose rows of `dataset` may be released for `purpose` at
    /// `now` (Unix seconds): consent given for that purpose, not withdrawn,
    /// not expired. None when the records cannot be read (fail closed).
    pub fn permitted_subjects(&self, dataset: &str, purpose: Purpose, now: i64) -> HashSet<String> {
        let (Ok(records), Ok(erased)) = (self.held(), self.erased()) else {
            return HashSet::new();
        };
        records
            .get(dataset)
            .map(|m| {
                m.values()
                    .filter(|r| {
                        r.permits(purpose, now) && !Self::is_erased(&erased, dataset, &r.subject_id)
                    })
                    .map(|r| r.subject_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether one subject's rows of `dataset` may be released for `purpose`.
    pub fn is_permitted(&self, dataset: &str, subject: &str, purpose: Purpose, now: i64) -> bool {
        let (Ok(records), Ok(erased)) = (self.held(), self.erased()) else {
            return false;
        };
        !Self::is_erased(&erased, dataset, subject)
            && records
                .get(dataset)
                .and_then(|m| m.get(subject))
                .is_some_and(|r| r.permits(purpose, now))
    }

    /// The consent facts the policy engine takes.
    pub fn coverage(&self, dataset: &str, purpose: Purpose, now: i64) -> ConsentCoverage {
        let n = match (self.held(), self.erased()) {
            (Ok(r), Ok(erased)) => r.get(dataset).map_or(0, |m| {
                m.values()
                    .filter(|r| {
                        r.permits(purpose, now) && !Self::is_erased(&erased, dataset, &r.subject_id)
                    })
                    .count()
            }),
            _ => 0,
        };
        ConsentCoverage {
            purpose_covered: n > 0,
            consenting_subjects: i64::try_from(n).unwrap_or(i64::MAX),
        }
    }

    /// One record.
    pub fn record(&self, dataset: &str, subject: &str) -> Option<ConsentRecord> {
        self.held()
            .ok()?
            .get(dataset)
            .and_then(|m| m.get(subject))
            .cloned()
    }

    /// Every record of a subject, by dataset.
    pub fn records_of(&self, subject: &str) -> Result<Vec<ConsentRecord>, ConsentError> {
        let mut v: Vec<ConsentRecord> = self
            .held()?
            .values()
            .filter_map(|m| m.get(subject).cloned())
            .collect();
        v.sort_by(|a, b| a.dataset.cmp(&b.dataset));
        Ok(v)
    }

    /// Number of records for `dataset`.
    pub fn count(&self, dataset: &str) -> usize {
        self.held()
            .ok()
            .and_then(|r| r.get(dataset).map(HashMap::len))
            .unwrap_or(0)
    }

    /// Withdraws a subject's consent: for one dataset or all, for one
    /// purpose or all. Durable before it returns; the next query sees it.
    pub async fn withdraw(
        &self,
        subject: &str,
        dataset: Option<&str>,
        purpose: Option<Purpose>,
        by: &str,
    ) -> Result<WithdrawReport, ConsentError> {
        self.withdraw_with(
            subject,
            dataset,
            purpose,
            CollectionMethod::RecordedByController,
            by,
        )
        .await
    }

    /// [`Self::withdraw`], recording how the withdrawal reached the
    /// controller.
    pub async fn withdraw_with(
        &self,
        subject: &str,
        dataset: Option<&str>,
        purpose: Option<Purpose>,
        method: CollectionMethod,
        by: &str,
    ) -> Result<WithdrawReport, ConsentError> {
        if !valid_subject_id(subject) {
            return Err(ConsentError::Invalid(format!(
                "subject id `{}` must match [A-Za-z0-9._-]{{1,64}}",
                crate::text::shown(subject, 80)
            )));
        }
        let _w = self.write.lock().await;
        let now = self.clock.now_unix_secs();
        let stored_at_ms = self.clock.now_unix_ms();
        let mut batch = WriteBatch::new();
        let mut changed = Vec::new();
        {
            let held = self.held()?;
            for (ds, m) in held.iter() {
                if dataset.is_some_and(|d| d != ds) {
                    continue;
                }
                let Some(old) = m.get(subject) else {
                    continue;
                };
                if old.status != ConsentStatus::Given {
                    continue;
                }
                let mut rec = old.clone();
                match purpose {
                    Some(p) => {
                        if !rec.purposes.remove(&p) {
                            continue;
                        }
                        rec.withdrawn_purposes.insert(p, now);
                        if rec.purposes.is_empty() {
                            rec.status = ConsentStatus::Withdrawn;
                            rec.withdrawn_at = Some(now);
                        }
                    }
                    None => {
                        rec.status = ConsentStatus::Withdrawn;
                        rec.withdrawn_at = Some(now);
                    }
                }
                rec.stored_at_ms = stored_at_ms;
                rec.source = format!("withdraw by {}", crate::text::shown(by, 200));
                rec.collection_method = method;
                if rec.record_id.is_empty() {
                    rec.record_id = new_record_id()?;
                }
                batch.put(&self.table, &(ds.clone(), subject.to_owned()), &rec)?;
                changed.push(rec);
            }
        }
        let report = WithdrawReport {
            changed: changed.len(),
            withdrawn_at: now,
            records: changed.clone(),
        };
        if changed.is_empty() {
            return Ok(report);
        }
        self.store.commit_durable(batch).await?;
        {
            let mut held = self.held_mut()?;
            for rec in changed {
                held.entry(rec.dataset.clone())
                    .or_default()
                    .insert(rec.subject_id.clone(), rec);
            }
        }
        tracing::info!(
            dataset = ?dataset,
            purpose = ?purpose.map(Purpose::as_str),
            changed = report.changed,
            "consent withdrawn"
        );
        Ok(report)
    }

    /// Checks a consent to be given, before anything is audited or stored.
    pub fn check_give(&self, give: &Give) -> Result<(), ConsentError> {
        if !valid_subject_id(&give.subject) {
            return Err(ConsentError::Invalid(format!(
                "subject id `{}` must match [A-Za-z0-9._-]{{1,64}}",
                crate::text::shown(&give.subject, 80)
            )));
        }
        if give.dataset.is_empty() {
            return Err(ConsentError::Invalid("`dataset` is empty".into()));
        }
        if give.purposes.is_empty() {
            return Err(ConsentError::Invalid(
                "consent names no purpose; give at least one".into(),
            ));
        }
        if Self::is_erased(&*self.erased()?, &give.dataset, &give.subject) {
            return Err(ConsentError::Erased {
                dataset: crate::text::shown(&give.dataset, 80),
            });
        }
        if let Some(e) = give.expires_at
            && e <= self.now()
        {
            return Err(ConsentError::Invalid(format!(
                "expiry {} is not in the future",
                format_time(e)
            )));
        }
        Ok(())
    }

    /// Records a consent the subject gives: the record of `give.dataset`
    /// holds exactly `give.purposes` from now on, until `give.expires_at`
    /// or a withdrawal. Durable before it returns; the next query sees it.
    pub async fn give(&self, give: &Give, by: &str) -> Result<ConsentRecord, ConsentError> {
        self.check_give(give)?;
        let _w = self.write.lock().await;
        let now = self.clock.now_unix_secs();
        let old = self.record(&give.dataset, &give.subject);
        let record_id = match old.as_ref().map(|o| o.record_id.clone()) {
            Some(id) if !id.is_empty() => id,
            _ => new_record_id()?,
        };
        let mut withdrawn_purposes = old
            .as_ref()
            .map(|o| o.withdrawn_purposes.clone())
            .unwrap_or_default();
        withdrawn_purposes.retain(|p, _| !give.purposes.contains(p));
        let rec = ConsentRecord {
            record_id,
            collection_method: give.method,
            subject_id: give.subject.clone(),
            controller: self.controller.clone(),
            dataset: give.dataset.clone(),
            purposes: give.purposes.clone(),
            status: ConsentStatus::Given,
            given_at: now,
            withdrawn_at: None,
            expires_at: give.expires_at,
            withdrawn_purposes,
            stored_at_ms: self.clock.now_unix_ms(),
            source: format!("give by {}", crate::text::shown(by, 200)),
        };
        let mut batch = WriteBatch::new();
        batch.put(
            &self.table,
            &(rec.dataset.clone(), rec.subject_id.clone()),
            &rec,
        )?;
        self.store.commit_durable(batch).await?;
        self.held_mut()?
            .entry(rec.dataset.clone())
            .or_default()
            .insert(rec.subject_id.clone(), rec.clone());
        tracing::info!(dataset = %give.dataset, purposes = give.purposes.len(), "consent given");
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test")]
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreOptions;
    use std::sync::Arc;

    pub(super) const DS: &str = "smart-meter-readings";
    // 2025-03-03T00:00:00Z
    pub(super) const NOW: i64 = 1_740_960_000;

    pub(super) fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> ConsentStore {
        let store = Store::open(
            dir,
            &StoreOptions {
                cache_bytes: 1 << 20,
            },
        )
        .unwrap();
        ConsentStore::open(store, clock, "swm").unwrap()
    }

    pub(super) const HEADER: &str =
        "subject_id,controller,dataset,purposes,status,given_at,withdrawn_at,expires_at\n";

    pub(super) fn good_csv() -> String {
        format!(
            "{HEADER}\
HH-000001,swm,{DS},AcademicResearch;ServiceProvision,given,2024-05-01T10:00:00+00:00,,\n\
HH-000002,swm,{DS},AcademicResearch,refused,2024-05-01T10:00:00+00:00,,\n\
HH-000003,swm,{DS},AcademicResearch,withdrawn,2024-05-01T10:00:00+00:00,2024-09-01T10:00:00+00:00,\n\
HH-000005,swm,{DS},AcademicResearch,given,2024-05-01T10:00:00Z,,2025-01-01T00:00:00Z\n\
HH-000006,swm,{DS},ServiceProvision,given,2024-05-01T10:00:00Z,,\n"
        )
    }

    #[tokio::test]
    async fn import_and_query() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let c = open(dir.path(), clock.clone());
        let r = c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        assert_eq!((r.rows, r.stored), (5, 5));
        let research = c.permitted_subjects(DS, Purpose::AcademicResearch, NOW);
        // HH-000005 expired on 2025-01-01.
        assert_eq!(research, HashSet::from(["HH-000001".to_owned()]));
        assert!(c.is_permitted(DS, "HH-000006", Purpose::ServiceProvision, NOW));
        assert!(!c.is_permitted(DS, "HH-000004", Purpose::AcademicResearch, NOW));
        assert!(!c.is_permitted("other", "HH-000001", Purpose::AcademicResearch, NOW));
        // Before expiry HH-000005 counted.
        let before = 1_735_000_000;
        assert_eq!(
            c.permitted_subjects(DS, Purpose::AcademicResearch, before)
                .len(),
            2
        );
        // Before the decision, nothing.
        assert!(
            c.permitted_subjects(DS, Purpose::AcademicResearch, 1_700_000_000)
                .is_empty()
        );
        let cov = c.coverage(DS, Purpose::ServiceProvision, NOW);
        assert_eq!((cov.purpose_covered, cov.consenting_subjects), (true, 2));
        // The same file again changes nothing.
        let r = c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        assert_eq!((r.stored, r.unchanged), (0, 5));
        // Durable across reopen.
        drop(c);
        let c = open(dir.path(), clock);
        assert_eq!(c.count(DS), 5);
        assert_eq!(
            c.records_of("HH-000003").unwrap()[0].status,
            ConsentStatus::Withdrawn
        );
    }

    #[tokio::test]
    async fn withdrawal_is_immediate_and_an_old_file_cannot_undo_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let c = open(dir.path(), clock.clone());
        c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        // One purpose of two.
        let r = c
            .withdraw(
                "HH-000001",
                Some(DS),
                Some(Purpose::ServiceProvision),
                "swm/dpo",
            )
            .await
            .unwrap();
        assert_eq!(r.changed, 1);
        assert!(c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
        assert!(!c.is_permitted(DS, "HH-000001", Purpose::ServiceProvision, NOW));
        // Everything.
        clock.advance(std::time::Duration::from_secs(60));
        let r = c
            .withdraw("HH-000001", None, None, "swm/HH-000001")
            .await
            .unwrap();
        assert_eq!(r.changed, 1);
        assert!(
            !c.permitted_subjects(DS, Purpose::AcademicResearch, NOW + 60)
                .contains("HH-000001")
        );
        let rec = c.record(DS, "HH-000001").unwrap();
        assert_eq!(rec.status, ConsentStatus::Withdrawn);
        assert_eq!(rec.withdrawn_at, Some(NOW + 60));
        assert!(rec.source.contains("HH-000001"));
        // Nothing left to withdraw.
        assert_eq!(
            c.withdraw("HH-000001", None, None, "x")
                .await
                .unwrap()
                .changed,
            0
        );
        assert_eq!(
            c.withdraw("HH-000002", None, None, "x")
                .await
                .unwrap()
                .changed,
            0
        );
        // Re-importing the old file keeps the newer withdrawal.
        let r = c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        assert_eq!((r.superseded, r.unchanged), (1, 4));
        assert!(!c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW + 60));
        // Durable.
        drop(c);
        let c = open(dir.path(), clock);
        assert_eq!(
            c.record(DS, "HH-000001").unwrap().status,
            ConsentStatus::Withdrawn
        );
        assert!(c.withdraw("bad id", None, None, "x").await.is_err());
    }

    /// A record stored before record ids and collection methods existed
    /// still reads (as a csv import without id), and the next change gives
    /// it an unguessable id it keeps afterwards.
    #[tokio::test]
    async fn an_old_record_still_reads_and_gets_an_id_on_its_next_change() {
        let old = format!(
            r#"{{"subject_id":"HH-000001","controller":"swm","dataset":"{DS}","purposes":["AcademicResearch"],"status":"given","given_at":{NOW},"withdrawn_at":null,"expires_at":null,"stored_at_ms":0,"source":"import"}}"#
        );
        let rec: ConsentRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(rec.record_id, "");
        assert_eq!(rec.collection_method, CollectionMethod::CsvImport);
        assert!(rec.permits(Purpose::AcademicResearch, NOW));

        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        {
            let store = Store::open(
                dir.path(),
                &StoreOptions {
                    cache_bytes: 1 << 20,
                },
            )
            .unwrap();
            let table: Table<(String, String), serde_json::Value> =
                store.table(TableName::Consent).unwrap();
            let mut batch = WriteBatch::new();
            batch
                .put(
                    &table,
                    &(DS.to_owned(), "HH-000001".to_owned()),
                    &serde_json::from_str::<serde_json::Value>(&old).unwrap(),
                )
                .unwrap();
            store.commit_durable(batch).await.unwrap();
        }
        let c = open(dir.path(), clock.clone());
        assert!(c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
        let w = c
            .withdraw("HH-000001", None, Some(Purpose::AcademicResearch), "x")
            .await
            .unwrap();
        let id = w.records[0].record_id.clone();
        assert_eq!(id.len(), 32);
        let g = c
            .give(
                &Give {
                    subject: "HH-000001".into(),
                    dataset: DS.into(),
                    purposes: BTreeSet::from([Purpose::ServiceProvision]),
                    expires_at: Some(NOW + 86_400),
                    method: CollectionMethod::CitizenSelfService,
                },
                "swm/HH-000001",
            )
            .await
            .unwrap();
        assert_eq!(g.record_id, id, "the record keeps its id");
        assert!(c.is_permitted(DS, "HH-000001", Purpose::ServiceProvision, NOW));
        assert!(!c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
        assert!(!c.is_permitted(DS, "HH-000001", Purpose::ServiceProvision, NOW + 86_400));
        // Two records never share an id.
        assert_ne!(new_record_id().unwrap(), new_record_id().unwrap());
    }

    /// A panic while the records were being changed leaves them unusable:
    /// no subject is permitted and every change and read refuses, until a
    /// restart reloads them from the store.
    #[tokio::test]
    async fn poisoned_records_permit_nothing_and_refuse_changes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let c = Arc::new(open(dir.path(), clock.clone()));
        c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        assert!(c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
        let c2 = c.clone();
        let _ = std::thread::spawn(move || {
            let _held = c2.records.write();
            panic!("a bug while changing the records");
        })
        .join();
        assert!(!c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
        assert!(
            c.permitted_subjects(DS, Purpose::AcademicResearch, NOW)
                .is_empty()
        );
        assert!(
            !c.coverage(DS, Purpose::AcademicResearch, NOW)
                .purpose_covered
        );
        assert!(c.record(DS, "HH-000001").is_none());
        assert!(matches!(
            c.records_of("HH-000001"),
            Err(ConsentError::Poisoned(_))
        ));
        assert!(matches!(
            c.withdraw("HH-000001", None, None, "x").await,
            Err(ConsentError::Poisoned(_))
        ));
        // A restart reloads the durable records.
        drop(c);
        let c = open(dir.path(), clock);
        assert!(c.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
    }
}
