//! The MDS batches a node took, in the `mds_batches` table: the imported trips (served as the
//! dataset, [`DatasetBatches`] is their [`UplinkBuffer`]), the other parts of each accepted
//! hour, a marker per accepted hour (so an hour is never imported twice, across restarts), and
//! each rejected batch kept for inspection (bounded).
//!
//! Keys start with a kind byte, then the dataset and a NUL:
//! - `r <dataset> 0x00 <seq, 8 bytes BE>` → a served trip row (values by column);
//!   `r <dataset> 0x01` ends the dataset's rows;
//! - `s <dataset>` → the last import sequence number handed out;
//! - `w <dataset> 0x00 <hour>` → [`Imported`], the marker of an accepted hour;
//! - `p <dataset> 0x00 <hour> <part>` → the part's records of an accepted hour (events,
//!   vehicles), JSON;
//! - `k <dataset> 0x00 <hour> <attempt time>` → [`Kept`], a rejected batch.
//!
//! Times are 8 bytes big-endian with the sign bit flipped, so they order. An accepted hour's
//! rows, marker, parts and delivery record are committed in one atomic durable batch
//! ([`DatasetBatches::stage_accepted`] then the taker's `Store::commit_durable`).

use std::sync::Arc;
use std::time::Duration;

use allmende_connectors::ConnectorError;
use allmende_connectors::mds::validate::Checked;
use allmende_connectors::mqtt::{Appended, NewUplink, StoredUplink, UplinkBuffer};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{RawTable, Store, StoreError, TableName, WriteBatch};

/// Bytes of a rejected batch kept at most (the rest is cut, and the cut noted).
pub const MAX_KEPT_BYTES: usize = 4 << 20;
/// Entries removed per durable batch of a purge.
const PURGE_CHUNK: usize = 4096;

/// The marker of an accepted hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// When it was imported (node clock, unix ms).
    pub at_ms: i64,
    /// The import sequence numbers of its trips, `first..=last` (none if `first > last`).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Records per part.
    pub rows: Vec<(String, u64)>,
}

/// A rejected batch kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The id the delivery record names it by: `<dataset>@<hour>#<attempt ms>`.
    pub id: String,
    /// Start of the hour (unix ms).
    pub hour_ms: i64,
    /// When the attempt was made (node clock, unix ms).
    pub at_ms: i64,
    /// Why it was rejected.
    pub reasons: Vec<String>,
    /// The answers as received, by part (JSON text), cut at [`MAX_KEPT_BYTES`] in all.
    pub answers: Vec<(String, String)>,
    /// Whether the answers were cut.
    pub truncated: bool,
}

fn ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table: TableName::MdsBatches.as_str(),
        reason: e.to_string(),
    }
}

/// The batches of one node.
#[derive(Debug, Clone)]
pub struct MdsBatches {
    store: Store,
    table: RawTable<Vec<u8>>,
}

impl MdsBatches {
    /// The batches in `store`.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.raw_table(TableName::MdsBatches)?,
            store,
        })
    }

    /// The batches of `dataset`.
    pub fn dataset(&self, dataset: &str) -> DatasetBatches {
        DatasetBatches {
            inner: Arc::new(self.clone()),
            dataset: dataset.to_owned(),
        }
    }

    /// The rejected batch kept under `id` (`<dataset>@<hour>#<attempt ms>`,
    /// as a delivery record names it) for the hour starting at `hour_ms`.
    pub fn kept(&self, id: &str, hour_ms: i64) -> Result<Option<Kept>, StoreError> {
        let Some((dataset, _)) = id.rsplit_once('#').and_then(|(r, _)| r.rsplit_once('@')) else {
            return Ok(None);
        };
        Ok(self
            .dataset(dataset)
            .rejected(hour_ms, hour_ms.saturating_add(1))?
            .into_iter()
            .find(|k| k.id == id))
    }

    /// The store the batches live in (the taker commits through it).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The batches of one dataset.
#[derive(Debug, Clone)]
pub struct DatasetBatches {
    inner: Arc<MdsBatches>,
    dataset: String,
}

