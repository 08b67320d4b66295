//! Time as the node sees it.
//!
//! Everything that depends on the current time (certificate validity, grant
//! expiry, retention) asks a [`Clock`], so tests move time with a
//! [`ManualClock`] instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64;

    /// Whole seconds since the Unix epoch.
    fn now_unix_secs(&self) -> i64 {
        self.now_unix_ms().div_euclid(1000)
    }

    /// The current time as a [`Duration`] since the epoch (zero before 1970).
    fn since_epoch(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.now_unix_ms()).unwrap_or(0))
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// Sleeps for `d` of monotonic time, or forever when there is nothing to
/// wait for (`None`): the timers that wake at the next deadline of the node
/// clock or on a change.
pub async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `unix_ms`.
    pub fn at_unix_ms(unix_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicI64::new(unix_ms),
        })
    }

    /// A clock standing at the system's current time.
    pub fn starting_now() -> Arc<Self> {
        Self::at_unix_ms(SystemClock.now_unix_ms())
    }

    /// Moves the clock forward (or backward for a negative duration).
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `unix_ms`.
    pub fn set_unix_ms(&self, unix_ms: i64) {
        self.now_ms.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix_ms(1_000);
        assert_eq!(c.now_unix_secs(), 1);
        c.advance(Duration::from_secs(90 * 24 * 3600));
        assert_eq!(c.now_unix_secs(), 1 + 90 * 24 * 3600);
        c.set_unix_ms(5);
        assert_eq!(c.now_unix_ms(), 5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_unix_secs() > 1_577_836_800);
    }
}
