//! The catalog replicator: keeps this node's replica of its peers'
//! catalogs. It pulls from every peer on a schedule, pulls from a peer when
//! that peer notifies a change (`Catalog.Notify`, through [`PullTrigger`]),
//! and notifies every peer when this node's own catalog changes.
//!
//! Connections are [`connect_peer`]'s; the replica takes records only from
//! the identity that authentication yields, never from what a response
//! claims.

use super::client::{PeerError, connect_peer, peer_client_config};
use super::peers::{SharedPeers, snapshot};
use crate::catalog::{Catalog, CatalogError, PeerListing};
use crate::config::PeerConfig;
use crate::pki::Trust;
use crate::tls::{TlsError, TlsMaterial};
use allmende_proto::v1 as pb;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often every peer's catalog is pulled, notifications aside.
pub const PULL_INTERVAL: Duration = Duration::from_secs(30);
/// Largest `Catalog.List` page accepted from a peer.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why a pull or notification did not go through.
#[derive(Debug, thiserror::Error)]
enum ReplicationError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("peer at `{endpoint}` is `{found}`, expected `{expected}`")]
    Unexpected {
        endpoint: String,
        found: String,
        expected: String,
    },
    #[error("rpc: {0}")]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A pull someone asked for: from the configured peer named `node`, which
/// must authenticate as `organisation/node`.
#[derive(Debug, Clone)]
struct PullRequest {
    organisation: String,
    node: String,
}

/// Asks the replicator to pull from a peer (used by `Catalog.Notify`).
#[derive(Debug, Clone)]
pub struct PullTrigger {
    tx: mpsc::Sender<PullRequest>,
    peers: SharedPeers,
}

