//! Erasure of a data subject (GDPR Art. 17/19), at the controller's node.
//!
//! - An erasure is a durable record (random record id, subject as the
//!   controller knows it, dataset or every dataset, requested at and by,
//!   recipients), written after its consent-change entry
//!   (`erase_subject`, the subject only as the audit's keyed hash) is
//!   durable: no entry, no erasure.
//! - From then on the subject is excluded from every release of the
//!   datasets it covers, whatever consent record or grant exists: the
//!   consent store's answers ([`ConsentStore::permitted_subjects`] and the
//!   others) leave erased subjects out. The erasure is permanent: a later
//!   import cannot re-include the subject, and a later consent given for an
//!   erased dataset is refused (`FAILED_PRECONDITION`). Lifting an erasure
//!   is not offered (`docs/citizens.md`).
//! - Recipients are found through the audit log's keyed subject index:
//!   every completed release under a grant that named the subject
//!   ([`released_grants`]). The caller tells each recipient
//!   (`Grants::erasure_at_recipient`) and records them here
//!   ([`ConsentStore::set_recipients`]).

use super::{ConsentError, ConsentStore, new_record_id, valid_subject_id};
use crate::audit::{AuditLog, Draft, QueryFilter};
use crate::pki::Principal;
use crate::store::WriteBatch;
use allmende_audit::{ConsentStatus, EntryKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Days a recipient has to delete by default (`[limits] erasure_duty_days`).
pub const DEFAULT_ERASURE_DUTY_DAYS: u32 = 30;

/// One organisation told to delete, under one grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub org: String,
    pub grant_id: String,
    pub dataset: String,
    pub duty_id: String,
    /// Epoch seconds.
    pub due: i64,
    pub notice_id: String,
}

/// A subject's erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    /// 128 random bits, hex.
    pub record_id: String,
    /// As the controller knows it (stored at the controller only).
    pub subject_id: String,
    /// None: every dataset.
    pub dataset: Option<String>,
    /// Epoch seconds.
    pub requested_at: i64,
    /// Identity URI of the caller.
    pub requested_by: String,
    pub recipients: Vec<Recipient>,
}

impl Erasure {
    /// Whether this erasure covers `dataset`.
    pub fn covers(&self, dataset: &str) -> bool {
        self.dataset.as_deref().is_none_or(|d| d == dataset)
    }
}

