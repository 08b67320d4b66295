//! A SensorThings-shaped HTTP server for tests and the demo: hyper on a free loopback port
//! (plain HTTP, or HTTPS with a certificate the caller supplies), serving FROST-style
//! `Datastreams(id)?$expand=Thing,Sensor` and `Datastreams(id)/Observations` with `$top`,
//! `$skip`, `$orderby=phenomenonTime asc,@iot.id asc` and the `$filter` subset the connector
//! sends (`phenomenonTime ge|gt|le|lt|eq <time>` joined by `and`), paged with
//! `@iot.nextLink`. Switchable [`Fault`]s make it hostile: an error on page N, a page linking
//! to itself, pages linking on forever, a page larger than any limit (declared or endless), a
//! link to another host, malformed JSON, observations out of order. Stopped when dropped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::http::{decode_query_value, encode_query_value};
use super::micros_of;
use crate::error::ConnectorError;

/// One observation served.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerObservation {
    /// `@iot.id`.
    pub id: i64,
    /// `phenomenonTime` (RFC 3339, or an interval `start/end`).
    pub phenomenon_time: String,
    /// `resultTime`.
    pub result_time: Option<String>,
    /// `result`.
    pub result: Value,
}

/// One datastream served, with its Thing and Sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerDatastream {
    /// `@iot.id`.
    pub id: i64,
    /// `name`.
    pub name: String,
    /// `unitOfMeasurement.symbol`.
    pub unit: String,
    /// The Thing entity (`name`, `properties`, …).
    pub thing: Value,
    /// The Sensor entity.
    pub sensor: Value,
    /// Observations, in any order (served by `phenomenonTime`, then `@iot.id`).
    pub observations: Vec<ServerObservation>,
}

/// How the server misbehaves (for the hostile-input tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Well behaved.
    #[default]
    None,
    /// Observation page N (1-based) answers `500 Internal Server Error`.
    ErrorOnPage(u32),
    /// Every observation page's next link is the page itself.
    SelfLink,
    /// Every observation page links to a further (new, empty) page, forever.
    LinkForever,
    /// Observation pages declare a body of this many bytes (`Content-Length`) and send it.
    LargePage(usize),
    /// Observation pages send an endless body without a length.
    EndlessPage,
    /// Next links point to another host.
    ForeignLink,
    /// Observation pages are not JSON.
    MalformedJson,
    /// Observation pages are served newest first.
    OutOfOrder,
}

struct State {
    prefix: String,
    datastreams: Mutex<BTreeMap<i64, ServerDatastream>>,
    fault: Mutex<Fault>,
    origin: Mutex<String>,
    pages: AtomicU64,
}

/// A running server; stopped on drop.
pub struct SensorThingsServer {
    state: Arc<State>,
    port: u16,
    tls: bool,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SensorThingsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorThingsServer")
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn failed(what: &str, reason: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Internal(format!("sensorthings test server: {what}: {reason}"))
}

impl SensorThingsServer {
    /// Serves `datastreams` over plain HTTP below `prefix` (e.g. `/FROST-Server/v1.1`). Must be
    /// called inside a tokio runtime.
    pub fn start(prefix: &str, datastreams: Vec<ServerDatastream>) -> Result<Self, ConnectorError> {
        Self::launch(prefix, datastreams, None)
    }

