//! Signed checkpoints: the checkpointer signs one within
//! [`CHECKPOINT_INTERVAL`] of new entries; cosignatures from witnesses are
//! stored with them.

use super::log::{AuditError, AuditLog, Inner};
use crate::store::WriteBatch;
use allmende_audit::{Checkpoint, NoteSignature, SignedNote};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// How often the checkpointer looks for new entries (≤ 1 s to provable).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub size: u64,
    pub root_hex: String,
    /// The signed note (log signature only).
    pub note: String,
    /// Cosignature lines received from witnesses (`— name base64`).
    pub cosignatures: Vec<String>,
    pub signed_at_ms: i64,
}

impl AuditLog {
    /// The latest checkpoint, if one was signed.
    pub fn latest_checkpoint(&self) -> Result<Option<CheckpointRecord>, AuditError> {
        let size = self.inner.checkpoint_size.load(Ordering::SeqCst);
        if size == 0 {
            return Ok(None);
        }
        Ok(self.inner.checkpoints.get(&size)?)
    }

    /// Every stored checkpoint (oldest first).
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, AuditError> {
        Ok(self
            .inner
            .checkpoints
            .entries()?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Signs a checkpoint for the current size now (normally the
    /// checkpointer does this within [`CHECKPOINT_INTERVAL`]).
    pub async fn checkpoint_now(&self) -> Result<Option<CheckpointRecord>, AuditError> {
        sign_checkpoint(&self.inner).await
    }

    /// Waits until a checkpoint covers `seq` (or the timeout passes).
    pub async fn wait_provable(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.inner.checkpoint_size.load(Ordering::SeqCst) > seq {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits (bounded) until the checkpoint of `size` carries at least `min`
    /// cosignatures; returns it as it is then.
    pub async fn wait_cosigned(
        &self,
        size: u64,
        min: usize,
        timeout: Duration,
    ) -> Result<Option<CheckpointRecord>, AuditError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.inner.checkpoints.get(&size)?;
            let enough = rec.as_ref().is_some_and(|r| r.cosignatures.len() >= min);
            if enough || tokio::time::Instant::now() >= deadline {
                return Ok(rec);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stores a verified cosignature line for the checkpoint of `size`.
    pub async fn add_cosignature(&self, size: u64, line: String) -> Result<bool, AuditError> {
        let Some(mut rec) = self.inner.checkpoints.get(&size)? else {
            return Ok(false);
        };
        if rec.cosignatures.contains(&line) {
            return Ok(true);
        }
        rec.cosignatures.push(line);
        let mut b = WriteBatch::new();
        b.put(&self.inner.checkpoints, &size, &rec)?;
        self.inner.store.commit_durable(b).await?;
        Ok(true)
    }
}

pub(super) async fn sign_checkpoint(inner: &Inner) -> Result<Option<CheckpointRecord>, AuditError> {
    let size = *inner.committed.borrow();
    if size == 0 || size <= inner.checkpoint_size.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let root = allmende_audit::root_at(&inner.hashes, size)
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
    let cp = Checkpoint::new(&inner.origin, size, root)
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
    let note = allmende_audit::sign_checkpoint(&inner.log_signer, &cp)
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
    let rec = CheckpointRecord {
        size,
        root_hex: root.to_hex(),
        note,
        cosignatures: Vec::new(),
        signed_at_ms: inner.clock.now_unix_ms(),
    };
    let mut b = WriteBatch::new();
    b.put(&inner.checkpoints, &size, &rec)?;
    inner.store.commit_durable(b).await?;
    inner.checkpoint_size.fetch_max(size, Ordering::SeqCst);
    Ok(Some(rec))
}

pub(super) async fn checkpointer(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if stop {
            // Let the writer finish its queue, then cover it with a checkpoint.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Err(e) = sign_checkpoint(&inner).await {
                tracing::warn!(error = %e, "final checkpoint not signed");
            }
            return;
        }
        if let Err(e) = sign_checkpoint(&inner).await {
            tracing::warn!(error = %e, "checkpoint not signed");
        }
    }
}

/// Parses a cosignature line `— name base64` into a note signature.
pub fn parse_sig_line(line: &str) -> Option<NoteSignature> {
    let text = format!("x\n\n{}\n", line.trim_end());
    let note = SignedNote::parse(text.as_bytes()).ok()?;
    note.signatures().first().cloned()
}