impl DatasetBatches {
    fn key(&self, kind: u8, sep: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.dataset.len() + 20);
        k.push(kind);
        k.extend_from_slice(self.dataset.as_bytes());
        k.push(sep);
        k
    }

    fn row_key(&self, seq: u64) -> Vec<u8> {
        let mut k = self.key(b'r', 0);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn seq_key(&self) -> Vec<u8> {
        let mut k = vec![b's'];
        k.extend_from_slice(self.dataset.as_bytes());
        k
    }

    fn hour_key(&self, kind: u8, hour_ms: i64) -> Vec<u8> {
        let mut k = self.key(kind, 0);
        k.extend_from_slice(&ordered(hour_ms));
        k
    }

    /// The last import sequence number handed out.
    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .table
            .get(&self.seq_key())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// The marker of `hour_ms`, if that hour was accepted.
    pub fn imported(&self, hour_ms: i64) -> Result<Option<Imported>, StoreError> {
        self.inner
            .table
            .get(&self.hour_key(b'w', hour_ms))?
            .map(|v| serde_json::from_slice(&v).map_err(corrupt))
            .transpose()
    }

    /// Adds an accepted hour to `batch`: its trips as served rows (`rows`, one per trip, in
    /// order), the other parts, and the marker. Returns the marker. The caller holds the
    /// taker's lock, so sequence numbers are handed out once.
    pub fn stage_accepted(
        &self,
        batch: &mut WriteBatch,
        hour_ms: i64,
        at_ms: i64,
        checked: &Checked,
        rows: Vec<serde_json::Map<String, Value>>,
        counts: Vec<(String, u64)>,
    ) -> Result<Imported, StoreError> {
        let t = &self.inner.table;
        let first = self.last_seq()? + 1;
        let mut seq = first - 1;
        for row in rows {
            seq += 1;
            batch.put_raw(
                t,
                &self.row_key(seq),
                serde_json::to_vec(&row).map_err(corrupt)?,
            );
        }
        batch.put_raw(t, &self.seq_key(), seq.to_be_bytes().to_vec());
        for (part, records) in [("events", &checked.events), ("vehicles", &checked.vehicles)] {
            if records.is_empty() {
                continue;
            }
            let mut k = self.hour_key(b'p', hour_ms);
            k.extend_from_slice(part.as_bytes());
            batch.put_raw(t, &k, serde_json::to_vec(records).map_err(corrupt)?);
        }
        let marker = Imported {
            at_ms,
            first_seq: first,
            last_seq: seq,
            rows: counts,
        };
        batch.put_raw(
            t,
            &self.hour_key(b'w', hour_ms),
            serde_json::to_vec(&marker).map_err(corrupt)?,
        );
        Ok(marker)
    }

    /// The id a rejected batch of `hour_ms` attempted at `at_ms` is kept under.
    pub fn kept_id(&self, hour_label: &str, at_ms: i64) -> String {
        format!("{}@{hour_label}#{at_ms}", self.dataset)
    }

    /// Adds a rejected batch to `batch`, its answers cut at [`MAX_KEPT_BYTES`] in all.
    pub fn stage_rejected(
        &self,
        batch: &mut WriteBatch,
        id: String,
        hour_ms: i64,
        at_ms: i64,
        reasons: Vec<String>,
        answers: &[(String, Value)],
    ) -> Result<(), StoreError> {
        let mut left = MAX_KEPT_BYTES;
        let mut truncated = false;
        let mut kept = Vec::new();
        for (part, answer) in answers {
            let mut text = answer.to_string();
            if text.len() > left {
                let mut cut = left;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                truncated = true;
            }
            left -= text.len();
            kept.push((part.clone(), text));
        }
        let k = Kept {
            id,
            hour_ms,
            at_ms,
            reasons,
            answers: kept,
            truncated,
        };
        let mut key = self.hour_key(b'k', hour_ms);
        key.extend_from_slice(&ordered(at_ms));
        batch.put_raw(
            &self.inner.table,
            &key,
            serde_json::to_vec(&k).map_err(corrupt)?,
        );
        Ok(())
    }

    /// The rejected batches kept for hours starting in `[from_ms, to_ms)`, oldest first.
    pub fn rejected(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Kept>, StoreError> {
        self.inner
            .table
            .range(&self.hour_key(b'k', from_ms), &self.hour_key(b'k', to_ms))?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(corrupt))
            .collect()
    }

    /// The hours accepted in `[from_ms, to_ms)`, with their markers.
    pub fn accepted(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Imported)>, StoreError> {
        let prefix = self.key(b'w', 0).len();
        self.inner
            .table
            .range(&self.hour_key(b'w', from_ms), &self.hour_key(b'w', to_ms))?
            .into_iter()
            .map(|(k, v)| {
                let hour = k
                    .get(prefix..)
                    .and_then(unordered)
                    .ok_or_else(|| corrupt("undecodable hour key"))?;
                Ok((hour, serde_json::from_slice(&v).map_err(corrupt)?))
            })
            .collect()
    }

    /// Removes everything of the dataset (its registration was removed).
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let t = &self.inner.table;
        let mut removed = 0u64;
        for kind in [b'r', b'w', b'p', b'k'] {
            loop {
                let chunk = t.range_limit(&self.key(kind, 0), &self.key(kind, 1), PURGE_CHUNK)?;
                if chunk.is_empty() {
                    break;
                }
                let mut b = WriteBatch::new();
                for (k, _) in &chunk {
                    b.remove_raw(t, k);
                }
                removed += chunk.len() as u64;
                self.inner.store.commit_durable(b).await?;
            }
        }
        Ok(removed)
    }

    fn err(&self, e: StoreError) -> ConnectorError {
        ConnectorError::Source {
            file: self.dataset.clone(),
            reason: format!("mds batches: {e}"),
        }
    }
}

