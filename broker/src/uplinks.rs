//! The node's buffer of MQTT uplinks: the [`UplinkBuffer`] of every MQTT source, kept in the
//! store so that an uplink acknowledged to the MQTT broker survives a node restart.
//!
//! Two trees. `mqtt_uplinks` holds the rows, keyed `<dataset> 0x00 <seq as 8 bytes big-endian>`,
//! so one dataset's rows are contiguous and ordered by receive sequence; the value holds the
//! node's receive time (for retention), the deduplication key, and the values by column.
//! `mqtt_seen` holds `<dataset> 0x00 <deduplication key>` → seq for every buffered row, and
//! `<dataset> 0x01` → the last sequence number handed out (kept when rows are swept, so a
//! sequence number, and with it a resume cursor, never points at two rows). A row, its key and
//! the counter are written in one atomic batch and flushed before the append returns
//! (`Store::commit_durable`): only then are the messages acknowledged.
//!
//! Appends of all datasets are serialised by one lock (the subscriber's group commit makes them
//! few); the retention sweep removes a dataset's oldest rows with their keys.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use allmende_connectors::ConnectorError;
use allmende_connectors::mqtt::{Appended, IngestObserver, NewUplink, StoredUplink, UplinkBuffer};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::metrics::{NodeMetrics, UplinkLabels};
use crate::store::{RawTable, Store, StoreError, TableName, WriteBatch};

/// Rows removed per durable batch of a sweep or purge.
const SWEEP_CHUNK: usize = 4096;

/// A buffered row as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    /// Receive time, ms since the epoch (node clock).
    t: i64,
    /// Deduplication key, hex.
    k: String,
    /// Values by column.
    v: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    rows: RawTable<Vec<u8>>,
    seen: RawTable<Vec<u8>>,
    clock: SharedClock,
    write: tokio::sync::Mutex<()>,
}

/// The uplink buffers of one node.
#[derive(Debug, Clone)]
pub struct Uplinks {
    shared: Arc<Shared>,
}

/// The uplink buffer of one dataset.
#[derive(Debug, Clone)]
pub struct DatasetUplinks {
    shared: Arc<Shared>,
    dataset: String,
}

fn store_error(dataset: &str, e: StoreError) -> ConnectorError {
    ConnectorError::Source {
        file: dataset.to_owned(),
        reason: format!("uplink buffer: {e}"),
    }
}

