//! An obliged organisation's MDS provider endpoint (`[mds_provider]`): the MDS 2.0 provider
//! API over HTTPS, answered from the hourly batch files the company exports into a directory
//! below the node's source roots (`YYYY-MM-DDTHH.json`: that hour's trips and events; an hour
//! with a file, even an empty one, is processed; an hour without one is not).
//!
//! - `GET /trips?end_time=YYYY-MM-DDTHH`, `GET /events/historical?event_time=YYYY-MM-DDTHH`:
//!   the hour's records; `202` while the hour has no file, `404` for an hour not yet past.
//! - `GET /vehicles/status`: each vehicle's last known state, from the latest batch file.
//!
//! Who may pull: the connection needs a federation client certificate (the node's rustls
//! verifier, as on the gRPC port; the calling organisation comes only from it), the request
//! the bearer token (compared in constant time, never logged; a wrong or missing token is
//! `401`, counted and audited in aggregate like a refused handshake). Then the caller's
//! organisation must be a configured recipient, and the node's policy point decides
//! `deliver_obligation` on the configured dataset (a city's node, a dataset owed under a
//! legal obligation); the decision is audited before any byte of the answer leaves, and an
//! answer whose decision cannot be audited is `503` (fail closed).

use crate::audit::{AuditLog, Draft};
use crate::clock::SharedClock;
use crate::metrics::NodeMetrics;
use crate::pki::Principal;
use crate::pki::verifier::Trust;
use crate::policy::{Action, AuthorizeError, PolicyPoint, Resource};
use crate::tls::{TlsError, TlsMaterial};
use allmende_connectors::SourceRoots;
use allmende_connectors::mds::{BadHour, HOUR_MS, VERSION, format_hour, parse_hour};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the node has to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest batch file served, bytes.
pub const MAX_BATCH_FILE_BYTES: u64 = 256 << 20;
/// The audit action of a refused token (aggregated) and the metrics reason.
pub const TOKEN_REFUSAL: &str = "mds_token";
/// The policy id of a caller that is not a configured recipient.
pub const NOT_A_RECIPIENT: &str = "mds-provider:not-a-recipient";

/// What the provider endpoint serves from.
#[derive(Debug)]
pub struct Provider {
    pub policy: Arc<PolicyPoint>,
    pub audit: AuditLog,
    pub trust: Arc<Trust>,
    pub metrics: Arc<NodeMetrics>,
    pub clock: SharedClock,
    pub roots: SourceRoots,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    pub recipients: Vec<String>,
    pub dataset: String,
    /// This node's organisation (audit entries of refusals).
    pub organisation: String,
}

/// The listener's TLS configuration: the node's own certificate, the federation client
/// verifier (a client certificate is required), HTTP/1.1.
pub fn server_config(
    trust: Arc<Trust>,
    material: &TlsMaterial,
    metrics: Arc<NodeMetrics>,
    cert_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    // The gRPC port's configuration, speaking HTTP/1.1 instead of h2.
    let mut cfg = (*crate::tls::server_config(trust, material, metrics, cert_path)?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts mTLS connections on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<Provider>,
    limits: crate::tls::AcceptLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut incoming = Box::pin(crate::tls::incoming_with(
        listener,
        tls,
        state.trust.clone(),
        state.metrics.clone(),
        limits,
        shutdown.clone(),
    ));
    loop {
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(Ok(s)) => s,
                Some(Err(_)) => continue,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        // The provider never accepts onboarding certificates.
        let Some(principal) = stream.peer().map(|p| p.principal.clone()) else {
            continue;
        };
        let state = state.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let principal = principal.clone();
                async move {
                    let r =
                        match tokio::time::timeout(REQUEST_TIMEOUT, state.answer(&principal, &req))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => {
                                error(StatusCode::SERVICE_UNAVAILABLE, "the request took too long")
                            }
                        };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// An MDS error answer (`application/vnd.mds+json`).
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "error": status.canonical_reason().unwrap_or("error"), "error_description": message });
    let mut r = answer_json(&body);
    *r.status_mut() = status;
    r
}

fn answer_json(v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.mds+json;version=2.0"),
    );
    r
}

