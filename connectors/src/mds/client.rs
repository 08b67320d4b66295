//! The HTTPS client of the MDS connector: one GET per request over HTTP/1.1 (hyper) on
//! rustls with ring, the provider verified against the configured CA file, optionally
//! presenting a client certificate, the bearer token in `Authorization`.
//!
//! A hostile or broken endpoint cannot exhaust the node: the whole request (connect, TLS,
//! answer head, body) is bounded by a time limit, a declared `Content-Length` over the bound
//! is refused before the body is read, and the body is read frame by frame into a buffer that
//! is abandoned (and the connection dropped) as soon as it would exceed the bound; only then
//! is the bounded buffer parsed as JSON.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HOST};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use super::{Endpoint, MEDIA_TYPE};
use crate::error::{ConnectorError, snippet};

/// What the provider answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// 200 with a JSON body.
    Body(Value),
    /// The hour is not processed yet (202) or not in the past (404), per the MDS provider API.
    NotReady {
        /// The HTTP status.
        status: u16,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// TCP or TLS failed.
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    /// The provider answered with an error status.
    #[error("the provider answered http {0}")]
    Status(u16),
    /// The body is (or says it is) larger than the bound.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(u64),
    /// The body is not JSON.
    #[error("the answer is not json: {0}")]
    Json(String),
    /// The request did not finish in time.
    #[error("the request took longer than {0} s")]
    Timeout(u64),
    /// The connection broke while the answer was read.
    #[error("the answer broke off: {0}")]
    Broken(String),
}