impl PullTrigger {
    /// Schedules a pull from the configured peer named `node`; false when no
    /// such peer is configured.
    pub fn request(&self, organisation: &str, node: &str) -> bool {
        let known = crate::locks::read(&self.peers, "peer list")
            .map(|p| p.iter().any(|c| c.name == node))
            .unwrap_or(false);
        if !known {
            return false;
        }
        match self.tx.try_send(PullRequest {
            organisation: organisation.to_owned(),
            node: node.to_owned(),
        }) {
            // A full queue: pulls are pending already.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// What the replicator needs, shared with its tasks.
#[derive(Debug)]
struct Shared {
    catalog: Arc<Catalog>,
    trust: Arc<Trust>,
    tls: Arc<rustls::ClientConfig>,
    peers: SharedPeers,
    /// One pull at a time per peer.
    pulling: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Pulls peers' catalogs and announces this node's changes.
#[derive(Debug)]
pub struct CatalogReplicator {
    shared: Arc<Shared>,
    interval: Duration,
    tx: mpsc::Sender<PullRequest>,
    rx: mpsc::Receiver<PullRequest>,
}

impl CatalogReplicator {
    /// A replicator for `catalog`, talking to `peers` with the node's own
    /// certificate (`material`, loaded from `cert_path`).
    pub fn new(
        catalog: Arc<Catalog>,
        trust: Arc<Trust>,
        material: &TlsMaterial,
        cert_path: &Path,
        peers: SharedPeers,
        interval: Duration,
    ) -> Result<Self, TlsError> {
        let (tx, rx) = mpsc::channel(64);
        Ok(Self {
            shared: Arc::new(Shared {
                catalog,
                trust,
                tls: peer_client_config(material, cert_path)?,
                peers,
                pulling: tokio::sync::Mutex::new(HashMap::new()),
            }),
            interval,
            tx,
            rx,
        })
    }

    /// The handle `Catalog.Notify` uses.
    pub fn trigger(&self) -> PullTrigger {
        PullTrigger {
            tx: self.tx.clone(),
            peers: self.shared.peers.clone(),
        }
    }

    /// Runs until shutdown: pulls every peer now and then every interval,
    /// pulls a peer on request, and notifies every peer of local changes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut versions = self.shared.catalog.subscribe();
        // Announce on start: peers may have missed changes while we were down.
        tasks.spawn(notify_all(
            self.shared.clone(),
            *versions.borrow_and_update(),
        ));
        loop {
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = tick.tick() => {
                    for peer in snapshot(&self.shared.peers) {
                        tasks.spawn(pull(self.shared.clone(), peer, None));
                    }
                }
                Some(req) = self.rx.recv() => {
                    if let Some(peer) = snapshot(&self.shared.peers).into_iter().find(|p| p.name == req.node) {
                        tasks.spawn(pull(self.shared.clone(), peer, Some(req)));
                    }
                }
                Ok(()) = versions.changed() => {
                    let v = *versions.borrow_and_update();
                    tasks.spawn(notify_all(self.shared.clone(), v));
                }
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

async fn pull(shared: Arc<Shared>, peer: PeerConfig, expect: Option<PullRequest>) {
    let lock = shared
        .pulling
        .lock()
        .await
        .entry(peer.name.clone())
        .or_default()
        .clone();
    let _one = lock.lock().await;
    match pull_from(&shared, &peer, expect.as_ref()).await {
        Ok(()) => {}
        Err(e @ (ReplicationError::Peer(PeerError::Connect { .. }) | ReplicationError::Rpc(_))) => {
            tracing::debug!(peer = %peer.name, error = %e, "catalog pull failed");
        }
        Err(e) => {
            tracing::warn!(peer = %peer.name, error = %e, "catalog pull refused");
        }
    }
}

/// Pulls every page of a peer's changes since what the replica holds.
async fn pull_from(
    shared: &Shared,
    peer: &PeerConfig,
    expect: Option<&PullRequest>,
) -> Result<(), ReplicationError> {
    let conn = connect_peer(&peer.endpoint, shared.tls.clone(), &shared.trust).await?;
    if let Some(x) = expect
        && (x.organisation != conn.organisation || x.node != conn.node)
    {
        return Err(ReplicationError::Unexpected {
            endpoint: peer.endpoint.clone(),
            found: format!("{}/{}", conn.organisation, conn.node),
            expected: format!("{}/{}", x.organisation, x.node),
        });
    }
    let mut client = pb::catalog_client::CatalogClient::new(conn.channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut since = shared
        .catalog
        .peer_version(&conn.organisation, &conn.node)
        .unwrap_or(0);
    let mut restarted = false;
    loop {
        let resp = client
            .list(pb::ListCatalogRequest {
                since_version: since,
                max_records: 0,
            })
            .await?
            .into_inner();
        if resp.catalog_version < since && !restarted {
            // The peer's catalog went back (restored store): start over.
            tracing::warn!(
                peer_org = %conn.organisation,
                peer_node = %conn.node,
                held = since,
                served = resp.catalog_version,
                "peer catalog version went back; pulling it whole"
            );
            since = 0;
            restarted = true;
            continue;
        }
        let listing = PeerListing::try_from(resp).map_err(|e| PeerError::Identity {
            endpoint: peer.endpoint.clone(),
            message: e.to_string(),
        })?;
        let report = shared
            .catalog
            .apply_peer_listing(&conn.organisation, &conn.node, &listing)
            .await?;
        if !listing.more || report.version <= since {
            return Ok(());
        }
        since = report.version;
    }
}

/// Tells every peer this node's catalog version.
async fn notify_all(shared: Arc<Shared>, version: u64) {
    let peers = snapshot(&shared.peers);
    let calls = peers.into_iter().map(|peer| {
        let shared = shared.clone();
        async move {
            let result = async {
                let conn = connect_peer(&peer.endpoint, shared.tls.clone(), &shared.trust).await?;
                pb::catalog_client::CatalogClient::new(conn.channel)
                    .notify(pb::NotifyCatalogRequest {
                        catalog_version: version,
                    })
                    .await?;
                Ok::<(), ReplicationError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(peer = %peer.name, version, error = %e, "catalog notification not delivered");
            }
        }
    });
    futures::future::join_all(calls).await;
}