impl UplinkBuffer for DatasetBatches {
    fn append<'a>(
        &'a self,
        _uplinks: &'a [NewUplink],
    ) -> BoxFuture<'a, Result<Appended, ConnectorError>> {
        Box::pin(async move {
            Err(ConnectorError::Internal(
                "imported mds trips are written only by the node's puller".into(),
            ))
        })
    }

    fn scan(&self, after: u64, limit: usize) -> Result<Vec<StoredUplink>, ConnectorError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix = self.key(b'r', 0).len();
        let entries = self
            .inner
            .table
            .range_limit(&self.row_key(from), &self.key(b'r', 1), limit)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let seq = key
                .get(prefix..)
                .and_then(|t| <[u8; 8]>::try_from(t).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| self.err(corrupt("undecodable row key")))?;
            let values = serde_json::from_slice(&value).map_err(|e| self.err(corrupt(e)))?;
            out.push(StoredUplink {
                seq,
                received_ms: 0,
                values,
            });
        }
        Ok(out)
    }

    fn sweep(&self, _retention: Duration) -> BoxFuture<'_, Result<u64, ConnectorError>> {
        // Obliged deliveries are kept; no retention window applies.
        Box::pin(async { Ok(0) })
    }

    fn buffered(&self) -> Result<u64, ConnectorError> {
        self.inner
            .table
            .count_range(&self.row_key(0), &self.key(b'r', 1))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn accepted_hours_number_rows_once_and_rejected_ones_are_kept_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        let b = MdsBatches::open(store.clone()).unwrap();
        let d = b.dataset("scooter-trips");
        let other = b.dataset("scooter-trips-2");
        let row = |i: u64| {
            let mut m = serde_json::Map::new();
            m.insert("trip_id".into(), json!(format!("t{i}")));
            m
        };
        let h = 1_764_547_200_000;
        let mut w = WriteBatch::new();
        let checked = Checked::default();
        let m = d
            .stage_accepted(&mut w, h, h + 1, &checked, vec![row(1), row(2)], vec![])
            .unwrap();
        store.commit_durable(w).await.unwrap();
        assert_eq!((m.first_seq, m.last_seq), (1, 2));
        let mut w = WriteBatch::new();
        let m = d
            .stage_accepted(&mut w, h + 3_600_000, h + 2, &checked, vec![row(3)], vec![])
            .unwrap();
        store.commit_durable(w).await.unwrap();
        assert_eq!((m.first_seq, m.last_seq), (3, 3));
        assert_eq!(d.imported(h).unwrap().unwrap().last_seq, 2);
        assert!(d.imported(h + 7_200_000).unwrap().is_none());
        assert_eq!(d.accepted(h, h + 7_200_000).unwrap().len(), 2);
        let rows = d.scan(1, 10).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(d.buffered().unwrap(), 3);
        assert_eq!(other.buffered().unwrap(), 0);

        let mut w = WriteBatch::new();
        let big = json!({"trips": "x".repeat(MAX_KEPT_BYTES)});
        d.stage_rejected(
            &mut w,
            d.kept_id("2025-12-01T02", 9),
            h + 7_200_000,
            9,
            vec!["trip 0: `end_time` precedes `start_time`".into()],
            &[("trips".into(), big)],
        )
        .unwrap();
        store.commit_durable(w).await.unwrap();
        let kept = d.rejected(h, h + 3 * 3_600_000).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].truncated);
        assert_eq!(kept[0].answers[0].1.len(), MAX_KEPT_BYTES);
        assert_eq!(kept[0].id, "scooter-trips@2025-12-01T02#9");
        // Found by the id its delivery record names, in its hour only.
        let batches = MdsBatches::open(store.clone()).unwrap();
        let found = batches.kept(&kept[0].id, h + 7_200_000).unwrap();
        assert_eq!(found.as_ref(), Some(&kept[0]));
        assert!(batches.kept(&kept[0].id, h).unwrap().is_none());
        assert!(
            batches
                .kept("scooter-trips@2025-12-01T02#8", h + 7_200_000)
                .unwrap()
                .is_none()
        );
        assert!(batches.kept("no id", h + 7_200_000).unwrap().is_none());

        assert!(d.purge().await.unwrap() >= 4);
        assert_eq!(d.buffered().unwrap(), 0);
        assert!(d.imported(h).unwrap().is_none());
    }
}
