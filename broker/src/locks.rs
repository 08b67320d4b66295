//! Poisoned locks, handled one way everywhere: the state behind a lock
//! poisoned by a panic is never used again.
//!
//! A lock is poisoned when code panicked while holding it. `unwrap`,
//! `expect` and `panic` are denied outside tests, so such a panic is a bug,
//! and the state it left may be half-changed: a withdrawal applied to some
//! datasets but not others, a grant mirrored into the policy entities
//! without its revocation, a catalog index out of step with its entries.
//! Every piece of in-memory state behind these locks is rebuilt from the
//! durable store when the node starts, so refusing to use it loses only
//! availability, while recovering the guard could decide or release on a
//! state that never existed durably. A security broker fails closed:
//!
//! - every `std::sync` lock in `broker/src` is taken through [`lock`],
//!   [`read`] or [`write`] (`broker/tests/tidy.rs`);
//! - a poisoned lock yields [`Poisoned`], logged as an error with the
//!   structured field `lock` naming the state;
//! - a call a caller waits for refuses with `UNAVAILABLE`
//!   (`error::ApiError` classifies [`Poisoned`]); where nobody waits (a
//!   counter, a `Drop`), the step is skipped and the conservative outcome
//!   taken (no slot, no permission, audit one by one). Restarting the node
//!   rebuilds the state from the store.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The state named here is unusable: a panic poisoned its lock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node state `{0}` is unusable after an internal error; restart the node")]
pub struct Poisoned(pub &'static str);

fn poisoned<G>(what: &'static str, _: PoisonError<G>) -> Poisoned {
    tracing::error!(
        lock = what,
        "lock poisoned by a panic; its state is not used until the node restarts"
    );
    Poisoned(what)
}

/// Locks `m`, or [`Poisoned`] naming `what` it guards.
pub fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    m.lock().map_err(|e| poisoned(what, e))
}

/// Read-locks `l`, or [`Poisoned`] naming `what` it guards.
pub fn read<'a, T>(
    l: &'a RwLock<T>,
    what: &'static str,
) -> Result<RwLockReadGuard<'a, T>, Poisoned> {
    l.read().map_err(|e| poisoned(what, e))
}

/// Write-locks `l`, or [`Poisoned`] naming `what` it guards.
pub fn write<'a, T>(
    l: &'a RwLock<T>,
    what: &'static str,
) -> Result<RwLockWriteGuard<'a, T>, Poisoned> {
    l.write().map_err(|e| poisoned(what, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test")]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_refused_not_recovered() {
        let m = Arc::new(Mutex::new(1));
        let l = Arc::new(RwLock::new(1));
        assert_eq!(*lock(&m, "m").unwrap(), 1);
        assert_eq!(*read(&l, "l").unwrap(), 1);
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _h = l2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert_eq!(lock(&m, "m").err(), Some(Poisoned("m")));
        assert_eq!(read(&l, "l").err(), Some(Poisoned("l")));
        assert_eq!(write(&l, "l").err(), Some(Poisoned("l")));
        let e = crate::error::ApiError::from(Poisoned("consent records"));
        assert!(matches!(e, crate::error::ApiError::Unavailable(_)), "{e:?}");
    }
}