impl Uplinks {
    /// The buffers in `store`, timed by `clock`.
    pub fn open(store: Store, clock: SharedClock) -> Result<Self, StoreError> {
        Ok(Self {
            shared: Arc::new(Shared {
                rows: store.raw_table(TableName::MqttUplinks)?,
                seen: store.raw_table(TableName::MqttSeen)?,
                store,
                clock,
                write: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The buffer of `dataset`.
    pub fn dataset(&self, dataset: &str) -> DatasetUplinks {
        DatasetUplinks {
            shared: self.shared.clone(),
            dataset: dataset.to_owned(),
        }
    }
}

impl DatasetUplinks {
    fn prefix(&self) -> Vec<u8> {
        let mut k = self.dataset.as_bytes().to_vec();
        k.push(0);
        k
    }

    fn row_key(&self, seq: u64) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// The first key after this dataset's rows.
    fn end_key(&self) -> Vec<u8> {
        let mut k = self.dataset.as_bytes().to_vec();
        k.push(1);
        k
    }

    fn seen_key(&self, dedupe: &[u8; 32]) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(dedupe);
        k
    }

    /// The last sequence number handed out.
    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .shared
            .seen
            .get(&self.end_key())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn seq_of(&self, key: &[u8]) -> Option<u64> {
        let tail = key.get(self.prefix().len()..)?;
        Some(u64::from_be_bytes(<[u8; 8]>::try_from(tail).ok()?))
    }

    /// Removes rows (and their keys) while `remove` says so, oldest first, in durable chunks.
    async fn remove_while(&self, remove: impl Fn(&Row) -> bool) -> Result<u64, StoreError> {
        let s = &self.shared;
        let mut removed = 0u64;
        loop {
            let chunk = s
                .rows
                .range_limit(&self.row_key(0), &self.end_key(), SWEEP_CHUNK)?;
            let mut b = WriteBatch::new();
            let mut done = chunk.len() < SWEEP_CHUNK;
            for (key, value) in &chunk {
                let row: Row = serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
                    table: TableName::MqttUplinks.as_str(),
                    reason: e.to_string(),
                })?;
                if !remove(&row) {
                    done = true;
                    break;
                }
                b.remove_raw(&s.rows, key);
                if let Some(dedupe) = hex::decode(&row.k)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                {
                    b.remove_raw(&s.seen, &self.seen_key(&dedupe));
                }
                removed += 1;
            }
            if !b.is_empty() {
                s.store.commit_durable(b).await?;
            }
            if done {
                return Ok(removed);
            }
        }
    }

    /// Removes every buffered row of the dataset (its registration was removed).
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let _w = self.shared.write.lock().await;
        self.remove_while(|_| true).await
    }
}

impl UplinkBuffer for DatasetUplinks {
    fn append<'a>(
        &'a self,
        uplinks: &'a [NewUplink],
    ) -> BoxFuture<'a, Result<Appended, ConnectorError>> {
        Box::pin(async move {
            let s = &self.shared;
            let _w = s.write.lock().await;
            let err = |e| store_error(&self.dataset, e);
            let mut next = self.last_seq().map_err(err)?;
            let now = s.clock.now_unix_ms();
            let mut out = Appended::default();
            let mut batch_keys = HashSet::new();
            let mut b = WriteBatch::new();
            for u in uplinks {
                let seen = self.seen_key(&u.dedupe);
                if !batch_keys.insert(u.dedupe) || s.seen.get(&seen).map_err(err)?.is_some() {
                    out.duplicates += 1;
                    continue;
                }
                next += 1;
                let row = Row {
                    t: now,
                    k: hex::encode(u.dedupe),
                    v: u.values.clone(),
                };
                let value = serde_json::to_vec(&row).map_err(|e| {
                    ConnectorError::Internal(format!("cannot encode an uplink: {e}"))
                })?;
                b.put_raw(&s.rows, &self.row_key(next), value);
                b.put_raw(&s.seen, &seen, next.to_be_bytes().to_vec());
                out.stored += 1;
            }
            if out.stored > 0 {
                b.put_raw(&s.seen, &self.end_key(), next.to_be_bytes().to_vec());
                s.store.commit_durable(b).await.map_err(err)?;
            }
            Ok(out)
        })
    }

    fn scan(&self, after: u64, limit: usize) -> Result<Vec<StoredUplink>, ConnectorError> {
        let err = |e| store_error(&self.dataset, e);
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let entries = self
            .shared
            .rows
            .range_limit(&self.row_key(from), &self.end_key(), limit)
            .map_err(err)?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let seq = self.seq_of(&key).ok_or_else(|| {
                err(StoreError::Corrupt {
                    table: TableName::MqttUplinks.as_str(),
                    reason: "undecodable key".into(),
                })
            })?;
            let row: Row = serde_json::from_slice(&value).map_err(|e| {
                err(StoreError::Corrupt {
                    table: TableName::MqttUplinks.as_str(),
                    reason: e.to_string(),
                })
            })?;
            out.push(StoredUplink {
                seq,
                received_ms: row.t,
                values: row.v,
            });
        }
        Ok(out)
    }

    fn sweep(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ConnectorError>> {
        Box::pin(async move {
            let window = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let cutoff = self.shared.clock.now_unix_ms().saturating_sub(window);
            self.remove_while(|row| row.t < cutoff)
                .await
                .map_err(|e| store_error(&self.dataset, e))
        })
    }

    fn buffered(&self) -> Result<u64, ConnectorError> {
        self.shared
            .rows
            .count_range(&self.row_key(0), &self.end_key())
            .map_err(|e| store_error(&self.dataset, e))
    }
}

/// Counts a dataset's MQTT messages in the node's metrics.
#[derive(Debug)]
pub struct UplinkMetrics {
    metrics: Arc<NodeMetrics>,
    dataset: String,
}

impl UplinkMetrics {
    /// The counters of `dataset`.
    pub fn new(metrics: Arc<NodeMetrics>, dataset: &str) -> Self {
        Self {
            metrics,
            dataset: dataset.to_owned(),
        }
    }
}

