//! Export bundles: the entries of a time range with the proof that they are
//! in the log, under a freshly signed (and, where witnesses cosign, a
//! cosigned) checkpoint — verifiable offline by `allmende audit verify`.
//!
//! The time range is found on the sequence keys of the entries (entry times
//! never decrease along the log, [`AuditLog::first_at_or_after`]): two binary
//! searches, then only the entries of the range are read — O(log n + k) for a
//! log of n entries of which k are exported, not a scan of the whole log.

use super::checkpoint::parse_sig_line;
use super::log::{AuditError, AuditLog};
use allmende_audit::{BundleSlot, Entry, SignedNote};
use std::time::Duration;

/// How long an export waits for the witnesses that cosigned the previous
/// checkpoint to cosign the fresh one.
const COSIGN_WAIT: Duration = Duration::from_secs(3);

/// Entries read per store range while building a bundle.
const READ_CHUNK: u64 = 4096;

/// An encoded export bundle and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The encoded `allmende_audit::Bundle`.
    pub bundle: Vec<u8>,
    /// Entries in the bundle (pruned ones not counted).
    pub entries: u64,
    /// Sequence of the first exported entry (0 when none).
    pub first_sequence: u64,
    /// Size of the checkpoint the bundle is proved against.
    pub checkpoint_size: u64,
}

impl AuditLog {
    /// Exports the entries with `from_ms <= time < to_ms` (`to_ms` `None`:
    /// up to the end) under a checkpoint that covers everything written so
    /// far, including the caller's audited decision to export.
    ///
    /// Fails closed: an undecodable or missing entry in the range, an entry
    /// out of time order or a malformed stored checkpoint is an error, never
    /// a gap in the bundle.
    pub async fn export(&self, from_ms: u64, to_ms: Option<u64>) -> Result<Export, AuditError> {
        // The witnesses that cosigned before are expected to cosign again.
        let expected = self
            .latest_checkpoint()?
            .map_or(0, |c| c.cosignatures.len());
        let cp = match self.checkpoint_now().await? {
            Some(c) => self
                .wait_cosigned(c.size, expected, COSIGN_WAIT)
                .await?
                .unwrap_or(c),
            None => self
                .latest_checkpoint()?
                .ok_or_else(|| AuditError::NotReady("no checkpoint yet".into()))?,
        };
        let size = cp.size;
        let start = self.first_at_or_after(from_ms, size)?;
        let end = match to_ms {
            Some(to) => self.first_at_or_after(to, size)?,
            None => size,
        };
        let mut first = None;
        let mut slots = Vec::new();
        let mut next = start;
        while next < end {
            let to = end.min(next.saturating_add(READ_CHUNK));
            for (seq, bytes) in self.entry_range(next, to)? {
                if seq != next {
                    return Err(AuditError::Corrupt(format!("entry {next} is missing")));
                }
                next += 1;
                if bytes.is_empty() {
                    // Pruned by retention: only its leaf hash remains.
                    if first.is_some() {
                        slots.push(BundleSlot::Pruned);
                    }
                    continue;
                }
                let time = Entry::decode(&bytes)
                    .map_err(|e| AuditError::Corrupt(format!("entry {seq}: {e}")))?
                    .time_ms;
                if time < from_ms || to_ms.is_some_and(|t| time >= t) {
                    return Err(AuditError::Corrupt(format!(
                        "entry {seq}: time {time} out of order"
                    )));
                }
                first.get_or_insert(seq);
                slots.push(BundleSlot::Entry(bytes));
            }
            if next < to {
                return Err(AuditError::Corrupt(format!("entry {next} is missing")));
            }
        }
        let entries = slots
            .iter()
            .filter(|s| matches!(s, BundleSlot::Entry(_)))
            .count() as u64;
        let note = self.cosigned_note(&cp)?;
        let bundle =
            allmende_audit::build_bundle(self.hash_store(), &note, first.unwrap_or(0), slots, None)
                .and_then(|b| b.encode().map_err(Into::into))
                .map_err(|e| AuditError::Corrupt(format!("bundle: {e}")))?;
        Ok(Export {
            bundle,
            entries,
            first_sequence: first.unwrap_or(0),
            checkpoint_size: size,
        })
    }

