//! A small HTTPS GET client for the open-data story: the way a citizen's
//! browser or a portal talks to a node's open-data listener — TLS verified
//! against the federation root, no client certificate.

use http_body::Body as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Largest body the demo reads.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One answer of the open-data listener.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the answer is not JSON: {e}"))
    }

    /// The `result` of CKAN's success envelope.
    pub fn ckan_result(&self) -> Result<serde_json::Value, String> {
        let v = self.json()?;
        if self.status != 200 || v["success"] != true {
            return Err(format!("CKAN answered {}: {v}", self.status));
        }
        Ok(v["result"].clone())
    }

    /// The message of CKAN's error envelope.
    pub fn ckan_error(&self) -> Result<String, String> {
        let v = self.json()?;
        match v["error"]["message"].as_str() {
            Some(m) if v["success"] == false => Ok(m.to_owned()),
            _ => Err(format!("not a CKAN error: {v}")),
        }
    }
}

/// `GET target` at `addr`, verified against the root certificate in
/// `root_pem`, without a client certificate.
pub async fn get(root_pem: &Path, addr: SocketAddr, target: &str) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root_pem).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util_empty::Empty>(
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(target)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util_empty::Empty)
        .map_err(|e| e.to_string())?;
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_BODY {
                return Err(format!("the answer is larger than {MAX_BODY} bytes"));
            }
        }
    }
    Ok(Answer {
        status,
        body: bytes,
    })
}

/// An empty request body (GET has none).
mod http_body_util_empty {
    use bytes::Bytes;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[derive(Debug, Clone, Copy)]
    pub struct Empty;

    impl http_body::Body for Empty {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            Poll::Ready(None)
        }

        fn is_end_stream(&self) -> bool {
            true
        }
    }
}
