//! The derived query indexes: posting lists per term and sequence range,
//! written by the indexer behind the durable append (rebuildable).

use super::log::{AuditError, Inner};
use crate::store::WriteBatch;
use allmende_audit::{Decision, Entry};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Key of the indexer's progress inside the index tree (sorts after every
/// index key, whose first byte is a lower-case letter).
pub(super) const INDEXED_KEY: &[u8] = b"\xffindexed";

/// Index fields (the first byte of a posting-list key).
pub(super) const FIELD_DATASET: u8 = b'd';
pub(super) const FIELD_ORG: u8 = b'o';
pub(super) const FIELD_USER: u8 = b'u';
pub(super) const FIELD_SUBJECT: u8 = b's';
pub(super) const FIELD_PURPOSE: u8 = b'p';
pub(super) const FIELD_DECISION: u8 = b'c';

pub(super) fn decision_term(d: Decision) -> &'static [u8] {
    match d {
        Decision::Allow => b"allow",
        Decision::Deny => b"deny",
    }
}
/// Sequences one index range (and so one posting list) spans at most.
pub(super) const INDEX_SPAN: u64 = 4096;
/// How long the indexer lets a range fill before it indexes what is there.
const INDEX_DELAY: Duration = Duration::from_millis(200);

/// `field ‖ u16 BE length ‖ term`: the prefix of a term's posting lists.
/// `None` for a term longer than `u16::MAX` bytes (not indexed).
pub(super) fn posting_prefix(field: u8, term: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(term.len()).ok()?;
    let mut k = Vec::with_capacity(3 + term.len() + 8);
    k.push(field);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(term);
    Some(k)
}

