//! The one client a node uses to dial another node: mTLS with this node's
//! certificate, and the server's certificate authenticated by the federation
//! trust (membership, deny list, clock) exactly like a client's is on the
//! server side. Callers take the peer's identity only from what this
//! authentication yields ([`VerifiedPeer`]), never from what a response
//! claims.

use crate::pki::{Subject, Trust};
use crate::tls::{self, TlsError, TlsMaterial};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// How long this node waits for a peer's answer to one call (catalog
/// pulls, witnessing): a stuck peer must not stall the loops that dial it.
pub const PEER_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    let roots = material.roots()?;
    let chain = material.chain();
    if chain.is_empty() || roots.is_empty() {
        return Err(empty("certificate"));
    }
    let key = material.key().ok_or_else(|| empty("private key"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
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
        let io = crate::locks::lock(&self.0, "peer connection")
            .ok()
            .and_then(|mut s| s.take());
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
    let bad_endpoint = || PeerError::Endpoint(crate::text::shown(endpoint, 200));
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
    let tcp = tokio::time::timeout(
        tls::CONNECT_TIMEOUT,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| connect_err("connect timed out".into()))?
    .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(
        tls::HANDSHAKE_TIMEOUT,
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
        .timeout(PEER_CALL_TIMEOUT)
        .connect_with_connector(slot)
        .await
        .map_err(|e| connect_err(crate::client::error_chain(&e)))?;
    Ok(VerifiedPeer {
        channel,
        organisation: principal.organisation,
        node,
    })
}
