//! The HTTPS open-data listener: read-only, no client certificate, for
//! everyone (`docs/opendata-api.md`). It serves a CKAN Action API 3 subset
//! (`package_list`, `package_search`, `package_show`, `organization_list`),
//! the DCAT-AP.de catalog as JSON-LD (`/catalog.jsonld`), and downloads:
//! a public dataset's CSV streamed through the release pipeline, and the
//! files of published releases (`crate::opendata::releases`).
//!
//! Every caller is an anonymous public caller known only by the keyed
//! pseudonym of its IP address ([`PublicCaller::by_ip`]): it is decided as
//! Cedar's `Allmende::Public`, every download is decided and audited (a
//! dataset as `read` through `access::Fetcher`, a release file as
//! `read_aggregate` on its source dataset), and every request counts
//! against the caller's open-data rate (HTTP 429 with `Retry-After`).
//!
//! Bounds: TLS handshake and request-header timeouts, a cap on open
//! connections, a header size cap, no request body, GET and HEAD only, an
//! answer within [`REQUEST_TIMEOUT`] (a download's body then streams).

pub mod ckan;
pub mod csv;
pub mod query;

use crate::access::fetch::FetchMessage;
use crate::access::{Caller, FetchError, FetchParams, Fetcher, PublicCaller};
use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::error::DenyDetails;
use crate::opendata::releases::Releases;
use crate::pki::verifier::Trust;
use crate::policy::{Action, AuthorizeError, PolicyPoint, Resource};
use crate::tls::{TlsError, TlsMaterial};
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use ckan::{Org, Package, Search};
use futures::FutureExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Time a client has for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers (also between requests
/// on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the node has to answer a request (a download's body streams on).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections at most; a connection beyond is closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request head (request line and headers), bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the open-data listener serves from.
#[derive(Debug)]
pub struct OpenData {
    pub fetcher: Arc<Fetcher>,
    pub catalog: Arc<Catalog>,
    pub policy: Arc<PolicyPoint>,
    pub audit: AuditLog,
    pub trust: Arc<Trust>,
    pub releases: Releases,
    /// Base URL of download links, without a trailing `/`.
    pub public_url: String,
    pub federation: String,
    pub organisation: String,
}

/// The listener's TLS configuration: the node's own certificate and key,
/// no client certificate, HTTP/1.1.
pub fn server_config(
    material: &TlsMaterial,
    cert_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = crate::tls::own_chain_and_key(material, cert_path)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<OpenData>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "open-data accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s).map(|_| ()) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the connection cap: closed at once.
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let ip = remote.ip();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, req, ip).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s).map(|_| ()) => {}
            }
        });
    }
}

/// Binds `addr` and serves until shutdown; the bound address and the task.
pub async fn bind(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), std::io::Error> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((l, bound))
}

/// The answer to one request: checked, routed, bounded in time; a HEAD
/// gets the GET's head without its body.
async fn answer(state: &OpenData, req: Request<Incoming>, ip: IpAddr) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let r = match tokio::time::timeout(REQUEST_TIMEOUT, route(state, &req, ip)).await {
        Ok(r) => r,
        Err(_) => Fail::Unavailable("the request took too long".into()).response(&state.help("")),
    };
    if head {
        let (parts, _) = r.into_parts();
        Response::from_parts(parts, Body::empty())
    } else {
        r
    }
}

/// Why a request fails, as CKAN's error envelope and status.
#[derive(Debug)]
enum Fail {
    NotFound(String),
    Validation(String),
    Denied(String),
    RateLimited(u64),
    Method,
    Body,
    Unavailable(String),
    Internal,
}

