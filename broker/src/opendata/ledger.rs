//! The ε budget ledger: how much differential-privacy budget each dataset
//! has spent in the current period window (a UTC calendar day, month or
//! year from the node clock), stored durably in the `opendata_budget` table
//! keyed by dataset and window. ε is kept as fixed-point integers in
//! millionths ([`MICRO`]): a release's cost is rounded up, a budget down, and
//! sums are exact integer additions, never accumulated floats.
//!
//! [`Ledger::debit`] checks and debits under one lock and returns only once
//! the debit is on disk; the publisher debits before it draws any noise or
//! writes any file, so a crash after the debit loses budget and never grants
//! more.

use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_opendata::BudgetPeriod;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Fixed-point scale: 1 ε is `MICRO` units.
pub const MICRO: u64 = 1_000_000;

/// Largest ε the ledger accepts for a budget or a cost (keeps sums far from
/// overflow).
const MAX_EPSILON: f64 = 1_000_000.0;

/// What the ledger stores per dataset and window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// ε spent, in millionths.
    pub spent_micro: u64,
    /// Releases debited.
    pub releases: u64,
}

/// A dataset's budget in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub dataset: String,
    /// The window, e.g. `2026-11` for a month.
    pub window: String,
    pub budget_micro: u64,
    pub spent_micro: u64,
    pub releases: u64,
}

impl Balance {
    /// ε still available in the window, in millionths.
    pub fn remaining_micro(&self) -> u64 {
        self.budget_micro.saturating_sub(self.spent_micro)
    }
}

/// Why a debit was not made.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The release would spend more than the window has left.
    #[error(
        "the ε budget of `{}` is spent for {}: {} of {} used, a release costs {}",
        .balance.dataset, .balance.window, epsilon(.balance.spent_micro),
        epsilon(.balance.budget_micro), epsilon(*.cost_micro)
    )]
    Exhausted { balance: Balance, cost_micro: u64 },
    /// The store could not be read or written; nothing was debited.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `micro` as a decimal ε, e.g. `1.5` (six decimals at most, no trailing zeros).
pub fn epsilon(micro: u64) -> String {
    let whole = micro / MICRO;
    let frac = micro % MICRO;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A release's cost in millionths, rounded up; `None` for a value that is
/// not a finite positive ε up to a million.
pub fn cost_micro(eps: f64) -> Option<u64> {
    checked(eps).map(|e| (e * MICRO as f64).ceil() as u64)
}

/// A budget in millionths, rounded down; `None` as for [`cost_micro`].
pub fn budget_micro(eps: f64) -> Option<u64> {
    checked(eps).map(|e| (e * MICRO as f64).floor() as u64)
}

fn checked(eps: f64) -> Option<f64> {
    (eps.is_finite() && eps > 0.0 && eps <= MAX_EPSILON).then_some(eps)
}

/// The UTC window of `period` containing `unix_ms`: `2026-11-30` (day),
/// `2026-11` (month), `2026` (year).
pub fn window(period: BudgetPeriod, unix_ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (y, m, d) = (t.year(), u8::from(t.month()), t.day());
    match period {
        BudgetPeriod::Day => format!("{y:04}-{m:02}-{d:02}"),
        BudgetPeriod::Month => format!("{y:04}-{m:02}"),
        BudgetPeriod::Year => format!("{y:04}"),
    }
}

/// The name of a period in messages and on the wire.
pub fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
        BudgetPeriod::Year => "year",
    }
}

/// The node's ε ledger.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    table: Table<(String, String), Spent>,
    /// Serialises check-and-debit, so two releases cannot both pass the
    /// check on the same remaining budget.
    write: tokio::sync::Mutex<()>,
}