/// The grants (with their dataset) under which a completed or ended release
/// named `subject` (matched through the audit's keyed subject hash),
/// optionally of one dataset; each once, in log order.
pub fn released_grants(
    audit: &AuditLog,
    subject: &str,
    dataset: Option<&str>,
) -> Result<Vec<(String, String)>, ConsentError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = audit.query(&QueryFilter {
            subject: Some(subject.to_owned()),
            dataset: dataset.map(str::to_owned),
            after,
            limit: 1000,
            ..Default::default()
        })?;
        for e in &page.entries {
            if let (EntryKind::ReleaseCompletion { rows_released, .. }, Some(g)) =
                (&e.kind, &e.grant_id)
                && *rows_released > 0
                && seen.insert(g.clone())
            {
                out.push((g.clone(), e.resource.clone()));
            }
        }
        match page.next_after {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

impl ConsentStore {
    /// The subject's erasures, oldest first.
    pub fn erasures_of(&self, subject: &str) -> Result<Vec<Erasure>, ConsentError> {
        let mut v: Vec<Erasure> = self
            .erasures
            .entries()?
            .into_iter()
            .filter(|((s, _), _)| s == subject)
            .map(|(_, e)| e)
            .collect();
        v.sort_by(|a, b| {
            a.requested_at
                .cmp(&b.requested_at)
                .then(a.record_id.cmp(&b.record_id))
        });
        Ok(v)
    }

    /// Erases `subject` (for `dataset`, or every dataset) on behalf of `by`
    /// (decided before): the consent-change entry is written, then the
    /// erasure is stored; from the moment it returns the subject is
    /// excluded from every release it covers.
    pub async fn erase_audited(
        &self,
        audit: &AuditLog,
        by: &Principal,
        subject: &str,
        dataset: Option<&str>,
    ) -> Result<Erasure, ConsentError> {
        if !valid_subject_id(subject) {
            return Err(ConsentError::Invalid(format!(
                "subject id `{}` must match [A-Za-z0-9._-]{{1,64}}",
                crate::text::shown(subject, 80)
            )));
        }
        if dataset.is_some_and(str::is_empty) {
            return Err(ConsentError::Invalid("`dataset` is empty".into()));
        }
        let mut d = Draft::by(
            by,
            "erase_subject",
            dataset.unwrap_or("*"),
            EntryKind::ConsentChange {
                status: ConsentStatus::Withdrawn,
            },
        );
        d.subjects = vec![subject.to_owned()];
        audit.append(d).await?;
        let erasure = Erasure {
            record_id: new_record_id()?,
            subject_id: subject.to_owned(),
            dataset: dataset.map(str::to_owned),
            requested_at: self.now(),
            requested_by: by.uri(),
            recipients: Vec::new(),
        };
        self.put_erasure(&erasure).await?;
        tracing::info!(dataset = ?dataset, "data subject erased");
        Ok(erasure)
    }

    /// Records the recipients told of erasure `erasure` (durable).
    pub async fn set_recipients(
        &self,
        erasure: &Erasure,
        recipients: Vec<Recipient>,
    ) -> Result<Erasure, ConsentError> {
        let e = Erasure {
            recipients,
            ..erasure.clone()
        };
        self.put_erasure(&e).await?;
        Ok(e)
    }

    async fn put_erasure(&self, e: &Erasure) -> Result<(), ConsentError> {
        let _w = self.write.lock().await;
        let mut batch = WriteBatch::new();
        batch.put(
            &self.erasures,
            &(e.subject_id.clone(), e.record_id.clone()),
            e,
        )?;
        self.store.commit_durable(batch).await?;
        let mut held = crate::locks::write(&self.erased, super::ERASED)?;
        let list = held.entry(e.subject_id.clone()).or_default();
        list.retain(|(id, _)| id != &e.record_id);
        list.push((e.record_id.clone(), e.dataset.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::super::tests::{DS, NOW, good_csv, open};
    use super::super::{CollectionMethod, Give};
    use super::*;
    use crate::clock::ManualClock;
    use allmende_policies::Purpose;

    fn dpo() -> Principal {
        Principal {
            federation: "munich".into(),
            organisation: "swm".into(),
            organisation_kind: crate::pki::OrgKind::Utility,
            subject: crate::pki::Subject::User("dana".into()),
            role: Some(crate::pki::Role::Dpo),
            certificate_sha256: "dana".into(),
            not_after: i64::MAX,
            issuer_ca_spki_sha256: "swm-ca".into(),
        }
    }

    /// An erased subject is excluded from every answer at once, a
    /// re-import does not bring them back, a later consent is refused, and
    /// the erasure survives a restart; other subjects and datasets keep
    /// their consent.
    #[tokio::test]
    async fn an_erased_subject_stays_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let c = open(&dir.path().join("consent"), clock.clone());
        let store = crate::store::Store::open(
            &dir.path().join("audit"),
            &crate::store::StoreOptions {
                cache_bytes: 1 << 20,
            },
        )
        .unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let audit = AuditLog::open(store, "munich", "swm", "swm-1", clock.clone(), rx)
            .await
            .unwrap();
        c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        c.import_csv("other", good_csv().replace(DS, "other").as_bytes())
            .await
            .unwrap();
        let p = Purpose::AcademicResearch;
        assert!(c.is_permitted(DS, "HH-000001", p, NOW));
        let before = audit.size();
        let e = c
            .erase_audited(&audit, &dpo(), "HH-000001", Some(DS))
            .await
            .unwrap();
        assert_eq!(audit.size(), before + 1, "the erasure's entry");
        assert_eq!(e.record_id.len(), 32);
        assert!(!c.is_permitted(DS, "HH-000001", p, NOW));
        assert!(!c.permitted_subjects(DS, p, NOW).contains("HH-000001"));
        assert_eq!(c.coverage(DS, p, NOW).consenting_subjects, 0);
        // Another dataset is not covered.
        assert!(c.is_permitted("other", "HH-000001", p, NOW));
        // A re-import does not re-include the subject.
        c.import_csv(DS, good_csv().as_bytes()).await.unwrap();
        assert!(!c.is_permitted(DS, "HH-000001", p, NOW));
        // A later consent for the erased dataset is refused.
        let give = Give {
            subject: "HH-000001".into(),
            dataset: DS.into(),
            purposes: BTreeSet::from([p]),
            expires_at: None,
            method: CollectionMethod::CitizenSelfService,
        };
        assert!(matches!(
            c.give(&give, "swm/HH-000001").await,
            Err(ConsentError::Erased { .. })
        ));
        assert!(!c.is_permitted(DS, "HH-000001", p, NOW));
        // Durable.
        drop(c);
        let c = open(&dir.path().join("consent"), clock);
        assert!(!c.is_permitted(DS, "HH-000001", p, NOW));
        assert!(c.is_permitted("other", "HH-000001", p, NOW));
        assert_eq!(c.erasures_of("HH-000001").unwrap(), vec![e]);
        // Every dataset.
        c.erase_audited(&audit, &dpo(), "HH-000001", None)
            .await
            .unwrap();
        assert!(!c.is_permitted("other", "HH-000001", p, NOW));
        assert!(
            c.erase_audited(&audit, &dpo(), "bad id", None)
                .await
                .is_err()
        );
    }
}