impl Fail {
    fn response(&self, help: &str) -> Response<Body> {
        let (status, kind, message) = match self {
            Fail::NotFound(m) => (StatusCode::NOT_FOUND, "Not Found Error", m.clone()),
            Fail::Validation(m) => (StatusCode::CONFLICT, "Validation Error", m.clone()),
            Fail::Denied(m) => (StatusCode::FORBIDDEN, "Authorization Error", m.clone()),
            Fail::RateLimited(s) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Rate Limit Error",
                format!("too many requests; retry in {s} s"),
            ),
            Fail::Method => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "this API is read-only: GET and HEAD only".to_owned(),
            ),
            Fail::Body => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Validation Error",
                "requests carry no body".to_owned(),
            ),
            Fail::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                m.clone(),
            ),
            Fail::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "internal error; the node's log has the details".to_owned(),
            ),
        };
        let mut r = json_response(status, &ckan::failure(help, kind, &message));
        match self {
            Fail::RateLimited(s) => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*s));
            }
            Fail::Method => {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        r
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    r
}

fn fetch_fail(e: FetchError) -> Fail {
    match e {
        FetchError::PublicRateLimited { retry_after_secs } => Fail::RateLimited(retry_after_secs),
        FetchError::RateLimited | FetchError::CallerBusy(_) => Fail::RateLimited(1),
        FetchError::Decision(AuthorizeError::Denied(d)) => Fail::Denied(denial(&d)),
        FetchError::Decision(AuthorizeError::OverBudget(_)) => Fail::RateLimited(60),
        FetchError::Decision(AuthorizeError::Audit(_)) | FetchError::Audit(_) => {
            Fail::Unavailable("the audit log cannot be written; nothing is released".into())
        }
        FetchError::Dataset(_) => Fail::NotFound("Not found: no such dataset".into()),
        FetchError::NodeBusy(_) | FetchError::SourceUnavailable { .. } => {
            Fail::Unavailable(e.to_string())
        }
        other => {
            tracing::warn!(error = %other, "open-data download failed");
            Fail::Internal
        }
    }
}

/// A denial in plain language: the deciding policies' reasons (en, de).
fn denial(d: &DenyDetails) -> String {
    let reasons: Vec<String> = d
        .policies
        .iter()
        .map(|p| format!("{} ({}) [{}]", p.reason_en, p.reason_de, p.id))
        .collect();
    format!("Access denied: {}", reasons.join("; "))
}

impl OpenData {
    fn help(&self, action: &str) -> String {
        format!("{}/api/3/action/help_show?name={action}", self.public_url)
    }

    /// Organisations of the signed membership (name, display name).
    fn orgs(&self) -> BTreeMap<String, Org> {
        self.trust
            .snapshot()
            .doc
            .members
            .iter()
            .filter(|m| m.kind != crate::pki::OrgKind::Public)
            .map(|m| {
                (
                    m.org.clone(),
                    Org {
                        name: m.org.clone(),
                        title: m.display_name.clone(),
                    },
                )
            })
            .collect()
    }

    fn org(&self, orgs: &BTreeMap<String, Org>, name: &str) -> Org {
        orgs.get(name).cloned().unwrap_or_else(|| Org {
            name: name.to_owned(),
            title: name.to_owned(),
        })
    }

    /// Whether the public may `action` dataset `id` (decided, not audited:
    /// a listing reads no row, like Arrow Flight's `ListFlights`).
    fn public_may(&self, caller: &Caller, action: Action, id: &str) -> bool {
        let r = self
            .policy
            .request_for(caller, action, Resource::Dataset(id.to_owned()), None);
        self.policy.decide_for(caller, &r).allowed
    }

    /// The packages of this node the public can use: its own datasets the
    /// public may read raw (no personal data), then the published releases
    /// whose source the public may read as an aggregate.
    fn packages(&self, caller: &Caller) -> Result<Vec<Package>, Fail> {
        let orgs = self.orgs();
        let mut out: Vec<Package> = self
            .catalog
            .entries()
            .iter()
            .filter(|e| self.catalog.is_local_entry(e))
            .filter(|e| !e.dataset.contains_personal_data)
            .filter(|e| self.public_may(caller, Action::Read, &e.dataset.id))
            .map(|e| ckan::dataset_package(e, &self.org(&orgs, &e.owner), &self.public_url))
            .collect();
        let releases = self.releases.list().map_err(|e| {
            tracing::warn!(error = %e, "release directory unreadable");
            Fail::Unavailable("the release directory cannot be read".into())
        })?;
        for m in releases {
            if out.iter().any(|p| p.name == m.id) {
                tracing::warn!(release = %m.id, "release id equals a dataset id; not listed");
                continue;
            }
            if self.public_may(caller, Action::ReadAggregate, &m.dataset) {
                out.push(ckan::release_package(
                    &m,
                    &self.org(&orgs, &m.owner),
                    &self.public_url,
                ));
            }
        }
        Ok(out)
    }

