//! Bounds on what a caller can make a node hold: the length of identifiers
//! in requests, the metrics label of a method path (only the methods the
//! node serves get their own label), and the node-wide cap on concurrent
//! streams (a tower layer in front of every service).

use crate::error::ApiError;
use crate::locks;
use crate::metrics::NodeMetrics;
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest identifier (dataset id, purpose, user id, grant id, resource id,
/// column name, filter value, …) a request may carry, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// Longest opaque token (resume cursor, free-text search) in bytes.
pub const MAX_TOKEN_BYTES: usize = 2048;

/// How much of an over-long value the error echoes, in characters.
const ECHO_CHARS: usize = 32;

/// Refuses `value` of request field `field` when it is longer than `max`
/// bytes, with `INVALID_ARGUMENT` and a truncated echo.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() <= max {
        return Ok(());
    }
    let echo: String = crate::text::shown(value, ECHO_CHARS);
    Err(ApiError::InvalidArgument(format!(
        "`{field}` is {} bytes long, at most {max} are allowed: `{echo}…`",
        value.len()
    )))
}

/// Refuses an identifier longer than [`MAX_IDENTIFIER_BYTES`].
pub fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    check_len(field, value, MAX_IDENTIFIER_BYTES)
}

/// Refuses a list with an identifier longer than [`MAX_IDENTIFIER_BYTES`],
/// or with more than [`MAX_LIST_ITEMS`] entries.
pub fn check_ids(field: &str, values: &[String]) -> Result<(), ApiError> {
    if values.len() > MAX_LIST_ITEMS {
        return Err(ApiError::InvalidArgument(format!(
            "`{field}` has {} entries, at most {MAX_LIST_ITEMS} are allowed",
            values.len()
        )));
    }
    values.iter().try_for_each(|v| check_id(field, v))
}

/// Most entries in a repeated identifier field (columns, …).
pub const MAX_LIST_ITEMS: usize = 1024;

/// Label of an unknown method path in `allmende_rpc_requests_total`.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The methods of Arrow Flight's `FlightService` (arrow-flight ships no
/// descriptor set; `tests/tests/hardening.rs` checks that each is routed and
/// that the router knows no other).
pub const FLIGHT_METHODS: &[&str] = &[
    "/arrow.flight.protocol.FlightService/Handshake",
    "/arrow.flight.protocol.FlightService/ListFlights",
    "/arrow.flight.protocol.FlightService/GetFlightInfo",
    "/arrow.flight.protocol.FlightService/PollFlightInfo",
    "/arrow.flight.protocol.FlightService/GetSchema",
    "/arrow.flight.protocol.FlightService/DoGet",
    "/arrow.flight.protocol.FlightService/DoPut",
    "/arrow.flight.protocol.FlightService/DoExchange",
    "/arrow.flight.protocol.FlightService/DoAction",
    "/arrow.flight.protocol.FlightService/ListActions",
];

