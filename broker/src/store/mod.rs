//! The node's embedded store: the only module that touches sled.
//!
//! - Named trees ([`TableName`]) with typed keys ([`Key`]) and serde values.
//! - A [`WriteBatch`] spanning several trees, committed atomically in one sled
//!   transaction. [`Store::commit_durable`] flushes (`flush_async`) before it
//!   returns: callers acknowledge a write to anyone only after it returned.
//! - A storage format version under `meta/format_version`, checked at open,
//!   with a migration path from every older version (`migrate`: the store's
//!   own steps and those a domain module supplies, [`MigrationStep`]).
//! - Backup and restore of a stopped node's store (`backup`).
//!
//! Architecture invariant: nothing outside this module names a sled type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

mod backup;
mod migrate;

pub use migrate::{MIGRATIONS, Migrating, MigratingTree, MigrationStep};

/// The storage format this build writes.
pub const FORMAT_VERSION: u32 = 2;

const FORMAT_KEY: &[u8] = b"format_version";

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
    /// Access requests, grants and idempotency keys.
    AccessGrants,
    /// Data subjects' erasures.
    ConsentErasures,
    /// MQTT uplinks buffered per dataset, by receive sequence.
    MqttUplinks,
    /// Deduplication keys of the buffered MQTT uplinks.
    MqttSeen,
    /// The open-data ε budget ledger: ε spent per dataset and period window.
    OpendataBudget,
    /// Obligations recorded by this node (who must deliver what, when).
    Obligations,
    /// Attempts to take obliged deliveries, by organisation, dataset,
    /// window and attempt time.
    ObligationDeliveries,
    /// Imported MDS batches (accepted) and rejected ones kept for
    /// inspection.
    MdsBatches,
    /// MLS state of the node's groups (openmls' storage, written per
    /// operation in one atomic batch).
    MlsState,
    /// Invitations to join the federation (the city node): hashed secret,
    /// kind, expiry, when used.
    Invitations,
    /// The relay's records (`crate::relay`): on-behalf-of assertion nonces
    /// seen (until they expire) and the MLS group of each peer organisation.
    Relay,
}

impl TableName {
    /// Every table, in a fixed order.
    pub const ALL: [TableName; 24] = [
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
        TableName::AccessGrants,
        TableName::ConsentErasures,
        TableName::MqttUplinks,
        TableName::MqttSeen,
        TableName::OpendataBudget,
        TableName::Obligations,
        TableName::ObligationDeliveries,
        TableName::MdsBatches,
        TableName::MlsState,
        TableName::Invitations,
        TableName::Relay,
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
            TableName::AccessGrants => "access_grants",
            TableName::ConsentErasures => "consent_erasures",
            TableName::MqttUplinks => "mqtt_uplinks",
            TableName::MqttSeen => "mqtt_seen",
            TableName::OpendataBudget => "opendata_budget",
            TableName::Obligations => "obligations",
            TableName::ObligationDeliveries => "obligation_deliveries",
            TableName::MdsBatches => "mds_batches",
            TableName::MlsState => "mls_state",
            TableName::Invitations => "invitations",
            TableName::Relay => "relay",
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

/// What both views of a table share: the named tree.
#[derive(Debug, Clone)]
pub struct TableTree {
    name: TableName,
    tree: sled::Tree,
}

impl TableTree {
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

/// A typed view of one named tree.
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    base: TableTree,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::ops::Deref for Table<K, V> {
    type Target = TableTree;
    fn deref(&self) -> &TableTree {
        &self.base
    }
}

impl<K: Key, V: Serialize + DeserializeOwned> Table<K, V> {
    /// Reads one value.
    pub fn get(&self, key: &K) -> Result<Option<V>, StoreError> {
        match self.tree.get(key.encode())? {
            None => Ok(None),
            Some(bytes) => decode_value(self.name, &bytes).map(Some),
        }
    }

    /// Entries with keys in `[from, to)`, in key order. A corrupt entry is
    /// an error, never skipped.
    pub fn range(&self, from: &K, to: &K) -> Result<Vec<(K, V)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.range(from.encode()..to.encode()) {
            let (k, v) = item?;
            out.push((decode_key(self.name, &k)?, decode_value(self.name, &v)?));
        }
        Ok(out)
    }

    /// Every entry in key order. A corrupt entry is an error, never skipped.
    pub fn entries(&self) -> Result<Vec<(K, V)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let key = decode_key(self.name, &k)?;
            out.push((key, decode_value(self.name, &v)?));
        }
        Ok(out)
    }
}

/// A view of one named tree whose values are raw bytes (for canonical
/// encodings that must be stored byte for byte, such as audit entries).
#[derive(Debug, Clone)]
pub struct RawTable<K> {
    base: TableTree,
    _types: PhantomData<fn() -> K>,
}