    /// The checkpoint's signed note with its stored cosignatures. A
    /// malformed stored line is corruption (an error); a cosignature the
    /// note has no room for is left out, logged and reported as a finding.
    fn cosigned_note(&self, cp: &super::CheckpointRecord) -> Result<String, AuditError> {
        let mut note = SignedNote::parse(cp.note.as_bytes())
            .map_err(|e| AuditError::Corrupt(format!("stored checkpoint {}: {e}", cp.size)))?;
        let mut left_out = 0usize;
        let mut last_error = None;
        for line in &cp.cosignatures {
            let sig = parse_sig_line(line).ok_or_else(|| {
                AuditError::Corrupt(format!("stored cosignature of checkpoint {}", cp.size))
            })?;
            if let Err(e) = note.add_signature(sig) {
                left_out += 1;
                last_error = Some(e.to_string());
            }
        }
        if let Some(error) = last_error {
            tracing::warn!(
                checkpoint_size = cp.size,
                left_out,
                error = %error,
                "cosignatures left out of an export bundle"
            );
            self.report_finding(format!(
                "checkpoint {} has cosignatures an export bundle cannot carry: {error}",
                cp.size
            ));
        }
        Ok(note.encode())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::audit::log::tests::{draft, open_with_clock};
    use crate::clock::{Clock, ManualClock};
    use crate::store::{RawTable, TableName, WriteBatch};
    use allmende_audit::{TrustFile, TrustedLog, VerifierKey};

    /// Signature lines a note may carry (`allmende_audit`'s note limit).
    const MAX_SIGNATURES: usize = 256;

    /// 30 entries, ten per second of time; returns the three start times.
    async fn log_with_three_seconds(
        dir: &std::path::Path,
    ) -> (AuditLog, crate::store::Store, [u64; 3], impl Sized) {
        let clock = ManualClock::at_unix_ms(1_800_000_000_000);
        let (log, store, stop) = open_with_clock(dir, clock.clone()).await;
        let mut starts = [0u64; 3];
        for (s, start) in starts.iter_mut().enumerate() {
            *start = u64::try_from(clock.now_unix_ms()).unwrap();
            for i in 0..10 {
                log.append(draft("air-quality", "alice", &format!("s{s}-{i}")))
                    .await
                    .unwrap();
            }
            clock.advance(Duration::from_secs(1));
        }
        (log, store, starts, stop)
    }

    fn verify(log: &AuditLog, bundle: &[u8]) -> allmende_audit::VerifyReport {
        let trust = TrustFile::new(
            vec![TrustedLog {
                origin: log.origin().to_owned(),
                keys: vec![VerifierKey::parse(&log.log_vkey()).unwrap()],
            }],
            Vec::new(),
            Some(0),
        )
        .unwrap();
        allmende_audit::verify_bundle(bundle, &trust)
    }

    /// A time range exports exactly the entries of that range, and the
    /// bundle verifies offline against the log's key.
    #[tokio::test]
    async fn a_time_range_exports_exactly_its_entries_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _store, [_, second, third], _stop) = log_with_three_seconds(dir.path()).await;
        let export = log.export(second, Some(third)).await.unwrap();
        assert_eq!(
            (export.first_sequence, export.entries),
            (10, 10),
            "the second second's entries"
        );
        assert!(export.checkpoint_size >= 30);
        let report = verify(&log, &export.bundle);
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.range, Some((10, 20)));
        assert_eq!(report.entries_matched, 10);
        // Open-ended: from the third second to the end.
        let export = log.export(third, None).await.unwrap();
        assert_eq!((export.first_sequence, export.entries), (20, 10));
        assert!(verify(&log, &export.bundle).is_ok());
        // Everything.
        let export = log.export(0, None).await.unwrap();
        assert_eq!((export.first_sequence, export.entries), (0, 30));
    }

    /// An entry of the range that cannot be decoded fails the export; it is
    /// never left out of the bundle as if it were outside the range.
    #[tokio::test]
    async fn an_undecodable_entry_fails_the_export_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, [_, second, third], _stop) = log_with_three_seconds(dir.path()).await;
        let entries: RawTable<u64> = store.raw_table(TableName::AuditEntries).unwrap();
        let mut b = WriteBatch::new();
        // Entry 13: inside the range, and not one the time search probes.
        b.put_raw(&entries, &13, b"not an entry".to_vec());
        store.commit_durable(b).await.unwrap();
        let err = log.export(second, Some(third)).await.unwrap_err();
        assert!(
            matches!(&err, AuditError::Corrupt(m) if m.contains("entry 13")),
            "{err}"
        );
    }

    /// A cosignature the note has no room for is left out of the bundle
    /// and reported as a finding, not dropped silently.
    #[tokio::test]
    async fn cosignatures_beyond_the_note_limit_are_a_finding() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _store, _, _stop) = log_with_three_seconds(dir.path()).await;
        let cp = log.checkpoint_now().await.unwrap().unwrap();
        let witness = log.witness_signer();
        let text = SignedNote::parse(cp.note.as_bytes())
            .unwrap()
            .text()
            .to_owned();
        for t in 0..MAX_SIGNATURES as u64 {
            let line = allmende_audit::cosign(witness, &text, 1_800_000_000 + t)
                .unwrap()
                .to_line();
            assert!(log.add_cosignature(cp.size, line).await.unwrap());
        }
        assert!(log.findings().unwrap().is_empty());
        let note = log
            .cosigned_note(&log.latest_checkpoint().unwrap().unwrap())
            .unwrap();
        assert_eq!(
            SignedNote::parse(note.as_bytes())
                .unwrap()
                .signatures()
                .len(),
            MAX_SIGNATURES
        );
        assert!(
            log.findings()
                .unwrap()
                .iter()
                .any(|f| f.contains(&format!("checkpoint {}", cp.size))),
            "{:?}",
            log.findings().unwrap()
        );
    }
}
