//! A consent change a caller asks for, audited before it is applied: check
//! and validate first (a refused request changes nothing and is not a
//! consent change), then write the consent-change entry to the audit log,
//! then change the store. If the entry cannot be written, nothing changes.
//!
//! The caller has been decided by the policies before (`PolicyPoint::
//! authorize` in the handler); these functions are the one place the
//! audit-then-apply order lives.

use super::{
    CollectionMethod, ConsentError, ConsentRecord, ConsentStore, Give, ImportReport,
    MAX_IMPORT_BYTES, Receipt, ReceiptSigner, WithdrawReport,
};
use crate::audit::{AuditLog, Draft};
use crate::pki::{Principal, Subject};
use allmende_audit::{ConsentStatus, EntryKind};
use allmende_policies::Purpose;

/// The consent-change entry for a change by `by`.
fn change(
    by: &Principal,
    action: &str,
    resource: &str,
    status: ConsentStatus,
    subjects: Vec<String>,
) -> Draft {
    let mut d = Draft::new(
        &by.organisation,
        action,
        resource,
        EntryKind::ConsentChange { status },
    );
    if let Subject::User(u) = &by.subject {
        d.user = Some(u.clone());
    }
    d.subjects = subjects;
    d
}

/// The consent-change entry of a withdrawal of `subject`'s consent.
fn withdrawal(by: &Principal, subject: &str, dataset: Option<&str>) -> Draft {
    change(
        by,
        "withdraw_consent",
        dataset.unwrap_or("*"),
        ConsentStatus::Withdrawn,
        vec![subject.to_owned()],
    )
}

impl ConsentStore {
    /// Imports `csv` for `dataset` on behalf of `by`: the size and the whole
    /// file are checked first, then the import is audited, then applied (all
    /// rows or none, durable before it returns).
    pub async fn import_audited(
        &self,
        audit: &AuditLog,
        by: &Principal,
        dataset: &str,
        csv: &[u8],
    ) -> Result<ImportReport, ConsentError> {
        if csv.len() > MAX_IMPORT_BYTES {
            return Err(ConsentError::TooLarge { bytes: csv.len() });
        }
        self.parse_csv(dataset, csv, self.now())?;
        audit
            .append(change(
                by,
                "import_consent",
                dataset,
                ConsentStatus::Given,
                Vec::new(),
            ))
            .await?;
        self.import_csv(dataset, csv).await
    }

    /// Withdraws `subject`'s consent (for one dataset or all, one purpose or
    /// all) on behalf of `by`: audited, then applied; durable before it
    /// returns.
    pub async fn withdraw_audited(
        &self,
        audit: &AuditLog,
        by: &Principal,
        subject: &str,
        dataset: Option<&str>,
        purpose: Option<Purpose>,
    ) -> Result<WithdrawReport, ConsentError> {
        audit.append(withdrawal(by, subject, dataset)).await?;
        self.withdraw(subject, dataset, purpose, &by.uri()).await
    }

    /// Withdraws like [`Self::withdraw_audited`], recording `method`, and
    /// returns a signed receipt for each changed record.
    pub async fn withdraw_receipted(
        &self,
        audit: &AuditLog,
        signer: &ReceiptSigner,
        by: &Principal,
        subject: &str,
        dataset: Option<&str>,
        purpose: Option<Purpose>,
    ) -> Result<(WithdrawReport, Vec<Receipt>), ConsentError> {
        audit.append(withdrawal(by, subject, dataset)).await?;
        let method = method_of(by, subject);
        let report = self
            .withdraw_with(subject, dataset, purpose, method, &by.uri())
            .await?;
        let receipts = report
            .records
            .iter()
            .map(|r| signer.issue(r, "consent-withdrawn", report.withdrawn_at))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((report, receipts))
    }

