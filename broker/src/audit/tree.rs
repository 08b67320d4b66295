//! The Merkle tree's stored hashes: one value per group commit.
//!
//! A group commit appends leaves `[first, last]` and persists the hashes
//! [`allmende_audit::Frontier::append`] produces for them (the leaf hashes and
//! every interior node they complete) as ONE value of `audit_tree_v2`, keyed
//! by `first` (8 bytes, big-endian): a format byte, then fixed-size records
//! `level u8 ‖ index u64 BE ‖ hash 32 bytes` sorted by `(level, index)`, so a
//! lookup binary-searches the value without decoding it.
//!
//! Node `(L, i)` covers the leaves `[i·2^L, (i+1)·2^L)` and is complete (and
//! written) when leaf `(i+1)·2^L − 1` is appended, so it lives in the value
//! with the greatest key `≤ (i+1)·2^L − 1` (one reverse range lookup).
//! The 1 → 2 store migration writes the same records in chunks of 4096
//! sequences; any partition of the sequences into contiguous groups, each
//! keyed by its first sequence, reads the same.

use crate::store::{Migrating, MigrationStep, RawTable, StoreError, TableName};
use allmende_audit::{Hash, HashStore, NodeKey, NodeWrite};

/// Format byte of a group value.
const GROUP_FORMAT: u8 = 1;
/// Bytes of one record: level, index, hash.
const RECORD: usize = 1 + 8 + 32;

/// Encodes the node writes of one group commit (sorted here).
pub(crate) fn encode_node_group(writes: &mut [NodeWrite]) -> Vec<u8> {
    writes.sort_unstable_by_key(|w| w.key);
    let mut out = Vec::with_capacity(1 + writes.len() * RECORD);
    out.push(GROUP_FORMAT);
    for w in writes.iter() {
        out.extend_from_slice(&w.key.to_bytes());
        out.extend_from_slice(&w.hash.0);
    }
    out
}

/// The format-1 tree of Merkle node hashes (one key per node).
const AUDIT_TREE_V1: &str = "audit_tree";
/// Sequences per converted value of the 1 → 2 migration.
pub(crate) const MIGRATION_CHUNK: u64 = 4096;

/// The store migration the audit log supplies: format 1 → 2.
pub const MIGRATE_TREE_V1: MigrationStep = MigrationStep {
    from: 1,
    run: migrate_tree_v1,
};

/// Format 1 → 2: the per-node keys of `audit_tree` (9-byte `level ‖ index`)
/// become one value per chunk of [`MIGRATION_CHUNK`] sequences in
/// `audit_tree_v2` (a node goes to the chunk of its last leaf, like a group
/// commit writes it with that leaf); the derived audit index (format 1: one
/// key per term and entry) is cleared and rebuilt by the indexer.
///
/// Crash-safe without one huge transaction: the new tree is cleared and
/// written from scratch and flushed before the old tree is dropped, and the
/// store bumps the format key only after this returns, so an interrupted
/// migration runs again from the start. Once the old tree is gone the
/// conversion was complete and flushed.
fn migrate_tree_v1(m: &Migrating<'_>) -> Result<(), String> {
    m.tree(TableName::AuditIndex.as_str())?.clear()?;
    if m.has_tree(AUDIT_TREE_V1) {
        let old = m.tree(AUDIT_TREE_V1)?;
        let new = m.tree(TableName::AuditTree.as_str())?;
        new.clear()?;
        let key = |level: u8, index: u64| NodeKey { level, index }.to_bytes();
        // The last leaf bounds the chunks.
        let last_leaf = match old.range(&key(0, 0), &key(1, 0)).next_back() {
            Some(item) => NodeKey::from_bytes(&item?.0).map(|n| n.index),
            None => None,
        };
        if let Some(last_leaf) = last_leaf {
            let mut chunk = 0u64;
            let mut batch = Vec::new();
            while chunk <= last_leaf {
                let end = chunk.saturating_add(MIGRATION_CHUNK);
                let mut writes = Vec::new();
                // Node (L, i) ends at leaf (i+1)·2^L − 1; in [chunk, end)
                // exactly for i in [chunk >> L, end >> L).
                for level in 0..64u8 {
                    let (lo, hi) = (chunk >> level, end >> level);
                    if hi == 0 {
                        break;
                    }
                    for item in old.range(&key(level, lo), &key(level, hi)) {
                        let (k, v) = item?;
                        match (NodeKey::from_bytes(&k), Hash::from_slice(&v)) {
                            (Some(key), Ok(hash)) => writes.push(NodeWrite { key, hash }),
                            _ => tracing::warn!(
                                key = %hex::encode(&k),
                                "malformed audit tree node not migrated; the store check reports it missing"
                            ),
                        }
                    }
                }
                if !writes.is_empty() {
                    batch.push((chunk.to_be_bytes().to_vec(), encode_node_group(&mut writes)));
                }
                if batch.len() >= 64 {
                    new.insert_all(std::mem::take(&mut batch))?;
                }
                chunk = end;
                if end == u64::MAX {
                    break;
                }
            }
            new.insert_all(batch)?;
        }
        m.flush()?;
        m.drop_tree(AUDIT_TREE_V1)?;
    }
    m.flush()
}

