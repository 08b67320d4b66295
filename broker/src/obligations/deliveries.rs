//! Deliveries of obliged datasets as the receiving node saw them: one
//! record per attempt to take a company's batch for one UTC hour window,
//! accepted (imported whole) or rejected (with the reasons, the batch kept
//! for inspection elsewhere). Durable in the `obligation_deliveries`
//! table, keyed by organisation, dataset, window start and attempt time, so
//! a window's attempts read back in the order they were made.
//!
//! This is the one interface between whoever takes deliveries (the MDS
//! puller) and whoever judges compliance (the obligations): the puller
//! [`Deliveries::record`]s each attempt before it acknowledges anything,
//! the obligations read [`Deliveries::window`] and [`Deliveries::range`].
//! Each recorded attempt wakes whoever waits on [`Deliveries::recorded`]
//! (the compliance monitor); clones share it.

use crate::store::{Key, Store, StoreError, Table, TableName, WriteBatch};
use serde::{Deserialize, Serialize};

/// One UTC hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The batch was valid and imported whole.
    Accepted {
        /// Rows imported, per part (e.g. `trips`, `events`, `vehicles`).
        rows: Vec<(String, u64)>,
    },
    /// The batch was invalid and nothing of it was imported.
    Rejected {
        /// Why, one line each, at most a bounded number (the first ones).
        reasons: Vec<String>,
        /// Where the rejected batch is kept for inspection (an id the
        /// taker understands), if it was kept.
        kept_as: Option<String>,
    },
    /// Nothing could be taken: the company's endpoint failed or said the
    /// window is not ready. Recorded so that status can tell an
    /// unreachable company from a silent one.
    Unavailable {
        /// What the endpoint answered, shortened.
        reason: String,
    },
}

/// One attempt to take the batch of one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The obliged organisation.
    pub organisation: String,
    /// The dataset it delivers, as named in the obligation.
    pub dataset: String,
    /// Start of the UTC hour window (unix ms, a multiple of [`HOUR_MS`]).
    pub window_start_ms: i64,
    /// When the receiving node made the attempt (its clock, unix ms).
    pub at_ms: i64,
    pub outcome: Outcome,
}

