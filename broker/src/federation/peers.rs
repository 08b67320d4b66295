//! The peers of a node: [`SharedPeers`], the configured peers it dials
//! (catalog replication, witnessing), and [`Peers`], the peer nodes it has
//! met, recorded durably on every `Federation.Hello` before the hello is
//! answered.

use crate::clock::SharedClock;
use crate::config::PeerConfig;
use crate::pki::{Principal, Subject};
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use tokio::sync::Mutex;

/// The peers a node dials; filled from `[[peers]]` at start, and changed at
/// run time by the sandbox. The one list the replicator and the witness loop
/// share.
pub type SharedPeers = Arc<RwLock<Vec<PeerConfig>>>;

/// A copy of the current peer list (empty if the lock was poisoned: no
/// peer is dialled on a list a panic may have left half-changed).
pub fn snapshot(peers: &SharedPeers) -> Vec<PeerConfig> {
    crate::locks::read(peers, "peer list")
        .map(|p| p.clone())
        .unwrap_or_default()
}

/// One peer node as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub organisation: String,
    pub node: String,
    pub certificate_sha256: String,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    pub hellos: u64,
    pub software_version: String,
}

/// The peer registry.
#[derive(Debug)]
pub struct Peers {
    store: Store,
    table: Table<(String, String), PeerRecord>,
    clock: SharedClock,
    // Serialises read-modify-write of the counters.
    write: Mutex<()>,
}

impl Peers {
    pub fn open(store: Store, clock: SharedClock) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table(TableName::Peers)?,
            store,
            clock,
            write: Mutex::new(()),
        })
    }

    /// Records a hello from a node principal; durable when it returns.
    /// Returns `None` for a caller that is not a node.
    pub async fn record_hello(
        &self,
        caller: &Principal,
        software_version: &str,
    ) -> Result<Option<PeerRecord>, StoreError> {
        let Subject::Node(node) = &caller.subject else {
            return Ok(None);
        };
        let _guard = self.write.lock().await;
        let key = (caller.organisation.clone(), node.clone());
        let now = self.clock.now_unix_ms();
        let mut rec = self.table.get(&key)?.unwrap_or(PeerRecord {
            organisation: caller.organisation.clone(),
            node: node.clone(),
            certificate_sha256: String::new(),
            first_seen_unix_ms: now,
            last_seen_unix_ms: now,
            hellos: 0,
            software_version: String::new(),
        });
        if !rec.certificate_sha256.is_empty() && rec.certificate_sha256 != caller.certificate_sha256
        {
            tracing::info!(org = %caller.organisation, node = %node, "peer presents a new certificate");
        }
        rec.certificate_sha256 = caller.certificate_sha256.clone();
        rec.last_seen_unix_ms = now;
        rec.hellos += 1;
        rec.software_version = crate::text::shown(software_version, 64);
        let mut batch = WriteBatch::new();
        batch.put(&self.table, &key, &rec)?;
        self.store.commit_durable(batch).await?;
        Ok(Some(rec))
    }

    /// Every known peer.
    pub fn list(&self) -> Result<Vec<PeerRecord>, StoreError> {
        Ok(self.table.entries()?.into_iter().map(|(_, v)| v).collect())
    }
}
