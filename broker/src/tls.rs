//! mTLS plumbing: our own rustls `ServerConfig` with the federation client
//! verifier, a tokio-rustls accept loop that binds each connection to a
//! [`Principal`], the certificate material both sides are built from
//! ([`TlsMaterial`], [`crypto_provider`], [`ALPN_H2`]), and the user-side
//! client channel of the CLI. Node-to-node connections, whose server
//! certificate is authenticated against the membership, are
//! `federation::client`'s.
//!
//! Architecture invariant: a connection reaches a gRPC handler only after its
//! handshake passed [`FederationClientVerifier`] and its chain was bound to a
//! principal; the principal travels as [`PeerInfo`] in request extensions.

use crate::metrics::NodeMetrics;
use crate::pki::Principal;
use crate::pki::onboarding::Onboarding;
use crate::pki::verifier::{AuthError, FederationClientVerifier, Trust};
use futures::Stream;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// How long a client may take to complete the TLS handshake (default of
/// `limits.handshake_secs`), and how long a node waits for a peer's.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a unary call's answer. The slowest call is a
/// policy reload, which proves the property set first (about 20 s on two
/// busy cores); a client must not give up on it while the node still
/// works.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Bounds of the accept loop (from the node's `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; further connections wait in the
    /// kernel's accept queue.
    pub handshakes: usize,
    /// Open authenticated connections; beyond that a new connection is
    /// closed right after its handshake.
    pub connections: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        Self::from(&l)
    }
}

