//! `allmende.v1.Catalog`, and the replicator that keeps this node's replica
//! of its peers' catalogs: it pulls from every peer on a schedule, pulls from
//! a peer when that peer notifies a change, and notifies every peer when this
//! node's own catalog changes.
//!
//! Node-to-node calls go over connections opened by [`connect_peer`]: mTLS
//! with this node's certificate, and the server's certificate authenticated
//! by the federation trust (membership, deny list, clock) exactly like a
//! client's. The replica takes records only from the identity that
//! authentication yields, never from what a response claims.

use super::principal;
use crate::catalog::{Catalog, CatalogError, PeerListing, SearchQuery};
use crate::config::PeerConfig;
use crate::error::ApiError;
use crate::pki::{Subject, Trust};
use crate::tls::{TlsError, TlsMaterial};
use allmende_proto::v1 as pb;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

/// How often every peer's catalog is pulled, notifications aside.
pub const PULL_INTERVAL: Duration = Duration::from_secs(30);
/// Records per `Catalog.List` page.
pub const PAGE_RECORDS: usize = 256;
/// Bytes of records per page (before protobuf framing).
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The peers a node talks to; the sandbox fills them in after start.
pub type SharedPeers = Arc<RwLock<Vec<PeerConfig>>>;

/// `allmende.v1.Catalog`.
#[derive(Debug, Clone)]
pub struct CatalogService {
    pub ctx: super::ctx::NodeCtx,
    pub catalog: Arc<Catalog>,
    pub trigger: PullTrigger,
    pub federation: String,
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn list(
        &self,
        req: Request<pb::ListCatalogRequest>,
    ) -> Result<Response<pb::ListCatalogResponse>, Status> {
        // Metadata is federated to every member by design.
        let _p = principal(&req)?;
        let r = req.into_inner();
        let max = match r.max_records {
            0 => PAGE_RECORDS,
            n => usize::try_from(n).unwrap_or(PAGE_RECORDS).min(PAGE_RECORDS),
        };
        let listing = self.catalog.list_page(r.since_version, max, PAGE_BYTES);
        Ok(Response::new(pb::ListCatalogResponse::from(&listing)))
    }

    async fn notify(
        &self,
        req: Request<pb::NotifyCatalogRequest>,
    ) -> Result<Response<pb::NotifyCatalogResponse>, Status> {
        let p = principal(&req)?;
        super::federation::authorize_metadata(&self.ctx, &p, "notify_catalog").await?;
        let Subject::Node(node) = &p.subject else {
            return Err(
                ApiError::Internal("a catalog notice was allowed for a person".into()).into(),
            );
        };
        let announced = req.into_inner().catalog_version;
        let behind = self
            .catalog
            .peer_version(&p.organisation, node)
            .is_none_or(|v| v < announced);
        let scheduled = behind && self.trigger.request(&p.organisation, node);
        tracing::debug!(
            peer_org = %p.organisation,
            peer_node = %node,
            announced,
            scheduled,
            "catalog change notified"
        );
        Ok(Response::new(pb::NotifyCatalogResponse {
            pull_scheduled: scheduled,
        }))
    }

