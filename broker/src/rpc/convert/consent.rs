//! `allmende.v1.Consent` messages from consent records and reports.

use crate::consent::erasure::Erasure;
use crate::consent::{ConsentRecord, ImportReport, Receipt, WithdrawReport};
use allmende_proto::v1 as pb;

impl From<&ConsentRecord> for pb::ConsentRecord {
    fn from(r: &ConsentRecord) -> Self {
        pb::ConsentRecord {
            subject_id: r.subject_id.clone(),
            controller: r.controller.clone(),
            dataset: r.dataset.clone(),
            purposes: r.purposes.iter().map(|p| p.as_str().to_owned()).collect(),
            status: r.status.as_str().to_owned(),
            given_at_unix: r.given_at,
            withdrawn_at_unix: r.withdrawn_at,
            expires_at_unix: r.expires_at,
            withdrawn_purposes: r
                .withdrawn_purposes
                .iter()
                .map(|(p, at)| pb::ConsentPurposeWithdrawal {
                    purpose: p.as_str().to_owned(),
                    withdrawn_at_unix: *at,
                })
                .collect(),
            record_id: r.record_id.clone(),
            collection_method: r.collection_method.as_str().to_owned(),
        }
    }
}

/// A receipt for the record `record_id`.
pub fn receipt(record_id: &str, r: &Receipt) -> pb::ConsentReceipt {
    pb::ConsentReceipt {
        record_id: record_id.to_owned(),
        json: r.to_json(),
    }
}

/// The answer to a withdrawal: what changed and a receipt per record.
pub fn withdraw_response(r: &WithdrawReport, receipts: &[Receipt]) -> pb::WithdrawConsentResponse {
    pb::WithdrawConsentResponse {
        receipts: r
            .records
            .iter()
            .zip(receipts)
            .map(|(rec, rc)| receipt(&rec.record_id, rc))
            .collect(),
        ..pb::WithdrawConsentResponse::from(r)
    }
}

/// The answer to a consent given.
pub fn give_response(rec: &ConsentRecord, r: &Receipt) -> pb::GiveConsentResponse {
    pb::GiveConsentResponse {
        record: Some(pb::ConsentRecord::from(rec)),
        receipt: Some(receipt(&rec.record_id, r)),
    }
}

impl From<&ImportReport> for pb::ImportConsentResponse {
    fn from(r: &ImportReport) -> Self {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        pb::ImportConsentResponse {
            rows: n(r.rows),
            stored: n(r.stored),
            unchanged: n(r.unchanged),
            superseded: n(r.superseded),
        }
    }
}

impl From<&WithdrawReport> for pb::WithdrawConsentResponse {
    fn from(r: &WithdrawReport) -> Self {
        pb::WithdrawConsentResponse {
            records_changed: u64::try_from(r.changed).unwrap_or(u64::MAX),
            withdrawn_at_unix: r.withdrawn_at,
            receipts: Vec::new(),
        }
    }
}

/// A subject's records and erasures.
pub fn get_response(records: &[ConsentRecord], erasures: &[Erasure]) -> pb::GetConsentResponse {
    pb::GetConsentResponse {
        records: records.iter().map(pb::ConsentRecord::from).collect(),
        erasures: erasures.iter().map(pb::ErasureRecord::from).collect(),
    }
}

impl From<&Erasure> for pb::ErasureRecord {
    fn from(e: &Erasure) -> Self {
        pb::ErasureRecord {
            record_id: e.record_id.clone(),
            subject_id: e.subject_id.clone(),
            dataset: e.dataset.clone().unwrap_or_default(),
            requested_at_unix: e.requested_at,
            requested_by: e.requested_by.clone(),
            recipients: e
                .recipients
                .iter()
                .map(|r| pb::ErasureRecipient {
                    org: r.org.clone(),
                    grant_id: r.grant_id.clone(),
                    dataset: r.dataset.clone(),
                    duty_id: r.duty_id.clone(),
                    due_unix: r.due,
                    notice_id: r.notice_id.clone(),
                })
                .collect(),
        }
    }
}

/// The answer to an erasure.
pub fn erase_response(e: &Erasure) -> pb::EraseSubjectResponse {
    pb::EraseSubjectResponse {
        erasure: Some(pb::ErasureRecord::from(e)),
    }
}

/// A subject's history.
pub fn who_accessed_response(events: &[crate::consent::history::Event]) -> pb::WhoAccessedResponse {
    pb::WhoAccessedResponse {
        events: events
            .iter()
            .map(|e| pb::SubjectEvent {
                audit_sequence: e.sequence,
                time_ms: e.time_ms,
                kind: e.kind.to_owned(),
                org: e.org.clone(),
                dataset: e.dataset.clone(),
                purpose: e.purpose.clone(),
                grant_id: e.grant_id.clone(),
                rows: e.rows,
                outcome: e.outcome.clone(),
            })
            .collect(),
    }
}
