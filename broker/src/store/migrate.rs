//! The store's format version and its migrations.
//!
//! The format version lives under `meta/format_version`; [`Store::open`]
//! refuses a newer one and runs the steps from every older one, one by one.
//! The store moves bytes only: a step that rewrites a domain module's format
//! is supplied by that module as a [`MigrationStep`] (the audit log's tree
//! conversion is `crate::audit::STORE_MIGRATIONS`), and sees the store only
//! through [`Migrating`] — raw named trees, no sled type.

use super::{FORMAT_KEY, FORMAT_VERSION, Store, StoreError, TableName};

/// One step from format `from` to `from + 1`, supplied by the module that
/// owns the format it rewrites.
#[derive(Debug, Clone, Copy)]
pub struct MigrationStep {
    pub from: u32,
    /// Must be safe to run again from the start after an interruption: the
    /// format key is bumped only after it returned.
    pub run: fn(&Migrating<'_>) -> Result<(), String>,
}

/// The steps the store itself knows (they touch no domain format).
///
/// Format 0 is what pre-release builds wrote: the same trees without a
/// `meta/format_version` key. Migrating stamps the version and creates the
/// trees a format-1 store is expected to have.
pub const MIGRATIONS: &[MigrationStep] = &[MigrationStep {
    from: 0,
    run: migrate_0_to_1,
}];

fn migrate_0_to_1(m: &Migrating<'_>) -> Result<(), String> {
    for t in TableName::ALL {
        m.tree(t.as_str())?;
    }
    Ok(())
}

/// The store as a migration step sees it: named trees of raw bytes.
#[derive(Debug)]
pub struct Migrating<'a> {
    db: &'a sled::Db,
}

/// One tree of a store under migration: raw keys and values.
#[derive(Debug)]
pub struct MigratingTree {
    tree: sled::Tree,
}

fn err(e: sled::Error) -> String {
    e.to_string()
}

impl Migrating<'_> {
    /// Opens (or creates) the tree `name`.
    pub fn tree(&self, name: &str) -> Result<MigratingTree, String> {
        Ok(MigratingTree {
            tree: self.db.open_tree(name).map_err(err)?,
        })
    }

    /// Whether a tree `name` exists.
    pub fn has_tree(&self, name: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes())
    }

    /// Removes the tree `name` and its contents.
    pub fn drop_tree(&self, name: &str) -> Result<(), String> {
        self.db.drop_tree(name).map_err(err)?;
        Ok(())
    }

    /// Writes everything so far to disk.
    pub fn flush(&self) -> Result<(), String> {
        self.db.flush().map_err(err)?;
        Ok(())
    }
}

impl MigratingTree {
    /// Removes every entry.
    pub fn clear(&self) -> Result<(), String> {
        self.tree.clear().map_err(err)
    }

    /// Entries with keys in `[from, to)`, in key order.
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, Vec<u8>), String>> + '_ {
        self.tree
            .range(from.to_vec()..to.to_vec())
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
    }

    /// Inserts the pairs in one atomic batch.
    pub fn insert_all(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        let mut batch = sled::Batch::default();
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch).map_err(err)
    }
}

