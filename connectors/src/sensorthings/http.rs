//! The HTTP(S) client of the SensorThings connector: one GET per page over hyper's HTTP/1.1
//! client, on TCP or TLS (tokio-rustls with ring, the server verified against the configured
//! CA file), the host checked against the node's `sources.http_hosts` before every connect, the
//! response body read into memory only up to a limit (a `Content-Length` above it is refused
//! before the body is read), and the whole exchange bounded by a timeout.
//!
//! URLs are parsed strictly ([`ServiceUrl`]): `http://` or `https://`, a host and an optional
//! port, a path, no user information; query strings are kept as the server wrote them and
//! compared, never interpreted, except by the caller.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::confine::SourceRoots;
use crate::error::snippet;

/// An absolute `http(s)://host[:port]/path[?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The path, starting with `/`, without a trailing `/` (except the root).
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
}

impl ServiceUrl {
    /// Parses an absolute URL; `Err` says why it is not acceptable.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > 8192 {
            return Err("is longer than 8192 bytes".into());
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Err("contains spaces or control characters".into());
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err("must start with `http://` or `https://`".into());
        };
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (authority, path_query) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => match rest.find('?') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            },
        };
        if authority.contains('@') {
            return Err("must not carry user information".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("has an unclosed `[`")?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("names no host".into());
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or("has an invalid port")?,
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path_query, None),
        };
        let mut path = if path.is_empty() { "/" } else { path }.to_owned();
        while path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        if path.split('/').any(|s| s == ".." || s == ".") {
            return Err("has `.` or `..` path segments".into());
        }
        Ok(Self {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
            query,
        })
    }

    /// Whether `other` has the same scheme, host and port.
    pub fn same_origin(&self, other: &ServiceUrl) -> bool {
        self.tls == other.tls && self.host == other.host && self.port == other.port
    }

    /// `path?query`, what an HTTP/1.1 request line names.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.target())
    }
}

/// Why a GET failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFailure {
    /// The host is not allowed (`sources.http_hosts`); the connector turns it into a
    /// confinement refusal.
    Refused(crate::error::ConnectorError),
    /// The response is larger than the limit; nothing more was read.
    TooLarge(usize),
    /// Connection, TLS, protocol failure or timeout.
    Transport(String),
}

/// A response: status and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The status line's reason (`Internal Server Error`), from the code.
    pub reason: &'static str,
    /// The body.
    pub body: Bytes,
}

/// The client of one source.
#[derive(Clone)]
pub struct Client {
    roots: SourceRoots,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Most response header bytes hyper accepts (bounded memory before the body).
const MAX_HEADER_BYTES: usize = 64 << 10;

impl Client {
    /// A client connecting only to hosts `roots` allows, verifying HTTPS servers with `tls`.
    pub fn new(roots: SourceRoots, tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Self {
        Self {
            roots,
            tls,
            timeout,
        }
    }

    /// GETs `url`, reading at most `limit` body bytes.
    pub async fn get(&self, url: &ServiceUrl, limit: usize) -> Result<Response, HttpFailure> {
        self.roots
            .check_http_host(&url.host)
            .map_err(HttpFailure::Refused)?;
        match tokio::time::timeout(self.timeout, self.exchange(url, limit)).await {
            Ok(r) => r,
            Err(_) => Err(HttpFailure::Transport(format!(
                "no complete answer within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn exchange(&self, url: &ServiceUrl, limit: usize) -> Result<Response, HttpFailure> {
        let transport = |what: &str, e: &dyn std::fmt::Display| {
            HttpFailure::Transport(format!("{what}: {}", snippet(&e.to_string())))
        };
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| transport("cannot connect", &e))?;
        let _ = tcp.set_nodelay(true);
        match (url.tls, &self.tls) {
            (false, _) => self.send(TokioIo::new(tcp), url, limit).await,
            (true, Some(config)) => {
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| transport("invalid server name", &e))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transport("tls handshake failed", &e))?;
                self.send(TokioIo::new(tls), url, limit).await
            }
            (true, None) => Err(HttpFailure::Transport(
                "an `https://` service needs `ca_file`".into(),
            )),
        }
    }

    async fn send<T>(&self, io: T, url: &ServiceUrl, limit: usize) -> Result<Response, HttpFailure>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let transport = |what: &str, e: &dyn std::fmt::Display| {
            HttpFailure::Transport(format!("{what}: {}", snippet(&e.to_string())))
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| transport("http handshake failed", &e))?;
        let driver = tokio::spawn(async move {
            // Ends when the exchange is over or the connection broke (reported by the sender).
            let _ = conn.await;
        });
        let request = hyper::Request::get(url.target())
            .header(hyper::header::HOST, url.authority())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "allmende-sensorthings")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport("cannot build the request", &e))?;
        let outcome = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport("request failed", &e))?;
            let status = response.status();
            let declared = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(HttpFailure::TooLarge(limit));
            }
            let mut body = response.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| transport("the answer broke off", &e))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(HttpFailure::TooLarge(limit));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Response {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or(""),
                body: Bytes::from(out),
            })
        }
        .await;
        driver.abort();
        outcome
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space); `None` if malformed or not UTF-8.
pub fn decode_query_value(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_strictly() {
        let u = ServiceUrl::parse("http://127.0.0.1:8080/FROST/v1.1/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/FROST/v1.1")
        );
        let u = ServiceUrl::parse("https://Sta.Example/v1.1/Datastreams(1)/Observations?$top=2")
            .unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "sta.example", 443));
        assert_eq!(u.query.as_deref(), Some("$top=2"));
        assert_eq!(
            u.to_string(),
            "https://sta.example/v1.1/Datastreams(1)/Observations?$top=2"
        );
        let v6 = ServiceUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        for bad in [
            "ftp://x/",
            "http://",
            "http://user:pw@host/",
            "http://host:0/",
            "http://host:99999/",
            "http://host/a/../b",
            "http://host/a b",
            "//host/",
        ] {
            assert!(ServiceUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_values_round_trip() {
        let v = "phenomenonTime ge 2025-03-03T00:00:00Z and (x lt 'ä')";
        let e = encode_query_value(v);
        assert!(!e.contains(' ') && !e.contains('\''), "{e}");
        assert_eq!(decode_query_value(&e).unwrap(), v);
        assert_eq!(decode_query_value("a+b%20c").unwrap(), "a b c");
        assert!(decode_query_value("%zz").is_none());
        assert!(decode_query_value("%4").is_none());
    }
}