    /// Serves over HTTPS with the certificate chain and key (PEM) given.
    pub fn start_tls(
        prefix: &str,
        datastreams: Vec<ServerDatastream>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, ConnectorError> {
        let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(cert_pem))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed("certificate", e))?;
        let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(key_pem))
            .map_err(|e| failed("key", e))?
            .ok_or_else(|| failed("key", "no private key in the PEM"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("tls", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| failed("tls", e))?;
        Self::launch(
            prefix,
            datastreams,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    fn launch(
        prefix: &str,
        datastreams: Vec<ServerDatastream>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Self, ConnectorError> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| failed("start", "needs a tokio runtime"))?;
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed("bind", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| failed("bind", e))?;
        let port = std_listener
            .local_addr()
            .map_err(|e| failed("bind", e))?
            .port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(State {
            prefix: prefix.trim_end_matches('/').to_owned(),
            datastreams: Mutex::new(datastreams.into_iter().map(|d| (d.id, d)).collect()),
            fault: Mutex::new(Fault::None),
            origin: Mutex::new(format!("{scheme}://127.0.0.1:{port}")),
            pages: AtomicU64::new(0),
        });
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(|e| failed("listen", e))?
        };
        let serving = state.clone();
        let task = rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, &req)) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Ok(Self {
            state,
            port,
            tls: scheme == "https",
            task,
        })
    }

    /// The service root, e.g. `http://127.0.0.1:4711/FROST-Server/v1.1`.
    pub fn service_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{}", self.port, self.state.prefix)
    }

    /// The same service named by `localhost` (for certificates naming it).
    pub fn service_url_localhost(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}{}", self.port, self.state.prefix)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches the misbehaviour.
    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.state.fault.lock() {
            *f = fault;
        }
    }

    /// The origin (`scheme://host:port`) next links name.
    pub fn set_link_origin(&self, origin: &str) {
        if let Ok(mut o) = self.state.origin.lock() {
            *o = origin.to_owned();
        }
    }

    /// Observation pages served so far (errors included).
    pub fn pages_served(&self) -> u64 {
        self.state.pages.load(Ordering::Acquire)
    }

    /// Adds an observation to datastream `id`.
    pub fn add_observation(&self, id: i64, o: ServerObservation) {
        if let Ok(mut d) = self.state.datastreams.lock()
            && let Some(ds) = d.get_mut(&id)
        {
            ds.observations.push(o);
        }
    }
}

impl Drop for SensorThingsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    full(
        status,
        json!({ "code": status.as_u16(), "message": message }).to_string(),
    )
}

/// `Datastreams(5)` → 5.
fn datastream_id(segment: &str) -> Option<i64> {
    segment
        .strip_prefix("Datastreams(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

fn handle(state: &State, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let Some(rest) = req.uri().path().strip_prefix(state.prefix.as_str()) else {
        return error(StatusCode::NOT_FOUND, "not below the service root");
    };
    let mut query = BTreeMap::new();
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode_query_value(k), decode_query_value(v)) {
            (Some(k), Some(v)) => {
                query.insert(k, v);
            }
            _ => return error(StatusCode::BAD_REQUEST, "malformed query"),
        }
    }
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let Ok(datastreams) = state.datastreams.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "state lost");
    };
    match segments.as_slice() {
        [ds] => {
            let Some(d) = datastream_id(ds).and_then(|id| datastreams.get(&id)) else {
                return error(StatusCode::NOT_FOUND, "no such datastream");
            };
            let mut entity = json!({
                "@iot.id": d.id,
                "name": d.name,
                "unitOfMeasurement": { "symbol": d.unit },
            });
            if let Some(expand) = query.get("$expand")
                && let Some(obj) = entity.as_object_mut()
            {
                for e in expand.split(',') {
                    match e.trim() {
                        "Thing" => obj.insert("Thing".into(), d.thing.clone()),
                        "Sensor" => obj.insert("Sensor".into(), d.sensor.clone()),
                        _ => return error(StatusCode::BAD_REQUEST, "unknown $expand"),
                    };
                }
            }
            full(StatusCode::OK, entity.to_string())
        }
        [ds, "Observations"] => {
            let Some(d) = datastream_id(ds).and_then(|id| datastreams.get(&id)) else {
                return error(StatusCode::NOT_FOUND, "no such datastream");
            };
            let fault = state.fault.lock().map(|f| *f).unwrap_or_default();
            let origin = state.origin.lock().map(|o| o.clone()).unwrap_or_default();
            state.pages.fetch_add(1, Ordering::AcqRel);
            let own = format!("{origin}{}", req.uri());
            observations(state, d, &query, fault, &origin, req.uri().path(), &own)
        }
        _ => error(StatusCode::NOT_FOUND, "unknown resource"),
    }
}