/// Why a delivery could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The window does not start on a UTC hour.
    #[error("window start `{0}` is not on a UTC hour")]
    NotAnHour(i64),
    /// An organisation or dataset name holds a NUL byte.
    #[error("name `{0}` holds a NUL byte")]
    BadName(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Key: organisation, NUL, dataset, NUL, window start (8 bytes BE, offset
/// so negative times order too), attempt time (same).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeliveryKey {
    organisation: String,
    dataset: String,
    window_start_ms: i64,
    at_ms: i64,
}

fn ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

fn prefix(organisation: &str, dataset: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(organisation.len() + dataset.len() + 2);
    v.extend_from_slice(organisation.as_bytes());
    v.push(0);
    v.extend_from_slice(dataset.as_bytes());
    v.push(0);
    v
}

impl Key for DeliveryKey {
    fn encode(&self) -> Vec<u8> {
        let mut v = prefix(&self.organisation, &self.dataset);
        v.extend_from_slice(&ordered(self.window_start_ms));
        v.extend_from_slice(&ordered(self.at_ms));
        v
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let a = bytes.iter().position(|b| *b == 0)?;
        let rest = &bytes[a + 1..];
        let b = rest.iter().position(|b| *b == 0)?;
        let times = &rest[b + 1..];
        if times.len() != 16 {
            return None;
        }
        Some(Self {
            organisation: String::from_utf8(bytes[..a].to_vec()).ok()?,
            dataset: String::from_utf8(rest[..b].to_vec()).ok()?,
            window_start_ms: unordered(&times[..8])?,
            at_ms: unordered(&times[8..])?,
        })
    }
}

/// The node's record of deliveries.
#[derive(Debug, Clone)]
pub struct Deliveries {
    store: Store,
    table: Table<DeliveryKey, Delivery>,
    recorded: std::sync::Arc<tokio::sync::Notify>,
}

impl Deliveries {
    /// The deliveries in `store`.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let table = store.table(TableName::ObligationDeliveries)?;
        Ok(Self {
            store,
            table,
            recorded: std::sync::Arc::default(),
        })
    }

    /// Notified after each attempt recorded through this handle or its
    /// clones (and after [`Deliveries::notify_recorded`]).
    pub fn recorded(&self) -> &tokio::sync::Notify {
        &self.recorded
    }

    /// Tells the waiters that attempts were committed through
    /// [`Deliveries::stage`] and a batch of the taker's own.
    pub fn notify_recorded(&self) {
        self.recorded.notify_one();
    }

    fn key(d: &Delivery) -> Result<DeliveryKey, DeliveryError> {
        if d.window_start_ms.rem_euclid(HOUR_MS) != 0 {
            return Err(DeliveryError::NotAnHour(d.window_start_ms));
        }
        for name in [&d.organisation, &d.dataset] {
            if name.contains('\0') {
                return Err(DeliveryError::BadName(crate::text::shown(name, 64)));
            }
        }
        Ok(DeliveryKey {
            organisation: d.organisation.clone(),
            dataset: d.dataset.clone(),
            window_start_ms: d.window_start_ms,
            at_ms: d.at_ms,
        })
    }

    /// Adds `d` to `batch` (so a taker can commit it with the imported rows
    /// in one atomic write).
    pub fn stage(&self, batch: &mut WriteBatch, d: &Delivery) -> Result<(), DeliveryError> {
        let key = Self::key(d)?;
        batch.put(&self.table, &key, d)?;
        Ok(())
    }

    /// Records `d` on its own and returns once it is on disk.
    pub async fn record(&self, d: &Delivery) -> Result<(), DeliveryError> {
        let mut b = WriteBatch::new();
        self.stage(&mut b, d)?;
        self.store.commit_durable(b).await?;
        self.notify_recorded();
        Ok(())
    }

    /// Every attempt for one window, oldest first.
    pub fn window(
        &self,
        organisation: &str,
        dataset: &str,
        window_start_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.range(
            organisation,
            dataset,
            window_start_ms,
            window_start_ms.saturating_add(1),
        )
    }

    /// Every attempt for windows starting in `[from_ms, to_ms)`, by window,
    /// then attempt time.
    pub fn range(
        &self,
        organisation: &str,
        dataset: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let lo = DeliveryKey {
            organisation: organisation.to_owned(),
            dataset: dataset.to_owned(),
            window_start_ms: from_ms,
            at_ms: i64::MIN,
        };
        let hi = DeliveryKey {
            window_start_ms: to_ms,
            ..lo.clone()
        };
        Ok(self
            .table
            .range(&lo, &hi)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn delivery(org: &str, window: i64, at: i64, outcome: Outcome) -> Delivery {
        Delivery {
            organisation: org.into(),
            dataset: "scooter-trips".into(),
            window_start_ms: window,
            at_ms: at,
            outcome,
        }
    }

    #[tokio::test]
    async fn attempts_read_back_by_window_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let accepted = Outcome::Accepted {
            rows: vec![("trips".into(), 12)],
        };
        let rejected = Outcome::Rejected {
            reasons: vec!["trip `t1` ends before it starts".into()],
            kept_as: Some("b1".into()),
        };
        {
            let store = Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
            let d = Deliveries::open(store).unwrap();
            let w = 1_764_547_200_000; // 2025-12-01T00:00Z
            d.record(&delivery(
                "scooter-co",
                w + HOUR_MS,
                w + 2 * HOUR_MS,
                accepted.clone(),
            ))
            .await
            .unwrap();
            d.record(&delivery(
                "scooter-co",
                w,
                w + HOUR_MS + 5,
                accepted.clone(),
            ))
            .await
            .unwrap();
            d.record(&delivery(
                "scooter-co",
                w,
                w + HOUR_MS + 1,
                rejected.clone(),
            ))
            .await
            .unwrap();
            d.record(&delivery("other-co", w, w + HOUR_MS, rejected.clone()))
                .await
                .unwrap();
            // Not on an hour: refused, nothing written.
            assert!(matches!(
                d.record(&delivery("scooter-co", w + 1, w, accepted.clone()))
                    .await,
                Err(DeliveryError::NotAnHour(_))
            ));
        }
        let store = Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        let d = Deliveries::open(store).unwrap();
        let w = 1_764_547_200_000;
        let first = d.window("scooter-co", "scooter-trips", w).unwrap();
        assert_eq!(
            first.iter().map(|x| &x.outcome).collect::<Vec<_>>(),
            vec![&rejected, &accepted]
        );
        let all = d
            .range("scooter-co", "scooter-trips", w, w + 2 * HOUR_MS)
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].window_start_ms, w + HOUR_MS);
        assert_eq!(
            d.range("other-co", "scooter-trips", w, w + 1)
                .unwrap()
                .len(),
            1
        );
        // A name that is a prefix of another does not leak into its range.
        assert!(
            d.range("scooter", "co", i64::MIN, i64::MAX)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn keys_order_by_window_then_attempt_including_negative_times() {
        let k = |w: i64, a: i64| {
            DeliveryKey {
                organisation: "o".into(),
                dataset: "d".into(),
                window_start_ms: w,
                at_ms: a,
            }
            .encode()
        };
        assert!(k(-HOUR_MS, 5) < k(0, -5));
        assert!(k(0, -5) < k(0, 5));
        assert!(k(0, i64::MAX) < k(HOUR_MS, i64::MIN));
        let back = DeliveryKey::decode(&k(-HOUR_MS, 7)).unwrap();
        assert_eq!((back.window_start_ms, back.at_ms), (-HOUR_MS, 7));
    }
}
