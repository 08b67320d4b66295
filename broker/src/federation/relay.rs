//! The relay's calls to other nodes (`docs/relay.md`): the forwarding node
//! to the hub (`Relay.Forward`), the hub to the owner node (`Relay.Serve`),
//! a node publishing its MLS key package at the hub
//! (`Relay.PublishKeyPackage`), and the relay's background task (removals
//! committed on every directory change, the node's key package
//! replenished when its directory slot is empty). Every dial goes through
//! [`connect_peer`]; the peer's identity is taken only from the
//! certificate it presented.

use super::client::{PEER_CALL_TIMEOUT, PeerError, VerifiedPeer, connect_peer};
use crate::pki::{OrgKind, Trust};
use crate::relay::Relay;
use allmende_proto::v1 as pb;
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why a relayed call failed before or while reaching the peer.
#[derive(Debug, thiserror::Error)]
pub enum RelayCallError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("`{0}` is not the city's node; relaying goes through the city hub only")]
    NotHub(String),
    #[error("reached `{reached}` instead of `{expected}`")]
    WrongPeer { reached: String, expected: String },
    #[error("the call to `{0}` timed out")]
    Timeout(String),
    /// The peer answered with this status; passed on unchanged in meaning.
    #[error("{}", .0.message())]
    Status(tonic::Status),
}

/// The relay's client side: the peer client's TLS and the trust that
/// authenticates the peers it reaches.
#[derive(Clone)]
pub struct Dialer {
    tls: Arc<rustls::ClientConfig>,
    trust: Arc<Trust>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

impl Dialer {
    /// The dialer of the node with TLS `material` (its certificate file at
    /// `cert_path`, for messages) and `trust`.
    pub fn new(
        material: &crate::tls::TlsMaterial,
        cert_path: &std::path::Path,
        trust: Arc<Trust>,
    ) -> Result<Self, crate::tls::TlsError> {
        Ok(Self {
            tls: super::client::peer_client_config(material, cert_path)?,
            trust,
        })
    }

    /// [`forward`] through this dialer.
    pub async fn forward(
        &self,
        hub: &str,
        request: pb::RelayedRequest,
    ) -> Result<tonic::Streaming<pb::RelayFrame>, RelayCallError> {
        forward(hub, self.tls.clone(), &self.trust, request).await
    }

    /// [`serve_at_owner`] through this dialer.
    pub async fn serve_at_owner(
        &self,
        endpoint: &str,
        org: &str,
        node: &str,
        request: pb::RelayedRequest,
    ) -> Result<tonic::Streaming<pb::RelayFrame>, RelayCallError> {
        serve_at_owner(endpoint, org, node, self.tls.clone(), &self.trust, request).await
    }

    /// [`register`] through this dialer.
    pub async fn register(&self, relay: &Relay, endpoint: &str) -> Result<bool, RelayCallError> {
        register(relay, endpoint, self.tls.clone(), &self.trust).await
    }