impl From<&crate::config::Limits> for AcceptLimits {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            handshake_timeout: Duration::from_secs(l.handshake_secs),
            handshakes: usize::try_from(l.handshakes).unwrap_or(usize::MAX),
            connections: usize::try_from(l.connections).unwrap_or(usize::MAX),
        }
    }
}

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` holds no usable {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A node's or user's certificate chain and key, PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    pub chain_pem: String,
    pub key_pem: String,
    pub root_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn read_to_string(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsMaterial {
    /// Reads chain, key and root certificate files.
    pub fn load(chain: &Path, key: &Path, root: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain_pem: read_to_string(chain)?,
            key_pem: read_to_string(key)?,
            root_pem: read_to_string(root)?,
        })
    }

    /// The own certificate chain, DER (empty if the PEM holds none).
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .filter_map(Result::ok)
            .collect()
    }

    /// The own private key.
    pub(crate) fn key(&self) -> Option<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).ok()
    }

    /// The federation root as a trust store (empty if the PEM holds none).
    pub(crate) fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.root_pem.as_bytes()).filter_map(Result::ok) {
            roots.add(c)?;
        }
        Ok(roots)
    }

    /// The root certificate, DER.
    pub fn root_der(&self, path: &Path) -> Result<Vec<u8>, TlsError> {
        CertificateDer::pem_slice_iter(self.root_pem.as_bytes())
            .filter_map(Result::ok)
            .next()
            .map(|c| c.to_vec())
            .ok_or_else(|| TlsError::Empty {
                path: path.to_path_buf(),
                what: "certificate",
            })
    }
}

/// The ALPN protocol of every connection: HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every rustls configuration: ring.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's own certificate chain and key (read from `cert_path` and its
/// `.key`), refused when either is missing.
pub(crate) fn own_chain_and_key(
    material: &TlsMaterial,
    cert_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = material.chain();
    if chain.is_empty() {
        return Err(TlsError::Empty {
            path: cert_path.to_path_buf(),
            what: "certificate",
        });
    }
    let key = material.key().ok_or_else(|| TlsError::Empty {
        path: cert_path.with_extension("key"),
        what: "private key",
    })?;
    Ok((chain, key))
}

/// The server side: our verifier, HTTP/2 only, TLS 1.2+ with ring.
pub fn server_config(
    trust: Arc<Trust>,
    material: &TlsMaterial,
    metrics: Arc<NodeMetrics>,
    cert_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_onboarding(trust, material, metrics, cert_path, false)
}

/// [`server_config`] that also accepts invitations' onboarding
/// certificates when `onboarding` is set (the node holding the federation
/// root; `pki::onboarding`): the auth layer then lets such a connection
/// make the join call only.
pub fn server_config_with_onboarding(
    trust: Arc<Trust>,
    material: &TlsMaterial,
    metrics: Arc<NodeMetrics>,
    cert_path: &Path,
    onboarding: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = own_chain_and_key(material, cert_path)?;
    let verifier =
        Arc::new(FederationClientVerifier::new(trust, metrics).with_onboarding(onboarding));
    let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// What a handler learns about the connection it is served on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub principal: Arc<Principal>,
    pub remote: SocketAddr,
    /// The leaf certificate (DER) the peer presented in the handshake (an
    /// on-behalf-of assertion carries the user's, `docs/relay.md`).
    pub certificate_der: Arc<Vec<u8>>,
}

/// A connection made with an invitation's onboarding certificate: not a
/// member, served the join call only (`rpc::AuthLayer`).
#[derive(Debug, Clone)]
pub struct OnboardingPeer {
    pub onboarding: Arc<Onboarding>,
    pub remote: SocketAddr,
}

/// Who a connection is bound to. The auth layer turns a member's into the
/// [`PeerInfo`] handlers read, and lets an onboarding connection reach the
/// join call only.
#[derive(Debug, Clone)]
pub enum Peer {
    Member(PeerInfo),
    Onboarding(OnboardingPeer),
}

/// A TLS connection bound to a principal (or an onboarding identity).
pub struct AuthedStream {
    inner: TlsStream<TcpStream>,
    info: Peer,
    metrics: Arc<NodeMetrics>,
    /// This connection's slot under the node-wide connection cap.
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// Ready when the node closes every connection (end of the shutdown
    /// grace): reads and writes fail from then on.
    closed: Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
    is_closed: bool,
}

/// The future of an `AuthedStream` that fires when `rx` turns true (never,
/// if its sender goes away).
fn closing(
    mut rx: tokio::sync::watch::Receiver<bool>,
) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> {
    Box::pin(async move {
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}

impl AuthedStream {
    /// The principal the connection is bound to, and its address (`None`
    /// for an onboarding connection).
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.info {
            Peer::Member(p) => Some(p),
            Peer::Onboarding(_) => None,
        }
    }

    fn check_closed(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        // A finished future must not be polled again.
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        if self.is_closed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "node shutting down",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for AuthedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthedStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for AuthedStream {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

impl Connected for AuthedStream {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.info.clone()
    }
}

impl AsyncRead for AuthedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check_closed(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// [`incoming_with`] under the default [`AcceptLimits`].
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    trust: Arc<Trust>,
    metrics: Arc<NodeMetrics>,
) -> impl Stream<Item = Result<AuthedStream, std::io::Error>> {
    let (never, rx) = tokio::sync::watch::channel(false);
    drop(never);
    incoming_with(
        listener,
        config,
        trust,
        metrics,
        AcceptLimits::default(),
        rx,
    )
}

/// Accepts TCP connections, completes mTLS handshakes concurrently (at most
/// `limits.handshakes` at once, each bounded by `limits.handshake_timeout`)
/// and yields the authenticated streams, at most `limits.connections` open
/// at once. Refused handshakes are counted by reason, never written one by
/// one. When `close_all` turns true every open connection is closed.
pub fn incoming_with(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    trust: Arc<Trust>,
    metrics: Arc<NodeMetrics>,
    limits: AcceptLimits,
    close_all: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<AuthedStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<AuthedStream, std::io::Error>>(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.handshakes.max(1)));
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.connections.max(1)));
    let handshake_timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        loop {
            // A handshake slot before the next accept: beyond the cap,
            // connections wait in the kernel's queue, not in our memory.
            let handshake_slot = tokio::select! {
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let trust = trust.clone();
            let metrics = metrics.clone();
            let tx = tx.clone();
            let connections = connections.clone();
            let close_all = close_all.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshake_slot);
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        // The verifier already counted certificate refusals;
                        // count handshakes that never presented one.
                        let text = e.to_string();
                        let reason = if text.contains("peer sent no certificates") {
                            metrics.refuse(AuthError::NoCertificate.label());
                            AuthError::NoCertificate.label()
                        } else if text.contains("invalid peer certificate") {
                            "invalid_certificate"
                        } else {
                            metrics.refuse("handshake_failed");
                            "handshake_failed"
                        };
                        metrics.note_refusal(&remote.ip().to_string(), reason, now_ms());
                        tracing::debug!(%remote, error = %e, "tls handshake refused");
                        return;
                    }
                    Err(_) => {
                        metrics.refuse("handshake_timeout");
                        metrics.note_refusal(
                            &remote.ip().to_string(),
                            "handshake_timeout",
                            now_ms(),
                        );
                        return;
                    }
                };
                let principal = {
                    let (_, conn) = tls.get_ref();
                    match conn.peer_certificates() {
                        Some([leaf, rest @ ..]) => match trust.authenticate(leaf, rest) {
                            Ok(p) => Ok(Peer::Member(PeerInfo {
                                principal: Arc::new(p),
                                remote,
                                certificate_der: Arc::new(leaf.as_ref().to_vec()),
                            })),
                            // The verifier let a non-member through only
                            // when this node accepts onboarding certificates.
                            Err(AuthError::NotAMemberCa) => trust
                                .authenticate_onboarding(leaf)
                                .map(|o| {
                                    Peer::Onboarding(OnboardingPeer {
                                        onboarding: Arc::new(o),
                                        remote,
                                    })
                                })
                                .map_err(|_| AuthError::NotAMemberCa),
                            Err(e) => Err(e),
                        },
                        _ => Err(AuthError::NoCertificate),
                    }
                };
                let Ok(slot) = connections.try_acquire_owned() else {
                    metrics.connections_refused.inc();
                    tracing::debug!(%remote, "connection cap reached, connection closed");
                    return;
                };
                match principal {
                    Ok(info) => {
                        metrics.handshakes_accepted.inc();
                        metrics.connections_open.inc();
                        let stream = AuthedStream {
                            inner: tls,
                            info,
                            metrics,
                            _slot: slot,
                            closed: closing(close_all),
                            is_closed: false,
                        };
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(e) => metrics.refuse(e.label()),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_unix_ms()
}

/// What a client needs to talk to a node: root, own chain and key.
pub type ClientIdentity = TlsMaterial;

/// Opens a user's mTLS channel to `endpoint` (`https://host:port`): the
/// server is checked by name against the federation root, as any TLS client
/// would (nodes dialling nodes use `federation::client::connect_peer`).
pub async fn connect(
    endpoint: &str,
    identity: &ClientIdentity,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.root_pem))
        .identity(Identity::from_pem(&identity.chain_pem, &identity.key_pem));
    Endpoint::from_shared(endpoint.to_owned())?
        .tls_config(tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
}
