//! Retention: entries older than a cutoff are summarised (counts per dataset
//! and purpose) and their bodies may be deleted. Leaf hashes and interior
//! hashes stay, so roots, proofs, bundles (with pruned markers) and the store
//! check keep working.
//!
//! The node appends an [`EntryKind::Retention`] entry carrying the hash of
//! the canonical summary encoding, so the pruning itself is in the log.

use std::collections::BTreeMap;

use crate::codec::{EncodeError, Writer};
use crate::entry::{Decision, Entry, EntryKind};
use crate::hash::{Hash, sha256};

/// Version byte of the summary encoding.
pub const SUMMARY_VERSION: u8 = 1;

/// Counts for one (resource, purpose) group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Entries in the group.
    pub entries: u64,
    /// Entries with decision allow.
    pub allowed: u64,
    /// Entries with decision deny.
    pub denied: u64,
    /// Release intents.
    pub release_intents: u64,
    /// Release completions.
    pub release_completions: u64,
    /// Rows released (sum over completions).
    pub rows_released: u64,
}

/// Summary of pruned entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionSummary {
    /// Cutoff (unix ms): entries with `time_ms` before it are pruned.
    pub cutoff_ms: u64,
    /// First pruned sequence number.
    pub first_sequence: Option<u64>,
    /// Last pruned sequence number.
    pub last_sequence: Option<u64>,
    /// Number of pruned entries.
    pub pruned: u64,
    /// Counts per (resource, purpose).
    pub groups: BTreeMap<(String, Option<String>), GroupCounts>,
}

/// What retention would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Summary of the entries to prune.
    pub summary: RetentionSummary,
    /// Sequence numbers whose bodies may be deleted (ascending); their leaf
    /// hashes must stay.
    pub prunable: Vec<u64>,
}

/// Plans retention over (decoded) entries that still have bodies.
pub fn plan_retention<'a, I: IntoIterator<Item = &'a Entry>>(
    entries: I,
    cutoff_ms: u64,
) -> RetentionPlan {
    let mut plan = RetentionPlan {
        summary: RetentionSummary {
            cutoff_ms,
            ..RetentionSummary::default()
        },
        prunable: Vec::new(),
    };
    for e in entries {
        if e.time_ms >= cutoff_ms {
            continue;
        }
        plan.prunable.push(e.sequence);
        let s = &mut plan.summary;
        s.pruned += 1;
        s.first_sequence = Some(s.first_sequence.map_or(e.sequence, |f| f.min(e.sequence)));
        s.last_sequence = Some(s.last_sequence.map_or(e.sequence, |l| l.max(e.sequence)));
        let g = s
            .groups
            .entry((e.resource.clone(), e.purpose.clone()))
            .or_default();
        g.entries += 1;
        match e.decision {
            Some(Decision::Allow) => g.allowed += 1,
            Some(Decision::Deny) => g.denied += 1,
            None => {}
        }
        match &e.kind {
            EntryKind::ReleaseIntent => g.release_intents += 1,
            EntryKind::ReleaseCompletion { rows_released, .. } => {
                g.release_completions += 1;
                g.rows_released = g.rows_released.saturating_add(*rows_released);
            }
            _ => {}
        }
    }
    plan.prunable.sort_unstable();
    plan.prunable.dedup();
    plan
}

impl RetentionSummary {
    /// Canonical encoding: version, cutoff, first/last (u64, `u64::MAX` if
    /// none), pruned, u32 group count, then per group (sorted): str resource,
    /// `opt<str>` purpose, six u64 counts.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new();
        w.u8(SUMMARY_VERSION);
        w.u64(self.cutoff_ms);
        w.u64(self.first_sequence.unwrap_or(u64::MAX));
        w.u64(self.last_sequence.unwrap_or(u64::MAX));
        w.u64(self.pruned);
        w.count32("groups", self.groups.len())?;
        for ((resource, purpose), c) in &self.groups {
            w.str16("resource", resource)?;
            w.opt_str16("purpose", purpose.as_deref())?;
            for v in [
                c.entries,
                c.allowed,
                c.denied,
                c.release_intents,
                c.release_completions,
                c.rows_released,
            ] {
                w.u64(v);
            }
        }
        Ok(w.into_inner())
    }

    /// SHA-256 of the canonical encoding.
    pub fn hash(&self) -> Result<Hash, EncodeError> {
        Ok(sha256(&self.encode()?))
    }

    /// The entry kind recording this retention run, or `None` if nothing is pruned.
    pub fn to_entry_kind(&self) -> Result<Option<EntryKind>, EncodeError> {
        let (Some(first), Some(last)) = (self.first_sequence, self.last_sequence) else {
            return Ok(None);
        };
        Ok(Some(EntryKind::Retention {
            cutoff_ms: self.cutoff_ms,
            first_sequence: first,
            last_sequence: last,
            pruned_count: self.pruned,
            summary_hash: self.hash()?,
        }))
    }
}