impl Ledger {
    /// The ledger in `store`.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let table = store.table(TableName::OpendataBudget)?;
        Ok(Self {
            store,
            table,
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The balance of `dataset` in `window` under a budget of `budget_micro`.
    pub fn balance(
        &self,
        dataset: &str,
        window: &str,
        budget_micro: u64,
    ) -> Result<Balance, StoreError> {
        let spent = self
            .table
            .get(&(dataset.to_owned(), window.to_owned()))?
            .unwrap_or_default();
        Ok(Balance {
            dataset: dataset.to_owned(),
            window: window.to_owned(),
            budget_micro,
            spent_micro: spent.spent_micro,
            releases: spent.releases,
        })
    }

    /// Debits `cost_micro` from `dataset`'s budget in `window` if it fits,
    /// and returns the balance after the debit once it is durable.
    pub async fn debit(
        &self,
        dataset: &str,
        window: &str,
        budget_micro: u64,
        cost_micro: u64,
    ) -> Result<Balance, LedgerError> {
        let _w = self.write.lock().await;
        let mut balance = self.balance(dataset, window, budget_micro)?;
        let after = balance.spent_micro.checked_add(cost_micro);
        match after {
            Some(after) if after <= budget_micro => {
                let spent = Spent {
                    spent_micro: after,
                    releases: balance.releases.saturating_add(1),
                };
                let mut b = WriteBatch::new();
                b.put(
                    &self.table,
                    &(dataset.to_owned(), window.to_owned()),
                    &spent,
                )?;
                self.store.commit_durable(b).await?;
                balance.spent_micro = spent.spent_micro;
                balance.releases = spent.releases;
                Ok(balance)
            }
            _ => Err(LedgerError::Exhausted {
                balance,
                cost_micro,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "test")]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, &crate::store::StoreOptions::default()).unwrap()
    }

    #[test]
    fn windows_are_utc_calendar_periods() {
        // 2026-11-30T23:59:59.999Z and one millisecond later.
        let last = 1_796_083_199_999;
        assert_eq!(window(BudgetPeriod::Day, last), "2026-11-30");
        assert_eq!(window(BudgetPeriod::Month, last), "2026-11");
        assert_eq!(window(BudgetPeriod::Year, last), "2026");
        assert_eq!(window(BudgetPeriod::Day, last + 1), "2026-12-01");
        assert_eq!(window(BudgetPeriod::Month, last + 1), "2026-12");
    }

    #[test]
    fn fixed_point_rounds_against_the_spender() {
        // 0.1 ten times is exactly 1 in fixed point (floats would drift).
        assert_eq!(cost_micro(0.1), Some(100_000));
        assert_eq!(budget_micro(1.0), Some(MICRO));
        assert_eq!(cost_micro(1e-7), Some(1));
        assert_eq!(budget_micro(1e-7), Some(0));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            assert_eq!(cost_micro(bad), None, "{bad}");
        }
        assert_eq!(epsilon(1_500_000), "1.5");
        assert_eq!(epsilon(10 * MICRO), "10");
        assert_eq!(epsilon(1), "0.000001");
    }

    #[tokio::test]
    async fn debits_stop_at_the_budget_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let budget = budget_micro(1.0).unwrap();
        let cost = cost_micro(0.1).unwrap();
        {
            let l = Ledger::open(store(dir.path())).unwrap();
            for i in 1..=10u64 {
                let b = l.debit("trips", "2026-11", budget, cost).await.unwrap();
                assert_eq!(b.spent_micro, i * cost);
            }
            let e = l.debit("trips", "2026-11", budget, cost).await;
            let Err(LedgerError::Exhausted { balance, .. }) = e else {
                panic!("{e:?}")
            };
            assert_eq!(balance.remaining_micro(), 0);
            assert_eq!(balance.releases, 10);
            // Another window and another dataset have their own budget.
            l.debit("trips", "2026-12", budget, cost).await.unwrap();
            l.debit("other", "2026-11", budget, cost).await.unwrap();
        }
        let l = Ledger::open(store(dir.path())).unwrap();
        let b = l.balance("trips", "2026-11", budget).unwrap();
        assert_eq!((b.spent_micro, b.releases), (budget, 10));
        assert!(l.debit("trips", "2026-11", budget, 1).await.is_err());
    }

    #[tokio::test]
    async fn concurrent_debits_never_overspend() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::sync::Arc::new(Ledger::open(store(dir.path())).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.debit("d", "2026", 3 * MICRO, MICRO).await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(ok, 3);
        assert_eq!(
            l.balance("d", "2026", 3 * MICRO).unwrap().spent_micro,
            3 * MICRO
        );
    }
}