/// One comparison of the `$filter` subset.
fn filter_terms(filter: &str) -> Option<Vec<(&str, i64)>> {
    let mut out = Vec::new();
    for term in filter.split(" and ") {
        let term = term.trim().trim_start_matches('(').trim_end_matches(')');
        let mut words = term.split_whitespace();
        let (Some("phenomenonTime"), Some(op), Some(lit), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return None;
        };
        if !matches!(op, "ge" | "gt" | "le" | "lt" | "eq") {
            return None;
        }
        out.push((op, micros_of(lit)?));
    }
    Some(out)
}

fn observations(
    state: &State,
    d: &ServerDatastream,
    query: &BTreeMap<String, String>,
    fault: Fault,
    origin: &str,
    path: &str,
    own: &str,
) -> Response<Body> {
    let top: usize = match query.get("$top").map(|t| t.parse()) {
        None => 100,
        Some(Ok(t)) if t > 0 => t,
        _ => return error(StatusCode::BAD_REQUEST, "bad $top"),
    };
    let skip: usize = match query.get("$skip").map(|t| t.parse()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "bad $skip"),
    };
    if let Some(o) = query.get("$orderby")
        && o != "phenomenonTime asc,@iot.id asc"
    {
        return error(StatusCode::BAD_REQUEST, "unsupported $orderby");
    }
    let terms = match query.get("$filter").map(|f| filter_terms(f)) {
        None => Vec::new(),
        Some(Some(t)) => t,
        Some(None) => return error(StatusCode::BAD_REQUEST, "unsupported $filter"),
    };
    let page = u32::try_from(skip / top + 1).unwrap_or(u32::MAX);
    match fault {
        Fault::ErrorOnPage(n) if n == page => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the database went away");
        }
        Fault::MalformedJson => {
            return full(StatusCode::OK, "{\"value\": [ {\"@iot.id\": 1, ");
        }
        Fault::LargePage(n) => {
            return full(StatusCode::OK, vec![b' '; n]);
        }
        Fault::EndlessPage => {
            static CHUNK: [u8; 8192] = [b' '; 8192];
            let stream = futures::stream::repeat_with(|| {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return r;
        }
        _ => {}
    }
    let mut selected: Vec<(i64, &ServerObservation)> = d
        .observations
        .iter()
        .filter_map(|o| micros_of(&o.phenomenon_time).map(|t| (t, o)))
        .filter(|(t, _)| {
            terms.iter().all(|(op, lit)| match *op {
                "ge" => t >= lit,
                "gt" => t > lit,
                "le" => t <= lit,
                "lt" => t < lit,
                _ => t == lit,
            })
        })
        .collect();
    selected.sort_by_key(|(t, o)| (*t, o.id));
    if fault == Fault::OutOfOrder {
        selected.reverse();
    }
    let total = selected.len();
    let value: Vec<Value> = selected
        .iter()
        .skip(skip)
        .take(top)
        .map(|(_, o)| {
            json!({
                "@iot.id": o.id,
                "@iot.selfLink": format!("{origin}{}/Observations({})", state.prefix, o.id),
                "phenomenonTime": o.phenomenon_time,
                "resultTime": o.result_time,
                "result": o.result,
            })
        })
        .collect();
    let link = |skip: usize| {
        let mut q: Vec<String> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "$skip")
            .map(|(k, v)| format!("{}={}", encode_query_value(k), encode_query_value(v)))
            .collect();
        q.push(format!("$skip={skip}"));
        format!("{origin}{path}?{}", q.join("&"))
    };
    let next = match fault {
        Fault::SelfLink => Some(own.to_owned()),
        Fault::LinkForever => Some(link(skip + top)),
        Fault::ForeignLink if skip + top < total => {
            Some(link(skip + top).replacen(origin, "http://sta.elsewhere.example", 1))
        }
        _ if skip + top < total => Some(link(skip + top)),
        _ => None,
    };
    let mut body = json!({ "value": value });
    if let (Some(next), Some(obj)) = (next, body.as_object_mut()) {
        obj.insert("@iot.nextLink".into(), Value::String(next));
    }
    full(StatusCode::OK, body.to_string())
}