    /// Takes one request from the caller's open-data rate.
    fn admit(&self, caller: &PublicCaller) -> Result<(), Fail> {
        self.fetcher.admit_public(caller).map_err(fetch_fail)
    }
}

/// Routes a checked request.
async fn route(state: &OpenData, req: &Request<Incoming>, ip: IpAddr) -> Response<Body> {
    let path = req.uri().path();
    let action = path
        .strip_prefix("/api/3/action/")
        .or_else(|| path.strip_prefix("/api/action/"));
    let help = state.help(action.unwrap_or(""));
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Fail::Method.response(&help);
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return Fail::Body.response(&help);
    }
    let caller = PublicCaller::by_ip(&state.audit, ip);
    let r = if let Some(action) = action {
        action_api(state, &caller, action, req.uri().query()).await
    } else if path == "/catalog.jsonld" {
        catalog_jsonld(state, &caller)
    } else if let Some(file) = path.strip_prefix("/download/dataset/") {
        download_dataset(state, &caller, file).await
    } else if let Some(rest) = path.strip_prefix("/download/release/") {
        download_release(state, &caller, rest).await
    } else {
        Err(Fail::NotFound("Not found: no such resource".into()))
    };
    r.unwrap_or_else(|f| f.response(&help))
}

async fn action_api(
    state: &OpenData,
    pc: &PublicCaller,
    action: &str,
    raw_query: Option<&str>,
) -> Result<Response<Body>, Fail> {
    state.admit(pc)?;
    let q = query::Query::parse(raw_query).map_err(|e| Fail::Validation(e.to_string()))?;
    let caller = Caller::Public(pc.clone());
    let result = match action {
        "package_list" => {
            let limit = ckan::number("limit", q.get("limit"), usize::MAX)
                .map_err(|e| Fail::Validation(e.to_string()))?;
            let offset = ckan::number("offset", q.get("offset"), usize::MAX)
                .map_err(|e| Fail::Validation(e.to_string()))?;
            let mut names: Vec<String> = state
                .packages(&caller)?
                .into_iter()
                .map(|p| p.name)
                .collect();
            names.sort();
            let names: Vec<String> = names
                .into_iter()
                .skip(offset.unwrap_or(0))
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            json!(names)
        }
        "package_search" => {
            let s = Search::parse(q.get("q"), q.get("fq"), q.get("rows"), q.get("start"))
                .map_err(|e| Fail::Validation(e.to_string()))?;
            s.run(&state.packages(&caller)?)
        }
        "package_show" => {
            let Some(id) = q.get("id").filter(|i| !i.is_empty()) else {
                return Err(Fail::Validation("Missing value: `id`".into()));
            };
            state
                .packages(&caller)?
                .into_iter()
                .find(|p| p.name == id || p.json["id"] == id)
                .map(|p| p.json)
                .ok_or_else(|| {
                    Fail::NotFound(format!(
                        "Not found: no package `{}`",
                        crate::text::shown(id, 60)
                    ))
                })?
        }
        "organization_list" => {
            let all = match q.get("all_fields") {
                None | Some("false") | Some("False") | Some("0") => false,
                Some("true") | Some("True") | Some("1") => true,
                Some(v) => {
                    return Err(Fail::Validation(format!(
                        "`all_fields` must be true or false, not `{}`",
                        crate::text::shown(v, 20)
                    )));
                }
            };
            let packages = state.packages(&caller)?;
            let orgs = state.orgs();
            if all {
                json!(
                    orgs.values()
                        .map(|o| ckan::organization_dict(
                            o,
                            packages.iter().filter(|p| p.organization == o.name).count()
                        ))
                        .collect::<Vec<_>>()
                )
            } else {
                json!(orgs.keys().collect::<Vec<_>>())
            }
        }
        _ => {
            return Err(Fail::NotFound(format!(
                "Not found: action `{}` is not served (package_list, package_search, package_show, organization_list)",
                crate::text::shown(action, 40)
            )));
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &ckan::success(&state.help(action), result),
    ))
}