/// The gRPC method paths (`/package.Service/Method`) of the services a node
/// serves, read from their descriptor sets, and Arrow Flight's.
pub fn known_methods() -> &'static BTreeSet<String> {
    static KNOWN: OnceLock<BTreeSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message as _;
        let sets: [&[u8]; 4] = [
            allmende_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut out: BTreeSet<String> = FLIGHT_METHODS.iter().map(|m| (*m).to_owned()).collect();
        for bytes in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for svc in file.service {
                    let svc_name = svc.name.unwrap_or_default();
                    for m in svc.method {
                        out.insert(format!(
                            "/{package}.{svc_name}/{}",
                            m.name.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        out
    })
}

/// The metrics label of a request path: the path itself when it names a
/// method the node serves, [`UNKNOWN_METHOD`] otherwise (a caller cannot
/// create labels, so the metrics stay bounded).
pub fn method_label(path: &str) -> String {
    if known_methods().contains(path) {
        path.to_owned()
    } else {
        UNKNOWN_METHOD.to_owned()
    }
}

/// Tower layer capping the streams in flight node-wide and per caller: a
/// request beyond a cap is answered `RESOURCE_EXHAUSTED` at once; an
/// admitted one holds its slots until its response body ends or is dropped.
#[derive(Debug, Clone)]
pub struct StreamLimitLayer {
    slots: Arc<Semaphore>,
    max: usize,
    per_caller: usize,
    callers: Arc<Mutex<HashMap<String, usize>>>,
    metrics: Arc<NodeMetrics>,
}

impl StreamLimitLayer {
    /// A cap of `max` concurrent streams, `per_caller` of them per caller.
    pub fn new(max: usize, per_caller: usize, metrics: Arc<NodeMetrics>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_caller,
            callers: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Takes one of the caller's stream slots, if it has one left.
    fn caller_slot(&self, key: String) -> Option<CallerSlot> {
        let mut m = locks::lock(&self.callers, CALLERS).ok()?;
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= self.per_caller {
            return None;
        }
        *n += 1;
        Some(CallerSlot {
            callers: self.callers.clone(),
            key,
        })
    }
}

/// The name the lock helpers log for the per-caller stream counts.
const CALLERS: &str = "stream slots per caller";

/// One stream of one caller; given back on drop.
struct CallerSlot {
    callers: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = locks::lock(&self.callers, CALLERS)
            && let Some(n) = m.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl<S> tower::Layer<S> for StreamLimitLayer {
    type Service = StreamLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        super::layer::Layered {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`StreamLimitLayer`].
pub type StreamLimit<S> = super::layer::Layered<S, StreamLimitLayer>;

impl<S: super::layer::Inner<B>, B: Send + 'static> super::layer::Around<S, B> for StreamLimitLayer {
    fn around(
        &self,
        mut inner: S,
        req: http::Request<B>,
    ) -> super::layer::BoxFut<S::Response, S::Error> {
        let key = req
            .extensions()
            .get::<crate::tls::PeerInfo>()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.principal.organisation,
                    p.principal.subject.name()
                )
            })
            .unwrap_or_default();
        let layer = self;
        let refusal = match layer.caller_slot(key) {
            None => Err(format!(
                "caller has `{}` streams open, the most one caller may; retry later",
                layer.per_caller
            )),
            Some(caller) => match layer.slots.clone().try_acquire_owned() {
                Ok(permit) => Ok((permit, caller)),
                Err(_) => Err(format!(
                    "node is serving `{}` streams, the most it allows; retry later",
                    layer.max
                )),
            },
        };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let slots = match refusal {
                Ok(s) => s,
                Err(message) => {
                    metrics.streams_refused.inc();
                    let status: tonic::Status = ApiError::ResourceExhausted(message).into();
                    return Ok(status.into_http());
                }
            };
            let resp = inner.call(req).await?;
            Ok(resp.map(|body| {
                tonic::body::Body::new(PermitBody {
                    inner: body,
                    slots: Some(slots),
                })
            }))
        })
    }
}

/// A response body that holds its stream slots until it ends or is dropped.
struct PermitBody {
    inner: tonic::body::Body,
    slots: Option<(OwnedSemaphorePermit, CallerSlot)>,
}

impl http_body::Body for PermitBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.slots = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn long_identifiers_are_refused_with_a_short_echo() {
        assert!(check_id("dataset", &"a".repeat(MAX_IDENTIFIER_BYTES)).is_ok());
        let long = "x".repeat(64 * 1024);
        let err = check_id("dataset", &long).unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("`dataset` is 65536 bytes long"));
        assert!(status.message().len() < 200, "{}", status.message());
        // Multi-byte characters are cut on character boundaries.
        assert!(check_id("purpose", &"ä".repeat(200)).is_err());
        assert!(check_ids("columns", &vec!["c".to_owned(); MAX_LIST_ITEMS + 1]).is_err());
    }

    #[test]
    fn only_served_methods_get_a_label() {
        assert_eq!(
            method_label("/allmende.v1.Access/Fetch"),
            "/allmende.v1.Access/Fetch"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/x.Y/Z123"), UNKNOWN_METHOD);
        assert_eq!(method_label("/allmende.v1.Access/Fetch2"), UNKNOWN_METHOD);
        assert!(known_methods().len() > 20, "{:?}", known_methods());
    }
}