impl<K> std::ops::Deref for RawTable<K> {
    type Target = TableTree;
    fn deref(&self) -> &TableTree {
        &self.base
    }
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
            let key = decode_key(self.name, &k)?;
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
            out.push((decode_key(self.name, &k)?, v.to_vec()));
        }
        Ok(out)
    }

    /// Number of entries with keys in `[from, to)` (values are not copied).
    pub fn count_range(&self, from: &K, to: &K) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.tree.range(from.encode()..to.encode()) {
            item?;
            n += 1;
        }
        Ok(n)
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
                Ok(Some(f(decode_key(self.name, &k)?, &v)))
            }
        }
    }

    /// Entries whose key starts with `prefix` (raw key bytes), in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(K, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item?;
            let key = decode_key(self.name, &k)?;
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    /// The entry with the greatest key.
    pub fn last(&self) -> Result<Option<(K, Vec<u8>)>, StoreError> {
        match self.tree.last()? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((decode_key(self.name, &k)?, v.to_vec()))),
        }
    }
}

fn decode_key<K: Key>(table: TableName, bytes: &[u8]) -> Result<K, StoreError> {
    K::decode(bytes).ok_or_else(|| StoreError::Corrupt {
        table: table.as_str(),
        reason: "undecodable key".into(),
    })
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

/// The node's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    // Fault injection for fail-closed tests (`test-util` feature only).
    fail_writes: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    /// Opens (or creates) the store at `path`, migrating older formats with
    /// the store's own steps only (a step it lacks is an error).
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(path, options, &[])
    }

    /// Opens (or creates) the store at `path`, migrating older formats with
    /// the store's own steps and `steps` (the node passes every domain
    /// module's, `crate::audit::STORE_MIGRATIONS`).
    pub fn open_with(
        path: &Path,
        options: &StoreOptions,
        steps: &[MigrationStep],
    ) -> Result<Self, StoreError> {
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
        store.check_format(steps)?;
        Ok(store)
    }

    /// A typed view of a table.
    pub fn table<K: Key, V: Serialize + DeserializeOwned>(
        &self,
        name: TableName,
    ) -> Result<Table<K, V>, StoreError> {
        Ok(Table {
            base: TableTree {
                name,
                tree: self.db.open_tree(name.as_str())?,
            },
            _types: PhantomData,
        })
    }

    /// A raw-bytes view of a table.
    pub fn raw_table<K: Key>(&self, name: TableName) -> Result<RawTable<K>, StoreError> {
        Ok(RawTable {
            base: TableTree {
                name,
                tree: self.db.open_tree(name.as_str())?,
            },
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

    /// Applies the batch atomically and waits until it is on disk. Only
    /// after this returns may a write be acknowledged.
    pub async fn commit_durable(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.apply(batch)?;
        self.flush().await
    }

    /// Applies the batch atomically without waiting for disk; for state that
    /// can be rebuilt (caches, derived indexes).
    pub fn commit_volatile(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.apply(batch)
    }

    /// Flushes everything written so far and waits until it is on disk.
    ///
    /// This is sled's `flush_async` contract, but the blocking flush runs on
    /// tokio's blocking pool rather than on sled's IO pool: sled 0.34.7's own
    /// `flush_async` occupies an IO-pool thread that waits for log writes
    /// queued on that same pool, and a handful of concurrent flushes
    /// deadlock the process (sled issues 1241 and 1308 upstream, fixed after the
    /// last release). Test `concurrent_durable_commits_do_not_deadlock`.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| {
                StoreError::Io(sled::Error::ReportableBug(format!("flush task: {e}")))
            })??;
        Ok(())
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub(super) fn raw_db(&self) -> &sled::Db {
        &self.db
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    pub(super) struct Thing {
        pub(super) n: u64,
    }

    pub(super) fn opts() -> StoreOptions {
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

    /// Many durable commits at once, on several stores, with reads in
    /// between: sled 0.34.7's own `flush_async` runs the flush on sled's IO
    /// pool, whose threads then wait for log writes queued behind them on
    /// the same pool (sled issues 1241 and 1308 upstream). Every durable commit must still
    /// finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_durable_commits_do_not_deadlock() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<_> = dirs
            .iter()
            .map(|d| std::sync::Arc::new(Store::open(d.path(), &opts()).unwrap()))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..48u64 {
            let s = stores[(w % 3) as usize].clone();
            tasks.spawn(async move {
                let meta: Table<String, Thing> = s.table(TableName::Meta).unwrap();
                for n in 0..25u64 {
                    let mut b = WriteBatch::new();
                    b.put(&meta, &format!("{w}-{n}"), &Thing { n }).unwrap();
                    s.commit_durable(b).await.unwrap();
                    assert!(meta.get(&format!("{w}-{n}")).unwrap().is_some());
                }
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("durable commits deadlocked");
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

    #[test]
    fn keys_order_like_their_values() {
        assert!(1u64.encode() < 256u64.encode());
        let k = ("a".to_string(), "b".to_string());
        assert_eq!(<(String, String)>::decode(&k.encode()), Some(k));
        assert_eq!(<u64>::decode(&[1, 2]), None);
    }
}