    /// Records a consent `by` gives (the subject, or the controller's
    /// officer for them): validated, audited, applied, then receipted.
    pub async fn give_receipted(
        &self,
        audit: &AuditLog,
        signer: &ReceiptSigner,
        by: &Principal,
        give: &Give,
    ) -> Result<(ConsentRecord, Receipt), ConsentError> {
        self.check_give(give)?;
        audit
            .append(change(
                by,
                "give_consent",
                &give.dataset,
                ConsentStatus::Given,
                vec![give.subject.clone()],
            ))
            .await?;
        let give = Give {
            method: method_of(by, &give.subject),
            ..give.clone()
        };
        let rec = self.give(&give, &by.uri()).await?;
        let receipt = signer.issue(&rec, "consent-given", rec.given_at)?;
        Ok((rec, receipt))
    }
}

/// The subject themself (their citizen certificate names them) or the
/// controller's officer for them.
fn method_of(by: &Principal, subject: &str) -> CollectionMethod {
    let own = matches!(&by.subject, Subject::User(u) if u == subject)
        && by.role == Some(crate::pki::Role::Citizen);
    super::receipt::method_for(own)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::super::tests::{DS, NOW, good_csv, open};
    use super::*;
    use crate::clock::ManualClock;
    use crate::pki::{OrgKind, Role};
    use crate::store::{Store, StoreOptions};

    fn steward() -> Principal {
        Principal {
            federation: "munich".into(),
            organisation: "swm".into(),
            organisation_kind: OrgKind::Utility,
            subject: Subject::User("kim".into()),
            role: Some(Role::Steward),
            certificate_sha256: "kim".into(),
            not_after: i64::MAX,
            issuer_ca_spki_sha256: "swm-ca".into(),
        }
    }

    /// An audit log in its own store (so that its writes can fail alone);
    /// it runs while the returned sender lives.
    async fn audit_log(
        dir: &std::path::Path,
        clock: std::sync::Arc<ManualClock>,
    ) -> (Store, AuditLog, tokio::sync::watch::Sender<bool>) {
        let store = Store::open(
            &dir.join("audit"),
            &StoreOptions {
                cache_bytes: 1 << 20,
            },
        )
        .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let log = AuditLog::open(store.clone(), "munich", "swm", "swm-1", clock, rx)
            .await
            .unwrap();
        (store, log, tx)
    }

    /// No audit entry, no consent change: with the audit log's store
    /// refusing writes, neither an import nor a withdrawal changes anything.
    #[tokio::test]
    async fn a_change_that_cannot_be_audited_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let consent = open(&dir.path().join("consent"), clock.clone());
        let (audit_store, audit, _tx) = audit_log(dir.path(), clock).await;
        let by = steward();

        audit_store.fail_writes(true);
        let err = consent
            .import_audited(&audit, &by, DS, good_csv().as_bytes())
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::Audit(_)), "{err:?}");
        assert_eq!(consent.count(DS), 0, "nothing imported without its entry");

        audit_store.fail_writes(false);
        let before = audit.size();
        let r = consent
            .import_audited(&audit, &by, DS, good_csv().as_bytes())
            .await
            .unwrap();
        assert_eq!(r.stored, 5);
        assert_eq!(audit.size(), before + 1, "one consent-change entry");

        audit_store.fail_writes(true);
        let err = consent
            .withdraw_audited(&audit, &by, "HH-000001", None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::Audit(_)), "{err:?}");
        assert!(consent.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));

        audit_store.fail_writes(false);
        let w = consent
            .withdraw_audited(&audit, &by, "HH-000001", None, None)
            .await
            .unwrap();
        assert_eq!(w.changed, 1);
        assert!(!consent.is_permitted(DS, "HH-000001", Purpose::AcademicResearch, NOW));
    }

    /// A refused file is not a consent change: nothing is audited.
    #[tokio::test]
    async fn a_refused_file_is_not_audited() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let consent = open(&dir.path().join("consent"), clock.clone());
        let (_, audit, _tx) = audit_log(dir.path(), clock).await;
        let before = audit.size();
        let big = vec![b'x'; MAX_IMPORT_BYTES + 1];
        let err = consent
            .import_audited(&audit, &steward(), DS, &big)
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::TooLarge { .. }), "{err:?}");
        let err = consent
            .import_audited(&audit, &steward(), DS, b"subject_id\n")
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::Rows(_)), "{err:?}");
        assert_eq!(audit.size(), before);
    }
}