/// The one query parameter `name` of `query`, strictly (no other parameter).
fn hour_param(query: Option<&str>, name: &str) -> Result<i64, String> {
    let q = query.unwrap_or("");
    let mut found = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if k == name && found.is_none() => found = Some(v),
            _ => {
                return Err(format!(
                    "the request may carry only `{name}` (once) as its query"
                ));
            }
        }
    }
    let v = found.ok_or_else(|| format!("the request did not contain an `{name}`"))?;
    parse_hour(v).map_err(|BadHour(shown)| {
        format!("`{name}` {shown} is not a UTC hour of the form `YYYY-MM-DDTHH`")
    })
}

/// Constant-time equality of two secrets (their SHA-256 digests compared without an early
/// exit, so neither content nor length leaks through timing).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// What a route asks for.
enum Route {
    Trips(i64),
    Events(i64),
    Vehicles,
}

impl Provider {
    /// The answer to one request.
    async fn answer(
        &self,
        principal: &Principal,
        req: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the provider api is read-only: GET only",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        // The connection's certificate is checked again on every request (deny list, expiry).
        if self.trust.recheck(principal).is_err() {
            return error(
                StatusCode::UNAUTHORIZED,
                "the client certificate is no longer trusted",
            );
        }
        if !self.token_ok(req) {
            self.metrics.refuse(TOKEN_REFUSAL);
            // Known by its certificate's fingerprint, never a user id.
            self.metrics.note_refusal(
                principal
                    .certificate_sha256
                    .get(..16)
                    .unwrap_or(&principal.certificate_sha256),
                TOKEN_REFUSAL,
                self.clock.now_unix_ms(),
            );
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let query = req.uri().query();
        let route = match req.uri().path() {
            "/trips" => hour_param(query, "end_time").map(Route::Trips),
            "/events/historical" => hour_param(query, "event_time").map(Route::Events),
            "/vehicles/status" => match query {
                None | Some("") => Ok(Route::Vehicles),
                Some(_) => Err("`/vehicles/status` takes no query".to_owned()),
            },
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "no such endpoint of the mds provider api",
                );
            }
        };
        let route = match route {
            Ok(r) => r,
            Err(m) => return error(StatusCode::BAD_REQUEST, &m),
        };
        if let Err(r) = self.decide(principal, &route).await {
            return r;
        }
        // Decided and audited: now the answer.
        match self.respond(&route) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "mds provider answer failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the batch cannot be read; the node's log has the details",
                )
            }
        }
    }

    fn token_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        match allmende_connectors::mds::read_token(&self.roots, &self.token_file) {
            Ok(secret) => same_secret(given.trim().as_bytes(), secret.as_bytes()),
            Err(e) => {
                tracing::warn!(error = %e, "mds provider token unreadable; every request refused");
                false
            }
        }
    }

    /// Recipient check and the policy decision, both audited before anything is answered.
    async fn decide(
        &self,
        principal: &Principal,
        route: &Route,
    ) -> Result<(), Response<Full<Bytes>>> {
        let label = match route {
            Route::Trips(h) => format!(
                "{}/trips@{}",
                self.dataset,
                format_hour(*h).unwrap_or_default()
            ),
            Route::Events(h) => format!(
                "{}/events@{}",
                self.dataset,
                format_hour(*h).unwrap_or_default()
            ),
            Route::Vehicles => format!("{}/vehicles", self.dataset),
        };
        if !self.recipients.contains(&principal.organisation) {
            let mut d = Draft::by(
                principal,
                Action::DeliverObligation.as_str(),
                &label,
                allmende_audit::EntryKind::Decision,
            );
            d.decision = Some(allmende_audit::Decision::Deny);
            d.policy_ids = vec![NOT_A_RECIPIENT.to_owned()];
            if self.audit.append(d).await.is_err() {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit log cannot be written",
                ));
            }
            return Err(error(
                StatusCode::FORBIDDEN,
                "the caller's organisation is not a recipient of this feed",
            ));
        }
        let request = self.policy.request(
            principal,
            Action::DeliverObligation,
            Resource::Dataset(self.dataset.clone()),
            None,
        );
        match self
            .policy
            .decide_audited(&self.audit, principal, request, &label)
            .await
        {
            Ok(_) => Ok(()),
            Err(AuthorizeError::Denied(d)) => {
                let reasons: Vec<&str> = d.policies.iter().map(|p| p.reason_en.as_str()).collect();
                Err(error(
                    StatusCode::FORBIDDEN,
                    &format!("denied: {}", reasons.join("; ")),
                ))
            }
            Err(AuthorizeError::OverBudget(_)) => Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many denied requests; try later",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "mds provider decision not audited");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit log cannot be written; nothing is answered",
                ))
            }
        }
    }

    /// Reads a batch file through the roots (`None`: no file, the hour is not processed).
    fn batch(&self, hour_ms: i64) -> Result<Option<Value>, String> {
        let name = allmende_connectors::mds::sample::batch_file_name(hour_ms)
            .map_err(|e| e.to_string())?;
        let path = self.dir.join(&name);
        if !path.exists() {
            return Ok(None);
        }
        let file = self
            .roots
            .open(&path, &name)
            .map_err(|e| format!("batch `{name}`: {e}"))?;
        let mut bytes = Vec::new();
        file.take(MAX_BATCH_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("batch `{name}`: {e}"))?;
        if bytes.len() as u64 > MAX_BATCH_FILE_BYTES {
            return Err(format!(
                "batch `{name}` is larger than {MAX_BATCH_FILE_BYTES} bytes"
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // An empty file: a processed hour without operations.
            return Ok(Some(json!({})));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("batch `{name}` is not json: {e}"))
    }

    /// The latest processed hour that has ended.
    fn latest_hour(&self) -> Result<Option<i64>, String> {
        let now = self.clock.now_unix_ms();
        let mut best = None;
        let entries = std::fs::read_dir(&self.dir).map_err(|e| format!("batch directory: {e}"))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(hour) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|h| parse_hour(h).ok())
            else {
                continue;
            };
            if hour + HOUR_MS <= now && best.is_none_or(|b| hour > b) {
                best = Some(hour);
            }
        }
        Ok(best)
    }

    fn respond(&self, route: &Route) -> Result<Response<Full<Bytes>>, String> {
        let now = self.clock.now_unix_ms();
        let records =
            |batch: &Value, field: &str| batch.get(field).cloned().unwrap_or_else(|| json!([]));
        Ok(match route {
            Route::Trips(h) | Route::Events(h) => {
                if h + HOUR_MS > now {
                    return Ok(error(StatusCode::NOT_FOUND, "the hour is not in the past"));
                }
                let Some(batch) = self.batch(*h)? else {
                    return Ok(error(
                        StatusCode::ACCEPTED,
                        "data is not yet available for this hour",
                    ));
                };
                let field = if matches!(route, Route::Trips(_)) {
                    "trips"
                } else {
                    "events"
                };
                answer_json(&json!({ "version": VERSION, field: records(&batch, field) }))
            }
            Route::Vehicles => {
                let batch = match self.latest_hour()? {
                    Some(h) => self.batch(h)?.unwrap_or_else(|| json!({})),
                    None => json!({}),
                };
                let vehicles = allmende_connectors::mds::sample::vehicles_status(&batch);
                answer_json(&json!({
                    "version": VERSION,
                    "last_updated": now,
                    "ttl": 0,
                    "vehicles_status": vehicles,
                }))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn hour_parameters_are_strict() {
        assert_eq!(
            hour_param(Some("end_time=2026-11-30T10"), "end_time").unwrap(),
            1_796_032_800_000
        );
        assert!(
            hour_param(None, "end_time")
                .unwrap_err()
                .contains("did not contain")
        );
        assert!(
            hour_param(Some("end_time=2026-11-30"), "end_time")
                .unwrap_err()
                .contains("YYYY-MM-DDTHH")
        );
        assert!(hour_param(Some("end_time=2026-11-30T10&x=1"), "end_time").is_err());
        assert!(
            hour_param(
                Some("end_time=2026-11-30T10&end_time=2026-11-30T11"),
                "end_time"
            )
            .is_err()
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
