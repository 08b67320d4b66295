//! The node's embedded store: the only module that touches sled.
//!
//! - Named trees ([`TableName`]) with typed keys ([`Key`]) and serde values.
//! - A [`WriteBatch`] spanning several trees, committed atomically in one sled
//!   transaction. [`Store::commit_durable`] flushes (`flush_async`) before it
//!   returns: callers acknowledge a write to anyone only after it returned.
//! - A storage format version under `meta/format_version`, checked at open,
//!   with a migration path from every older version ([`MIGRATIONS`]).
//!
//! Architecture invariant: nothing outside this module names a sled type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// The storage format this build writes.
pub const FORMAT_VERSION: u32 = 2;

const FORMAT_KEY: &[u8] = b"format_version";
const BACKUP_MAGIC: &[u8] = b"ALLMENDE-BACKUP 1\n";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at `{path}`: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "store at `{path}` has format version {found}, newer than this build's {supported}; upgrade allmende"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store migration from format {from} failed: {reason}")]
    Migration { from: u32, reason: String },
    #[error("store i/o error: {0}")]
    Io(#[from] sled::Error),
    #[error("corrupt value in table `{table}`: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("cannot encode value for table `{table}`: {reason}")]
    Encode { table: &'static str, reason: String },
}

/// The named trees of a node's store. Later features add their own names here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableName {
    /// Store metadata: format version, node facts.
    Meta,
    /// Peers this node has met (`Federation.Hello`).
    Peers,
    /// The last signed membership document this node accepted.
    Membership,
    /// Audit log entry bodies by sequence (canonical encoding, raw bytes).
    AuditEntries,
    /// Audit Merkle tree: the complete subtree hashes written by one group
    /// commit in one value, keyed by the group's first sequence (format 2;
    /// tree `audit_tree_v2`).
    AuditTree,
    /// Audit log state: tree size, signing key, latest checkpoint.
    AuditState,
    /// Signed checkpoints by tree size, with the cosignatures received.
    AuditCheckpoints,
    /// Derived audit query indexes (rebuildable from the log).
    AuditIndex,
    /// What this node, as a witness, last cosigned for each peer log.
    WitnessState,
    /// Local and replicated catalog entries.
    Catalog,
    /// Registered connectors.
    Connectors,
    /// Consent records.
    Consent,
    /// Retention summaries (canonical encoding) by the sequence of the
    /// retention entry that covers them.
    AuditRetention,
}

impl TableName {
    /// Every table, in a fixed order.
    pub const ALL: [TableName; 13] = [
        TableName::Meta,
        TableName::Peers,
        TableName::Membership,
        TableName::AuditEntries,
        TableName::AuditTree,
        TableName::AuditState,
        TableName::AuditCheckpoints,
        TableName::AuditIndex,
        TableName::WitnessState,
        TableName::Catalog,
        TableName::Connectors,
        TableName::Consent,
        TableName::AuditRetention,
    ];

    /// The sled tree name.
    pub fn as_str(self) -> &'static str {
        match self {
            TableName::Meta => "meta",
            TableName::Peers => "peers",
            TableName::Membership => "membership",
            TableName::AuditEntries => "audit_entries",
            TableName::AuditTree => "audit_tree_v2",
            TableName::AuditState => "audit_state",
            TableName::AuditCheckpoints => "audit_checkpoints",
            TableName::AuditIndex => "audit_index",
            TableName::WitnessState => "witness_state",
            TableName::Catalog => "catalog",
            TableName::Connectors => "connectors",
            TableName::Consent => "consent",
            TableName::AuditRetention => "audit_retention",
        }
    }
}

/// A key with a stable byte encoding whose byte order is the key order.
pub trait Key: Sized {
    /// Encodes the key.
    fn encode(&self) -> Vec<u8>;
    /// Decodes a key written by [`Key::encode`].
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Key for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Key for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl Key for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// Two string parts, ordered by the first, then the second (0x00-separated;
/// the parts must not contain NUL, which identifiers in Allmende never do).
impl Key for (String, String) {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.0.len() + self.1.len() + 1);
        v.extend_from_slice(self.0.as_bytes());
        v.push(0);
        v.extend_from_slice(self.1.as_bytes());
        v
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let pos = bytes.iter().position(|b| *b == 0)?;
        Some((
            String::from_utf8(bytes[..pos].to_vec()).ok()?,
            String::from_utf8(bytes[pos + 1..].to_vec()).ok()?,
        ))
    }
}

