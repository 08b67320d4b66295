//! Backup and restore of a stopped node's store: every tree, record by
//! record, with a SHA-256 trailer checked before anything is restored.

use super::{MigrationStep, Store, StoreError, StoreOptions};
use std::path::Path;

const BACKUP_MAGIC: &[u8] = b"ALLMENDE-BACKUP 1\n";

impl Store {
    /// Writes a consistent copy of every table to `out` (run with the node
    /// stopped: the store is opened exclusively). Format: magic line, then
    /// length-prefixed (tree, key, value) records, then a SHA-256 trailer.
    pub fn backup_to(&self, out: &Path) -> Result<u64, StoreError> {
        use sha2::{Digest, Sha256};
        use std::io::Write;
        let io = |e: std::io::Error| StoreError::Io(sled::Error::Io(e));
        let mut f = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
        let mut hasher = Sha256::new();
        let mut write = |bytes: &[u8], f: &mut std::io::BufWriter<std::fs::File>| {
            hasher.update(bytes);
            f.write_all(bytes)
        };
        write(BACKUP_MAGIC, &mut f).map_err(io)?;
        let mut records = 0u64;
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for item in tree.iter() {
                let (k, v) = item?;
                for part in [name.as_ref(), k.as_ref(), v.as_ref()] {
                    let len = u32::try_from(part.len()).map_err(|_| StoreError::Encode {
                        table: "backup",
                        reason: "record too large".into(),
                    })?;
                    write(&len.to_be_bytes(), &mut f).map_err(io)?;
                    write(part, &mut f).map_err(io)?;
                }
                records += 1;
            }
        }
        let digest = hasher.finalize();
        f.write_all(&u32::MAX.to_be_bytes()).map_err(io)?;
        f.write_all(&digest).map_err(io)?;
        f.flush().map_err(io)?;
        f.get_ref().sync_all().map_err(io)?;
        Ok(records)
    }

    /// Restores a backup into a new store at `path` (which must not hold a
    /// store yet). The backup's checksum is verified before anything is
    /// written; a backup of an older format is migrated with the store's
    /// own steps and `steps` (see [`Store::open_with`]).
    pub fn restore_from(
        backup: &Path,
        path: &Path,
        options: &StoreOptions,
        steps: &[MigrationStep],
    ) -> Result<u64, StoreError> {
        use sha2::{Digest, Sha256};
        let io = |e: std::io::Error| StoreError::Io(sled::Error::Io(e));
        let bytes = std::fs::read(backup).map_err(io)?;
        let corrupt = |reason: &str| StoreError::Corrupt {
            table: "backup",
            reason: reason.to_owned(),
        };
        if bytes.len() < BACKUP_MAGIC.len() + 36 || !bytes.starts_with(BACKUP_MAGIC) {
            return Err(corrupt("not an allmende backup"));
        }
        let body_end = bytes.len() - 36;
        let (body, trailer) = bytes.split_at(body_end);
        if trailer[..4] != u32::MAX.to_be_bytes()
            || Sha256::digest(body).as_slice() != &trailer[4..]
        {
            return Err(corrupt("checksum mismatch: the backup is damaged"));
        }
        if path.exists() && std::fs::read_dir(path).map_err(io)?.next().is_some() {
            return Err(corrupt("restore target is not empty"));
        }
        let store = Store::open(path, options)?;
        let mut pos = BACKUP_MAGIC.len();
        let take = |pos: &mut usize| -> Result<&[u8], StoreError> {
            let len_bytes: [u8; 4] = body
                .get(*pos..*pos + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("truncated record"))?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            let part = body
                .get(*pos + 4..*pos + 4 + len)
                .ok_or_else(|| corrupt("truncated record"))?;
            *pos += 4 + len;
            Ok(part)
        };
        let mut records = 0u64;
        while pos < body.len() {
            let name = take(&mut pos)?.to_vec();
            let k = take(&mut pos)?.to_vec();
            let v = take(&mut pos)?.to_vec();
            store.db.open_tree(&name)?.insert(k, v)?;
            records += 1;
        }
        store.db.flush()?;
        store.check_format(steps)?;
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::super::tests::{Thing, opts};
    use super::super::{RawTable, Table, TableName, WriteBatch};
    use super::*;

    #[tokio::test]
    async fn backup_restores_every_table_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a"), &opts()).unwrap();
        let peers: Table<(String, String), Thing> = s.table(TableName::Peers).unwrap();
        let raw: RawTable<u64> = s.raw_table(TableName::AuditEntries).unwrap();
        let mut b = WriteBatch::new();
        b.put(&peers, &("o".into(), "n".into()), &Thing { n: 5 })
            .unwrap();
        b.put_raw(&raw, &7, vec![1, 2, 3]);
        s.commit_durable(b).await.unwrap();
        let file = dir.path().join("backup.bin");
        assert!(s.backup_to(&file).unwrap() >= 3);
        let n = Store::restore_from(&file, &dir.path().join("b"), &opts(), &[]).unwrap();
        assert!(n >= 3);
        let r = Store::open(&dir.path().join("b"), &opts());
        // The restored store is open in restore_from's scope only; reopen works.
        let r = r.unwrap();
        let raw: RawTable<u64> = r.raw_table(TableName::AuditEntries).unwrap();
        assert_eq!(raw.get(&7).unwrap(), Some(vec![1, 2, 3]));
        // Refuses a non-empty target and a damaged file.
        assert!(Store::restore_from(&file, &dir.path().join("b"), &opts(), &[]).is_err());
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let e = Store::restore_from(&file, &dir.path().join("c"), &opts(), &[]).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
