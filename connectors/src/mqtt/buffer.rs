//! The uplink buffer an MQTT source writes into and its connector reads from, and a volatile
//! implementation for tests ([`MemoryBuffer`]). The node's implementation keeps it in its store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::uplink::NewUplink;
use crate::error::ConnectorError;

/// A buffered uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUplink {
    /// Receive sequence number (1, 2, …; never reused).
    pub seq: u64,
    /// When the node received it (milliseconds since the epoch, the node's clock).
    pub received_ms: i64,
    /// Values by column.
    pub values: Map<String, Value>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Uplinks stored.
    pub stored: u64,
    /// Uplinks left out because their deduplication key was already buffered (or appeared
    /// earlier in the same append).
    pub duplicates: u64,
}

/// Where one dataset's uplinks are kept, in receive order, deduplicated.
pub trait UplinkBuffer: Send + Sync + fmt::Debug {
    /// Stores the uplinks not seen before, numbered in order, and returns once they are durable
    /// (the caller acknowledges the messages only then).
    fn append<'a>(
        &'a self,
        uplinks: &'a [NewUplink],
    ) -> BoxFuture<'a, Result<Appended, ConnectorError>>;

    /// At most `limit` uplinks with sequence numbers above `after`, in order. May block.
    fn scan(&self, after: u64, limit: usize) -> Result<Vec<StoredUplink>, ConnectorError>;

    /// Removes the uplinks received longer than `retention` ago (and their deduplication
    /// keys); returns how many.
    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ConnectorError>>;

    /// Uplinks buffered.
    fn buffered(&self) -> Result<u64, ConnectorError>;
}

#[derive(Debug, Default)]
struct Memory {
    rows: BTreeMap<u64, (StoredUplink, [u8; 32])>,
    seen: HashMap<[u8; 32], u64>,
    next: u64,
}

/// A volatile buffer (tests, benchmarks of the client alone); times from the system clock.
#[derive(Debug, Default)]
pub struct MemoryBuffer {
    inner: Mutex<Memory>,
}

impl MemoryBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Memory>, ConnectorError> {
        self.inner
            .lock()
            .map_err(|_| ConnectorError::Internal("the memory buffer's lock is poisoned".into()))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl UplinkBuffer for MemoryBuffer {
    fn append<'a>(
        &'a self,
        uplinks: &'a [NewUplink],
    ) -> BoxFuture<'a, Result<Appended, ConnectorError>> {
        Box::pin(async move {
            let mut m = self.lock()?;
            let mut out = Appended::default();
            let mut batch = HashSet::new();
            let now = now_ms();
            for u in uplinks {
                if m.seen.contains_key(&u.dedupe) || !batch.insert(u.dedupe) {
                    out.duplicates += 1;
                    continue;
                }
                m.next += 1;
                let seq = m.next;
                m.seen.insert(u.dedupe, seq);
                let row = StoredUplink {
                    seq,
                    received_ms: now,
                    values: u.values.clone(),
                };
                m.rows.insert(seq, (row, u.dedupe));
                out.stored += 1;
            }
            Ok(out)
        })
    }

    fn scan(&self, after: u64, limit: usize) -> Result<Vec<StoredUplink>, ConnectorError> {
        let m = self.lock()?;
        Ok(m.rows
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, (r, _))| r.clone())
            .collect())
    }

    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ConnectorError>> {
        Box::pin(async move {
            let cutoff =
                now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let mut m = self.lock()?;
            let old: Vec<(u64, [u8; 32])> = m
                .rows
                .iter()
                .take_while(|(_, (r, _))| r.received_ms < cutoff)
                .map(|(seq, (_, key))| (*seq, *key))
                .collect();
            for (seq, key) in &old {
                m.rows.remove(seq);
                m.seen.remove(key);
            }
            Ok(old.len() as u64)
        })
    }

    fn buffered(&self) -> Result<u64, ConnectorError> {
        Ok(self.lock()?.rows.len() as u64)
    }
}