/// A typed view of one named tree.
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    name: TableName,
    tree: sled::Tree,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Key, V: Serialize + DeserializeOwned> Table<K, V> {
    /// Reads one value.
    pub fn get(&self, key: &K) -> Result<Option<V>, StoreError> {
        match self.tree.get(key.encode())? {
            None => Ok(None),
            Some(bytes) => decode_value(self.name, &bytes).map(Some),
        }
    }

    /// Every entry in key order. A corrupt entry is an error, never skipped.
    pub fn entries(&self) -> Result<Vec<(K, V)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let key = K::decode(&k).ok_or_else(|| StoreError::Corrupt {
                table: self.name.as_str(),
                reason: "undecodable key".into(),
            })?;
            out.push((key, decode_value(self.name, &v)?));
        }
        Ok(out)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The table's name.
    pub fn name(&self) -> TableName {
        self.name
    }
}

/// A view of one named tree whose values are raw bytes (for canonical
/// encodings that must be stored byte for byte, such as audit entries).
#[derive(Debug, Clone)]
pub struct RawTable<K> {
    name: TableName,
    tree: sled::Tree,
    _types: PhantomData<fn() -> K>,
}

impl<K: Key> RawTable<K> {
    /// Reads one value.
    pub fn get(&self, key: &K) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key.encode())?.map(|v| v.to_vec()))
    }

    /// Entries with keys in `[from, to)`, in key order.
    pub fn range(&self, from: &K, to: &K) -> Result<Vec<(K, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.range(from.encode()..to.encode()) {
            let (k, v) = item?;
            let key = K::decode(&k).ok_or_else(|| StoreError::Corrupt {
                table: self.name.as_str(),
                reason: "undecodable key".into(),
            })?;
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    /// At most `limit` entries with keys in `[from, to)`, in key order.
    pub fn range_limit(
        &self,
        from: &K,
        to: &K,
        limit: usize,
    ) -> Result<Vec<(K, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.range(from.encode()..to.encode()).take(limit) {
            let (k, v) = item?;
            out.push((self.decode_key(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    /// Calls `f` with the entry of the greatest key `<= key` (without
    /// copying the value) and returns what `f` returns; `None` if there is
    /// no such entry.
    pub fn with_last_at_or_before<R>(
        &self,
        key: &K,
        f: impl FnOnce(K, &[u8]) -> R,
    ) -> Result<Option<R>, StoreError> {
        match self.tree.range(..=key.encode()).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                Ok(Some(f(self.decode_key(&k)?, &v)))
            }
        }
    }

    fn decode_key(&self, bytes: &[u8]) -> Result<K, StoreError> {
        K::decode(bytes).ok_or_else(|| StoreError::Corrupt {
            table: self.name.as_str(),
            reason: "undecodable key".into(),
        })
    }

    /// Entries whose key starts with `prefix` (raw key bytes), in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(K, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item?;
            let key = K::decode(&k).ok_or_else(|| StoreError::Corrupt {
                table: self.name.as_str(),
                reason: "undecodable key".into(),
            })?;
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    /// The entry with the greatest key.
    pub fn last(&self) -> Result<Option<(K, Vec<u8>)>, StoreError> {
        match self.tree.last()? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((
                K::decode(&k).ok_or_else(|| StoreError::Corrupt {
                    table: self.name.as_str(),
                    reason: "undecodable key".into(),
                })?,
                v.to_vec(),
            ))),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The table's name.
    pub fn name(&self) -> TableName {
        self.name
    }
}

fn decode_value<V: DeserializeOwned>(table: TableName, bytes: &[u8]) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: table.as_str(),
        reason: e.to_string(),
    })
}

#[derive(Debug)]
enum Op {
    Put(TableName, Vec<u8>, Vec<u8>),
    Remove(TableName, Vec<u8>),
}

/// Writes to one or more tables, applied atomically by [`Store::commit_durable`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put<K: Key, V: Serialize + DeserializeOwned>(
        &mut self,
        table: &Table<K, V>,
        key: &K,
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode {
            table: table.name.as_str(),
            reason: e.to_string(),
        })?;
        self.ops.push(Op::Put(table.name, key.encode(), bytes));
        Ok(())
    }

    /// Adds a removal.
    pub fn remove<K: Key, V>(&mut self, table: &Table<K, V>, key: &K) {
        self.ops.push(Op::Remove(table.name, key.encode()));
    }

    /// Adds a put of raw bytes.
    pub fn put_raw<K: Key>(&mut self, table: &RawTable<K>, key: &K, value: Vec<u8>) {
        self.ops.push(Op::Put(table.name, key.encode(), value));
    }

    /// Adds a removal from a raw table.
    pub fn remove_raw<K: Key>(&mut self, table: &RawTable<K>, key: &K) {
        self.ops.push(Op::Remove(table.name, key.encode()));
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache in bytes (sled's own default of 1 GiB is too much when
    /// several nodes share a machine).
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A migration from format `from` to `from + 1`.
type Migration = fn(&sled::Db) -> Result<(), String>;

/// Migrations, indexed by the version they start from.
///
/// Format 0 is what pre-release builds wrote: the same trees without a
/// `meta/format_version` key. Migrating stamps the version and creates the
/// trees a format-1 store is expected to have.
///
/// Format 1 kept one key per Merkle node in `audit_tree` (9-byte
/// `level ‖ index`) and one index key per (term, entry); format 2 keeps one
/// value per group commit in `audit_tree_v2` and posting lists in
/// `audit_index` (see [`migrate_1_to_2`]).
pub const MIGRATIONS: &[(u32, Migration)] = &[(0, migrate_0_to_1), (1, migrate_1_to_2)];

fn migrate_0_to_1(db: &sled::Db) -> Result<(), String> {
    for t in TableName::ALL {
        db.open_tree(t.as_str()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The format-1 tree of Merkle node hashes (one key per node).
const AUDIT_TREE_V1: &str = "audit_tree";
/// Sequences per converted value of the 1 → 2 migration.
const MIGRATION_CHUNK: u64 = 4096;

/// Format 1 → 2: the per-node keys of `audit_tree` become one value per
/// chunk of [`MIGRATION_CHUNK`] sequences in `audit_tree_v2` (a node goes to
/// the chunk of its last leaf, like a group commit writes it with that
/// leaf); the derived audit index is cleared and rebuilt by the indexer.
///
/// Crash-safe without one huge transaction: the new tree is cleared and
/// written from scratch and flushed before the old tree is dropped, and the
/// format key is bumped only after this returns, so an interrupted
/// migration runs again from the start. Once the old tree is gone the
/// conversion was complete and flushed.
fn migrate_1_to_2(db: &sled::Db) -> Result<(), String> {
    let err = |e: sled::Error| e.to_string();
    let index = db.open_tree(TableName::AuditIndex.as_str()).map_err(err)?;
    index.clear().map_err(err)?;
    let has_old = db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == AUDIT_TREE_V1.as_bytes());
    if has_old {
        let old = db.open_tree(AUDIT_TREE_V1).map_err(err)?;
        let new = db.open_tree(TableName::AuditTree.as_str()).map_err(err)?;
        new.clear().map_err(err)?;
        let key = |level: u8, index: u64| allmende_audit::NodeKey { level, index }.to_bytes();
        // The last leaf bounds the chunks.
        let last_leaf = match old.range(key(0, 0)..key(1, 0)).next_back() {
            Some(item) => {
                let (k, _) = item.map_err(err)?;
                allmende_audit::NodeKey::from_bytes(&k).map(|n| n.index)
            }
            None => None,
        };
        if let Some(last_leaf) = last_leaf {
            let mut chunk = 0u64;
            let mut batch = sled::Batch::default();
            let mut pending = 0usize;
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
                    for item in old.range(key(level, lo)..key(level, hi)) {
                        let (k, v) = item.map_err(err)?;
                        let node = allmende_audit::NodeKey::from_bytes(&k);
                        match (node, allmende_audit::Hash::from_slice(&v)) {
                            (Some(key), Ok(hash)) => {
                                writes.push(allmende_audit::NodeWrite { key, hash })
                            }
                            _ => tracing::warn!(
                                key = %hex::encode(&k),
                                "malformed audit tree node not migrated; the store check reports it missing"
                            ),
                        }
                    }
                }
                if !writes.is_empty() {
                    batch.insert(
                        &chunk.to_be_bytes(),
                        crate::audit::encode_node_group(&mut writes),
                    );
                    pending += 1;
                }
                if pending >= 64 {
                    new.apply_batch(std::mem::take(&mut batch)).map_err(err)?;
                    pending = 0;
                }
                chunk = end;
                if end == u64::MAX {
                    break;
                }
            }
            new.apply_batch(batch).map_err(err)?;
        }
        db.flush().map_err(err)?;
        db.drop_tree(AUDIT_TREE_V1).map_err(err)?;
    }
    db.flush().map_err(err)?;
    Ok(())
}

/// The node's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    // Fault injection for fail-closed tests (`test-util` feature only).
    fail_writes: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    /// Opens (or creates) the store at `path`, migrating older formats.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        // sled releases its file lock only when its background flusher has
        // stopped; a restart right after a stop may briefly find it held.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(options.cache_bytes)
                .open()
            {
                Ok(db) => break db,
                Err(e) if attempts < 40 && e.to_string().contains("could not acquire lock") => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let store = Self {
            db,
            path: path.to_path_buf(),
            fail_writes: Default::default(),
        };
        store.check_format()?;
        Ok(store)
    }

    fn meta(&self) -> Result<sled::Tree, StoreError> {
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

    fn check_format(&self) -> Result<(), StoreError> {
        let mut version = self.format_version()?;
        if version == 0 && self.is_fresh()? {
            version = FORMAT_VERSION;
            migrate_0_to_1(&self.db).map_err(|reason| StoreError::Migration { from: 0, reason })?;
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
            let (_, step) = MIGRATIONS
                .iter()
                .find(|(from, _)| *from == version)
                .ok_or_else(|| StoreError::Migration {
                    from: version,
                    reason: "no migration known".into(),
                })?;
            step(&self.db).map_err(|reason| StoreError::Migration {
                from: version,
                reason,
            })?;
            version += 1;
            self.set_format(version)?;
            tracing::info!(version, path = %self.path.display(), "store migrated");
        }
        Ok(())
    }

    fn set_format(&self, version: u32) -> Result<(), StoreError> {
        self.meta()?.insert(FORMAT_KEY, &version.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// A typed view of a table.
    pub fn table<K: Key, V: Serialize + DeserializeOwned>(
        &self,
        name: TableName,
    ) -> Result<Table<K, V>, StoreError> {
        Ok(Table {
            name,
            tree: self.db.open_tree(name.as_str())?,
            _types: PhantomData,
        })
    }

    /// A raw-bytes view of a table.
    pub fn raw_table<K: Key>(&self, name: TableName) -> Result<RawTable<K>, StoreError> {
        Ok(RawTable {
            name,
            tree: self.db.open_tree(name.as_str())?,
            _types: PhantomData,
        })
    }

    /// Makes every later write fail as if the disk refused it (tests of
    /// fail-closed behaviour).
    #[cfg(any(test, feature = "test-util"))]
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io(sled::Error::Io(std::io::Error::other(
                "writes disabled by fault injection",
            ))));
        }
        let mut names: Vec<TableName> = Vec::new();
        for op in &batch.ops {
            let n = match op {
                Op::Put(n, ..) | Op::Remove(n, _) => *n,
            };
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if let [only] = names.as_slice() {
            // One tree: sled applies a batch atomically without the cost of
            // a multi-tree transaction.
            let mut b = sled::Batch::default();
            for op in batch.ops {
                match op {
                    Op::Put(_, k, v) => b.insert(k, v),
                    Op::Remove(_, k) => b.remove(k),
                }
            }
            self.db.open_tree(only.as_str())?.apply_batch(b)?;
            return Ok(());
        }
        let trees = names
            .iter()
            .map(|n| self.db.open_tree(n.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let tree_refs: Vec<&sled::Tree> = trees.iter().collect();
        let result: Result<(), TransactionError<()>> = tree_refs.as_slice().transaction(|txs| {
            for op in &batch.ops {
                match op {
                    Op::Put(n, k, v) => {
                        let i = names.iter().position(|x| x == n).unwrap_or(0);
                        txs[i].insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Remove(n, k) => {
                        let i = names.iter().position(|x| x == n).unwrap_or(0);
                        txs[i].remove(k.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(StoreError::Io(e)),
            Err(TransactionError::Abort(())) => Err(StoreError::Corrupt {
                table: "transaction",
                reason: "aborted".into(),
            }),
        }
    }

    /// Applies the batch atomically and waits until it is on disk
    /// (`flush_async`). Only after this returns may a write be acknowledged.
    pub async fn commit_durable(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.apply(batch)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Applies the batch atomically without waiting for disk; for state that
    /// can be rebuilt (caches, derived indexes).
    pub fn commit_volatile(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.apply(batch)
    }

    /// Flushes everything written so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

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
    /// written.
    pub fn restore_from(
        backup: &Path,
        path: &Path,
        options: &StoreOptions,
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
        store.check_format()?;
        Ok(records)
    }

    #[cfg(test)]
    fn raw_db(&self) -> &sled::Db {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Thing {
        n: u64,
    }

    fn opts() -> StoreOptions {
        StoreOptions {
            cache_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn batch_spans_tables_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), &opts()).unwrap();
            let peers: Table<(String, String), Thing> = s.table(TableName::Peers).unwrap();
            let meta: Table<String, Thing> = s.table(TableName::Meta).unwrap();
            let mut b = WriteBatch::new();
            b.put(&peers, &("swm".into(), "swm-1".into()), &Thing { n: 1 })
                .unwrap();
            b.put(&meta, &"x".to_string(), &Thing { n: 2 }).unwrap();
            assert_eq!(b.len(), 2);
            s.commit_durable(b).await.unwrap();
        }
        let s = Store::open(dir.path(), &opts()).unwrap();
        let peers: Table<(String, String), Thing> = s.table(TableName::Peers).unwrap();
        assert_eq!(
            peers.entries().unwrap(),
            vec![(("swm".into(), "swm-1".into()), Thing { n: 1 })]
        );
        assert_eq!(s.format_version().unwrap(), FORMAT_VERSION);
    }

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
        let s = Store::open(dir.path(), &opts()).unwrap();
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
        const N: u64 = MIGRATION_CHUNK + 300;
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

        let store = Store::open(&path, &opts()).unwrap();
        assert_eq!(store.format_version().unwrap(), FORMAT_VERSION);
        let names = store.raw_db().tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"audit_tree"));
        let index = store.raw_db().open_tree("audit_index").unwrap();
        assert!(
            index.is_empty(),
            "the derived index is cleared for a rebuild"
        );
        let tree: RawTable<u64> = store.raw_table(TableName::AuditTree).unwrap();
        assert_eq!(tree.len() as u64, N.div_ceil(MIGRATION_CHUNK));

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

    #[test]
    fn corrupt_value_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &opts()).unwrap();
        s.raw_db()
            .open_tree("peers")
            .unwrap()
            .insert(b"a\0b", b"not json".to_vec())
            .unwrap();
        let peers: Table<(String, String), Thing> = s.table(TableName::Peers).unwrap();
        assert!(matches!(peers.entries(), Err(StoreError::Corrupt { .. })));
    }

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
        let n = Store::restore_from(&file, &dir.path().join("b"), &opts()).unwrap();
        assert!(n >= 3);
        let r = Store::open(&dir.path().join("b"), &opts());
        // The restored store is open in restore_from's scope only; reopen works.
        let r = r.unwrap();
        let raw: RawTable<u64> = r.raw_table(TableName::AuditEntries).unwrap();
        assert_eq!(raw.get(&7).unwrap(), Some(vec![1, 2, 3]));
        // Refuses a non-empty target and a damaged file.
        assert!(Store::restore_from(&file, &dir.path().join("b"), &opts()).is_err());
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let e = Store::restore_from(&file, &dir.path().join("c"), &opts()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn keys_order_like_their_values() {
        assert!(1u64.encode() < 256u64.encode());
        let k = ("a".to_string(), "b".to_string());
        assert_eq!(<(String, String)>::decode(&k.encode()), Some(k));
        assert_eq!(<u64>::decode(&[1, 2]), None);
    }
}