    /// [`replenish`] through this dialer.
    pub async fn replenish(&self, relay: &Relay) -> Result<bool, String> {
        replenish(relay, self.tls.clone(), &self.trust).await
    }
}

/// Dials the hub and checks it is a node of the city organisation.
async fn connect_hub(
    hub: &str,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
) -> Result<VerifiedPeer, RelayCallError> {
    let peer = connect_peer(hub, tls, trust).await?;
    let is_city = trust
        .snapshot()
        .doc
        .member(&peer.organisation)
        .is_some_and(|m| m.kind == OrgKind::City);
    if !is_city {
        return Err(RelayCallError::NotHub(format!(
            "{}/{}",
            peer.organisation, peer.node
        )));
    }
    Ok(peer)
}

/// The forwarding node's call: `Relay.Forward` at the hub.
pub async fn forward(
    hub: &str,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
    request: pb::RelayedRequest,
) -> Result<tonic::Streaming<pb::RelayFrame>, RelayCallError> {
    let peer = connect_hub(hub, tls, trust).await?;
    let mut client = pb::relay_client::RelayClient::new(peer.channel);
    let resp = tokio::time::timeout(PEER_CALL_TIMEOUT, client.forward(request))
        .await
        .map_err(|_| RelayCallError::Timeout(hub.to_owned()))?
        .map_err(RelayCallError::Status)?;
    Ok(resp.into_inner())
}

/// The hub's call: `Relay.Serve` at the owner node `org/node`, reached at
/// `endpoint` (from the directory); the node reached must be that node.
pub async fn serve_at_owner(
    endpoint: &str,
    org: &str,
    node: &str,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
    request: pb::RelayedRequest,
) -> Result<tonic::Streaming<pb::RelayFrame>, RelayCallError> {
    let peer = connect_peer(endpoint, tls, trust).await?;
    if peer.organisation != org || peer.node != node {
        return Err(RelayCallError::WrongPeer {
            reached: format!("{}/{}", peer.organisation, peer.node),
            expected: format!("{org}/{node}"),
        });
    }
    let mut client = pb::relay_client::RelayClient::new(peer.channel);
    let resp = tokio::time::timeout(PEER_CALL_TIMEOUT, client.serve(request))
        .await
        .map_err(|_| RelayCallError::Timeout(endpoint.to_owned()))?
        .map_err(RelayCallError::Status)?;
    Ok(resp.into_inner())
}

/// Publishes `key_package` in this node's directory slot at the hub;
/// returns the directory version the hub signed.
pub async fn publish_key_package(
    relay: &Relay,
    key_package: Vec<u8>,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
) -> Result<u64, RelayCallError> {
    let hub = relay
        .hub()
        .map_err(|e| RelayCallError::NotHub(e.to_string()))?;
    let peer = connect_hub(&hub, tls, trust).await?;
    let mut client = pb::relay_client::RelayClient::new(peer.channel);
    let resp = tokio::time::timeout(
        PEER_CALL_TIMEOUT,
        client.publish_key_package(pb::PublishKeyPackageRequest {
            key_package,
            certificate: relay.signer().certificate_der().to_vec(),
        }),
    )
    .await
    .map_err(|_| RelayCallError::Timeout(hub.clone()))?
    .map_err(RelayCallError::Status)?;
    Ok(resp.into_inner().directory_version)
}

/// This node's entry in the directory `trust` holds, if it is listed.
fn own_entry(relay: &Relay, trust: &Trust) -> Option<crate::pki::membership::NodeEntry> {
    let own = relay.signer().uri();
    trust.snapshot().doc.nodes.iter().find_map(|n| {
        let uri = crate::pki::identity::LeafIdentity {
            federation: trust.federation(),
            organisation: n.org.clone(),
            subject: crate::pki::Subject::Node(n.node.clone()),
        }
        .uri();
        (uri == own).then(|| n.clone())
    })
}

/// Records this node's directory entry at the hub
/// (`Federation.RegisterNode`, with the node's certificate) unless the
/// directory already lists it at `endpoint` with its current certificate.
/// Returns whether it called the hub.
pub async fn register(
    relay: &Relay,
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
) -> Result<bool, RelayCallError> {
    let Ok(hub) = relay.hub() else {
        return Ok(false);
    };
    let cert = crate::pki::membership::sha256_hex(relay.signer().certificate_der());
    if own_entry(relay, trust).is_some_and(|n| n.endpoint == endpoint && n.cert_sha256 == cert) {
        return Ok(false);
    }
    let peer = connect_hub(&hub, tls, trust).await?;
    let mut client = pb::federation_client::FederationClient::new(peer.channel);
    tokio::time::timeout(
        PEER_CALL_TIMEOUT,
        client.register_node(pb::RegisterNodeRequest {
            endpoint: endpoint.to_owned(),
        }),
    )
    .await
    .map_err(|_| RelayCallError::Timeout(hub.clone()))?
    .map_err(RelayCallError::Status)?;
    Ok(true)
}

/// Publishes a fresh key package when this node is listed in the
/// directory with an empty slot or one that is not its own (consumed by a
/// welcome, or replaced). Returns whether it published.
pub async fn replenish(
    relay: &Relay,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
) -> Result<bool, String> {
    if relay.hub().is_err() {
        return Ok(false);
    }
    let Some(slot) = own_entry(relay, trust).map(|n| n.mls_key_package) else {
        return Ok(false);
    };
    let pool = relay
        .unused_key_packages()
        .await
        .map_err(|e| e.to_string())?;
    let published = base64::engine::general_purpose::STANDARD
        .decode(&slot)
        .unwrap_or_default();
    if pool.contains(&published) {
        return Ok(false);
    }
    let Some(kp) = pool.into_iter().next() else {
        return Ok(false);
    };
    publish_key_package(relay, kp, tls, trust)
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// The relay's background task: on every directory change (and every
/// `refresh`) commits the removal of departed organisations from the
/// pairs' groups, records this node's entry at `endpoint` (`[federation]
/// endpoint`) when the directory lacks it, and replenishes this node's key
/// package.
pub async fn run(
    relay: Arc<Relay>,
    dialer: Dialer,
    endpoint: Option<String>,
    refresh: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = dialer.trust.subscribe();
    loop {
        relay.remove_departed().await;
        if let Some(e) = &endpoint {
            match dialer.register(&relay, e).await {
                Ok(true) => tracing::info!(endpoint = %e, "directory entry recorded at the hub"),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(endpoint = %e, error = %err, "directory entry not recorded")
                }
            }
        }
        if let Err(e) = dialer.replenish(&relay).await {
            tracing::debug!(error = %e, "mls key package not published");
        }
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