impl IngestObserver for UplinkMetrics {
    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.metrics
                .mqtt_uplinks
                .get_or_create(&UplinkLabels {
                    dataset: self.dataset.clone(),
                    outcome: outcome.to_owned(),
                })
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreOptions;
    use allmende_connectors::mqtt::{MqttBufferConnector, MqttConfig, UplinkMapping};
    use allmende_connectors::{Connector, FieldSpec, FieldType, ReadRequest, SourceRoots};

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::required("seq", FieldType::Int64),
            FieldSpec::required("device_id", FieldType::String),
            FieldSpec::required("received_at", FieldType::Timestamp),
            FieldSpec::required("f_cnt", FieldType::Int64),
            FieldSpec::new("temperature", FieldType::Float64),
        ]
    }

    fn uplink(device: u32, f_cnt: u64) -> NewUplink {
        let json = serde_json::json!({
            "end_device_ids": {"device_id": format!("air-{device}"), "dev_eui": "70B3D57ED0050001"},
            "received_at": format!("2025-05-01T10:00:{:02}Z", f_cnt % 60),
            "uplink_message": {"f_cnt": f_cnt, "decoded_payload": {"temperature": 20.5}}
        });
        UplinkMapping::new(&fields(), "seq", &Default::default())
            .unwrap()
            .parse(json.to_string().as_bytes())
            .unwrap()
    }

    fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> (Store, Uplinks) {
        let store = Store::open(&dir.join("store"), &StoreOptions::default()).unwrap();
        let uplinks = Uplinks::open(store.clone(), clock).unwrap();
        (store, uplinks)
    }

    /// A fresh store in a temporary directory, its clock and buffers.
    fn fresh() -> (tempfile::TempDir, Arc<ManualClock>, Store, Uplinks) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(1_746_093_600_000);
        let (store, uplinks) = open(dir.path(), clock.clone());
        (dir, clock, store, uplinks)
    }

    fn seqs(b: &DatasetUplinks) -> Vec<u64> {
        b.scan(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    #[tokio::test]
    async fn uplinks_are_deduplicated_ordered_and_kept_across_a_reopen() {
        let (dir, clock, store, uplinks) = fresh();
        let air = uplinks.dataset("air");
        let other = uplinks.dataset("air-2");
        let batch: Vec<NewUplink> = (1..=5).map(|i| uplink(1, i)).collect();
        assert_eq!(
            air.append(&batch).await.unwrap(),
            Appended {
                stored: 5,
                duplicates: 0
            }
        );
        // Redelivered (and doubled within one group): stored once.
        let again = vec![uplink(1, 5), uplink(1, 6), uplink(1, 6)];
        assert_eq!(
            air.append(&again).await.unwrap(),
            Appended {
                stored: 1,
                duplicates: 2
            }
        );
        // Another dataset has its own sequence and keys.
        assert_eq!(other.append(&[uplink(1, 1)]).await.unwrap().stored, 1);
        assert_eq!(seqs(&air), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(&other), vec![1]);
        assert_eq!(air.scan(4, 10).unwrap().len(), 2);
        assert_eq!(air.scan(u64::MAX, 10).unwrap().len(), 0);
        assert_eq!(air.buffered().unwrap(), 6);
        drop((air, other, uplinks));
        drop(store);

        // The node restarts: the buffer and the keys are still there.
        let (_store, uplinks) = open(dir.path(), clock);
        let air = uplinks.dataset("air");
        assert_eq!(seqs(&air), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(air.append(&[uplink(1, 3)]).await.unwrap().duplicates, 1);
        assert_eq!(air.append(&[uplink(1, 7)]).await.unwrap().stored, 1);
        assert_eq!(seqs(&air).last(), Some(&7));
    }

    #[tokio::test]
    async fn the_sweep_removes_what_is_past_retention_and_never_reuses_a_sequence() {
        let (_dir, clock, _store, uplinks) = fresh();
        let air = uplinks.dataset("air");
        air.append(&[uplink(1, 1), uplink(1, 2)]).await.unwrap();
        clock.advance(Duration::from_secs(3600));
        air.append(&[uplink(1, 3)]).await.unwrap();
        clock.advance(Duration::from_secs(1800));
        // Retention 1 h: the first two are 90 minutes old, the third 30 minutes.
        assert_eq!(air.sweep(Duration::from_secs(3600)).await.unwrap(), 2);
        assert_eq!(seqs(&air), vec![3]);
        assert_eq!(air.sweep(Duration::from_secs(3600)).await.unwrap(), 0);
        // The swept uplinks' keys went with them; their sequence numbers are not handed out again.
        assert_eq!(air.append(&[uplink(1, 1)]).await.unwrap().stored, 1);
        assert_eq!(seqs(&air), vec![3, 4]);
        clock.advance(Duration::from_secs(7200));
        assert_eq!(air.sweep(Duration::from_secs(3600)).await.unwrap(), 2);
        assert!(seqs(&air).is_empty());
        assert_eq!(air.append(&[uplink(1, 9)]).await.unwrap().stored, 1);
        assert_eq!(seqs(&air), vec![5]);
        // Purge (registration removed) empties the buffer.
        assert_eq!(air.purge().await.unwrap(), 1);
        assert_eq!(air.buffered().unwrap(), 0);
    }

    #[tokio::test]
    async fn the_store_buffer_passes_the_conformance_suite() {
        let (_dir, _clock, _store, uplinks) = fresh();
        let air = uplinks.dataset("air");
        let batch: Vec<NewUplink> = (1..=40)
            .map(|i| uplink(u32::try_from(i % 3).unwrap(), i))
            .collect();
        air.append(&batch).await.unwrap();
        let mut config = MqttConfig::new("mqtt://127.0.0.1", "v3/air@munich/devices/+/up", "n");
        config.schema = Some(fields());
        config.identifier_columns = vec!["device_id".into()];
        let c = MqttBufferConnector::open(&config, &SourceRoots::anywhere(), Arc::new(air), "air")
            .unwrap();
        let report = allmende_connectors::conformance::run_all(
            &c,
            &allmende_connectors::conformance::Expectations {
                rows: Some(40),
                broken: Some(0),
            },
        )
        .await
        .unwrap();
        assert_eq!(report.rows, 40);
        let read = c
            .read(ReadRequest::new())
            .await
            .unwrap()
            .collect_all()
            .await
            .unwrap();
        assert_eq!(read.num_rows(), 40);
    }
}
