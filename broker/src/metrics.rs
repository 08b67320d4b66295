//! Per-node Prometheus metrics. Each node owns its own registry (several nodes
//! share one process in the demo and the tests), served on the admin listener.

use crate::pki::verifier::{AuthError, RefusalSink};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The name the lock helpers log for the refusal aggregate.
const REFUSALS: &str = "authentication refusals";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

/// What became of an MQTT message of a dataset's source.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UplinkLabels {
    pub dataset: String,
    /// `stored`, `duplicate`, or why it was skipped (`malformed-json`, …).
    pub outcome: String,
}

/// Refused authentications per source, between two drains (written to the
/// audit log in aggregate, never one entry per handshake).
#[derive(Debug, Default)]
pub struct RefusalAggregate {
    /// source → (count, first ms, last ms, reasons)
    pub by_source:
        std::collections::BTreeMap<String, (u64, i64, i64, std::collections::BTreeSet<String>)>,
}

/// The metrics of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    refusals: std::sync::Mutex<RefusalAggregate>,
    registry: Registry,
    pub handshakes_accepted: Counter,
    pub handshakes_refused: Family<ReasonLabel, Counter>,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub connections_open: Gauge,
    pub membership_version: Gauge,
    /// Requests refused because the node-wide stream cap was reached.
    pub streams_refused: Counter,
    /// Connections closed because the node-wide connection cap was reached.
    pub connections_refused: Counter,
    /// Denied requests counted into an aggregate audit entry, not written one by one.
    pub denials_aggregated: Counter,
    /// MQTT messages by dataset and outcome (stored, duplicate, skipped reasons).
    pub mqtt_uplinks: Family<UplinkLabels, Counter>,
    /// Directory (membership) documents refused, by reason (signature,
    /// rollback, federation, …; `crate::directory`).
    pub directory_refused: Family<ReasonLabel, Counter>,
    /// Directory fetches from the city node that got no document.
    pub directory_fetch_failed: Counter,
}

impl NodeMetrics {
    /// A fresh registry for node `name`.
    pub fn new(name: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix_and_labels(
            "allmende",
            [(
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(name.to_owned()),
            )]
            .into_iter(),
        );
        let handshakes_accepted = Counter::default();
        let handshakes_refused = Family::<ReasonLabel, Counter>::default();
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let connections_open = Gauge::default();
        let membership_version = Gauge::default();
        let streams_refused = Counter::default();
        let connections_refused = Counter::default();
        let denials_aggregated = Counter::default();
        let mqtt_uplinks = Family::<UplinkLabels, Counter>::default();
        let directory_refused = Family::<ReasonLabel, Counter>::default();
        let directory_fetch_failed = Counter::default();
        registry.register(
            "directory_refused",
            "federation directory documents refused (the node keeps its current one), by reason",
            directory_refused.clone(),
        );
        registry.register(
            "directory_fetch_failed",
            "directory fetches from the city node that got no document",
            directory_fetch_failed.clone(),
        );
        registry.register(
            "mqtt_uplinks",
            "MQTT messages of MQTT sources by dataset and outcome (stored, duplicate, or the reason they were skipped)",
            mqtt_uplinks.clone(),
        );
        registry.register(
            "streams_refused",
            "requests refused at the node-wide stream cap",
            streams_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "connections closed at the node-wide connection cap",
            connections_refused.clone(),
        );
        registry.register(
            "denials_aggregated",
            "denied requests audited in an aggregate entry instead of one by one",
            denials_aggregated.clone(),
        );
        registry.register(
            "tls_handshakes_accepted",
            "mTLS handshakes that bound a federation identity",
            handshakes_accepted.clone(),
        );
        registry.register(
            "tls_handshakes_refused",
            "mTLS handshakes refused, by reason",
            handshakes_refused.clone(),
        );
        registry.register(
            "rpc_requests",
            "gRPC requests by method and status code",
            rpc_requests.clone(),
        );
        registry.register(
            "connections_open",
            "open mTLS connections",
            connections_open.clone(),
        );
        registry.register(
            "membership_version",
            "version of the signed federation membership in force",
            membership_version.clone(),
        );
        Arc::new(Self {
            refusals: std::sync::Mutex::new(RefusalAggregate::default()),
            registry,
            handshakes_accepted,
            handshakes_refused,
            rpc_requests,
            connections_open,
            membership_version,
            streams_refused,
            connections_refused,
            denials_aggregated,
            mqtt_uplinks,
            directory_refused,
            directory_fetch_failed,
        })
    }

    /// Counts a refused handshake (or a refused request on a live connection).
    pub fn refuse(&self, reason: &str) {
        self.handshakes_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Notes a refused authentication from `source` at `now_ms`.
    pub fn note_refusal(&self, source: &str, reason: &str, now_ms: i64) {
        if let Ok(mut a) = crate::locks::lock(&self.refusals, REFUSALS) {
            // Bound the table: a flood from many sources is folded into one.
            let key = if a.by_source.len() >= 1024 && !a.by_source.contains_key(source) {
                "other".to_owned()
            } else {
                source.to_owned()
            };
            let e = a
                .by_source
                .entry(key)
                .or_insert((0, now_ms, now_ms, Default::default()));
            e.0 += 1;
            e.2 = now_ms;
            e.3.insert(reason.to_owned());
        }
    }

    /// Takes the refusals noted since the last drain.
    pub fn drain_refusals(&self) -> RefusalAggregate {
        crate::locks::lock(&self.refusals, REFUSALS)
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl RefusalSink for NodeMetrics {
    fn refused(&self, reason: &AuthError) {
        self.refuse(reason.label());
    }
}