/// A TLS client configuration trusting only the CA certificates in `ca_pem`, presenting the
/// chain and key given (PEM), if any.
pub fn tls_config(
    ca_pem: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, ConnectorError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(ca_pem)) {
        let cert = cert.map_err(|e| {
            ConnectorError::Config(format!("the CA file holds no readable certificate: {e}"))
        })?;
        roots.add(cert).map_err(|e| {
            ConnectorError::Config(format!("the CA file holds an unusable certificate: {e}"))
        })?;
    }
    if roots.is_empty() {
        return Err(ConnectorError::Config(
            "the CA file holds no PEM certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::Internal(format!("tls setup: {e}")))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut std::io::BufReader::new(chain_pem.as_bytes()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| ConnectorError::Config(format!("client certificate: {e}")))?;
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut std::io::BufReader::new(key_pem.as_bytes()))
                    .map_err(|e| ConnectorError::Config(format!("client key: {e}")))?
                    .ok_or_else(|| ConnectorError::Config("no client key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConnectorError::Config(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client of one provider.
#[derive(Clone)]
pub struct MdsClient {
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    token: String,
    max_bytes: u64,
    timeout: Duration,
}

impl std::fmt::Debug for MdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("MdsClient")
            .field("endpoint", &self.endpoint)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl MdsClient {
    /// A client of `endpoint` with `token`, answers bounded by `max_bytes` and `timeout`.
    pub fn new(
        endpoint: Endpoint,
        tls: Arc<ClientConfig>,
        token: String,
        max_bytes: u64,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoint,
            tls,
            token,
            max_bytes,
            timeout,
        }
    }

    /// GETs `path_and_query` (below the endpoint's prefix).
    pub async fn get(&self, path_and_query: &str) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(self.timeout, self.get_unbounded_in_time(path_and_query)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(self.timeout.as_secs())),
        }
    }

    async fn get_unbounded_in_time(&self, path_and_query: &str) -> Result<Fetched, FetchError> {
        let e = &self.endpoint;
        let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(|x| FetchError::Connect(x.to_string()))?;
        let name = ServerName::try_from(e.host.clone())
            .map_err(|x| FetchError::Connect(format!("`{}`: {x}", snippet(&e.host))))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|x| FetchError::Connect(x.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|x| FetchError::Connect(x.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let result = self.exchange(&mut sender, path_and_query).await;
        // Dropping the connection ends a body we stopped reading.
        driver.abort();
        result
    }

    async fn exchange(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        path_and_query: &str,
    ) -> Result<Fetched, FetchError> {
        let uri = format!("{}{path_and_query}", self.endpoint.prefix);
        let req = Request::get(uri)
            .header(HOST, self.endpoint.authority())
            .header(ACCEPT, format!("{MEDIA_TYPE};version=2.0"))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Empty::<Bytes>::new())
            .map_err(|x| FetchError::Connect(x.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|x| FetchError::Broken(x.to_string()))?;
        let status = res.status().as_u16();
        match status {
            200 => {}
            202 | 404 => return Ok(Fetched::NotReady { status }),
            s => return Err(FetchError::Status(s)),
        }
        let declared = res
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let mut body = res.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|x| FetchError::Broken(x.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if (buf.len() + data.len()) as u64 > self.max_bytes {
                    return Err(FetchError::TooLarge(self.max_bytes));
                }
                buf.extend_from_slice(data);
            }
        }
        serde_json::from_slice(&buf)
            .map(Fetched::Body)
            .map_err(|x| FetchError::Json(x.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS server on loopback answering each connection with `answer(request head)`.
    async fn server(
        answer: impl Fn(String) -> Vec<u8> + Send + Sync + 'static,
    ) -> (u16, String, Arc<std::sync::Mutex<Vec<String>>>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let answer = answer.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut b = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    let out = answer(head);
                    // A hostile body may be written only in part; the client hangs up.
                    for chunk in out.chunks(64 * 1024) {
                        if tls.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, ca_pem, heads)
    }

    fn client(port: u16, ca_pem: &str, max: u64) -> MdsClient {
        MdsClient::new(
            Endpoint::parse(&format!("https://127.0.0.1:{port}/mds")).unwrap(),
            tls_config(ca_pem.as_bytes(), None).unwrap(),
            "s3cret-token".into(),
            max,
            Duration::from_secs(10),
        )
    }

    fn response(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/vnd.mds+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn answers_are_read_with_the_token_and_statuses_told_apart() {
        let (port, ca, heads) = server(|head| {
            if head.starts_with("GET /mds/trips?end_time=2026-11-30T10 ") {
                response("200 OK", r#"{"version":"2.0.0","trips":[]}"#)
            } else if head.starts_with("GET /mds/trips") {
                response("202 Accepted", "")
            } else {
                response("401 Unauthorized", "")
            }
        })
        .await;
        let c = client(port, &ca, 1 << 20);
        assert_eq!(
            c.get("/trips?end_time=2026-11-30T10").await.unwrap(),
            Fetched::Body(serde_json::json!({"version":"2.0.0","trips":[]}))
        );
        assert_eq!(
            c.get("/trips?end_time=2026-11-30T11").await.unwrap(),
            Fetched::NotReady { status: 202 }
        );
        assert_eq!(
            c.get("/vehicles/status").await.unwrap_err(),
            FetchError::Status(401)
        );
        let head = heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(
            head.contains("authorization: bearer s3cret-token\r\n"),
            "{head}"
        );
        assert!(head.contains("accept: application/vnd.mds+json"), "{head}");
        // The token is never in the client's debug form.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn oversized_answers_are_refused_declared_or_streamed() {
        // Declared too large: refused before the body is read.
        let (port, ca, _) =
            server(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n{".to_vec()).await;
        assert_eq!(
            client(port, &ca, 1 << 20)
                .get("/trips?end_time=2026-11-30T10")
                .await,
            Err(FetchError::TooLarge(1 << 20))
        );
        // Chunked without a length, 8 MiB against a bound of 1 MiB: abandoned at the bound.
        let (port, ca, _) = server(|_| {
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..128 {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(&chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        })
        .await;
        assert_eq!(
            client(port, &ca, 1 << 20)
                .get("/trips?end_time=2026-11-30T10")
                .await,
            Err(FetchError::TooLarge(1 << 20))
        );
        // Not JSON.
        let (port, ca, _) = server(|_| response("200 OK", "<html>")).await;
        assert!(matches!(
            client(port, &ca, 1 << 20).get("/x").await,
            Err(FetchError::Json(_))
        ));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let c = MdsClient::new(
            Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
            tls_config(ca.as_bytes(), None).unwrap(),
            "t".into(),
            1024,
            Duration::from_millis(300),
        );
        assert_eq!(c.get("/vehicles/status").await, Err(FetchError::Timeout(0)));
    }
}
