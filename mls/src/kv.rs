//! The key-value store the MLS state lives in: a small trait a node's store
//! implements (reads, prefix scans, and one atomic batch per operation), and
//! an in-memory backend for tests and benchmarks.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

/// Key-value pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A store error, as the backend describes it.
#[derive(Debug, thiserror::Error)]
#[error("mls state store: {0}")]
pub struct KvError(pub String);

/// One write of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Sets `key` to the value.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key`.
    Delete(Vec<u8>),
}

/// The writes of one MLS operation, applied all or nothing by
/// [`Kv::commit`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<KvOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(KvOp::Put(key, value));
    }

    /// Adds a removal.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(KvOp::Delete(key));
    }

    /// The writes in order.
    pub fn ops(&self) -> &[KvOp] {
        &self.ops
    }

    /// Takes the writes.
    pub fn into_ops(self) -> Vec<KvOp> {
        self.ops
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The store behind an [`crate::MlsNode`]. Keys are opaque bytes; the node
/// owns the whole key space it is given (the broker gives it the
/// `mls_state` table).
///
/// `commit` must apply the batch atomically (all writes or none, also
/// across a crash) and return only once it is durable: the node hands a
/// commit or welcome to anyone only after its state change was committed.
pub trait Kv: Send + Sync {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, KvError>;

    /// Applies the batch atomically and durably.
    fn commit(&self, batch: Batch) -> impl Future<Output = Result<(), KvError>> + Send;
}

/// An in-memory [`Kv`]. Clones share the same map, so a test can drop a
/// node and reopen another one on the same state; [`MemoryKv::snapshot`]
/// copies the state (a node's "saved state").
#[derive(Debug, Default, Clone)]
pub struct MemoryKv {
    map: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent copy of the current state.
    pub fn snapshot(&self) -> Self {
        let map = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Self {
            map: Arc::new(Mutex::new(map)),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry (tests look for plaintext in the stored state).
    pub fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn apply(&self, batch: Batch) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        for op in batch.ops {
            match op {
                KvOp::Put(k, v) => {
                    map.insert(k, v);
                }
                KvOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
    }
}

impl Kv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, KvError> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, batch: Batch) -> impl Future<Output = Result<(), KvError>> + Send {
        // Applied under one lock when the future runs: all writes or none.
        let this = self.clone();
        async move {
            this.apply(batch);
            Ok(())
        }
    }
}