/// Looks up node `(level, index)` in a group value by binary search.
fn find_in_group(value: &[u8], level: u8, index: u64) -> Result<Option<Hash>, String> {
    let Some((&format, records)) = value.split_first() else {
        return Err("empty tree value".into());
    };
    if format != GROUP_FORMAT {
        return Err(format!("unknown tree value format {format}"));
    }
    if records.len() % RECORD != 0 {
        return Err(format!(
            "tree value of {} bytes is not a whole number of records",
            value.len()
        ));
    }
    let want = NodeKey { level, index }.to_bytes();
    let (mut lo, mut hi) = (0usize, records.len() / RECORD);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let rec = &records[mid * RECORD..(mid + 1) * RECORD];
        match rec[..9].cmp(&want[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => {
                return Hash::from_slice(&rec[9..])
                    .map(Some)
                    .map_err(|e| e.to_string());
            }
        }
    }
    Ok(None)
}

/// The Merkle tree's stored hashes, read through the store.
#[derive(Debug, Clone)]
pub struct SledHashStore {
    pub(super) tree: RawTable<u64>,
}

impl HashStore for SledHashStore {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError> {
        // The node's last leaf; beyond u64 no node can exist.
        let Some(last_leaf) = index
            .checked_add(1)
            .and_then(|n| n.checked_mul(1u64.checked_shl(u32::from(level))?))
            .map(|n| n - 1)
        else {
            return Ok(None);
        };
        let found = self
            .tree
            .with_last_at_or_before(&last_leaf, |_, value| find_in_group(value, level, index))?;
        match found {
            None => Ok(None),
            Some(r) => r.map_err(|reason| StoreError::Corrupt {
                table: TableName::AuditTree.as_str(),
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use allmende_audit::Frontier;

    #[test]
    fn every_node_of_a_group_is_found_and_others_are_not() {
        let mut f = Frontier::new();
        let mut writes = Vec::new();
        for i in 0..300u64 {
            f.append(allmende_audit::leaf_hash(&i.to_be_bytes()), &mut writes)
                .unwrap();
        }
        let expected = writes.clone();
        let value = encode_node_group(&mut writes);
        assert_eq!(value.len(), 1 + expected.len() * RECORD);
        for w in &expected {
            assert_eq!(
                find_in_group(&value, w.key.level, w.key.index).unwrap(),
                Some(w.hash)
            );
        }
        assert_eq!(find_in_group(&value, 0, 300).unwrap(), None);
        assert_eq!(find_in_group(&value, 9, 0).unwrap(), None);
        assert!(find_in_group(&value[..value.len() - 1], 0, 0).is_err());
        assert!(find_in_group(&[], 0, 0).is_err());
    }
}
