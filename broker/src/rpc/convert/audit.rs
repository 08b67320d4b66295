//! `allmende.v1.Audit` messages from the audit log's domain types.

use crate::audit::witness::WitnessRecord;
use crate::audit::{AuditStatus, CheckpointRecord, Export, QueryPage};
use allmende_audit::{Hash, StoreFinding, StoreReport};
use allmende_proto::v1 as pb;

impl From<QueryPage> for pb::AuditQueryResponse {
    fn from(page: QueryPage) -> Self {
        pb::AuditQueryResponse {
            entries: page.entries.iter().map(super::audit_entry).collect(),
            next_page_after: page.next_after,
        }
    }
}

impl From<Export> for pb::AuditExportResponse {
    fn from(e: Export) -> Self {
        pb::AuditExportResponse {
            bundle: e.bundle,
            entries: e.entries,
            first_sequence: e.first_sequence,
            checkpoint_size: e.checkpoint_size,
        }
    }
}

/// The log's status for the DPO or a witnessing node.
pub fn status_response(
    s: AuditStatus,
    cosignatures_on_latest: usize,
    findings: Vec<String>,
    peer_witness_vkeys: Vec<String>,
) -> pb::AuditStatusResponse {
    pb::AuditStatusResponse {
        size: s.size,
        checkpoint_size: s.checkpoint_size,
        indexed: s.indexed,
        origin: s.origin,
        log_vkey: s.log_vkey,
        witness_vkey: s.witness_vkey,
        cosignatures_on_latest: u32::try_from(cosignatures_on_latest).unwrap_or(u32::MAX),
        findings,
        peer_witness_vkeys,
    }
}

/// The result of a store verification, with the sequences that failed.
pub fn verify_response(report: &StoreReport) -> pb::VerifyLogResponse {
    use StoreFinding as F;
    let mut failed: Vec<u64> = report
        .findings
        .iter()
        .filter_map(|f| match f {
            F::EntryModified { sequence }
            | F::EntryUndecodable { sequence, .. }
            | F::EntryMissing { sequence } => Some(*sequence),
            F::EntrySequenceMismatch { index, .. } | F::EntryOutOfOrder { index, .. } => {
                Some(*index)
            }
            _ => None,
        })
        .collect();
    failed.sort_unstable();
    failed.dedup();
    pb::VerifyLogResponse {
        ok: report.is_ok(),
        entries_checked: report.entries_checked,
        findings: report.findings.iter().map(|f| f.to_string()).collect(),
        failed_sequences: failed,
    }
}

/// A checkpoint with the consistency proof from the size the caller saw.
pub fn checkpoint_response(
    cp: CheckpointRecord,
    proof: &[Hash],
    log_vkey: String,
) -> pb::GetCheckpointResponse {
    pb::GetCheckpointResponse {
        note: cp.note,
        size: cp.size,
        consistency_proof: proof.iter().map(|h| h.0.to_vec()).collect(),
        log_vkey,
    }
}

/// Whether a cosignature was stored.
pub fn cosignature_response(stored: bool) -> pb::AddCosignatureResponse {
    pb::AddCosignatureResponse { stored }
}

/// What this node witnessed of the caller's log, if anything.
pub fn witnessed_response(state: Option<WitnessRecord>) -> pb::GetWitnessedResponse {
    match state {
        None => pb::GetWitnessedResponse::default(),
        Some(s) => pb::GetWitnessedResponse {
            known: true,
            size: s.size,
            root_hex: s.root_hex,
            note: s.note,
        },
    }
}