impl Store {
    pub(super) fn meta(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TableName::Meta.as_str())?)
    }

    /// The format version on disk.
    pub fn format_version(&self) -> Result<u32, StoreError> {
        let meta = self.meta()?;
        match meta.get(FORMAT_KEY)? {
            Some(v) => {
                let b: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    table: "meta",
                    reason: "format version is not 4 bytes".into(),
                })?;
                Ok(u32::from_be_bytes(b))
            }
            None => Ok(0),
        }
    }

    fn is_fresh(&self) -> Result<bool, StoreError> {
        for name in self.db.tree_names() {
            if name.as_ref() == b"__sled__default" {
                if !self.db.is_empty() {
                    return Ok(false);
                }
                continue;
            }
            if !self.db.open_tree(&name)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks the format on disk and runs the missing steps: the store's
    /// own ([`MIGRATIONS`]) and those the caller supplies (`steps`). A step
    /// that neither knows is an error, never a skip.
    pub(super) fn check_format(&self, steps: &[MigrationStep]) -> Result<(), StoreError> {
        let m = Migrating { db: &self.db };
        let mut version = self.format_version()?;
        if version == 0 && self.is_fresh()? {
            version = FORMAT_VERSION;
            migrate_0_to_1(&m).map_err(|reason| StoreError::Migration { from: 0, reason })?;
            self.set_format(version)?;
        }
        if version > FORMAT_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        while version < FORMAT_VERSION {
            let step = MIGRATIONS
                .iter()
                .chain(steps)
                .find(|s| s.from == version)
                .ok_or_else(|| StoreError::Migration {
                    from: version,
                    reason: "no migration step supplied for this format (open the store with \
                             the node's migration steps)"
                        .into(),
                })?;
            (step.run)(&m).map_err(|reason| StoreError::Migration {
                from: version,
                reason,
            })?;
            version += 1;
            self.set_format(version)?;
            tracing::info!(version, path = %self.path.display(), "store migrated");
        }
        Ok(())
    }

    pub(super) fn set_format(&self, version: u32) -> Result<(), StoreError> {
        self.meta()?.insert(FORMAT_KEY, &version.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::super::tests::{Thing, opts};
    use super::super::{RawTable, Table};
    use super::*;

    #[test]
    fn format_zero_store_is_migrated_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What a pre-release build left behind: data, no format key.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.open_tree("peers")
                .unwrap()
                .insert(b"swm\0swm-1", br#"{"n":7}"#.to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let s = Store::open_with(dir.path(), &opts(), crate::audit::STORE_MIGRATIONS).unwrap();
        // Migrated step by step (0 → 1 → …) to the current format.
        assert_eq!(s.format_version().unwrap(), FORMAT_VERSION);
        let peers: Table<(String, String), Thing> = s.table(TableName::Peers).unwrap();
        assert_eq!(
            peers.get(&("swm".into(), "swm-1".into())).unwrap(),
            Some(Thing { n: 7 })
        );
        assert!(
            s.raw_db()
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"membership")
        );
    }

    /// A format-1 store as the previous build left it: a real log whose
    /// Merkle hashes are one key per node (`audit_tree`, 9-byte keys) and
    /// whose index is one key per (term, entry). Opening it with this build
    /// converts the tree (across more than one migration chunk), clears the
    /// index for a rebuild, and the log keeps its entries, root, proofs and
    /// checkpoints and still verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn format_one_store_is_migrated_and_the_log_still_verifies() {
        use crate::audit::{AuditLog, Draft, QueryFilter};
        use allmende_audit::{EntryKind, Frontier, MemoryTree, leaf_hash};
        const N: u64 = crate::audit::MIGRATION_CHUNK + 300;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let clock = crate::clock::ManualClock::at_unix_ms(1_800_000_000_000);
        let open_log = |store: Store| {
            let clock = clock.clone();
            async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                let log = AuditLog::open(store, "munich", "swm", "swm-1", clock, rx)
                    .await
                    .unwrap();
                (log, tx)
            }
        };
        let draft = |i: u64| {
            let mut d = Draft::new("tum", "read", "smart-meter-readings", EntryKind::Decision);
            d.user = Some(format!("user-{}", i % 3));
            d.subjects = vec![format!("HH-{}", i % 7)];
            d
        };
        // A real log, written by the log itself, with a signed checkpoint.
        let (entries, root, checkpoint_root) = {
            let store = Store::open(&path, &opts()).unwrap();
            let (log, stop) = open_log(store).await;
            let mut next = 0u64;
            while next < N {
                let mut tasks = Vec::new();
                for i in next..N.min(next + 200) {
                    let log = log.clone();
                    tasks.push(tokio::spawn(async move { log.append(draft(i)).await }));
                }
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
                next = N.min(next + 200);
            }
            let cp = log.checkpoint_now().await.unwrap().unwrap();
            assert_eq!(cp.size, N);
            let entries = log.entry_range(0, N).unwrap();
            let root = allmende_audit::root_at(log.hash_store(), N).unwrap();
            stop.send(true).unwrap();
            log.closed().await;
            (entries, root, cp.root_hex)
        };
        assert_eq!(entries.len() as u64, N);
        assert_eq!(root.to_hex(), checkpoint_root);
        // Rewrite it by hand as format 1: per-node keys computed from the
        // entries by the core's frontier, format-1 index keys, version 1,
        // and a half-written `audit_tree_v2` as an interrupted migration
        // would leave it.
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            db.drop_tree("audit_tree_v2").unwrap();
            let mut frontier = Frontier::new();
            let writes = frontier
                .append_all(entries.iter().map(|(_, b)| leaf_hash(b)))
                .unwrap();
            assert_eq!(frontier.root(), root);
            let old = db.open_tree("audit_tree").unwrap();
            for w in &writes {
                old.insert(w.key.to_bytes(), w.hash.0.to_vec()).unwrap();
            }
            let index = db.open_tree("audit_index").unwrap();
            index.clear().unwrap();
            for seq in 0..N {
                let mut k = b"d\0smart-meter-readings\0".to_vec();
                k.extend_from_slice(&seq.to_be_bytes());
                index.insert(k, Vec::new()).unwrap();
            }
            index.insert(b"\xffindexed", &N.to_be_bytes()).unwrap();
            db.open_tree("audit_tree_v2")
                .unwrap()
                .insert(5u64.to_be_bytes(), b"half-written".to_vec())
                .unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(FORMAT_KEY, &1u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }

        // Without the audit log's step the store refuses, and changes nothing.
        let refused = Store::open(&path, &opts()).unwrap_err();
        assert!(
            matches!(refused, StoreError::Migration { from: 1, .. }),
            "{refused}"
        );
        let store = Store::open_with(&path, &opts(), crate::audit::STORE_MIGRATIONS).unwrap();
        assert_eq!(store.format_version().unwrap(), FORMAT_VERSION);
        let names = store.raw_db().tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"audit_tree"));
        let index = store.raw_db().open_tree("audit_index").unwrap();
        assert!(
            index.is_empty(),
            "the derived index is cleared for a rebuild"
        );
        let tree: RawTable<u64> = store.raw_table(TableName::AuditTree).unwrap();
        assert_eq!(tree.len() as u64, N.div_ceil(crate::audit::MIGRATION_CHUNK));

        let (log, _stop) = open_log(store.clone()).await;
        assert_eq!(log.size(), N);
        assert_eq!(log.entry_range(0, N).unwrap(), entries);
        let hashes = log.hash_store();
        assert_eq!(allmende_audit::root_at(hashes, N).unwrap(), root);
        // Proofs from the migrated store equal those of an in-memory tree
        // of the same leaves, and verify.
        let mut mem = MemoryTree::new();
        for (_, b) in &entries {
            mem.append(leaf_hash(b)).unwrap();
        }
        for &(index, size) in &[
            (0, N),
            (4095, N),
            (4096, N),
            (N - 1, N),
            (17, 4097),
            (300, 301),
        ] {
            let got = allmende_audit::inclusion_proof(hashes, index, size).unwrap();
            let want = allmende_audit::inclusion_proof(mem.store(), index, size).unwrap();
            assert_eq!(got, want, "inclusion {index} in {size}");
            let size_root = allmende_audit::root_at(hashes, size).unwrap();
            allmende_audit::verify_inclusion(
                &leaf_hash(&entries[index as usize].1),
                index,
                size,
                &got,
                &size_root,
            )
            .unwrap();
        }
        for &(old, new) in &[(1, N), (4096, N), (4097, N), (300, N - 1)] {
            let got = allmende_audit::consistency_proof(hashes, old, new).unwrap();
            let want = allmende_audit::consistency_proof(mem.store(), old, new).unwrap();
            assert_eq!(got, want, "consistency {old} -> {new}");
            allmende_audit::verify_consistency(
                old,
                new,
                &allmende_audit::root_at(hashes, old).unwrap(),
                &allmende_audit::root_at(hashes, new).unwrap(),
                &got,
            )
            .unwrap();
        }
        let report = log.verify_store().unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.entries_checked, N);

        // The index is rebuilt from the log; queries answer as before.
        let query = |log: &AuditLog| {
            log.query(&QueryFilter {
                subject: Some("HH-3".into()),
                limit: 1000,
                ..Default::default()
            })
            .unwrap()
            .entries
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>()
        };
        let expected: Vec<u64> = entries
            .iter()
            .filter(|(_, b)| {
                let e = allmende_audit::Entry::decode(b).unwrap();
                e.subjects.contains(&log.subject_hash("HH-3"))
            })
            .map(|(s, _)| *s)
            .take(1000)
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(query(&log), expected);
        for _ in 0..200 {
            if log.status().indexed == N {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(log.status().indexed, N);
        assert_eq!(query(&log), expected);

        // And the log goes on.
        assert_eq!(log.append(draft(N)).await.unwrap(), N);
        assert!(log.verify_store().unwrap().is_ok());
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), &opts()).unwrap();
            s.set_format(FORMAT_VERSION + 1).unwrap();
        }
        let err = Store::open(dir.path(), &opts()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found, .. } if found == FORMAT_VERSION + 1));
        assert!(err.to_string().contains("newer than this build"));
    }
}