/// The key of a term's posting list for the range starting at `first`.
pub(super) fn posting_key(prefix: &[u8], first: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a varint at `*pos`; `None` if malformed or truncated.
fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Appends ascending sequences (all `>= first`) as LEB128 varint deltas,
/// the first relative to `first`.
fn encode_postings(first: u64, seqs: &[u64], out: &mut Vec<u8>) {
    let mut prev = first;
    for &seq in seqs {
        put_varint(out, seq.saturating_sub(prev));
        prev = seq;
    }
}

/// Decodes up to `count` postings written by [`encode_postings`] from
/// `*pos`; stops at the first malformed varint.
fn decode_postings(first: u64, bytes: &[u8], pos: &mut usize, count: usize, out: &mut Vec<u64>) {
    let mut prev = first;
    for _ in 0..count {
        if *pos >= bytes.len() {
            return;
        }
        let Some(seq) = get_varint(bytes, pos).and_then(|d| prev.checked_add(d)) else {
            return;
        };
        out.push(seq);
        prev = seq;
    }
}

/// The postings of one index value: a whole posting list, or for a
/// subject bucket the record of `subject` (none if it has no record).
pub(super) fn postings_of(first: u64, value: &[u8], subject: Option<&[u8; 32]>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    match subject {
        None => decode_postings(first, value, &mut pos, usize::MAX, &mut out),
        Some(want) => {
            while let Some(hash) = value.get(pos..pos + 32) {
                pos += 32;
                let Some(count) = get_varint(value, &mut pos) else {
                    break;
                };
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                if hash == want.as_slice() {
                    decode_postings(first, value, &mut pos, count, &mut out);
                    break;
                }
                // Skip this record's postings.
                for _ in 0..count {
                    if get_varint(value, &mut pos).is_none() {
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// Derives the query indexes from the log, behind the durable append.
///
/// Indexes in ranges of up to [`INDEX_SPAN`] entries: it lets a range fill
/// for at most [`INDEX_DELAY`] (so the index lags at most that plus the
/// work), then writes it on a blocking thread, off the async workers.
pub(super) async fn indexer(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut committed = inner.committed.clone();
    loop {
        // Wait for something to index.
        while *committed.borrow_and_update() <= inner.indexed.load(Ordering::SeqCst) {
            tokio::select! {
                r = committed.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        // Let a range fill, for a bounded time.
        let deadline = tokio::time::Instant::now() + INDEX_DELAY;
        loop {
            let size = *committed.borrow_and_update();
            if size.saturating_sub(inner.indexed.load(Ordering::SeqCst)) >= INDEX_SPAN {
                break;
            }
            tokio::select! {
                r = committed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let size = *committed.borrow();
        let work = inner.clone();
        let stop = shutdown.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut from = work.indexed.load(Ordering::SeqCst);
            // A long rebuild (after a migration) stops between ranges at
            // shutdown and goes on from its marker after the restart.
            while from < size && !*stop.borrow() {
                let to = size.min(from + INDEX_SPAN);
                index_range(&work, from, to)?;
                work.indexed.store(to, Ordering::SeqCst);
                from = to;
            }
            Ok::<(), AuditError>(())
        })
        .await;
        if *shutdown.borrow() {
            return;
        }
        let failed = match done {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "audit index lags");
            // Retry after new entries or a pause, not in a tight loop.
            tokio::select! {
                _ = tokio::time::sleep(INDEX_DELAY) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Indexes the entries `[from, to)` (at most [`INDEX_SPAN`]): one posting
/// list per distinct dataset, organisation, user, purpose and decision, one
/// per subject-hash bucket, and the progress marker, in one batch.
fn index_range(inner: &Inner, from: u64, to: u64) -> Result<(), AuditError> {
    let mut lists: std::collections::HashMap<(u8, Vec<u8>), Vec<u64>> =
        std::collections::HashMap::new();
    let mut subjects: std::collections::BTreeMap<[u8; 32], Vec<u64>> =
        std::collections::BTreeMap::new();
    // Sequences arrive ascending; an entry naming a term twice is listed once.
    let push = |list: &mut Vec<u64>, seq: u64| {
        if list.last() != Some(&seq) {
            list.push(seq);
        }
    };
    for (seq, bytes) in inner.entries.range(&from, &to)? {
        if bytes.is_empty() {
            // Pruned by retention: nothing to index.
            continue;
        }
        let e = match Entry::decode(&bytes) {
            Ok(e) => e,
            Err(err) => {
                // Not indexed, and not silently: queries that scan report
                // it as corrupt, and the finding names it.
                tracing::error!(sequence = seq, error = %err, "audit entry undecodable, not indexed");
                inner.report_finding(format!("entry {seq} is undecodable: {err}"));
                continue;
            }
        };
        let mut add = |field: u8, term: &[u8]| {
            push(lists.entry((field, term.to_vec())).or_default(), seq);
        };
        add(FIELD_DATASET, e.resource.as_bytes());
        add(FIELD_ORG, e.principal.org.as_bytes());
        if let Some(u) = &e.principal.user {
            add(FIELD_USER, u.as_bytes());
        }
        if let Some(p) = &e.purpose {
            add(FIELD_PURPOSE, p.as_bytes());
        }
        if let Some(d) = e.decision {
            add(FIELD_DECISION, decision_term(d));
        }
        for s in &e.subjects {
            push(subjects.entry(s.0).or_default(), seq);
        }
    }
    let mut b = WriteBatch::new();
    for ((field, term), seqs) in lists {
        // A term too long for the key is not indexed; queries for it scan.
        if let Some(prefix) = posting_prefix(field, &term) {
            let mut value = Vec::with_capacity(seqs.len() * 2);
            encode_postings(from, &seqs, &mut value);
            b.put_raw(&inner.index, &posting_key(&prefix, from), value);
        }
    }
    // Subject hashes are nearly all distinct: one list per hash would be
    // one (randomly placed) key per entry. One value per bucket (first hash
    // byte) and range instead holds `hash ‖ count ‖ postings` records,
    // sorted by hash.
    let mut bucket: Option<(u8, Vec<u8>)> = None;
    for (hash, seqs) in subjects {
        if bucket.as_ref().is_some_and(|(b0, _)| *b0 != hash[0])
            && let Some((b0, value)) = bucket.take()
        {
            put_subject_bucket(inner, &mut b, b0, from, value);
        }
        let (_, value) = bucket.get_or_insert_with(|| (hash[0], Vec::new()));
        value.extend_from_slice(&hash);
        put_varint(value, seqs.len() as u64);
        encode_postings(from, &seqs, value);
    }
    if let Some((b0, value)) = bucket {
        put_subject_bucket(inner, &mut b, b0, from, value);
    }
    // The progress marker lives in the index tree itself: one tree, one batch.
    b.put_raw(
        &inner.index,
        &INDEXED_KEY.to_vec(),
        to.to_be_bytes().to_vec(),
    );
    inner.store.commit_volatile(b)?;
    Ok(())
}

fn put_subject_bucket(inner: &Inner, b: &mut WriteBatch, bucket: u8, from: u64, value: Vec<u8>) {
    if let Some(prefix) = posting_prefix(FIELD_SUBJECT, &[bucket]) {
        b.put_raw(&inner.index, &posting_key(&prefix, from), value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;

    #[test]
    fn posting_lists_round_trip() {
        let seqs = [4096u64, 4097, 4200, 8191, 1 << 40];
        let mut v = Vec::new();
        encode_postings(4096, &seqs, &mut v);
        assert_eq!(postings_of(4096, &v, None), seqs);
        // Subject buckets: records sorted by hash, each with its postings.
        let (a, b) = ([7u8; 32], [7u8; 32].map(|x| x + 1));
        let mut v = Vec::new();
        for (h, list) in [(a, &[5u64, 9][..]), (b, &[6u64][..])] {
            v.extend_from_slice(&h);
            put_varint(&mut v, list.len() as u64);
            encode_postings(0, list, &mut v);
        }
        assert_eq!(postings_of(0, &v, Some(&a)), vec![5, 9]);
        assert_eq!(postings_of(0, &v, Some(&b)), vec![6]);
        assert!(postings_of(0, &v, Some(&[1u8; 32])).is_empty());
        // Malformed values end the list instead of failing the query.
        assert_eq!(postings_of(0, &[0x80], None), Vec::<u64>::new());
        assert!(postings_of(0, &v[..40], Some(&b)).is_empty());
    }
}