    async fn search(
        &self,
        req: Request<pb::SearchCatalogRequest>,
    ) -> Result<Response<pb::SearchCatalogResponse>, Status> {
        let _p = principal(&req)?;
        let r = req.get_ref();
        super::limits::check_len("query", &r.query, super::limits::MAX_TOKEN_BYTES)?;
        super::limits::check_id("owner", &r.owner)?;
        super::limits::check_id("theme", &r.theme)?;
        super::limits::check_id("classification", &r.classification)?;
        let q = SearchQuery::try_from(req.into_inner())?;
        let found = self.catalog.search(&q);
        Ok(Response::new(pb::SearchCatalogResponse {
            entries: found
                .entries
                .iter()
                .map(|e| super::convert::catalog_entry(e, !self.catalog.is_local_entry(e)))
                .collect(),
            total: u64::try_from(found.total).unwrap_or(u64::MAX),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetCatalogEntryRequest>,
    ) -> Result<Response<pb::GetCatalogEntryResponse>, Status> {
        let _p = principal(&req)?;
        let r = req.into_inner();
        super::limits::check_id("dataset", &r.dataset)?;
        super::limits::check_id("owner", &r.owner)?;
        tracing::Span::current().record("dataset", tracing::field::display(&r.dataset));
        let owner = (!r.owner.is_empty()).then_some(r.owner.as_str());
        let entry = self
            .catalog
            .get(owner, &r.dataset)
            .map_err(ApiError::from)?;
        let dcat_turtle = if r.include_dcat {
            crate::catalog::dcat::to_turtle(&entry, &self.federation)
        } else {
            String::new()
        };
        Ok(Response::new(pb::GetCatalogEntryResponse {
            entry: Some(super::convert::catalog_entry(
                &entry,
                !self.catalog.is_local_entry(&entry),
            )),
            dcat_turtle,
        }))
    }
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
        let known = self
            .peers
            .read()
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

/// A connection to a peer node whose certificate the federation trust
/// accepted.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    pub channel: tonic::transport::Channel,
    pub organisation: String,
    pub node: String,
}

/// Why a peer could not be reached or was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer endpoint `{0}` is not an https:// URL with a host")]
    Endpoint(String),
    #[error("cannot reach `{endpoint}`: {message}")]
    Connect { endpoint: String, message: String },
    #[error("peer at `{endpoint}` is not acceptable: {message}")]
    Identity { endpoint: String, message: String },
    #[error("peer at `{endpoint}` is `{found}`, expected `{expected}`")]
    Unexpected {
        endpoint: String,
        found: String,
        expected: String,
    },
    #[error("rpc: {0}")]
    Rpc(#[from] Status),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Client-side TLS for node-to-node calls: the federation root, this node's
/// certificate, HTTP/2.
pub fn peer_client_config(
    material: &TlsMaterial,
    cert_path: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let empty = |what| TlsError::Empty {
        path: cert_path.to_path_buf(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(material.root_pem.as_bytes()).filter_map(Result::ok) {
        roots.add(c)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(material.chain_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
    if chain.is_empty() || roots.is_empty() {
        return Err(empty("certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|_| empty("private key"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

type PeerIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

/// Hands one already authenticated connection to tonic; a reconnect
/// attempt fails, so a dropped connection is re-opened (and re-verified) by
/// the next [`connect_peer`].
#[derive(Clone)]
struct OneConnection(Arc<std::sync::Mutex<Option<PeerIo>>>);

impl tower::Service<http::Uri> for OneConnection {
    type Response = PeerIo;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<PeerIo, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let io = self.0.lock().ok().and_then(|mut s| s.take());
        std::future::ready(io.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "peer connection closed; reconnect",
            )
        }))
    }
}

/// Opens an mTLS connection to a peer node and authenticates the server's
/// certificate with the federation trust: it must be a node of a member
/// organisation, not revoked, valid now.
pub async fn connect_peer(
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
    trust: &Trust,
) -> Result<VerifiedPeer, PeerError> {
    let bad_endpoint = || PeerError::Endpoint(endpoint.chars().take(200).collect());
    let uri: http::Uri = endpoint.parse().map_err(|_| bad_endpoint())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad_endpoint());
    }
    let host = uri
        .host()
        .ok_or_else(bad_endpoint)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|_| bad_endpoint())?;
    let connect_err = |message: String| PeerError::Connect {
        endpoint: endpoint.to_owned(),
        message,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| connect_err("connect timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await
    .map_err(|_| connect_err("tls handshake timed out".into()))?
    .map_err(|e| connect_err(format!("tls: {e}")))?;
    let principal = {
        let (_, conn) = stream.get_ref();
        match conn.peer_certificates() {
            Some([leaf, rest @ ..]) => trust.authenticate(leaf, rest).map_err(|e| e.to_string()),
            _ => Err("no server certificate".to_owned()),
        }
    }
    .map_err(|message| PeerError::Identity {
        endpoint: endpoint.to_owned(),
        message,
    })?;
    let Subject::Node(node) = principal.subject else {
        return Err(PeerError::Identity {
            endpoint: endpoint.to_owned(),
            message: "the server certificate is not a node's".into(),
        });
    };
    let slot = OneConnection(Arc::new(std::sync::Mutex::new(Some(TokioIo::new(stream)))));
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| bad_endpoint())?
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(slot)
        .await
        .map_err(|e| connect_err(crate::client::error_chain(&e)))?;
    Ok(VerifiedPeer {
        channel,
        organisation: principal.organisation,
        node,
    })
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
                    for peer in peer_list(&self.shared.peers) {
                        tasks.spawn(pull(self.shared.clone(), peer, None));
                    }
                }
                Some(req) = self.rx.recv() => {
                    if let Some(peer) = peer_list(&self.shared.peers).into_iter().find(|p| p.name == req.node) {
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

fn peer_list(peers: &SharedPeers) -> Vec<PeerConfig> {
    peers.read().map(|p| p.clone()).unwrap_or_default()
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
        Err(e @ (PeerError::Connect { .. } | PeerError::Rpc(_))) => {
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
) -> Result<(), PeerError> {
    let conn = connect_peer(&peer.endpoint, shared.tls.clone(), &shared.trust).await?;
    if let Some(x) = expect
        && (x.organisation != conn.organisation || x.node != conn.node)
    {
        return Err(PeerError::Unexpected {
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
    let peers = peer_list(&shared.peers);
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
                Ok::<(), PeerError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(peer = %peer.name, version, error = %e, "catalog notification not delivered");
            }
        }
    });
    futures::future::join_all(calls).await;
}
