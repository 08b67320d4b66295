//! Retention: old entries are summarised into a retention entry and their
//! bodies deleted; leaf and tree hashes stay.

use super::log::{AuditError, AuditLog, Draft};
use crate::store::{RawTable, TableName, WriteBatch};
use allmende_audit::{Entry, EntryKind};

impl AuditLog {
    /// Retention: entries older than `cutoff_ms` are summarised (counts per
    /// dataset and purpose, kept in the store and bound by hash into a
    /// retention entry of the log) and their bodies deleted. Leaf and tree
    /// hashes stay, so the tree, proofs and bundles keep verifying.
    pub async fn apply_retention(
        &self,
        cutoff_ms: u64,
    ) -> Result<Option<(u64, allmende_audit::RetentionSummary)>, AuditError> {
        let size = self.size();
        let mut old = Vec::new();
        let mut from = 0u64;
        'scan: while from < size {
            let to = size.min(from + 4096);
            for (_, bytes) in self.entry_range(from, to)? {
                if bytes.is_empty() {
                    continue;
                }
                let e = Entry::decode(&bytes).map_err(|e| AuditError::Corrupt(e.to_string()))?;
                if e.time_ms >= cutoff_ms {
                    break 'scan;
                }
                old.push(e);
            }
            from = to;
        }
        // Never prune retention entries themselves.
        old.retain(|e| !matches!(e.kind, EntryKind::Retention { .. }));
        let plan = allmende_audit::plan_retention(old.iter(), cutoff_ms);
        let kind = plan
            .summary
            .to_entry_kind()
            .map_err(|e| AuditError::Invalid(e.to_string()))?;
        let Some(kind) = kind else {
            return Ok(None);
        };
        let encoded = plan
            .summary
            .encode()
            .map_err(|e| AuditError::Invalid(e.to_string()))?;
        // First the retention entry (durable), then the deletion.
        let seq = self
            .append(Draft::new(&self.inner.org, "retention", "audit-log", kind))
            .await?;
        let summaries: RawTable<u64> = self.inner.store.raw_table(TableName::AuditRetention)?;
        let mut b = WriteBatch::new();
        b.put_raw(&summaries, &seq, encoded);
        for p in &plan.prunable {
            b.put_raw(&self.inner.entries, p, Vec::new());
        }
        self.inner.store.commit_durable(b).await?;
        tracing::info!(
            pruned = plan.prunable.len(),
            retention_entry = seq,
            "audit retention applied"
        );
        Ok(Some((seq, plan.summary)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::audit::QueryFilter;
    use crate::audit::log::tests::{draft, open_with_clock};
    use crate::clock::{Clock, ManualClock};
    use std::time::Duration;

    #[tokio::test]
    async fn retention_prunes_bodies_keeps_the_tree_and_records_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(1_800_000_000_000);
        let (log, _store, _stop) = open_with_clock(dir.path(), clock.clone()).await;
        for i in 0..10 {
            log.append(draft("smart-meter-readings", "alice", &format!("s{i}")))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(40 * 86_400));
        for i in 0..5 {
            log.append(draft("air-quality", "bob", &format!("t{i}")))
                .await
                .unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let cutoff = u64::try_from(clock.now_unix_ms()).unwrap() - 30 * 86_400_000;
        let (seq, summary) = log.apply_retention(cutoff).await.unwrap().unwrap();
        assert_eq!(seq, 15);
        assert_eq!(summary.pruned, 10);
        let g = summary
            .groups
            .get(&(
                "smart-meter-readings".to_owned(),
                Some("AcademicResearch".to_owned()),
            ))
            .unwrap();
        assert_eq!((g.entries, g.allowed), (10, 10));
        for s in 0..10 {
            assert_eq!(
                log.entry_bytes(s).unwrap(),
                Some(Vec::new()),
                "body {s} pruned"
            );
        }
        // The tree and the signed checkpoints still verify; pruned is not tampered.
        let report = log.verify_store().unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.entries_pruned, 10);
        // Queries see what is left; the retention entry is itself in the log.
        let page = log
            .query(&QueryFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.entries.len(), 6);
        assert!(matches!(
            page.entries.last().unwrap().kind,
            EntryKind::Retention {
                pruned_count: 10,
                ..
            }
        ));
        // Idempotent: nothing more to prune.
        assert!(log.apply_retention(cutoff).await.unwrap().is_none());
    }
}