fn catalog_jsonld(state: &OpenData, pc: &PublicCaller) -> Result<Response<Body>, Fail> {
    state.admit(pc)?;
    let info = crate::catalog::dcat::CatalogInfo::from_membership(
        &state.trust.snapshot().doc,
        &state.organisation,
        &state.federation,
    );
    let doc = crate::catalog::dcat::export(
        &state.catalog.entries(),
        &info,
        crate::catalog::dcat::ExportFormat::JsonLd,
    );
    let mut r = Response::new(Body::from(doc));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ld+json"),
    );
    Ok(r)
}

/// `/download/dataset/<id>.csv`: the whole dataset through the release
/// pipeline for the public caller (decided `read`, audited, rate-limited);
/// a personal dataset is refused with the policies' reason.
async fn download_dataset(
    state: &OpenData,
    pc: &PublicCaller,
    file: &str,
) -> Result<Response<Body>, Fail> {
    let not_found = || Fail::NotFound("Not found: no such dataset".into());
    let id = file.strip_suffix(".csv").ok_or_else(not_found)?;
    if state.catalog.local(id).is_none() {
        return Err(not_found());
    }
    let params = FetchParams {
        dataset: id.to_owned(),
        ..FetchParams::default()
    };
    let rx = state
        .fetcher
        .start_public::<csv::CsvEncoder>(pc, params)
        .await
        .map_err(fetch_fail)?;
    // The release's chunks as they come; a failed release ends the body
    // with an error (the client sees a broken transfer, never a short file
    // that looks whole).
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            FetchMessage::Ipc(b) => Some((Ok(b), Some(rx))),
            FetchMessage::Done { ipc, .. } => Some((Ok(ipc), Some(rx))),
            FetchMessage::Failed(e) => {
                tracing::warn!(error = %e, "open-data download ended early");
                Some((Err(std::io::Error::other("release failed")), None))
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv;charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.csv\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// `/download/release/<id>/<file>`: a file of a published release, only
/// through its manifest (size and hash checked), after a `read_aggregate`
/// decision on the release's source dataset for the public caller,
/// audited.
async fn download_release(
    state: &OpenData,
    pc: &PublicCaller,
    rest: &str,
) -> Result<Response<Body>, Fail> {
    let not_found = || Fail::NotFound("Not found: no such release file".into());
    let (id, name) = rest.split_once('/').ok_or_else(not_found)?;
    state.admit(pc)?;
    let manifest = match state.releases.get(id) {
        Ok(Some(m)) => m,
        Ok(None) | Err(crate::opendata::releases::ReleasesError::BadId(_)) => {
            return Err(not_found());
        }
        Err(e) => {
            tracing::warn!(error = %e, "release unreadable");
            return Err(Fail::Internal);
        }
    };
    let Some(file) = manifest.file(name).cloned() else {
        return Err(not_found());
    };
    let caller = Caller::Public(pc.clone());
    let request = state.policy.request_for(
        &caller,
        Action::ReadAggregate,
        Resource::Dataset(manifest.dataset.clone()),
        None,
    );
    state
        .policy
        .decide_audited_for(&state.audit, &caller, request, &manifest.dataset)
        .await
        .map_err(|e| fetch_fail(FetchError::Decision(e)))?;
    let content = match state.releases.read(id, name) {
        Ok(Some(c)) => c,
        Ok(None) => return Err(not_found()),
        Err(e) => {
            tracing::warn!(error = %e, "release file refused");
            return Err(Fail::Internal);
        }
    };
    let mut r = Response::new(Body::from(content));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
